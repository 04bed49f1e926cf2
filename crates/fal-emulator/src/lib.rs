//! # fal-emulator
//!
//! A stand-in for fal.ai's queue API, for the demo, tests and load tests. It speaks fal's real
//! queue protocol (so fal's official clients work against it), enforces fal's per-key limits
//! (requests per minute, requests in progress at once) either by refusing with 429 or by
//! queueing, takes a configurable time per request, injects failures, and returns a real edited
//! image that it serves itself.
//!
//! ## Layout
//! - [`EmulatorConfig`] — the command-line flags (also `FAL_EMULATOR_*` variables); [`Mode`]
//!   says whether a request over a key's limits is refused (429) or held `IN_QUEUE`.
//! - `state` (private) — requests, per-key limits and counters (`GET /__stats`).
//! - [`run`] (from private `http`) — serves the routes on a bound listener until shutdown: fal's
//!   queue protocol on any model path, `/__stats`, `/__files/…`, `/__keys/{key}/revoke|restore`.
//! - [`edit_image`] (from private `edit`) — the deterministic "edit" (auto-levels and a warm
//!   tint, JPEG out).

mod edit;
mod http;
mod state;

pub use edit::edit_image;
pub use http::run;
pub use state::{EmulatorConfig, Mode};
