//! The reference web client at `/`: sign in with a key, upload a photo (its compression shown),
//! ask for an edit, follow it live (`/api/jobs/{id}/events`), compare before and after, browse
//! the gallery, cancel. Plain HTML, CSS and JavaScript against the public API (`assets/web/`),
//! embedded in the binary; the Content-Security-Policy allows scripts and calls to this origin
//! only (images may come from the object store's).

use actix_web::{get, http::header, HttpResponse};

const INDEX: &str = include_str!("../../assets/web/index.html");
const APP_JS: &str = include_str!("../../assets/web/app.js");
const APP_CSS: &str = include_str!("../../assets/web/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data: blob: https: http:; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// An embedded page or script under its Content-Security-Policy (the console's pages too).
pub fn asset(content_type: &str, csp: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, csp))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

#[get("/")]
pub async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", CSP, INDEX)
}

#[get("/app.js")]
pub async fn app_js() -> HttpResponse {
    asset("application/javascript; charset=utf-8", CSP, APP_JS)
}

#[get("/app.css")]
pub async fn app_css() -> HttpResponse {
    asset("text/css; charset=utf-8", CSP, APP_CSS)
}
