//! The Prometheus recorder every binary installs: each histogram with its buckets (so it can be
//! summed across replicas, where a summary cannot), every metric described.

use jewelshot_domain::metric_names::{self as m, Kind};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

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
