//! Rows → the client-facing [`JobView`]. Used by the gateway (polls) and the worker (webhooks),
//! so both always describe a job the same way.

use jewelshot_domain::{
    view::{ErrorView, JobView, StepView},
    JobStatus,
};

use crate::{jobs::JobRow, steps::StepRow};

impl JobRow {
    /// Describe this job. Steps that have not started yet are listed as `pending`.
    pub fn to_view(&self, steps: &[StepRow], queue_position: i64, eta_seconds: Option<i64>) -> JobView {
        let recorded: Vec<StepView> = steps
            .iter()
            .map(|s| StepView { name: s.name, status: s.status, attempts: s.attempts, finished_at: s.finished_at })
            .collect();
        let cached = self
            .cached
            .then_some(crate::snapshot::Cached { webhook: self.webhook_url.is_some(), finished_at: self.finished_at });
        let steps = crate::snapshot::shown_steps(&recorded, cached);
        let error = match (self.status, &self.error_code) {
            (JobStatus::Failed, Some(code)) => {
                Some(ErrorView { code: code.clone(), message: self.error_message.clone().unwrap_or_default() })
            }
            _ => None,
        };
        JobView {
            job_id: self.id.to_string(),
            status: self.status,
            queue_position,
            eta_seconds,
            image_url: self.result_url.clone().filter(|_| self.status == JobStatus::Complete),
            error,
            attempts: self.attempts,
            prompt: self.prompt.clone(),
            priority: self.priority,
            scheduled_for: self.run_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            steps,
            cached: self.cached,
            notification: None,
        }
    }
}
