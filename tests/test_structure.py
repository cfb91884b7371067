"""Structured output without the model: what a request may ask (response_format, tools, fields
ingate does not honour), the structure checked over text however it is split, and an upstream
that breaks the structure. The upstream here is `ScriptedUpstream`, a test double (said so in
tests/upstreams.py): no real server can be told to write broken JSON split where hypothesis says.
The real model and a real upstream are in tests/test_structured.py."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import policy, random_split, user
from ingate.api.openai import ApiError, tool_answer
from ingate.api.schema import ChatRequest, CompletionRequest, parse
from ingate.core import Request
from ingate.drivers.base import GenerationParams
from ingate.policy import load_policy
from ingate.sampling import SamplingParams
from ingate.structure import TOOL_MARKER, StructureError, from_response_format, from_tools, parse_call
from ingate.structure.matcher import TextMatcher
from ingate.structure.rules import inside_structure
from ingate.upstream.config import upstream
from ingate.upstream.core import UpstreamCore
from upstreams import ScriptedUpstream

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                           "age": {"type": "integer", "minimum": 0},
                                           "email": {"type": "string", "maxLength": 60}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"], "additionalProperties": False}}}


def fmt(schema: dict, **extra) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, **extra}}


# ---- what a request may ask ------------------------------------------------------------------------
@pytest.mark.parametrize("rf, param", [
    ("json", "response_format"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON, "indent": 2}}, "response_format.json_schema.indent"),
    ({"type": "json_schema", "json_schema": {"schema": "object"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON, "strict": "yes"}}, "response_format.json_schema.strict"),
    ({"type": "json_object", "schema": PERSON}, "response_format.schema"),
])
def test_a_response_format_that_cannot_be_honoured_is_a_400_naming_the_field(rf, param):
    with pytest.raises(StructureError) as e:
        from_response_format(rf)
    assert e.value.param == param
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "response_format": rf}).encode()
    with pytest.raises(ApiError) as err:
        parse(body, ChatRequest).structure()
    assert err.value.status == 400 and err.value.param == param


def test_text_is_no_structure_and_json_object_is_any_object():
    assert from_response_format({"type": "text"}) is None and from_response_format(None) is None
    m = TextMatcher(from_response_format({"type": "json_object"}))
    data = b'{"a": [1, {"b": null}], "c": "d"}'
    assert m.feed(data) == len(data) and m.accepting
    assert TextMatcher(from_response_format({"type": "json_object"})).feed(b"[1, 2]") == 0  # an object, not a list


@pytest.mark.parametrize("tools, choice, param", [
    ([{"type": "retrieval"}], None, "tools[0]"),
    ([{"type": "function", "function": {"name": "has space"}}], None, "tools[0].function.name"),
    ([WEATHER, WEATHER], None, "tools"),
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ([WEATHER], "sometimes", "tool_choice"),
    (None, "required", "tool_choice"),
    ([], None, "tools"),
])
def test_tools_that_cannot_be_honoured_are_a_400_naming_the_field(tools, choice, param):
    with pytest.raises(StructureError) as e:
        from_tools(tools, choice)
    assert e.value.param == param


def test_tool_choice_shapes_the_call():
    assert from_tools([WEATHER], "none") is None
    auto = from_tools([WEATHER], None)
    assert auto.choice == "auto" and not auto.pure_json
    named = from_tools([WEATHER, {**WEATHER, "function": {**WEATHER["function"], "name": "other"}}],
                       {"type": "function", "function": {"name": "other"}})
    assert named.choice == "other" and [t.name for t in named.tools] == ["other"] and named.pure_json
    call = b'{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert TextMatcher(from_tools([WEATHER], "required")).feed(call) == len(call)
    assert TextMatcher(named).feed(call) < len(call)  # only `other` may be called
    m = TextMatcher(auto)
    assert m.feed(TOOL_MARKER.encode() + call) == len(call) + len(TOOL_MARKER) and m.done
    m = TextMatcher(auto)
    assert m.feed(b"It is sunny in Oslo.") == 20 and m.accepting  # auto: an answer in text is allowed


def test_a_tool_call_is_answered_whole_or_not_at_all():
    auto = from_tools([WEATHER], "auto")
    call = TOOL_MARKER + '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    a = tool_answer(auto, call, "stop", "r1")
    assert a.finish_reason == "tool_calls" and a.content is None
    assert a.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    cut = tool_answer(auto, call[:30], "length", "r1")  # half a call: nothing of it
    assert cut.tool_calls is None and cut.content is None and cut.finish_reason == "length"
    assert tool_answer(auto, call, "content_filter", "r1").tool_calls is None
    text = tool_answer(auto, "It is sunny.", "stop", "r1")
    assert text.content == "It is sunny." and text.finish_reason == "stop"
    assert parse_call('{"name": "f"}') is None and parse_call("not json") is None
    lookalike = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'  # under auto, no marker: an answer
    assert tool_answer(auto, lookalike, "stop", "r1") == type(a)(lookalike, None, "stop")
    assert tool_answer(from_tools([WEATHER], "required"), lookalike, "stop", "r1").finish_reason == "tool_calls"


def test_assistant_tool_calls_and_tool_results_reach_the_model_as_text():
    req = ChatRequest.model_validate({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"}], "tools": [WEATHER]})
    st_ = req.structure()
    chat = req.engine_input(st_)
    assert chat[0]["role"] == "system" and "get_weather" in chat[0]["content"]
    assert chat[2] == {"role": "assistant", "content": TOOL_MARKER + '{"name": "get_weather", "arguments": '
                                                                      '{"city": "Oslo"}}'}
    assert chat[3] == {"role": "user", "content": "Result of tool call c1: sunny, 21 C"}


def test_response_format_and_a_tool_call_together_is_a_400():
    req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
                                      "tool_choice": "required", "response_format": {"type": "json_object"}})
    with pytest.raises(ApiError) as e:
        req.structure()
    assert e.value.param == "response_format"


@pytest.mark.parametrize("field, value", [("frequency_penalty", 0.5), ("presence_penalty", -1),
                                          ("logit_bias", {"42": -100}), ("functions", []),
                                          ("reasoning_effort", "high"), ("modalities", ["text", "audio"]),
                                          ("prediction", {"type": "content", "content": "x"})])
def test_a_field_ingate_does_not_honour_is_a_400_that_names_it(field, value):
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], field: value}).encode()
    with pytest.raises(ApiError) as e:
        parse(body, ChatRequest)
    assert e.value.status == 400 and e.value.param == field and field in e.value.message
    body = json.dumps({"prompt": "hi", field: value}).encode()
    with pytest.raises(ApiError):
        parse(body, CompletionRequest)


@pytest.mark.parametrize("field, value", [("frequency_penalty", 0), ("presence_penalty", 0.0), ("logit_bias", {}),
                                          ("user", "u1"), ("metadata", {"a": "b"}), ("store", False),
                                          ("service_tier", "auto"), ("parallel_tool_calls", True)])
def test_documented_ignored_fields_and_neutral_values_are_accepted(field, value):
    parse(json.dumps({"messages": [{"role": "user", "content": "hi"}], field: value}).encode(), ChatRequest)


def test_inside_structure_redaction_becomes_prevention():
    default = load_policy(None)
    inside = inside_structure(default)
    assert {r.action for r in default.rules_of("forbid")} >= {"redact"}
    assert "redact" not in {r.action for r in inside.rules_of("forbid")}
    assert inside.digest != default.digest
    plain = policy("version: 1\nname: p\nrules:\n  - id: x\n    forbid: {phrases: [a b]}\n    action: stop\n")
    assert inside_structure(plain) is plain


# ---- the structure over text, however it is split -------------------------------------------------
# llguidance's JSON grammar refuses a raw DEL (0x7f) inside a string, which JSON allows (docs/
# structured-output.md, "Limits"); every other character is tested, but lone surrogates (not text)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f"), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(TEXT, JSON_VALUES, max_size=5), st.booleans(), st.data())
def test_any_valid_json_object_passes_the_check_however_it_is_split(obj, pretty, data):
    text = json.dumps(obj, indent=2 if pretty else None, ensure_ascii=data.draw(st.booleans())).encode()
    m = TextMatcher(from_response_format({"type": "json_object"}))
    for piece in random_split(data.draw, text):
        assert m.feed(piece) == len(piece)
    assert m.accepting


@settings(max_examples=150, deadline=None)
@given(TEXT, st.integers(0, 200), st.data())
def test_the_check_stops_at_the_first_byte_that_breaks_the_schema(name, age, data):
    good = json.dumps({"name": name, "age": age}, ensure_ascii=False).encode()
    bad = good[:-1] + b', "extra": 1}'  # additionalProperties: false
    m = TextMatcher(from_response_format(fmt({**PERSON, "properties": {**PERSON["properties"],
                                                                        "name": {"type": "string"}}})))
    fed = 0
    for piece in random_split(data.draw, bad):
        ok = m.feed(piece)
        fed += ok
        if ok < len(piece):
            break
    assert fed == len(good) - 1 + len(b', "e')  # `, "e` may still become "email"; `"ex` may not
    assert not m.accepting


# ---- an upstream that breaks the structure ---------------------------------------------------------
@pytest.fixture(scope="module")
def scripted():
    up = ScriptedUpstream()
    core = UpstreamCore(upstream("scripted", up.url, "m", retries=0, timeout_s=20,
                                 capabilities=["+json_schema"]), None)
    yield up, core
    core.close()
    up.close()


def _request(structure, pol=None) -> Request:
    params = GenerationParams(max_tokens=200, sampling=SamplingParams(temperature=0.0, seed=1))
    return Request(user("a person as JSON"), pol or load_policy("none"), params, structure=structure)


def _valid_prefix(structure, text: str) -> bool:
    data = text.encode()
    return TextMatcher(structure).feed(data) == len(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_an_upstream_that_breaks_the_schema_is_continued_from_its_last_valid_byte(scripted, data):
    up, core = scripted
    structure = from_response_format(fmt(PERSON))
    first = '{"name": "Ann", "age": "forty"}'  # age must be an integer
    rest = '41, "email": "ann@example.com"}\n'  # the address is withdrawn: the default policy's email rule
    again = 'none given"}'
    up.script([random_split_text(data, t) for t in (first, rest, again)], [[], [], []])
    res = core.run(_request(structure, load_policy(None)))
    assert res.finish_reason == "stop", res.decisions
    out = json.loads(res.text)
    jsonschema.validate(out, PERSON)
    assert out == {"name": "Ann", "age": 41, "email": "none given"}  # prevented inside JSON, never a placeholder
    assert "response_format" in up.bodies[0] and "response_format" not in up.bodies[1]  # pushed down once
    assert any(d.rule_id == "structure" and d.action == "resample" for d in res.decisions)


def random_split_text(data, text: str) -> list[str]:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=6)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if text[a:b]]


def test_an_upstream_that_never_complies_ends_content_filter_with_only_valid_text_released(scripted):
    up, core = scripted
    structure = from_response_format(fmt(PERSON))
    up.script([['{"name": "Ann", "age": "forty"}']] * 4, [[]] * 4)
    released: list[str] = []
    res = core.run(_request(structure), on_text=released.append)
    assert res.finish_reason == "content_filter"
    assert _valid_prefix(structure, "".join(released)) and "forty" not in "".join(released)
    assert [d.action for d in res.decisions if d.rule_id == "structure"] == ["resample", "resample", "stop"]


def test_an_upstream_that_stops_short_of_the_structure_is_continued(scripted):
    up, core = scripted
    structure = from_response_format(fmt(PERSON))
    up.script([['{"name": "Ann", '], ['"age": 7}']], [[], []])
    res = core.run(_request(structure))
    assert res.finish_reason == "stop" and json.loads(res.text) == {"name": "Ann", "age": 7}
