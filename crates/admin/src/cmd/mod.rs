//! One module per command. Each returns a [`Report`](crate::app::Report) (printed as JSON or
//! text by the caller) or a [`Failure`](crate::app::Failure) that decides the exit code.

pub mod compress;
pub mod jobs;
pub mod keys;
pub mod migrate;
pub mod probe;
pub mod queue;
pub mod requeue;
pub mod secrets;
pub mod users;
pub mod webhooks;

use crate::{
    app::{App, Failure},
    cli::Cmd,
};

/// Run a command that needs the database (every one but `compress`).
pub async fn run(cmd: Cmd, app: &App) -> Result<(), Failure> {
    match cmd {
        Cmd::Migrate => migrate::run(app).await,
        Cmd::Users { cmd } => users::run(cmd, app).await,
        Cmd::Keys { cmd } => keys::run(cmd, app).await,
        Cmd::Jobs { cmd } => jobs::run(cmd, app).await,
        Cmd::Queue { cmd } => queue::run(cmd, app).await,
        Cmd::Webhooks { cmd } => webhooks::run(cmd, app).await,
        Cmd::Secrets { cmd } => secrets::run(cmd, app).await,
        Cmd::Requeue(args) => requeue::run(&args, app).await,
        Cmd::Compress(args) => compress::run(&args, app.json),
        Cmd::Probe { url, timeout_ms } => probe::probe(&url, timeout_ms, app.json).await,
        Cmd::ConsoleToken => secrets::console_token(app.json),
    }
}
