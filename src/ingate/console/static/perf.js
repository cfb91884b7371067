/* Performance: small live charts of what /metrics exports (api/metrics is the same registry as
   JSON). Rates are taken over the last RATE_S seconds of counters, quantiles over the last
   QUANTILE_S seconds of histogram buckets, the way PromQL's rate() and histogram_quantile() do. */
"use strict";

const POLL_MS = 2000, KEEP_POINTS = 150, RATE_S = 10, QUANTILE_S = 60;

const Metrics = {
  /* sample name -> [{labels, value}] */
  index(snap) {
    const out = new Map();
    for (const fam of snap.metrics) {
      for (const [name, labels, value] of fam.samples) {
        if (!out.has(name)) out.set(name, []);
        out.get(name).push({ labels, value });
      }
    }
    return out;
  },
  sum(ix, name, where) {
    return (ix.get(name) || []).filter((s) => !where || where(s.labels)).reduce((a, s) => a + s.value, 0);
  },
  has(ix, name) { return (ix.get(name) || []).length > 0; },
  buckets(ix, hist) {  // cumulative counts by upper bound, every label set added up
    const by = new Map();
    for (const s of ix.get(`${hist}_bucket`) || []) {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      by.set(le, (by.get(le) || 0) + s.value);
    }
    return [...by.entries()].sort((a, b) => a[0] - b[0]);
  },
  quantile(now, old, hist, q) {
    const a = Metrics.buckets(now, hist), b = new Map(old ? Metrics.buckets(old, hist) : []);
    const d = a.map(([le, c]) => [le, c - (b.get(le) || 0)]);
    const total = d.length ? d[d.length - 1][1] : 0;
    if (total <= 0) return null;
    const rank = q * total;
    let prevLe = 0, prevC = 0;
    for (const [le, c] of d) {
      if (c >= rank) {
        if (le === Infinity) return prevLe;
        return prevLe + (le - prevLe) * (c === prevC ? 1 : (rank - prevC) / (c - prevC));
      }
      prevLe = le; prevC = c;
    }
    return prevLe;
  },
};

/* Each card: what it shows, the metric names it reads, and its values from (now, then) snapshots. */
const CARDS = [
  { id: "tokens", title: "Tokens per second", metric: "ingate_completion_tokens_total", series: ["tokens/s"], unit: "tokens/s",
    values: (w) => [w.rate((ix) => Metrics.sum(ix, "ingate_completion_tokens_total"))] },
  { id: "ttft", title: "Time to first token", metric: "ingate_time_to_first_token_seconds", series: ["p50", "p99"], unit: "ms",
    values: (w) => [0.5, 0.99].map((q) => w.q("ingate_time_to_first_token_seconds", q, 1000)) },
  { id: "gate", title: "Gate time per token", metric: "ingate_gate_microseconds", series: ["p50", "p99"], unit: "µs",
    values: (w) => [0.5, 0.99].map((q) => w.q("ingate_gate_microseconds", q, 1)) },
  { id: "queue", title: "Queue depth", metric: "ingate_queue_depth", series: ["queued or running"], unit: "requests",
    values: (w) => [Metrics.sum(w.now, "ingate_queue_depth")] },
  { id: "restarts", title: "Engine restarts", metric: "ingate_engine_restarts_total, ingate_engine_up", series: ["restarts"],
    unit: "", values: (w) => [Metrics.sum(w.now, "ingate_engine_restarts_total")],
    note: (w) => (Metrics.sum(w.now, "ingate_engine_up") ? "engine up" : "engine down") },
  { id: "upstream", title: "Upstream time to first token", metric: "ingate_upstream_time_to_first_token_seconds",
    series: ["p50", "p99"], unit: "ms",
    values: (w) => [0.5, 0.99].map((q) => w.q("ingate_upstream_time_to_first_token_seconds", q, 1000)),
    note: (w) => (Metrics.has(w.now, "ingate_upstream_time_to_first_token_seconds_count") ? "" : "no upstream model served") },
  { id: "batch", title: "Batched loop", metric: "ingate_batch_active_sequences, ingate_batch_size", unit: "",
    series: ["active sequences", "batch size p50"],
    values: (w) => [Metrics.sum(w.now, "ingate_batch_active_sequences"), Metrics.sum(w.now, "ingate_batch_size")] },
  { id: "step", title: "Batched step time", metric: "ingate_batch_step_seconds", series: ["p50", "p99"], unit: "ms",
    values: (w) => ["0.5", "0.99"].map((q) => (Metrics.has(w.now, "ingate_batch_step_seconds")
      ? 1000 * Metrics.sum(w.now, "ingate_batch_step_seconds", (l) => l.quantile === q) : null)) },
  { id: "cache", title: "Prefix cache hit rate", metric: "ingate_prefix_cache_hits_total, _misses_total", unit: "%",
    series: ["hits"], values: (w) => {
      const h = w.delta((ix) => Metrics.sum(ix, "ingate_prefix_cache_hits_total"), QUANTILE_S);
      const m = w.delta((ix) => Metrics.sum(ix, "ingate_prefix_cache_misses_total"), QUANTILE_S);
      return [h + m > 0 ? (100 * h) / (h + m) : null];
    } },
  { id: "traffic", title: "Requests and decisions per minute", metric: "ingate_requests_total, ingate_decisions_total",
    series: ["requests", "decisions"], unit: "/min", values: (w) => [
      60 * w.rate((ix) => Metrics.sum(ix, "ingate_requests_total"), QUANTILE_S),
      60 * w.rate((ix) => Metrics.sum(ix, "ingate_decisions_total"), QUANTILE_S)] },
];

const Perf = {
  snaps: [],
  points: new Map(),
  plots: new Map(),

  init() {
    const box = document.getElementById("perf-cards");
    for (const c of CARDS) {
      this.points.set(c.id, { t: [], ys: c.series.map(() => []) });
      box.append(IG.el("div", { class: "card", id: `card-${c.id}` },
        IG.el("h3", { text: c.title }), IG.el("div", { class: "value", id: `value-${c.id}`, text: "–" }),
        IG.el("div", { class: "chart", id: `chart-${c.id}` }), IG.el("div", { class: "metric", text: c.metric })));
    }
    this.poll();
    setInterval(() => this.poll(), POLL_MS);
  },

  async poll() {
    const status = document.getElementById("perf-status");
    let snap;
    try {
      snap = await IG.api("api/metrics");
    } catch (e) {
      IG.setStatus(status, e.message, true);
      return;
    }
    IG.setStatus(status, `replica ${snap.replica}, ${new Date(snap.t * 1000).toLocaleTimeString("en-GB")}`);
    this.snaps.push({ t: snap.t, ix: Metrics.index(snap) });
    if (this.snaps.length > KEEP_POINTS + 40) this.snaps.shift();
    const w = this.window();
    for (const c of CARDS) this.update(c, w);
    document.body.dataset.perfPolls = String(Number(document.body.dataset.perfPolls || 0) + 1);
  },

  /* The newest snapshot, and helpers over the one `s` seconds before it. */
  window() {
    const snaps = this.snaps, now = snaps[snaps.length - 1];
    const before = (s) => snaps.find((x) => x.t >= now.t - s - 0.5) || snaps[0];
    return {
      now: now.ix, t: now.t,
      delta(fn, s = RATE_S) { const o = before(s); return o === now ? 0 : fn(now.ix) - fn(o.ix); },
      rate(fn, s = RATE_S) { const o = before(s); return o === now ? null : (fn(now.ix) - fn(o.ix)) / (now.t - o.t); },
      q(hist, q, scale) { const o = before(QUANTILE_S); const v = Metrics.quantile(now.ix, o === now ? null : o.ix, hist, q); return v === null ? null : v * scale; },
    };
  },

  update(card, w) {
    const vs = card.values(w);
    const p = this.points.get(card.id);
    p.t.push(w.t);
    vs.forEach((v, i) => p.ys[i].push(v === null || Number.isNaN(v) ? null : v));
    if (p.t.length > KEEP_POINTS) { p.t.shift(); p.ys.forEach((y) => y.shift()); }
    const said = vs.map((v) => IG.fmt(v, card.unit === "" ? 0 : 1)).join(" / ");
    const label = [card.series.length > 1 ? card.series.join(" / ") : "", card.unit, card.note ? card.note(w) : ""];
    const value = document.getElementById(`value-${card.id}`);
    value.replaceChildren(said, " ", IG.el("small", { text: label.filter(Boolean).join(" ") }));
    value.dataset.values = JSON.stringify(vs);
    this.draw(card, p);
  },

  draw(card, p) {
    const box = document.getElementById(`chart-${card.id}`);
    if (box.offsetParent === null || typeof uPlot === "undefined") return;  // hidden: drawn when shown
    const data = [p.t, ...p.ys];
    let plot = this.plots.get(card.id);
    if (!plot) {
      plot = new uPlot({
        width: Math.max(box.clientWidth, 260), height: 110, legend: { show: false }, cursor: { show: false },
        scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.15 : 1] } },
        axes: [{ size: 24, font: "10px system-ui" }, { size: 44, font: "10px system-ui" }],
        series: [{}, ...card.series.map((s, i) => ({ label: s, stroke: i ? "#c2410c" : "#2f5bea", width: 1.5, spanGaps: true, points: { show: false } }))],
      }, data, box);
      this.plots.set(card.id, plot);
    } else {
      plot.setData(data);
    }
  },

  shown() {
    for (const c of CARDS) this.draw(c, this.points.get(c.id));
  },
};
