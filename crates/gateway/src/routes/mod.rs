//! HTTP routes. Handlers only extract, call one service function, and shape the answer.

pub mod client;
pub mod console;
pub mod docs;
pub mod files;
pub mod health;
pub mod jobs;
pub mod queue;
pub mod uploads;

use actix_web::web;

/// Register every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(jobs::submit)
        .service(jobs::list)
        .service(jobs::get)
        .service(jobs::events)
        .service(jobs::cancel)
        .service(queue::queue)
        .service(uploads::upload)
        .service(uploads::gallery)
        .service(uploads::delete_image)
        .service(uploads::storage)
        .service(health::healthz)
        .service(health::readyz)
        .service(crate::openapi::openapi_json)
        .service(docs::page)
        .service(docs::redoc)
        .service(client::index)
        .service(client::app_js)
        .service(client::app_css)
        .service(console::page)
        .service(console::script)
        .service(console::overview)
        .service(console::requeue)
        .service(console::cancel)
        .service(files::file);
}
