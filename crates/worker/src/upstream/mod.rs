//! The fal account pool as the worker sees it: one client per account, and the fleet-wide
//! limiter that says which account may start the next request.
//!
//! - this module — the pool from configuration ([`resolve_pool`]) and [`Upstream`].
//! - [`request`] — one request's life: slots, submit with rerouting, polling to the result.

pub mod request;

use std::{collections::HashMap, time::Duration};

use jewelshot_fal::{FalClient, FalConfig, Secret};
use jewelshot_ratelimit::{key_id_for, Limiter, LimiterConfig, LineSettings, PoolKey};

/// One resolved pool entry.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub limits: PoolKey,
    pub secret: Secret,
}

/// The pool from configuration: `JEWELSHOT_FAL__KEYS`, or the single `FAL_KEY`. Ids are checked
/// for duplicates (two entries for one account would double its limits).
pub fn resolve_pool(cfg: &FalConfig) -> anyhow::Result<Vec<ResolvedKey>> {
    let mut out = Vec::new();
    if cfg.keys.is_empty() {
        anyhow::ensure!(!cfg.key.0.is_empty(), "no fal key: set FAL_KEY (or JEWELSHOT_FAL__KEYS)");
        out.push(ResolvedKey {
            limits: PoolKey {
                id: key_id_for(&cfg.key.0),
                max_per_minute: cfg.max_per_minute,
                max_concurrent: cfg.max_concurrent,
            },
            secret: cfg.key.clone(),
        });
    }
    for entry in &cfg.keys {
        anyhow::ensure!(!entry.key.0.is_empty(), "JEWELSHOT_FAL__KEYS: an entry has no key");
        let id = if entry.id.is_empty() { key_id_for(&entry.key.0) } else { entry.id.clone() };
        anyhow::ensure!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "JEWELSHOT_FAL__KEYS: key id {id:?} may hold only letters, digits, '-', '_' and '.'"
        );
        out.push(ResolvedKey {
            limits: PoolKey {
                id,
                max_per_minute: entry.max_per_minute.unwrap_or(cfg.max_per_minute),
                max_concurrent: entry.max_concurrent.unwrap_or(cfg.max_concurrent),
            },
            secret: entry.key.clone(),
        });
    }
    let mut ids: Vec<&str> = out.iter().map(|k| k.limits.id.as_str()).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("JEWELSHOT_FAL__KEYS: the key {:?} is listed twice", w[0]);
    }
    Ok(out)
}

/// Clients per account plus the limiter.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub limiter: Limiter,
    clients: HashMap<String, FalClient>,
    first: FalClient,
    /// How long a refused key rests.
    pub disabled_recheck: Duration,
    /// How often an in-flight slot is renewed.
    pub renew_every: Duration,
    /// The model every request runs (a metric label: fal prices per model).
    pub model: String,
}

impl Upstream {
    pub fn new(
        base: &FalClient,
        pool: Vec<ResolvedKey>,
        limiter_cfg: LimiterConfig,
        conn: jewelshot_queue::RedisConn,
    ) -> Self {
        let cfg = base.config();
        let renew_every = (limiter_cfg.lease / 3).max(Duration::from_millis(100));
        let clients: HashMap<String, FalClient> =
            pool.iter().map(|k| (k.limits.id.clone(), base.with_key(k.secret.clone()))).collect();
        let first = pool.first().map(|k| base.with_key(k.secret.clone())).unwrap_or_else(|| base.clone());
        let limiter = Limiter::new(conn, limiter_cfg, pool.into_iter().map(|k| k.limits).collect());
        Self {
            limiter,
            clients,
            first,
            disabled_recheck: Duration::from_secs(cfg.disabled_recheck_secs),
            renew_every,
            model: cfg.model.clone(),
        }
    }

    /// The pool's first account (a pool is never empty: [`resolve_pool`] refuses that).
    pub fn first_key_id(&self) -> &str {
        self.limiter.keys().first().map(|k| k.id.as_str()).unwrap_or("")
    }

    /// The client for an account; an unknown id (a checkpoint from before a pool change) falls
    /// back to the first account.
    pub fn client(&self, key_id: Option<&str>) -> &FalClient {
        key_id.and_then(|id| self.clients.get(id)).unwrap_or(&self.first)
    }
}

/// The limiter settings from the fal configuration and the line's.
pub fn limiter_config(cfg: &FalConfig, line: &LineSettings, queue_name: &str, timeout: Duration) -> LimiterConfig {
    let mut l = LimiterConfig::new(line.prefix(queue_name));
    l.window = Duration::from_millis(cfg.rate_window_ms.max(1));
    l.lease = Duration::from_millis(cfg.slot_lease_ms.max(100));
    l.timeout = timeout;
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use jewelshot_fal::PoolKeyConfig;

    #[test]
    fn a_single_fal_key_is_a_pool_of_one() {
        let cfg =
            FalConfig { key: Secret("abc:def".into()), max_per_minute: 12, max_concurrent: 3, ..Default::default() };
        let pool = resolve_pool(&cfg).expect("pool");
        assert_eq!(pool.len(), 1);
        assert_eq!(pool[0].limits.max_per_minute, 12);
        assert!(pool[0].limits.id.starts_with("key-") && !pool[0].limits.id.contains("abc"));
    }

    #[test]
    fn pool_entries_take_defaults_and_duplicates_are_refused() {
        let entry = |id: &str, key: &str, pm: Option<u32>| PoolKeyConfig {
            id: id.into(),
            key: Secret(key.into()),
            max_per_minute: pm,
            max_concurrent: None,
        };
        let cfg = FalConfig { keys: vec![entry("a", "k1", Some(20)), entry("", "k2", None)], ..Default::default() };
        let pool = resolve_pool(&cfg).expect("pool");
        assert_eq!(pool.len(), 2);
        assert_eq!((pool[0].limits.max_per_minute, pool[1].limits.max_per_minute), (20, 15));
        let dup = FalConfig { keys: vec![entry("a", "k1", None), entry("a", "k2", None)], ..Default::default() };
        assert!(resolve_pool(&dup).is_err());
        let bad = FalConfig { keys: vec![entry("a b", "k1", None)], ..Default::default() };
        assert!(resolve_pool(&bad).is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns figment::Error
    fn the_pool_reads_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "JEWELSHOT_FAL__KEYS",
                r#"[{id="a", key="k1", max_per_minute=15, max_concurrent=4}, {key="k2"}]"#,
            );
            let cfg = crate::Config::load().map_err(|e| e.to_string())?;
            let pool = resolve_pool(&cfg.fal.client).map_err(|e| e.to_string())?;
            assert_eq!(pool.len(), 2);
            assert_eq!(pool[0].limits, PoolKey { id: "a".into(), max_per_minute: 15, max_concurrent: 4 });
            assert_eq!(pool[1].secret.0, "k2");
            // The line's settings come from the same section, as every binary reads them.
            jail.set_env("JEWELSHOT_FAL__HIGH_BURST", "7");
            jail.set_env("JEWELSHOT_FAL__LIMITER_PREFIX", "shared:up");
            let cfg = crate::Config::load().map_err(|e| e.to_string())?;
            assert_eq!(cfg.fal.line, LineSettings { limiter_prefix: "shared:up".into(), high_burst: 7 });
            assert_eq!(cfg.fal.line.prefix("q"), "shared:up");
            assert_eq!(cfg.fal.client.max_per_minute, 15);
            Ok(())
        });
    }
}
