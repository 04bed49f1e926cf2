//! `jewelshot secrets new-key | status | rewrap`: the keys webhook secrets are sealed with.

use jewelshot_db::secrets::{new_key as random_key, PLAINTEXT};
use serde::Serialize;

use crate::{
    app::{print, App, Failure, Report},
    cli::SecretsCmd,
};

pub async fn run(cmd: SecretsCmd, app: &App) -> Result<(), Failure> {
    match cmd {
        SecretsCmd::NewKey { id } => new_key(&id, app.json),
        SecretsCmd::Status => {
            let counts = app.db.secret_counts().await?;
            let current = app.db.keyring().current().map(str::to_owned);
            let keys = counts
                .into_iter()
                .map(|(key_id, secrets)| KeyUse {
                    current: current.as_deref() == Some(key_id.as_str()),
                    configured: key_id == PLAINTEXT
                        || app.cfg.secrets.keys.keys().any(|k| k.eq_ignore_ascii_case(&key_id)),
                    key_id,
                    secrets,
                })
                .collect();
            print(&Status { current, keys }, app.json)
        }
        SecretsCmd::Rewrap => {
            if app.db.keyring().current().is_none() {
                return Err(Failure::usage("no JEWELSHOT_SECRETS__KEYS__* is set: there is no key to seal with"));
            }
            let done = app.db.rewrap_secrets().await?;
            print(&Rewrapped { resealed: done.resealed, unopenable: done.unopenable }, app.json)?;
            if done.unopenable > 0 {
                return Err(Failure::failed(format!(
                    "{} secrets are sealed under keys that are not configured",
                    done.unopenable
                )));
            }
            Ok(())
        }
    }
}

/// Print a fresh key (needs no database).
pub fn new_key(id: &str, json: bool) -> Result<(), Failure> {
    let id = if id.is_empty() { format!("k{}", chrono::Utc::now().format("%Y%m%d")) } else { id.to_ascii_lowercase() };
    if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') || id == PLAINTEXT {
        return Err(Failure::usage("a key id is lower-case letters, digits, - and _ (not `plaintext`)"));
    }
    print(&NewKey { env: format!("JEWELSHOT_SECRETS__KEYS__{}", id.to_ascii_uppercase()), key: random_key(), id }, json)
}

#[derive(Serialize)]
struct NewKey {
    id: String,
    env: String,
    key: String,
}

impl Report for NewKey {
    fn text(&self) -> String {
        format!(
            "{}={}\n# add it beside the keys already set, point JEWELSHOT_SECRETS__CURRENT at {:?} on every \
             process, then `jewelshot secrets rewrap`\n",
            self.env, self.key, self.id
        )
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyUse {
    key_id: String,
    secrets: i64,
    current: bool,
    /// False: this process cannot open these secrets (the key was removed too early).
    configured: bool,
}

#[derive(Serialize)]
struct Status {
    current: Option<String>,
    keys: Vec<KeyUse>,
}

impl Report for Status {
    fn text(&self) -> String {
        let mut out = match &self.current {
            Some(c) => format!("new secrets are sealed with key {c}\n"),
            None => "no key is configured: new secrets are stored unencrypted\n".to_owned(),
        };
        out += &format!("{:<20}  {:>8}  NOTE\n", "KEY", "SECRETS");
        for k in &self.keys {
            let note = match (k.current, k.configured, k.key_id == PLAINTEXT) {
                (true, _, _) => "current",
                (_, _, true) => "not encrypted: `jewelshot secrets rewrap` once a key is set",
                (_, false, _) => "KEY MISSING: these secrets cannot be opened",
                _ => "older key: `jewelshot secrets rewrap`, then it can be removed",
            };
            out += &format!("{:<20}  {:>8}  {note}\n", k.key_id, k.secrets);
        }
        out
    }
}

#[derive(Serialize)]
struct Rewrapped {
    resealed: u64,
    unopenable: u64,
}

impl Report for Rewrapped {
    fn text(&self) -> String {
        format!("sealed {} secrets under the current key; {} could not be opened\n", self.resealed, self.unopenable)
    }
}

/// `jewelshot console-token`: a new operator token and its digest.
pub fn console_token(json: bool) -> Result<(), Failure> {
    use sha2::Digest;
    let token = format!("jso_{}", random_key().trim_end_matches('='));
    let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    print(&ConsoleToken { env: format!("JEWELSHOT_CONSOLE__TOKEN_HASHES=[\"{digest}\"]"), digest, token }, json)
}

#[derive(Serialize)]
struct ConsoleToken {
    token: String,
    digest: String,
    env: String,
}

impl Report for ConsoleToken {
    fn text(&self) -> String {
        format!(
            "operator token: {}\n{}\n# give the token to the operator (it is not kept); set the digest on every gateway, \
             beside the digests already there\n",
            self.token, self.env
        )
    }
}
