"""The gate: a compiled policy applied to one stream.

It answers the loop's three questions:
  * `mask()`: which tokens may not be sampled here (prevent rules and bans, on bytes);
  * `admit(token)`: is this token admitted, or must the engine resample or roll back;
  * `release()`: how much text may the client see now (the provably admissible prefix).

Every byte of the output ends released, held, or rolled back. Threads of each detector mark
where undecided partial matches begin; nothing at or after the earliest of them is released.
A prevent rule may roll the engine back to a token boundary, so its holds begin at the start
of the token holding the partial match: the client never sees a byte that could be taken back.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ingate.gate.compile import CompiledPolicy, stop_sequences
from ingate.gate.decision import Action, Decision
from ingate.gate.detector import Match, PatternDetector
from ingate.gate.entropy import EntropyBudget
from ingate.gate.masks import TokenTable
from ingate.holdback import HoldBack, Span
from ingate.patterns import BUILTIN_PATTERNS
from ingate.semantic.groups import Groups


class Verdict(Enum):
    ADMIT = "admit"
    RESAMPLE = "resample"  # sample again with mask() applied
    ROLLBACK = "rollback"  # roll the engine back `rollback` tokens, then sample again
    STOP = "stop"  # end the stream with finish_reason content_filter
    END = "end"  # a stop sequence: end the stream with finish_reason stop, the sequence withheld


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    rollback: int = 0


@dataclass
class _Snap:
    threads: list
    spans: tuple[Span, ...]


# How far generation may run past a closed group before its verdict must be applied. Scoring
# overlaps these tokens; a verdict later than that makes the loop wait for it.
SEMANTIC_LAG_TOKENS = 3
# Logit penalty on the content tokens of a rejected group while its replacement is generated.
# bench/semantic.py: regenerations admitted 29% with the first-token ban alone, 46% with 4, 58% with 8.
STEER_PENALTY = 8.0


class Gate:
    """The compiled policy applied to one stream. Not thread-safe; one per generation."""

    def __init__(self, compiled: CompiledPolicy, table: TokenTable, stop: Sequence[str] = (),
                 semantic_lag: int = SEMANTIC_LAG_TOKENS, steer_penalty: float = STEER_PENALTY,
                 session_entropy: float = 0.0):
        self.compiled = compiled
        self.detectors = compiled.detectors + ([stop_sequences(stop)] if stop else [])
        self.masks = compiled.masks_for(table)
        self.token_bytes = table.token_bytes
        self.vocab_size = table.size
        self.raw = bytearray()
        self.tokens: list[int] = []
        self.tok_start: list[int] = []
        self.threads: list = [d.initial() for d in self.detectors]  # per detector scan state
        self.spans: list[Span] = []
        self.redacted: list[Span] = []  # every span released as a placeholder, in order
        self._snaps: list[_Snap] = []
        self.hold = HoldBack()
        self.bans: dict[int, set[int]] = {}
        self.decisions: list[Decision] = []
        self._unaudited = 0
        self.rollbacks = 0
        self.held_max_chars = 0
        self._cap: int | None = None  # after a stop: nothing at or beyond this byte is ever released
        self.groups = Groups(compiled.semantic_output, semantic_lag) if compiled.semantic_output else None
        self.epilogue = ""  # a semantic rule's refusal, released after a fallback stop
        self.stopped = False  # a semantic rule ended the stream
        self.halted = False  # halt() or fail() ended it
        rule = compiled.policy.entropy_rule
        self.entropy = EntropyBudget(rule.id, rule.entropy, session_entropy) if rule and rule.entropy else None
        self.entropies: list[float] = []  # per admitted token, when the loop measures entropy
        self.steer_penalty = steer_penalty  # 0: the rolled-back group's first token is banned, nothing more

    # ---- before sampling ------------------------------------------------------------------
    @property
    def position(self) -> int:
        return len(self.tokens)

    def banned(self) -> np.ndarray | None:
        """Tokens banned at this position by earlier rollbacks (None when there are none)."""
        b = self.bans.get(len(self.tokens))
        return np.fromiter(b, dtype=np.int64, count=len(b)) if b else None

    def _search_state(self, i: int):
        """The search-DFA state a mask is keyed on, derived when a mask is needed (rarely).

        Every live partial match began at or after the earliest live start, so the search DFA
        run over the text from there reaches the same live set as a run over all of it; no
        second per-token scan is needed.
        """
        d = self.detectors[i]
        start = d.earliest(self.threads[i], len(self.raw))
        if start is None:
            return d.search_initial()
        return d.advance_search(d.search_initial(), bytes(self.raw[start:]))

    def mask(self) -> np.ndarray:
        """bool per token: True where sampling the token would complete a prevented match."""
        forbidden = np.zeros(self.vocab_size, dtype=bool)
        for i in self.compiled.prevent_indices:
            d = self.detectors[i]
            forbidden |= self.masks.row(i, d, self._search_state(i))
        b = self.bans.get(len(self.tokens))
        if b:
            forbidden[list(b)] = True
        return forbidden

    # ---- after sampling --------------------------------------------------------------------
    def admit(self, token: int, entropy: float = float("nan")) -> Admission:
        """`entropy`: of the distribution the token was sampled from (nats), for the entropy rule."""
        data = self.token_bytes[token]
        p0 = len(self.raw)
        new_threads: list = []
        found: list[tuple[PatternDetector, list[Match]]] = []
        for d, th in zip(self.detectors, self.threads, strict=True):
            if not data:
                new_threads.append(th)
                continue
            nt, ms = d.advance(th, data, p0)
            if ms:
                if d.action == "prevent":
                    return self._prevent(d, ms, token, p0, data)
                found.append((d, ms))
            new_threads.append(nt)
        self._snaps.append(_Snap(self.threads, tuple(self.spans)))
        self.threads = new_threads
        self.tok_start.append(p0)
        self.tokens.append(token)
        self.raw += data
        self.entropies.append(entropy)
        if self.groups is not None:
            self.groups.after_token(self.raw, self.tok_start, data)
        if found and (ended := self._apply(found)) is not None:
            return ended
        if self.entropy is not None:
            return self._entropy_step(entropy, p0, data)
        return Admission(Verdict.ADMIT)

    def end_of_text(self) -> Admission:
        """The text ends here (the model chose to end, or max_tokens): decide the matches that were
        waiting for one more character, a whole word's edge. ROLLBACK or STOP as in `admit`."""
        p = len(self.raw)
        found: list[tuple[PatternDetector, list[Match]]] = []
        for i, (d, th) in enumerate(zip(self.detectors, self.threads, strict=True)):
            nt, ms = d.finish(th, p)
            if not ms:
                continue
            if d.action == "prevent":
                adm = self._prevent(d, ms, -1, p, b"")
                if adm.verdict is Verdict.RESAMPLE:  # nothing left to resample at the end: release no more
                    self._cap = self.hold.released
                    return Admission(Verdict.STOP)
                return adm
            self.threads[i] = nt
            found.append((d, ms))
        return (self._apply(found) if found else None) or Admission(Verdict.ADMIT)

    def _apply(self, found: list[tuple[PatternDetector, list[Match]]]) -> Admission | None:
        """Redact and stop matches: every redaction becomes a span; the earliest stop (or stop
        sequence) caps the release there and ends the stream. None when nothing ends it."""
        stop: tuple[PatternDetector, Match] | None = None
        for d, ms in found:
            if d.action == "redact":
                for m in ms:
                    self._add_span(d, m)
            elif stop is None or min(m[0] for m in ms) < stop[1][0]:
                stop = (d, min(ms, key=lambda m: m[0]))
        if stop is None:
            return None
        d, (st, end, labels) = stop
        self._cap = st if self._cap is None else min(self._cap, st)
        if d.action == "end":  # a stop sequence is the caller's request, not a governance decision
            return Admission(Verdict.END)
        self._decide(d.rule_id, Action.STOP, st, bytes(self.raw[st:end]),
                     f"matched {self._label(d, labels)}; stream ended")
        return Admission(Verdict.STOP)

    def _entropy_step(self, h: float, p0: int, data: bytes) -> Admission:
        """Spend the budgets; once one is spent, end at the next sentence boundary."""
        eb = self.entropy
        assert eb is not None
        spent = eb.spend(h)
        if spent is not None:
            self._decide(eb.rule_id, Action.ABSTAIN, p0, b"", spent)
        if not eb.exhausted:
            return Admission(Verdict.ADMIT)
        cut = eb.boundary(data, len(self.tokens))
        if cut is None:
            return Admission(Verdict.ADMIT)
        self._cap = p0 + cut if self._cap is None else min(self._cap, p0 + cut)
        self.epilogue = eb.spec.message or ""
        self.stopped = True
        return Admission(Verdict.STOP)

    def _prevent(self, d: PatternDetector, ms: list[Match], token: int, p0: int, data: bytes) -> Admission:
        st, end, labels = min(ms, key=lambda m: m[0])
        matched = bytes(self.raw[st:]) + data[max(0, st - p0): end - p0]
        what = self._label(d, labels)
        if st >= p0:
            self._decide(d.rule_id, Action.PREVENT, st, matched,
                         f"{what}: would complete inside the token; resampled under the mask")
            return Admission(Verdict.RESAMPLE)
        k = bisect_right(self.tok_start, st) - 1
        if self.tok_start[k] < self.hold.released:
            # The match began in text already released: that can happen only after a rollback
            # revived a partial match whose later text had let the release move on. Take back
            # what is still held, and never what was released.
            k = bisect_left(self.tok_start, self.hold.released)
            if k >= len(self.tokens):
                self._decide(d.rule_id, Action.PREVENT, st, matched, f"{what}: resampled under the mask")
                return Admission(Verdict.RESAMPLE)
        if self.rollbacks >= self.compiled.policy.max_rollbacks:
            self._cap = self.tok_start[k]
            self._decide(d.rule_id, Action.STOP, st, matched,
                         f"{what}: rollback budget ({self.compiled.policy.max_rollbacks}) spent; stream ended")
            return Admission(Verdict.STOP)
        n = len(self.tokens) - k
        self._decide(d.rule_id, Action.PREVENT, st, matched,
                     f"{what}: held partial match rolled back {n} token(s) and resampled")
        self._rollback_to(k)
        return Admission(Verdict.ROLLBACK, rollback=n)

    def _rollback_to(self, k: int) -> None:
        if self.tok_start[k] < self.hold.released:
            raise AssertionError("rollback would take back released text")
        if self.groups is not None:
            self.groups.on_rollback(k, self.tok_start)
        banned_tok = self.tokens[k]
        del self.entropies[k:]
        if self.entropy is not None:
            self.entropy.truncate(k)
        self.bans = {p: s for p, s in self.bans.items() if p <= k}
        self.bans.setdefault(k, set()).add(banned_tok)
        snap = self._snaps[k]
        self.threads = snap.threads
        self.spans = list(snap.spans)
        del self.raw[self.tok_start[k]:]
        del self.tokens[k:], self.tok_start[k:], self._snaps[k:]
        self.rollbacks += 1

    def _add_span(self, d: PatternDetector, m: Match) -> None:
        st, end, labels = m
        lab = min(labels)
        new = Span(st, end, d.placeholders[lab], d.rule_id, d.labels[lab])
        keep: list[Span] = []
        for sp in self.spans:
            if sp.end > new.start and sp.start < new.end:  # overlap: merge; the longer match names it
                # (a card number also holds a phone-shaped run; it should read [CREDIT_CARD])
                first = max((sp, new), key=lambda x: (x.end - x.start, -x.start))
                new = Span(min(sp.start, new.start), max(sp.end, new.end), first.placeholder,
                           first.rule_id, first.label)
            else:
                keep.append(sp)
        keep.append(new)
        keep.sort(key=lambda s: s.start)
        self.spans = keep

    # ---- semantic groups ---------------------------------------------------------------------
    def settle(self, final: bool = False, can_rollback: bool = True) -> Admission:
        """Apply the semantic verdicts that are due (all of them when `final`).

        ADMIT: nothing to undo (release may advance). ROLLBACK: a group was judged inadmissible
        and the engine must take back `rollback` tokens and regenerate from its start. STOP:
        its retries are spent (or the rule's action is stop); the stream ends before the group.
        With `final` the open group is closed first, so every byte is judged before it is released;
        `can_rollback=False` (the stream is ending anyway) turns a rejection into a stop.
        """
        gr = self.groups
        if gr is None:
            return Admission(Verdict.ADMIT)
        if final and gr.open_tok < len(self.tokens):
            gr.close(self.raw, self.tok_start)
        while (nv := gr.next_verdict(len(self.tokens), block=final)) is not None:
            g, v = nv
            bad = v.rejected if v is not None else None
            if v is None or bad is None:
                gr.admit_head(v)
                continue
            rule = next(r for r in gr.rules if r.rule_id == bad.rule_id)
            g, n = gr.reject_head(v)
            what = f"semantic: group of {g.end_tok - g.start_tok} token(s) {rule.explain(bad)}"
            matched = bytes(self.raw[g.start:g.end])
            retry = rule.action == "resample" and n <= rule.spec.max_retries and can_rollback
            if retry and self.rollbacks >= self.compiled.policy.max_rollbacks:
                retry = False
                what += f"; rollback budget ({self.compiled.policy.max_rollbacks}) spent"
            if not retry:
                self._cap = g.start if self._cap is None else min(self._cap, g.start)
                tail = (f"retries spent ({rule.spec.max_retries}); " if rule.action == "resample" and can_rollback
                        else "")
                self._decide(rule.rule_id, Action.STOP, g.start, matched, f"{what}; {tail}stream ended")
                self.epilogue = rule.spec.refusal or ""
                self.stopped = True
                return Admission(Verdict.STOP)
            k = g.start_tok
            rejected = self.tokens[k:g.end_tok]
            self._decide(rule.rule_id, Action.RESAMPLE, g.start, matched,
                         f"{what}; rolled back {len(self.tokens) - k} token(s), regenerating "
                         f"(retry {n}/{rule.spec.max_retries})")
            n_back = len(self.tokens) - k
            self._rollback_to(k)
            self._cap = None  # a stop sequence past the rollback point is gone with its text
            gr.stats.retried += 1
            gr.steer = (k, self._content_tokens(rejected, gr.steer[1] if gr.steer and gr.steer[0] == k else None))
            return Admission(Verdict.ROLLBACK, rollback=n_back)
        return Admission(Verdict.ADMIT)

    def _content_tokens(self, tokens: list[int], prev: np.ndarray | None) -> np.ndarray:
        """Tokens of a rejected attempt that carry content (3+ letters): penalized in its replacement."""
        keep = {t for t in tokens if sum(c.isalpha() for c in self.token_bytes[t].decode("utf-8", "ignore")) >= 3}
        if prev is not None:
            keep.update(prev.tolist())
        return np.fromiter(keep, dtype=np.int64, count=len(keep))

    def bias(self, logits: np.ndarray) -> np.ndarray:
        """Steering after a semantic rollback; the logits themselves otherwise (transparency)."""
        if self.groups is None:
            return logits
        toks = self.groups.steer_at(len(self.tokens))
        if toks is None or not toks.size or not self.steer_penalty:
            return logits
        out = logits.copy()
        out[toks] -= self.steer_penalty
        return out

    @property
    def semantic_stats(self) -> dict | None:
        return self.groups.stats.to_dict() if self.groups is not None else None

    # ---- release ---------------------------------------------------------------------------
    def boundary(self, final: bool = False) -> int:
        """Raw offset below which every byte is decided."""
        b = len(self.raw)
        if not final:
            for d, th in zip(self.detectors, self.threads, strict=True):
                s = d.earliest(th, b)
                if s is not None:
                    if d.rolls_back:
                        s = self.tok_start[bisect_right(self.tok_start, s) - 1]
                    if s < b:
                        b = s
        if self._cap is not None and self._cap < b:
            b = self._cap
        if self.groups is not None and self.groups.approved < b:
            b = self.groups.approved  # an open or unjudged group is one more undecided suffix
        for sp in self.spans:
            if sp.start < b < sp.end:
                b = sp.start
        return max(b, self.hold.released)  # released text is final, whatever a rollback revived

    def release(self, final: bool = False) -> str:
        """Advance the release point; returns the newly releasable client text.

        Redactions in the released stretch are recorded as decisions first; the caller must
        audit `take_decisions()` before showing the text (invariant 5).
        """
        b = self.boundary(final)
        for sp in self.spans:
            if self.hold.released < sp.end <= b:
                k = bisect_right(self.tok_start, sp.start) - 1
                # a built-in pattern's name says no more than its placeholder does; a phrase would
                self.decisions.append(Decision(sp.rule_id, Action.REDACT, k, sp.start,
                                               bytes(self.raw[sp.start:sp.end]),
                                               f"{sp.label} replaced by {sp.placeholder}",
                                               f"redacted one {sp.label}" if sp.label in BUILTIN_PATTERNS else ""))
                self.redacted.append(sp)
        text = self.hold.release(self.raw, b, self.spans)
        if self.spans and self.spans[0].end <= self.hold.released:
            # released spans are final (a rollback never reaches below the release point): dropping
            # them keeps per-token work independent of how much was redacted before
            self.spans = [sp for sp in self.spans if sp.end > self.hold.released]
        if final or self._cap is not None:
            text += self.hold.flush()
            if self.epilogue:
                shown = self.hold.text + text
                sep = " " if shown and not shown[-1].isspace() else ""
                text += self.hold.append(sep + self.epilogue)
                self.epilogue = ""
        if len(self.raw) - self.hold.released > self.held_max_chars:  # bytes >= chars: cheap pre-check
            held = len(bytes(self.raw[self.hold.released:]).decode("utf-8", errors="ignore"))
            self.held_max_chars = max(self.held_max_chars, held)
        return text

    def released_tokens(self) -> list[tuple[int, Span | None]]:
        """(token index, redaction span or None) for every token released whole, in order.

        Tokens inside one redaction share its span: the client saw the placeholder, not them.
        """
        out: list[tuple[int, Span | None]] = []
        spans = iter(self.redacted)
        sp = next(spans, None)
        for k, st in enumerate(self.tok_start):
            end = st + len(self.token_bytes[self.tokens[k]])
            if end > self.hold.released:
                break
            while sp is not None and sp.end <= st:
                sp = next(spans, None)
            out.append((k, sp if sp is not None and sp.start < end else None))
        return out

    def could_reveal(self, k: int, token: int) -> bool:
        """Would showing `token` as an alternative at position k reveal governed text?

        True when, from the state before position k, its bytes complete a match or leave any
        partial match alive: such text would have been held, redacted or prevented, so a
        logprobs channel must not show it.
        """
        data = self.token_bytes[token]
        snap = self._snaps[k]
        pos = self.tok_start[k]
        for d, th in zip(self.detectors, snap.threads, strict=True):
            nt, ms = d.advance(th, data, pos)
            if ms or d.earliest(nt, pos + len(data)) is not None:
                return True
        return False

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
        self._cap = self.hold.released
        self._decide(rule_id, action, self.hold.released, b"", detail)

    # ---- helpers ---------------------------------------------------------------------------
    def _decide(self, rule_id: str, action: str, offset: int, matched: bytes, detail: str) -> None:
        k = max(0, bisect_right(self.tok_start, offset) - 1) if self.tok_start else 0
        self.decisions.append(Decision(rule_id, action, k, offset, matched, detail))

    @staticmethod
    def _label(d: PatternDetector, labels: frozenset[int]) -> str:
        names = [d.labels[i] for i in sorted(labels)]
        return ("phrase " if d.kind == "phrases" else "pattern ") + ", ".join(repr(n) for n in names[:3])

    @property
    def text(self) -> str:
        return self.hold.text
