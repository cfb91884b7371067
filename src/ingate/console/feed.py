"""Live decisions: the audit, followed as it grows, as server-sent events.

The rows are the audit's own, the ones `ingate audit tail` (decisions) and `ingate audit export`
(decisions and requests) print, so what the console counts is what the audit holds, across every
request of every replica that writes to it. A decision row is written before its request ends; its
request row (session, key id, finish reason) after: the page joins the two by request id to filter
by key or session.

The fields are the disclosure rules' (`ingate.report`): at `minimal` a decision says its rule,
action, position and a generic sentence; at `full` also the internal detail, and the matched text
where the policy kept it (`store_text`). Never a digest: digests are for the audit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ingate.console.playground import sse
from ingate.gate.decision import Decision
from ingate.report import public_detail
from ingate.store.audit import AuditLog

POLL_S = 0.5
PING_S = 15.0
BACKFILL = 200
REQUEST_FIELDS = ("id", "ts", "request_id", "session", "key_id", "policy", "prompt_tokens", "completion_tokens",
                  "finish_reason", "decisions", "rollbacks", "elapsed_ms", "ttft_ms", "gate_us_p50", "replica")


def decision_event(row: dict, level: str) -> dict:
    d = Decision(row["rule_id"], row["action"], row["token_index"], row["byte_offset"], b"", row["detail"])
    out = {"id": row["id"], "ts": row["ts"], "request_id": row["request_id"], "policy": row["policy"],
           "rule": row["rule_id"], "action": row["action"], "token_index": row["token_index"],
           "byte_offset": row["byte_offset"], "replica": row.get("replica", ""), "detail": public_detail(d)}
    if level == "full":
        out["internal_detail"] = row["detail"]
        if row.get("matched_text") is not None:
            out["matched"] = row["matched_text"]
    return out


def request_event(row: dict) -> dict:
    return {k: row.get(k) for k in REQUEST_FIELDS}


def audits(server) -> list[AuditLog]:
    """The audits the served models write to, each once (models usually share one)."""
    out: dict[str, AuditLog] = {}
    for b in server.backends.values():
        if b.core.audit is not None:
            out.setdefault(str(b.core.audit.path), b.core.audit)
    return list(out.values())


async def follow(logs: list[AuditLog], level: str, gone: Callable[[], Awaitable[bool]],
                 backfill: int = BACKFILL) -> AsyncIterator[str]:
    """The last `backfill` rows of each kind, then every new row as it is committed, until `gone()`."""
    last: dict[tuple[int, str], int] = {}
    yield sse("hello", {"level": level, "audits": len(logs), "backfill": backfill})
    for i, log in enumerate(logs):
        for kind in ("request", "decision"):
            rows = await asyncio.to_thread(log.recent, kind, backfill) if backfill else []
            last[(i, kind)] = rows[-1]["id"] if rows else await _top(log, kind)
            for row in rows:
                yield _event(kind, row, level)
    yield sse("live", {})
    pinged = time.monotonic()
    while not await gone():
        await asyncio.sleep(POLL_S)
        for i, log in enumerate(logs):
            for kind in ("request", "decision"):
                rows = await asyncio.to_thread(log.after, kind, last[(i, kind)])
                if rows:
                    last[(i, kind)] = rows[-1]["id"]
                for row in rows:
                    yield _event(kind, row, level)
        if time.monotonic() - pinged > PING_S:
            pinged = time.monotonic()
            yield ": ping\n\n"


async def _top(log: AuditLog, kind: str) -> int:
    rows = await asyncio.to_thread(log.recent, kind, 1)
    return rows[-1]["id"] if rows else 0


def _event(kind: str, row: dict, level: str) -> str:
    return sse(kind, decision_event(row, level) if kind == "decision" else request_event(row))
