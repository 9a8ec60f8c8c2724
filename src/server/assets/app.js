"use strict";
// The dashboard: one page, views built from /api/v1 with textContent only (whatever a task
// carries is shown as text, never as markup), refreshed every 2 seconds.

const REFRESH_MS = 2000;
let readOnly = false;
let timer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function csrf() {
  const m = document.cookie.match(/(?:^|; )conveyor_csrf=([^;]*)/);
  return m ? m[1] : "";
}

async function api(path, body) {
  const init = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-Conveyor-CSRF"] = csrf();
    init.body = JSON.stringify(body);
  }
  const res = await fetch("/api/v1" + path, init);
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function status(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = bad ? "error" : "";
}

function num(v) { return v === null || v === undefined ? "–" : Number(v).toLocaleString(); }

function table(headers, rows) {
  const head = el("tr", {}, ...headers.map(h => el("th", { class: h.num ? "num" : "" }, h.label)));
  const body = rows.map(r => el("tr", {}, ...r));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function json(v) { return el("code", {}, JSON.stringify(v)); }

// "2026-12-03T15:15:04.078000+00:00" -> "2026-12-03 15:15:04" (UTC, as the API gives it).
function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) : "–"; }

// ---- views --------------------------------------------------------------------------------

const views = {
  async overview(root) {
    const o = await api("/overview");
    document.getElementById("broker").textContent = o.broker;
    readOnly = o.read_only;
    document.getElementById("mode").textContent = readOnly ? "read-only" : "";
    const cards = el("div", { class: "cards" },
      ...["ready", "delayed", "in_flight", "dead"].map(k =>
        el("div", { class: "card", id: "total-" + k },
          el("div", { class: "n" }, num(o.totals[k])),
          el("div", { class: "l" }, k.replace("_", " ")))));
    root.replaceChildren(el("h2", {}, "Overview"), cards, queueTable(o.queues));
  },

  async queues(root) {
    const qs = await api("/queues");
    root.replaceChildren(el("h2", {}, "Queues"), queueTable(qs));
  },

  async dead(root) {
    const qs = await api("/queues");
    const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("queue");
    const current = wanted || (qs.find(q => q.dead > 0) || qs[0] || {}).queue;
    const pick = el("select", { id: "dead-queue", onchange: e => { location.hash = "#dead?queue=" + encodeURIComponent(e.target.value); } },
      ...qs.map(q => { const o = el("option", { value: q.queue }, `${q.queue} (${q.dead})`); if (q.queue === current) o.selected = true; return o; }));
    const parts = [el("h2", {}, "Dead letters"), el("div", { class: "toolbar" }, "Queue ", pick)];
    if (!current) { root.replaceChildren(...parts, el("p", { class: "muted" }, "No queues.")); return; }
    const dead = await api("/queues/" + encodeURIComponent(current) + "/dead?limit=200");
    const act = async (what, body, confirmText) => {
      if (confirmText && !confirm(confirmText)) return;
      try {
        const r = await api("/queues/" + encodeURIComponent(current) + "/dead/" + what, body);
        status(what === "purge" ? `purged ${r.purged}` : `replayed ${r.replayed}`);
        refresh();
      } catch (e) { status(e.message, true); }
    };
    parts.push(el("div", { class: "toolbar" },
      el("button", { class: "primary", id: "replay-all", onclick: () => act("replay", {}), ...(readOnly || !dead.length ? { disabled: "" } : {}) }, "Replay all"),
      el("button", { class: "danger", id: "purge-all", onclick: () => act("purge", {}, `Delete every dead letter of ${current}?`), ...(readOnly || !dead.length ? { disabled: "" } : {}) }, "Purge all")));
    const rows = dead.map(d => [
      el("td", { class: "id" }, el("code", {}, d.id)),
      el("td", {}, d.task === null ? el("span", { class: "muted" }, "(undecodable)") : d.task),
      el("td", {}, d.body !== undefined && d.task === null ? el("code", {}, d.body) : json({ args: d.args, kwargs: d.kwargs })),
      el("td", { class: "error" }, d.reason),
      el("td", { class: "when" }, when(d.dead_at)),
      el("td", {}, el("button", { class: "replay", "data-id": d.id, onclick: () => act("replay", { ids: [d.id] }), ...(readOnly ? { disabled: "" } : {}) }, "Replay"))]
      .map(x => x.tagName === "TD" ? x : el("td", {}, x)));
    parts.push(dead.length ? table([{ label: "id" }, { label: "task" }, { label: "arguments" }, { label: "reason" }, { label: "dead at" }, { label: "" }], rows)
                           : el("p", { class: "muted", id: "no-dead" }, "No dead letters in this queue."));
    root.replaceChildren(...parts);
  },

  async schedules(root) {
    const all = await api("/schedules");
    const act = async (name, what) => {
      try { await api("/schedules/" + encodeURIComponent(name) + "/" + what, {}); status(`${name}: ${what}d`); refresh(); }
      catch (e) { status(e.message, true); }
    };
    const rows = all.map(s => [
      el("td", {}, s.name), el("td", {}, s.task), el("td", {}, s.cron || (s.every ? `every ${s.every} s` : "")),
      el("td", {}, s.paused ? "paused" : "active"), el("td", { class: "when" }, when(s.last_run)), el("td", { class: "when" }, when(s.next_fire)),
      el("td", {}, s.source),
      el("td", {}, el("button", { onclick: () => act(s.name, s.paused ? "resume" : "pause"), ...(readOnly ? { disabled: "" } : {}) }, s.paused ? "Resume" : "Pause"))]);
    root.replaceChildren(el("h2", {}, "Schedules"),
      all.length ? table(["name", "task", "when", "state", "last run", "next fire", "from", ""].map(l => ({ label: l })), rows)
                 : el("p", { class: "muted" }, "No schedules."));
  },

  async task(root) {
    if (!root.querySelector("#task-id")) {
      const input = el("input", { id: "task-id", placeholder: "task id", size: "40" });
      const out = el("div", { id: "task-result" });
      const go = async () => {
        try { const r = await api("/tasks/" + encodeURIComponent(input.value.trim())); out.replaceChildren(el("pre", {}, JSON.stringify(r, null, 2))); status(""); }
        catch (e) { out.replaceChildren(el("p", { class: "error" }, e.message)); }
      };
      root.replaceChildren(el("h2", {}, "Find a task"),
        el("div", { class: "toolbar" }, input, el("button", { class: "primary", onclick: go }, "Show")), out);
    }
  },
};

function queueTable(qs) {
  const toggle = async q => {
    const what = q.paused ? "resume" : "pause";
    try { await api("/queues/" + encodeURIComponent(q.queue) + "/" + what, {}); status(`${q.queue}: ${what}d`); refresh(); }
    catch (e) { status(e.message, true); }
  };
  const rows = qs.map(q => [
    el("td", {}, el("a", { href: "#dead?queue=" + encodeURIComponent(q.queue) }, q.queue)),
    el("td", { class: "num" }, num(q.ready)), el("td", { class: "num" }, num(q.delayed)),
    el("td", { class: "num" }, num(q.in_flight)), el("td", { class: "num" }, num(q.dead)),
    el("td", {}, q.paused ? "paused" : "active"),
    el("td", {}, el("button", { class: "pause", "data-queue": q.queue, onclick: () => toggle(q), ...(readOnly ? { disabled: "" } : {}) },
      q.paused ? "Resume" : "Pause"))]);
  return el("div", { id: "queues" }, table([{ label: "queue" }, { label: "ready", num: 1 }, { label: "delayed", num: 1 },
    { label: "in flight", num: 1 }, { label: "dead", num: 1 }, { label: "state" }, { label: "" }], rows));
}

function currentView() {
  const name = (location.hash.slice(1).split("?")[0]) || "overview";
  return views[name] ? name : "overview";
}

async function refresh() {
  clearTimeout(timer);
  const name = currentView();
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.view === name);
  const root = document.getElementById("view");
  root.dataset.view = name;
  try {
    await views[name](root);
    status("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    status(e.message, true);
  }
  if (name !== "task") timer = setTimeout(refresh, REFRESH_MS);
}

window.addEventListener("hashchange", () => { document.getElementById("view").replaceChildren(); refresh(); });
api("/overview").then(o => { readOnly = o.read_only; document.getElementById("broker").textContent = o.broker; document.getElementById("mode").textContent = readOnly ? "read-only" : ""; }).catch(() => {}).finally(refresh);
