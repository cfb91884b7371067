"""The MASK_FIRST driver: a gate driven the way an engine that samples itself drives a logits processor.

Every step the gate's mask is applied to the logits before the engine's own sampler draws; the
gate sees the token only after the engine has it. There is no rollback and no resample: a match
the mask could not prevent, or a rejected semantic group, ends the stream before it. This is
what the vLLM plugin does per batch row (`ingate.vllm.rows`, with the same mask computation:
`MaskCache.forbidden_ids`); here it runs over the embedded engine so the mode is tested against
a real model.
"""

from __future__ import annotations

import time

from ingate.drivers.base import (
    DecisionSink,
    Emitter,
    Finish,
    GenerationParams,
    Result,
    TextSink,
    after_admission,
    end_stream,
)
from ingate.engines.base import FULL_LOGITS, Engine, EngineError
from ingate.gate.gate import Gate, Mode
from ingate.sampling import Sampler


def generate_mask_first(engine: Engine, prompt: list[int], params: GenerationParams, gate: Gate,
                        on_text: TextSink | None = None, on_decisions: DecisionSink | None = None) -> Result:
    if gate.mode is not Mode.MASK_FIRST:
        raise ValueError(f"generate_mask_first drives a {Mode.MASK_FIRST} gate, not {gate.mode}")
    if FULL_LOGITS not in engine.capabilities:
        raise EngineError(f"engine {engine.name!r} does not return full logits: a mask cannot apply")
    sampler = Sampler(params.sampling, measure=gate.entropy is not None)  # entropy rules need it
    limit = min(params.max_tokens, engine.n_ctx - len(prompt))
    emit = Emitter(gate, on_text, on_decisions)
    gate_us: list[float] = []

    engine.start(prompt)
    finish: str | None = None
    while finish is None:
        if gate.position >= limit:
            finish = end_stream(gate, _cannot_roll_back, Finish.LENGTH)
            break
        logits = engine.step()
        g = time.perf_counter()
        mask = gate.mask()
        gate_us.append((time.perf_counter() - g) * 1e6)
        if mask.any() and mask[would := sampler.peek(logits)]:
            gate.note_masked(would)  # the audit says when the mask changed the engine's draw
        token = sampler.sample(logits, mask)  # the engine's own draw, after the processor
        if token < 0:
            gate.halt("ingate", "error", "every token is masked at this position; stream ended")
            finish = Finish.CONTENT_FILTER
        elif engine.is_eog(token):
            finish = end_stream(gate, _cannot_roll_back, Finish.STOP)
        else:
            engine.accept(token)  # the engine has the token before the gate sees it: that is this mode
            finish = after_admission(gate, gate.admit(token, sampler.entropy), _cannot_roll_back)
            emit(gate.release() if finish is None else "")
    assert finish is not None
    emit.final(finish)
    return Result.of(gate, finish, emit.elapsed, emit.ttft, len(prompt), gate_us=gate_us)


def _cannot_roll_back(n: int) -> None:
    raise AssertionError("a MASK_FIRST gate asked for a rollback")  # the gate never does: see Gate._prevent
