//! `jewelshot users create | list | set-plan | rotate-webhook-secret`.

use chrono::{DateTime, Utc};
use jewelshot_db::users::{User, UserSummary};
use serde::Serialize;

use crate::{
    app::{print, App, Failure, Report},
    cli::UsersCmd,
};

pub async fn run(cmd: UsersCmd, app: &App) -> Result<(), Failure> {
    match cmd {
        UsersCmd::Create { email, plan } => {
            let (u, secret) = app.db.create_user_with_secret(&email, &plan).await?;
            let out = UserOut { webhook_secret: Some(secret.expose().to_owned()), ..UserOut::of(&u) };
            print(&Created(out), app.json)
        }
        UsersCmd::List { limit } => {
            let users = app.db.list_users(None, limit.clamp(1, 100_000)).await?;
            print(&Listed(users.iter().map(UserOut::summary).collect()), app.json)
        }
        UsersCmd::SetPlan { user, plan } => {
            let id = app.user(&user).await?;
            let u = app.db.set_plan(id, &plan).await?.ok_or_else(|| Failure::failed(format!("no user {id}")))?;
            app.announce_auth_change(&format!("user:{id}")).await;
            print(&PlanSet(UserOut::of(&u)), app.json)
        }
        UsersCmd::RotateWebhookSecret { user, overlap } => {
            let id = app.user(&user).await?;
            let r = app
                .db
                .rotate_webhook_secret(id, overlap.into())
                .await?
                .ok_or_else(|| Failure::failed(format!("no user {id}")))?;
            let out = RotatedOut {
                user: id.to_string(),
                webhook_secret: r.secret.expose().to_owned(),
                previous_signs_until: r.previous_until,
            };
            print(&out, app.json)
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RotatedOut {
    user: String,
    webhook_secret: String,
    /// Until when the replaced secret keeps signing beside the new one.
    previous_signs_until: Option<DateTime<Utc>>,
}

impl Report for RotatedOut {
    fn text(&self) -> String {
        let until = match self.previous_signs_until {
            Some(t) if t > Utc::now() => {
                format!("the old secret signs beside it until {}", t.format("%Y-%m-%d %H:%M:%S UTC"))
            }
            _ => "the old secret no longer signs".to_owned(),
        };
        format!("user {}\nnew webhook secret: {}\n{until}\n", self.user, self.webhook_secret)
    }
}

/// A user as the CLI prints it. The webhook secret only when it was just made.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserOut {
    id: String,
    email: String,
    plan: String,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_keys: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_secret: Option<String>,
}

impl UserOut {
    fn of(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email.clone(),
            plan: u.plan.clone(),
            created_at: u.created_at,
            active_keys: None,
            webhook_secret: None,
        }
    }

    fn summary(u: &UserSummary) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email.clone(),
            plan: u.plan.clone(),
            created_at: u.created_at,
            active_keys: Some(u.active_keys),
            webhook_secret: None,
        }
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Created(UserOut);

impl Report for Created {
    fn text(&self) -> String {
        let u = &self.0;
        format!(
            "user {} <{}> plan={}\nwebhook secret: {}",
            u.id,
            u.email,
            u.plan,
            u.webhook_secret.as_deref().unwrap_or("")
        )
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Listed(Vec<UserOut>);

impl Report for Listed {
    fn text(&self) -> String {
        let mut out = format!("{:<26}  {:<10}  {:>4}  {:<20}  EMAIL\n", "ID", "PLAN", "KEYS", "CREATED");
        for u in &self.0 {
            out += &format!(
                "{:<26}  {:<10}  {:>4}  {:<20}  {}\n",
                u.id,
                u.plan,
                u.active_keys.unwrap_or(0),
                u.created_at.format("%Y-%m-%d %H:%M:%S"),
                u.email
            );
        }
        out
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct PlanSet(UserOut);

impl Report for PlanSet {
    fn text(&self) -> String {
        format!("user {} <{}> is now on plan {}", self.0.id, self.0.email, self.0.plan)
    }
}
