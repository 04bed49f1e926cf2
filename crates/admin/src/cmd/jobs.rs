//! `jewelshot jobs list | show | cancel`.

use jewelshot_db::jobs::{CancelOutcome, JobRow};
use jewelshot_db::steps::StepRow;
use jewelshot_domain::{view::JobView, JobId};
use serde::Serialize;

use crate::{
    app::{print, App, Failure, Report},
    cli::JobsCmd,
};

pub async fn run(cmd: JobsCmd, app: &App) -> Result<(), Failure> {
    match cmd {
        JobsCmd::List { status, user, limit } => {
            let user = app.user_opt(user.as_deref()).await?;
            let rows = app.db.list_jobs(user, status, None, limit.clamp(1, 1000)).await?;
            let ids: Vec<JobId> = rows.iter().map(|j| j.id).collect();
            let mut steps = app.db.steps_of(&ids).await?;
            let line = if rows.iter().any(|j| j.status == jewelshot_domain::JobStatus::Queued) {
                app.line_if_reachable().await
            } else {
                None
            };
            let mut jobs = Vec::with_capacity(rows.len());
            for row in &rows {
                let position = app.position(line.as_ref(), row).await?;
                jobs.push(Shown::of(row, steps.remove(&row.id).unwrap_or_default(), position));
            }
            print(&Listed(jobs), app.json)
        }
        JobsCmd::Show { id } => {
            let row = app.db.job(id).await?.ok_or_else(|| Failure::failed(format!("no job {id}")))?;
            let steps = app.db.steps(id).await?;
            let line = app.line_if_reachable().await;
            let position = app.position(line.as_ref(), &row).await?;
            let mut shown = Shown::of(&row, steps, position);
            shown.view.notification = app.db.delivery(id).await?.map(|d| d.to_view());
            print(&shown, app.json)
        }
        JobsCmd::Cancel { id } => cancel(app, id).await,
    }
}

/// The same cancel as `DELETE /api/jobs/{id}` (any user's job): the row, then the line.
async fn cancel(app: &App, id: JobId) -> Result<(), Failure> {
    let queue = app.queue().await;
    let line = match &queue {
        Ok(q) => Some(app.line(q)),
        Err(e) => {
            eprintln!("warning: {}; the job is canceled in Postgres and skipped when dispatched", e.message());
            None
        }
    };
    let line = line.as_ref().map(|l| (l, &app.cfg.queue.snapshots));
    match jewelshot_queue::cancel(line, &app.db, id, None).await? {
        CancelOutcome::Canceled(row) => {
            let steps = app.db.steps(id).await?;
            print(&Canceled(Shown::of(&row, steps, 0)), app.json)
        }
        CancelOutcome::NotFound => Err(Failure::failed(format!("no job {id}"))),
        CancelOutcome::NotCancelable(status) => {
            Err(Failure::failed(format!("job {id} is {status}; only queued or processing jobs can be canceled")))
        }
    }
}

/// A job as operators see it: what clients see, plus who runs it and its input.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Shown {
    #[serde(flatten)]
    view: JobView,
    user_id: String,
    input_url: String,
    webhook_url: Option<String>,
    worker_id: Option<String>,
    max_attempts: i32,
    #[serde(skip)]
    step_errors: Vec<Option<String>>,
}

impl Shown {
    fn of(row: &JobRow, steps: Vec<StepRow>, position: i64) -> Self {
        let view = row.to_view(&steps, position, None);
        let step_errors =
            view.steps.iter().map(|v| steps.iter().find(|s| s.name == v.name).and_then(|s| s.error.clone())).collect();
        Self {
            view,
            user_id: row.user_id.to_string(),
            input_url: row.input_url.clone(),
            webhook_url: row.webhook_url.clone(),
            worker_id: row.worker_id.clone(),
            max_attempts: row.max_attempts,
            step_errors,
        }
    }

    fn line(&self) -> String {
        let v = &self.view;
        let prompt: String = v.prompt.chars().take(40).collect();
        let status =
            if v.queue_position > 0 { format!("{} #{}", v.status, v.queue_position) } else { v.status.to_string() };
        format!(
            "{:<26}  {:<14}  {:<7}  {:>8}  {:<20}  {}",
            v.job_id,
            status,
            v.priority,
            format!("{}/{}", v.attempts, self.max_attempts),
            v.created_at.format("%Y-%m-%d %H:%M:%S"),
            prompt
        )
    }
}

impl Report for Shown {
    fn text(&self) -> String {
        let v = &self.view;
        let mut out = format!("job        {}\nuser       {}\n", v.job_id, self.user_id);
        let place = if v.queue_position > 0 { format!(" (position {})", v.queue_position) } else { String::new() };
        out += &format!("status     {}{place}\npriority   {}\n", v.status, v.priority);
        out += &format!(
            "attempts   {}/{}\nprompt     {}\ninput      {}\n",
            v.attempts, self.max_attempts, v.prompt, self.input_url
        );
        let optional = [
            ("webhook", self.webhook_url.clone()),
            ("result", v.image_url.clone()),
            ("error", v.error.as_ref().map(|e| format!("{}: {}", e.code, e.message))),
            (
                "delivery",
                v.notification.as_ref().map(|n| {
                    let error = n.error.as_ref().map(|e| format!(" — {}: {}", e.code, e.message)).unwrap_or_default();
                    format!("{} {} ({}/{} attempts){error}", n.event, n.state, n.attempts, n.max_attempts)
                }),
            ),
            ("worker", self.worker_id.clone()),
        ];
        for (label, value) in optional {
            if let Some(value) = value {
                out += &format!("{label:<10} {value}\n");
            }
        }
        out += &format!("created    {}\nupdated    {}\nsteps:\n", v.created_at.to_rfc3339(), v.updated_at.to_rfc3339());
        for (s, error) in v.steps.iter().zip(&self.step_errors) {
            out += &format!(
                "  {:<16} {:<9} attempts={} finished={} {}\n",
                s.name,
                s.status,
                s.attempts,
                s.finished_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
                error.as_deref().unwrap_or("")
            );
        }
        out
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Listed(Vec<Shown>);

impl Report for Listed {
    fn text(&self) -> String {
        let mut out =
            format!("{:<26}  {:<14}  {:<7}  {:>8}  {:<20}  PROMPT\n", "ID", "STATUS", "PRIO", "ATTEMPTS", "CREATED");
        for j in &self.0 {
            out += &j.line();
            out.push('\n');
        }
        out
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Canceled(Shown);

impl Report for Canceled {
    fn text(&self) -> String {
        format!("job {} canceled (a running fal request is canceled by its worker)", self.0.view.job_id)
    }
}
