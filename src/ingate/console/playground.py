"""The playground: one governed generation as the console watches it, decision by decision.

A playground run is a request like any other: the same worker, queue, engine and audit (its
request row carries the admin key's id), so it shows what a client would get. Its stream says
more than the OpenAI stream does, in the order the gate acted (events are server-sent, one JSON
object each):

  start     the request id, model and policy, the detail level it is shown at
  decision  one decision as soon as it is durable, before the text it concerns; `at` is how many
            characters had been released when it came (a rollback happened after them)
  text      released text
  done      the finish reason, the governance report, the released text token by token with the
            entropy each was sampled at (a redaction is one entry: its placeholder, no entropy),
            and the stats
  error     the error an API client would get

What a decision says is `ingate.report.decision` at the server's --governance-detail: the console
never shows more of what the gate withheld than a client of this server sees. The ungoverned
side (the same prompt and seed under no policy) shows exactly what the gate withheld, so it runs
only where the server shows withheld text: --governance-detail full.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingate import report
from ingate.api.openai import ApiError, generation_error
from ingate.drivers.base import GenerationParams, Result
from ingate.keys import Grant
from ingate.policy import NONE_POLICY, Policy
from ingate.sampling import SamplingParams
from ingate.worker import Job, QueueFull


class Play(BaseModel):
    """What the playground's form sends."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str = Field(min_length=1)
    system: str | None = None
    model: str | None = None
    policy: str | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0
    max_tokens: int = Field(default=128, ge=1)
    ungoverned: bool = False


def parse(body: bytes, model: type[BaseModel]) -> Any:
    """A console request body, or a 400 that names the field."""
    try:
        data = json.loads(body or b"{}")
    except ValueError as e:
        raise ApiError(400, f"the body is not JSON: {e}") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ApiError(400, f"{loc}: {'required' if err['type'] == 'missing' else err['msg']}",
                       param=loc or None) from None


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def choose(server: Any, play: Play, level: str) -> tuple[Any, Policy]:
    """The model's backend and the policy the run is governed by (none, for the ungoverned side)."""
    if server.draining:
        raise ApiError(503, "this replica is shutting down", code="shutting_down", type_="server_error")
    backend = server.backend(play.model)
    if play.ungoverned:
        if level != "full":
            raise ApiError(403, "the ungoverned side shows what the gate withheld, so it runs only where the server "
                                "shows withheld text: start it with --governance-detail full", "ungoverned",
                           "needs_full_detail", type_="permission_error")
        return backend, NONE_POLICY
    policies = server.config.policies
    name = play.policy or next(iter(policies))
    if name not in policies:
        raise ApiError(400, f"unknown policy {name!r}; loaded: {', '.join(policies)}", "policy", "unknown_policy")
    return backend, policies[name]


def start(server: Any, play: Play, grant: Grant) -> tuple[Job, Policy, str]:
    """Queue the run on the model's worker; (job, policy, model name)."""
    level = server.config.governance_detail
    backend, policy = choose(server, play, level)
    cap = server.config.max_tokens_cap
    if play.max_tokens > cap:
        raise ApiError(400, f"max_tokens {play.max_tokens} is over this server's --max-tokens-cap {cap}",
                       "max_tokens")
    messages = ([{"role": "system", "content": play.system}] if play.system else []) + \
        [{"role": "user", "content": play.prompt}]
    params = GenerationParams(max_tokens=play.max_tokens, entropy=True,
                              sampling=SamplingParams(temperature=play.temperature, top_p=play.top_p,
                                                      seed=play.seed))
    job = Job(messages, policy, params, (), asyncio.get_running_loop(), asyncio.Queue(), grant=grant,
              live_decisions=True)
    try:
        backend.worker.submit(job)
    except QueueFull:
        raise ApiError(429, f"the server is busy ({server.config.max_queue} requests queued for {backend.name}); "
                            "retry shortly", code="queue_full", type_="rate_limit_error",
                       headers={"Retry-After": "1"}) from None
    return job, policy, backend.name


def done(res: Result, policy: Policy, level: str) -> dict:
    """The `done` event: what the run left, at the disclosure level."""
    tokens = [[t, h] for t, h in res.entropy_released] if res.entropy_released is not None else None
    return {"finish_reason": res.finish_reason, "governance": report.governance(policy, res, level),
            "tokens": tokens, "text": res.text, "stats": res.stats()}


async def events(job: Job, policy: Policy, model: str, level: str) -> AsyncIterator[str]:
    """The run as server-sent events (see the module docstring); the run is cancelled if the page
    goes away before it ends."""
    finished, at = False, 0
    try:
        yield sse("start", {"request_id": job.request_id, "model": model, "policy": policy.name, "level": level,
                            "ungoverned": policy is NONE_POLICY})
        while True:
            kind, val = await job.events.get()
            if kind == "audited":
                for d in val:
                    yield sse("decision", report.decision(d, level, policy.store_text) | {"at": at})
            elif kind == "text":
                at += len(val)
                yield sse("text", {"text": val})
            elif kind == "done":
                yield sse("done", done(val, policy, level))
                break
            else:
                yield sse("error", generation_error(val, job.request_id).body()["error"])
                break
        finished = True
    finally:
        if not finished:
            job.cancel.set()
