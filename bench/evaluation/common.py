"""What every section of the evaluation shares: the run's context, progress bars, percentiles."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
DOCS = ROOT / "docs"
DATA = ROOT.parent / "shared" / "data"
NEMO_PYTHON_DEFAULT = Path.home() / ".cache" / "ingate" / "nemo-0.24.1" / "bin" / "python"

T = TypeVar("T")


@dataclass
class Ctx:
    """One evaluation run. `size` is "full", "quick" (a few minutes a section) or "smoke" (the
    harness test in `make test`: a handful of items, every code path)."""

    size: str = "full"
    results: Path = RESULTS
    img: Path = DOCS / "img"
    tmp: Path = Path("/tmp")
    nemo_python: Path = NEMO_PYTHON_DEFAULT
    _rt: Any = field(default=None, repr=False)

    @property
    def quick(self) -> bool:
        return self.size != "full"

    def pick(self, full: T, quick: T, smoke: T) -> T:
        """A sample size (or any setting) by the run's size."""
        return {"full": full, "quick": quick, "smoke": smoke}[self.size]

    @property
    def rt(self):
        """The embedded model, loaded once for every section (no audit: nothing here is a request)."""
        if self._rt is None:
            from ingate.runtime import Runtime

            self._rt = Runtime.load(use_audit=False)
        return self._rt

    def progress(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """`items`, with a progress bar on stderr (tqdm)."""
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, file=sys.stderr, dynamic_ncols=True, mininterval=1.0)


def pct(xs: Iterable[float], q: float) -> float:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    return round(float(np.percentile(a, q)), 4) if a.size else float("nan")


def dist(xs: Iterable[float]) -> dict[str, float]:
    """Median, p99 and sample size: how every timing in the report is quoted."""
    a = [x for x in xs if x is not None]
    return {"n": len(a), "median": pct(a, 50), "p99": pct(a, 99)}


def share(k: int, n: int) -> str:
    """"k/n (p%)"."""
    return f"{k}/{n} ({100 * k / n:.1f}%)" if n else "0/0 (-)"


def ms(x: float) -> str:
    return "-" if x is None or x != x else f"{x * 1000:.0f}"


def write_json(ctx: Ctx, name: str, data: dict) -> Path:
    path = ctx.results / f"eval_{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.t0


@contextmanager
def ingate_server(flags: list[str], log: IO[bytes], env: dict[str, str] | None = None
                  ) -> Iterator[tuple[str, subprocess.Popen]]:
    """`ingate serve FLAGS` on a free port, its output in `log`, until the block ends: (base URL,
    process). A server that exits before it is ready raises with the tail of its log."""
    from server import INGATE, free_port, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([INGATE, "serve", "--port", str(port), *flags], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(url, proc)
        except RuntimeError as e:
            log.flush()
            raise RuntimeError(f"{e}; its log: {Path(log.name).read_text(errors='replace')[-2000:]}") from None
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
