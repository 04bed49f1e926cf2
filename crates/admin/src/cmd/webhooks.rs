//! `jewelshot webhooks list | resend`: the deliveries the workers owe or owed, and a way to make
//! failed ones due again (workers pick them up within their poll interval).

use jewelshot_db::deliveries::DeliveryRow;
use jewelshot_domain::view::NotificationView;
use serde::Serialize;

use crate::{
    app::{print, App, Failure, Report},
    cli::WebhooksCmd,
};

pub async fn run(cmd: WebhooksCmd, app: &App) -> Result<(), Failure> {
    match cmd {
        WebhooksCmd::List { state, user, limit } => {
            let user = app.user_opt(user.as_deref()).await?;
            let rows = app.db.list_deliveries(state, user, limit.clamp(1, 10_000)).await?;
            print(&Listed(rows.iter().map(Shown::of).collect()), app.json)
        }
        WebhooksCmd::Resend { jobs, failed, user } => {
            if jobs.is_empty() && !failed {
                return Err(Failure::usage("say which deliveries: job ids, or --failed"));
            }
            let user = app.user_opt(user.as_deref()).await?;
            let rows = app.db.resend_deliveries(&jobs, user).await?;
            if let Some(missing) = jobs.iter().find(|j| !rows.iter().any(|r| r.job_id == **j)) {
                eprintln!("warning: job {missing} has no delivery to resend (none owed, or one is being sent now)");
            }
            print(&Resent(rows.iter().map(Shown::of).collect()), app.json)
        }
    }
}

/// A delivery as operators see it: what the client sees, plus where it goes.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Shown {
    job_id: String,
    user_id: String,
    url: String,
    #[serde(flatten)]
    view: NotificationView,
}

impl Shown {
    fn of(row: &DeliveryRow) -> Self {
        Self {
            job_id: row.job_id.to_string(),
            user_id: row.user_id.to_string(),
            url: row.url.clone(),
            view: row.to_view(),
        }
    }

    fn line(&self) -> String {
        let v = &self.view;
        let error = v.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
        let when = v.last_attempt_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into());
        format!(
            "{:<26}  {:<9}  {:>5}  {:<19}  {:<13}  {}  {}",
            self.job_id,
            v.state,
            format!("{}/{}", v.attempts, v.max_attempts),
            when,
            v.event,
            self.url,
            error
        )
    }
}

#[derive(Serialize)]
struct Listed(Vec<Shown>);

impl Report for Listed {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no deliveries".into();
        }
        let mut out = format!(
            "{:<26}  {:<9}  {:>5}  {:<19}  {:<13}  url  error\n",
            "job", "state", "tries", "last attempt", "event"
        );
        for s in &self.0 {
            out += &s.line();
            out.push('\n');
        }
        out
    }
}

#[derive(Serialize)]
struct Resent(Vec<Shown>);

impl Report for Resent {
    fn text(&self) -> String {
        let mut out = format!("resending {} delivery(ies)\n", self.0.len());
        for s in &self.0 {
            out += &format!("  {}  {}\n", s.job_id, s.url);
        }
        out
    }
}
