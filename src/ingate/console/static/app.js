/* The console's start: what the server offers (api/info), then the four views, one shown at a
   time by the address's #fragment. */
"use strict";

const VIEWS = { playground: Playground, live: Live, perf: Perf, lab: Lab };

function show(name) {
  if (!VIEWS[name]) name = "playground";
  for (const v of Object.keys(VIEWS)) document.getElementById(`view-${v}`).hidden = v !== name;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.view === name);
  document.body.dataset.view = name;
  if (name === "perf") Perf.shown();
  if (name === "live") Live.draw();
  if (name === "lab") Lab.shown();
}

async function start() {
  try {
    IG.info = await IG.api("api/info");
  } catch (e) {
    document.querySelector("main").replaceChildren(IG.el("p", { class: "status error", text: `cannot start: ${e.message}` }));
    return;
  }
  const info = IG.info;
  const badge = document.getElementById("level-badge");
  badge.textContent = `governance detail: ${info.level}`;
  badge.classList.toggle("full", info.level === "full");
  document.getElementById("who-key").textContent = info.auth ? `admin ${info.key_id}` : "open (no keys configured)";
  document.getElementById("logout").hidden = !info.auth;
  for (const view of Object.values(VIEWS)) view.init();
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  show(location.hash.slice(1));
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
