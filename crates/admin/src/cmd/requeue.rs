//! `jewelshot requeue`: put failed or stuck jobs back where they belong — the dispatch line for
//! those that never reached fal, a task of their own for the others (finished steps kept unless
//! `--from-start`). Safe to run twice: a job changed since it was listed is skipped.

use chrono::{DateTime, Utc};
use jewelshot_db::{jobs::JobRow, requeue::RequeueFilter};
use serde::Serialize;

use crate::{
    app::{print, App, Failure, Report},
    cli::RequeueArgs,
};

pub async fn run(args: &RequeueArgs, app: &App) -> Result<(), Failure> {
    if !args.failed && args.stuck.is_none() && args.jobs.is_empty() {
        return Err(Failure::usage("say which jobs: --failed, --stuck [AGE] or --job ID…"));
    }
    let filter = filter(args, app).await?;
    let candidates = app.db.requeue_candidates(&filter).await?;
    let mut report = Requeued {
        dry_run: args.dry_run,
        from_start: args.from_start,
        candidates: candidates.iter().map(Candidate::of).collect(),
        requeued: 0,
        skipped: 0,
        failed: Vec::new(),
    };
    if !args.dry_run && !candidates.is_empty() {
        requeue_all(app, &candidates, args.from_start, &mut report).await?;
    }
    print(&report, app.json)?;
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "{} job(s) could not be enqueued; run the same command again",
            report.failed.len()
        )))
    }
}

async fn filter(args: &RequeueArgs, app: &App) -> Result<RequeueFilter, Failure> {
    let ago = |d: humantime::Duration| -> Result<DateTime<Utc>, Failure> {
        let d = chrono::Duration::from_std(*d).map_err(|_| Failure::usage(format!("{d} is too long")))?;
        Ok(Utc::now() - d)
    };
    Ok(RequeueFilter {
        failed: args.failed,
        stuck_before: args.stuck.map(ago).transpose()?,
        jobs: args.jobs.clone(),
        since: args.since.map(ago).transpose()?,
        user: app.user_opt(args.user.as_deref()).await?,
        error_code: args.error_code.clone(),
        limit: args.limit.clamp(1, 1_000_000),
    })
}

async fn requeue_all(app: &App, candidates: &[JobRow], from_start: bool, report: &mut Requeued) -> Result<(), Failure> {
    let queue = app.queue().await?;
    let line = app.line(&queue);
    let bar =
        if app.json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(candidates.len() as u64) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for job in candidates {
        match jewelshot_queue::requeue(&app.db, &line, &queue, job, from_start).await? {
            jewelshot_queue::Requeued::Done(_) => report.requeued += 1,
            // Changed since it was listed (e.g. another requeue).
            jewelshot_queue::Requeued::Skipped => report.skipped += 1,
            jewelshot_queue::Requeued::NotEnqueued(e) => {
                report.failed.push(NotEnqueued { id: job.id.to_string(), error: e.to_string() })
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Requeued {
    dry_run: bool,
    from_start: bool,
    candidates: Vec<Candidate>,
    requeued: u64,
    skipped: u64,
    failed: Vec<NotEnqueued>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    id: String,
    status: String,
    error_code: Option<String>,
    attempts: i32,
    max_attempts: i32,
    updated_at: DateTime<Utc>,
}

impl Candidate {
    fn of(j: &JobRow) -> Self {
        Self {
            id: j.id.to_string(),
            status: j.status.to_string(),
            error_code: j.error_code.clone(),
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            updated_at: j.updated_at,
        }
    }
}

#[derive(Serialize)]
struct NotEnqueued {
    id: String,
    error: String,
}

impl Report for Requeued {
    fn text(&self) -> String {
        let mut out = String::new();
        for j in &self.candidates {
            out += &format!(
                "{}  {:<10}  {:<24}  attempts {}/{}  {}\n",
                j.id,
                j.status,
                j.error_code.as_deref().unwrap_or("-"),
                j.attempts,
                j.max_attempts,
                j.updated_at.format("%Y-%m-%d %H:%M:%S")
            );
        }
        if self.dry_run {
            out += &format!("dry run: would requeue {} job(s); nothing changed\n", self.candidates.len());
            return out;
        }
        if self.candidates.is_empty() {
            return out + "nothing to requeue\n";
        }
        for f in &self.failed {
            out += &format!("job {}: could not be enqueued ({}); left as it was\n", f.id, f.error);
        }
        out += &format!(
            "requeued {}, skipped {} (changed meanwhile), failed to enqueue {}{}\n",
            self.requeued,
            self.skipped,
            self.failed.len(),
            if self.from_start { " — all steps will run again" } else { " — finished steps kept" }
        );
        out
    }
}
