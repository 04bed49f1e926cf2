//! The result cache on the workers' side (the rules are SQL: `migrations/V12__result_cache.sql`,
//! `V13__cache_hits_are_gallery_entries.sql`; the gateway meets the cache at submit for jobs that
//! read an upload).
//!
//! - [`meet`]: a job whose input was not hashed at submit (any URL but the caller's own upload)
//!   is hashed here, from the bytes fetched just before fal would be asked to read them. A hit
//!   completes the job and a job identical to one in flight waits on that job's request; either
//!   way the upstream slot it was dispatched with goes back unused (its start un-counted).
//! - [`settle`]: a job ended — its result becomes an entry, and the jobs that shared its
//!   request complete, fail alike, or take it over.
//! - [`upkeep`]: expired and surplus entries go; objects nothing refers to any more are deleted
//!   after a grace period. Every worker runs it ([`spawn`]); each statement claims the rows it
//!   removes, so two workers never delete the same object twice.

use std::time::Duration;

use jewelshot_db::{cache::Joined, jobs::JobRow};
use jewelshot_domain::{cache, metric_names as m};
use jewelshot_ratelimit::Grant;
use jewelshot_storage::ObjectKey;

use crate::{pipeline::Ctx, steps::save, steps::StepFailure};

/// What [`meet`] decided.
#[derive(Debug)]
pub enum Met {
    /// Call fal: the job owns the request (or may not use the cache).
    Proceed,
    /// Completed from a stored result: announce it.
    Hit(Box<JobRow>),
    /// Waits on an identical job's request, out of the line (or was canceled meanwhile): this
    /// task is done.
    Shared,
}

/// Meet the cache before the job's fal request, unless its request was made already. A job
/// whose input is still to be hashed (key `<basis>:`) is hashed from the bytes fetched now; one
/// with a full key meets it again (cheap: no fetch), for it may no longer own the entry (a
/// requeued job whose sharer took the request over, a sharer promoted after its leader failed).
/// Trouble fetching only means the job goes to fal uncached (fal reads the URL itself and says
/// what it thinks of it).
pub async fn meet(ctx: &Ctx, job: &JobRow, grant: &mut Option<Grant>) -> Result<Met, StepFailure> {
    let Some(key) = job.cache_key.as_deref() else { return Ok(Met::Proceed) };
    if !ctx.cache.enabled || ctx.db.generate_started(job.id).await? {
        return Ok(Met::Proceed);
    }
    let hashed_now = key.ends_with(':');
    let key = match key.strip_suffix(':') {
        None => key.to_owned(),
        Some(basis) => match save::fetch_capped(ctx, &job.input_url, ctx.images.max_input_bytes as u64).await {
            Ok(bytes) => cache::key(basis, &cache::content_digest(&bytes)),
            Err(e) => {
                tracing::info!(reason = ?e, "input not fetched for the result cache; asking fal uncached");
                return Ok(Met::Proceed);
            }
        },
    };
    let met = match ctx.db.cache_join(job.id, &key).await? {
        Joined::Leader => {
            // Counted where the job first met the cache (here, or at submit).
            if hashed_now {
                metrics::counter!(m::CACHE_LOOKUPS, "outcome" => "miss").increment(1);
            }
            return Ok(Met::Proceed);
        }
        Joined::Hit(done) => {
            metrics::counter!(m::CACHE_LOOKUPS, "outcome" => "hit").increment(1);
            metrics::counter!(m::JOBS_FINISHED, "status" => "complete", "code" => "").increment(1);
            tracing::info!("completed from the result cache");
            Met::Hit(done)
        }
        Joined::Shared => {
            metrics::counter!(m::CACHE_LOOKUPS, "outcome" => "shared").increment(1);
            tracing::info!("an identical job's request is in flight: waiting on it");
            Met::Shared
        }
        Joined::Gone => Met::Shared,
    };
    if let Some(g) = grant.take() {
        ctx.upstream.unused(&g).await;
    }
    Ok(met)
}

/// Settle what the cache owes after `job` ended (see [`jewelshot_queue::settle_cache`]). A
/// failure is logged: the reconciler settles what is left.
pub async fn settle(ctx: &Ctx, job: &JobRow) {
    if job.cache_key.is_none() {
        return;
    }
    let ttl = Duration::from_secs(ctx.cache.ttl_secs);
    if let Err(e) = jewelshot_queue::settle_cache(&ctx.db, &ctx.upstream.limiter, Some(&ctx.queue), job.id, ttl).await {
        tracing::warn!(error = %e, "the result cache is left to the reconciler to settle");
    }
}

/// Settle leaders whose settle did not happen (see [`jewelshot_db::Db::unsettled_leaders`]).
pub async fn settle_stragglers(ctx: &Ctx) -> Result<usize, jewelshot_db::DbError> {
    let leaders = ctx.db.unsettled_leaders(100).await?;
    let ttl = Duration::from_secs(ctx.cache.ttl_secs);
    for leader in &leaders {
        if let Err(e) =
            jewelshot_queue::settle_cache(&ctx.db, &ctx.upstream.limiter, Some(&ctx.queue), *leader, ttl).await
        {
            tracing::warn!(job_id = %leader, error = %e, "could not settle the jobs sharing a request");
        }
    }
    Ok(leaders.len())
}

/// One upkeep pass: evict, then delete the objects whose grace period ended.
pub async fn upkeep(ctx: &Ctx) -> Result<(), jewelshot_db::DbError> {
    let evicted = ctx.db.cache_evict(ctx.cache.max_entries, 1_000).await?;
    metrics::counter!(m::CACHE_UPKEEP, "what" => "expired").increment(evicted.expired);
    metrics::counter!(m::CACHE_UPKEEP, "what" => "capacity").increment(evicted.over_capacity);
    for key in ctx.db.due_orphans(500).await? {
        let Ok(object) = ObjectKey::new(key.clone()) else { continue };
        match ctx.store.delete(&object).await {
            Ok(()) => metrics::counter!(m::CACHE_UPKEEP, "what" => "orphan").increment(1),
            // Claimed already: a leak, never a broken image. Logged for the operator.
            Err(e) => tracing::warn!(key = %key, error = %e, "an unreferenced object could not be deleted"),
        }
    }
    Ok(())
}

/// Run [`settle_stragglers`] and [`upkeep`] every `every` until `stop`.
pub fn spawn(
    ctx: std::sync::Arc<Ctx>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = settle_stragglers(&ctx).await {
                tracing::warn!(error = %e, "result cache: settling stragglers failed");
            }
            if let Err(e) = upkeep(&ctx).await {
                tracing::warn!(error = %e, "result cache upkeep failed");
            }
        }
    })
}
