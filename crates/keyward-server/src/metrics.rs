//! Prometheus metrics. Handles are registered once, so the hot path only bumps atomics. The
//! first server in a process installs its recorder as the global one, so what other crates
//! record with the `metrics` macros (the store's feed and singleton, the Redis limiter) shows
//! on its `/metrics` too; later servers in the same process (as in tests) keep their own.
//!
//! The verify latency histogram is keyward's own: fixed buckets of atomic counters, so memory
//! stays the same under any load whether or not anyone scrapes (the exporter's histogram keeps
//! every sample until the next scrape).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyward_core::VerifyCode;
use keyward_service::Authority;
use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const VERIFY_DURATION: &str = "keyward_verify_duration_seconds";
const BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.1,
];

pub struct Metrics {
    /// This server's recorder, unless it became the process's global one.
    _recorder: Option<PrometheusRecorder>,
    handle: PrometheusHandle,
    verifications: Vec<(VerifyCode, Counter)>,
    verify_duration: Latency,
    cached_keys: Gauge,
    usage_dropped: Gauge,
    guard_untracked: Gauge,
    integrity_failures: Gauge,
}

/// A latency histogram over [`BUCKETS`]: one counter per bucket, a count and a sum.
#[derive(Default)]
struct Latency {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Latency {
    fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        // Cumulative buckets are summed at render time; a sample counts in its own bucket only.
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b)
            && let Some(bucket) = self.buckets.get(i)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {VERIFY_DURATION} Time to answer a verification, from parsed request to verdict\n# TYPE {VERIFY_DURATION} histogram"
        );
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{VERIFY_DURATION}_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{VERIFY_DURATION}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{VERIFY_DURATION}_sum {sum}");
        let _ = writeln!(out, "{VERIFY_DURATION}_count {count}");
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const META: Metadata<'static> = Metadata::new("keyward", Level::INFO, None);

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        recorder.describe_counter(
            "keyward_verifications_total".into(),
            None,
            "Verifications by result code".into(),
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
        let cached_keys = recorder.register_gauge(&Key::from_name("keyward_cached_keys"), &META);
        let usage_dropped =
            recorder.register_gauge(&Key::from_name("keyward_usage_events_dropped"), &META);
        recorder.describe_gauge(
            "keyward_guard_untracked_failures".into(),
            None,
            "Failed attempts from addresses the full failed-attempt table could not track".into(),
        );
        let guard_untracked =
            recorder.register_gauge(&Key::from_name("keyward_guard_untracked_failures"), &META);
        recorder.describe_gauge(
            "keyward_integrity_failures".into(),
            None,
            "Stored records or audit state that failed their integrity check since unseal".into(),
        );
        let integrity_failures =
            recorder.register_gauge(&Key::from_name("keyward_integrity_failures"), &META);
        let handle = recorder.handle();
        let recorder = metrics::set_global_recorder(recorder)
            .err()
            .map(|e| e.into_inner());
        Metrics {
            handle,
            _recorder: recorder,
            verifications,
            verify_duration: Latency::default(),
            cached_keys,
            usage_dropped,
            guard_untracked,
            integrity_failures,
        }
    }

    pub fn verified(&self, code: VerifyCode, took: Duration) {
        if let Some((_, counter)) = self.verifications.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
        }
        self.verify_duration.record(took);
    }

    /// The metrics text; `backlog` is the webhook outbox's pending deliveries and the age of the
    /// oldest, when the store answered.
    pub fn render(
        &self,
        authority: Option<&Authority>,
        backlog: Option<(u64, Option<Duration>)>,
    ) -> String {
        if let Some(authority) = authority {
            self.cached_keys
                .set(authority.verifier().cache().len() as f64);
            self.usage_dropped
                .set(authority.verifier().usage_events_dropped() as f64);
            self.guard_untracked
                .set(authority.verifier().guard_untracked() as f64);
            self.integrity_failures
                .set(authority.integrity_failures() as f64);
        }
        self.handle.run_upkeep();
        let mut out = self.handle.render();
        self.verify_duration.render(&mut out);
        if let Some(authority) = authority {
            render_background(&mut out, authority, backlog);
        }
        out
    }
}

/// The rotation scheduler's and the webhook dispatcher's figures.
fn render_background(
    out: &mut String,
    authority: &Authority,
    backlog: Option<(u64, Option<Duration>)>,
) {
    let (rotated, failed) = authority.rotation().totals();
    let due = authority.rotation().last_due();
    let _ = writeln!(
        out,
        "# HELP keyward_rotations_total Keys rolled by their rotation policy, and due rotations that failed\n# TYPE keyward_rotations_total counter\nkeyward_rotations_total{{outcome=\"rotated\"}} {rotated}\nkeyward_rotations_total{{outcome=\"failed\"}} {failed}"
    );
    let _ = writeln!(
        out,
        "# HELP keyward_rotations_due Keys found due for rotation by the last scan\n# TYPE keyward_rotations_due gauge\nkeyward_rotations_due {due}"
    );
    let (delivered, retried, gave_up) = authority.webhooks().totals();
    let _ = writeln!(
        out,
        "# HELP keyward_webhook_deliveries_total Webhook delivery attempts by outcome\n# TYPE keyward_webhook_deliveries_total counter\nkeyward_webhook_deliveries_total{{outcome=\"delivered\"}} {delivered}\nkeyward_webhook_deliveries_total{{outcome=\"retried\"}} {retried}\nkeyward_webhook_deliveries_total{{outcome=\"failed\"}} {gave_up}"
    );
    if let Some((pending, oldest)) = backlog {
        let age = oldest.map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(
            out,
            "# HELP keyward_outbox_pending Webhook deliveries not yet made\n# TYPE keyward_outbox_pending gauge\nkeyward_outbox_pending {pending}\n# HELP keyward_outbox_oldest_pending_seconds Age of the oldest delivery not yet made\n# TYPE keyward_outbox_oldest_pending_seconds gauge\nkeyward_outbox_oldest_pending_seconds {age}"
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
