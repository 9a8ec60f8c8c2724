"use strict";
// The dashboard: one page, views built from /api/v1 with textContent only (whatever a task
// carries is shown as text, never as markup), refreshed every 2 seconds.

const REFRESH_MS = 2000;
let readOnly = false;
let historySource = null;  // "broker", "events" (RabbitMQ: retry and revoke act on the workers)
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
    const parts = [el("h2", {}, "Overview"), cards];
    try { parts.push(await throughputChart()); } catch (e) { /* engines without a history */ }
    root.replaceChildren(...parts, queueTable(o.queues));
  },

  async tasks(root) {
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    const before = params.get("before");
    if (!root.querySelector("#task-filters")) {
      const qs = await api("/queues");
      const state = el("select", { id: "f-state" }, el("option", { value: "" }, "any state"),
        ...["waiting", "delayed", "running", "succeeded", "dead", "revoked"].map(s => el("option", { value: s }, s)));
      const queue = el("select", { id: "f-queue" }, el("option", { value: "" }, "any queue"), ...qs.map(q => el("option", { value: q.queue }, q.queue)));
      const name = el("input", { id: "f-name", placeholder: "task name", size: "18" });
      const search = el("input", { id: "f-search", placeholder: "search args, kwargs", size: "24" });
      // Enqueued within the last hour, day or week, or in any time range typed as ISO 8601.
      const range = el("select", { id: "f-range" }, el("option", { value: "" }, "any time"),
        ...[["1h", 3600], ["24h", 86400], ["7d", 604800]].map(([l, s]) => el("option", { value: String(s) }, "last " + l)));
      const since = el("input", { id: "f-since", placeholder: "since (ISO 8601)", size: "20" });
      const until = el("input", { id: "f-until", placeholder: "until (ISO 8601)", size: "20" });
      const inputs = [["state", state], ["queue", queue], ["name", name], ["q", search], ["since", since], ["until", until]];
      for (const [k, input] of inputs) input.value = params.get(k) || "";
      range.addEventListener("change", () => {
        since.value = range.value ? new Date(Date.now() - 1000 * Number(range.value)).toISOString().slice(0, 19) + "Z" : "";
        until.value = "";
      });
      const apply = () => {
        const p = new URLSearchParams();
        for (const [k, input] of inputs) if (input.value) p.set(k, input.value);
        location.hash = "#tasks?" + p.toString();
      };
      search.addEventListener("keydown", e => { if (e.key === "Enter") apply(); });
      root.replaceChildren(el("h2", {}, "Tasks"),
        el("div", { class: "toolbar", id: "task-filters" }, state, queue, name, search, range, since, until, el("button", { class: "primary", id: "f-apply", onclick: apply }, "Filter")),
        el("div", { id: "task-list" }));
    }
    const q = new URLSearchParams();
    for (const k of ["state", "queue", "name", "q", "since", "until", "before"]) if (params.get(k)) q.set(k, params.get(k));
    q.set("limit", "50");
    const page = await api("/tasks?" + q.toString());
    const rows = page.tasks.map(t => [
      el("td", { class: "id" }, el("a", { href: "#task?id=" + encodeURIComponent(t.id) }, el("code", {}, t.id))),
      el("td", {}, t.name), el("td", {}, t.queue), el("td", { class: "state-" + t.state }, t.state),
      el("td", {}, t.decode_error ? el("code", {}, t.body) : json({ args: t.args, kwargs: t.kwargs })),
      el("td", { class: "when" }, when(t.enqueued)), el("td", { class: "when" }, when(t.finished)),
      el("td", { class: "error" }, t.error || t.reason || "")]);
    const list = root.querySelector("#task-list");
    const nav = el("div", { class: "toolbar" });
    const bulk = async what => {
      const f = new URLSearchParams();
      for (const k of ["state", "queue", "name", "q", "since", "until"]) if (params.get(k)) f.set(k, params.get(k));
      if (!confirm(`${what} every task matching this filter?`)) return;
      try { const r = await api(`/tasks/bulk/${what}?` + f.toString(), {}); status(`${what}: ${r.done} done, ${r.skipped} skipped`); refresh(); }
      catch (e) { status(e.message, true); }
    };
    const off = readOnly || !page.tasks.length ? { disabled: "" } : {};
    const onBroker = historySource === "events" ? { disabled: "" } : off;
    if (before) nav.append(el("button", { onclick: () => history.back() }, "← Newer"));
    if (page.next) {
      const p = new URLSearchParams(params); p.set("before", page.next);
      nav.append(el("button", { id: "older", onclick: () => { location.hash = "#tasks?" + p.toString(); } }, "Older →"));
    }
    nav.append(el("span", { class: "muted" }, "All matching: "),
      el("button", { id: "bulk-retry", onclick: () => bulk("retry"), ...onBroker }, "Retry"),
      el("button", { id: "bulk-revoke", onclick: () => bulk("revoke"), ...onBroker }, "Revoke"),
      el("button", { class: "danger", id: "bulk-delete", onclick: () => bulk("delete"), ...off }, "Delete"));
    list.replaceChildren(page.tasks.length
      ? table(["id", "task", "queue", "state", "arguments", "enqueued", "finished", "error"].map(l => ({ label: l })), rows)
      : el("p", { class: "muted", id: "no-tasks" }, "No task matches."), nav);
  },

  async queues(root) {
    const [qs, limits] = await Promise.all([api("/queues"), api("/limits")]);
    const rows = limits.map(l => [el("td", {}, l.task), el("td", {}, l.rate || "–"),
      el("td", { class: "num" }, num(l.max_concurrency)), el("td", {}, l.key || "–"),
      el("td", { class: "num" }, num(l.waiting)), el("td", { class: "num" }, num(l.running))]);
    root.replaceChildren(el("h2", {}, "Queues"), queueTable(qs), el("h2", {}, "Limits across the fleet"),
      limits.length
        ? el("div", { id: "limits" }, table([{ label: "task" }, { label: "rate" }, { label: "max running", num: 1 },
          { label: "key" }, { label: "waiting", num: 1 }, { label: "running", num: 1 }], rows))
        : el("p", { class: "muted", id: "no-limits" }, "No task has limits (conveyor limits set TASK --rate 10/s)."));
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
    const fire = async name => {
      try { const r = await api("/schedules/" + encodeURIComponent(name) + "/fire", {}); status(`${name}: fired task ${r.id}`); }
      catch (e) { status(e.message, true); }
    };
    const act = async (name, what) => {
      try { await api("/schedules/" + encodeURIComponent(name) + "/" + what, {}); status(`${name}: ${what}d`); refresh(); }
      catch (e) { status(e.message, true); }
    };
    const rows = all.map(s => [
      el("td", {}, s.name), el("td", {}, s.task), el("td", {}, s.cron || (s.every ? `every ${s.every} s` : "")),
      el("td", {}, s.paused ? "paused" : "active"), el("td", { class: "when" }, when(s.last_run)), el("td", { class: "when" }, when(s.next_fire)),
      el("td", {}, s.source),
      el("td", {}, el("button", { onclick: () => act(s.name, s.paused ? "resume" : "pause"), ...(readOnly ? { disabled: "" } : {}) }, s.paused ? "Resume" : "Pause"), " ",
        el("button", { class: "fire", "data-schedule": s.name, onclick: () => fire(s.name), ...(readOnly ? { disabled: "" } : {}) }, "Fire now"))]);
    root.replaceChildren(el("h2", {}, "Schedules"),
      all.length ? table(["name", "task", "when", "state", "last run", "next fire", "from", ""].map(l => ({ label: l })), rows)
                 : el("p", { class: "muted" }, "No schedules."));
  },

  async workers(root) {
    const all = await api("/workers");
    const rows = all.map(w => [
      el("td", {}, w.node), el("td", { class: w.online ? "state-succeeded" : "muted" }, w.online ? "online" : "offline"),
      el("td", { class: "when" }, when(w.last_heartbeat)), el("td", { class: "num" }, w.info.pid),
      el("td", {}, (w.info.queues || []).join(", ")),
      el("td", { class: "num" }, `${num(w.info.busy)} / ${num(w.info.concurrency)}`),
      el("td", { class: "num" }, num(w.info.succeeded)), el("td", { class: "num" }, num(w.info.retried)),
      el("td", { class: "num" }, num(w.info.dead_lettered)),
      el("td", {}, ...w.running.flatMap(t => [el("a", { href: "#task?id=" + encodeURIComponent(t.id) }, el("code", {}, t.id)), ` ${t.name} `]))]);
    root.replaceChildren(el("h2", {}, "Workers"),
      all.length ? el("div", { id: "workers" }, table(["node", "state", "last heartbeat", "pid", "queues", "busy", "succeeded", "retried", "dead", "running"]
        .map(l => ({ label: l, num: ["pid", "busy", "succeeded", "retried", "dead"].includes(l) })), rows))
                 : el("p", { class: "muted" }, "No worker reported in the last day."));
  },

  async task(root) {
    const id = new URLSearchParams(location.hash.split("?")[1] || "").get("id");
    if (id) return taskPage(root, id);
    if (!root.querySelector("#task-id")) {
      const input = el("input", { id: "task-id", placeholder: "task id", size: "40" });
      const out = el("div", { id: "task-result" });
      const go = async () => {
        location.hash = "#task?id=" + encodeURIComponent(input.value.trim());
      };
      root.replaceChildren(el("h2", {}, "Find a task"),
        el("div", { class: "toolbar" }, input, el("button", { class: "primary", onclick: go }, "Show")), out);
    }
  },
};

// A task: its fields, message, attempts, result and timeline, with retry / revoke / delete.
async function taskPage(root, id) {
  const r = await api("/tasks/" + encodeURIComponent(id));
  const h = r.history;
  const act = async what => {
    if (what === "delete" && !confirm(`Forget task ${id}?`)) return;
    try { await api("/tasks/" + encodeURIComponent(id) + "/" + what, {}); status(`${id}: ${what} done`); refresh(); }
    catch (e) { status(e.message, true); }
  };
  const dis = readOnly || !h ? { disabled: "" } : {};
  const onBroker = historySource === "events" ? { disabled: "", title: "the task lives on RabbitMQ: use conveyor dlq replay or celery control revoke" } : dis;
  const parts = [el("h2", {}, "Task ", el("code", {}, id)),
    el("div", { class: "toolbar" },
      el("button", { class: "primary", id: "task-retry", onclick: () => act("retry"), ...onBroker }, "Retry"),
      el("button", { id: "task-revoke", onclick: () => act("revoke"), ...onBroker }, "Revoke"),
      el("button", { class: "danger", id: "task-delete", onclick: () => act("delete"), ...dis }, "Delete"))];
  const field = (k, v) => [el("dt", {}, k), el("dd", {}, v === null || v === undefined || v === "" ? "–" : v)];
  const fields = [];
  if (h) {
    fields.push(...field("task", h.name), ...field("queue", h.queue), ...field("state", el("span", { id: "task-state", class: "state-" + h.state }, h.state)),
      ...field("retries", h.retries), ...field("worker", h.worker), ...field("enqueued", when(h.enqueued)),
      ...field("started", when(h.started)), ...field("finished", when(h.finished)));
  }
  fields.push(...field("result state", r.state), ...field("result", r.result === null ? null : json(r.result)));
  parts.push(el("dl", { class: "fields", id: "task-fields" }, ...fields));
  if (h) {
    parts.push(el("h3", {}, "Arguments"), h.decode_error ? el("pre", {}, h.body) : el("pre", { id: "task-args" }, JSON.stringify({ args: h.args, kwargs: h.kwargs }, null, 2)));
    const events = [["enqueued", h.enqueued]];
    h.attempts.forEach((a, i) => events.push([`attempt ${i + 1} started on ${a.worker}`, a.started], [`attempt ${i + 1} failed: ${a.error}`, a.finished]));
    if (h.started) events.push([`attempt ${h.attempts.length + 1} started${h.worker ? " on " + h.worker : ""}`, h.started]);
    if (h.state === "succeeded") events.push(["succeeded", h.finished]);
    if (h.state === "dead") events.push([`dead-lettered: ${h.reason || h.error || ""}`, h.finished]);
    if (h.state === "revoked") events.push(["revoked", h.finished]);
    if (h.state === "delayed") events.push([`waits until ${when(h.due)}`, null]);
    parts.push(el("h3", {}, "Timeline"), el("ol", { class: "timeline", id: "task-timeline" },
      ...events.map(([what, t]) => el("li", {}, t ? when(t) + "  " : "", what))));
    parts.push(el("h3", {}, "Headers"), el("pre", {}, JSON.stringify(h.headers, null, 2)));
  } else {
    parts.push(el("p", { class: "muted" }, "The history does not hold this task (this engine keeps none, or it was pruned)."));
  }
  if (r.traceback) parts.push(el("h3", {}, "Traceback"), el("pre", { class: "error" }, r.traceback));
  root.replaceChildren(...parts);
}

// Tasks finished per minute over the last hour (bars: succeeded up, failed down), from the
// history's per-minute counts, drawn as SVG.
async function throughputChart() {
  const mins = await api("/minutes?minutes=60");
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 600 120");
  svg.setAttribute("preserveAspectRatio", "none");
  const start = Math.floor(Date.now() / 60000) * 60000 - 59 * 60000;
  const by = new Map(mins.map(m => [Date.parse(m.minute), m]));
  const max = Math.max(1, ...mins.map(m => Math.max(m.succeeded, m.failed)));
  let ok = 0, bad = 0, waitSum = 0, waitN = 0;
  for (let i = 0; i < 60; i++) {
    const m = by.get(start + i * 60000);
    if (!m) continue;
    ok += m.succeeded; bad += m.failed;
    if (m.wait_seconds_avg !== null) { waitSum += m.wait_seconds_avg; waitN++; }
    for (const [v, cls, up] of [[m.succeeded, "ok", true], [m.failed, "bad", false]]) {
      if (!v) continue;
      const r = document.createElementNS(ns, "rect");
      const hgt = 55 * v / max;
      r.setAttribute("x", i * 10 + 1); r.setAttribute("width", 8);
      r.setAttribute("y", up ? 60 - hgt : 60); r.setAttribute("height", hgt);
      r.setAttribute("class", cls);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${when(m.minute)}: ${m.succeeded} succeeded, ${m.failed} failed`;
      r.append(title);
      svg.append(r);
    }
  }
  // The average wait per minute as a line over the bars (scaled to its own maximum).
  const waits = [];
  for (let i = 0; i < 60; i++) {
    const m = by.get(start + i * 60000);
    if (m && m.wait_seconds_avg !== null) waits.push([i, m.wait_seconds_avg]);
  }
  const maxWait = Math.max(0, ...waits.map(w => w[1]));
  if (waits.length > 1 && maxWait > 0) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", waits.map(([i, w]) => `${i * 10 + 5},${115 - 110 * w / maxWait}`).join(" "));
    line.setAttribute("class", "wait");
    svg.append(line);
  }
  return el("div", { class: "chart", id: "throughput" },
    el("div", { class: "legend" }, `Last hour: ${num(ok)} succeeded (green, per minute), ${num(bad)} failed (red)`,
      waitN ? `; average wait ${(waitSum / waitN).toFixed(3)} s (blue line, peak ${maxWait.toFixed(3)} s)` : ""), svg);
}

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
    el("td", { class: "num" }, num(q.limited)),
    el("td", {}, q.paused ? "paused" : "active"),
    el("td", {}, el("button", { class: "pause", "data-queue": q.queue, onclick: () => toggle(q), ...(readOnly ? { disabled: "" } : {}) },
      q.paused ? "Resume" : "Pause"))]);
  return el("div", { id: "queues" }, table([{ label: "queue" }, { label: "ready", num: 1 }, { label: "delayed", num: 1 },
    { label: "in flight", num: 1 }, { label: "dead", num: 1 }, { label: "limited", num: 1 }, { label: "state" },
    { label: "" }], rows));
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
  // Pages the user reads or pages through stay put; the rest follow the broker.
  const still = name === "task" || (name === "tasks" && location.hash.includes("before="));
  if (!still) timer = setTimeout(refresh, REFRESH_MS);
}

window.addEventListener("hashchange", () => { document.getElementById("view").replaceChildren(); refresh(); });
api("/overview").then(o => { readOnly = o.read_only; historySource = o.history; document.getElementById("broker").textContent = o.broker; document.getElementById("mode").textContent = readOnly ? "read-only" : ""; }).catch(() => {}).finally(refresh);
