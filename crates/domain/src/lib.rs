//! # jewelshot-domain
//!
//! The words every other crate speaks: ids, job and step states, validated edit requests, the
//! stable error codes (the API's and those a job can end with), and the JSON views clients read.
//! No I/O lives here.
//!
//! ## Layout
//! - [`ids`] — [`JobId`], [`UserId`] (ULIDs; a job id doubles as the queue task id).
//! - [`job`] — [`JobStatus`], [`Priority`], [`StepName`], [`StepStatus`] (each with `ALL` and
//!   `as_str`), and [`job::UnknownValue`] for a spelling that names none of them.
//! - [`error_code`] — every stable error code (API and job), its HTTP status and meaning;
//!   [`error_code::ALL`], [`error_code::lookup`], [`error_code::markdown`].
//! - [`cache`] — the result cache's settings ([`cache::CacheSettings`]) and key.
//! - [`edit`] — the raw submit body [`EditRequest`], its validation into [`NewEdit`] (or a
//!   [`ValidationError`]) under an [`edit::WebhookPolicy`], and the prompt/URL/delay limits.
//! - [`net`] — which addresses a server-side fetch must never reach (SSRF guard).
//! - [`view`] — camelCase response shapes shared by the gateway and the webhook
//!   ([`view::JobView`], [`view::QueueView`], [`view::WebhookEvent`], …).
//! - [`metric_names`] — every metric name, its kind and description, the seed's seven, the
//!   histogram buckets.
//! - [`monitoring`] — what the metrics compare against (capacities, quotas, the fal budget).
//!
//! The id, state and edit types above are re-exported at the crate root.

pub mod cache;
pub mod edit;
pub mod error_code;
pub mod ids;
pub mod job;
pub mod metric_names;
pub mod monitoring;
pub mod net;
pub mod view;

pub use edit::{EditRequest, NewEdit, ValidationError};
pub use ids::{JobId, UserId};
pub use job::{DeliveryState, JobStatus, Priority, StepName, StepStatus};
