"""One upstream request as an iterator of parsed stream chunks, and every way it can fail.

ingate always asks its upstream to stream, even for a client that does not: hold-back works the
same way, and a stop can cancel the upstream early. Closing the iterator closes the connection
(it is not drained), which is how an upstream learns to stop generating, and billing.

Failures are `UpstreamError`s that say what the client should be told: an HTTP 429 or 5xx from the
upstream (with its Retry-After), a timeout (nothing for `idle_timeout_s`, or the whole request over
`timeout_s`, which also bounds a stream that never ends), a connection lost mid-stream, and bytes
that are not OpenAI's stream (malformed SSE or JSON, an error event). Opening a request is retried
with backoff on a 429, a 5xx or a refused connection, but only while `may_retry()` says nothing
of the request has been released.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ingate.engines.base import EngineError
from ingate.upstream.config import UpstreamModel
from ingate.upstream.sse import SSEError, events

MAX_BACKOFF_S = 10.0


class UpstreamError(EngineError):
    """The upstream failed this request. `status`/`code`: what ingate answers its client;
    `retry_after`: seconds, passed on as Retry-After."""

    status, code, type_ = 502, "upstream_error", "server_error"

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        if status is not None:
            self.status = status


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamRateLimited(UpstreamError):
    status, code, type_ = 429, "upstream_rate_limited", "rate_limit_error"


class UpstreamAuthError(UpstreamError):
    code = "upstream_auth"


class UpstreamRejected(UpstreamError):
    """The upstream refused the request as invalid (HTTP 4xx): passed on as a 400 with its reason."""

    status, code, type_ = 400, "upstream_rejected", "invalid_request_error"


class Client:
    """HTTP to one upstream: pooled connections, its key in the Authorization header."""

    def __init__(self, spec: UpstreamModel, transport: httpx.BaseTransport | None = None):
        self.spec = spec
        headers = {"Accept": "text/event-stream"}
        if (key := spec.api_key()) is not None:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=spec.max_concurrency * 2, max_keepalive_connections=spec.max_concurrency)
        timeout = httpx.Timeout(connect=min(10.0, spec.timeout_s), read=spec.idle_timeout_s, write=10.0, pool=None)
        self.http = httpx.Client(base_url=spec.base_url, headers=headers, timeout=timeout, limits=limits,
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def stream(self, path: str, body: dict[str, Any], may_retry: Callable[[], bool] = lambda: True,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
        """The parsed chunks of one streamed request (`path` under base_url, e.g. /chat/completions).
        A generator: the request is sent at the first `next()`; `close()` cancels it."""
        deadline = time.monotonic() + self.spec.timeout_s
        for attempt in range(self.spec.retries + 1):
            try:
                resp = self._open(path, body)
            except UpstreamError as e:
                if not _retryable(e) or attempt == self.spec.retries or not may_retry():
                    raise
                wait = min(MAX_BACKOFF_S, e.retry_after if e.retry_after is not None else 0.25 * 2 ** attempt)
                if time.monotonic() + wait > deadline:
                    raise
                sleep(wait)
                continue
            break
        try:
            yield from self._chunks(resp, deadline)
        finally:
            resp.close()  # not drained: closing the connection cancels the upstream's generation

    def _open(self, path: str, body: dict[str, Any]) -> httpx.Response:
        where = f"upstream {self.spec.name!r}"
        try:
            resp = self.http.send(self.http.build_request("POST", path, json=body), stream=True)
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"{where} did not answer in time ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise UpstreamError(f"cannot reach {where}: {type(e).__name__}: {e}") from e
        if resp.status_code == 200:
            kind = resp.headers.get("content-type", "")
            if kind.startswith("application/json"):  # it ignored stream: true, or is not OpenAI's API
                resp.close()
                raise UpstreamProtocolError(f"{where} answered JSON, not an event stream: it does not stream "
                                            "(ingate asks every upstream for `stream: true`)")
            return resp
        try:
            raw = resp.read()[:2000].decode("utf-8", errors="replace")
        except httpx.HTTPError:
            raw = ""
        finally:
            resp.close()
        reason = _error_message(raw) or resp.reason_phrase
        retry_after = _retry_after(resp.headers.get("retry-after"))
        msg = f"{where} answered HTTP {resp.status_code}: {reason}"
        if resp.status_code == 429:
            raise UpstreamRateLimited(msg, retry_after)
        if resp.status_code in (401, 403):
            raise UpstreamAuthError(msg + " (check the API key in the model's api_key_env)")
        if 400 <= resp.status_code < 500:
            raise UpstreamRejected(msg)
        raise UpstreamError(msg, retry_after, status=503 if resp.status_code == 503 else 502)

    def _chunks(self, resp: httpx.Response, deadline: float) -> Iterator[dict[str, Any]]:
        where = f"upstream {self.spec.name!r}"

        def raw() -> Iterator[bytes]:
            for b in resp.iter_raw():
                if time.monotonic() > deadline:
                    raise UpstreamTimeout(f"{where}'s stream ran past timeout_s ({self.spec.timeout_s:g} s)")
                yield b

        finished = False  # a choice said its finish_reason: a stream may end without [DONE] after it
        try:
            for data in events(raw()):
                if data.strip() == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError as e:
                    raise UpstreamProtocolError(f"{where} sent an event that is not JSON ({e}): {data[:80]!r}") \
                        from None
                if not isinstance(chunk, dict):
                    raise UpstreamProtocolError(f"{where} sent an event that is not a JSON object: {data[:80]!r}")
                if "error" in chunk:
                    raise UpstreamError(f"{where} failed mid-stream: {_error_message(json.dumps(chunk)) or chunk}")
                finished = finished or any(isinstance(c, dict) and c.get("finish_reason")
                                           for c in chunk.get("choices") or ())
                yield chunk
        except SSEError as e:
            raise UpstreamProtocolError(f"{where} sent a malformed stream: {e}") from None
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"{where} stalled: nothing for idle_timeout_s ({self.spec.idle_timeout_s:g} s)") \
                from e
        except httpx.TransportError as e:
            raise UpstreamError(f"{where}'s connection was lost mid-stream: {type(e).__name__}: {e}") from e
        if not finished:
            raise UpstreamProtocolError(f"{where}'s stream ended without a finish_reason or [DONE]: the connection "
                                        "was cut")


def _retryable(e: UpstreamError) -> bool:
    return isinstance(e, UpstreamRateLimited) or (type(e) is UpstreamError and e.status in (502, 503))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare from APIs; the backoff decides


def _error_message(raw: str) -> str | None:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        return raw.strip()[:300] or None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)[:300]
    if isinstance(err, str):
        return err[:300]
    return None
