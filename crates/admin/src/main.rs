//! `jewelshot`: the operator CLI — migrations, users and API keys, job inspection and cancel,
//! queue stats, requeue, and the image pipeline on a file. Reads the same
//! `JEWELSHOT_DATABASE__*` / `JEWELSHOT_QUEUE__*` / `JEWELSHOT_FAL__*` settings as the services.
//!
//! `--json` makes every command print one JSON value on stdout and nothing else (a failure is
//! `{"error": {"kind", "message"}}`). Exit codes: 0 ok, 1 failed, 2 usage, 3 Postgres or Redis
//! unreachable.
//!
//! ## Layout
//! - `cli` — the commands and their arguments (clap).
//! - `app` — configuration, connections, [`app::Report`] printing, [`app::Failure`] exit codes.
//! - `cmd` — one module per command.

mod app;
mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    app::{App, Config, Failure},
    cli::{Cli, Cmd},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let result = match cli.cmd {
        Cmd::Compress(args) => cmd::compress::run(&args, json),
        Cmd::Probe { url, timeout_ms } => cmd::probe::run(&url, timeout_ms, json),
        Cmd::Secrets { cmd: cli::SecretsCmd::NewKey { id } } => cmd::secrets::new_key(&id, json),
        Cmd::ConsoleToken => cmd::secrets::console_token(json),
        cmd => run(cmd, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(json),
    }
}

fn run(cmd: Cmd, json: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async {
        let _telemetry = jewelshot_runtime::init_tracing("jewelshot-cli", "warn");
        let app = App::new(Config::load()?, json)?;
        let result = cmd::run(cmd, &app).await;
        app.publish_changes().await;
        result
    })
}
