/* What every view of the console shares: building elements (text only, never HTML from the
   server), calling the console's API with relative URLs, reading a POST's server-sent events,
   and the entropy colour scale. */
"use strict";

const IG = {
  info: null,

  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else if (k === "style") Object.assign(node.style, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  },

  /* The console's API: relative URLs (the page is at .../console/), the header every POST needs. */
  async api(path, body) {
    const opts = { credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-Ingate-Console"] = "1";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    if (r.status === 401) IG.signedOut();
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((data.error && data.error.message) || `${path}: HTTP ${r.status}`);
    return data;
  },

  /* POST `body` to `path` and call onEvent(name, data) for each server-sent event of the answer. */
  async stream(path, body, onEvent, signal) {
    const r = await fetch(path, {
      method: "POST", credentials: "same-origin", signal,
      headers: { "Content-Type": "application/json", "Accept": "text/event-stream", "X-Ingate-Console": "1" },
      body: JSON.stringify(body),
    });
    if (r.status === 401) IG.signedOut();
    if (!r.ok) {
      const data = await r.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || `${path}: HTTP ${r.status}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onEvent(name, JSON.parse(data));
      }
    }
  },

  signedOut() {
    // the page itself answers 401 with the sign-in form: show it
    if (!IG._leaving) { IG._leaving = true; window.location.reload(); }
  },

  /* Entropy (nats) -> a background: clear where the model was sure, amber, then red where it was lost. */
  entropyColour(h) {
    if (h === null || h === undefined || Number.isNaN(h)) return "transparent";
    const x = Math.min(h / 4, 1);
    return `rgba(${Math.round(255 - 25 * x)}, ${Math.round(214 - 174 * x)}, ${Math.round(20 * x)}, ${(0.05 + 0.5 * x).toFixed(3)})`;
  },

  fmt(v, digits = 1) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en");
    return Number(v).toFixed(digits);
  },

  time(ts) {
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString("en-GB", { hour12: false });
  },

  setStatus(node, text, error) {
    node.textContent = text;
    node.classList.toggle("error", !!error);
  },

  options(select, values, keep) {
    const now = keep ? select.value : null;
    select.replaceChildren(...values.map(([v, label]) => IG.el("option", { value: v, text: label })));
    if (now !== null && values.some(([v]) => v === now)) select.value = now;
  },

  /* A small inline SVG sparkline of `values` (nulls skipped), with guide lines at `guides`. */
  sparkline(svg, values, guides) {
    const ys = values.map((v) => (v === null || v === undefined ? null : v));
    const top = Math.max(4, ...ys.filter((v) => v !== null));
    const n = Math.max(ys.length - 1, 1);
    const pts = [];
    ys.forEach((v, i) => { if (v !== null) pts.push(`${(100 * i / n).toFixed(2)},${(30 - 28 * v / top).toFixed(2)}`); });
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    for (const g of guides || []) {
      const line = document.createElementNS(ns, "line");
      const y = (30 - 28 * g / top).toFixed(2);
      line.setAttribute("x1", "0"); line.setAttribute("x2", "100"); line.setAttribute("y1", y); line.setAttribute("y2", y);
      svg.append(line);
    }
    const poly = document.createElementNS(ns, "polyline");
    poly.setAttribute("points", pts.join(" "));
    svg.append(poly);
  },
};
