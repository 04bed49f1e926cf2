//! The command line: every command, its arguments and their help.

use clap::{Parser, Subcommand};
use jewelshot_domain::{DeliveryState, JobId, JobStatus};

#[derive(Debug, Parser)]
#[command(name = "jewelshot", version, about = "JewelShot operator CLI")]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Apply pending database migrations.
    Migrate,
    /// Manage users.
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Inspect jobs.
    Jobs {
        #[command(subcommand)]
        cmd: JobsCmd,
    },
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
    /// Webhook deliveries: list them (failed ones first of all) and resend.
    Webhooks {
        #[command(subcommand)]
        cmd: WebhooksCmd,
    },
    /// Webhook-secret encryption keys: make one, see what each key seals, seal again under the
    /// current key.
    Secrets {
        #[command(subcommand)]
        cmd: SecretsCmd,
    },
    /// Put failed or stuck jobs back in line. Finished steps are kept (a finished generation is
    /// never paid for again) unless --from-start. Safe to run twice.
    Requeue(RequeueArgs),
    /// Run the upload compression pipeline on a file and report what it did.
    Compress(CompressArgs),
    /// Make an operator token for the console at `/admin`: prints the token (not kept anywhere)
    /// and the SHA-256 digest the gateways are configured with.
    ConsoleToken,
    /// Exit 0 if URL answers 2xx within the timeout, else 1: the containers' health check
    /// (`jewelshot probe http://127.0.0.1:8080/healthz`), with no curl in the image.
    Probe {
        url: String,
        /// Longest wait, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

#[derive(Debug, clap::Args)]
pub struct CompressArgs {
    pub input: std::path::PathBuf,
    pub output: std::path::PathBuf,
    /// Longest side, in pixels.
    #[arg(long, default_value_t = 1920)]
    pub max_side: u32,
    /// Starting quality.
    #[arg(long, default_value_t = 80)]
    pub quality: u8,
    /// Largest output, in bytes.
    #[arg(long, default_value_t = 500_000)]
    pub max_bytes: usize,
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Create a user; prints its id and webhook signing secret.
    Create {
        #[arg(long)]
        email: String,
        /// Plan name (e.g. free, pro).
        #[arg(long, default_value = "free")]
        plan: String,
    },
    /// List users with their plan and number of active keys.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Change a user's plan (which decides, e.g., whether `high` priority is allowed).
    SetPlan {
        /// User email or id.
        user: String,
        plan: String,
    },
    /// Give a user a new webhook signing secret (printed once). Until the overlap ends every
    /// delivery carries a signature by the old secret and one by the new, so the receiver can
    /// switch at any moment in between.
    RotateWebhookSecret {
        /// User email or id.
        user: String,
        /// How long the old secret keeps signing beside the new one (e.g. 24h, 30m, 0s).
        #[arg(long, default_value = "24h")]
        overlap: humantime::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Print a new random key, as the environment line that configures it.
    NewKey {
        /// The key's id (stored beside every secret it seals).
        #[arg(long, default_value = "")]
        id: String,
    },
    /// How many webhook secrets each key seals (`plaintext`: not encrypted), and the current key.
    Status,
    /// Seal every secret stored as plaintext or under another key with the current key (also
    /// done by `migrate`). Afterwards, old keys can be removed from the environment.
    Rewrap,
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Issue an API key for a user (by email or id). The key is printed once and never again.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List API keys (their first characters only: a key is never shown again).
    List {
        /// Only this user's keys (email or id).
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key, by its id or by the key itself: every gateway refuses it from then on.
    Revoke {
        /// The key's id (from `keys list`) or the whole key.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        status: Option<JobStatus>,
        /// User email or id.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Show one job with its steps.
    Show { id: JobId },
    /// Cancel a queued or processing job (its place in line frees at once).
    Cancel { id: JobId },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// List deliveries, newest first, with their state, attempts and last error.
    List {
        /// pending, sending, delivered or failed.
        #[arg(long)]
        state: Option<DeliveryState>,
        /// User email or id.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send deliveries again with fresh attempts (same message id: receivers deduplicate).
    Resend {
        /// These jobs' deliveries (in any state but one being sent right now).
        #[arg(value_name = "JOB_ID")]
        jobs: Vec<JobId>,
        /// Every failed delivery (of --user, when given).
        #[arg(long, conflicts_with = "jobs")]
        failed: bool,
        /// With --failed: only this user's (email or id).
        #[arg(long, requires = "failed")]
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Job counts (Postgres) and queue depths (Redis).
    Stats,
}

/// Which jobs `requeue` takes, and how.
#[derive(Debug, clap::Args)]
pub struct RequeueArgs {
    /// Jobs that ended `failed`.
    #[arg(long)]
    pub failed: bool,
    /// Jobs `processing` with no progress for this long (default 10m when given bare).
    #[arg(long, value_name = "AGE", num_args = 0..=1, default_missing_value = "10m")]
    pub stuck: Option<humantime::Duration>,
    /// These jobs (failed or processing), by id.
    #[arg(long = "job", value_name = "ID", num_args = 1..)]
    pub jobs: Vec<JobId>,
    /// Only jobs that finished (or last changed) within this long, e.g. 1h, 30m, 2d.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<humantime::Duration>,
    /// Only this user's jobs (email or id).
    #[arg(long)]
    pub user: Option<String>,
    /// Only jobs that failed with this error code, e.g. upstream-unavailable.
    #[arg(long)]
    pub error_code: Option<String>,
    /// List what would be requeued and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run every step again, including a finished generate-image (pays fal again).
    #[arg(long)]
    pub from_start: bool,
    /// At most this many jobs in one run.
    #[arg(long, default_value_t = 10_000)]
    pub limit: i64,
}
