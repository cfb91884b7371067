"""Prometheus metrics for the server: what was generated, what governance did, what it cost."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ingate.drivers.base import Result

_US = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ingate_requests", "Generations finished", ["policy", "finish_reason"], registry=r)
        self.tokens = Counter("ingate_completion_tokens", "Tokens generated and admitted", ["policy"], registry=r)
        self.decisions = Counter("ingate_decisions", "Gate decisions", ["policy", "rule", "action"], registry=r)
        self.rollbacks = Counter("ingate_rollbacks", "KV-cache rollbacks", ["policy"], registry=r)
        self.masked = Counter("ingate_masked_values", "Values masked in requests before the model saw them "
                              "(mask_upstream), by type", ["policy", "type"], registry=r)
        self.gate_us = Histogram("ingate_gate_microseconds", "Gate time per token (sampling excluded)",
                                 buckets=_US, registry=r)
        self.held = Histogram("ingate_held_bytes", "Bytes held back after each token",
                              buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.ttft = Histogram("ingate_time_to_first_token_seconds", "Time to the first released text",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.queue = Gauge("ingate_queue_depth", "Requests queued or running", registry=r)
        self.engine_up = Gauge("ingate_engine_up", "1 while the engine process is running", registry=r)
        self.replica = Gauge("ingate_replica_info", "This replica's id (INGATE_REPLICA, else the host name)",
                             ["replica"], registry=r)
        self.session_store_errors = Counter("ingate_session_store_errors", "Session store calls that failed",
                                            ["op"], registry=r)
        self.upstream_requests = Counter("ingate_upstream_requests", "Client requests served by an upstream",
                                         ["model", "finish_reason"], registry=r)
        self.upstream_cancellations = Counter("ingate_upstream_cancellations",
                                              "Upstream streams ingate closed early (a stop, max_tokens, a "
                                              "client gone)", ["model"], registry=r)
        self.upstream_continuations = Counter("ingate_upstream_continuations",
                                              "Continuation requests after a withdrawal", ["model"], registry=r)
        self.upstream_ttft = Histogram("ingate_upstream_time_to_first_token_seconds",
                                       "Time to the first released text of an upstream model", ["model"],
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)

        self.engines: dict[str, dict] = {}  # model -> its core's latest info (refreshed before each scrape)
        r.register(_EngineCollector(self))

    def observe(self, policy: str, res: Result) -> None:
        self.requests.labels(policy, res.finish_reason).inc()
        self.tokens.labels(policy).inc(res.completion_tokens)
        self.rollbacks.labels(policy).inc(res.rollbacks)
        for d in res.decisions:
            self.decisions.labels(policy, d.rule_id, d.action).inc()
        for kind, n in (res.masked or {}).items():
            self.masked.labels(policy, kind).inc(n)
        for us in res.gate_us:
            self.gate_us.observe(us)
        for h in res.held_bytes:
            self.held.observe(h)
        if res.ttft_s is not None:
            self.ttft.observe(res.ttft_s)
        if (up := res.upstream) is not None:
            model = up["model"]
            self.upstream_requests.labels(model, res.finish_reason).inc()
            self.upstream_cancellations.labels(model).inc(1 if up["cancelled_early"] else 0)
            self.upstream_continuations.labels(model).inc(up["continuations"])
            if res.ttft_s is not None:
                self.upstream_ttft.labels(model).observe(res.ttft_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """The batched loop's and the prefix cache's figures, from each local engine's latest report:
    the loop runs in the engine process, which reports them with its info."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        gauges = {
            "active": GaugeMetricFamily("ingate_batch_active_sequences", "Sequences generating now", labels=["model"]),
            "batch_p50": GaugeMetricFamily("ingate_batch_size", "Sequences stepped per step (p50 of the last 512)",
                                           labels=["model"]),
            "step_ms_p50": GaugeMetricFamily("ingate_batch_step_seconds", "Time per step (of the last 512)",
                                             labels=["model", "quantile"]),
            "prefill_tokens_per_step_p50": GaugeMetricFamily(
                "ingate_batch_prefill_tokens", "Prompt tokens decoded per step (p50 of the last 512)",
                labels=["model"]),
            "queue_ms_p50": GaugeMetricFamily("ingate_batch_queue_seconds",
                                              "Wait for a sequence (p50 of the last 512)", labels=["model"]),
        }
        steps = CounterMetricFamily("ingate_batch_steps", "Steps of the batched loop", labels=["model"])
        restarts = sum((info.get("process") or {}).get("restarts", 0) for info in self.metrics.engines.values())
        yield CounterMetricFamily("ingate_engine_restarts", "Engine processes restarted after a crash", value=restarts)
        hits = CounterMetricFamily("ingate_prefix_cache_hits", "Prompts that reused a cached prefix", labels=["model"])
        misses = CounterMetricFamily("ingate_prefix_cache_misses", "Prompts with no cached prefix", labels=["model"])
        reused = CounterMetricFamily("ingate_prefix_cache_tokens_reused", "Prompt tokens not evaluated again",
                                     labels=["model"])
        cache_bytes = GaugeMetricFamily("ingate_prefix_cache_bytes", "Memory the prefix cache holds", labels=["model"])
        for model, info in self.metrics.engines.items():
            b = info.get("batch")
            if b:
                gauges["active"].add_metric([model], b["active"])
                if b.get("batch_p50") is not None:
                    gauges["batch_p50"].add_metric([model], b["batch_p50"])
                    gauges["step_ms_p50"].add_metric([model, "0.5"], b["step_ms_p50"] / 1000)
                    gauges["step_ms_p50"].add_metric([model, "0.99"], b["step_ms_p99"] / 1000)
                    gauges["prefill_tokens_per_step_p50"].add_metric([model], b["prefill_tokens_per_step_p50"])
                if b.get("queue_ms_p50") is not None:
                    gauges["queue_ms_p50"].add_metric([model], b["queue_ms_p50"] / 1000)
                steps.add_metric([model], b["steps"])
            pc = info.get("prefix_cache")
            if pc:
                hits.add_metric([model], pc["hits"])
                misses.add_metric([model], pc["misses"])
                reused.add_metric([model], pc["tokens_reused"])
                cache_bytes.add_metric([model], pc["bytes"])
        yield from gauges.values()
        yield from (steps, hits, misses, reused, cache_bytes)
