//! `/docs`: the API reference, rendered in the browser by Redoc from `/api/openapi.json`. Redoc
//! (2.5.4, MIT; `assets/redoc/`) is embedded in the binary, and the page's Content-Security-Policy
//! allows nothing but this origin, so it works — and can only work — with no network.

use actix_web::{get, http::header, HttpResponse};

const REDOC: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

/// Its own origin only; Redoc styles inline and runs its search index in a blob worker.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>JewelShot API</title>
</head>
<body>
<redoc spec-url="/api/openapi.json" hide-download-button="false"></redoc>
<script src="/docs/redoc.standalone.js"></script>
</body>
</html>
"#;

/// The API reference page (no key needed, like the spec it renders).
#[get("/docs")]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(PAGE)
}

/// Redoc itself, cached for a day (its content changes only with the binary).
#[get("/docs/redoc.standalone.js")]
pub async fn redoc() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(REDOC)
}
