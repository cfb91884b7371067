"""What a process loads once and keeps: the engine, its token table, compiled policies; and the
core that runs ingate's own loop over them in this process (`LocalCore`).

The engine core (ingate.engine_core) holds a Runtime, in its own process by default, and the
server and the CLI send it requests; a request never pays to load a model or compile a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingate.batch import STEP_TOKENS, Batcher
from ingate.core import LOGPROBS, Request, Sinks, govern
from ingate.drivers.base import DecisionSink, GenerationParams, Result, TextSink
from ingate.drivers.full import generate
from ingate.engines import Engine, load_engine
from ingate.engines.llamacpp import PREFIX_CACHE_BYTES
from ingate.gate.compile import CompiledPolicy, compile_policy
from ingate.gate.gate import Gate, GateOptions
from ingate.gate.masks import TokenTable
from ingate.policy import Policy
from ingate.store.audit import AuditLog, open_audit
from ingate.structure.matcher import TokenMatcher, tokenizer_for
from ingate.structure.rules import inside_structure
from ingate.structure.spec import Structure


@dataclass
class Runtime:
    engine: Engine
    table: TokenTable
    audit: AuditLog | None
    batcher: Batcher | None = None  # many generations at once (`parallel` > 0): the batched step loop
    _lltokenizer: Any = None  # llguidance's view of the vocabulary, built for the first structured request

    @classmethod
    def load(cls, model: str | Path | None = None, audit: str | Path | None = None,
             use_audit: bool = True, layout: str | None = None, audit_key_file: str | Path | None = None,
             parallel: int = 0, prefix_cache_bytes: int | None = None, step_tokens: int = STEP_TOKENS) -> Runtime:
        """Everything in this process. `layout`: a weight layout already chosen (the engine core
        process gets it from its parent); None chooses one (INGATE_LLAMA_REPACK, the probe).
        `audit_key_file`: the audit's HMAC key (ingate.store.audit.keys says where it is looked for).
        `parallel`: generations served at once through the batched loop (0: one at a time, on the
        engine's own sequence, as the CLI's `generate` runs); `prefix_cache_bytes`: the prefix
        cache's bound when batching (None: the default; 0: off)."""
        audit_log = open_audit(audit, audit_key_file) if use_audit else None  # a bad audit fails before the model loads
        cache = (PREFIX_CACHE_BYTES if prefix_cache_bytes is None else prefix_cache_bytes) if parallel else 0
        engine = load_engine(model, layout=layout, n_seq=parallel + 1, prefix_cache_bytes=cache)
        batcher = Batcher(engine, step_tokens=step_tokens) if parallel else None  # type: ignore[arg-type]
        return cls(engine, TokenTable(engine.token_bytes()), audit_log, batcher)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.engine.close()
        if self.audit is not None:
            self.audit.close()

    def info(self) -> dict:
        """The engine's report, with the batched loop's figures when it batches."""
        return self.engine.info() | ({"batch": self.batcher.summary()} if self.batcher is not None else {})

    def gate_for(self, policy: Policy | CompiledPolicy, stop: Sequence[str] = (), logprobs: bool = False,
                 entropy: bool = False, session_entropy: float = 0.0,
                 options: GateOptions | None = None) -> Gate | None:
        """A fresh gate for one stream; None for `--policy none` (ungoverned) unless stop sequences
        (held back like any partial match), logprobs (mapped onto released tokens) or entropy
        measurement need one. `session_entropy`: what the session spent before this request;
        `options`: all of the request's (its stop sequences, session, context) at once."""
        compiled = policy if isinstance(policy, CompiledPolicy) else self.prepare(policy)
        options = options or GateOptions(stop=tuple(stop), session_entropy=session_entropy)
        if compiled.policy.source == "<none>" and not options.stop and not logprobs and not entropy:
            return None
        return Gate(compiled, self.table, options)

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
            on_text: TextSink | None = None, request_id: str | None = None, stop: Sequence[str] = (),
            cancelled: Callable[[], bool] | None = None, session: str | None = None, session_entropy: float = 0.0,
            on_audited: DecisionSink | None = None, structure: Structure | None = None,
            key_id: str | None = None) -> Result:
        """One governed generation (`govern` over ingate's own loop). `messages` is a chat, or a raw
        prompt string (completions). The request's fields are `ingate.core.Request`'s."""
        req = Request(messages, policy, params, stop, session=session, session_entropy=session_entropy,
                      structure=structure, key_id=key_id)
        if request_id is not None:
            req.request_id = request_id
        return govern(req, self.audit, FullDrive(self), Sinks(on_text, on_audited, cancelled))


class FullDrive:
    """ingate's own loop over this runtime's engine: a FULL gate, masks before sampling, rollback."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.prompt: list[int] = []

    def prepare(self, req: Request) -> int:
        eng = self.rt.engine
        self.prompt = eng.tokenize(req.messages, add_bos=True) if isinstance(req.messages, str) \
            else eng.chat_prompt(req.messages)
        return len(self.prompt)

    def compiled(self, policy: Policy) -> CompiledPolicy:
        return self.rt.prepare(policy)

    def gate(self, compiled: CompiledPolicy, req: Request) -> Gate | None:
        return self.rt.gate_for(compiled, logprobs=req.params.logprobs is not None, entropy=req.params.entropy,
                                options=req.gate_options())

    def drive(self, gate: Gate | None, req: Request, on_text: TextSink | None, on_decisions: DecisionSink,
              cancelled: Callable[[], bool] | None) -> Result:
        matcher = self.rt.matcher(req.structure) if req.structure is not None else None
        if self.rt.batcher is not None:  # one sequence of the batch, the same step machine
            return self.rt.batcher.run(self.prompt, req.params, gate, on_text=on_text, on_decisions=on_decisions,
                                       cancelled=cancelled, request_id=req.request_id, structure=matcher)
        return generate(self.rt.engine, self.prompt, req.params, gate, on_text=on_text, on_decisions=on_decisions,
                        request_id=req.request_id, cancelled=cancelled, structure=matcher)


class LocalCore:
    """The core over a `Runtime` in this process: no isolation, no restart (INGATE_ENGINE_PROCESS=0)."""

    capabilities = frozenset({LOGPROBS})

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.name: str = runtime.engine.name
        self.audit = runtime.audit
        self.max_concurrency = runtime.batcher.slots if runtime.batcher is not None else 1

    def run(self, req: Request, on_text: TextSink | None = None, cancelled: Callable[[], bool] | None = None,
            on_audited: DecisionSink | None = None) -> Result:
        return govern(req, self.audit, FullDrive(self.runtime), Sinks(on_text, on_audited, cancelled))

    def info(self) -> dict:
        return self.runtime.info() | {"process": None}

    def ensure_alive(self) -> bool:
        return False

    def close(self) -> None:
        self.runtime.close()
