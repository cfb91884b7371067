/* The policy lab: `ingate check --text` in the browser, and a policy run over many texts (a pasted
   list, or recent traffic kept by policies that keep text) to see how much it would block. */
"use strict";

const EXAMPLE_POLICY = `version: 1
name: trial
rules:
  - id: pii
    forbid:
      patterns: [email, phone]
    action: redact
  - id: codename
    forbid:
      phrases: [project bluebird]
      leet: fold
    action: prevent
`;

const Lab = {
  init() {
    const info = IG.info;
    const source = document.getElementById("lab-source");
    IG.options(source, [["", "pasted or uploaded YAML"]].concat(info.policies.map((p) => [p, `loaded: ${p}`])));
    for (const opt of source.options) if (opt.value && !info.lab_loaded) opt.disabled = true;
    document.getElementById("lab-source-note").textContent = info.lab_loaded ? ""
      : "A loaded policy can be tried here only where the server shows full governance detail (its report names " +
        "what its rules look for): paste its YAML instead.";
    document.getElementById("lab-policy-yaml").value = EXAMPLE_POLICY;
    document.getElementById("lab-text").value = "Ping me at jo@mail.test about Pr0ject-Blue bird.";
    document.getElementById("lab-list").value = [
      "The meeting moved to Thursday.", "Call 212-867-5309 after lunch.", "Status of project bluebird?",
      "Nothing to see here."].join("\n");
    document.getElementById("lab-traffic-count").textContent = info.traffic;
    source.addEventListener("change", () => {
      document.getElementById("lab-policy-yaml").disabled = !!source.value;
    });
    document.getElementById("lab-upload").addEventListener("change", (e) => this.upload(e.target.files[0]));
    document.getElementById("lab-check").addEventListener("click", () => this.check());
    document.getElementById("lab-run").addEventListener("click", () => this.sample());
  },

  /* The traffic sample grows while the page is open: its size, again. */
  shown() {
    IG.api("api/info").then((info) => {
      document.getElementById("lab-traffic-count").textContent = info.traffic;
    }).catch(() => {});
  },

  candidate() {
    const name = document.getElementById("lab-source").value;
    return name ? { policy: name } : { policy_yaml: document.getElementById("lab-policy-yaml").value };
  },

  upload(file) {
    if (!file) return;
    file.text().then((text) => {
      document.getElementById("lab-source").value = "";
      const area = document.getElementById("lab-policy-yaml");
      area.disabled = false;
      area.value = text;
    });
  },

  async check() {
    const status = document.getElementById("lab-check-status"), out = document.getElementById("lab-report");
    IG.setStatus(status, "checking…");
    try {
      const r = await IG.api("api/lab/check", { ...this.candidate(), text: document.getElementById("lab-text").value });
      out.replaceChildren(...r.lines.map((line) => IG.el("span", {
        class: line.trimStart().startsWith("match:") ? "match" : /^\s+\^+$/.test(line) ? "caret" : null,
      }, line + "\n")));
      IG.setStatus(status, `${r.matches} match${r.matches === 1 ? "" : "es"}`);
    } catch (e) {
      out.textContent = e.message;
      IG.setStatus(status, "the policy does not compile", true);
    }
  },

  async sample() {
    const status = document.getElementById("lab-run-status");
    const which = document.querySelector("input[name=lab-sample]:checked").value;
    const body = { ...this.candidate(), source: which };
    if (which === "list") body.texts = document.getElementById("lab-list").value.split("\n").filter((t) => t.trim());
    IG.setStatus(status, "running…");
    try {
      const r = await IG.api("api/lab/sample", body);
      this.show(r);
      IG.setStatus(status, `${r.n} texts under policy ${r.policy}`);
    } catch (e) {
      IG.setStatus(status, e.message, true);
    }
  },

  show(r) {
    const pct = (n) => (r.n ? `${Math.round((100 * n) / r.n)}%` : "–");
    document.getElementById("lab-summary").replaceChildren(
      IG.el("span", { class: "pill blocked", id: "lab-blocked" }, IG.el("span", { class: "big", text: pct(r.blocked) }),
        ` blocked (${r.blocked} of ${r.n})`),
      IG.el("span", { class: "pill redacted" }, IG.el("span", { class: "big", text: pct(r.redacted) }), ` redacted (${r.redacted})`),
      IG.el("span", { class: "pill passes" }, IG.el("span", { class: "big", text: pct(r.passes) }), ` pass unchanged (${r.passes})`),
      ...r.by_rule.map((x) => IG.el("span", { class: `chip act-${x.action}`, text: `${x.rule} ${x.action}: ${x.n}` })));
    document.querySelector("#lab-rows tbody").replaceChildren(...r.rows.map((row) => IG.el("tr", { "data-outcome": row.outcome },
      IG.el("td", { text: row.from }), IG.el("td", {}, IG.el("span", { class: `pill ${row.outcome}`, text: row.outcome })),
      IG.el("td", { title: row.text, text: row.text.length > 160 ? row.text.slice(0, 157) + "…" : row.text }),
      IG.el("td", {}, ...row.decisions.map((d) => IG.el("span", { class: `chip act-${d.action}`, title: d.internal_detail || d.detail,
        text: `${d.rule} · ${d.action}` }))))));
  },
};
