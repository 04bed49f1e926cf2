//! # jewelshot-domain
//!
//! The words every other crate speaks: ids, job and step states, validated edit requests, the
//! error codes a job can end with, and the JSON views clients read. No I/O lives here.
//!
//! ## Layout
//! - [`ids`] — `JobId`, `UserId` (ULIDs; a job id doubles as the queue task id).
//! - [`job`] — `JobStatus`, `Priority`, `StepName`, `StepStatus`, job error codes.
//! - [`edit`] — the raw submit body and its validation into [`edit::NewEdit`].
//! - [`net`] — which addresses a server-side fetch must never reach (SSRF guard).
//! - [`view`] — camelCase response shapes shared by the gateway and the webhook.
//! - [`metric_names`] — every metric name and its description.

pub mod edit;
pub mod ids;
pub mod job;
pub mod metric_names;
pub mod net;
pub mod view;

pub use edit::{EditRequest, NewEdit, ValidationError};
pub use ids::{JobId, UserId};
pub use job::{JobStatus, Priority, StepName, StepStatus};
