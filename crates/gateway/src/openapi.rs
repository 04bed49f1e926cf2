//! `GET /api/openapi.json`, generated from the handlers' annotations and the types they return,
//! so it cannot drift from the code.

use actix_web::{get, HttpResponse};
use jewelshot_domain::view::ErrorView;
use serde::Serialize;
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
        crate::routes::jobs::list,
        crate::routes::jobs::cancel,
        crate::routes::queue::queue,
        crate::routes::uploads::upload,
        crate::routes::uploads::gallery,
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
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
