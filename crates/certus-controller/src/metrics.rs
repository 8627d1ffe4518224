//! Controller metrics (prometheus-client). Labels are static strings of bounded
//! cardinality: the kind and the error `category()`, never an object name or message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type KindLabel = [(&'static str, &'static str); 1];
type FailureLabels = [(&'static str, &'static str); 2];

fn duration_histogram() -> Histogram {
    // 5ms .. ~20s
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The controllers' counters. Cheap to clone-share (`Arc`); every metric is internally
/// shared, so registering it on a registry exposes the live values.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<KindLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    decode_errors: Family<KindLabel, Counter>,
    duration: Family<KindLabel, Histogram, fn() -> Histogram>,
    ready: AtomicBool,
    /// `certus_rotation_*` gauges of the RotationPolicy controller.
    pub rotation: crate::rotation::RotationMetrics,
    /// `certus_dynamic_credential_*` metrics of the DynamicCredential controller.
    pub dynamic: crate::dynamic::DynamicMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Family::default(),
            failures: Family::default(),
            decode_errors: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            ready: AtomicBool::new(false),
            rotation: Default::default(),
            dynamic: Default::default(),
        }
    }
}

/// Records the duration of one reconcile when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&[("kind", self.kind)])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Registers every metric under the `certus_controller` prefix.
    pub fn register(&self, registry: &mut Registry) {
        self.rotation.register(registry);
        self.dynamic.register(registry);
        let r = registry.sub_registry_with_prefix("certus_controller");
        r.register(
            "reconciles",
            "Reconciles started, by kind",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_failures",
            "Failed reconciles, by kind and error category",
            self.failures.clone(),
        );
        r.register(
            "decode_errors",
            "Watched objects that could not be decoded and were skipped, by kind",
            self.decode_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciles, by kind",
            self.duration.clone(),
        );
    }

    /// Counts a reconcile of `kind` and times it until the returned guard is dropped.
    pub fn reconcile_started(&self, kind: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.get_or_create(&[("kind", kind)]).inc();
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, kind: &'static str, category: &'static str) {
        self.failures
            .get_or_create(&[("kind", kind), ("category", category)])
            .inc();
    }

    /// Counts an object that could not be decoded.
    pub fn decode_error(&self, kind: &'static str) {
        self.decode_errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// Reconciles started for `kind`.
    pub fn reconciles(&self, kind: &'static str) -> u64 {
        self.reconciles.get_or_create(&[("kind", kind)]).get()
    }

    /// Failures of `kind` in `category`.
    pub fn failures(&self, kind: &'static str, category: &'static str) -> u64 {
        self.failures
            .get_or_create(&[("kind", kind), ("category", category)])
            .get()
    }

    /// Objects of `kind` skipped because they could not be decoded.
    pub fn decode_errors(&self, kind: &'static str) -> u64 {
        self.decode_errors.get_or_create(&[("kind", kind)]).get()
    }

    /// Whether the controllers are running (CRDs established, watches started); for `/readyz`.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_category_and_encodes() {
        let m = Metrics::default();
        drop(m.reconcile_started("VaultPolicy"));
        m.reconcile_failed("VaultPolicy", "conflict");
        m.reconcile_failed("VaultPolicy", "conflict");
        m.decode_error("VaultConnection");
        assert_eq!(m.reconciles("VaultPolicy"), 1);
        assert_eq!(m.failures("VaultPolicy", "conflict"), 2);
        assert_eq!(m.failures("VaultPolicy", "dependency"), 0);
        assert_eq!(m.decode_errors("VaultConnection"), 1);

        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(
                "certus_controller_reconcile_failures_total{kind=\"VaultPolicy\",category=\"conflict\"} 2"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "certus_controller_reconcile_duration_seconds_count{kind=\"VaultPolicy\"} 1"
            ),
            "{out}"
        );
    }
}
