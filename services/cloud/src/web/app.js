// The baetyl cloud dashboard: plain JavaScript over the operators' API. Everything shown is built with
// textContent (never HTML from data); the token lives in this tab's sessionStorage only.
"use strict";

const TOKEN_KEY = "baetyl.token";
const REFRESH_MS = 3000;
const MAX_LOG_CHARS = 200000;
let timer = null;
let follow = null; // AbortController of a log follow

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text;
  n.className = isError ? "error" : "";
  n.hidden = !text;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = text;
  }
  if (resp.status === 401) {
    signOut("The token was refused: " + ((data && data.error) || "unauthorized"));
    throw new ApiError(401, "unauthorized");
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.error) || resp.statusText);
  }
  return data;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? n + " B" : v.toFixed(1) + " " + units[u];
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c);
    else td.textContent = c === null || c === undefined ? "-" : String(c);
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
  return tr;
}

function clear(tbody) {
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
}

function badge(text, kind) {
  return el("span", text, "badge " + kind);
}

function updateBadge(state, error) {
  if (!state) return el("span", "-");
  const kind = state === "RESTARTED" ? "ok" : state === "FAILURE" || state === "TIMEOUT" ? "bad" : "busy";
  const b = badge(state, kind);
  if (error) b.title = error;
  return b;
}

function memory(d) {
  if (!d.mem_total) return el("span", "-");
  const wrap = el("span", null, "meter");
  const bar = el("span", null, "fill");
  const pct = Math.min(100, Math.round((100 * d.mem_used) / d.mem_total));
  bar.style.width = pct + "%";
  wrap.appendChild(bar);
  const box = el("span");
  box.appendChild(wrap);
  box.appendChild(el("span", " " + bytes(d.mem_used) + " / " + bytes(d.mem_total)));
  return box;
}

function show(id) {
  for (const s of ["login", "fleet", "device", "apps", "audit"]) $(s).hidden = s !== id;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  stopFollow();
  if (timer) clearInterval(timer);
  timer = null;
  $("who").textContent = "";
  $("logout").hidden = true;
  $("login-error").textContent = message || "";
  show("login");
}

function every(fn) {
  if (timer) clearInterval(timer);
  fn();
  timer = setInterval(fn, REFRESH_MS);
}

// ---- fleet ----

async function loadFleet() {
  try {
    const [fleet, devices] = await Promise.all([api("GET", "/api/v1/fleet"), api("GET", "/api/v1/devices")]);
    $("c-devices").textContent = fleet.devices;
    $("c-online").textContent = fleet.online;
    $("c-processes").textContent = fleet.processes;
    $("c-failed").textContent = devices.filter((d) => d.update_state === "FAILURE" || d.update_state === "TIMEOUT").length;
    const tbody = $("devices").querySelector("tbody");
    clear(tbody);
    for (const d of devices) {
      const link = el("a", d.name);
      link.href = "#/devices/" + encodeURIComponent(d.id);
      const tr = row(tbody, [
        link,
        d.state,
        badge(d.online ? "online" : "offline", d.online ? "ok" : "off"),
        d.app_version,
        d.applied_revision,
        updateBadge(d.update_state, d.update_error),
        d.cpu_percent === null || d.cpu_percent === undefined ? "-" : d.cpu_percent.toFixed(0) + "%",
        memory(d),
        ago(d.report_time),
        (d.tags || []).join(", "),
      ]);
      tr.dataset.device = d.name;
    }
    notice("");
  } catch (e) {
    if (e.status !== 401) notice("Cannot load the fleet: " + e.message, true);
  }
}

async function loadVersions() {
  const sel = $("deploy-version");
  try {
    const versions = await api("GET", "/api/v1/apps");
    clear(sel);
    for (const v of versions.slice().reverse()) {
      const o = el("option", v.app + " " + v.version);
      o.value = JSON.stringify({ app: v.app, version: v.version });
      sel.appendChild(o);
    }
  } catch (_) {
    /* shown by loadFleet */
  }
}

async function deploy(ev) {
  ev.preventDefault();
  const choice = JSON.parse($("deploy-version").value || "{}");
  const body = { app: choice.app, version: choice.version };
  body[$("deploy-kind").value] = $("deploy-target").value.trim();
  try {
    const r = await api("POST", "/api/v1/deployments", body);
    notice("Deployed " + r.app + " " + r.version + " to " + r.target + ": revision " + r.revision + ", " + r.devices + " device(s).");
    loadFleet();
  } catch (e) {
    notice("Deploy failed: " + e.message, true);
  }
}

// ---- device ----

let current = null; // the device id shown

function renderServices(inspect, source) {
  const tbody = $("services").querySelector("tbody");
  clear(tbody);
  $("s-source").textContent = source;
  const names = [];
  for (const svc of (inspect && inspect.services) || []) {
    names.push(svc.name);
    for (const i of svc.instances || []) {
      const kind = i.status === "running" ? "ok" : i.status === "exited" ? "off" : "bad";
      const tr = row(tbody, [
        svc.name + "/" + i.name,
        badge(i.status, kind),
        i.process ? i.process.pid : "-",
        i.restarts,
        i.cpu_stats && i.cpu_stats.used_percent !== undefined ? i.cpu_stats.used_percent.toFixed(1) : "-",
        i.mem_stats ? bytes(i.mem_stats.rss) : "-",
        i.start_time || "-",
      ]);
      tr.dataset.instance = svc.name + "/" + i.name;
    }
  }
  $("d-error").textContent = (inspect && inspect.error) || "";
  for (const id of ["a-service", "l-service"]) {
    const sel = $(id);
    const was = sel.value;
    const have = Array.from(sel.options).map((o) => o.value).join(",");
    if (have !== names.join(",")) {
      clear(sel);
      for (const n of names) {
        const o = el("option", n);
        o.value = n;
        sel.appendChild(o);
      }
      if (names.includes(was)) sel.value = was;
    }
  }
}

async function loadDevice() {
  if (!current) return;
  try {
    const d = await api("GET", "/api/v1/devices/" + encodeURIComponent(current));
    $("d-name").textContent = d.name;
    const on = $("d-online");
    on.textContent = d.online ? "online" : "offline";
    on.className = "badge " + (d.online ? "ok" : "off");
    $("d-state").textContent = d.state;
    $("d-state").className = "badge " + (d.state === "active" ? "ok" : "bad");
    $("d-id").textContent = d.id;
    $("d-app").textContent = (d.app_version || "-") + " (revision " + d.applied_revision + ")";
    $("d-desired").textContent = d.desired ? d.desired.app + " " + d.desired.version + " (revision " + d.desired.revision + ")" : "-";
    const upd = $("d-update");
    clear(upd);
    upd.appendChild(updateBadge(d.update_state));
    if (d.update_error) upd.appendChild(el("span", " " + d.update_error, "error"));
    $("d-report").textContent = ago(d.report_time);
    $("d-load").textContent =
      (d.cpu_percent === null || d.cpu_percent === undefined ? "-" : d.cpu_percent.toFixed(0) + "%") +
      " / " + bytes(d.mem_used) + " of " + bytes(d.mem_total);
    $("d-tags").textContent = (d.tags || []).join(", ") || "-";
    $("d-facts").textContent = Object.entries(d.facts || {}).map(([k, v]) => k + "=" + v).join("  ") || "-";
    if (!$("services").dataset.live) renderServices(d.report && d.report.inspect, "(last report)");
    const tbody = $("deployments").querySelector("tbody");
    clear(tbody);
    for (const x of d.deployments || []) {
      const tr = row(tbody, [x.revision, x.app + " " + x.version, updateBadge(x.state === "pending" || x.state === "superseded" ? null : x.state), ago(x.updated), x.created_by, x.error || ""]);
      tr.dataset.revision = x.revision;
      tr.dataset.state = x.state;
      tr.title = (x.steps || []).map((s) => s.time + " " + s.step + " " + (s.message || "")).join("\n");
    }
  } catch (e) {
    if (e.status !== 401) notice("Cannot load the device: " + e.message, true);
  }
}

function result(text, isError) {
  const r = $("a-result");
  r.textContent = text;
  r.className = isError ? "error" : "ok-text";
}

async function act(label, method, path) {
  result(label + "...");
  try {
    const r = await api(method, path);
    result(label + ": done");
    return r;
  } catch (e) {
    result(label + " failed: " + e.message, true);
    return null;
  }
}

// A dangerous button asks again on its own face instead of a dialog.
function confirmed(button) {
  if (button.dataset.armed) {
    delete button.dataset.armed;
    button.textContent = button.dataset.label;
    return true;
  }
  button.dataset.label = button.textContent;
  button.dataset.armed = "1";
  button.textContent = "Confirm " + button.dataset.label.toLowerCase() + "?";
  setTimeout(() => {
    if (button.dataset.armed) {
      delete button.dataset.armed;
      button.textContent = button.dataset.label;
    }
  }, 5000);
  return false;
}

function devicePath(suffix) {
  return "/api/v1/devices/" + encodeURIComponent(current) + suffix;
}

async function inspectNow() {
  const r = await act("Inspect", "POST", devicePath("/inspect"));
  if (r) {
    $("services").dataset.live = "1";
    renderServices(r, "(live, " + new Date().toLocaleTimeString() + ")");
  }
}

function stopFollow() {
  if (follow) follow.abort();
  follow = null;
  $("l-follow").disabled = false;
  $("l-stop").disabled = true;
}

async function startFollow() {
  stopFollow();
  const service = $("l-service").value;
  if (!service) return;
  const pre = $("logs");
  pre.textContent = "";
  follow = new AbortController();
  $("l-follow").disabled = true;
  $("l-stop").disabled = false;
  $("l-status").textContent = "following " + service;
  const tail = Math.max(0, Math.min(10000, parseInt($("l-tail").value, 10) || 0));
  try {
    const resp = await fetch(devicePath("/logs?follow=true&tail=" + tail + "&service=" + encodeURIComponent(service)), {
      headers: { Authorization: "Bearer " + token() },
      signal: follow.signal,
    });
    if (!resp.ok) {
      const data = await resp.json().catch(() => ({}));
      throw new Error(data.error || resp.statusText);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let text = pre.textContent + decoder.decode(value, { stream: true });
      if (text.length > MAX_LOG_CHARS) text = text.slice(text.length - MAX_LOG_CHARS);
      pre.textContent = text;
      pre.scrollTop = pre.scrollHeight;
    }
    $("l-status").textContent = "stream ended";
  } catch (e) {
    if (e.name !== "AbortError") $("l-status").textContent = "logs: " + e.message;
    else $("l-status").textContent = "stopped";
  }
  stopFollow();
}

// ---- apps and audit ----

async function loadApps() {
  try {
    const versions = await api("GET", "/api/v1/apps");
    const tbody = $("versions").querySelector("tbody");
    clear(tbody);
    for (const v of versions) row(tbody, [v.app, v.version, bytes(v.size), (v.secrets || []).join(", "), ago(v.created), v.created_by]);
  } catch (e) {
    if (e.status !== 401) notice("Cannot load the applications: " + e.message, true);
  }
}

async function loadAudit() {
  try {
    const entries = await api("GET", "/api/v1/audit?limit=200");
    const tbody = $("audit-log").querySelector("tbody");
    clear(tbody);
    for (const e of entries) row(tbody, [ago(e.time), e.actor, e.action, e.target, e.outcome]);
  } catch (e) {
    if (e.status !== 401) notice("Cannot load the audit log: " + e.message, true);
  }
}

// ---- routing ----

function route() {
  if (!token()) {
    signOut();
    return;
  }
  $("logout").hidden = false;
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/devices\/([^/]+)$/);
  if (current && (!m || decodeURIComponent(m[1]) !== current)) {
    stopFollow();
    $("logs").textContent = "";
    delete $("services").dataset.live;
  }
  if (m) {
    current = decodeURIComponent(m[1]);
    show("device");
    every(loadDevice);
  } else if (hash === "#/apps") {
    current = null;
    show("apps");
    every(loadApps);
  } else if (hash === "#/audit") {
    current = null;
    show("audit");
    every(loadAudit);
  } else {
    current = null;
    show("fleet");
    loadVersions();
    every(loadFleet);
  }
}

async function signIn(ev) {
  ev.preventDefault();
  const t = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, t);
  $("token").value = "";
  try {
    await api("GET", "/api/v1/fleet");
    $("login-error").textContent = "";
    $("who").textContent = "signed in";
    route();
  } catch (e) {
    if (e.status !== 401) $("login-error").textContent = "Cannot reach the cloud: " + e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", () => signOut());
  $("deploy-form").addEventListener("submit", deploy);
  $("a-inspect").addEventListener("click", inspectNow);
  $("a-restart").addEventListener("click", () => {
    const s = $("a-service").value;
    if (s) act("Restart " + s, "POST", devicePath("/services/" + encodeURIComponent(s) + "/restart"));
  });
  $("a-reboot").addEventListener("click", (ev) => {
    if (confirmed(ev.target)) act("Reboot", "POST", devicePath("/reboot"));
  });
  $("a-poweroff").addEventListener("click", (ev) => {
    if (confirmed(ev.target)) act("Power off", "POST", devicePath("/poweroff"));
  });
  $("a-revoke").addEventListener("click", (ev) => {
    if (confirmed(ev.target)) act("Revoke", "POST", devicePath("/revoke"));
  });
  $("l-follow").addEventListener("click", startFollow);
  $("l-stop").addEventListener("click", stopFollow);
  window.addEventListener("hashchange", route);
  if (token()) $("who").textContent = "signed in";
  route();
});
