//! Prometheus metrics. Handles are registered once, so the hot path only bumps atomics; no
//! global recorder is installed, so several servers can live in one process (as in tests).

use std::time::Duration;

use keyward_core::VerifyCode;
use keyward_service::Authority;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const VERIFY_DURATION: &str = "keyward_verify_duration_seconds";
const BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.1,
];

pub struct Metrics {
    _recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    verifications: Vec<(VerifyCode, Counter)>,
    verify_duration: Histogram,
    cached_keys: Gauge,
    usage_dropped: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const META: Metadata<'static> = Metadata::new("keyward", Level::INFO, None);

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(VERIFY_DURATION.into()), BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            // The bucket list is a non-empty constant, the only thing that can be refused.
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        recorder.describe_counter(
            "keyward_verifications_total".into(),
            None,
            "Verifications by result code".into(),
        );
        recorder.describe_histogram(
            VERIFY_DURATION.into(),
            Some(metrics::Unit::Seconds),
            "Time to answer a verification, from parsed request to verdict".into(),
        );
        let verifications = VerifyCode::ALL
            .iter()
            .map(|&code| {
                let key = Key::from_parts(
                    "keyward_verifications_total",
                    vec![Label::new("code", code.as_str())],
                );
                (code, recorder.register_counter(&key, &META))
            })
            .collect();
        let verify_duration = recorder.register_histogram(&Key::from_name(VERIFY_DURATION), &META);
        let cached_keys = recorder.register_gauge(&Key::from_name("keyward_cached_keys"), &META);
        let usage_dropped =
            recorder.register_gauge(&Key::from_name("keyward_usage_events_dropped"), &META);
        Metrics {
            handle: recorder.handle(),
            _recorder: recorder,
            verifications,
            verify_duration,
            cached_keys,
            usage_dropped,
        }
    }

    pub fn verified(&self, code: VerifyCode, took: Duration) {
        if let Some((_, counter)) = self.verifications.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
        }
        self.verify_duration.record(took.as_secs_f64());
    }

    pub fn render(&self, authority: Option<&Authority>) -> String {
        if let Some(authority) = authority {
            self.cached_keys.set(authority.cache().len() as f64);
            self.usage_dropped
                .set(authority.usage_events_dropped() as f64);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
