//! The Prometheus recorder every binary installs: each histogram with its buckets (so it can be
//! summed across replicas, where a summary cannot), every metric described.

use std::time::Duration;

use jewelshot_domain::metric_names::{self as m, Kind};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often a recorder built with `build_recorder` is drained when nobody scrapes it.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Drain `handle`'s histograms every `every`, on a thread of its own, for the life of the
/// process. A recorder made by `build_recorder` keeps every observation until a scrape renders
/// it (8 bytes each): a process nobody scrapes — metrics off, or Prometheus down — grew by every
/// request it served (the soak measured ~2 MiB an hour on the gateway). `install()` runs this
/// itself; recorders built by hand need it.
pub fn spawn_upkeep(handle: PrometheusHandle, every: Duration) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(every);
        handle.run_upkeep();
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread not started: histograms drain only when scraped");
    }
}

/// A builder with the buckets of every histogram in [`m::ALL`].
pub fn builder() -> PrometheusBuilder {
    let mut b = PrometheusBuilder::new();
    for (name, kind, _) in m::ALL {
        if *kind != Kind::Histogram {
            continue;
        }
        let buckets = if *name == m::GENERATION_DURATION { m::GENERATION_BUCKETS } else { m::LATENCY_BUCKETS };
        b = match b.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets) {
            Ok(next) => next,
            // Only an empty bucket list is refused; ours are constants.
            Err(_) => PrometheusBuilder::new(),
        };
    }
    b
}

/// Attach every description of [`m::ALL`] to the installed recorder.
pub fn describe_all() {
    for (name, kind, help) in m::ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Live heap bytes in MiB (jemalloc serves this process's `malloc`): what the recorder
    /// holds, without the allocator's freed-but-kept pages that RSS would count.
    fn heap_mib() -> f64 {
        crate::allocator::snapshot().map_or(0.0, |s| s[0].1 as f64 / 1048576.0)
    }

    /// Record 3 million latencies (24 MB of raw observations) without a scrape; how much the
    /// live heap grew.
    fn grow_by_recording(recorder: &metrics_exporter_prometheus::PrometheusRecorder) -> f64 {
        let before = heap_mib();
        metrics::with_local_recorder(recorder, || {
            let h = metrics::histogram!(m::HTTP_DURATION, "route" => "/api/jobs/{id}");
            for chunk in 0..30 {
                for i in 0..100_000 {
                    h.record(f64::from(i % 1000) / 1e5 + f64::from(chunk) * 1e-9);
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        heap_mib() - before
    }

    #[test]
    fn histograms_nobody_scrapes_are_drained_by_the_upkeep() {
        let _turn = crate::HEAP_TEST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let drained = builder().build_recorder();
        spawn_upkeep(drained.handle(), Duration::from_millis(10));
        let with_upkeep = grow_by_recording(&drained);
        let kept = builder().build_recorder();
        let without = grow_by_recording(&kept);
        eprintln!("3 M observations unscraped: +{with_upkeep:.1} MiB with upkeep, +{without:.1} MiB without");
        assert!(without > 15.0, "the test must see the growth it guards against: {without:.1} MiB");
        assert!(with_upkeep < 6.0, "with upkeep {with_upkeep:.1} MiB (without: {without:.1} MiB)");
        // What was drained is still counted when rendered.
        let text = drained.handle().render();
        assert!(text.contains("jewelshot_http_request_duration_seconds_count"), "{text}");
    }
}
