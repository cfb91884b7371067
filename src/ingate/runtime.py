"""What a process loads once and keeps: the engine, its token table, compiled policies.

The engine core (ingate.core) holds one, in its own process by default, and the server and the
CLI send it requests; a request never pays to load a model or compile a policy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingate.audit import AuditLog, open_audit
from ingate.engines import Engine, EngineError, load_engine
from ingate.gate.compile import CompiledPolicy, compile_policy
from ingate.gate.decision import Action, Decision
from ingate.gate.gate import Gate
from ingate.gate.masks import TokenTable
from ingate.loop import GenerationFailed, GenerationParams, Result, generate, partial_result
from ingate.policy import Policy
from ingate.refusal import refuse, screen_input, session_budget
from ingate.structure.matcher import TokenMatcher, tokenizer_for
from ingate.structure.rules import inside_structure
from ingate.structure.spec import Structure


@dataclass
class Runtime:
    engine: Engine
    table: TokenTable
    audit: AuditLog | None
    _lltokenizer: Any = None  # llguidance's view of the vocabulary, built for the first structured request

    @classmethod
    def load(cls, model: str | Path | None = None, audit: str | Path | None = None,
             use_audit: bool = True, layout: str | None = None, audit_key_file: str | Path | None = None) -> Runtime:
        """Everything in this process. `layout`: a weight layout already chosen (the engine core
        process gets it from its parent); None chooses one (INGATE_LLAMA_REPACK, the probe).
        `audit_key_file`: the audit's HMAC key (ingate.audit.load_key says where it is looked for)."""
        audit_log = open_audit(audit, audit_key_file) if use_audit else None  # a bad audit fails before the model loads
        engine = load_engine(model, layout=layout)
        return cls(engine, TokenTable(engine.token_bytes()), audit_log)

    def close(self) -> None:
        self.engine.close()
        if self.audit is not None:
            self.audit.close()

    def gate_for(self, policy: Policy, stop: Sequence[str] = (), logprobs: bool = False, entropy: bool = False,
                 session_entropy: float = 0.0) -> Gate | None:
        """A fresh gate for one stream; None for `--policy none` (ungoverned) unless stop sequences
        (held back like any partial match), logprobs (mapped onto released tokens) or entropy
        measurement need one. `session_entropy`: what the session spent before this request."""
        if policy.source == "<none>" and not stop and not logprobs and not entropy:
            return None
        return Gate(self.prepare(policy), self.table, stop, session_entropy=session_entropy)

    def prepare(self, policy: Policy) -> CompiledPolicy:
        """Compile (cached by content) and warm the policy's masks for this model's vocabulary."""
        compiled = compile_policy(policy)
        if not compiled.masks_for(self.table).cached_rows:
            compiled.prepare(self.table)
        return compiled

    def warm(self, policy: Policy) -> None:
        """At start: `policy` compiled and warmed as it governs prose and as it governs structured
        output, and llguidance's view of the vocabulary built, so no request pays for them."""
        self.prepare(policy)
        self.prepare(inside_structure(policy))
        self.lltokenizer()

    def lltokenizer(self) -> Any:
        """llguidance's view of this engine's vocabulary (built once)."""
        if self._lltokenizer is None:
            eng = self.engine
            eos = sorted(t for t in range(eng.vocab_size) if eng.is_eog(t))
            self._lltokenizer = tokenizer_for(self.table.token_bytes, eos,
                                              lambda b: eng.tokenize(b.decode("utf-8", errors="replace")))
        return self._lltokenizer

    def matcher(self, structure: Structure) -> TokenMatcher:
        """A fresh matcher of `structure` over this engine's vocabulary."""
        return TokenMatcher(structure, self.lltokenizer(), self.engine.vocab_size)

    def run(self, messages: list[dict[str, str]] | str, policy: Policy, params: GenerationParams,
            on_text: Callable[[str], None] | None = None, request_id: str | None = None,
            stop: Sequence[str] = (), cancelled: Callable[[], bool] | None = None,
            session: str | None = None, session_entropy: float = 0.0,
            on_audited: Callable[[list[Decision]], None] | None = None,
            structure: Structure | None = None, key_id: str | None = None) -> Result:
        """One governed generation. `messages` is a chat, or a raw prompt string (completions).

        `session_entropy`: excess entropy the session spent in earlier responses (the server
        keeps it in the session store). A spent session budget or a prompt the input screen rejects
        refuses the request before generating, through ingate.refusal.refuse like escalation.
        `on_audited`: told of each batch of decisions once it is durable, before its text is released.
        `structure`: a response format or tool call the output must follow; the policy governs
        inside it, its redact rules as prevent (ingate.structure.rules). `key_id`: the caller's API
        key id, for the audit's request row.
        """
        rid = request_id or uuid.uuid4().hex
        t0 = time.perf_counter()
        gate: Gate | None = None
        prompt: list[int] = []

        def on_decisions(ds) -> None:
            if self.audit is not None:
                self.audit.record(rid, policy.name, ds, policy.store_text)
            if on_audited is not None:
                on_audited(ds)

        try:
            prompt = self.engine.tokenize(messages, add_bos=True) if isinstance(messages, str) \
                else self.engine.chat_prompt(messages)
            t_check = time.perf_counter()
            refusal = session_budget(policy, session_entropy) or screen_input(self.prepare(policy), messages)
            if refusal is not None:  # refused before the first token: no generation spent
                return refuse(refusal, policy, rid, self.audit, session, len(prompt), time.perf_counter() - t_check,
                              on_text, on_audited, key_id)
            governing = inside_structure(policy) if structure is not None else policy
            gate = self.gate_for(governing, stop, params.logprobs is not None, params.entropy, session_entropy)
            res = generate(self.engine, prompt, params, gate, on_text=on_text, on_decisions=on_decisions,
                           request_id=rid, cancelled=cancelled,
                           structure=self.matcher(structure) if structure is not None else None)
        except (GenerationFailed, EngineError) as e:  # the engine failed: the audit still gets the request
            if isinstance(e, GenerationFailed):
                res, cause = e.result, e.cause
            else:  # before generation began (tokenizing, rendering the template)
                res, cause = partial_result(None, len(prompt), time.perf_counter() - t0), e
            if not any(d.rule_id == "engine" for d in res.decisions):  # the gate audits its own
                d = Decision("engine", Action.ERROR, res.completion_tokens, 0, b"", f"{type(cause).__name__}: {cause}")
                on_decisions([d])
                res.decisions.append(d)
            if self.audit is not None:
                self.audit.record_request(rid, policy.name, res, session, key_id)
            raise GenerationFailed(res, cause) from cause
        if self.audit is not None:
            self.audit.record_request(rid, policy.name, res, session, key_id)
        return res
