// JewelShot's reference web client: plain JavaScript against the public API, nothing else.
// Sign in with a key, upload a photo, ask for an edit, follow it live, compare, browse the gallery.
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY = "jewelshot.key";
let key = sessionStorage.getItem(KEY) || "";
let upload = null; // the stored photo: { url, bytes, originalBytes, width, height }
let job = null; // { id, abort }
let galleryCursor = null;

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${key}` }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  const json = (res.headers.get("content-type") || "").includes("json") ? await res.json() : null;
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

const kib = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} KB`);

function show(signedIn) {
  $("#signin").hidden = signedIn;
  $("#edit").hidden = !signedIn;
  $("#gallery-section").hidden = !signedIn;
  $("#account").hidden = !signedIn;
}

async function signIn(candidate) {
  key = candidate;
  const usage = await api("/api/storage");
  sessionStorage.setItem(KEY, key);
  $("#usage").textContent = `${kib(usage.bytes)} stored` + (usage.quotaBytes ? ` of ${kib(usage.quotaBytes)}` : "");
  show(true);
  loadGallery(true);
}

$("#signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("#signin-error").textContent = "";
  try {
    await signIn($("#key").value.trim());
  } catch (err) {
    key = "";
    $("#signin-error").textContent = err.status === 401 ? "That key was not accepted." : err.message;
  }
});

$("#signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  key = "";
  if (job) job.abort.abort();
  show(false);
  $("#job").hidden = true;
});

$("#photo").addEventListener("change", async () => {
  const file = $("#photo").files[0];
  $("#submit").disabled = true;
  $("#edit-error").textContent = "";
  if (!file) return;
  $("#compression").textContent = "Uploading…";
  try {
    upload = await api("/api/uploads", {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const saved = 100 - Math.round((upload.bytes / upload.originalBytes) * 100);
    $("#compression").textContent =
      `Stored ${upload.width}×${upload.height}: ${kib(upload.originalBytes)} → ${kib(upload.bytes)}` +
      (saved > 0 ? ` (${saved} % smaller)` : "");
    $("#before").src = upload.url;
    $("#submit").disabled = false;
  } catch (err) {
    upload = null;
    $("#compression").textContent = "";
    $("#edit-error").textContent = err.message;
  }
});

$("#preset").addEventListener("change", () => {
  $("#prompt").value = $("#preset").value;
  if (!$("#preset").value) $("#prompt").focus();
});

$("#edit-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!upload) return;
  $("#edit-error").textContent = "";
  try {
    const submitted = await api("/api/ai/edit", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_url: upload.url, prompt: $("#prompt").value }),
    });
    follow(submitted.jobId, submitted);
  } catch (err) {
    $("#edit-error").textContent = err.message;
  }
});

$("#cancel").addEventListener("click", async () => {
  if (!job) return;
  try {
    render(await api(`/api/jobs/${job.id}`, { method: "DELETE" }));
  } catch (err) {
    $("#job-error").textContent = err.message;
  }
});

function render(view) {
  // A result reused from an identical earlier edit (the result cache) says so.
  $("#status").textContent = view.cached ? `${view.status} (an identical edit's result, reused)` : view.status;
  $("#position").textContent = view.queuePosition > 0 ? String(view.queuePosition) : "—";
  $("#eta").textContent = view.etaSeconds != null ? `${view.etaSeconds} s` : "—";
  $("#cancel").hidden = !["queued", "processing"].includes(view.status);
  $("#job-error").textContent = view.error ? view.error.message : "";
  if (view.status === "complete" && view.imageUrl && $("#after").dataset.job !== view.jobId) {
    $("#after").dataset.job = view.jobId;
    $("#after").src = view.imageUrl;
    loadGallery(true);
  }
}

// Live status over Server-Sent Events, read with fetch (EventSource cannot send the key);
// reconnects with Last-Event-ID until the job is final.
async function follow(id, first) {
  if (job) job.abort.abort();
  job = { id, abort: new AbortController() };
  const mine = job;
  $("#job").hidden = false;
  $("#after").removeAttribute("src");
  delete $("#after").dataset.job;
  render(Object.assign({ status: "queued", queuePosition: 0 }, first));
  let lastId = null;
  let final = false;
  while (!final && !mine.abort.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${key}`, Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const res = await fetch(`/api/jobs/${id}/events`, { headers, signal: mine.abort.signal });
      if (!res.ok) throw new ApiError(res.status, null);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
          const idLine = block.split("\n").find((l) => l.startsWith("id: "));
          if (idLine) lastId = idLine.slice(4);
          if (!data) continue;
          const view = JSON.parse(data);
          render(view);
          final = ["complete", "failed", "canceled"].includes(view.status);
        }
      }
    } catch (err) {
      if (mine.abort.signal.aborted) return;
      $("#job-error").textContent = `Live status interrupted (${err.message}); retrying…`;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

async function loadGallery(fresh) {
  if (fresh) {
    galleryCursor = null;
    $("#gallery").replaceChildren();
  }
  try {
    const q = new URLSearchParams({ limit: "8" });
    if (galleryCursor) q.set("cursor", galleryCursor);
    const page = await api(`/api/gallery?${q}`);
    for (const item of page.images) {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = item.url;
      img.alt = item.jobId ? `edit ${item.jobId}` : "image";
      img.loading = "lazy";
      li.append(img);
      $("#gallery").append(li);
    }
    galleryCursor = page.nextCursor;
    $("#more").hidden = !galleryCursor;
  } catch (err) {
    $("#more").hidden = true;
  }
}

$("#more").addEventListener("click", () => loadGallery(false));

if (key) signIn(key).catch(() => show(false));
else show(false);
