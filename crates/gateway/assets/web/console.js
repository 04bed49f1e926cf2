// JewelShot's operator console: one overview read, and requeue/cancel on a job.
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN = "jewelshot.operator";
let token = sessionStorage.getItem(TOKEN) || "";

async function call(path, method = "GET") {
  const res = await fetch(path, { method, headers: { Authorization: `Bearer ${token}` } });
  const body = (res.headers.get("content-type") || "").includes("json") ? await res.json() : null;
  if (!res.ok) {
    const err = new Error((body && body.error && body.error.message) || `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  row.append(td);
  return td;
}

function table(el, headers, rows) {
  el.replaceChildren();
  const head = document.createElement("tr");
  for (const h of headers) {
    const th = document.createElement("th");
    th.textContent = h;
    head.append(th);
  }
  el.append(head);
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const v of r) {
      if (v instanceof Node) {
        const td = document.createElement("td");
        td.append(v);
        tr.append(td);
      } else cell(tr, v);
    }
    el.append(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr");
    cell(tr, "none").colSpan = headers.length;
    el.append(tr);
  }
}

function actions(job, readOnly, kinds) {
  const span = document.createElement("span");
  for (const kind of kinds) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = kind === "requeue" ? "Requeue" : "Cancel";
    b.className = kind;
    b.dataset.job = job;
    b.disabled = readOnly;
    b.addEventListener("click", () => act(kind, job));
    span.append(b);
  }
  return span;
}

async function act(kind, job) {
  $("#action-result").textContent = `${kind} ${job}…`;
  try {
    const r = await call(`/admin/api/jobs/${job}/${kind}`, "POST");
    $("#action-result").textContent = `${r.jobId}: ${r.outcome}`;
  } catch (err) {
    $("#action-result").textContent = `${job}: ${err.message}`;
  }
  refresh();
}

async function refresh() {
  let o;
  try {
    o = await call("/admin/api/overview");
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN);
      $("#panels").hidden = true;
      $("#signin").hidden = false;
    }
    $("#signin-error").textContent = err.status === 401 ? "That token was not accepted." : err.message;
    return;
  }
  $("#signin").hidden = true;
  $("#panels").hidden = false;
  $("#mode").textContent = o.readOnly ? "Read-only: actions are off." : "";
  $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const q = o.queue;
  table($("#queue"), ["waiting high", "waiting normal", "scheduled", "dispatched", "processing", "oldest waiting"],
    [[q.waitingHigh, q.waitingNormal, q.scheduled, q.dispatched, q.processing, `${Math.round(q.oldestWaitingSecs)} s`]]);
  const c = o.cache;
  const rate = c.hitRate == null ? "—" : `${(c.hitRate * 100).toFixed(1)} %`;
  table($("#cache"), ["enabled", "scope", "hit rate (1 h)", "hits", "lookups", "sharing a request", "stored results"],
    [[c.enabled ? "yes" : "no", c.scope, rate, c.hits, c.lookups, c.sharing, c.entries]]);
  table($("#head"), ["#", "job", "user", "priority", ""],
    o.lineHead.map((h) => [h.position, h.job.jobId, h.job.userId, h.job.priority, actions(h.job.jobId, o.readOnly, ["cancel"])]));
  table($("#accounts"), ["account", "state", "in flight", "started in window", "window"],
    o.accounts.map((a) => [a.id, a.coolingDown ? "cooling" : a.healthy ? "healthy" : "disabled",
      `${a.inFlight} / ${a.maxConcurrent || "∞"}`, `${a.startedInWindow} / ${a.maxPerMinute || "∞"}`, `${a.windowMs / 1000} s`]));
  table($("#workers"), ["worker", "last heartbeat", "jobs"],
    o.workers.map((w) => [w.name, w.lastHeartbeat ? new Date(w.lastHeartbeat).toLocaleTimeString() : "—", w.jobs.join(", ")]));
  table($("#processing"), ["job", "user", "worker", "attempts", "since", ""],
    o.processing.map((j) => [j.jobId, j.userId, j.workerId, j.attempts, new Date(j.updatedAt).toLocaleTimeString(),
      actions(j.jobId, o.readOnly, ["requeue", "cancel"])]));
  const failures = $("#failures");
  failures.replaceChildren();
  const codes = Object.keys(o.failures);
  if (!codes.length) failures.textContent = "none";
  for (const code of codes) {
    const h = document.createElement("h3");
    h.textContent = `${code} (${o.failures[code].length})`;
    const t = document.createElement("table");
    t.dataset.code = code;
    table(t, ["job", "user", "attempts", "message", "failed at", ""],
      o.failures[code].map((j) => [j.jobId, j.userId, j.attempts, j.errorMessage, new Date(j.updatedAt).toLocaleString(),
        actions(j.jobId, o.readOnly, ["requeue"])]));
    failures.append(h, t);
  }
  $("#metrics").textContent = o.metrics.join("\n");
}

$("#signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem(TOKEN, token);
  $("#signin-error").textContent = "";
  refresh();
});
$("#refresh").addEventListener("click", refresh);
setInterval(() => { if (token && !$("#panels").hidden) refresh(); }, 5000);
if (token) refresh();
