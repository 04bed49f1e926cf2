//! Routes: fal's queue protocol on any model path, plus `/__stats`, `/__files/…` (the edited
//! images) and `/__keys/{key}/revoke` (to simulate a revoked key).

use std::{sync::Arc, time::Duration, time::Instant};

use actix_web::{
    http::StatusCode,
    web::{self, Data},
    App, HttpRequest, HttpResponse, HttpServer,
};
use serde_json::{json, Value};

use crate::state::{
    EmulatorConfig, KeyStats, Mode, Outcome, ReqState, Request, State, MARKER_AS_IS, MARKER_FAIL, MARKER_INVALID,
};

/// Serve until `shutdown` resolves.
pub async fn run(
    cfg: EmulatorConfig,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let public = cfg.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let state = State::new(cfg, public.trim_end_matches('/').to_owned())?;
    tracing::info!(%addr, mode = ?state.mode, "fal emulator listening");
    let server = HttpServer::new(move || {
        App::new()
            .app_data(Data::new(state.clone()))
            .app_data(web::JsonConfig::default().limit(1 << 20))
            .route("/__stats", web::get().to(stats))
            .route("/__files/{name}", web::get().to(file))
            .route("/__keys/{key}/revoke", web::post().to(revoke))
            .route("/__keys/{key}/restore", web::post().to(restore))
            .route("/{tail:.*}", web::post().to(submit))
            .route("/{tail:.*}", web::get().to(get_request))
            .route("/{tail:.*}", web::put().to(cancel))
    })
    .listen(listener)?
    .shutdown_timeout(1)
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.await;
        handle.stop(true).await;
    });
    server.await?;
    Ok(())
}

fn detail(status: StatusCode, detail: impl Into<Value>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "detail": detail.into() }))
}

fn key_of(req: &HttpRequest) -> Option<String> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let k = h.strip_prefix("Key ").or_else(|| h.strip_prefix("key "))?.trim();
    (!k.is_empty()).then(|| k.to_owned())
}

fn new_request_id() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// fal addresses requests under the app (`owner/name`), not the full model path.
fn app_of(model: &str) -> String {
    model.split('/').filter(|s| !s.is_empty()).take(2).collect::<Vec<_>>().join("/")
}

struct Urls {
    status: String,
    response: String,
    cancel: String,
}

fn urls(state: &State, app: &str, id: &str) -> Urls {
    let base = format!("{}/{app}/requests/{id}", state.public_url);
    Urls { status: format!("{base}/status"), cancel: format!("{base}/cancel"), response: base }
}

async fn submit(state: Data<Arc<State>>, req: HttpRequest, path: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let Some(key) = key_of(&req) else {
        return detail(StatusCode::UNAUTHORIZED, "Missing or malformed Authorization header (expected `Key <key>`)");
    };
    if !state.key_allowed(&key) {
        return detail(StatusCode::UNAUTHORIZED, "Invalid key");
    }
    let model = path.into_inner();
    if app_of(&model).is_empty() {
        return detail(StatusCode::NOT_FOUND, "Application not found");
    }
    let input: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return detail(StatusCode::UNPROCESSABLE_ENTITY, format!("Invalid JSON: {e}")),
    };
    let field = |name: &str| input.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(image_url), Some(prompt)) = (field("image_url"), field("prompt")) else {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!([{"loc": ["body"], "msg": "image_url and prompt are required strings", "type": "value_error"}]),
        );
    };
    if prompt.contains(MARKER_INVALID) {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!([{"loc": ["body", "prompt"], "msg": "prompt rejected by the content checker", "type": "value_error"}]),
        );
    }
    if state.chance(state.cfg.hang_rate) {
        state.lock().key(&key).stats.injected_hangs += 1;
        tokio::time::sleep(Duration::from_secs(600)).await;
        return detail(StatusCode::GATEWAY_TIMEOUT, "injected hang");
    }
    if prompt.contains(MARKER_FAIL) || state.chance(state.cfg.error_rate) {
        state.lock().key(&key).stats.injected_errors += 1;
        return detail(StatusCode::INTERNAL_SERVER_ERROR, "injected upstream error");
    }

    let prompt_as_is = prompt.contains(MARKER_AS_IS);
    let id = new_request_id();
    let app = app_of(&model);
    let now = Instant::now();
    let window = state.window();
    let (per_minute, concurrent) = (state.cfg.max_per_minute, state.cfg.max_concurrent);
    let queue_position;
    {
        let mut inner = state.lock();
        let ks = inner.key(&key);
        let free = ks.waiting.is_empty() && ks.has_capacity(now, window, per_minute, concurrent);
        let initial = if free {
            ks.start(now);
            queue_position = 0;
            ReqState::InProgress
        } else if state.mode == Mode::Reject {
            ks.stats.rejected += 1;
            let rate_bound = per_minute > 0 && ks.window.len() >= per_minute as usize;
            let wait = if rate_bound {
                ks.trim_window(now, window).unwrap_or(window)
            } else {
                state.cfg.scaled(Duration::from_secs(1))
            };
            let secs = wait.as_secs_f64().max(0.001);
            drop(inner);
            return HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", format!("{secs:.3}")))
                .json(json!({"detail": "Rate limit exceeded for this key"}));
        } else {
            ks.waiting.push_back(id.clone());
            ks.stats.in_queue += 1;
            queue_position = ks.waiting.len() as i64 - 1;
            ReqState::InQueue
        };
        ks.stats.submitted += 1;
        *inner.submits_by_prompt.entry(prompt.clone()).or_default() += 1;
        inner.requests.insert(
            id.clone(),
            Request { key: key.clone(), app: app.clone(), prompt, state: initial, outcome: None, cancel: false },
        );
    }
    let st = state.get_ref().clone();
    let rid = id.clone();
    let as_is = prompt_as_is;
    tokio::spawn(async move { lifecycle(st, rid, key, image_url, as_is).await });

    let u = urls(&state, &app, &id);
    HttpResponse::Ok().json(json!({
        "request_id": id,
        "status_url": u.status,
        "response_url": u.response,
        "cancel_url": u.cancel,
        "queue_position": queue_position,
    }))
}

/// Wait for capacity (queue mode), then "generate": fetch the input, edit it, take the latency.
async fn lifecycle(state: Arc<State>, id: String, key: String, image_url: String, as_is: bool) {
    if !wait_for_capacity(&state, &id, &key).await {
        return;
    }
    let started = Instant::now();
    let latency = state.draw_latency();
    let fails = state.chance(state.cfg.fail_rate);
    let outcome = match generate(&state, &id, &image_url, as_is).await {
        Ok(_) if fails => Outcome::Failed { status: 500, detail: "injected generation failure".into() },
        Ok((url, width, height)) => Outcome::Image { url, width, height },
        Err(detail) => Outcome::Failed { status: 422, detail },
    };
    if let Some(rest) = latency.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let mut inner = state.lock();
    let canceled = inner.requests.get(&id).is_some_and(|r| r.cancel);
    let outcome = if canceled { Outcome::Canceled } else { outcome };
    let stats = &mut inner.key(&key).stats;
    stats.in_progress = stats.in_progress.saturating_sub(1);
    stats.busy_ms += started.elapsed().as_millis() as u64;
    match outcome {
        Outcome::Image { .. } => stats.completed += 1,
        Outcome::Failed { .. } => stats.failed += 1,
        Outcome::Canceled => stats.canceled += 1,
    }
    if let Some(r) = inner.requests.get_mut(&id) {
        r.state = ReqState::Completed;
        r.outcome = Some(outcome);
    }
    inner.finish(&id, Instant::now(), state.retain());
    drop(inner);
    state.capacity.notify_waiters();
}

/// Queue mode: hold the request until it is first in its key's line and the key has capacity.
/// Returns false when it was canceled while waiting.
async fn wait_for_capacity(state: &State, id: &str, key: &str) -> bool {
    loop {
        let notified = state.capacity.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        let window = state.window();
        let wait = {
            let mut inner = state.lock();
            match inner.requests.get(id).map(|r| (r.state, r.cancel)) {
                Some((ReqState::InProgress, _)) => return true,
                Some((ReqState::Completed, _)) | None => return false,
                Some((ReqState::InQueue, _)) => {}
            }
            let (per_minute, concurrent) = (state.cfg.max_per_minute, state.cfg.max_concurrent);
            let ks = inner.key(key);
            if ks.waiting.front().map(String::as_str) == Some(id)
                && ks.has_capacity(now, window, per_minute, concurrent)
            {
                ks.waiting.pop_front();
                ks.stats.in_queue = ks.stats.in_queue.saturating_sub(1);
                ks.start(now);
                if let Some(r) = inner.requests.get_mut(id) {
                    r.state = ReqState::InProgress;
                }
                drop(inner);
                // The next in line may be able to start too.
                state.capacity.notify_waiters();
                return true;
            }
            ks.trim_window(now, window).unwrap_or(Duration::from_secs(1))
        };
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
        }
    }
}

async fn generate(state: &State, id: &str, image_url: &str, as_is: bool) -> Result<(String, u32, u32), String> {
    let resp = state.http.get(image_url).send().await.map_err(|e| format!("Failed to download the image: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("Failed to download the image: HTTP {}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| format!("Failed to download the image: {e}"))?;
    if as_is {
        // Dimensions from the header if it has one; the bytes are never decoded.
        let (w, h) = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
            .unwrap_or((0, 0));
        let name = format!("{id}.bin");
        state.lock().images.insert(name.clone(), Arc::new(bytes.to_vec()));
        return Ok((format!("{}/__files/{name}", state.public_url), w, h));
    }
    let (jpeg, w, h) = tokio::task::spawn_blocking(move || crate::edit::edit_image(&bytes))
        .await
        .map_err(|e| format!("edit panicked: {e}"))??;
    let name = format!("{id}.jpg");
    state.lock().images.insert(name.clone(), Arc::new(jpeg));
    Ok((format!("{}/__files/{name}", state.public_url), w, h))
}

/// `GET …/requests/{id}/status` or `GET …/requests/{id}`.
async fn get_request(state: Data<Arc<State>>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let tail = path.into_inner();
    let segs: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
    let Some(pos) = segs.iter().position(|s| *s == "requests") else {
        return detail(StatusCode::NOT_FOUND, "Not found");
    };
    let Some(id) = segs.get(pos + 1).map(|s| s.to_string()) else {
        return detail(StatusCode::NOT_FOUND, "Not found");
    };
    if key_of(&req).is_none() {
        return detail(StatusCode::UNAUTHORIZED, "Missing or malformed Authorization header");
    }
    let want_status = segs.get(pos + 2) == Some(&"status");
    let inner = state.lock();
    let Some(r) = inner.requests.get(&id) else {
        return detail(StatusCode::NOT_FOUND, "Request not found");
    };
    let u = urls(&state, &r.app, &id);
    if want_status {
        let queue_position = inner.keys.get(&r.key).and_then(|k| k.waiting.iter().position(|w| *w == id));
        let mut body = json!({ "status": r.state, "request_id": id, "response_url": u.response, "logs": [] });
        if let Some(p) = queue_position {
            body["queue_position"] = json!(p);
        }
        return HttpResponse::Ok().json(body);
    }
    match (&r.state, &r.outcome) {
        (ReqState::Completed, Some(Outcome::Image { url, width, height })) => HttpResponse::Ok().json(json!({
            "images": [{ "url": url, "width": width, "height": height, "content_type": "image/jpeg" }],
            "seed": 42,
            "prompt": r.prompt,
            "has_nsfw_concepts": [false],
            "timings": {},
        })),
        (ReqState::Completed, Some(Outcome::Failed { status, detail: d })) => {
            detail(StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), d.clone())
        }
        (ReqState::Completed, _) => detail(StatusCode::BAD_REQUEST, "Request was cancelled"),
        _ => detail(StatusCode::BAD_REQUEST, "Request is still in progress"),
    }
}

/// `PUT …/requests/{id}/cancel`.
async fn cancel(state: Data<Arc<State>>, path: web::Path<String>) -> HttpResponse {
    let tail = path.into_inner();
    let segs: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
    let id = match segs.as_slice() {
        [.., "requests", id, "cancel"] => id.to_string(),
        _ => return detail(StatusCode::NOT_FOUND, "Not found"),
    };
    let mut inner = state.lock();
    let Some(r) = inner.requests.get_mut(&id) else {
        return HttpResponse::NotFound().json(json!({"status": "NOT_FOUND"}));
    };
    match r.state {
        ReqState::Completed => HttpResponse::BadRequest().json(json!({"status": "ALREADY_COMPLETED"})),
        ReqState::InProgress => {
            r.cancel = true;
            HttpResponse::Accepted().json(json!({"status": "CANCELLATION_REQUESTED"}))
        }
        ReqState::InQueue => {
            r.state = ReqState::Completed;
            r.outcome = Some(Outcome::Canceled);
            let key = r.key.clone();
            let ks = inner.key(&key);
            ks.waiting.retain(|w| *w != id);
            ks.stats.in_queue = ks.stats.in_queue.saturating_sub(1);
            ks.stats.canceled += 1;
            inner.finish(&id, Instant::now(), state.retain());
            drop(inner);
            state.capacity.notify_waiters();
            HttpResponse::Accepted().json(json!({"status": "CANCELLATION_REQUESTED"}))
        }
    }
}

async fn file(state: Data<Arc<State>>, path: web::Path<String>) -> HttpResponse {
    if state.cfg.file_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(state.cfg.file_delay_ms)).await;
    }
    let img = state.lock().images.get(path.as_str()).cloned();
    match img {
        Some(bytes) => {
            let mime = image::guess_format(&bytes).map_or("application/octet-stream", |f| f.to_mime_type());
            HttpResponse::Ok().content_type(mime).body(bytes.as_ref().clone())
        }
        None => detail(StatusCode::NOT_FOUND, "File not found"),
    }
}

async fn revoke(state: Data<Arc<State>>, path: web::Path<String>) -> HttpResponse {
    state.lock().revoked.insert(path.into_inner());
    HttpResponse::NoContent().finish()
}

async fn restore(state: Data<Arc<State>>, path: web::Path<String>) -> HttpResponse {
    state.lock().revoked.remove(path.as_str());
    HttpResponse::NoContent().finish()
}

async fn stats(state: Data<Arc<State>>) -> HttpResponse {
    let inner = state.lock();
    let mut total = KeyStats::default();
    for k in inner.keys.values() {
        let s = &k.stats;
        total.submitted += s.submitted;
        total.completed += s.completed;
        total.failed += s.failed;
        total.canceled += s.canceled;
        total.rejected += s.rejected;
        total.in_progress += s.in_progress;
        total.in_queue += s.in_queue;
        total.max_concurrent = total.max_concurrent.max(s.max_concurrent);
        total.busy_ms += s.busy_ms;
        total.injected_errors += s.injected_errors;
        total.injected_hangs += s.injected_hangs;
    }
    let keys: serde_json::Map<String, Value> = inner.keys.iter().map(|(k, v)| (k.clone(), json!(v.stats))).collect();
    HttpResponse::Ok().json(json!({
        "mode": state.mode,
        "max_per_minute": state.cfg.max_per_minute,
        "max_concurrent": state.cfg.max_concurrent,
        "total": total,
        "keys": keys,
        "submits_by_prompt": inner.submits_by_prompt,
    }))
}
