// The osmo web UI: plain JavaScript over the REST API (/api/...), no build step.
// Pages: the workflow list (/), a workflow (/workflows/ID), pools (/pools), log in (/login).
"use strict";

const TOKEN_KEY = "osmo.token";
const REFRESH_MS = 5000;
const PAGE_SIZE = 20;
const FINISHED = (s) => s === "COMPLETED" || s.startsWith("FAILED");
const main = document.getElementById("main");
let refreshTimer = null;
let logAbort = null;

// ---------- helpers ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function badge(status) {
  return el("span", { class: "badge s-" + (status || "UNKNOWN") }, status || "?");
}

// The API writes UTC without a zone (as OSMO); shown in the browser's zone.
function parseTime(t) {
  if (!t) return null;
  const d = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(t) ? t : t + "Z");
  return isNaN(d) ? null : d;
}

function showTime(t) {
  const d = parseTime(t);
  return d ? d.toLocaleString() : "–";
}

function human(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function span(start, end) {
  const a = parseTime(start);
  if (!a) return null;
  const b = parseTime(end) || new Date();
  return (b - a) / 1000;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    go("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new Error("log in first");
  }
  if (!response.ok) {
    let text = await response.text();
    try { const body = JSON.parse(text); text = body.message || body.error || text; } catch (_) { /* plain text */ }
    throw new Error(`${response.status}: ${text}`);
  }
  return response;
}

async function json(path, options) {
  return (await api(path, options)).json();
}

function go(path) {
  if (location.pathname + location.search !== path) history.pushState(null, "", path);
  route();
}

// Links inside the page are routed here (shareable URLs, no reload).
document.addEventListener("click", (e) => {
  const a = e.target.closest("a");
  if (!a || a.target || a.origin !== location.origin || e.metaKey || e.ctrlKey) return;
  if (a.pathname.startsWith("/api/") || a.pathname === "/metrics") return;
  e.preventDefault();
  go(a.pathname + a.search);
});
window.addEventListener("popstate", route);

function every(fn) {
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => { if (!document.hidden) fn().catch((e) => showError(e.message)); }, REFRESH_MS);
}

// ---------- pages ----------

async function route() {
  clearInterval(refreshTimer);
  if (logAbort) { logAbort.abort(); logAbort = null; }
  showError("");
  const path = location.pathname;
  const nav = path.startsWith("/pools") ? "pools" : path.startsWith("/login") ? "login" : "workflows";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === nav));
  document.getElementById("login-link").textContent = localStorage.getItem(TOKEN_KEY) ? "Token" : "Log in";
  try {
    if (path === "/" || path === "/workflows") await listPage();
    else if (path.startsWith("/workflows/")) await workflowPage(decodeURIComponent(path.slice("/workflows/".length)));
    else if (path === "/pools") await poolsPage();
    else if (path === "/login") loginPage();
    else main.replaceChildren(el("h1", {}, "Not found"), el("p", {}, el("a", { href: "/" }, "Workflows")));
  } catch (e) {
    showError(e.message);
  }
}

async function listPage() {
  const q = new URLSearchParams(location.search);
  const offset = Number(q.get("offset") || 0);
  document.title = "Workflows · osmo";
  const field = (name, label, input) => el("label", {}, label, input);
  const status = el("select", { name: "status" },
    ["", "PENDING", "RUNNING", "COMPLETED", "FAILED", "FAILED_CANCELED"].map((s) =>
      el("option", { value: s, selected: q.get("status") === s }, s || "any")));
  const form = el("form", { class: "filters", onsubmit: (e) => {
      e.preventDefault();
      const next = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
      go("/?" + next);
    } },
    field("name", "Name", el("input", { name: "name", value: q.get("name") || "", placeholder: "contains" })),
    field("status", "Status", status),
    field("user", "User", el("input", { name: "user", value: q.get("user") || "", size: 10 })),
    field("pool", "Pool", el("input", { name: "pool", value: q.get("pool") || "", size: 10 })),
    el("button", { type: "submit" }, "Filter"));
  const body = el("tbody");
  const pager = el("div", { class: "pager" });
  main.replaceChildren(el("h1", {}, "Workflows"), form,
    el("div", { class: "scroll" }, el("table", { id: "workflows" },
      el("thead", {}, el("tr", {}, ["Workflow", "Status", "Pool", "User", "Submitted", "Duration"].map((h, i) =>
        el("th", { class: i >= 4 ? "hide-narrow" : null }, h)))), body)),
    pager);

  const load = async () => {
    const p = new URLSearchParams({ limit: PAGE_SIZE + 1, offset, all_users: "true" });
    if (q.get("name")) p.set("name", q.get("name"));
    if (q.get("status")) p.set("statuses", q.get("status"));
    if (q.get("user")) p.set("users", q.get("user"));
    if (q.get("pool")) p.set("pools", q.get("pool"));
    const rows = (await json("/api/workflow?" + p)).workflows || [];
    const more = rows.length > PAGE_SIZE;
    body.replaceChildren(...rows.slice(0, PAGE_SIZE).map((w) => el("tr", {},
      el("td", {}, el("a", { href: "/workflows/" + encodeURIComponent(w.name) }, w.name)),
      el("td", {}, badge(w.status)),
      el("td", {}, w.pool),
      el("td", {}, w.user || w.submitted_by || ""),
      el("td", { class: "hide-narrow" }, showTime(w.submit_time)),
      el("td", { class: "hide-narrow" }, human(span(w.submit_time, w.end_time))))));
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No workflows.")));
    const page = (o) => { const n = new URLSearchParams(q); n.set("offset", o); return "/?" + n; };
    pager.replaceChildren(
      offset > 0 ? el("a", { href: page(Math.max(0, offset - PAGE_SIZE)) }, "← Newer") : "",
      el("span", { class: "muted" }, `${offset + 1}–${offset + Math.min(rows.length, PAGE_SIZE)}`),
      more ? el("a", { href: page(offset + PAGE_SIZE) }, "Older →") : "");
  };
  await load();
  every(load);
}

// Groups in columns by their depth in the DAG, edges upstream → downstream.
function dag(groups) {
  const byName = new Map(groups.map((g) => [g.name, g]));
  const depth = new Map();
  const upstream = new Map(groups.map((g) => [g.name, []]));
  for (const g of groups) for (const d of g.downstream_groups || []) if (upstream.has(d)) upstream.get(d).push(g.name);
  const level = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    if (seen.has(name)) return 0;
    seen.add(name);
    const ups = upstream.get(name) || [];
    const d = ups.length ? 1 + Math.max(...ups.map((u) => level(u, seen))) : 0;
    depth.set(name, d);
    return d;
  };
  groups.forEach((g) => level(g.name));
  const columns = [];
  for (const g of groups) (columns[depth.get(g.name)] ||= []).push(g.name);
  const W = 170, H = 34, GX = 60, GY = 16, pos = new Map();
  columns.forEach((col, c) => col.forEach((name, r) => pos.set(name, { x: 10 + c * (W + GX), y: 10 + r * (H + GY) })));
  const width = 20 + columns.length * (W + GX) - GX;
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "dag");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text) n.textContent = text;
    svg.append(n);
    return n;
  };
  for (const g of groups) for (const d of g.downstream_groups || []) {
    const a = pos.get(g.name), b = pos.get(d);
    if (!a || !b) continue;
    add("path", { d: `M${a.x + W},${a.y + H / 2} C${a.x + W + GX / 2},${a.y + H / 2} ${b.x - GX / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}`,
      fill: "none", stroke: "#888", "stroke-width": 1.5 });
  }
  const colour = { COMPLETED: "#1f8a4c", RUNNING: "#2f6fdb", INITIALIZING: "#2f6fdb" };
  for (const [name, p] of pos) {
    const s = byName.get(name).status || "";
    const fill = colour[s] || (s.startsWith("FAILED") ? "#c62f2f" : s === "RESCHEDULED" ? "#8a4fd0" : "#9a7b00");
    const box = add("rect", { x: p.x, y: p.y, width: W, height: H, rx: 5, fill, "data-group": name });
    box.append(Object.assign(document.createElementNS(ns, "title"), { textContent: `${name}: ${s}` }));
    add("text", { x: p.x + 8, y: p.y + 21 }, name.length > 22 ? name.slice(0, 21) + "…" : name);
  }
  return svg;
}

function attemptRows(doc, group) {
  const wfStart = parseTime(doc.submit_time);
  const wfEnd = parseTime(doc.end_time) || new Date();
  const total = wfStart ? Math.max(1, wfEnd - wfStart) : 1;
  return group.tasks.map((t) => {
    const a = parseTime(t.start_time || t.scheduling_time);
    const b = parseTime(t.end_time) || new Date();
    const bar = el("div", { class: "timeline", title: `${showTime(t.start_time)} → ${showTime(t.end_time)}` });
    if (a && wfStart) {
      const i = el("i");
      i.style.left = (100 * (a - wfStart) / total).toFixed(1) + "%";
      i.style.width = Math.max(1, 100 * (b - a) / total).toFixed(1) + "%";
      bar.append(i);
    }
    const codes = (t.exit_codes || []).map((c) => `${c.code} (${c.source}${c.detail ? ": " + c.detail : ""})`).join("; ");
    const rule = t.exit_rule ? `${t.exit_rule.origin || ""}${t.exit_rule.range ? " " + t.exit_rule.range : ""}${t.exit_rule.action ? " → " + t.exit_rule.action : ""}` : "";
    const runs = (t.runs || []).map((r, i) => `run ${i + 1}: exit ${r.exit_code ?? "–"}${r.stopped_because ? " (" + r.stopped_because + ")" : ""}`).join("; ");
    return el("tr", { "data-task": t.name, "data-retry": t.retry_id },
      el("td", {}, t.name, t.lead ? el("span", { class: "muted" }, " lead") : ""),
      el("td", {}, t.retry_id),
      el("td", {}, badge(t.status)),
      el("td", {}, t.exit_code ?? "–"),
      el("td", { class: "codes" }, codes || "–"),
      el("td", { class: "codes hide-narrow" }, rule || "–"),
      el("td", { class: "hide-narrow" }, t.failure_message || ""),
      el("td", { class: "hide-narrow" }, runs || "–"),
      el("td", { class: "hide-narrow" }, t.node_name || ""),
      el("td", {}, bar, el("div", { class: "muted" }, human(span(t.start_time, t.end_time)))),
      el("td", {}, el("a", { href: "#logs", class: "show-logs", onclick: (e) => { e.preventDefault(); e.stopPropagation(); openLogs(doc.name, t.name, t.retry_id); } }, "logs")));
  });
}

async function workflowPage(id) {
  document.title = id + " · osmo";
  const head = el("div");
  const graph = el("div", { class: "scroll" });
  const groupsBox = el("div");
  const tabs = el("div", { class: "tabs" });
  const pane = el("div", { id: "pane" });
  main.replaceChildren(el("h1", {}, id), head, el("h2", {}, "Groups"), graph, groupsBox, tabs, pane);

  const load = async () => {
    const doc = await json("/api/workflow/" + encodeURIComponent(id) + "?verbose=true");
    const running = !FINISHED(doc.status);
    const actions = el("div", { class: "actions" });
    if (running) actions.append(el("button", { class: "danger", id: "cancel", onclick: async () => {
      if (!confirm(`Cancel ${id}?`)) return;
      try { await api(`/api/workflow/${encodeURIComponent(id)}/cancel`, { method: "POST" }); await load(); } catch (e) { showError(e.message); }
    } }, "Cancel"));
    if (doc.status !== "COMPLETED" && !running) actions.append(el("button", { id: "restart", onclick: async () => {
      try {
        const r = await json(`/api/workflow/${encodeURIComponent(id)}/restart`, { method: "POST" });
        go("/workflows/" + encodeURIComponent(r.name));
      } catch (e) { showError(e.message); }
    } }, "Restart"));
    head.replaceChildren(
      el("div", { class: "meta" },
        el("div", {}, badge(doc.status)),
        el("div", {}, el("span", { class: "k" }, "pool"), doc.pool),
        el("div", {}, el("span", { class: "k" }, "user"), doc.submitted_by),
        el("div", {}, el("span", { class: "k" }, "priority"), doc.priority),
        el("div", {}, el("span", { class: "k" }, "submitted"), showTime(doc.submit_time)),
        el("div", {}, el("span", { class: "k" }, "duration"), human(span(doc.submit_time, doc.end_time))),
        Object.keys(doc.labels || {}).length ? el("div", {}, el("span", { class: "k" }, "labels"),
          Object.entries(doc.labels).map(([k, v]) => `${k}=${v}`).join(", ")) : null,
        (doc.tags || []).length ? el("div", {}, el("span", { class: "k" }, "tags"), doc.tags.join(", ")) : null),
      doc.cancel_message ? el("p", { class: "muted" }, `Canceled by ${doc.canceled_by || "?"}: ${doc.cancel_message}`) : "",
      actions);
    graph.replaceChildren(dag(doc.groups || []));
    groupsBox.replaceChildren(...(doc.groups || []).map((g) => el("div", { class: "card", "data-group": g.name },
      el("div", { class: "row" }, el("strong", {}, g.name), badge(g.status),
        g.failure_message ? el("span", { class: "muted" }, g.failure_message) : ""),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ["Task", "Retry", "Status", "Exit", "Codes (source)", "Rule", "Message", "Runs", "Node", "Timeline", ""].map((h, i) =>
          el("th", { class: [5, 6, 7, 8].includes(i) ? "hide-narrow" : null }, h)))),
        el("tbody", {}, attemptRows(doc, g)))))));
    if (!running) clearInterval(refreshTimer);
    return doc;
  };
  const doc = await load();
  const show = (which) => {
    tabs.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.tab === which));
    if (which === "logs") {
      const first = (doc.groups[0] || { tasks: [] }).tasks[0];
      return first ? openLogs(id, first.name, first.retry_id) : pane.replaceChildren(el("p", { class: "muted" }, "No task yet."));
    }
    if (logAbort) { logAbort.abort(); logAbort = null; }
    const rendered = which === "rendered";
    return api(`/api/workflow/${encodeURIComponent(id)}/spec?rendered=${rendered}`)
      .then((r) => r.text())
      .then((text) => pane.replaceChildren(el("pre", { class: "spec" }, text)))
      .catch((e) => showError(e.message));
  };
  tabs.replaceChildren(
    el("button", { "data-tab": "logs", onclick: () => show("logs") }, "Logs"),
    el("button", { "data-tab": "rendered", onclick: () => show("rendered") }, "Spec (rendered)"),
    el("button", { "data-tab": "template", onclick: () => show("template") }, "Spec (template)"));
  show("logs");
  if (!FINISHED(doc.status)) every(load);
}

// A task attempt's logs, streamed while it runs (follow=true), with a search box.
function openLogs(id, task, retry) {
  if (logAbort) logAbort.abort();
  const controller = new AbortController();
  logAbort = controller;
  document.querySelectorAll(".tabs button").forEach((b) => b.classList.toggle("on", b.dataset.tab === "logs"));
  const out = el("pre", { class: "logs", id: "logs" });
  const search = el("input", { type: "search", placeholder: "search", id: "log-search" });
  let lines = [];
  const draw = () => {
    const needle = search.value.toLowerCase();
    out.replaceChildren(...lines.filter((l) => !needle || l.toLowerCase().includes(needle)).map((l) => {
      if (!needle) return l + "\n";
      const i = l.toLowerCase().indexOf(needle);
      return el("span", {}, l.slice(0, i), el("mark", {}, l.slice(i, i + needle.length)), l.slice(i + needle.length) + "\n");
    }));
  };
  search.addEventListener("input", draw);
  document.getElementById("pane").replaceChildren(
    el("div", { class: "row" }, el("strong", {}, `${task} retry ${retry}`), search), out);
  const path = `/api/workflow/${encodeURIComponent(id)}/logs?task_name=${encodeURIComponent(task)}&retry_id=${retry}&follow=true`;
  (async () => {
    const response = await api(path, { signal: controller.signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += decoder.decode(value, { stream: true });
      const parts = rest.split("\n");
      rest = parts.pop();
      lines.push(...parts);
      draw();
      out.scrollTop = out.scrollHeight;
    }
    if (rest) { lines.push(rest); draw(); }
    if (!lines.length) out.replaceChildren(el("span", { class: "muted" }, "No log lines."));
  })().catch((e) => { if (e.name !== "AbortError") showError(e.message); });
}

async function poolsPage() {
  document.title = "Pools · osmo";
  const body = el("tbody");
  main.replaceChildren(el("h1", {}, "Pools"), el("div", { class: "scroll" }, el("table", { id: "pools" },
    el("thead", {}, el("tr", {}, ["Pool", "Backend", "Status", "CPUs used", "CPU capacity", "Groups waiting", "GPUs used / quota",
      "Retries", "Default exit actions", "Preflight tests"].map((h) => el("th", {}, h)))),
    body)));
  const load = async () => {
    const doc = await json("/api/pool");
    const pools = (doc.node_sets || []).flatMap((s) => s.pools || []);
    body.replaceChildren(...pools.map((p) => el("tr", { "data-pool": p.name },
      el("td", {}, el("a", { href: "/?pool=" + encodeURIComponent(p.name) }, p.name)),
      el("td", {}, p.backend || ""),
      el("td", {}, p.status || ""),
      el("td", {}, p.cpu ? p.cpu.used : "–"),
      el("td", {}, p.cpu ? p.cpu.capacity : "–"),
      el("td", {}, p.cpu ? p.cpu.waiting_groups : "–"),
      el("td", {}, p.resource_usage ? `${p.resource_usage.quota_used} / ${p.resource_usage.quota_limit}` : "–"),
      el("td", {}, p.max_retry_per_task ?? "–"),
      el("td", { class: "codes" }, exitActions(p.default_exit_actions)),
      el("td", { class: "codes" }, (p.preflight || []).map((t) => `${t.name}: ${(t.command || []).join(" ")}`).join("; ") || "none"))));
  };
  await load();
  every(load);
}

// A pool's default exit actions (`{rules: [{action, codes: {text}}]}`) as `RESCHEDULE 2010-2012,3001`.
function exitActions(actions) {
  const rules = (actions && actions.rules) || [];
  if (!rules.length) return "none";
  return rules.map((r) => `${r.action} ${(r.codes && r.codes.text) || ""}`).join("; ");
}

function loginPage() {
  document.title = "Log in · osmo";
  const next = new URLSearchParams(location.search).get("next") || "/";
  const token = el("input", { type: "password", name: "token", id: "token", placeholder: "token", size: 40, autocomplete: "off" });
  main.replaceChildren(el("h1", {}, "Log in"),
    el("p", { class: "muted" }, "A token from `osmo token create` (kept in this browser only). A server without `auth: tokens` needs none."),
    el("form", { class: "filters", onsubmit: (e) => {
        e.preventDefault();
        if (token.value.trim()) localStorage.setItem(TOKEN_KEY, token.value.trim());
        else localStorage.removeItem(TOKEN_KEY);
        go(next.startsWith("/") ? next : "/");
      } }, token, el("button", { type: "submit", id: "login" }, "Log in"),
      el("button", { type: "button", onclick: () => { localStorage.removeItem(TOKEN_KEY); go("/login"); } }, "Log out")));
}

route();
