"""A whole-request deadline for httpx2 (the HTTP client of the ``openai`` package), whose timeouts are per read.

A server that trickles a byte every few seconds never trips a per-read timeout, so one request could last without
end. :class:`DeadlineTransport` ends a request that is past its deadline when its next bytes arrive (headers or
body); a silent server is still cut off by the per-read timeout. Kept apart from the player: ``openai`` (and with
it httpx2) comes with the vLLM extra, and the player module is imported without it for its error type.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2


class DeadlineTransport(httpx2.BaseTransport):
    """HTTP transport whose requests each end by ``timeout_s`` after they start, body included (the client's
    timeouts are per read): a response past its deadline raises ``ReadTimeout`` when its next bytes arrive, which
    the client reports as a timeout."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._inner = httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = time.monotonic() + self.timeout_s
        response = self._inner.handle_request(request)
        body = DeadlineStream(response.stream, deadline, self.timeout_s, request)  # type: ignore[arg-type]
        if time.monotonic() > deadline:  # the headers alone came too late
            body.close()
            raise body.timeout()
        return httpx2.Response(response.status_code, headers=response.headers, stream=body,
                               extensions=response.extensions)  # fmt: skip

    def close(self) -> None:
        self._inner.close()


class DeadlineStream(httpx2.SyncByteStream):
    """A response body that raises ``ReadTimeout`` at the first chunk to arrive after ``deadline``."""

    def __init__(self, stream: httpx2.SyncByteStream, deadline: float, timeout_s: float, request) -> None:
        self._stream, self._deadline, self._timeout_s, self._request = stream, deadline, timeout_s, request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._deadline:
                raise self.timeout()
            yield chunk

    def timeout(self) -> httpx2.ReadTimeout:
        return httpx2.ReadTimeout(f"no whole answer within {self._timeout_s:g} s", request=self._request)

    def close(self) -> None:
        self._stream.close()
