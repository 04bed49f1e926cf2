//! Users, API keys and webhook signing secrets. A key is shown once at creation; only its
//! SHA-256 is stored, so a database leak does not leak usable keys. Webhook secrets are stored
//! sealed ([`crate::secrets`]) and opened only to sign.

use base64::Engine;
use chrono::{DateTime, Utc};
use jewelshot_domain::UserId;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::sql::Sql;
use crate::{
    secrets::{Sealed, WebhookSecret},
    Db, DbError, Result,
};

/// Every key starts with this, so leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "jsk_";

/// A user. Holds no secret: webhook secrets are read apart ([`Db::signing_secrets`]).
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub plan: String,
    pub created_at: DateTime<Utc>,
}

/// What [`Db::rotate_webhook_secret`] did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new current secret (shown once).
    pub secret: WebhookSecret,
    /// Until when the secrets it replaced keep signing beside it (`None` if there were none).
    pub previous_until: Option<DateTime<Utc>>,
}

/// What [`Db::rewrap_secrets`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrapped {
    /// Secrets sealed again under the current key.
    pub resealed: u64,
    /// Secrets under a key that is not configured (left as they are).
    pub unopenable: u64,
}

/// A freshly issued key: `key` is the only copy of the secret.
#[derive(Clone)]
pub struct IssuedKey {
    pub id: String,
    pub user_id: UserId,
    pub key: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Random bytes in a key: 32, written as 43 base64url characters after [`KEY_PREFIX`].
const KEY_BYTES: usize = 32;
const KEY_CHARS: usize = (KEY_BYTES * 4).div_ceil(3);

fn new_key() -> String {
    format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<KEY_BYTES>()))
}

/// Whether `token` has the shape of a key this system issues (prefix, length, alphabet). A
/// token that does not is refused before any lookup: strangers cost no database work.
pub fn is_key_shaped(token: &str) -> bool {
    token.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Hex SHA-256 of an API key, as stored.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A user as operators list them (no secret).
#[derive(Debug, Clone)]
pub struct UserSummary {
    pub id: UserId,
    pub email: String,
    pub plan: String,
    pub created_at: DateTime<Utc>,
    /// Keys not revoked.
    pub active_keys: i64,
}

/// An API key as operators list it: never the key, only its first characters.
#[derive(Debug, Clone)]
pub struct ApiKeyInfo {
    pub id: String,
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    /// The key's first characters (`jsk_` and six more), to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn key_from_row(row: &tokio_postgres::Row) -> Result<ApiKeyInfo> {
    let user: String = row.get("user_id");
    Ok(ApiKeyInfo {
        id: row.get("id"),
        user_id: user.parse().map_err(|_| DbError::Corrupt(format!("user id {user}")))?,
        email: row.get("email"),
        name: row.get("name"),
        prefix: row.get("prefix"),
        created_at: row.get("created_at"),
        last_used_at: row.get("last_used_at"),
        revoked_at: row.get("revoked_at"),
    })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

fn user_from_row(row: &tokio_postgres::Row) -> Result<User> {
    let id: String = row.get("id");
    Ok(User {
        id: id.parse().map_err(|_| DbError::Corrupt(format!("user id {id}")))?,
        email: row.get("email"),
        plan: row.get("plan"),
        created_at: row.get("created_at"),
    })
}

/// Columns of `users` (never `*`: the row is what [`User`] holds).
const USER_COLUMNS: &str = "id, email, plan, created_at";

impl Db {
    /// Create a user with a fresh webhook signing secret.
    pub async fn create_user(&self, email: &str, plan: &str) -> Result<User> {
        Ok(self.create_user_with_secret(email, plan).await?.0)
    }

    /// Without a key, secrets are stored as plaintext (development) — but never into a database
    /// whose secrets are sealed: a process that lacks the keys the others use fails instead of
    /// quietly weakening what it writes. Costs a query only when no key is configured.
    async fn may_seal(&self, conn: &crate::sql::Conn) -> Result<()> {
        if self.keyring.current().is_some() {
            return Ok(());
        }
        let sealed: bool = conn
            .query_one("SELECT EXISTS (SELECT 1 FROM webhook_secrets WHERE key_id <> 'plaintext')", &[])
            .await?
            .get(0);
        if sealed {
            return Err(crate::secrets::SecretsError::WouldStorePlaintext.into());
        }
        Ok(())
    }

    /// Create a user; also returns its webhook signing secret (the only time it is shown).
    pub async fn create_user_with_secret(&self, email: &str, plan: &str) -> Result<(User, WebhookSecret)> {
        let conn = self.conn().await?;
        self.may_seal(&conn).await?;
        let id = UserId::generate();
        let secret = WebhookSecret::generate();
        let sealed = self.keyring.seal(id, &secret);
        let row = conn
            .query_one(
                &format!(
                    "WITH u AS (INSERT INTO users (id, email, plan) VALUES ($1, $2, $3) RETURNING {USER_COLUMNS}),
                          s AS (INSERT INTO webhook_secrets (user_id, key_id, sealed) SELECT id, $4, $5 FROM u)
                     SELECT * FROM u"
                ),
                &[&id.to_string(), &email, &plan, &sealed.key_id, &sealed.bytes],
            )
            .await?;
        Ok((user_from_row(&row)?, secret))
    }

    /// The secrets that sign `user`'s deliveries now: the current one first, then any a
    /// rotation keeps signing until their `retires_at`.
    pub async fn signing_secrets(&self, user: UserId) -> Result<Vec<WebhookSecret>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT key_id, sealed, retires_at FROM webhook_secrets
                  WHERE user_id = $1 AND (retires_at IS NULL OR retires_at > now())
                  ORDER BY retires_at IS NOT NULL, id DESC",
                &[&user.to_string()],
            )
            .await?;
        // The current secret must open; a retiring one under a key no longer configured is
        // left out (with a warning) rather than holding every delivery back.
        let mut secrets = Vec::with_capacity(rows.len());
        for r in &rows {
            let sealed = Sealed { key_id: r.get("key_id"), bytes: r.get("sealed") };
            let retiring = r.get::<_, Option<DateTime<Utc>>>("retires_at").is_some();
            match self.keyring.open(user, &sealed) {
                Ok(s) => secrets.push(s),
                Err(e) if retiring => {
                    tracing::warn!(%user, error = %e, "a retiring webhook secret does not open; signing without it");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(secrets)
    }

    /// Give `user` a new webhook secret. The ones it replaces keep signing beside it for
    /// `overlap` (receivers accept either meanwhile), then stop; `None` if there is no such user.
    pub async fn rotate_webhook_secret(&self, user: UserId, overlap: std::time::Duration) -> Result<Option<Rotated>> {
        let secret = WebhookSecret::generate();
        let sealed = self.keyring.seal(user, &secret);
        let overlap_secs = overlap.as_secs_f64();
        let mut conn = self.conn().await?;
        self.may_seal(&conn).await?;
        let tx = conn.transaction().await?;
        // Concurrent rotations of one user take turns here.
        if tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user.to_string()]).await?.is_none() {
            return Ok(None);
        }
        tx.execute("DELETE FROM webhook_secrets WHERE user_id = $1 AND retires_at <= now()", &[&user.to_string()])
            .await?;
        let previous_until: Option<DateTime<Utc>> = tx
            .query_one(
                "WITH r AS (
                    UPDATE webhook_secrets
                       SET retires_at = least(coalesce(retires_at, 'infinity'), now() + make_interval(secs => $2))
                     WHERE user_id = $1 RETURNING retires_at)
                 SELECT max(retires_at) AS until FROM r",
                &[&user.to_string(), &overlap_secs],
            )
            .await?
            .get("until");
        tx.execute(
            "INSERT INTO webhook_secrets (user_id, key_id, sealed) VALUES ($1, $2, $3)",
            &[&user.to_string(), &sealed.key_id, &sealed.bytes],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Rotated { secret, previous_until }))
    }

    /// Seal again, under the current key, every secret stored as plaintext or under another
    /// key (after a key is configured, or rotated). Batched; safe to run while others write.
    pub async fn rewrap_secrets(&self) -> Result<Rewrapped> {
        let mut done = Rewrapped::default();
        let Some(current) = self.keyring.current().map(str::to_owned) else { return Ok(done) };
        let conn = self.conn().await?;
        let mut after = 0i64;
        loop {
            let rows = conn
                .query(
                    "SELECT id, user_id, key_id, sealed FROM webhook_secrets
                      WHERE key_id <> $1 AND id > $2 ORDER BY id LIMIT 500",
                    &[&current, &after],
                )
                .await?;
            let Some(last) = rows.last() else { return Ok(done) };
            after = last.get("id");
            for r in &rows {
                let owner: String = r.get("user_id");
                let owner: UserId = owner.parse().map_err(|_| DbError::Corrupt(format!("user id {owner}")))?;
                let old = Sealed { key_id: r.get("key_id"), bytes: r.get("sealed") };
                let Ok(secret) = self.keyring.open(owner, &old) else {
                    done.unopenable += 1;
                    continue;
                };
                let new = self.keyring.seal(owner, &secret);
                done.resealed += conn
                    .execute(
                        "UPDATE webhook_secrets SET key_id = $2, sealed = $3 WHERE id = $1 AND key_id = $4 AND sealed = $5",
                        &[&r.get::<_, i64>("id"), &new.key_id, &new.bytes, &old.key_id, &old.bytes],
                    )
                    .await?;
            }
        }
    }

    /// How many stored secrets each key id seals (`plaintext` included), and how many of
    /// them are current.
    pub async fn secret_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = self
            .conn()
            .await?
            .query("SELECT key_id, count(*) AS n FROM webhook_secrets GROUP BY key_id ORDER BY key_id", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get("key_id"), r.get("n"))).collect())
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = self
            .conn()
            .await?
            .query_opt(&format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"), &[&email])
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>> {
        let row = self
            .conn()
            .await?
            .query_opt(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"), &[&id.to_string()])
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The user an identity provider's `issuer` + `subject` names, created on first use (email
    /// from the token when no other user has it, else `oidc:<issuer>#<subject>`; plan `plan`).
    /// Later uses set the plan to `plan` when the token carries one (`plan_from_token`), so a
    /// plan changed at the provider takes effect at the next request.
    pub async fn user_for_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        plan: &str,
        plan_from_token: bool,
    ) -> Result<User> {
        let mut conn = self.conn().await?;
        let found = conn
            .query_opt(
                "SELECT u.* FROM user_identities i JOIN users u ON u.id = i.user_id
                  WHERE i.issuer = $1 AND i.subject = $2",
                &[&issuer, &subject],
            )
            .await?;
        if let Some(row) = found {
            let user = user_from_row(&row)?;
            if !plan_from_token || user.plan == plan {
                return Ok(user);
            }
            let row = conn
                .query_one("UPDATE users SET plan = $2 WHERE id = $1 RETURNING *", &[&user.id.to_string(), &plan])
                .await?;
            return user_from_row(&row);
        }
        self.may_seal(&conn).await?;
        let id = UserId::generate();
        let sealed = self.keyring.seal(id, &WebhookSecret::generate());
        let fallback = format!("oidc:{issuer}#{subject}");
        let tx = conn.transaction().await?;
        let row = tx
            .query_one(
                &format!(
                    "WITH u AS (
                        INSERT INTO users (id, email, plan)
                        VALUES ($1, CASE WHEN $2::text IS NULL OR EXISTS (SELECT 1 FROM users WHERE email = $2)
                                         THEN $3 ELSE $2 END, $4)
                        RETURNING {USER_COLUMNS}),
                          s AS (INSERT INTO webhook_secrets (user_id, key_id, sealed) SELECT id, $5, $6 FROM u)
                     SELECT * FROM u"
                ),
                &[&id.to_string(), &email, &fallback, &plan, &sealed.key_id, &sealed.bytes],
            )
            .await?;
        // A concurrent first use of the same identity waits here on the primary key, then finds
        // it taken: this user is rolled back and the other one is used.
        let claimed = tx
            .execute(
                "INSERT INTO user_identities (issuer, subject, user_id) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&issuer, &subject, &id.to_string()],
            )
            .await?;
        if claimed == 0 {
            drop(tx);
            drop(conn);
            return Box::pin(self.user_for_identity(issuer, subject, email, plan, plan_from_token)).await;
        }
        tx.commit().await?;
        user_from_row(&row)
    }

    /// Issue an API key for `user`. The returned key is not recoverable later.
    pub async fn create_api_key(&self, user: UserId, name: &str) -> Result<IssuedKey> {
        let id = ulid::Ulid::generate().to_string();
        let key = new_key();
        let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
        self.conn()
            .await?
            .execute(
                "INSERT INTO api_keys (id, user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &user.to_string(), &name, &prefix, &hash_key(&key)],
            )
            .await?;
        Ok(IssuedKey { id, user_id: user, key })
    }

    /// The user a presented key belongs to, and the key's id, if the key is known and not
    /// revoked.
    pub async fn user_by_api_key(&self, key: &str) -> Result<Option<(User, String)>> {
        // A read only: the hot path (every poll) must not write.
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT u.*, k.id AS key_id FROM api_keys k JOIN users u ON u.id = k.user_id
                  WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
                &[&hash_key(key)],
            )
            .await?;
        row.as_ref().map(|r| Ok((user_from_row(r)?, r.get("key_id")))).transpose()
    }

    /// Users in id (creation) order after `after`, at most `limit`.
    pub async fn list_users(&self, after: Option<UserId>, limit: i64) -> Result<Vec<UserSummary>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT u.id, u.email, u.plan, u.created_at,
                        (SELECT count(*) FROM api_keys k WHERE k.user_id = u.id AND k.revoked_at IS NULL) AS active_keys
                   FROM users u WHERE ($1::text IS NULL OR u.id > $1) ORDER BY u.id LIMIT $2",
                &[&after.map(|u| u.to_string()), &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.get("id");
                Ok(UserSummary {
                    id: id.parse().map_err(|_| DbError::Corrupt(format!("user id {id}")))?,
                    email: r.get("email"),
                    plan: r.get("plan"),
                    created_at: r.get("created_at"),
                    active_keys: r.get("active_keys"),
                })
            })
            .collect()
    }

    /// Change a user's plan; `None` if there is no such user.
    pub async fn set_plan(&self, user: UserId, plan: &str) -> Result<Option<User>> {
        let row = self
            .conn()
            .await?
            .query_opt("UPDATE users SET plan = $2 WHERE id = $1 RETURNING *", &[&user.to_string(), &plan])
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// API keys, newest first, of one user or of all.
    pub async fn list_api_keys(&self, user: Option<UserId>) -> Result<Vec<ApiKeyInfo>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT k.id, k.user_id, u.email, k.name, k.prefix, k.created_at, k.last_used_at, k.revoked_at
                   FROM api_keys k JOIN users u ON u.id = k.user_id
                  WHERE ($1::text IS NULL OR k.user_id = $1) ORDER BY k.id DESC",
                &[&user.map(|u| u.to_string())],
            )
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revoke a key, named by its id or by the key itself (a leaked key is revoked by pasting
    /// it). Authentication refuses it from then on. `None` if no such key; an already revoked
    /// key keeps its first `revoked_at`.
    pub async fn revoke_api_key(&self, id_or_key: &str) -> Result<Option<ApiKeyInfo>> {
        let hash = hash_key(id_or_key);
        let row = self
            .conn()
            .await?
            .query_opt(
                "WITH k AS (
                    UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                     WHERE id = $1 OR key_hash = $2 RETURNING *)
                 SELECT k.id, k.user_id, u.email, k.name, k.prefix, k.created_at, k.last_used_at, k.revoked_at
                   FROM k JOIN users u ON u.id = k.user_id",
                &[&id_or_key, &hash],
            )
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_print() {
        let key = IssuedKey { id: "k".into(), user_id: UserId::generate(), key: new_key() };
        assert!(!format!("{key:?}").contains(&key.key));
    }

    #[test]
    fn issued_keys_are_key_shaped_and_near_misses_are_not() {
        let key = new_key();
        assert!(is_key_shaped(&key), "{key}");
        assert_eq!(key.len(), KEY_PREFIX.len() + 43);
        let body = &key[KEY_PREFIX.len()..];
        for bad in [
            String::new(),
            body.to_owned(),                        // no prefix
            format!("jsk-{body}"),                  // wrong prefix
            key[..key.len() - 1].to_owned(),        // short
            format!("{key}A"),                      // long
            format!("{KEY_PREFIX}{}+", &body[1..]), // outside base64url
            format!("{KEY_PREFIX}{}=", &body[1..]), // padding
            "Bearer".into(),
            "eyJhbGciOiJSUzI1NiJ9.e30.sig".into(), // a JWT is not a key
        ] {
            assert!(!is_key_shaped(&bad), "{bad}");
        }
    }
}
