"""``openai:<model>@<base_url>``: a frozen opponent served by any OpenAI-compatible chat-completions server.

The server may be a vLLM server (``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server``) or a hosted
model. The requests of one :meth:`OpenAIPlayer.act` call (every pending turn of every match in flight) are sent
concurrently, at most ``concurrency`` at a time, and the answers come back in request order.

The API key is read from an environment variable (``OPENAI_API_KEY`` unless told otherwise; ``"EMPTY"`` when it
is unset, which vLLM servers accept) and handed to the client only: it is never stored on the player, logged, or
put into an exception message.

Retries are done here rather than by the client (which is built with ``max_retries=0``): the client cannot retry
a malformed body (non-JSON, no ``choices``), its backoff cannot be tuned (tests need it tiny), and it logs retries
at INFO on its own logger. Timeouts, connection errors, HTTP 429 and 5xx, and malformed bodies are retried with
exponential backoff; any other HTTP error (401, 404 unknown model, 400 prompt too long, ...) fails fast. A request
that still fails raises :class:`OpenAIPlayerError` from ``act()``: a failure never turns into an empty answer.
An answer whose content is empty or ``None`` is a valid (empty) answer, which the game counts as invalid.

``timeout_s`` bounds a whole attempt (connection, headers and body), not only each read: the HTTP client's own
timeouts are per read, and a server that trickles a byte every few seconds would keep an attempt alive without end
(:mod:`coop_rl.players.http_deadline` ends it when bytes arrive past the deadline; a silent server is cut off by
the per-read timeout, so an attempt lasts at most about twice ``timeout_s``).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from urllib.parse import urlsplit, urlunsplit

from coop_rl.players.base import Action, Player, TurnRequest

logger = logging.getLogger("coop_rl.players.openai")

#: HTTP statuses worth another try (besides every 5xx): rate limited
RETRY_STATUSES = frozenset({429})
_MAX_CAUSE_CHARS = 300


class OpenAIPlayerError(RuntimeError):
    """A request to the OpenAI-compatible server failed for good (after retries, or at once for a 4xx)."""


class _Retryable(Exception):
    """One attempt failed in a way worth retrying; ``cause`` is a short one-line description."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


class _Fatal(Exception):
    """One attempt failed in a way that retrying will not fix."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class OpenAIPlayer(Player):
    """A seat played by a model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        model: the served model name (what the server's ``/v1/models`` lists).
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        temperature, top_p, max_new_tokens: sampling parameters (``max_new_tokens`` is sent as ``max_tokens``).
        timeout_s: the time one attempt may take in seconds, body included (see the module's docstring).
        max_retries: retries after the first attempt (so at most ``max_retries + 1`` requests per turn).
        concurrency: at most this many requests in flight at once.
        api_key_env: the environment variable holding the key (read once, here).
        backoff_s: the first retry waits about ``backoff_s``, then doubling, capped at ``max_backoff_s``.
        spec: the player spec, for messages and reports.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 8,
        api_key_env: str = "OPENAI_API_KEY",
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        spec: str | None = None,
    ) -> None:
        if not model:
            raise ValueError("OpenAIPlayer needs a model name")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAIPlayer base_url must start with http:// or https://, got {redact_url(base_url)!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        from openai import DefaultHttpx2Client, OpenAI

        from coop_rl.players.http_deadline import DeadlineTransport

        self.model = model
        self.base_url = base_url.rstrip("/")
        self.spec = spec if spec is not None else f"openai:{model}@{redact_url(self.base_url)}"
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.api_key_env = api_key_env
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._where = f"{redact_url(self.base_url)} (model {model!r})"
        # The key goes to the client and nowhere else (not an attribute of the player).
        api_key = os.environ.get(api_key_env) or "EMPTY"
        self._client = OpenAI(
            base_url=self.base_url, api_key=api_key, timeout=timeout_s, max_retries=0,
            http_client=DefaultHttpx2Client(transport=DeadlineTransport(timeout_s)),
        )  # fmt: skip
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-player")
        self._closed = False
        self._aborts: set[threading.Event] = set()  # one per act() in progress; close() sets them all
        self._aborts_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIPlayer(model={self.model!r}, base_url={redact_url(self.base_url)!r})"

    # -- the Player interface -------------------------------------------------------------------------------------

    def act(self, requests: list[TurnRequest]) -> list[Action]:
        if self._closed:
            raise OpenAIPlayerError(f"{self._label()}: the player is closed")
        if not requests:
            return []
        abort = threading.Event()  # set when one request has failed for good: the others stop retrying
        with self._aborts_lock:
            self._aborts.add(abort)
        futures: list[Future[str]] = [
            self._pool.submit(self._complete, request.turn.messages, abort) for request in requests
        ]
        try:
            # The first failure to happen is the one to report (the others may only be "cancelled").
            for future in as_completed(futures):
                future.result()
        except BaseException:
            abort.set()
            for future in futures:
                future.cancel()
            raise
        finally:
            with self._aborts_lock:
                self._aborts.discard(abort)
        return [Action(text=future.result()) for future in futures]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._aborts_lock:
            for abort in self._aborts:
                abort.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # -- one request, with retries --------------------------------------------------------------------------------

    def _label(self) -> str:
        return f"openai player at {self._where}"

    def _complete(self, messages: list[dict[str, str]], abort: threading.Event) -> str:
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            if abort.is_set():
                break
            try:
                return self._attempt(messages)
            except _Fatal as error:
                raise OpenAIPlayerError(f"{self._label()}: {self._clean(error.cause)}") from None
            except _Retryable as error:
                cause, retry_after = self._clean(error.cause), error.retry_after
            if abort.is_set():
                break
            if attempt == attempts:
                raise OpenAIPlayerError(f"{self._label()}: failed after {attempts} attempt(s): {cause}")
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (1 + 0.25 * random.random())
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_backoff_s))
            logger.warning(
                "%s: attempt %d of %d failed (%s); retrying in %.2f s", self._label(), attempt, attempts, cause, delay
            )
            if abort.wait(delay):
                break
        raise OpenAIPlayerError(f"{self._label()}: cancelled (another request of the batch failed, or closed)")

    def _attempt(self, messages: list[dict[str, str]]) -> str:
        import openai

        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_new_tokens,
                n=1,
            )
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
        except openai.APIConnectionError as error:
            raise _Retryable(f"connection error: {_describe(error)}") from None
        except openai.APIResponseValidationError as error:
            raise _Retryable(f"malformed response (HTTP {error.status_code}): {error.message}") from None
        except openai.APIStatusError as error:
            status = error.status_code
            detail = f"HTTP {status}: {_status_detail(error)}"
            if status >= 500 or status in RETRY_STATUSES:
                raise _Retryable(detail, _retry_after(error)) from None
            raise _Fatal(detail) from None
        except ValueError as error:  # a JSON body that does not decode (json.JSONDecodeError), a pydantic error
            raise _Retryable(f"malformed response: {type(error).__name__}: {error}") from None
        return self._text(response)

    def _text(self, response: object) -> str:
        """The answer text of a parsed response, or ``_Retryable`` when the body is not a chat completion."""
        if isinstance(response, str):  # the client hands back the raw text of a non-JSON content type
            raise _Retryable(f"malformed response: not JSON: {response[:80]!r}")
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise _Retryable("malformed response: no 'choices'")
        message = getattr(choices[0], "message", None)
        if message is None:
            raise _Retryable("malformed response: choice without 'message'")
        content = getattr(message, "content", None)
        if content is None:
            return ""  # a valid, empty answer (the game counts it as invalid)
        if not isinstance(content, str):
            raise _Retryable(f"malformed response: content is {type(content).__name__}, not a string")
        return content

    def _clean(self, text: str) -> str:
        """One line, bounded, and never the key."""
        text = " ".join(str(text).split())
        # A second line of defence, against a server that echoes the key back in an error body.
        secret = getattr(self._client, "api_key", None)
        if isinstance(secret, str) and len(secret) >= 4 and secret != "EMPTY":
            text = text.replace(secret, "***")
        if len(text) > _MAX_CAUSE_CHARS:
            text = text[: _MAX_CAUSE_CHARS - 3] + "..."
        return text


def _describe(error: BaseException) -> str:
    """The innermost cause of a connection error (``Connection refused``, ...), without a traceback."""
    inner: BaseException = error
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(inner) or type(inner).__name__
    return text if inner is error else f"{type(inner).__name__}: {text}"


def _status_detail(error) -> str:
    """The server's own error message when it sent one (``{"error": {"message": ...}}`` or ``{"detail": ...}``)."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail"):
                if isinstance(inner.get(key), str):
                    return inner[key]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    if isinstance(body, str) and body:
        return body
    return getattr(error, "message", None) or type(error).__name__


def _retry_after(error) -> float | None:
    """A ``Retry-After: <seconds>`` header of a 429/503, if any."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
