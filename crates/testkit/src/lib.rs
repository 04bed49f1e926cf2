//! # jewelshot-testkit
//!
//! Dev-only helpers so every test runs on the real parts and isolates itself: a fresh Postgres
//! database per test (named by ULID, migrated), a unique Redis queue name, a temporary storage
//! root, and the real binaries started on port 0.
//!
//! ## Layout
//! - [`db`] — [`fresh_database`] / [`fresh_database_on`] (`jewelshot_test_<ulid>`, migrated),
//!   [`TestDb`], [`unique_queue_name`], [`admin_database_url`], [`redis_url`].
//! - [`hooks`] — [`hooks::Receiver`], a webhook endpoint that records deliveries, answers
//!   scripted statuses or hangs, and counts the connections it holds.
//! - [`processes`] — [`Proc`] (a spawned binary, killed when dropped; SIGKILL/SIGTERM on
//!   demand), [`bin_path`], [`repo_root`], [`fixture_photo`], [`python`], [`venv_tool`].
//! - [`servers`] — servers of a test's own: [`S3Server`] (s3s-fs), [`RedisServer`],
//!   [`PgServer`]; [`serve_files`] / [`serve_shared_files`] (plain HTTP files for others to fetch); [`s3s_bin`], [`S3_ACCESS_KEY`], [`S3_SECRET_KEY`].
//! - [`stack`] — [`Stack`] (emulator + gateway, workers on demand, wired to one database and
//!   queue), [`StackOptions`], [`StorageKind`], [`WorkerTweak`], [`config_env`].

pub mod browser;
pub mod db;
pub mod hooks;
pub mod otlp;
pub mod processes;
pub mod servers;
pub mod sse;
pub mod stack;
pub mod tls;

pub use db::{
    admin_database_url, fresh_database, fresh_database_on, queue_config, redis_cluster, redis_url, unique_queue_name,
    TestDb,
};
pub use processes::{bin_path, fixture_photo, python, repo_root, venv_tool, Proc};
pub use servers::{
    s3s_bin, serve_files, serve_shared_files, PgServer, RedisCluster, RedisServer, S3Server, SharedFiles,
    S3_ACCESS_KEY, S3_SECRET_KEY,
};
pub use stack::{config_env, Stack, StackOptions, StorageKind, WorkerTweak};
