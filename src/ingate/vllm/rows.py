"""Masks for a batch of sequences that an engine samples itself: the `mask_first` driver per row.

vLLM keeps a persistent batch; each row is one request. A row whose request names a policy steps
that policy's automata over the tokens the engine actually sampled, and before every sampling step
gets the tokens that would complete a `prevent` (or `stop`) match masked. Nothing here imports
vLLM or torch: `processor.py` adapts this to vLLM's interface, and the tests drive it over the
embedded model's vocabulary as well.

What the engine can enforce is prevention before sampling. Inside vLLM, a `stop` rule is masked as
`prevent` (a logits processor cannot end a stream before a match it let through); redaction,
semantic groups, entropy and the audit belong to the front server (`ingate serve` with the vLLM
server as an upstream), whose hold-back stays the final guarantee.

The cost per step is per row, not per vocabulary token: a row advances its search-DFA states by the
bytes of its new tokens and looks its forbidden token ids up in the policy's mask cache, keyed by
those states: `MaskCache.forbidden_ids`, the same computation as the MASK_FIRST gate's mask
(`Gate.mask`), so the two cannot disagree. A state seen for the first time costs one vectorised
walk of the vocabulary (`masks.TokenTable`), computed once per policy and vocabulary and then
shared by every row.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ingate.gate.compile import CompiledPolicy
from ingate.gate.kinds.forbid import ForbidSpec
from ingate.gate.masks import MaskCache, TokenTable
from ingate.policy import Policy, PolicyError, load_policy

log = logging.getLogger("vllm.ingate")  # a child of the logger vLLM configures
POLICIES_ENV = "INGATE_POLICIES"  # comma-separated policy files (or "default") loaded in the engine
XARG_POLICY = "ingate_policy"  # vllm_xargs: the policy a request is governed by
XARG_DIGEST = "ingate_policy_digest"  # vllm_xargs: the front server's digest of it (must match)
XARG_PREFIX = "ingate_prefix"  # vllm_xargs: admitted text this continuation follows (primes the automata)
MAX_PREFIX_BYTES = 4096


class RequestError(ValueError):
    """A request's ingate arguments cannot be honoured; the message says what to fix (HTTP 400)."""


def load_policies(spec: str | None) -> dict[str, Policy]:
    """The policies named by `spec` (INGATE_POLICIES): name -> policy. Empty when unset."""
    out: dict[str, Policy] = {}
    for path in [p.strip() for p in (spec or "").split(",") if p.strip()]:
        pol = load_policy(path)
        if pol.name in out and out[pol.name].digest != pol.digest:
            raise PolicyError([f"{POLICIES_ENV}: two different policies are named {pol.name!r} "
                               f"({out[pol.name].source} and {pol.source}); rename one"])
        out[pol.name] = pol
    return out


def engine_policy(policy: Policy) -> Policy:
    """What the engine enforces of `policy`: its prevent and stop rules, both as prevent."""
    rules = tuple(dataclasses.replace(r, action="prevent") for r in policy.rules
                  if isinstance(r, ForbidSpec) and r.action in ("prevent", "stop"))
    return dataclasses.replace(policy, rules=rules, digest=f"{policy.digest}:engine")


@dataclass
class _Compiled:
    policy: Policy  # as loaded (its digest is what a front server names)
    compiled: CompiledPolicy  # its engine part
    masks: MaskCache  # its masks on the engine's vocabulary, shared by every row of this policy


class PolicySet:
    """The policies an engine process enforces, compiled once against its vocabulary."""

    def __init__(self, policies: dict[str, Policy], table: TokenTable, eos: Sequence[int] = ()):
        """`eos`: the tokens that end a sequence (a row that fails closed may only sample these)."""
        self.table = table
        keep = np.zeros(table.size, dtype=bool)
        keep[[t for t in eos if 0 <= t < table.size]] = True
        self.all_but_eos = np.flatnonzero(~keep).astype(np.int64)
        self.by_name: dict[str, _Compiled] = {}
        for name, pol in policies.items():
            c = CompiledPolicy(engine_policy(pol))
            c.prepare(table)  # the start states' rows: the first request pays nothing
            self.by_name[name] = _Compiled(pol, c, c.masks_for(table))

    @property
    def misses(self) -> int:
        """Combinations of search states computed (a cold mask), over every policy."""
        return sum(c.masks.misses for c in self.by_name.values())

    @property
    def max_combined(self) -> int:
        return min((c.masks.max_combined for c in self.by_name.values()), default=0)

    @max_combined.setter
    def max_combined(self, n: int) -> None:
        for c in self.by_name.values():
            c.masks.max_combined = n

    @classmethod
    def from_env(cls, token_bytes: list[bytes], vocab_size: int | None = None, eos: Sequence[int] = ()) -> PolicySet:
        return cls(load_policies(os.environ.get(POLICIES_ENV)), TokenTable(token_bytes, size=vocab_size), eos)

    def check(self, xargs: dict[str, Any] | None) -> str | None:
        """The policy a request's extra args name (None: ungoverned); RequestError when they are wrong."""
        return check_args(xargs, {n: c.policy for n, c in self.by_name.items()})

    def row(self, name: str, out: list[int], prefix: str = "") -> Row:
        return Row(self, self.by_name[name], out, prefix.encode("utf-8")[-MAX_PREFIX_BYTES:])

    def forbidden(self, c: _Compiled, states: tuple) -> np.ndarray:
        """The row's forbidden token ids: the gate's own mask computation (`MaskCache.forbidden_ids`)."""
        dets = c.compiled.detectors
        return c.masks.forbidden_ids([(i, d, ss) for i, (d, ss) in enumerate(zip(dets, states, strict=True))])


def check_args(xargs: dict[str, Any] | None, policies: dict[str, Policy]) -> str | None:
    """Validate a request's ingate arguments against the loaded policies (front end and engine)."""
    xargs = xargs or {}
    name = xargs.get(XARG_POLICY)
    if name is None:
        for k in (XARG_DIGEST, XARG_PREFIX):
            if k in xargs:
                raise RequestError(f"vllm_xargs.{k} needs vllm_xargs.{XARG_POLICY}")
        return None
    if not isinstance(name, str):
        raise RequestError(f"vllm_xargs.{XARG_POLICY} must be a policy name (a string)")
    if name not in policies:
        known = ", ".join(sorted(policies)) or f"none: set {POLICIES_ENV} to policy files where vLLM runs"
        raise RequestError(f"unknown ingate policy {name!r}; loaded: {known}")
    digest = xargs.get(XARG_DIGEST)
    if digest is not None and digest != policies[name].digest:
        raise RequestError(f"ingate policy {name!r} differs between the front server and vLLM (digest "
                           f"{str(digest)[:12]} against {policies[name].digest[:12]}); load the same file in both")
    prefix = xargs.get(XARG_PREFIX)
    if prefix is not None and not isinstance(prefix, str):
        raise RequestError(f"vllm_xargs.{XARG_PREFIX} must be a string")
    return name


class Row:
    """One sequence's automata: advanced by the tokens it sampled, read for its mask."""

    def __init__(self, owner: PolicySet, c: _Compiled, out: list[int], prefix: bytes = b""):
        self.owner, self.c, self.out = owner, c, out  # `out`: the engine's live list of output tokens
        self.dets = c.compiled.detectors
        self.prefix = prefix
        self._restart()

    def _restart(self) -> None:
        self.states = tuple(d.search_initial() for d in self.dets)
        self.seen = 0
        if self.prefix:
            self._advance(self.prefix)

    def _advance(self, data: bytes) -> None:
        self.states = tuple(d.advance_search(ss, data) for d, ss in zip(self.dets, self.states, strict=True))

    def catch_up(self) -> None:
        """Step the automata over the tokens sampled since the last call. Under async scheduling
        the newest ids may still be placeholders (-1): they are read on a later call. Should the
        engine drop tokens (a KV-load failure), the row is recomputed from its start."""
        out, tb = self.out, self.owner.table.token_bytes
        n = len(out)
        if n < self.seen:
            self._restart()
        if n > self.seen:
            new = out[self.seen:n]
            if -1 in new:
                new = new[:new.index(-1)]
            self.seen += len(new)
            data = b"".join(tb[t] for t in new if 0 <= t < len(tb))
            if data:
                self._advance(data)

    def forbidden(self) -> np.ndarray:
        """Token ids that may not be sampled next (int64, sorted)."""
        return self.owner.forbidden(self.c, self.states)


class _EndOnly:
    """A row that fails closed: every token is forbidden but end-of-text."""

    def __init__(self, owner: PolicySet):
        self.ids = owner.all_but_eos

    def catch_up(self) -> None:
        pass

    def forbidden(self) -> np.ndarray:
        return self.ids


class Batch:
    """The rows of a persistent batch, by index, as vLLM's BatchUpdate moves them."""

    def __init__(self, policies: PolicySet):
        self.policies = policies
        self.rows: dict[int, Row | _EndOnly] = {}

    def remove(self, index: int) -> None:
        self.rows.pop(index, None)

    def add(self, index: int, xargs: dict[str, Any] | None, out: list[int]) -> None:
        """A request joins at `index` (replacing whatever was there). Arguments the engine cannot
        honour were refused at admission; should one get here anyway (a policy file edited between
        the API server's load and the engine's), the row fails closed: only end-of-text may follow."""
        try:
            name = self.policies.check(xargs)
        except RequestError as e:
            log.error("ingate: a request reached the engine with %s; it may only end", e)
            self.rows[index] = _EndOnly(self.policies)
            return
        if name is None:
            self.rows.pop(index, None)
        else:
            self.rows[index] = self.policies.row(name, out, (xargs or {}).get(XARG_PREFIX) or "")

    def move(self, a: int, b: int, swap: bool) -> None:
        ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
        if ra is not None:
            self.rows[b] = ra
        if swap and rb is not None:
            self.rows[a] = rb

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, token ids), one pair per forbidden (row, token): what to set to -inf."""
        if not self.rows:
            return _EMPTY, _EMPTY
        idx: list[int] = []
        parts: list[np.ndarray] = []
        for i, r in self.rows.items():
            r.catch_up()
            ids = r.forbidden()
            if len(ids):
                idx.append(i)
                parts.append(ids)
        if not parts:
            return _EMPTY, _EMPTY
        counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        return np.repeat(np.asarray(idx, dtype=np.int64), counts), np.concatenate(parts)


_EMPTY = np.zeros(0, dtype=np.int64)
