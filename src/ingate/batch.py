"""Many governed streams at once: one step loop over the multi-sequence llama.cpp engine.

Each admitted generation owns one sequence of the engine's context (its KV stream, positions and
rollbacks), its own gate, sampler and random stream: a `FullRun` step machine, exactly the one
`generate` drives alone. One step of the loop:

    decode      every sequence's pending tokens in one llama_decode: the next token of each
                decoding sequence, plus a chunk of prompt for those still prefilling, within
                `step_tokens` (so a long prompt never stalls the others by more than that)
    step        each sequence whose logits are ready: its gate masks and samples its own row,
                admits, holds back, rolls back its own KV, or ends

Nothing one sequence does can change another's text: they share the weights' pass, never a KV
cell (a stream per sequence) nor a random stream. A sequence that ends, or whose client left
(checked every step), frees its slot for the next.

The loop runs in a thread of its own. What a generation releases is handed to the thread that
asked for it (`run` blocks there): it writes the decisions to the audit, then passes the text on,
in order, so a slow audit write stalls that one stream, never the batch (invariant 5 holds per
stream: a decision is durable before the text it concerns is seen).
"""

from __future__ import annotations

import bisect
import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ingate.drivers.base import DecisionSink, GenerationFailed, GenerationParams, Result, TextSink, partial_result
from ingate.drivers.full import FullRun, Ungoverned, start_run
from ingate.engines.base import ContextFull
from ingate.engines.llamacpp import LlamaCppEngine
from ingate.engines.sequence import Sequence
from ingate.gate.gate import Gate
from ingate.structure.matcher import TokenMatcher

log = logging.getLogger("ingate.batch")
STEP_TOKENS = 128  # tokens one step decodes at most: every decoding sequence's next one, then prompt chunks
WINDOW = 512  # steps the loop's figures (batch size, step time) are kept over


@dataclass(eq=False)
class BatchJob:
    prompt: list[int]
    params: GenerationParams
    gate: Gate | None
    cancelled: Callable[[], bool] | None
    request_id: str
    structure: TokenMatcher | None
    outbox: queue.Queue = field(default_factory=queue.Queue)  # ("decisions", ds) | ("text", t) | ("end", r|e)
    slot: Sequence | None = None  # the engine sequence it owns, once admitted
    run: FullRun | Ungoverned | None = None
    t_queued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0

    @property
    def seq(self) -> Sequence:
        assert self.slot is not None, "an admitted job owns a sequence"
        return self.slot

    def wait(self, on_text: TextSink | None = None, on_decisions: DecisionSink | None = None) -> Result:
        """Block until the generation ends, handing its decisions and text to the sinks on this
        thread, in order: a decision is durable before the text it concerns is passed on."""
        while True:
            kind, val = self.outbox.get()
            if kind == "decisions":
                if on_decisions is not None:
                    on_decisions(val)
            elif kind == "text":
                if on_text is not None:
                    on_text(val)
            elif isinstance(val, BaseException):
                raise val
            else:
                return val


@dataclass
class LoopStats:
    """The loop's recent figures, for /metrics and /healthz."""

    steps: int = 0
    batch: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # sequences stepped per step
    tokens: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # tokens decoded per step
    prefill: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # prompt tokens decoded per step
    step_s: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # seconds per step
    queue_s: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # waits for a sequence
    gate_row: deque = field(default_factory=lambda: deque(maxlen=WINDOW * 8))  # gate us per row stepped
    gate_step: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # gate us per step, all rows

    def summary(self) -> dict:
        def q(xs, p):
            return round(float(sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]), 4) if xs else None

        return {"steps": self.steps, "batch_p50": q(self.batch, 0.5), "batch_max": max(self.batch, default=0),
                "tokens_per_step_p50": q(self.tokens, 0.5), "prefill_tokens_per_step_p50": q(self.prefill, 0.5),
                "step_ms_p50": q([s * 1000 for s in self.step_s], 0.5),
                "step_ms_p99": q([s * 1000 for s in self.step_s], 0.99),
                "queue_ms_p50": q([s * 1000 for s in self.queue_s], 0.5),
                "gate_us_row_p50": q(self.gate_row, 0.5), "gate_us_row_p99": q(self.gate_row, 0.99),
                "gate_us_step_p50": q(self.gate_step, 0.5), "gate_us_step_p99": q(self.gate_step, 0.99),
                "batch_mean": round(statistics.fmean(self.batch), 2) if self.batch else None}


class Batcher:
    """The step loop over `engine`'s sequences `slots` (by default all but sequence 0, which the
    engine keeps for its own single-generation path)."""

    def __init__(self, engine: LlamaCppEngine, slots: list[int] | None = None, step_tokens: int = STEP_TOKENS,
                 start: bool = True):
        """`start`: run the loop in a thread of its own (False: the caller ticks it, one step at a
        time, as the tests do to choose the interleaving)."""
        self.engine = engine
        ids = slots if slots is not None else (list(range(1, engine.n_seq)) or [0])
        # the lowest free sequence id first: llama.cpp runs consecutive KV streams in one pass, so
        # compact ids keep one step to one pass over the weights
        self.free: list[Sequence] = sorted((engine.sequences[i] for i in ids), key=lambda s: s.seq_id)
        self.slots = len(self.free)
        self.step_tokens = max(1, step_tokens)
        if engine.batch_invariant is None and self.slots > 1:
            engine.probe_batch_invariance()  # reported in /healthz: may batching change a sequence's bits?
        self.stats = LoopStats()
        self._waiting: deque[BatchJob] = deque()
        self._active: list[BatchJob] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._loop, name="ingate-batch", daemon=True)
            self._thread.start()

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def run(self, prompt: list[int], params: GenerationParams, gate: Gate | None = None,
            on_text: TextSink | None = None, on_decisions: DecisionSink | None = None,
            cancelled: Callable[[], bool] | None = None, request_id: str = "-",
            structure: TokenMatcher | None = None) -> Result:
        """One generation in the batch, as `generate` would run it alone; blocks this thread until it
        ends, handing its decisions and text to the sinks here, in order."""
        return self.submit(prompt, params, gate, cancelled, request_id, structure).wait(on_text, on_decisions)

    def submit(self, prompt: list[int], params: GenerationParams, gate: Gate | None = None,
               cancelled: Callable[[], bool] | None = None, request_id: str = "-",
               structure: TokenMatcher | None = None) -> BatchJob:
        """Queue one generation; `wait` on what this returns for its outcome."""
        job = BatchJob(prompt, params, gate, cancelled, request_id, structure)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batched loop is closed")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(10)
        else:
            self._fail_all(RuntimeError("the engine is shutting down"))

    # ---- the loop (its own thread, or the caller's ticks) -------------------------------------------------
    def tick(self) -> bool:
        """Admit what waits (while sequences are free), then one step. False when there was nothing to do."""
        with self._cond:
            admitted = []
            while self._waiting and self.free:
                job = self._waiting.popleft()
                job.slot = self.free.pop(0)
                admitted.append(job)
        for job in admitted:
            self._admit(job)
        if not self._active:
            return bool(admitted)
        self._step()
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._active and not (self._waiting and self.free):
                    self._cond.wait()
                if self._closed:
                    self._fail_all(RuntimeError("the engine is shutting down"))
                    return
            self.tick()

    def _admit(self, job: BatchJob) -> None:
        job.queue_s = time.perf_counter() - job.t_queued
        self.stats.queue_s.append(job.queue_s)
        ob = job.outbox
        try:
            job.run = start_run(job.seq, job.prompt, job.params, job.gate, on_text=lambda t: ob.put(("text", t)),
                                on_decisions=lambda ds: ob.put(("decisions", ds)), cancelled=job.cancelled,
                                request_id=job.request_id, structure=job.structure)
        except BaseException as e:  # noqa: BLE001  (the request's own failure, handed to it)
            self._end(job, e)
            return
        self._active.append(job)

    def _step(self) -> None:
        if not self._active:
            return
        t0 = time.perf_counter()
        order = sorted(self._active, key=lambda j: (j.seq.prefilling, j.t_queued))  # decoding first, then FIFO
        full = [j for j in order if j.seq.n_past > j.seq.n_ctx]
        for j in full:
            self._fail(j, ContextFull(f"context of {j.seq.n_ctx} tokens is full; lower max_tokens or the prompt"))
        order = [j for j in order if j not in full]
        prefill_before = sum(len(j.seq.pending) for j in order if j.seq.prefilling)
        try:
            decoded = self.engine.decode([j.seq for j in order if j.seq.pending], self.step_tokens)
        except Exception as e:  # the engine failed: every sequence in the step ends closed
            for j in order:
                self._fail(j, e)
            return
        prefilled = prefill_before - sum(len(j.seq.pending) for j in order if j.seq.prefilling)
        stepped, gate_us = 0, 0.0
        for job in order:
            if job.seq.pending:  # a prompt still being evaluated
                continue
            stepped += 1
            run = job.run
            assert run is not None
            n_gate = len(run.gate_us) if isinstance(run, FullRun) else 0
            try:
                finish = run.step()
                if isinstance(run, FullRun) and len(run.gate_us) > n_gate:
                    gate_us += run.gate_us[-1]
                    self.stats.gate_row.append(run.gate_us[-1])
                if finish is not None:
                    self._end(job, run.finish(finish))
            except GenerationFailed as e:
                self._end(job, e)
            except BaseException as e:  # noqa: BLE001  (a bug of ours: that stream ends closed, the rest go on)
                log.error("request %s: the batched step failed", job.request_id, exc_info=e)
                self._fail(job, e)
        st = self.stats
        st.steps += 1
        st.batch.append(stepped)
        st.tokens.append(decoded)
        st.prefill.append(prefilled)
        st.step_s.append(time.perf_counter() - t0)
        if stepped:
            st.gate_step.append(gate_us)

    def _fail(self, job: BatchJob, e: BaseException) -> None:
        if job.run is not None:
            self._end(job, job.run.failed(e))
        else:
            res = partial_result(None, len(job.prompt), time.perf_counter() - job.t_queued)
            self._end(job, GenerationFailed(res, e))

    def _end(self, job: BatchJob, outcome: Result | BaseException) -> None:
        """The generation is over: its sequence is freed for the next, its thread told."""
        if job in self._active:
            self._active.remove(job)
        if job.slot is not None:
            job.slot.free()
            with self._cond:
                bisect.insort(self.free, job.slot, key=lambda s: s.seq_id)
            job.slot = None
        job.outbox.put(("end", outcome))

    def _fail_all(self, e: BaseException) -> None:
        for job in list(self._active) + list(self._waiting):
            self._fail(job, e)
        self._waiting.clear()

    def summary(self) -> dict:
        return {"slots": self.slots, "active": self.active, "waiting": self.waiting,
                "step_tokens": self.step_tokens} | self.stats.summary()
