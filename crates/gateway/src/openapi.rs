//! `GET /api/openapi.json`, generated from the handlers' annotations and the types they return,
//! so it cannot drift from the code; [`document`] adds the constraints the derive cannot state
//! from the constants the server enforces, and [`Routes`] answers undeclared methods with 405.

use crate::state::AppState;

use actix_web::{get, web, HttpResponse};
use jewelshot_domain::{
    edit::{self, grammar},
    view::ErrorView,
    JobStatus,
};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi, ToSchema,
};

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorView,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`jsk_…`), or — when the gateway is configured with an identity \
                         provider (`JEWELSHOT_JWT__*`) — a JWT it signed (RS256/ES256).",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "JewelShot API", description = "Queue-backed AI photo edits for jewelry sellers."),
    paths(
        crate::routes::jobs::submit,
        crate::routes::jobs::get,
        crate::routes::jobs::events,
        crate::routes::jobs::list,
        crate::routes::jobs::cancel,
        crate::routes::queue::queue,
        crate::routes::uploads::upload,
        crate::routes::uploads::gallery,
        crate::routes::uploads::delete_image,
        crate::routes::uploads::storage,
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The OpenAPI 3 description of this API.
#[utoipa::path(get, path = "/api/openapi.json", tag = "ops", responses((status = 200, description = "This document")))]
#[get("/api/openapi.json")]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(document(state.cfg.webhook.allow_insecure))
}

/// The spec as served: what utoipa derives from the handlers, plus what the derive cannot say —
/// the constraints the server enforces, from the same constants and grammar it enforces them
/// with ([`jewelshot_domain::edit`]), and the links from a submit to the job's routes.
/// `allow_insecure_webhooks` widens the `webhook_url` grammar as the server does.
pub fn document(allow_insecure_webhooks: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| unreachable!("the spec serialises: {e}"));
    doc["components"]["schemas"]["EditRequest"] = edit_request_schema(allow_insecure_webhooks);
    let page = json!({ "type": "integer", "minimum": 1, "maximum": 100, "default": 20 });
    let cursor = json!({ "type": "string", "pattern": grammar::CURSOR });
    for path in ["/api/jobs", "/api/gallery"] {
        constrain(&mut doc, path, "get", "limit", page.clone());
        constrain(&mut doc, path, "get", "cursor", cursor.clone());
    }
    let statuses: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
    constrain(&mut doc, "/api/jobs", "get", "status", json!({ "type": "string", "enum": statuses }));
    constrain(
        &mut doc,
        "/api/ai/edit",
        "post",
        "Idempotency-Key",
        json!({ "type": "string", "pattern": grammar::IDEMPOTENCY_KEY }),
    );
    let job = |pointer: &str| json!({ "job_id": pointer });
    let links = json!({
        "GetJob": { "operationId": "get", "parameters": job("$response.body#/jobId"),
                    "description": "Poll the job just submitted" },
        "CancelJob": { "operationId": "cancel", "parameters": job("$response.body#/jobId"),
                       "description": "Cancel it" },
    });
    doc["paths"]["/api/ai/edit"]["post"]["responses"]["202"]["links"] = links;
    // A stream's items are Server-Sent Events, each carrying a job as JSON text (OpenAPI 3.2's
    // way: an event object whose `data` has the job as its content schema).
    doc["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"] = json!({
        "type": "object",
        "description": "One Server-Sent Event: `event: job`, `id` naming the state, `data` the job as JSON.",
        "required": ["data"],
        "properties": {
            "event": { "type": "string", "enum": ["job"] },
            "id": { "type": "string" },
            "retry": { "type": "integer" },
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": { "$ref": "#/components/schemas/JobView" }
            }
        }
    });
    doc["paths"]["/api/jobs"]["get"]["responses"]["200"]["links"] = json!({
        "GetFirstJob": { "operationId": "get", "parameters": job("$response.body#/jobs/0/jobId") },
    });
    doc
}

/// `POST /api/ai/edit`'s body, as [`NewEdit::parse`](jewelshot_domain::NewEdit::parse) reads it.
fn edit_request_schema(allow_insecure_webhooks: bool) -> Value {
    let nullable = |t: &str| json!([t, "null"]);
    json!({
        "type": "object",
        "description": "An edit to queue. Unknown fields are ignored; camelCase twins (`imageUrl`, `webhookUrl`, \
                        `delaySeconds`, `runAt`) are accepted too.",
        "required": ["image_url", "prompt"],
        "properties": {
            "image_url": { "type": "string", "maxLength": edit::MAX_URL_BYTES, "pattern": grammar::image_url(),
                           "description": "The photo to edit: an http(s) URL with a host name or IPv4 address." },
            "prompt": { "type": "string", "minLength": 1, "maxLength": edit::MAX_PROMPT_CHARS, "pattern": grammar::PROMPT,
                        "description": "What to do to it, e.g. \"enhance lighting\" (trimmed; no control characters but tab and newline)." },
            "priority": { "type": nullable("string"), "enum": ["normal", "high", null],
                          "description": "`normal` (default) or `high` (plans that include it)." },
            "webhook_url": { "type": nullable("string"), "maxLength": edit::MAX_URL_BYTES,
                             "pattern": grammar::webhook_url(allow_insecure_webhooks),
                             "description": "Where to POST the signed result notification. Its host must resolve only to \
                                             public addresses (checked at submit and again at each delivery)." },
            "delay_seconds": { "type": nullable("integer"), "minimum": 0, "maximum": edit::MAX_DELAY_SECONDS,
                               "description": "Run no earlier than this many seconds from now." },
            "run_at": { "type": nullable("string"), "format": "date-time",
                        "description": "Run no earlier than this instant (RFC 3339, at most 30 days ahead); instead of `delay_seconds`." },
            "cache": { "type": nullable("boolean"),
                       "description": "`false`: generate afresh even when an identical request (same image bytes, prompt, \
                                       model) has a stored result or one in progress. Default true: such a job completes at \
                                       once from the stored result (`cached: true`), or shares the request in progress." },
        },
        // Not both schedules at once (null stands for absent).
        "not": {
            "required": ["delay_seconds", "run_at"],
            "properties": { "delay_seconds": { "type": "integer" }, "run_at": { "type": "string" } },
        },
    })
}

/// Replace the schema of `operation`'s parameter `name`, and say it may not be null.
fn constrain(doc: &mut Value, path: &str, method: &str, name: &str, schema: Value) {
    let Some(params) = doc["paths"][path][method]["parameters"].as_array_mut() else { return };
    for p in params.iter_mut().filter(|p| p["name"] == name) {
        p["schema"] = schema.clone();
    }
}

/// The methods the spec declares for each path template, for `405 Method Not Allowed` with
/// `Allow` on a known path (`/files/…`, served beside the API, is added).
#[derive(Debug, Clone)]
pub struct Routes(Vec<(Vec<String>, Vec<String>)>);

impl Routes {
    pub fn from_document(doc: &Value) -> Self {
        let mut routes: Vec<(Vec<String>, Vec<String>)> = doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, item)| {
                let segments = path.split('/').map(str::to_owned).collect();
                let mut methods: Vec<String> = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]
                    .into_iter()
                    .filter(|m| item.get(*m).is_some())
                    .map(str::to_uppercase)
                    .collect();
                methods.sort();
                (segments, methods)
            })
            .collect();
        routes.push((vec![String::new(), "files".into(), "{*}".into()], vec!["GET".into()]));
        Self(routes)
    }

    /// The methods allowed on `path`, if any route matches it.
    pub fn allowed(&self, path: &str) -> Option<String> {
        let parts: Vec<&str> = path.split('/').collect();
        self.0.iter().find(|(template, _)| matches(template, &parts)).map(|(_, methods)| methods.join(", "))
    }
}

fn matches(template: &[String], parts: &[&str]) -> bool {
    if template.last().is_some_and(|t| t == "{*}") {
        let fixed = &template[..template.len() - 1];
        return parts.len() > fixed.len() && fixed.iter().zip(parts).all(|(t, p)| t == p);
    }
    template.len() == parts.len()
        && template.iter().zip(parts).all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}
