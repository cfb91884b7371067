"""What structure a request asks for: `response_format` (a JSON Schema, any JSON object) or a tool
call, checked and compiled to an llguidance grammar before the request is queued.

A `Structure` is plain data (it crosses to the engine core process pickled). The grammar is
llguidance's: its JSON Schema compiler, the one vLLM, SGLang and llama.cpp use, not one of ours.

A tool call is written as JSON, `{"name": ..., "arguments": {...}}`, the arguments constrained by
the function's `parameters` schema. With `tool_choice: auto` the model may answer in text instead:
a call then starts with the marker `<tool_call>`, and text that starts otherwise is an answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import llguidance

TOOL_MARKER = "<tool_call>"
MAX_SCHEMA_BYTES = 100_000  # a schema bigger than this is refused (the grammar compiles per request)


class StructureError(ValueError):
    """A response_format or tools field that cannot be honoured; `param` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Structure:
    """One request's structure. `kind`: json_schema | json_object | tools.

    `schema` is the JSON Schema the whole output must satisfy, except for tools with choice
    `auto`, where it is the schema of a call (the output may be text instead). `choice` (tools):
    auto | required | a function name.
    """

    kind: str
    schema: dict[str, Any]
    name: str = "response"
    strict: bool = False
    tools: tuple[Tool, ...] = ()
    choice: str = ""
    _grammars: dict[bool, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_tools(self) -> bool:
        return self.kind == "tools"

    @property
    def pure_json(self) -> bool:
        """The whole output is one JSON value under `schema` (what an upstream can take pushed down)."""
        return not (self.is_tools and self.choice == "auto")

    def grammar(self, lenient: bool = False) -> str:
        """The llguidance grammar. `lenient`: any JSON whitespace between tokens (checking text an
        upstream wrote); otherwise the compact form a local model is steered into."""
        g = self._grammars.get(lenient)
        if g is None:
            g = self._grammars[lenient] = _grammar(self, lenient)
        return g

    def response_format(self, flavor: str = "openai") -> dict[str, Any]:
        """The `response_format` that pushes this structure down to an upstream: OpenAI's form, or
        (`flavor` llama.cpp) the json_object-with-schema form llama.cpp's servers take."""
        if flavor == "llama.cpp":
            return {"type": "json_object", "schema": self.schema}
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema,
                                                       "strict": self.strict}}

    def instruction(self) -> str:
        """What the model is told about the tools (a system message): the structure is enforced
        anyway, this makes the arguments worth having."""
        listing = json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters}
                              for t in self.tools], ensure_ascii=False)
        call = '{"name": <function name>, "arguments": <arguments object>}'
        if self.choice == "auto":
            how = (f"To call a function, reply with {TOOL_MARKER} followed by one JSON object {call} and nothing "
                   "else. Otherwise answer normally.")
        elif self.choice == "required":
            how = f"Call one of them: reply with one JSON object {call} and nothing else."
        else:
            how = f"Call the function {self.choice}: reply with one JSON object {call} and nothing else."
        return f"You can call these functions:\n{listing}\n{how}"


def _grammar(s: Structure, lenient: bool) -> str:
    # lenient: what any JSON writer may emit (any whitespace, any \\u escape)
    opts: Any = {"whitespace_flexible": True, "json_allow_general_unicode_escapes": True} if lenient \
        else {"whitespace_flexible": False}
    if s.pure_json:
        return llguidance.LLMatcher.grammar_from_json_schema(s.schema, overrides=opts)
    # auto: free text that does not start with the marker, or the marker and one call
    call = {"x-guidance": opts, **s.schema}
    lark = (f'start: TEXT | "{TOOL_MARKER}" call\ncall: %json {json.dumps(call)}\n'
            f"TEXT: /(?s:.+)/ & ~/{TOOL_MARKER}(?s:.*)/\n")
    return llguidance.LLMatcher.grammar_from_lark(lark)


def _validated(s: Structure, param: str) -> Structure:
    """`s` once llguidance accepts its grammar; a StructureError naming `param` otherwise."""
    try:
        bad, msgs = llguidance.LLMatcher.validate_grammar_with_warnings(s.grammar())
    except (ValueError, TypeError) as e:
        raise StructureError(f"{param}: the schema cannot be compiled: {e}", param) from None
    if bad:
        raise StructureError(f"{param}: the schema cannot be enforced: {msgs[0]}", param)
    if s.strict and msgs:  # strict: every keyword must be enforced; llguidance warns about ones it ignores
        raise StructureError(f"{param}: strict is true but part of the schema cannot be enforced: {msgs[0]}; "
                             "drop the keyword or set strict: false", param)
    return s


def _schema(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StructureError(f"{param} must be a JSON Schema object, got {type(value).__name__}", param)
    if len(json.dumps(value)) > MAX_SCHEMA_BYTES:
        raise StructureError(f"{param} is over {MAX_SCHEMA_BYTES} bytes; use a smaller schema", param)
    return value


def from_response_format(rf: Any) -> Structure | None:
    """The structure `response_format` asks for; None for {"type": "text"} or no field."""
    if rf is None:
        return None
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise StructureError('response_format must be an object with a "type": text, json_object or json_schema',
                             "response_format")
    kind = rf["type"]
    extra = set(rf) - {"type", "json_schema"}
    if extra:
        raise StructureError(f"response_format.{sorted(extra)[0]} is not a field of response_format",
                             f"response_format.{sorted(extra)[0]}")
    if kind == "text":
        return None
    if kind == "json_object":
        return _validated(Structure("json_object", {"type": "object"}, name="json_object"), "response_format")
    if kind != "json_schema":
        raise StructureError(f"response_format.type {kind!r} is not supported; use text, json_object or json_schema",
                             "response_format.type")
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise StructureError("response_format.json_schema is required with type json_schema: "
                             '{"name": ..., "schema": {...}, "strict": true}', "response_format.json_schema")
    unknown = set(js) - {"name", "schema", "strict", "description"}
    if unknown:
        f = sorted(unknown)[0]
        raise StructureError(f"response_format.json_schema.{f} is not a field of json_schema",
                             f"response_format.json_schema.{f}")
    name = js.get("name", "response")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise StructureError("response_format.json_schema.name must be a string of 1 to 64 characters",
                             "response_format.json_schema.name")
    strict = js.get("strict", False)
    if not isinstance(strict, bool):
        raise StructureError("response_format.json_schema.strict must be true or false",
                             "response_format.json_schema.strict")
    schema = _schema(js.get("schema", {"type": "object"}), "response_format.json_schema.schema")
    return _validated(Structure("json_schema", schema, name=name, strict=strict),
                      "response_format.json_schema.schema")


def _tool(i: int, t: Any) -> tuple[Tool, bool]:
    where = f"tools[{i}]"
    if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
        raise StructureError(f'{where} must be {{"type": "function", "function": {{"name": ..., "parameters": '
                             "{...}}}}: only function tools are supported", where)
    fn = t["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not name or len(name) > 64 or \
            not all(c.isalnum() or c in "_-" for c in name):
        raise StructureError(f"{where}.function.name must be 1 to 64 letters, digits, _ or -", f"{where}.function.name")
    desc = fn.get("description", "")
    if not isinstance(desc, str):
        raise StructureError(f"{where}.function.description must be a string", f"{where}.function.description")
    params = _schema(fn.get("parameters", {"type": "object", "properties": {}}), f"{where}.function.parameters")
    strict = fn.get("strict", False)
    if not isinstance(strict, bool):
        raise StructureError(f"{where}.function.strict must be true or false", f"{where}.function.strict")
    return Tool(name, desc, params), strict


def _call_schema(tools: tuple[Tool, ...]) -> dict[str, Any]:
    calls = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def from_tools(tools: Any, tool_choice: Any) -> Structure | None:
    """The structure `tools` and `tool_choice` ask for; None when no tool may be called."""
    if tools is None:
        if tool_choice not in (None, "none"):
            raise StructureError("tool_choice needs tools: list the functions the model may call", "tool_choice")
        return None
    if not isinstance(tools, list) or not tools:
        raise StructureError("tools must be a non-empty list of function tools", "tools")
    parsed = [_tool(i, t) for i, t in enumerate(tools)]
    names = [t.name for t, _ in parsed]
    if len(set(names)) != len(names):
        raise StructureError("tools: two functions have the same name", "tools")
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise StructureError('tool_choice must be "none", "auto", "required" or {"type": "function", '
                                 '"function": {"name": ...}}', "tool_choice")
        if fn["name"] not in names:
            raise StructureError(f"tool_choice names {fn['name']!r}, which is not in tools ({', '.join(names)})",
                                 "tool_choice")
        choice = fn["name"]
    elif choice not in ("none", "auto", "required"):
        raise StructureError(f'tool_choice {choice!r} is not "none", "auto", "required" or a named function',
                             "tool_choice")
    if choice == "none":
        return None
    chosen = tuple(t for t, _ in parsed if choice in ("auto", "required") or t.name == choice)
    strict = all(s for t, s in parsed if t in chosen)
    return _validated(Structure("tools", _call_schema(chosen), name="tool_call", strict=strict, tools=chosen,
                                choice=choice), "tools")


def parse_call(text: str) -> tuple[str, str] | None:
    """(function name, arguments as a JSON string) of a complete tool call; None when `text` is an
    answer in text (tool_choice auto) or is not a whole call."""
    body = text[len(TOOL_MARKER):] if text.startswith(TOOL_MARKER) else text
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or "arguments" not in call:
        return None
    return call["name"], json.dumps(call["arguments"], ensure_ascii=False)
