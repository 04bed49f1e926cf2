//! `jewelshot migrate`.

use serde::Serialize;

use crate::app::{print, App, Failure, Report};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Migrated {
    applied: Vec<String>,
    /// Webhook secrets sealed again under the current key (plaintext ones from before V8, or
    /// ones under an older key).
    secrets_resealed: u64,
    secrets_unopenable: u64,
}

impl Report for Migrated {
    fn text(&self) -> String {
        let mut out: String = self.applied.iter().map(|m| format!("applied {m}\n")).collect();
        if self.applied.is_empty() {
            out += "database is up to date\n";
        }
        if self.secrets_resealed > 0 {
            out += &format!("sealed {} webhook secrets under the current key\n", self.secrets_resealed);
        }
        if self.secrets_unopenable > 0 {
            out += &format!(
                "{} webhook secrets are sealed under a key that is not configured (`jewelshot secrets status`)\n",
                self.secrets_unopenable
            );
        }
        out
    }
}

/// Apply the migrations, then seal what is not sealed under the current key.
pub async fn run(app: &App) -> Result<(), Failure> {
    let applied = app.db.migrate().await?;
    let done = app.db.rewrap_secrets().await?;
    print(&Migrated { applied, secrets_resealed: done.resealed, secrets_unopenable: done.unopenable }, app.json)
}
