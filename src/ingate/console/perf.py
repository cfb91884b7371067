"""Performance: the numbers /metrics exports, as JSON the console's charts read.

The same registry, refreshed the same way as a Prometheus scrape (`_Server.refresh_metrics`), so
the console and a dashboard never disagree. The page keeps the snapshots it polled and derives
rates (tokens/s) and quantiles over a recent window (time to first token, gate µs per token)
from the counters and histogram buckets, as PromQL's rate() and histogram_quantile() would.
"""

from __future__ import annotations

import time


async def snapshot(server) -> dict:
    await server.refresh_metrics()
    families = []
    for fam in server.metrics.registry.collect():
        samples = [[s.name, s.labels, s.value] for s in fam.samples if not s.name.endswith("_created")]
        families.append({"name": fam.name, "type": fam.type, "help": fam.documentation, "samples": samples})
    return {"t": time.time(), "replica": server.config.replica, "metrics": families}
