//! Users and API keys. A key is shown once at creation; only its SHA-256 is stored, so a
//! database leak does not leak usable keys.

use base64::Engine;
use chrono::{DateTime, Utc};
use jewelshot_domain::UserId;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{Db, DbError, Result};

/// Every key starts with this, so leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "jsk_";

#[derive(Clone)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub plan: String,
    pub webhook_secret: String,
    pub created_at: DateTime<Utc>,
}

/// Secrets never reach logs or panics through `{:?}`.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("plan", &self.plan)
            .field("webhook_secret", &"<redacted>")
            .finish()
    }
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
        webhook_secret: row.get("webhook_secret"),
        created_at: row.get("created_at"),
    })
}

impl Db {
    /// Create a user with a fresh webhook signing secret.
    pub async fn create_user(&self, email: &str, plan: &str) -> Result<User> {
        let id = UserId::generate();
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(random_bytes::<24>()));
        let row = self
            .conn()
            .await?
            .query_one(
                "INSERT INTO users (id, email, plan, webhook_secret) VALUES ($1, $2, $3, $4) RETURNING *",
                &[&id.to_string(), &email, &plan, &secret],
            )
            .await?;
        user_from_row(&row)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = self.conn().await?.query_opt("SELECT * FROM users WHERE email = $1", &[&email]).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>> {
        let row = self.conn().await?.query_opt("SELECT * FROM users WHERE id = $1", &[&id.to_string()]).await?;
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
        let id = UserId::generate();
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(random_bytes::<24>()));
        let fallback = format!("oidc:{issuer}#{subject}");
        let tx = conn.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO users (id, email, plan, webhook_secret)
                 VALUES ($1, CASE WHEN $2::text IS NULL OR EXISTS (SELECT 1 FROM users WHERE email = $2)
                                  THEN $3 ELSE $2 END, $4, $5)
                 RETURNING *",
                &[&id.to_string(), &email, &fallback, &plan, &secret],
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

    /// The user a presented key belongs to, if the key is known and not revoked.
    pub async fn user_by_api_key(&self, key: &str) -> Result<Option<User>> {
        // A read only: the hot path (every poll) must not write.
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT u.* FROM api_keys k JOIN users u ON u.id = k.user_id
                  WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
                &[&hash_key(key)],
            )
            .await?;
        row.as_ref().map(user_from_row).transpose()
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
    fn secrets_never_print() {
        let user = User {
            id: UserId::generate(),
            email: "a@example.com".into(),
            plan: "free".into(),
            webhook_secret: "whsec_c2VjcmV0".into(),
            created_at: Utc::now(),
        };
        let key = IssuedKey { id: "k".into(), user_id: user.id, key: new_key() };
        assert!(!format!("{user:?}").contains("whsec_c2VjcmV0"));
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
