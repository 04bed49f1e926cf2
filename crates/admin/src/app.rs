//! What every command shares: configuration, the connections it opens, how it prints, and how
//! it fails (exit codes: 0 ok, 1 failed, 2 usage, 3 a dependency unreachable).

use std::process::ExitCode;

use figment::{
    providers::{Env, Serialized},
    Figment,
};
use jewelshot_db::{jobs::JobRow, secrets::Keyring, Db, DbConfig, DbError};
use jewelshot_domain::{JobId, UserId};
use jewelshot_queue::{Queue, QueueConfig, QueueError};
use jewelshot_ratelimit::{Limiter, LineSettings};
use serde::{Deserialize, Serialize};

/// What the CLI reads: the same `JEWELSHOT_DATABASE__*`, `JEWELSHOT_QUEUE__*` and
/// `JEWELSHOT_FAL__{LIMITER_PREFIX,HIGH_BURST}` settings as the services.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub database: DbConfig,
    /// `JEWELSHOT_SECRETS__*`: the keys webhook secrets are sealed with.
    pub secrets: jewelshot_db::secrets::SecretsConfig,
    pub queue: QueueConfig,
    pub fal: LineSettings,
}

impl Config {
    pub fn load() -> Result<Self, Failure> {
        let cfg: Self = Figment::from(Serialized::defaults(Config::default()))
            .merge(Env::prefixed("JEWELSHOT_").split("__"))
            .extract()
            .map_err(|e| Failure::usage(format!("reading JEWELSHOT_* configuration: {e}")))?;
        cfg.queue.check_line(&cfg.fal).map_err(Failure::usage)?;
        Ok(cfg)
    }
}

/// How a command failed; decides the exit code.
#[derive(Debug)]
pub struct Failure {
    kind: FailureKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The command ran and did not succeed (exit 1).
    Failed,
    /// The command was asked wrongly (exit 2, as clap's own usage errors).
    Usage,
    /// Postgres or Redis did not answer (exit 3).
    Unreachable,
}

impl Failure {
    pub fn failed(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Failed, message: message.into() }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Usage, message: message.into() }
    }

    pub fn unreachable(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Unreachable, message: message.into() }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Say what failed (one JSON object on stdout with `--json`, else a line on stderr) and
    /// give the exit code.
    pub fn report(&self, json: bool) -> ExitCode {
        let (code, name) = match self.kind {
            FailureKind::Failed => (1, "failed"),
            FailureKind::Usage => (2, "usage"),
            FailureKind::Unreachable => (3, "unreachable"),
        };
        if json {
            println!("{}", serde_json::json!({ "error": { "kind": name, "message": self.message } }));
        } else {
            eprintln!("error: {}", self.message);
        }
        ExitCode::from(code)
    }
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            Self::unreachable(format!("PostgreSQL: {e}"))
        } else {
            Self::failed(e.to_string())
        }
    }
}

impl From<QueueError> for Failure {
    fn from(e: QueueError) -> Self {
        Self::unreachable(format!("Redis: {e}"))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::failed(format!("{e:#}"))
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Self::failed(e.to_string())
    }
}

/// A command's result: one JSON value with `--json`, text for people otherwise.
pub trait Report: Serialize {
    fn text(&self) -> String;
}

/// Print a report as the user asked.
pub fn print(report: &impl Report, json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        let text = report.text();
        if !text.is_empty() {
            println!("{}", text.trim_end());
        }
    }
    Ok(())
}

/// A command's connections, opened as it needs them.
pub struct App {
    pub cfg: Config,
    pub db: Db,
    pub json: bool,
    /// Jobs the command changed: their poll snapshots are published before it exits.
    changed: std::sync::Arc<Changed>,
}

/// The jobs a command changed ([`App::publish_changes`] writes their snapshots).
#[derive(Default)]
struct Changed(std::sync::Mutex<std::collections::BTreeSet<JobId>>);

impl jewelshot_db::snapshot::ChangeSink for Changed {
    fn changed(&self, jobs: &[JobId]) {
        if let Ok(mut set) = self.0.lock() {
            set.extend(jobs.iter().copied());
        }
    }
}

impl App {
    pub fn new(cfg: Config, json: bool) -> Result<Self, Failure> {
        let keyring = Keyring::from_config(&cfg.secrets).map_err(|e| Failure::usage(e.to_string()))?;
        let changed = std::sync::Arc::new(Changed::default());
        let db = Db::connect(&cfg.database)
            .map_err(|e| Failure::usage(e.to_string()))?
            .with_keyring(keyring)
            .with_changes(changed.clone());
        Ok(Self { cfg, db, json, changed })
    }

    /// Publish the poll snapshots of the jobs this command changed, so the gateways answer with
    /// the change at once. Without Redis a warning says so: polls may show a job's old state
    /// until its snapshot expires or its worker writes it again.
    pub async fn publish_changes(&self) {
        let jobs: Vec<JobId> = match self.changed.0.lock() {
            Ok(mut set) => std::mem::take(&mut *set).into_iter().collect(),
            Err(_) => return,
        };
        if jobs.is_empty() {
            return;
        }
        let published = match self.queue().await {
            Ok(queue) => {
                let line = self.line(&queue);
                let mut result = Ok(());
                for batch in jobs.chunks(500) {
                    result = jewelshot_queue::snapshots::publish(&line, &self.db, &self.cfg.queue.snapshots, batch)
                        .await
                        .map_err(|e| e.to_string());
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
            Err(e) => Err(e.message().to_owned()),
        };
        if let Err(e) = published {
            eprintln!(
                "warning: could not refresh what polls show of {} changed job(s) ({e}); polls may show their \
                 old state until their snapshot expires (JEWELSHOT_QUEUE__SNAPSHOTS__*)",
                jobs.len()
            );
        }
    }

    /// Tell every gateway to forget what it cached of `what` (`key:<id>`, `user:<id>`). Postgres
    /// already holds the change; if Redis cannot be reached the gateways' cache lifetime
    /// (`gateway.auth_cache_ttl_ms`) bounds how long they may still use the old answer.
    pub async fn announce_auth_change(&self, what: &str) {
        let sent = match jewelshot_queue::connect(&self.cfg.queue).await {
            Ok(mut conn) => jewelshot_queue::announce_auth_change(&mut conn, &self.cfg.queue, what).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            eprintln!(
                "warning: could not tell the gateways at once ({e}); they drop their cached copy within \
                 JEWELSHOT_GATEWAY__AUTH_CACHE_TTL_MS"
            );
        }
    }

    /// The queue in Redis (unreachable → exit 3).
    pub async fn queue(&self) -> Result<Queue, Failure> {
        Ok(Queue::connect(&self.cfg.queue).await?)
    }

    /// The dispatch line and the pool's state, read through the queue's connection.
    pub fn line(&self, queue: &Queue) -> Limiter {
        let timeout = std::time::Duration::from_millis(self.cfg.queue.timeout_ms);
        self.cfg.fal.reader(queue.connection(), &self.cfg.queue.name, timeout)
    }

    /// The line if Redis answers; commands that can do without it say so on stderr.
    pub async fn line_if_reachable(&self) -> Option<Limiter> {
        match self.queue().await {
            Ok(q) => Some(self.line(&q)),
            Err(e) => {
                eprintln!("warning: {}; positions from Postgres", e.message());
                None
            }
        }
    }

    /// A job's place in line (the dispatch line's when reachable, else Postgres's count).
    pub async fn position(&self, line: Option<&Limiter>, job: &JobRow) -> Result<i64, Failure> {
        Ok(match line {
            Some(l) => jewelshot_queue::position(l, &self.db, job, self.cfg.fal.high_burst).await?,
            None => self.db.queue_position(job).await?,
        })
    }

    /// A user by email or id.
    pub async fn user(&self, user: &str) -> Result<UserId, Failure> {
        if let Ok(id) = user.parse::<UserId>() {
            if self.db.user(id).await?.is_some() {
                return Ok(id);
            }
        }
        match self.db.user_by_email(user).await? {
            Some(u) => Ok(u.id),
            None => Err(Failure::failed(format!("no user with id or email `{user}`"))),
        }
    }

    pub async fn user_opt(&self, user: Option<&str>) -> Result<Option<UserId>, Failure> {
        match user {
            Some(u) => Ok(Some(self.user(u).await?)),
            None => Ok(None),
        }
    }
}
