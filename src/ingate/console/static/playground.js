/* The playground: a run watched as the gate acts. Decisions arrive before the text they concern
   (each is durable in the audit first); when the run ends, its released text is drawn again
   token by token, coloured by entropy, with each redaction marked with its rule and each rollback
   or resample where it happened. What a decision says is what the server discloses. */
"use strict";

class RunPanel {
  constructor(name) {
    this.name = name;
    this.out = document.getElementById(`out-${name}`);
    this.finish = document.getElementById(`finish-${name}`);
    this.stats = document.getElementById(`stats-${name}`);
    this.spark = document.getElementById(`spark-${name}`);
    this.table = document.querySelector(`#decisions-${name} tbody`);
    this.title = document.getElementById(`title-${name}`);
  }

  reset() {
    this.live = [];
    this.text = "";
    this.out.replaceChildren();
    this.out.classList.remove("done");
    this.finish.textContent = "";
    this.finish.className = "finish";
    this.stats.textContent = "";
    this.spark.replaceChildren();
    if (this.table) this.table.replaceChildren();
  }

  onEvent(name, data) {
    if (name === "start") {
      if (this.title) this.title.textContent = `${data.model} · policy ${data.policy}`;
      this.out.dataset.request = data.request_id;
    } else if (name === "decision") {
      this.live.push(data);
      this.out.append(RunPanel.chip(data));
      this.addRow(data, this.live.length);
    } else if (name === "text") {
      this.text += data.text;
      this.out.append(data.text);
    } else if (name === "done") {
      this.render(data);
    } else if (name === "error") {
      this.failed(data.message || "the run failed");
    }
  }

  failed(message) {
    this.finish.textContent = "error";
    this.finish.className = "finish error";
    this.stats.textContent = message;
  }

  static chip(d) {
    const said = d.internal_detail ? `${d.detail} (${d.internal_detail})` : d.detail;
    return IG.el("span", { class: `chip act-${d.action}`, "data-rule": d.rule, "data-action": d.action,
      title: said, text: `${d.rule} · ${d.action}` });
  }

  static mark(piece, d) {
    const said = d.internal_detail ? `${d.detail} (${d.internal_detail})` : d.detail;
    return IG.el("mark", { class: "redacted", "data-rule": d.rule, title: `rule ${d.rule}: ${said}` },
      piece, IG.el("sup", { class: "rule", text: d.rule }));
  }

  addRow(d, n) {
    if (!this.table) return;
    const detail = IG.el("td", {}, d.detail);
    if (d.internal_detail) detail.append(IG.el("div", { class: "internal", text: `internal: ${d.internal_detail}` }));
    if (d.matched !== undefined) detail.append(IG.el("div", { class: "internal", text: `matched: ${d.matched}` }));
    this.table.append(IG.el("tr", { "data-rule": d.rule, "data-action": d.action },
      IG.el("td", { text: n }), IG.el("td", { text: d.rule }), IG.el("td", { text: d.action }),
      IG.el("td", { text: d.token_index }), IG.el("td", { text: d.byte_offset }),
      IG.el("td", { text: d.at === undefined ? "" : d.at }), detail));
  }

  /* The final drawing: tokens by entropy, redactions as marks, other decisions where they came. */
  render(done) {
    const decisions = done.governance.decisions || [];
    const paired = this.live.length === decisions.length;
    const marks = decisions.filter((d) => d.action === "redact");
    const chips = decisions.map((d, i) => ({ d, at: paired ? this.live[i].at : null }))
      .filter((m) => m.d.action !== "redact").sort((a, b) => (a.at ?? 1e12) - (b.at ?? 1e12));
    const tokens = done.tokens && done.tokens.map((t) => t[0]).join("") === done.text ? done.tokens : null;
    this.out.replaceChildren();
    let pos = 0, r = 0, c = 0;
    for (const [piece, h] of tokens || [[done.text, undefined]]) {
      while (c < chips.length && chips[c].at !== null && chips[c].at <= pos) this.out.append(RunPanel.chip(chips[c++].d));
      if (tokens && h === null && r < marks.length) this.out.append(RunPanel.mark(piece, marks[r++]));
      else if (h === undefined || h === null) this.out.append(piece);
      else this.out.append(IG.el("span", { class: "tok", title: `entropy ${h.toFixed(2)} nats`,
        style: { background: IG.entropyColour(h) } }, piece));
      pos += piece.length;
    }
    while (c < chips.length) this.out.append(RunPanel.chip(chips[c++].d));
    if (!tokens) for (; r < marks.length; r++) this.out.append(RunPanel.chip(marks[r]));
    this.out.classList.add("done");
    this.finish.textContent = done.finish_reason;
    this.finish.className = `finish ${done.finish_reason}`;
    if (tokens) IG.sparkline(this.spark, tokens.map((t) => t[1]), [1.0, 2.5]);
    const s = done.stats, g = done.governance;
    this.stats.textContent = `${s.completion_tokens} tokens · ${IG.fmt(s.tokens_per_s)} tokens/s · first text ` +
      `${IG.fmt(s.ttft_ms)} ms · gate ${IG.fmt(s.gate_us_p50)} / ${IG.fmt(s.gate_us_p99)} µs per token (p50 / p99) · ` +
      `${g.rollbacks} rollback${g.rollbacks === 1 ? "" : "s"} · held back at most ${g.held_max_chars} chars` +
      (g.semantic ? ` · semantic: ${JSON.stringify(g.semantic)}` : "");
    if (this.table && !paired) {
      this.table.replaceChildren();
      decisions.forEach((d, i) => this.addRow(d, i + 1));
    }
  }
}

const Playground = {
  controller: null,

  init() {
    const info = IG.info;
    IG.options(document.getElementById("play-model"), info.models.map((m) => [m, m]));
    IG.options(document.getElementById("play-policy"), info.policies.map((p) => [p, p]));
    document.getElementById("play-max-tokens").max = info.max_tokens_cap;
    const compare = document.getElementById("play-compare");
    compare.disabled = !info.ungoverned;
    document.getElementById("play-compare-note").textContent = info.ungoverned
      ? "The ungoverned side shows what the gate withheld (this server runs with --governance-detail full)."
      : "Off: the ungoverned side would show what the gate withheld, which this server shows no client " +
        "(--governance-detail minimal).";
    this.panels = { governed: new RunPanel("governed"), ungoverned: new RunPanel("ungoverned") };
    document.getElementById("play-form").addEventListener("submit", (e) => { e.preventDefault(); this.run(); });
    document.getElementById("play-stop").addEventListener("click", () => this.controller && this.controller.abort());
  },

  body() {
    const v = (id) => document.getElementById(id).value;
    const system = v("play-system").trim();
    return { prompt: v("play-prompt"), system: system || null, model: v("play-model") || null,
      policy: v("play-policy") || null, temperature: Number(v("play-temperature")), seed: Number(v("play-seed")),
      max_tokens: Number(v("play-max-tokens")) };
  },

  async run() {
    const body = this.body();
    const status = document.getElementById("play-status");
    if (!body.prompt.trim()) { IG.setStatus(status, "write a prompt first", true); return; }
    const compare = document.getElementById("play-compare").checked && IG.info.ungoverned;
    document.getElementById("panel-ungoverned").hidden = !compare;
    document.getElementById("play-outputs").classList.toggle("compare", compare);
    this.controller = new AbortController();
    const run = document.getElementById("play-run"), stop = document.getElementById("play-stop");
    run.disabled = true; stop.disabled = false;
    IG.setStatus(status, "generating…");
    const runs = [this.one(this.panels.governed, body)];
    if (compare) runs.push(this.one(this.panels.ungoverned, { ...body, ungoverned: true }));
    const results = await Promise.allSettled(runs);
    const failed = results.find((r) => r.status === "rejected");
    IG.setStatus(status, failed ? String(failed.reason.message || failed.reason) : "done", !!failed);
    run.disabled = false; stop.disabled = true;
    document.body.dataset.playRuns = String(Number(document.body.dataset.playRuns || 0) + 1);
  },

  async one(panel, body) {
    panel.reset();
    try {
      await IG.stream("api/playground", body, (name, data) => panel.onEvent(name, data), this.controller.signal);
    } catch (e) {
      panel.failed(e.name === "AbortError" ? "stopped" : e.message);
      throw e;
    }
  },
};
