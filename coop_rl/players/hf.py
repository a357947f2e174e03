"""transformers backend: ``hf:<model_dir>[@<adapter_dir>]``.

One :class:`HFEngine` per base model holds the model and tokenizer; every seat served by that base shares it:
adapters are loaded by name into one peft model (multi-adapter), and the base model is the same weights with
the adapter disabled. Each call answers a whole batch of turns with one left-padded ``generate`` call and
returns, per turn, the completion text, its token ids and the per-token logprobs of the sampled tokens under the
model's raw distribution (what the trainer's importance weights compare against).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from pathlib import Path
from typing import Any

from coop_rl.players.base import Action, Player, PlayerSpecError, TurnRequest, check_chat_template
from coop_rl.players.constraints import ChoiceConstraint, ConstrainedLogitsProcessor, room_for_choices, sample_choices
from coop_rl.players.prefix_memo import PrefixMemo, weights_state
from coop_rl.players.sampling import NEUTRAL_GENERATION, SamplingConfig, stop_token_ids
from coop_rl.policy_folder import parse_policy_spec
from coop_rl.precision import Precision, choose_precision
from coop_rl.prefix_batch import shared_prefix_batch

logger = logging.getLogger("coop_rl.players.hf")

PROMPT_CACHE_SIZE = 100_000  # tokenized prompts kept per engine


class HFEngine:
    """A base model and its tokenizer, with named LoRA adapters loaded on demand."""

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, precision: Precision | None = None) -> HFEngine:
        """An engine over a model already in memory (the trainer's live policy): generation reads its weights, in
        the trainer's ``precision`` (so that sampler and trainer logprobs compare like with like)."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, model_dir=None, device=str(next(model.parameters()).device))
        if precision is not None:
            engine.precision = precision
        return engine

    def __init__(self, model_dir: Path, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = model_dir
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        from safetensors import SafetensorError

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        except (OSError, ValueError, TypeError, SafetensorError) as error:  # SafetensorError: a truncated file
            raise PlayerSpecError(f"cannot load model from {model_dir}: {error}".splitlines()[0]) from None
        check_chat_template(self.tokenizer, model_dir)
        self._setup(model.to(self.device).eval(), self.tokenizer, model_dir, self.device)
        # A folder's weights never change (adapters get new names): its prompt caches live as long as the engine.
        self.prefix_memo = PrefixMemo()

    def _setup(self, model: Any, tokenizer: Any, model_dir: Path | None, device: str) -> None:
        self.model_dir = model_dir
        self.device = device
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model: Any = model
        self.adapters: dict[Path, str] = {}
        self.max_length = getattr(model.config, "max_position_embeddings", None) or 4096
        # the machine's choice (COOP_RL_PRECISION overrides it: coop_rl.precision)
        self.precision = choose_precision(device, "auto", width=getattr(model.config, "hidden_size", 128))
        self.lock = threading.Lock()
        self._prompt_cache: dict[tuple, list[int]] = {}
        self._decoded: dict[tuple[int, ...], str] = {}
        #: constrained batches walk the choice trie (_choose_batch); False: generate() with a logits processor
        self.choice_sampler = True
        self.prefix_memo: PrefixMemo | None = None  # prompt openings' caches across batches (see frozen_weights)

    def adapter_name(self, adapter_dir: Path) -> str:
        """Load ``adapter_dir`` (once) and return its name in the multi-adapter model."""
        if adapter_dir in self.adapters:
            return self.adapters[adapter_dir]
        from peft import PeftModel

        name = f"adapter{len(self.adapters)}"
        try:
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name).eval()
            else:
                self.model.load_adapter(str(adapter_dir), adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            # a failed load can leave LoRA layers injected in the shared model: the next player gets a fresh engine
            forget_engine(self)
            if isinstance(error, RuntimeError) and "size mismatch" not in str(error):  # out of memory and the like
                raise
            reason = str(error).splitlines()[0].rstrip(":")
            if isinstance(error, RuntimeError):
                reason = f"it does not fit the model {self.model_dir} ({reason})"
            raise PlayerSpecError(f"cannot load adapter {adapter_dir}: {reason}") from None
        self.adapters[adapter_dir] = name
        return name

    def encode_prompts(self, conversations: list[list[dict[str, str]]], max_new_tokens: int):
        """Left-padded prompt batch (input_ids, attention_mask), each prompt rendered with the chat template."""
        texts = [
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            for messages in conversations
        ]
        # Keep the end of over-long prompts (the question and the latest state) rather than failing the match.
        self.tokenizer.truncation_side = "left"
        return self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max(16, self.max_length - max_new_tokens),
            add_special_tokens=False,
        )

    def prompt_ids(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[list[int]]:
        """Unpadded token ids of each prompt (over-long prompts keep their end: the question and latest state).

        Games repeat the same observations often (an IPD prompt is one of a few dozen), so rendered and tokenized
        prompts are memoised: in a batched rollout of a small model, tokenization otherwise costs as much as the
        forward pass.
        """
        limit = max(16, self.max_length - max_new_tokens)
        keys = [tuple((m["role"], m["content"]) for m in messages) for messages in conversations]
        missing = [i for i, key in enumerate(keys) if key not in self._prompt_cache]
        if missing:
            texts = [
                self.tokenizer.apply_chat_template(conversations[i], tokenize=False, add_generation_prompt=True)
                for i in missing
            ]
            encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            if len(self._prompt_cache) + len(missing) > PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            for i, ids in zip(missing, encoded):
                self._prompt_cache[keys[i]] = ids
        return [self._prompt_cache[key][-limit:] for key in keys]

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        adapter: str | None,
        sampling: SamplingConfig,
        seed: int,
        max_batch_size: int = 256,
        constraints: list[ChoiceConstraint | None] | None = None,
    ) -> list[Action]:
        """Answer every conversation; ``constraints`` (per row) restrict answers to a finite set of choices."""
        actions: list[Action] = []
        for start in range(0, len(conversations), max_batch_size):
            rows = constraints[start : start + max_batch_size] if constraints else None
            actions += self._generate_batch(
                conversations[start : start + max_batch_size], adapter, sampling, seed, rows
            )
            seed += 1
        return actions

    def _autocast(self):
        """Autocast to the precision's dtype on the engine's device (none in float32). On a CPU the weights stay
        float32 and bf16 runs under autocast. On a GPU the trainer's live model is float32 too: the Trainer's mixed
        precision wraps the model's forward, which ``generate`` goes around, so without this the samples would be
        drawn in float32 and scored in bf16 (a model loaded from a folder is bf16 already: autocast only keeps
        the ops it reserves for float32 there)."""
        import torch

        dtype = self.precision.torch_dtype()
        return torch.autocast(self.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    @contextlib.contextmanager
    def frozen_weights(self):
        """Inside, the caller promises the weights do not change (the trainer: one rollout), so each batch's shared
        opening is served from the openings computed inside (:class:`~coop_rl.players.prefix_memo.PrefixMemo`);
        the memo in place before (None for a live model) comes back after."""
        previous, self.prefix_memo = self.prefix_memo, PrefixMemo()
        try:
            yield self.prefix_memo
        finally:
            self.prefix_memo = previous

    def _prefix_cache(self, ids):
        """The key/value cache of a batch's shared opening ``ids`` [1, prefix]."""
        if self.prefix_memo is None:
            return self.model(input_ids=ids, use_cache=True).past_key_values
        return self.prefix_memo.cache(self.model, ids, weights_state(self.model, self.precision.bf16))

    def _adapter_context(self, adapter: str | None):
        if not self.adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        if self.model.active_adapter != adapter:  # set_adapter walks every module: 16 ms a call on SmolLM2
            self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _prefill(self, input_ids, attention_mask, prefix: int):
        """Key/value cache of every row but its last token, computing each distinct thing once.

        The rows of a batch share their opening (the rules, the system prompt): computed once, for all rows.
        Many rows are identical prompts (an IPD state recurs in every match): each distinct row is computed
        once and its cache copied to its duplicates. ``generate`` then only runs the last prompt token.
        """
        if not prefix and len(input_ids.unique(dim=0)) == len(input_ids):
            return None  # nothing shared: generate() prefills as usual
        _, cache, inverse = self._forward_distinct(input_ids, attention_mask, prefix, end=input_ids.shape[1] - 1)
        cache.reorder_cache(inverse)
        return cache

    def _forward_distinct(self, input_ids, attention_mask, prefix: int, end: int):
        """Run each distinct row's first ``end`` tokens once, the batch's shared ``prefix`` once for all.

        Returns (the logits after token ``end`` of each distinct row or None, their key/value cache, and the index
        of each batch row's distinct row: ``inverse``).
        """
        import torch

        unique_rows, inverse = torch.unique(input_ids, dim=0, return_inverse=True)
        first = torch.zeros(len(unique_rows), dtype=torch.long, device=input_ids.device)
        first.scatter_(0, inverse.flip(0), torch.arange(len(input_ids) - 1, -1, -1, device=input_ids.device))
        ids, mask = input_ids[first, :end], attention_mask[first, :end]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if prefix and (len(ids) > 1 or self.prefix_memo is not None):
            cache = self._prefix_cache(ids[:1, :prefix])
            cache.batch_repeat_interleave(len(ids))
            start = prefix
        else:
            cache, start = None, 0
        logits = None
        if end > start:
            out = self.model(
                input_ids=ids[:, start:end],
                attention_mask=mask,
                position_ids=positions[:, start:end],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache, logits = out.past_key_values, out.logits[:, -1]
        return logits, cache, inverse

    def _generate_batch(self, conversations, adapter, sampling: SamplingConfig, seed: int, constraints=None):
        import dataclasses

        import torch
        from transformers import LogitsProcessorList

        longest = max((c.longest for c in constraints or [] if c is not None), default=0)
        sampling = dataclasses.replace(sampling, max_new_tokens=room_for_choices(sampling.max_new_tokens, longest))
        prompts = self.prompt_ids(conversations, sampling.max_new_tokens)
        batch = shared_prefix_batch(prompts, self.tokenizer.pad_token_id)
        if self.choice_sampler and constraints and all(c is not None for c in constraints):
            return self._choose_batch(prompts, batch, adapter, sampling, seed, constraints)
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        prefix = batch["prefix_length"]
        stops = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        with self.lock, torch.inference_mode(), self._autocast(), self._adapter_context(adapter):
            cache = self._prefill(input_ids, attention_mask, prefix)
            extra: dict[str, Any] = {"past_key_values": cache} if cache is not None else {}
            if constraints and any(c is not None for c in constraints):
                processor = ConstrainedLogitsProcessor(constraints, input_ids.shape[1])
                extra["logits_processor"] = LogitsProcessorList([processor])
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=sampling.temperature > 0,
                temperature=sampling.temperature if sampling.temperature > 0 else None,
                top_p=sampling.top_p,
                max_new_tokens=sampling.max_new_tokens,
                return_dict_in_generate=True,
                output_logits=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=stops,
                **NEUTRAL_GENERATION,
                **extra,
            )
        completions = output.sequences[:, input_ids.shape[1] :]
        # Raw logits (before temperature/top-p): the model's own distribution, as vLLM reports logprobs. One step at
        # a time: a float32 copy of every step at once is batch x tokens x vocabulary (16 GB for 64 answers of 400
        # tokens over Qwen's 152k vocabulary), and its log-softmax as much again.
        raw_logits = output.logits  # per step: [batch, vocabulary]
        token_logprobs = torch.stack(
            [
                torch.log_softmax(step.float(), dim=-1).gather(-1, completions[:, k, None]).squeeze(-1)
                for k, step in enumerate(raw_logits)
            ],
            dim=1,
        )
        actions = []
        for row, prompt in enumerate(prompts):
            ids = completions[row].tolist()
            # up to the first stop token, kept: its probability is learned too
            length = next((k + 1 for k, token in enumerate(ids) if token in stops), len(ids))
            ids = ids[:length]
            row_logprobs = token_logprobs[row, :length].tolist()
            allowed = None
            constraint = constraints[row] if constraints else None
            if constraint is not None:
                # The policy is the model renormalised over the allowed continuations at each position.
                allowed = constraint.allowed_per_position(ids)
                row_logprobs = [
                    _renormalised(raw_logits[k][row].float(), token, options) if options else 0.0
                    for k, (token, options) in enumerate(zip(ids, allowed, strict=True))
                ]
            actions.append(
                Action(
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    prompt_ids=prompt,
                    completion_ids=ids,
                    logprobs=row_logprobs,
                    allowed=allowed,
                )
            )
        return actions

    def _choose_batch(self, prompts, batch, adapter, sampling: SamplingConfig, seed: int, constraints):
        """Constrained answers for every row, without ``generate``: the prompt's logits, then a walk of each row's
        choice trie (:func:`~coop_rl.players.constraints.sample_choices`) that runs the model only where a row
        still chooses. The same distribution as ``generate`` with the constraint's logits processor, at a
        fraction of its per-token overhead (profiled: most of a constrained IPD rollout's time on a small model)."""
        import torch

        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        with self.lock, torch.inference_mode(), self._autocast(), self._adapter_context(adapter):
            # Identical prompts have identical answers' distributions: run each distinct prompt once, and copy
            # its cache to its duplicates only if some answer needs a second forward pass (a multi-token choice).
            logits, cache, inverse = self._forward_distinct(input_ids, mask, batch["prefix_length"], input_ids.shape[1])
            state = {"cache": cache, "mask": mask, "position": mask.sum(-1, keepdim=True)}

            def next_logits(columns):
                if state.pop("inverse", None) is not None:
                    state["cache"].reorder_cache(inverse)
                width = columns.shape[1]
                state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(len(columns), width)], dim=1)
                step = self.model(
                    input_ids=columns,
                    attention_mask=state["mask"],
                    position_ids=state["position"] + torch.arange(width, device=columns.device),
                    past_key_values=state["cache"],
                    use_cache=True,
                )
                state["cache"], state["position"] = step.past_key_values, state["position"] + width
                return step.logits[:, -1]

            state["inverse"] = inverse
            generator = torch.Generator(device=self.device).manual_seed(seed)
            answers = sample_choices(
                constraints,
                logits[inverse],
                next_logits,
                sampling.temperature,
                sampling.top_p,
                generator,
                sampling.max_new_tokens,
            )
        return [
            Action(text=self._decode(ids), prompt_ids=prompt, completion_ids=ids, logprobs=logprobs, allowed=allowed)
            for prompt, (ids, logprobs, allowed) in zip(prompts, answers, strict=True)
        ]

    def _decode(self, ids: list[int]) -> str:
        """The text of a completion (memoised: constrained answers are a handful of token sequences)."""
        key = tuple(ids)
        if key not in self._decoded:
            if len(self._decoded) > PROMPT_CACHE_SIZE:
                self._decoded.clear()
            self._decoded[key] = self.tokenizer.decode(ids, skip_special_tokens=True)
        return self._decoded[key]


_ENGINES: dict[tuple[Path, str | None], HFEngine] = {}


def _renormalised(logits: Any, token: int, options: list[int]) -> float:
    """log p(token) under the model renormalised over ``options`` (a constrained answer's next tokens)."""
    return (logits[token] - logits[options].logsumexp(-1)).item()


def get_engine(model_dir: Path, device: str | None = None) -> HFEngine:
    """The shared engine of a base model: seats served by one base model share its weights."""
    if (model_dir, device) not in _ENGINES:
        _ENGINES[model_dir, device] = HFEngine(model_dir, device)
    return _ENGINES[model_dir, device]


def forget_engine(engine: HFEngine) -> None:
    """Drop ``engine`` from the shared ones: the next :func:`get_engine` of its model builds a fresh one."""
    for key in [key for key, shared in _ENGINES.items() if shared is engine]:
        del _ENGINES[key]


class HFPlayer(Player):
    """A seat served by transformers generate, with an optional LoRA adapter."""

    def __init__(
        self,
        spec: str,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        device: str | None = None,
        max_batch_size: int = 256,
        constrain: bool | None = None,
    ) -> None:
        self.spec = spec
        folder = parse_policy_spec(spec, "hf")
        # A policy trained with constrained answers is that constrained policy: its folder says so.
        self.constrain = folder.constrain_answers if constrain is None else constrain
        base_dir, implied_adapter = folder
        self.engine = get_engine(base_dir, device)
        self.adapter = self.engine.adapter_name(implied_adapter) if implied_adapter else None
        self.sampling = sampling or SamplingConfig()
        self.max_batch_size = max_batch_size
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self._rng = random.Random(f"hf:{seed}:{self.spec}")

    def act(self, requests: list[TurnRequest]) -> list[Action]:
        if not requests:
            return []
        conversations = [request.turn.messages for request in requests]
        constraints = [self._constraint(request) for request in requests] if self.constrain else None
        return self.engine.generate(
            conversations, self.adapter, self.sampling, self._rng.randrange(2**31), self.max_batch_size, constraints
        )

    def _constraint(self, request: TurnRequest) -> ChoiceConstraint | None:
        choices = request.game.answer_choices(request.turn)
        if choices is None:
            return None
        key = tuple(choices)
        cache = self.engine.__dict__.setdefault("_constraints", {})
        if key not in cache:
            cache[key] = ChoiceConstraint(self.engine.tokenizer, choices)
        return cache[key]
