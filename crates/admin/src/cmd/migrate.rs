//! `jewelshot migrate`.

use serde::Serialize;

use crate::app::{print, App, Failure, Report};

#[derive(Serialize)]
struct Migrated {
    applied: Vec<String>,
}

impl Report for Migrated {
    fn text(&self) -> String {
        if self.applied.is_empty() {
            return "database is up to date".into();
        }
        self.applied.iter().map(|m| format!("applied {m}\n")).collect()
    }
}

pub async fn run(app: &App) -> Result<(), Failure> {
    let applied = app.db.migrate().await?;
    print(&Migrated { applied }, app.json)
}
