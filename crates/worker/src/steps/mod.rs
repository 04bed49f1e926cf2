//! A job's steps as typed phases. Every step goes the same way — start its record, skip it if
//! the record says it finished (its typed output is reused), run it, complete it with its output
//! or record the failure — and [`run_step`] is that way, written once.
//!
//! - [`generate`] — `generate-image`: one fal request per job, checkpointed the moment fal
//!   accepts it, then polled to its result.
//! - [`save`] — `save-to-gallery`: download, compress, store under a key derived from the job.
//! - [`notify`] — `notify-user`: the signed webhook, if the job has one.

pub mod generate;
pub mod notify;
pub mod save;

use std::{future::Future, time::Duration};

use jewelshot_db::DbError;
use jewelshot_domain::{job::error_code, metric_names as m, JobId, StepName, StepStatus};
use jewelshot_fal::FalError;
use jewelshot_storage::StorageError;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::pipeline::Ctx;

/// How a step failed.
#[derive(Debug)]
pub enum StepFailure {
    /// Retrying cannot help: the job fails now.
    Fatal { code: &'static str, message: String },
    /// May pass: retry the job (resuming after its last finished step).
    Retry { code: &'static str, message: String, retry_after: Option<Duration> },
    /// The worker is stopping: hand the job back now (checkpoints kept, nothing lost).
    Shutdown,
    /// The job was canceled while it ran: stop, write nothing more.
    Canceled,
}

impl StepFailure {
    pub fn retry(code: &'static str, message: impl Into<String>) -> Self {
        Self::Retry { code, message: message.into(), retry_after: None }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self::Fatal { code, message: message.into() }
    }

    /// What the step's record says about it; `None` when the step did not fail (shutdown,
    /// cancel) and its record stays as it is.
    fn message(&self) -> Option<&str> {
        match self {
            Self::Fatal { message, .. } | Self::Retry { message, .. } => Some(message),
            Self::Shutdown | Self::Canceled => None,
        }
    }
}

impl From<FalError> for StepFailure {
    fn from(e: FalError) -> Self {
        let message = e.to_string();
        match e {
            FalError::InvalidInput { .. } => Self::fatal(error_code::UPSTREAM_INVALID_INPUT, message),
            FalError::Unauthorized { .. } => Self::fatal(error_code::UPSTREAM_UNAUTHORIZED, message),
            FalError::BadResponse(_) => Self::fatal(error_code::UPSTREAM_BAD_RESPONSE, message),
            other => Self::Retry { code: error_code::UPSTREAM_UNAVAILABLE, message, retry_after: other.retry_after() },
        }
    }
}

impl From<DbError> for StepFailure {
    fn from(e: DbError) -> Self {
        Self::retry(error_code::INTERNAL, e.to_string())
    }
}

impl From<StorageError> for StepFailure {
    fn from(e: StorageError) -> Self {
        Self::retry(error_code::STORAGE_FAILED, e.to_string())
    }
}

/// Run `step` of `job` once, recorded: a step complete before returns its stored output without
/// running; otherwise `body` runs with the checkpoint the step left (if any), and its output
/// completes the step — or its failure is recorded on the step and passed on. The step's
/// duration and outcome go to the step histogram.
pub async fn run_step<T, F, Fut>(ctx: &Ctx, job: JobId, step: StepName, body: F) -> Result<T, StepFailure>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce(Option<Value>) -> Fut,
    Fut: Future<Output = Result<T, StepFailure>>,
{
    let start = std::time::Instant::now();
    let out = run_recorded(ctx, job, step, body).await;
    let outcome = if out.is_ok() { "ok" } else { "error" };
    metrics::histogram!(m::STEP_DURATION, "step" => step.as_str(), "outcome" => outcome)
        .record(start.elapsed().as_secs_f64());
    out
}

async fn run_recorded<T, F, Fut>(ctx: &Ctx, job: JobId, step: StepName, body: F) -> Result<T, StepFailure>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce(Option<Value>) -> Fut,
    Fut: Future<Output = Result<T, StepFailure>>,
{
    let rec = ctx.db.start_step(job, step).await?;
    if rec.status == StepStatus::Complete {
        return output_of(rec.output);
    }
    match body(rec.output).await {
        Ok(out) => {
            ctx.db.complete_step(job, step, &to_output(&out)?).await?;
            Ok(out)
        }
        Err(failure) => {
            if let Some(message) = failure.message() {
                if let Err(e) = ctx.db.fail_step(job, step, message).await {
                    tracing::warn!(error = %e, step = step.as_str(), "could not record the step's failure");
                }
            }
            Err(failure)
        }
    }
}

/// Save a running step's checkpoint (how to resume it).
pub async fn checkpoint<T: Serialize>(ctx: &Ctx, job: JobId, step: StepName, cp: &T) -> Result<(), StepFailure> {
    Ok(ctx.db.checkpoint_step(job, step, &to_output(cp)?).await?)
}

/// A step's output as stored. Never `Null` on failure: a null checkpoint would mean "start the
/// step afresh" (for `generate-image`: pay fal again).
fn to_output<T: Serialize>(out: &T) -> Result<Value, StepFailure> {
    serde_json::to_value(out)
        .map_err(|e| StepFailure::fatal(error_code::INTERNAL, format!("step output could not be stored: {e}")))
}

fn output_of<T: DeserializeOwned>(v: Option<Value>) -> Result<T, StepFailure> {
    let v = v.ok_or_else(|| StepFailure::fatal(error_code::INTERNAL, "a complete step has no stored output"))?;
    serde_json::from_value(v)
        .map_err(|e| StepFailure::fatal(error_code::INTERNAL, format!("stored step output unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_fal_errors() {
        assert!(matches!(
            StepFailure::from(FalError::InvalidInput { detail: String::new() }),
            StepFailure::Fatal { .. }
        ));
        assert!(matches!(StepFailure::from(FalError::Timeout), StepFailure::Retry { .. }));
        let ra = Some(Duration::from_secs(7));
        match StepFailure::from(FalError::RateLimited { retry_after: ra }) {
            StepFailure::Retry { retry_after, .. } => assert_eq!(retry_after, ra),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_or_unreadable_output_is_an_error_not_a_default() {
        assert!(matches!(output_of::<save::Saved>(None), Err(StepFailure::Fatal { .. })));
        assert!(matches!(output_of::<save::Saved>(Some(Value::Null)), Err(StepFailure::Fatal { .. })));
        assert!(matches!(
            output_of::<save::Saved>(Some(serde_json::json!({"key": 1}))),
            Err(StepFailure::Fatal { .. })
        ));
    }
}
