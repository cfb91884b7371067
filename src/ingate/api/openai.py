"""How ingate answers in OpenAI's shapes: response bodies, stream chunks, usage and error bodies.

Only formatting: what a `Result` and its `governance` report look like on the wire. The errors a
generation can end with are mapped here too, and an unexpected one is logged with its request id:
the client gets the id, never the exception's text (it may quote a policy).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from ingate.drivers.base import Result
from ingate.engines import ContextFull, EngineCrashed
from ingate.structure import TOOL_MARKER, Structure, parse_call
from ingate.upstream.client import UpstreamError
from ingate.worker import Draining, WaitedTooLong

log = logging.getLogger("ingate.server")
DONE = "data: [DONE]\n\n"


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def generation_error(err: BaseException, request_id: str) -> ApiError:
    """The OpenAI-shaped error for a generation the engine could not finish. An unexpected error's
    text stays in the server's log (it may quote a policy); the client gets the request id."""
    if isinstance(err, EngineCrashed):
        return ApiError(503, str(err), code="engine_crashed", type_="server_error", headers={"Retry-After": "1"})
    if isinstance(err, ContextFull):
        return ApiError(400, str(err), code="context_length_exceeded")
    if isinstance(err, WaitedTooLong):
        return ApiError(429, str(err), code="queue_timeout", type_="rate_limit_error", headers={"Retry-After": "1"})
    if isinstance(err, Draining):
        return ApiError(503, str(err), code="shutting_down", type_="server_error", headers={"Retry-After": "1"})
    if isinstance(err, UpstreamError):  # what the upstream did, said plainly; its Retry-After passed on
        headers = {"Retry-After": f"{err.retry_after:g}"} if err.retry_after is not None else None
        return ApiError(err.status, str(err), code=err.code, type_=err.type_, headers=headers)
    log.error("request %s failed: %s: %s", request_id, type(err).__name__, err)
    return ApiError(500, f"generation failed with an internal error (request {request_id}; the server's log "
                         "and audit have the details)", type_="server_error", code="internal_error")


@dataclass(frozen=True)
class Answer:
    """A chat response's message under a tool structure: its text, or one whole call, never half."""

    content: str | None
    tool_calls: list[dict] | None
    finish_reason: str


def tool_answer(structure: Structure, text: str, finish: str, request_id: str) -> Answer:
    """What a response under `tools` says. A complete call (finish stop) becomes `tool_calls` with
    finish_reason tool_calls; a call cut short (length, content_filter) is withheld whole; text the
    model wrote instead of a call (tool_choice auto) is the content."""
    is_call = structure.choice != "auto" or text.startswith(TOOL_MARKER)  # auto: JSON without the marker is text
    call = parse_call(text) if finish == "stop" and is_call else None
    if call is not None:
        name, args = call
        return Answer(None, [{"id": "call_" + request_id[:24], "type": "function",
                              "function": {"name": name, "arguments": args}}], "tool_calls")
    if text and not may_be_call(structure, text):
        return Answer(text, None, finish)
    return Answer(None, None, finish)


def may_be_call(structure: Structure, text: str) -> bool:
    """Can output that starts with `text` still be a tool call? Always, unless tool_choice is
    auto and the text has left the call marker: it is then an answer in text, and may stream."""
    return structure.choice != "auto" or TOOL_MARKER.startswith(text[:len(TOOL_MARKER)])


def usage(res: Result) -> dict:
    return {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "total_tokens": res.prompt_tokens + res.completion_tokens}


@dataclass(frozen=True)
class Reply:
    """One response: its id, time and model, as a whole body or as server-sent event chunks."""

    id: str
    created: int
    model: str
    chat: bool  # /v1/chat/completions; else /v1/completions

    @classmethod
    def new(cls, request_id: str, model: str, chat: bool) -> Reply:
        return cls(("chatcmpl-" if chat else "cmpl-") + request_id[:24], int(time.time()), model, chat)

    def body(self, res: Result, text: str, governance: dict, answer: Answer | None = None) -> dict:
        """The whole (non-streaming) response. `answer`: the message under a tool structure."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": answer.finish_reason if answer else res.finish_reason,
                                  "logprobs": {"content": res.logprobs} if res.logprobs is not None else None}
        if self.chat and answer is not None:
            choice["message"] = {"role": "assistant", "content": answer.content}
            if answer.tool_calls:
                choice["message"]["tool_calls"] = answer.tool_calls
        elif self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": usage(res),
                "governance": governance}

    def chunk(self, delta_text: str | None, finish: str | None = None, role: bool = False,
              extra: dict | None = None, logprobs: list | None = None, tool_calls: list[dict] | None = None) -> str:
        """One stream event carrying `delta_text` (chat: None carries no content) or whole tool calls."""
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if delta_text is not None:
                delta["content"] = delta_text
            if tool_calls:
                delta["tool_calls"] = [{"index": i} | c for i, c in enumerate(tool_calls)]
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish,
                                      "logprobs": {"content": logprobs} if logprobs is not None else None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
        body = {"id": self.id, "object": self._chunk_object, "created": self.created, "model": self.model,
                "choices": [choice]}
        if extra:
            body.update(extra)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def first_chunk(self) -> str | None:
        """What a chat stream opens with (the assistant's role); a completion stream has none."""
        return self.chunk("", role=True) if self.chat else None

    def final_chunk(self, res: Result, governance: dict, answer: Answer | None = None) -> str:
        """The stream's end: the finish reason, the logprobs and the governance report."""
        return self.chunk(None, finish=answer.finish_reason if answer else res.finish_reason, logprobs=res.logprobs,
                          extra={"governance": governance})

    def usage_chunk(self, res: Result) -> str:
        body = {"id": self.id, "object": self._chunk_object, "created": self.created, "model": self.model,
                "choices": [], "usage": usage(res)}
        return f"data: {json.dumps(body)}\n\n"

    @staticmethod
    def error_chunk(err: ApiError) -> str:
        return f"data: {json.dumps(err.body())}\n\n"

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"
