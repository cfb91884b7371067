/* Live decisions: the audit, followed (an EventSource on api/decisions). Decision rows come as the
   gate commits them; request rows (session, key id) when their request ends: the two are joined
   here by request id, so the key and session filters apply once a request has ended. */
"use strict";

const BUCKET_S = 10, BUCKETS = 60, KEEP = 5000, SHOWN = 200;
const PALETTE = ["#6d28d9", "#c2410c", "#0f766e", "#b91c1c", "#1d4ed8", "#a16207", "#be185d", "#4d7c0f", "#475569"];

const Live = {
  decisions: [],
  requests: new Map(),
  seen: new Set(),
  plot: null,
  plotKeys: "",
  pending: false,
  lastShown: 0,

  init() {
    for (const id of ["live-policy", "live-rule", "live-key"]) {
      document.getElementById(id).addEventListener("change", () => this.schedule());
    }
    document.getElementById("live-session").addEventListener("input", () => this.schedule());
    if (!IG.info.audits) {
      IG.setStatus(document.getElementById("live-status"), "this server keeps no audit: there is nothing to follow", true);
      return;
    }
    this.connect();
    setInterval(() => this.draw(), 2000);
  },

  connect() {
    const status = document.getElementById("live-status");
    const es = new EventSource("api/decisions");
    es.addEventListener("hello", (e) => IG.setStatus(status, `reading the audit (detail: ${JSON.parse(e.data).level})…`));
    es.addEventListener("live", () => { IG.setStatus(status, "live"); document.body.dataset.live = "1"; });
    es.addEventListener("decision", (e) => this.addDecision(JSON.parse(e.data)));
    es.addEventListener("request", (e) => this.addRequest(JSON.parse(e.data)));
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) IG.setStatus(status, "disconnected: reload the page (sign in again)", true);
      else IG.setStatus(status, "reconnecting…", true);
    };
    this.source = es;
  },

  addDecision(d) {
    if (this.seen.has(`d${d.id}`)) return;  // a reconnect sends the recent rows again
    this.seen.add(`d${d.id}`);
    this.decisions.push(d);
    if (this.decisions.length > KEEP) this.decisions.splice(0, this.decisions.length - KEEP);
    this.schedule();
  },

  addRequest(r) {
    if (this.seen.has(`r${r.id}`)) return;
    this.seen.add(`r${r.id}`);
    this.requests.set(r.request_id, r);
    this.schedule();
  },

  schedule() {
    if (this.pending) return;
    this.pending = true;
    setTimeout(() => { this.pending = false; this.render(); }, 150);
  },

  filters() {
    const v = (id) => document.getElementById(id).value.trim();
    return { policy: v("live-policy"), rule: v("live-rule"), key: v("live-key"), session: v("live-session") };
  },

  matches(d, f) {
    if (f.policy && d.policy !== f.policy) return false;
    if (f.rule && d.rule !== f.rule) return false;
    if (f.key || f.session) {
      const r = this.requests.get(d.request_id);
      if (!r) return false;  // its request has not ended: its key and session are not known yet
      if (f.key && (r.key_id || "(no key)") !== f.key) return false;
      if (f.session && !(r.session || "").includes(f.session)) return false;
    }
    return true;
  },

  refreshOptions() {
    const uniq = (xs) => [...new Set(xs)].sort();
    const any = [["", "any"]];
    IG.options(document.getElementById("live-policy"), any.concat(uniq(this.decisions.map((d) => d.policy)).map((p) => [p, p])), true);
    IG.options(document.getElementById("live-rule"), any.concat(uniq(this.decisions.map((d) => d.rule)).map((r) => [r, r])), true);
    const keys = uniq([...this.requests.values()].map((r) => r.key_id || "(no key)"));
    IG.options(document.getElementById("live-key"), any.concat(keys.map((k) => [k, k])), true);
  },

  render() {
    this.refreshOptions();
    const f = this.filters();
    const rows = [];
    for (let i = this.decisions.length - 1; i >= 0 && rows.length < SHOWN; i--) {
      const d = this.decisions[i];
      if (this.matches(d, f)) rows.push(this.row(d));
    }
    document.querySelector("#live-table tbody").replaceChildren(...rows);
    this.lastShown = this.decisions.length ? this.decisions[this.decisions.length - 1].id : 0;
    this.draw();
  },

  row(d) {
    const r = this.requests.get(d.request_id);
    const detail = IG.el("td", {}, d.detail);
    if (d.internal_detail) detail.append(IG.el("div", { class: "internal", text: `internal: ${d.internal_detail}` }));
    if (d.matched !== undefined) detail.append(IG.el("div", { class: "internal", text: `matched: ${d.matched}` }));
    return IG.el("tr", { class: d.id > this.lastShown ? "fresh" : null, "data-rule": d.rule, "data-action": d.action,
      "data-policy": d.policy, "data-request": d.request_id },
      IG.el("td", { text: IG.time(d.ts) }), IG.el("td", { title: d.request_id, text: d.request_id.slice(0, 12) }),
      IG.el("td", { text: `${d.policy} / ${d.rule}` }), IG.el("td", {}, IG.el("span", { class: `chip act-${d.action}`, text: d.action })),
      IG.el("td", { text: d.token_index }), IG.el("td", { text: d.byte_offset }), detail,
      IG.el("td", { text: r ? (r.key_id || "(no key)") : "…" }), IG.el("td", { text: r ? (r.session || "") : "…" }));
  },

  /* Counts per rule and action in 10-second buckets over the last 10 minutes (uPlot). */
  draw() {
    const f = this.filters();
    const end = Math.floor(Date.now() / 1000 / BUCKET_S) * BUCKET_S;
    const start = end - (BUCKETS - 1) * BUCKET_S;
    const xs = Array.from({ length: BUCKETS }, (_, i) => start + i * BUCKET_S);
    const series = new Map();
    for (const d of this.decisions) {
      if (d.ts < start || !this.matches(d, f)) continue;
      const key = `${d.rule} ${d.action}`;
      if (!series.has(key)) series.set(key, new Array(BUCKETS).fill(0));
      series.get(key)[Math.min(BUCKETS - 1, Math.floor((d.ts - start) / BUCKET_S))] += 1;
    }
    const keys = [...series.keys()].sort();
    document.getElementById("live-counts").replaceChildren(...keys.map((k) => {
      const [rule, action] = k.split(" ");
      return IG.el("span", { class: `chip act-${action}`, "data-rule": rule, "data-action": action,
        text: `${k}: ${series.get(k).reduce((a, b) => a + b, 0)}` });
    }));
    const box = document.getElementById("live-chart");
    if (box.offsetParent === null || typeof uPlot === "undefined") return;  // hidden: drawn when shown
    const data = [xs, ...keys.map((k) => series.get(k))];
    const signature = keys.join("|") + `@${box.clientWidth}`;
    if (!this.plot || signature !== this.plotKeys) {
      if (this.plot) this.plot.destroy();
      this.plotKeys = signature;
      this.plot = new uPlot({
        width: Math.max(box.clientWidth - 4, 300), height: 200, legend: { show: true },
        scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi)] } },
        axes: [{ space: 80 }, { label: "decisions", size: 50, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }],
        series: [{}, ...keys.map((k, i) => ({ label: k, stroke: PALETTE[i % PALETTE.length], width: 2,
          fill: PALETTE[i % PALETTE.length] + "22", points: { show: false }, paths: uPlot.paths.stepped({ align: 1 }) }))],
      }, data, box);
    } else {
      this.plot.setData(data);
    }
  },
};
