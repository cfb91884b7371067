"""Structured output on the real model: 60 schemas greedy and sampled, rules inside JSON fields and
tool arguments, the official `openai` client (`parse` with a Pydantic model, tools), and a real
upstream (llama-cpp-python's server) with the schema pushed down and checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import openai
import pydantic
import pytest

from conftest import SEARCH, gen_params, policy, user
from ingate.core import Request
from ingate.policy import NONE_POLICY, load_policy
from ingate.structure import from_response_format, from_tools
from ingate.structure.matcher import TextMatcher
from ingate.upstream.config import upstream
from ingate.upstream.core import UpstreamCore
from upstreams import FaultProxy, ingate_serve, llama_server

pytestmark = pytest.mark.slow
SCHEMAS = json.loads((Path(__file__).parent / "data" / "structured" / "schemas.json").read_text())
# independent oracles (not ingate's own patterns): any e-mail address; the prompt's phone number
# however it is punctuated
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def has_phone(text: str) -> bool:
    return "4155550132" in re.sub(r"\D", "", text)

CONTACT = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                            "email": {"type": "string", "maxLength": 40},
                                            "phone": {"type": "string", "maxLength": 20}},
           "required": ["name", "email", "phone"], "additionalProperties": False}
CONTACT_PROMPT = ("Make a JSON contact card for John Smith. His email is john.smith@example.com and his phone "
                  "is 415-555-0132.")
SEND = {"type": "function", "function": {
    "name": "send_email", "description": "Send an e-mail",
    "parameters": {"type": "object", "properties": {"to": {"type": "string", "maxLength": 40},
                                                    "subject": {"type": "string", "maxLength": 40}},
                   "required": ["to", "subject"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}


def fmt(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def valid_prefix(structure, text: str) -> bool:
    data = text.encode()
    return TextMatcher(structure).feed(data) == len(data)


def check(schema: dict, text: str) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())


# ---- 60 schemas, greedy and sampled ----------------------------------------------------------------
@pytest.mark.parametrize("temperature, seed", [(0.0, 0), (0.8, 7)], ids=["greedy", "sampled"])
def test_every_output_follows_its_schema_under_the_default_policy(runtime, temperature, seed):
    """Every output is a valid prefix of its schema; every one that ends `stop` parses and
    validates; no e-mail address reaches any field. A schema that demands what the policy forbids
    (format: email) ends content_filter, audited, never with the address."""
    default = load_policy(None)
    ends: dict[str, int] = {}
    for row in SCHEMAS:
        structure = from_response_format(fmt(row["name"], row["schema"]))
        res = runtime.run(user(row["prompt"]), default, gen_params(200, temperature, seed), structure=structure)
        ends[res.finish_reason] = ends.get(res.finish_reason, 0) + 1
        assert valid_prefix(structure, res.text), (row["name"], res.text)
        assert not EMAIL.search(res.text), (row["name"], res.text)
        if res.finish_reason == "stop":
            check(row["schema"], res.text)
        elif res.finish_reason == "content_filter":
            assert res.decisions, row["name"]
        else:
            assert res.finish_reason == "length", (row["name"], res.finish_reason)
    assert ends.get("stop", 0) >= 0.85 * len(SCHEMAS), ends


QUIET = policy("""
version: 1
name: quiet
rules:
  - id: never
    forbid: {phrases: [Zyxq Vormbat Holdings]}
    action: prevent
""")


@pytest.mark.parametrize("temperature, seed", [(0.0, 0), (0.9, 3)], ids=["greedy", "sampled"])
def test_a_gate_that_never_fires_is_transparent_inside_a_structure(runtime, temperature, seed):
    """Invariant 4 with a structure: the same seed gives the same JSON with and without the gate."""
    for row in SCHEMAS[::6]:
        structure = from_response_format(fmt(row["name"], row["schema"]))
        p = gen_params(120, temperature, seed)
        alone = runtime.run(user(row["prompt"]), NONE_POLICY, p, structure=structure)
        gated = runtime.run(user(row["prompt"]), QUIET, p, structure=structure)
        assert gated.text == alone.text and gated.finish_reason == alone.finish_reason, row["name"]
        assert not gated.decisions


@pytest.mark.parametrize("pol", [NONE_POLICY, QUIET], ids=["ungoverned", "governed"])
def test_a_structure_completed_by_the_last_allowed_token_ends_stop(runtime, pol):
    structure = from_response_format(fmt("flag", {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                                  "required": ["ok"], "additionalProperties": False}))
    messages = user("Is water wet? Answer as JSON.")
    free = runtime.run(messages, pol, gen_params(40), structure=structure)
    assert free.finish_reason == "stop"
    exact = runtime.run(messages, pol, gen_params(free.completion_tokens), structure=structure)
    assert exact.text == free.text and exact.finish_reason == "stop"  # complete, so not `length`


# ---- rules inside the structure ---------------------------------------------------------------------
def _ungoverned_runs(runtime, messages, structure, produced, want: int = 3, max_tokens: int = 120) -> list:
    """Settings at which the ungoverned model, held to the same structure, writes what `produced`
    looks for: a test that finds nothing to govern fails."""
    found = []
    for temperature, seed in SEARCH:
        p = gen_params(max_tokens, temperature, seed)
        res = runtime.run(messages, NONE_POLICY, p, structure=structure)
        assert valid_prefix(structure, res.text)
        if produced(res.text):
            found.append(p)
            if len(found) == want:
                return found
    if not found:
        pytest.fail("the ungoverned model never wrote the governed text inside the structure: nothing was tested")
    return found


def test_pii_never_reaches_a_json_field_and_the_output_stays_valid(runtime):
    structure = from_response_format(fmt("contact", CONTACT))
    messages = user(CONTACT_PROMPT)
    runs = _ungoverned_runs(runtime, messages, structure, lambda t: bool(EMAIL.search(t)) or has_phone(t))
    default = load_policy(None)
    for p in runs:
        res = runtime.run(messages, default, p, structure=structure)
        assert not EMAIL.search(res.text) and not has_phone(res.text), res.text
        assert valid_prefix(structure, res.text)
        if res.finish_reason == "stop":
            check(CONTACT, res.text)
        assert any(d.rule_id == "pii" and d.action in ("prevent", "stop") for d in res.decisions)
        assert "[" not in res.text  # prevented, never redacted into the JSON


TOWER = policy("""
version: 1
name: no-tower
rules:
  - id: tower
    forbid: {phrases: [Eiffel]}
    action: prevent
""")
LANDMARK = {"type": "object", "properties": {"landmark": {"type": "string", "maxLength": 40},
                                             "city": {"type": "string", "maxLength": 20}},
            "required": ["landmark", "city"], "additionalProperties": False}


def test_a_banned_phrase_is_prevented_inside_json_with_the_matcher_rolled_back(runtime):
    structure = from_response_format(fmt("landmark", LANDMARK))
    messages = user("What is the most famous landmark in Paris? Answer as JSON.")
    runs = _ungoverned_runs(runtime, messages, structure, lambda t: "eiffel" in t.lower())
    rollbacks = 0
    for p in runs:
        res = runtime.run(messages, TOWER, p, structure=structure)
        assert "eiffel" not in res.text.lower()
        assert valid_prefix(structure, res.text)
        if res.finish_reason == "stop":
            check(LANDMARK, res.text)
        rollbacks += res.rollbacks
    assert rollbacks > 0  # held text was rolled back in the engine, the gate and the grammar together


def test_tool_arguments_are_governed_text(runtime):
    structure = from_tools([SEND], "required")
    from ingate.api.schema import ChatRequest

    req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "E-mail john.smith@example.com "
                                                    "to say the meeting moved to Friday."}], "tools": [SEND]})
    messages = req.engine_input(structure)
    runs = _ungoverned_runs(runtime, messages, structure, lambda t: bool(EMAIL.search(t)))
    for p in runs:
        res = runtime.run(messages, load_policy(None), p, structure=structure)
        assert not EMAIL.search(res.text) and valid_prefix(structure, res.text)
        if res.finish_reason == "stop":
            call = json.loads(res.text)
            assert call["name"] == "send_email"
            jsonschema.validate(call["arguments"], SEND["function"]["parameters"])


# ---- the official client ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    proc, url = ingate_serve("--max-tokens-cap", "512")
    yield url
    proc.terminate()
    proc.wait(30)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population_millions: float


def test_the_openai_client_parses_a_pydantic_model(server):
    c = client(server)
    for seed in (0, 1, 2):
        r = c.chat.completions.parse(model="any", messages=[{"role": "user", "content": "Describe Tokyo as JSON."}],
                                     response_format=City, max_tokens=120, temperature=0.7, seed=seed)
        choice = r.choices[0]
        assert valid_prefix(from_response_format(fmt("City", City.model_json_schema())), choice.message.content)
        if choice.finish_reason == "stop":
            assert isinstance(choice.message.parsed, City)
            assert "governance" in r.model_extra
            return
    pytest.fail("no parse finished in 3 tries at 120 tokens")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
def test_tools_give_a_whole_call_with_arguments_that_follow_the_schema(server, choice):
    r = client(server).chat.completions.create(
        model="any", messages=[{"role": "user", "content": "What's the weather in Oslo?"}], tools=[SEND, WEATHER],
        tool_choice=choice, max_tokens=120, temperature=0.0)
    msg, finish = r.choices[0].message, r.choices[0].finish_reason
    assert finish == "tool_calls", (finish, msg)
    assert msg.content is None and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    params = {"send_email": SEND, "get_weather": WEATHER}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), params)


def test_the_governance_report_covers_a_tool_calls_arguments(server, runtime):
    """Over HTTP, at settings where the ungoverned model writes the address into the arguments:
    the call carries none, and the report names the rule that acted (never the address)."""
    from ingate.api.schema import ChatRequest

    ask = [{"role": "user", "content": "E-mail john.smith@example.com to say the meeting moved to Friday."}]
    structure = from_tools([SEND], "required")
    messages = ChatRequest.model_validate({"messages": ask, "tools": [SEND]}).engine_input(structure)
    runs = _ungoverned_runs(runtime, messages, structure, lambda t: bool(EMAIL.search(t)), want=2)
    for p in runs:
        r = client(server).chat.completions.create(
            model="any", messages=ask, tools=[SEND], tool_choice="required", max_tokens=p.max_tokens,
            temperature=p.sampling.temperature, seed=p.sampling.seed)
        choice, report = r.choices[0], r.model_extra["governance"]
        body = r.model_dump_json()
        assert not EMAIL.search(body)
        assert any(d["rule"] == "pii" for d in report["decisions"]), report
        if choice.finish_reason == "tool_calls":
            jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments),
                                SEND["function"]["parameters"])
        else:  # the call was cut short: withheld whole
            assert choice.message.tool_calls is None and choice.message.content is None


def test_tool_choice_auto_answers_in_text_or_with_a_call(server):
    c = client(server)  # each answer is text or one whole call, never both, never half a call
    for q in ("What's the weather in Oslo? Use the tool.", "Say hello."):
        r = c.chat.completions.create(model="any", messages=[{"role": "user", "content": q}], tools=[WEATHER],
                                      max_tokens=80, temperature=0.0)
        msg, finish = r.choices[0].message, r.choices[0].finish_reason
        if msg.tool_calls:
            assert finish == "tool_calls" and msg.content is None
            jsonschema.validate(json.loads(msg.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])
        else:
            assert msg.content and not msg.content.startswith("<tool"), msg.content


def test_a_streamed_tool_call_arrives_whole_in_one_chunk(server):
    stream = client(server).chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Weather in Lima?"}], tools=[WEATHER],
        tool_choice="required", max_tokens=120, temperature=0.0, stream=True)
    chunks = list(stream)
    with_calls = [ch for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls]
    assert len(with_calls) == 1
    assert not any(ch.choices and ch.choices[0].delta.content for ch in chunks)
    call = with_calls[0].choices[0].delta.tool_calls[0]
    assert call.index == 0 and call.function.name == "get_weather"
    json.loads(call.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_under_tool_choice_auto_a_text_answer_streams_as_it_is_written(server):
    """Held only while it could still be a call: once the text leaves the call marker it streams,
    and it is the same answer as without streaming."""
    c = client(server)
    texts = 0
    for q in ("Say hello to my friend Ana in two sentences.", "Write a short poem about the sea.",
              "What is two plus two? Explain briefly."):
        kw = dict(model="any", messages=[{"role": "user", "content": q}], tools=[WEATHER], max_tokens=60,
                  temperature=0.0, seed=1)
        whole = c.chat.completions.create(**kw).choices[0]
        if whole.message.tool_calls:
            continue
        chunks = [ch for ch in c.chat.completions.create(stream=True, **kw) if ch.choices]
        pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices[0].delta.content]
        assert "".join(pieces) == whole.message.content
        assert len(pieces) > 3, pieces  # streamed, not one chunk at the end
        assert chunks[-1].choices[0].finish_reason == whole.finish_reason
        texts += 1
    if not texts:
        pytest.fail("the model called the tool for every prompt: no text answer to stream, nothing tested")


def test_completions_take_response_format_too(server):
    r = client(server).completions.create(model="any", prompt="A JSON object describing a cat:", max_tokens=100,
                                          temperature=0.0, extra_body={"response_format": {"type": "json_object"}})
    text = r.choices[0].text
    assert valid_prefix(from_response_format({"type": "json_object"}), text)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_an_unsupported_field_is_a_400_over_http(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}],
                                               frequency_penalty=0.5)
    assert e.value.body["param"] == "frequency_penalty"


# ---- a real upstream --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream_proxy(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("upstream")) as url:
        p = FaultProxy(url)
        yield p
        p.close()


def test_a_real_upstream_gets_the_schema_pushed_down_and_its_text_checked(upstream_proxy):
    core = UpstreamCore(upstream("smol", upstream_proxy.url, "smol", kind="llama.cpp", retries=1, timeout_s=60), None)
    try:
        row = next(r for r in SCHEMAS if r["name"] == "city_name")
        structure = from_response_format(fmt(row["name"], row["schema"]))
        upstream_proxy.requests.clear()
        res = core.run(Request(user(row["prompt"]), load_policy(None), gen_params(100), structure=structure))
        assert upstream_proxy.requests[0].body["response_format"] == {"type": "json_object", "schema": row["schema"]}
        assert valid_prefix(structure, res.text)
        assert res.finish_reason == "stop", res.text
        check(row["schema"], res.text)
    finally:
        core.close()
