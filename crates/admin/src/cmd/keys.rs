//! `jewelshot keys create | list | revoke`. A key is printed once, when it is made; lists show
//! only its first characters.

use chrono::{DateTime, Utc};
use jewelshot_db::users::ApiKeyInfo;
use serde::Serialize;

use crate::{
    app::{print, App, Failure, Report},
    cli::KeysCmd,
};

pub async fn run(cmd: KeysCmd, app: &App) -> Result<(), Failure> {
    match cmd {
        KeysCmd::Create { user, name } => {
            let id = app.user(&user).await?;
            let k = app.db.create_api_key(id, &name).await?;
            if !app.json {
                eprintln!("API key for {user} (shown once; store it now):");
            }
            print(&Issued { id: k.id, user_id: id.to_string(), key: k.key }, app.json)
        }
        KeysCmd::List { user } => {
            let user = app.user_opt(user.as_deref()).await?;
            let keys = app.db.list_api_keys(user).await?;
            print(&Keys(keys.iter().map(KeyOut::of).collect()), app.json)
        }
        KeysCmd::Revoke { key } => match app.db.revoke_api_key(&key).await? {
            Some(k) => {
                app.announce_auth_change(&format!("key:{}", k.id)).await;
                print(&Revoked(KeyOut::of(&k)), app.json)
            }
            None => Err(Failure::failed("no such key (give its id from `keys list`, or the key itself)")),
        },
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Issued {
    id: String,
    user_id: String,
    key: String,
}

impl Report for Issued {
    fn text(&self) -> String {
        self.key.clone()
    }
}

/// A key as listed: never the key itself.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyOut {
    id: String,
    user_id: String,
    email: String,
    name: String,
    /// The key's first characters, to recognise it.
    prefix: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl KeyOut {
    fn of(k: &ApiKeyInfo) -> Self {
        Self {
            id: k.id.clone(),
            user_id: k.user_id.to_string(),
            email: k.email.clone(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }

    fn state(&self) -> String {
        match self.revoked_at {
            Some(t) => format!("revoked {}", t.format("%Y-%m-%d %H:%M:%S")),
            None => "active".into(),
        }
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Keys(Vec<KeyOut>);

impl Report for Keys {
    fn text(&self) -> String {
        let mut out = format!("{:<26}  {:<12}  {:<28}  {:<20}  NAME / USER\n", "ID", "PREFIX", "STATE", "CREATED");
        for k in &self.0 {
            out += &format!(
                "{:<26}  {:<12}  {:<28}  {:<20}  {} / {}\n",
                k.id,
                format!("{}…", k.prefix),
                k.state(),
                k.created_at.format("%Y-%m-%d %H:%M:%S"),
                if k.name.is_empty() { "-" } else { &k.name },
                k.email
            );
        }
        out
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Revoked(KeyOut);

impl Report for Revoked {
    fn text(&self) -> String {
        format!("key {} ({}…) of {} is {}", self.0.id, self.0.prefix, self.0.email, self.0.state())
    }
}
