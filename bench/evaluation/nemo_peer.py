"""NeMo Guardrails as the evaluation's peer: one streaming output rail over an OpenAI-compatible upstream.

Run by the NeMo venv's python (`make nemo-env`), never by ingate's: it imports the standard library
and nemoguardrails only. It writes a NeMo config to a temporary directory (config.yml + rails.co),
registers one custom action, `check_output`, and streams every prompt through `stream_async`.

The config, and why:
- `models`: NeMo's own OpenAI-compatible engine (`engine: openai`, 0.24's default framework, no
  LangChain) pointed at --upstream with a dummy key.
- `passthrough: true` and no dialog rails (no `define user ...`): the user's messages go to the
  LLM as they are, in one call. No intent generation, no self-check call. Every HTTP request the
  LLM client makes is counted per prompt (`llm_requests`, with the parameters sent), which proves it.
- `rails.output.streaming`: enabled, `chunk_size`, `context_size` and `stream_first` from the
  command line; the one output flow runs `check_output(text=$bot_message)`.
- `check_output` blocks a chunk (plus context) that contains a banned item (case-folded substring,
  as written: what a keyword rail does) or matches a PII pattern: the regex as given (Python `re`)
  and, where rules.json names one, the same check ingate's detector applies to a match (Luhn for
  cards, mod 97 for IBANs, no digit touching a phone number or SSN). NeMo 0.24
  requires a rail action to return a `RailOutcome`, and calls it with extra keyword arguments
  (`context`, `llm_task_manager`, `config`, `model_name`, `llms`, `llm`): hence `**kwargs`. The
  names it received are reported (`action_kwargs`).

A blocked stream: NeMo yields a JSON string `{"error": {"type": "guardrails_violation", "code":
"content_blocked", ...}}` as the stream's last chunk. That payload is detected and not counted
as released text; any other error payload (rail or generation failure) is recorded as an error.

Nothing but loopback: telemetry is switched off by its environment variables and, to be sure,
every socket connect or name lookup to a non-loopback host is refused and recorded (`offloop`).

Two ways to run:
    python nemo_peer.py --upstream URL --model NAME --rules rules.json --stream-first true \
        --in prompts.json --out results.json         # all prompts, in order, then exit
    python nemo_peer.py ... --worker                 # one JSON prompt per stdin line, one result
                                                     # per stdout line (the first line: ready + meta)
A prompt: {"id", "messages", "llm_params": {"seed", "temperature", "max_tokens", ...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OFFLINE_ENV = {"NEMO_GUARDRAILS_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "OTEL_SDK_DISABLED": "true"}
REFUSAL = "I'm sorry, I can't respond to that."
OFFLOOP: list[str] = []  # every attempt to reach beyond loopback (refused)


# ---- loopback only -------------------------------------------------------------------------------

def _loopback(host: Any) -> bool:
    if host is None or host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard_sockets() -> None:
    """Refuse (and record) any connection or name lookup that leaves the machine."""
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            OFFLOOP.append(f"connect {address!r}")
            raise OSError(f"nemo_peer: refused a connection beyond loopback: {address!r}")

    def guarded_connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        return connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        h = host.decode() if isinstance(host, bytes) else host
        if not _loopback(h):
            OFFLOOP.append(f"getaddrinfo {h!r}")
            raise socket.gaierror(f"nemo_peer: refused a name lookup beyond loopback: {h!r}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = guarded_getaddrinfo


# ---- the rail ------------------------------------------------------------------------------------

def luhn(s: str) -> bool:
    digits = [int(c) for c in s if c.isdigit()]
    if not 12 <= len(digits) <= 19:
        return False
    total = sum(d if i % 2 == 0 else (2 * d if d < 5 else 2 * d - 9) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def mod97(s: str) -> bool:
    chars = [c for c in s if c.isascii() and c.isalnum()]
    if not 11 <= len(chars) - 4 <= 30:
        return False
    return int("".join(str(int(c, 36)) for c in chars[4:] + chars[:4])) % 97 == 1


# name -> (the check a match must pass, the characters that may not touch it), as ingate's detector
# has them (ingate.patterns.CHECKED, ingate.gate.checks); rules.json names the check per pattern
CHECKS = {"luhn": (luhn, str.isdigit), "mod97": (mod97, lambda c: c.isascii() and c.isalnum()),
          "whole": (lambda s: True, str.isdigit)}
MAX_SPAN = 200  # characters: longer than any checked number with its separators


class Pattern:
    """A regex, and maybe a check its match must pass standing whole (any substring may match)."""

    def __init__(self, regex: str, check: str | None):
        self.rx = re.compile(regex)
        self.check = CHECKS[check] if check else None

    def search(self, text: str) -> bool:
        if self.check is None:
            return self.rx.search(text) is not None
        ok, touches = self.check
        for i in range(len(text)):
            if (i and touches(text[i - 1])) or not self.rx.match(text, i):
                continue
            for j in range(min(len(text), i + MAX_SPAN), i, -1):
                if (j == len(text) or not touches(text[j])) and self.rx.fullmatch(text, i, j) and ok(text[i:j]):
                    return True
        return False


class Rules:
    """The ban list and the PII patterns, checked the way a keyword/regex rail would: the items
    case-folded, as written; the patterns as ingate's detector reads them (regex plus checksum)."""

    def __init__(self, spec: dict[str, Any]):
        self.bans = [b.casefold() for b in spec.get("ban", [])]
        self.patterns = {name: Pattern(p, None) if isinstance(p, str) else Pattern(p["regex"], p.get("check"))
                         for name, p in spec.get("patterns", {}).items()}

    @classmethod
    def load(cls, path: Path) -> Rules:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def hits(self, text: str) -> list[str]:
        folded = text.casefold()
        out = [f"ban:{b}" for b in self.bans if b in folded]
        return out + [f"pattern:{n}" for n, p in self.patterns.items() if p.search(text)]


class Recorder:
    """What happened inside NeMo for the prompt being streamed."""

    def __init__(self) -> None:
        self.rail_calls = 0
        self.rail_hits: list[str] = []
        self.llm_requests: list[dict[str, Any]] = []
        self.action_kwargs: set[str] = set()

    def reset(self) -> None:
        self.rail_calls, self.rail_hits, self.llm_requests = 0, [], []


def make_action(rules: Rules, rec: Recorder):
    """The custom output rail action. NeMo passes more than `text`: accept and ignore the rest."""
    from nemoguardrails.actions.rail_outcome import RailOutcome

    async def check_output(text: str | None = None, **kwargs: Any) -> RailOutcome:
        rec.rail_calls += 1
        rec.action_kwargs.update(kwargs)
        hits = rules.hits(text or "")
        if hits:
            rec.rail_hits.extend(hits)
            return RailOutcome.block(reason="banned content", metadata={"hits": hits})
        return RailOutcome.allow()

    return check_output


def count_llm_requests(rec: Recorder) -> None:
    """Count every HTTP request NeMo's LLM client sends (0.24's own client: `BaseClient`)."""
    from nemoguardrails.llm.clients.base import BaseClient

    apost, apost_stream = BaseClient._apost, BaseClient._apost_stream

    def note(path: str, payload: dict[str, Any], stream: bool) -> None:
        rec.llm_requests.append({"path": path, "stream": stream,
                                 "params": {k: v for k, v in payload.items() if k != "messages"},
                                 "messages": len(payload.get("messages") or [])})

    async def counted_apost(self: Any, path: str, payload: dict[str, Any]) -> Any:
        note(path, payload, False)
        return await apost(self, path, payload)

    def counted_apost_stream(self: Any, path: str, payload: dict[str, Any]) -> Any:
        note(path, payload, True)
        return apost_stream(self, path, payload)

    BaseClient._apost = counted_apost  # type: ignore[method-assign]
    BaseClient._apost_stream = counted_apost_stream  # type: ignore[method-assign]


# ---- the config ----------------------------------------------------------------------------------

def write_config(folder: Path, upstream: str, model: str, stream_first: bool, chunk: int, context: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yml").write_text(f"""\
models:
  - type: main
    engine: openai
    model: {json.dumps(model)}
    parameters:
      base_url: {json.dumps(upstream)}
      api_key: "dummy-loopback"
      max_retries: 0
passthrough: true
rails:
  output:
    flows:
      - check output rules
    streaming:
      enabled: true
      chunk_size: {chunk}
      context_size: {context}
      stream_first: {"true" if stream_first else "false"}
""")
    (folder / "rails.co").write_text(f"""\
define bot refuse to respond
  "{REFUSAL}"

define subflow check output rules
  $response = execute check_output(text=$bot_message)
  if $response.is_blocked
    bot refuse to respond
    stop
""")


def build_rails(args: argparse.Namespace, rec: Recorder) -> Any:
    from nemoguardrails import LLMRails, RailsConfig

    folder = Path(tempfile.mkdtemp(prefix="nemo-peer-"))
    write_config(folder, args.upstream, args.model, args.stream_first, args.chunk, args.context)
    rails = LLMRails(RailsConfig.from_path(str(folder)))
    rails.register_action(make_action(Rules.load(args.rules), rec), name="check_output")
    return rails


# ---- one prompt ----------------------------------------------------------------------------------

def error_payload(chunk: str) -> dict[str, Any] | None:
    """NeMo's in-band error: a chunk that is a JSON object with an "error" key."""
    if not chunk.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(chunk)
    except ValueError:
        return None
    return obj["error"] if isinstance(obj, dict) and isinstance(obj.get("error"), dict) else None


async def stream_one(rails: Any, rec: Recorder, prompt: dict[str, Any]) -> dict[str, Any]:
    rec.reset()
    released: list[str] = []
    ttft: float | None = None
    err: dict[str, Any] | None = None
    exc: str | None = None
    t0 = time.perf_counter()
    try:
        async for chunk in rails.stream_async(messages=prompt["messages"],
                                              options={"llm_params": prompt.get("llm_params") or {}}):
            if not isinstance(chunk, str) or not chunk:
                continue
            payload = error_payload(chunk)
            if payload is not None:
                err = payload
                continue
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            released.append(chunk)
    except Exception as e:  # noqa: BLE001  (reported per prompt, the run goes on)
        exc = f"{type(e).__name__}: {e}"
    total = time.perf_counter() - t0
    blocked = bool(err and err.get("code") == "content_blocked")
    return {"id": prompt.get("id"), "ttft_s": ttft, "total_s": total, "released": "".join(released),
            "released_chunks": len(released), "blocked": blocked,
            "error": exc or (None if blocked or err is None else json.dumps(err)),
            "error_payload": err, "rail_calls": rec.rail_calls, "rail_hits": rec.rail_hits,
            "llm_requests": rec.llm_requests}


# ---- the two modes -------------------------------------------------------------------------------

def meta(args: argparse.Namespace, rec: Recorder) -> dict[str, Any]:
    import nemoguardrails

    return {"nemoguardrails": nemoguardrails.__version__, "python": sys.version.split()[0],
            "stream_first": args.stream_first, "chunk_size": args.chunk, "context_size": args.context,
            "upstream": args.upstream, "model": args.model, "action_kwargs": sorted(rec.action_kwargs),
            "offloop_attempts": list(OFFLOOP)}


async def batch(args: argparse.Namespace) -> None:
    rec = Recorder()
    count_llm_requests(rec)
    rails = build_rails(args, rec)
    prompts = json.loads(args.inp.read_text(encoding="utf-8"))
    rows = []
    for i, p in enumerate(prompts):
        rows.append(await stream_one(rails, rec, p))
        r = rows[-1]
        print(f"nemo_peer[{'sf' if args.stream_first else 'nosf'}] {i + 1}/{len(prompts)} {r['id']}: "
              f"{'blocked' if r['blocked'] else 'released'} {r['total_s']:.2f}s", file=sys.stderr, flush=True)
    args.out.write_text(json.dumps({"meta": meta(args, rec), "rows": rows}, indent=1) + "\n", encoding="utf-8")


async def worker(args: argparse.Namespace, out: Any) -> None:
    rec = Recorder()
    count_llm_requests(rec)
    rails = build_rails(args, rec)
    loop = asyncio.get_running_loop()
    out.write(json.dumps({"ready": True, "meta": meta(args, rec)}) + "\n")
    out.flush()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if not line.strip():
            continue
        row = await stream_one(rails, rec, json.loads(line))
        row["meta"] = meta(args, rec)
        out.write(json.dumps(row) + "\n")
        out.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="the OpenAI-compatible base URL, …/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--rules", type=Path, required=True,
                    help='{"ban": [...], "patterns": {name: regex or {"regex", "check": luhn|mod97|whole|null}}}')
    ap.add_argument("--stream-first", required=True, choices=("true", "false"))
    ap.add_argument("--chunk", type=int, default=200)
    ap.add_argument("--context", type=int, default=50)
    ap.add_argument("--in", dest="inp", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", action="store_true", help="prompts on stdin, results on stdout, one JSON a line")
    args = ap.parse_args(argv)
    args.stream_first = args.stream_first == "true"
    if not args.worker and not (args.inp and args.out):
        ap.error("--in and --out are required unless --worker")
    return args


def main() -> int:
    args = parse_args()
    os.environ.update(OFFLINE_ENV)  # set here, not at import: peer.py imports `Rules` from this module
    _guard_sockets()
    proto = sys.stdout
    sys.stdout = sys.stderr  # anything NeMo prints stays off the protocol channel
    asyncio.run(worker(args, proto) if args.worker else batch(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
