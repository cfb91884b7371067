"""The OpenAI request bodies ingate accepts, and what a valid one asks of the governed loop.

Types are strict, as the OpenAI API has them; every refusal is an `ApiError` naming the field.
A top-level field ingate does not honour is a 400 that names it, unless it is one of `IGNORED`
(no effect on the output) or carries its neutral value (`NEUTRAL`, e.g. presence_penalty 0):
silently dropping a constraint the client asked for would hand it output it did not ask for.
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ingate.api.openai import ApiError
from ingate.drivers.base import GenerationParams
from ingate.sampling import SamplingParams
from ingate.structure import Structure, StructureError, from_response_format, from_tools
from ingate.structure.spec import TOOL_MARKER

# Accepted and ignored: they have no effect on what is generated (docs/structured-output.md)
IGNORED = frozenset({"metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})
# Accepted with the value that changes nothing; any other value is a 400
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None), "logit_bias": ({}, None),
    "modalities": (["text"], None), "echo": (False, None), "best_of": (1, None), "suffix": (None, ""),
}

class _Lenient(BaseModel):
    # Inside a message, clients send fields we do not use (`name`): ignore them, do not fail; the
    # request's own fields are checked (`GenerationRequest.unsupported`). Types are strict, as the OpenAI
    # API has them: "max_tokens": "10" or "stream": "yes" is a 400 naming the field, not a guess.
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: list[Any] | None = None  # before content: its validator reads it
    tool_call_id: str | None = None
    content: str | list[ContentPart] | None = Field(default=None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_required(cls, v, info: ValidationInfo):
        """OpenAI: content is required, except on an assistant message that carries tool calls."""
        if v is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError(f"content is required on a {info.data.get('role', 'chat')} message (a string or a "
                             "list of content parts); it is missing or null")
        return v

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool = False


class GenerationRequest(_Lenient):
    """What /v1/chat/completions and /v1/completions have in common."""

    model_config = ConfigDict(extra="allow", strict=True)  # extras are checked: `unsupported`

    chat: ClassVar[bool] = False

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    logprobs: bool | int | None = None
    user: str | None = None
    policy: str | None = None
    response_format: dict[str, Any] | None = None
    ignore_eos: bool = False  # as vLLM and llama.cpp's server take it: always generate max_tokens (benchmarks)

    def unsupported(self) -> None:
        """A 400 for the first field this request sets that ingate does not honour."""
        for name, value in (self.model_extra or {}).items():
            if name in IGNORED:
                continue
            if name in NEUTRAL:
                if any(value == v and type(value) is type(v) for v in NEUTRAL[name]):
                    continue
                raise ApiError(400, f"{name} {json.dumps(value)[:40]} is not supported: ingate does not apply it, "
                                    f"and ignoring it would change the output you asked for; omit {name}", name,
                               "unsupported_parameter")
            raise ApiError(400, f"{name} is not supported by ingate; remove it (docs/structured-output.md lists "
                                "the fields ingate ignores)", name, "unsupported_parameter")

    def structure(self) -> Structure | None:
        """The structure the output must follow (response_format, or a tool call), compiled and checked."""
        try:
            return from_response_format(self.response_format)
        except StructureError as e:
            raise ApiError(400, str(e), e.param, "invalid_response_format") from None

    def engine_input(self, structure: Structure | None = None) -> list[dict[str, str]] | str:
        """The chat (a list of messages) or the raw prompt the engine is given."""
        raise NotImplementedError

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def requested_logprobs(self) -> int | None:
        """How many alternatives per token to report: None for no logprobs."""
        raise NotImplementedError

    def generation(self, default_max_tokens: int, max_tokens_cap: int) -> tuple[GenerationParams, list[str]]:
        """The generation this request asks for, within the server's limits, and its stop sequences."""
        if self.n != 1:
            raise ApiError(400, "n > 1 is not supported: ingate generates one governed choice per request; "
                                "send n separate requests", "n")
        top = self.requested_logprobs()
        mt = self.requested_max_tokens() or default_max_tokens
        if mt > max_tokens_cap:
            raise ApiError(400, f"max_tokens {mt} is over this server's cap of {max_tokens_cap}", "max_tokens")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(400, "stop takes up to 4 non-empty strings", "stop")
        params = GenerationParams(max_tokens=mt, logprobs=top, ignore_eos=self.ignore_eos, sampling=SamplingParams(
            temperature=self.temperature, top_p=self.top_p,
            seed=self.seed if self.seed is not None else int(time.time_ns() % 2**31)))
        return params, stop


class ChatRequest(GenerationRequest):
    chat: ClassVar[bool] = True

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # accepted; a response carries at most one call

    def structure(self) -> Structure | None:
        try:
            tools = from_tools(self.tools, self.tool_choice)
        except StructureError as e:
            raise ApiError(400, str(e), e.param, "invalid_tools") from None
        fmt = super().structure()
        if tools is not None and fmt is not None:
            raise ApiError(400, "response_format and a tool call cannot both constrain one response; send "
                                'tool_choice "none" or drop response_format', "response_format")
        return tools or fmt

    def engine_input(self, structure: Structure | None = None) -> list[dict[str, str]]:
        """The chat the engine renders: tool calls and results written as text the model reads,
        and the tools described in a system message when a call may be made."""
        chat = [{"role": "system" if m.role == "developer" else "user" if m.role == "tool" else m.role,
                 "content": _as_text(m)} for m in self.messages]
        if structure is not None and structure.is_tools:
            note = structure.instruction()
            if chat[0]["role"] == "system":
                chat[0] = {"role": "system", "content": f"{chat[0]['content']}\n\n{note}"}
            else:
                chat.insert(0, {"role": "system", "content": note})
        return chat

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def requested_logprobs(self) -> int | None:
        if self.logprobs:
            return self.top_logprobs or 0
        if self.top_logprobs is not None:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return None


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]

    def engine_input(self, structure: Structure | None = None) -> str:
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "only one prompt per request is supported; send one string", "prompt")
            prompt = prompt[0]
        if not prompt.strip():
            raise ApiError(400, "prompt is empty; give the text to complete", "prompt")
        return prompt

    def requested_logprobs(self) -> int | None:
        if self.logprobs is not None:
            raise ApiError(400, "logprobs on /v1/completions is not supported; use /v1/chat/completions "
                                "with logprobs: true", "logprobs")
        return None


def _as_text(m: Message) -> str:
    """A message as the model reads it: a tool result is labelled, an assistant's tool calls are
    written in the form the model is asked to call in."""
    if m.role == "tool":
        return f"Result of tool call {m.tool_call_id}: {m.text()}" if m.tool_call_id else f"Tool result: {m.text()}"
    calls = []
    for c in m.tool_calls or []:
        fn = c.get("function", {}) if isinstance(c, dict) else {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise ApiError(400, "messages: a tool call's function.arguments must be a JSON string", "messages") \
                from None
        calls.append(TOOL_MARKER + json.dumps({"name": fn.get("name", ""), "arguments": args}, ensure_ascii=False))
    return "\n".join(filter(None, [m.text(), *calls]))


_FIELD_NAMES = frozenset(name for m in (ChatRequest, CompletionRequest, Message, ContentPart, StreamOptions)
                         for name in m.model_fields)
R = TypeVar("R", bound=GenerationRequest)


def parse(body: bytes, model: type[R]) -> R:
    """The request in `body`, or an ApiError naming what is wrong with it (the field, when one is)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to parse; an OpenAI request needs a few "
                            "levels") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        req = model.model_validate(data)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply; an OpenAI request needs a few levels") from None
    except ValidationError as e:
        raise _field_error(e) from None
    req.unsupported()
    return req


def _field_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    # the field's path, without the union member names pydantic adds ('stop.str' is 'stop')
    path = [x for x in err["loc"] if isinstance(x, int) or x in _FIELD_NAMES]
    loc = "".join(f"[{x}]" if isinstance(x, int) else ("." if i else "") + str(x) for i, x in enumerate(path))
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "required field is missing"
    return ApiError(400, f"{loc}: {msg}", param=loc or None)
