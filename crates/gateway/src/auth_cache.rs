//! API-key lookups cached in the gateway, so a poll costs no query to know who asks.
//!
//! - Hits are kept up to `auth_cache_ttl_ms` (bounded LRU, `auth_cache_entries`); unknown keys
//!   are kept in a small LRU of their own for a shorter time, so guesses cannot evict real users.
//! - Concurrent misses on one key make one lookup ([`AuthCache::single_flight`]): when a busy
//!   key's entry expires, the hundreds of requests that find it gone wait for one query instead
//!   of each sending their own.
//! - A revoked key or a changed plan reaches every gateway at once through Redis pub/sub
//!   (`jewelshot_queue::auth_channel`: the CLI announces `key:<id>`, `user:<id>` or `*`); when
//!   the subscription is lost the cache is emptied and the TTL bounds what a missed message can
//!   leave behind.

use std::{
    num::NonZeroUsize,
    sync::Mutex,
    time::{Duration, Instant},
};

use jewelshot_db::users::User;
use lru::LruCache;

/// How long an unknown key is remembered as unknown.
const MISS_TTL: Duration = Duration::from_secs(1);
const MISS_ENTRIES: usize = 1024;

struct Hit {
    user: User,
    key_id: String,
    at: Instant,
}

/// The cache; cheap to share behind `AppState`.
pub struct AuthCache {
    ttl: Duration,
    hits: Mutex<LruCache<String, Hit>>,
    misses: Mutex<LruCache<String, Instant>>,
    /// Lookups in progress, by key hash.
    inflight: Inflight,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCache").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// How long a failed lookup answers for the callers that were waiting on it.
const SHARED_FAILURE: Duration = Duration::from_secs(1);

/// Per key in flight: when its last lookup failed, if it did.
type Inflight = Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<Option<Instant>>>>>;

/// One caller's place at a key's lookup; the last to leave removes the key's entry.
struct Gate<'a> {
    map: &'a Inflight,
    hash: &'a str,
    gate: std::sync::Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl<'a> Gate<'a> {
    fn enter(map: &'a Inflight, hash: &'a str) -> Self {
        let gate = map.lock().map(|mut m| m.entry(hash.to_owned()).or_default().clone()).unwrap_or_default();
        Self { map, hash, gate }
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            // Only the map's reference and ours left: nobody else is waiting.
            if m.get(self.hash).is_some_and(|g| std::sync::Arc::strong_count(g) <= 2) {
                m.remove(self.hash);
            }
        }
    }
}

/// What the cache knows of a key.
#[derive(Debug, Clone)]
pub enum Cached {
    User(User),
    Unknown,
}

impl AuthCache {
    /// `ttl` zero turns the cache off.
    pub fn new(ttl: Duration, entries: usize) -> Self {
        let cap = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            ttl,
            hits: Mutex::new(LruCache::new(cap(entries))),
            misses: Mutex::new(LruCache::new(cap(MISS_ENTRIES))),
            inflight: Mutex::default(),
        }
    }

    /// What is known of `hash`, from the cache or else from `load` — which runs once for all
    /// the concurrent callers asking about the same key (the others wait for it and read what it
    /// cached). `load` answers the user and the key's id, or `None` for an unknown key.
    ///
    /// `Err(Some(e))`: this call's lookup failed. `Err(None)`: the lookup this call waited for
    /// failed moments ago — the callers that waited share that answer instead of each trying in
    /// turn (a hung database would otherwise make the k-th of them wait k timeouts).
    pub async fn single_flight<E, F, Fut>(&self, hash: &str, load: F) -> Result<Cached, Option<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<(User, String)>, E>>,
    {
        if !self.on() {
            return match load().await {
                Ok(Some((user, _))) => Ok(Cached::User(user)),
                Ok(None) => Ok(Cached::Unknown),
                Err(e) => Err(Some(e)),
            };
        }
        if let Some(known) = self.get(hash) {
            return Ok(known);
        }
        let gate = Gate::enter(&self.inflight, hash);
        let mut turn = gate.gate.lock().await;
        // Whoever went first may have filled it — or failed just now.
        if let Some(known) = self.get(hash) {
            return Ok(known);
        }
        if turn.is_some_and(|failed| failed.elapsed() < SHARED_FAILURE) {
            return Err(None);
        }
        let answer = match load().await {
            Ok(Some((user, key_id))) => {
                self.put_user(hash.to_owned(), user.clone(), key_id);
                Ok(Cached::User(user))
            }
            Ok(None) => {
                self.put_unknown(hash.to_owned());
                Ok(Cached::Unknown)
            }
            Err(e) => {
                *turn = Some(Instant::now());
                Err(Some(e))
            }
        };
        answer
    }

    fn on(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// What is known of the key whose hash is `hash`, if still fresh.
    pub fn get(&self, hash: &str) -> Option<Cached> {
        if !self.on() {
            return None;
        }
        if let Ok(mut hits) = self.hits.lock() {
            match hits.get(hash) {
                Some(h) if h.at.elapsed() < self.ttl => return Some(Cached::User(h.user.clone())),
                Some(_) => {
                    hits.pop(hash);
                }
                None => {}
            }
        }
        let mut misses = self.misses.lock().ok()?;
        match misses.get(hash) {
            Some(at) if at.elapsed() < MISS_TTL.min(self.ttl) => Some(Cached::Unknown),
            _ => None,
        }
    }

    pub fn put_user(&self, hash: String, user: User, key_id: String) {
        if !self.on() {
            return;
        }
        if let Ok(mut misses) = self.misses.lock() {
            misses.pop(&hash);
        }
        if let Ok(mut hits) = self.hits.lock() {
            hits.put(hash, Hit { user, key_id, at: Instant::now() });
        }
    }

    pub fn put_unknown(&self, hash: String) {
        if self.on() {
            if let Ok(mut misses) = self.misses.lock() {
                misses.put(hash, Instant::now());
            }
        }
    }

    /// Apply an announcement: `key:<id>`, `user:<id>`, or anything else (`*`): everything.
    pub fn invalidate(&self, what: &str) {
        let Ok(mut hits) = self.hits.lock() else { return };
        let gone: Vec<String> = match what.split_once(':') {
            Some(("key", id)) => hits.iter().filter(|(_, h)| h.key_id == id).map(|(k, _)| k.clone()).collect(),
            Some(("user", id)) => {
                hits.iter().filter(|(_, h)| h.user.id.to_string() == id).map(|(k, _)| k.clone()).collect()
            }
            _ => {
                hits.clear();
                drop(hits);
                if let Ok(mut m) = self.misses.lock() {
                    m.clear();
                }
                return;
            }
        };
        for k in gone {
            hits.pop(&k);
        }
    }
}

/// Keep `cache` in step with the announcements on Redis until the process ends: resubscribe
/// after a loss (emptying the cache, since messages may have been missed meanwhile).
pub async fn follow(cache: std::sync::Arc<AuthCache>, cfg: jewelshot_queue::QueueConfig) {
    use futures::StreamExt;
    let mut backoff = Duration::from_millis(200);
    loop {
        match jewelshot_queue::subscribe_auth_changes(&cfg).await {
            Ok(mut pubsub) => {
                backoff = Duration::from_millis(200);
                // Whatever changed while we were not listening.
                cache.invalidate("*");
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(what) = msg.get_payload::<String>() {
                        tracing::debug!(what, "credential change announced");
                        cache.invalidate(&what);
                    }
                }
                tracing::warn!("lost the credential-change subscription; resubscribing");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to credential changes; retrying"),
        }
        cache.invalidate("*");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: jewelshot_domain::UserId::generate(),
            email: "a@example.com".into(),
            plan: "free".into(),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn hits_expire_and_announcements_evict_what_they_name() {
        let cache = AuthCache::new(Duration::from_secs(60), 8);
        let (a, b) = (user(), user());
        cache.put_user("ha".into(), a.clone(), "ka".into());
        cache.put_user("hb".into(), b.clone(), "kb".into());
        assert!(matches!(cache.get("ha"), Some(Cached::User(u)) if u.id == a.id));
        cache.invalidate("key:ka");
        assert!(cache.get("ha").is_none(), "the revoked key is gone");
        assert!(cache.get("hb").is_some(), "the other stays");
        cache.invalidate(&format!("user:{}", b.id));
        assert!(cache.get("hb").is_none());
        cache.put_unknown("hx".into());
        assert!(matches!(cache.get("hx"), Some(Cached::Unknown)));
        cache.invalidate("*");
        assert!(cache.get("hx").is_none());

        let short = AuthCache::new(Duration::from_millis(20), 8);
        short.put_user("h".into(), user(), "k".into());
        std::thread::sleep(Duration::from_millis(30));
        assert!(short.get("h").is_none(), "a hit lasts the TTL at most");
        let off = AuthCache::new(Duration::ZERO, 8);
        off.put_user("h".into(), user(), "k".into());
        assert!(off.get("h").is_none());
    }

    #[tokio::test]
    async fn concurrent_misses_on_one_key_make_one_lookup() {
        let cache = std::sync::Arc::new(AuthCache::new(Duration::from_secs(60), 8));
        let lookups = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let u = user();
        let calls = (0..50).map(|_| {
            let (cache, lookups, u) = (cache.clone(), lookups.clone(), u.clone());
            tokio::spawn(async move {
                cache
                    .single_flight("h", || async {
                        lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(Some((u, "k".to_owned())))
                    })
                    .await
            })
        });
        for call in futures::future::join_all(calls).await {
            assert!(matches!(call.expect("task"), Ok(Cached::User(_))));
        }
        assert_eq!(lookups.load(std::sync::atomic::Ordering::SeqCst), 1, "one query for 50 concurrent misses");
        assert!(cache.inflight.lock().expect("lock").is_empty(), "nothing left in flight");
        // A failed lookup is not cached: the next caller asks again.
        let failed = cache.single_flight("x", || async { Err::<Option<(User, String)>, _>("down") }).await;
        assert!(matches!(failed, Err(Some("down"))) && cache.get("x").is_none());
        // The callers waiting on a failing lookup share its failure instead of each trying in turn.
        let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = (0..20).map(|_| {
            let (cache, tries) = (cache.clone(), tries.clone());
            tokio::spawn(async move {
                cache
                    .single_flight("y", || async {
                        tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Err::<Option<(User, String)>, _>("hung")
                    })
                    .await
            })
        });
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Err(_)))));
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1, "one attempt for 20 waiting callers");
    }

    #[test]
    fn guesses_do_not_evict_users() {
        let cache = AuthCache::new(Duration::from_secs(60), 4);
        cache.put_user("real".into(), user(), "k".into());
        for i in 0..5000 {
            cache.put_unknown(format!("guess-{i}"));
        }
        assert!(cache.get("real").is_some());
    }
}
