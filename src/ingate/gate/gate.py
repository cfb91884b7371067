"""The gate: a compiled policy applied to one stream, as a matcher any loop can drive.

It answers a driver's questions:
  * `mask()`: which tokens may not be sampled here (prevent rules and bans);
  * `admit(token)` / `feed(text)`: is this admitted, or must the driver resample or roll back;
  * `settle()`: apply the semantic verdicts that are due;
  * `release()`: how much text may the client see now (the provably admissible prefix).

Every byte ends released, held, or rolled back. Each rule is a check (`kinds/`) that says the
earliest byte it has not decided; nothing at or after the earliest of them is released.

One compiled policy serves three drivers, each an honest subset (`Mode`, docs/architecture.md):
  FULL        ingate's own loop: mask, admit, hold back, roll back and resample.
  MASK_FIRST  an engine that samples itself (vLLM): a mask per step, no rollback. A match the
              mask could not prevent ends the stream before it; a rejected group ends it too.
  TEXT        a remote stream of text deltas: no logits, no mask. Rollback is "cancel and
              continue": the gate drops the held text from the match on, and the driver asks
              the upstream to continue from `raw`.
In all three, no byte of a prevented phrase or pattern is released (once a rollback has revived
a partial match whose start was already released, only its completion is taken back: it never
shows whole); in the first two, prevention happens before sampling.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from enum import Enum, StrEnum

import numpy as np

from ingate.gate.compile import CompiledPolicy
from ingate.gate.decision import Action, Decision
from ingate.gate.kinds.base import Check, Finding, Kind, Stream
from ingate.gate.kinds.forbid import ForbidCheck, stop_sequences
from ingate.gate.masks import MaskCache, TokenTable
from ingate.gate.release import Release
from ingate.policy.kinds import kinds


class Mode(StrEnum):
    FULL = "full"
    MASK_FIRST = "mask_first"
    TEXT = "text"


class Verdict(Enum):
    ADMIT = "admit"
    RESAMPLE = "resample"  # sample again with mask() applied
    ROLLBACK = "rollback"  # roll back `rollback` tokens (TEXT: continue from `raw`), then go on
    STOP = "stop"  # end the stream with finish_reason content_filter
    END = "end"  # a stop sequence: end the stream with finish_reason stop, the sequence withheld


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    rollback: int = 0


ADMIT = Admission(Verdict.ADMIT)
# How far generation may run past a closed group before its verdict must be applied. Scoring
# overlaps these tokens; a verdict later than that makes the loop wait for it.
SEMANTIC_LAG_TOKENS = 3
# Logit penalty on the content tokens of a rejected group while its replacement is generated.
# bench/semantic.py: regenerations admitted 29% with the first-token ban alone, 46% with 4, 58% with 8.
STEER_PENALTY = 8.0


@dataclass(frozen=True)
class GateOptions:
    """What one stream asks of its gate beside the policy."""

    stop: tuple[str, ...] = ()  # the caller's stop sequences, held back like any partial match
    semantic_lag: int = SEMANTIC_LAG_TOKENS
    steer_penalty: float = STEER_PENALTY
    session_entropy: float = 0.0  # what the session spent before this request
    context: tuple[str, ...] = ()  # the request's texts (messages): the values pattern rules find there


def checks_for(compiled: CompiledPolicy, options: GateOptions) -> list[Check]:
    """One stream's checks: every registered kind's, in registration order (forbidden language
    first: it may refuse a token), then the caller's stop sequences."""
    out: list[Check] = []
    for k in kinds():
        part = compiled.parts.get(k.name)
        if part is not None:
            out += k.checks(part, options)
    if options.stop:
        out.append(ForbidCheck(stop_sequences(options.stop), -1))
    return out


class Gate:
    """The compiled policy applied to one stream. Not thread-safe; one per generation.
    `table` is the engine's vocabulary (None in TEXT mode, which sees no tokens)."""

    def __init__(self, compiled: CompiledPolicy, table: TokenTable | None, options: GateOptions | None = None,
                 mode: Mode | str = Mode.FULL):
        self.compiled, self.mode, self.options = compiled, Mode(mode), options or GateOptions()
        if table is None and self.mode is not Mode.TEXT:
            raise ValueError(f"mode {self.mode} masks tokens: it needs the engine's token table")
        self.s = Stream(table.token_bytes if table is not None else [])
        self.table = table
        self.masks = compiled.masks_for(table) if table is not None else None
        self.checks = checks_for(compiled, self.options)
        self.preventers = [c for c in self.checks if c.prevents]  # masks before sampling
        for c in self.preventers:
            if getattr(c, "private", False) and table is not None:  # this stream's own detector
                c.own_masks = MaskCache(table)  # type: ignore[attr-defined]
        self.revealers = [c for c in self.checks if c.may_reveal]  # what a logprobs channel must not show
        self.steering = [c for c in self.checks if c.steers]  # after a rollback to regenerate
        self.hidden = [c for c in self.checks if c.wants_hidden]  # heads on the engine's hidden states
        self._budget = next((c.budget for c in self.checks if c.budget is not None), None)  # the loop's bound
        self.early = [c for c in self.checks if c.early]
        self.late = [c for c in self.checks if not c.early]
        self.out = Release()
        self.bans: dict[int, set[int]] = {}
        self.decisions: list[Decision] = []
        self._unaudited = 0
        self.rollbacks = 0
        self.stopped = self.halted = False  # a rule ended the stream; halt() or fail() ended it
        self.entropies: list[float] = []  # per admitted token, when the driver measures entropy

    # ---- what the stream holds -----------------------------------------------------------------
    raw = property(lambda self: self.s.raw)
    tokens = property(lambda self: self.s.tokens)
    tok_start = property(lambda self: self.s.tok_start)
    token_bytes = property(lambda self: self.s.token_bytes)
    position = property(lambda self: len(self.s.tokens))
    hold = property(lambda self: self.out.hold)
    text = property(lambda self: self.out.hold.text)
    held_max_chars = property(lambda self: self.out.held_max_chars)
    redactions = property(lambda self: self.out.redactions)
    entropy = property(lambda self: self._budget)  # the entropy rule's account, when the policy has one
    # the semantic groups of the stream, when a check keeps them (tests and benchmarks read them)
    groups = property(lambda self: next((c.groups for c in self.checks if hasattr(c, "groups")), None))

    @property
    def semantic_stats(self) -> dict | None:
        """The checks' accounts (the semantic groups' scoring summary), when one keeps any."""
        out: dict = {}
        for c in self.checks:
            st = c.stats()
            if st is not None:
                out |= st
        return out or None

    # ---- before sampling ----------------------------------------------------------------------
    @property
    def wants_hidden(self) -> bool:
        """Does a check read the generating model's hidden states (a head with `features: engine`)?"""
        return bool(self.hidden)

    def observe_hidden(self, feature_id: str, vec: np.ndarray | None) -> None:
        """The engine's hidden state at the current position, before its token is drawn."""
        for c in self.hidden:
            c.observe_hidden(self.position, feature_id, vec)

    def banned(self) -> np.ndarray | None:
        """Tokens banned at this position by earlier rollbacks (None when there are none)."""
        b = self.bans.get(self.position)
        return np.fromiter(b, dtype=np.int64, count=len(b)) if b else None

    def mask(self) -> np.ndarray:
        """bool per token: True where sampling the token would complete a prevented match. The same
        code computes the vLLM plugin's rows (`MaskCache.forbidden_ids`)."""
        if self.masks is None:
            raise ValueError("a TEXT-mode gate sees no tokens: there is nothing to mask")
        forbidden = np.zeros(self.masks.table.size, dtype=bool)
        shared = [c for c in self.preventers if getattr(c, "own_masks", None) is None]
        if shared:
            forbidden[self.masks.forbidden_ids([c.mask_state(self.s) for c in shared])] = True
        for c in self.preventers:
            if (own := getattr(c, "own_masks", None)) is not None:
                forbidden[own.forbidden_ids([c.mask_state(self.s)])] = True
        b = self.bans.get(self.position)
        if b:
            forbidden[list(b)] = True
        return forbidden

    def note_masked(self, token: int) -> None:
        """MASK_FIRST: audit a prevention the mask made before sampling: `token`, the engine's draw
        without the mask, would have completed a prevented match."""
        if self.masks is not None:
            rule = next((c.rule_id for c in self.preventers
                         if token in (getattr(c, "own_masks", None) or self.masks).forbidden_ids(
                             [c.mask_state(self.s)])), None)
            if rule is not None:
                self._decide(rule, Action.PREVENT, len(self.raw), self.s.token_bytes[token],
                             "the engine's draw would complete a prevented match; masked before sampling")

    def bias(self, logits: np.ndarray) -> np.ndarray:
        """Steering after a semantic rollback; the logits themselves otherwise (transparency)."""
        for c in self.steering:
            logits = c.bias(logits, self.position)
        return logits

    # ---- after sampling -------------------------------------------------------------------------
    def admit(self, token: int, entropy: float = float("nan")) -> Admission:
        """`entropy`: of the distribution the token was sampled from (nats), for the entropy rule."""
        return self._consume(token, self.s.token_bytes[token], entropy)

    def feed(self, text: str | bytes, entropy: float = float("nan")) -> Admission:
        """TEXT mode: one delta of a remote stream (`entropy`: its token's, estimated from the
        upstream's top logprobs). ROLLBACK means cancel and continue from `raw`."""
        return self._consume(-1, text.encode() if isinstance(text, str) else text, entropy)

    def _consume(self, token: int, data: bytes, entropy: float) -> Admission:
        s, p0 = self.s, len(self.s.raw)
        found: list[Finding] = []
        for c in self.early:  # before the token joins the stream: a prevented one never does
            if fs := c.step(s, data, p0, entropy):
                found += fs
        if prevented := [f for f in found if f.kind is Kind.PREVENT]:
            f = min(prevented, key=lambda x: x.start)
            for c in self.early:
                c.rollback(s, len(s))
            return self._prevent(f, bytes(s.raw[f.start:]) + data[max(0, f.start - p0):f.end - p0], data)
        s.append(token, data)
        self.entropies.append(entropy)
        for c in self.late:
            if fs := c.step(s, data, p0, entropy):
                found += fs
        return self._apply(found) if found else ADMIT

    def end_of_text(self) -> Admission:
        """The text ends here (the model chose to end, or max_tokens): decide the matches that were
        waiting for one more character, a whole word's edge. ROLLBACK or STOP as in `admit`."""
        found = [f for c in self.checks for f in c.finish(self.s)]
        prevented = [f for f in found if f.kind is Kind.PREVENT]
        if not prevented:
            return self._apply(found) if found else ADMIT
        f = min(prevented, key=lambda x: x.start)
        adm = self._prevent(f, bytes(self.raw[f.start:f.end]), b"")
        if adm.verdict is Verdict.RESAMPLE:  # nothing left to resample at the end: release no more
            self._stop(self.out.released)
            return Admission(Verdict.STOP)
        return adm

    def settle(self, final: bool = False, can_rollback: bool = True) -> Admission:
        """Apply the semantic verdicts that are due (all of them when `final`).

        ROLLBACK: a group was judged inadmissible and is taken back to regenerate. STOP: its
        retries are spent (or the rule's action is stop, or the driver cannot roll back)."""
        can_rollback = can_rollback and self.mode is not Mode.MASK_FIRST
        for c in self.checks:
            if (f := c.due(self.s, final, can_rollback)) is not None:
                return self._reject(f, can_rollback)
        return ADMIT

    # ---- applying what the checks found -----------------------------------------------------------
    def _apply(self, found: list[Finding]) -> Admission:
        """Notes are audited, redactions become spans; the earliest stop (or stop sequence) caps the
        release there and ends the stream."""
        end: Finding | None = None
        for f in found:
            if f.kind is Kind.REDACT:
                self.out.redactions.add(len(self.s) - 1, f)  # found with the last token: gone if it is
            elif f.kind is Kind.NOTE:
                self._decide(f.rule_id, f.action, f.start, b"", f.detail)
            elif end is None or f.start < end.start:
                end = f
        if end is None:
            return ADMIT
        if end.kind is Kind.END:  # a stop sequence is the caller's request, not a governance decision
            self.out.stop(end.start)
            return Admission(Verdict.END)
        self._stop(end.start, end.epilogue)
        if end.detail:  # (an entropy stop was audited when its budget was spent)
            self._decide(end.rule_id, Action.STOP, end.start, bytes(self.raw[end.start:end.end]),
                         f"matched {end.detail}; stream ended")
        return Admission(Verdict.STOP)

    def _prevent(self, f: Finding, matched: bytes, undone: bytes) -> Admission:
        """A prevented match starting at `f.start`. The token that completed it, `undone`, is no
        longer in the stream: it would have started at the end of `raw`."""
        what, st, p0 = f.detail, f.start, len(self.raw)
        if self.mode is Mode.MASK_FIRST:  # the engine has the token already: end before the match
            self._stop(max(st, self.out.released))
            self._decide(f.rule_id, Action.STOP, st, matched, f"{what}: the mask could not prevent it and this "
                         "driver cannot roll back; stream ended")
            return Admission(Verdict.STOP)
        if st >= p0 and self.mode is Mode.FULL:
            self._decide(f.rule_id, Action.PREVENT, st, matched,
                         f"{what}: would complete inside the token; resampled under the mask")
            return Admission(Verdict.RESAMPLE)
        if self.mode is Mode.TEXT:
            return self._withdraw(f, matched, max(st, self.out.released), undone)
        k = self.s.token_at(st)
        if self.tok_start[k] < self.out.released:
            # The match began in text already released: that can happen only after a rollback
            # revived a partial match whose later text had let the release move on. Take back
            # what is still held, and never what was released.
            k = bisect_left(self.tok_start, self.out.released)
            if k >= len(self.s):
                self._decide(f.rule_id, Action.PREVENT, st, matched, f"{what}: resampled under the mask")
                return Admission(Verdict.RESAMPLE)
        if self._budget_spent(f, matched, self.tok_start[k]):
            return Admission(Verdict.STOP)
        n = len(self.s) - k
        self._decide(f.rule_id, Action.PREVENT, st, matched,
                     f"{what}: held partial match rolled back {n} token(s) and resampled")
        self._cut(k, ban=True)
        self.rollbacks += 1
        return Admission(Verdict.ROLLBACK, rollback=n)

    def _withdraw(self, f: Finding, matched: bytes, at: int, undone: bytes) -> Admission:
        """TEXT mode: drop the held text from byte `at` on; the driver continues from `raw`. The
        text of the cut delta before `at` (and of the `undone` one) is fed again, as one delta."""
        if self._budget_spent(f, matched, at):
            return Admission(Verdict.STOP)
        full = bytes(self.raw) + undone
        self._decide(f.rule_id, Action.PREVENT, f.start, matched,
                     f"{f.detail}: {len(full) - at} held byte(s) withdrawn; the stream continues before the match")
        k = self.s.token_at(at) if at < len(self.raw) else len(self.s)
        kept = full[self.tok_start[k] if k < len(self.s) else len(self.raw):at]
        if k < len(self.s):
            self._cut(k, ban=False)
        self.rollbacks += 1
        if kept and (adm := self._consume(-1, kept, float("nan"))).verdict is not Verdict.ADMIT:
            return adm  # the kept text ends the stream itself: a stop rule or a stop sequence before the match
        return Admission(Verdict.ROLLBACK, rollback=len(full) - at)

    def _reject(self, f: Finding, can_rollback: bool) -> Admission:
        what, matched = f.detail, bytes(self.raw[f.start:f.end])
        retry = f.retry and can_rollback
        if retry and self.rollbacks >= self.compiled.policy.max_rollbacks:
            retry = False
            what += f"; rollback budget ({self.compiled.policy.max_rollbacks}) spent"
        if not retry:
            tail = f"retries spent ({f.retries}); " if f.action == "resample" and can_rollback else ""
            self._stop(f.start, f.epilogue)
            self._decide(f.rule_id, Action.STOP, f.start, matched, f"{what}; {tail}stream ended")
            return Admission(Verdict.STOP)
        n = len(self.s) - f.tok
        self._decide(f.rule_id, Action.RESAMPLE, f.start, matched,
                     f"{what}; rolled back {n} token(s), regenerating (retry {f.attempt}/{f.retries})")
        f.source.regenerating(self.s)
        self._cut(f.tok, ban=self.mode is Mode.FULL)
        self.rollbacks += 1
        self.out.cap = None  # a stop sequence past the rollback point is gone with its text
        return Admission(Verdict.ROLLBACK, rollback=n)

    def _budget_spent(self, f: Finding, matched: bytes, at: int) -> bool:
        if self.rollbacks < self.compiled.policy.max_rollbacks:
            return False
        self._stop(at)
        self._decide(f.rule_id, Action.STOP, f.start, matched,
                     f"{f.detail}: rollback budget ({self.compiled.policy.max_rollbacks}) spent; stream ended")
        return True

    def _cut(self, k: int, ban: bool) -> None:
        """Back to the first k tokens, every check with it. `ban`: token k may not come again there."""
        if self.tok_start[k] < self.out.released and self.mode is Mode.FULL:
            raise AssertionError("rollback would take back released text")
        for c in self.checks:
            c.rollback(self.s, k)
        self.out.redactions.rollback(k)
        if ban:
            self.bans = {p: b for p, b in self.bans.items() if p <= k}
            self.bans.setdefault(k, set()).add(self.tokens[k])
        del self.entropies[k:]
        self.s.truncate(k)

    def _stop(self, at: int, epilogue: str = "") -> None:
        self.out.stop(at, epilogue)
        self.stopped = True

    # ---- release ----------------------------------------------------------------------------------
    def release(self, final: bool = False) -> str:
        """Advance the release point to where every check has decided; returns the new client text.
        Redactions in it are recorded as decisions first: the caller must audit `take_decisions()`
        before showing the text (invariant 5)."""
        decided = len(self.raw)
        if not final:
            exact = self.mode is not Mode.FULL  # FULL rolls whole tokens back: holds are token-aligned
            for c in self.checks:
                if (h := c.hold(self.s, exact)) is not None and h < decided:
                    decided = h
        text, redacted = self.out.advance(self.s, decided, final)
        self.decisions += redacted
        return text

    def could_reveal(self, k: int, token: int | bytes) -> bool:
        """Would showing `token` (an id, or an upstream's token text) as an alternative at position k
        reveal governed text? True when its bytes complete a match or leave one undecided: a
        logprobs channel must not show it."""
        pos, data = self.tok_start[k], token if isinstance(token, bytes) else self.s.token_bytes[token]
        return any(c.reveals(k, data, pos) for c in self.revealers)

    def take_decisions(self) -> list[Decision]:
        """Decisions not yet handed to the audit trail."""
        new = self.decisions[self._unaudited:]
        self._unaudited = len(self.decisions)
        return new

    def fail(self, rule_id: str, err: BaseException) -> None:
        """Fail closed: an error inside a check ends the stream and releases nothing more."""
        self.halt(rule_id, Action.ERROR, f"{type(err).__name__}: {err}")

    def halt(self, rule_id: str, action: str, detail: str) -> None:
        """End the stream where it stands: nothing held is released, and the reason is audited."""
        self.halted = True
        self.out.stop(self.out.released)
        self._decide(rule_id, action, self.out.released, b"", detail)

    def note(self, rule_id: str, action: str, detail: str) -> None:
        """Record a decision a driver made at the end of the stream so far (a structure that an
        upstream's text broke), to be audited with the gate's own."""
        self._decide(rule_id, action, len(self.raw), b"", detail)

    def _decide(self, rule_id: str, action: str, offset: int, matched: bytes, detail: str) -> None:
        self.decisions.append(Decision(rule_id, action, self.s.token_at(offset), offset, matched, detail))
