"""The layout probe: a child process that tries llama.cpp's extra buffer types and may die doing it.

Run as `python -m ingate.engines.probe MODEL.gguf` by ingate.engines.layout, never in the server's
own process. It prints one JSON line per stage passed (`load`, `decode`, `batch`), so the parent
knows how far it got when the process dies from a signal. Each stage also checks that the fast
path computes what plain weights compute (the logits correlate and the top token agrees), so a
build whose kernels return garbage without crashing is caught too.

INGATE_PROBE_CRASH=STAGE (tests only) makes the probe kill itself with SIGSEGV just before that
stage: a real death by a signal, so the fallback is exercised on CPUs where nothing crashes.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

PROBE_TEXT = ("The lighthouse keeper climbed the stairs at dusk, lit the lamp, and watched the ships "
              "come home through the fog, one by one, until the harbour was full and quiet again.")
MIN_CORRELATION = 0.98


def _emit(**kv) -> None:
    print(json.dumps(kv), flush=True)


def _agree(fast: np.ndarray, ref: np.ndarray) -> dict:
    corr = float(np.corrcoef(fast.astype(np.float64), ref.astype(np.float64))[0, 1])
    top_ref = set(np.argsort(-ref)[:5].tolist())
    ok = bool(np.isfinite(fast).all() and corr >= MIN_CORRELATION and int(np.argmax(fast)) in top_ref)
    return {"ok": ok, "correlation": round(corr, 5), "max_abs_diff": round(float(np.abs(fast - ref).max()), 4)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ingate.engines.probe MODEL.gguf", file=sys.stderr)
        return 2
    from pathlib import Path

    import llama_cpp
    from llama_cpp._logger import set_verbose

    from ingate.engines.context import N_BATCH, Context, Entry

    set_verbose(False)
    crash_at = os.environ.get("INGATE_PROBE_CRASH", "")
    path = Path(argv[0])
    llama_cpp.llama_backend_init()
    _emit(stage="start", system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip())
    plain = Context(llama_cpp, path, False, 256, 1, 1, N_BATCH)
    vocab = llama_cpp.llama_model_get_vocab(plain.model)
    data = PROBE_TEXT.encode()
    buf = (llama_cpp.llama_token * 256)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, 256, True, False)
    tokens = list(buf[:n])

    def run(ctx: Context, toks: list[int]) -> np.ndarray:
        ctx.forget(0, 0)
        rows = ctx.decode([Entry(0, i, t, i == len(toks) - 1) for i, t in enumerate(toks)])
        return np.array(ctx.logits(rows[-1]), copy=True)

    ref_one = run(plain, tokens[:1])
    ref_batch = run(plain, tokens)
    plain.close()

    def stage(name: str) -> None:
        if crash_at == name:
            os.kill(os.getpid(), signal.SIGSEGV)

    stage("load")
    fast = Context(llama_cpp, path, True, 256, 1, 1, N_BATCH)
    _emit(stage="load", ok=True)
    stage("decode")
    _emit(stage="decode", **_agree(run(fast, tokens[:1]), ref_one))
    stage("batch")
    run(fast, tokens[:2])  # the smallest batch that takes the batched kernels
    _emit(stage="batch", tokens=len(tokens), **_agree(run(fast, tokens), ref_batch))
    fast.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
