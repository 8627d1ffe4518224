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

    /// Sets [`is_ready`](Self::is_ready) ([`run`](crate::run) does, while its
    /// controllers run; tests of the probes do too).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the controllers ready until the guard is dropped (also when their future is
    /// dropped because leadership was lost).
    pub(crate) fn ready_guard(&self) -> ReadyGuard<'_> {
        self.set_ready(true);
        ReadyGuard(self)
    }
}

/// Clears [`Metrics::is_ready`] when dropped.
pub(crate) struct ReadyGuard<'a>(&'a Metrics);

impl Drop for ReadyGuard<'_> {
    fn drop(&mut self) {
        self.0.set_ready(false);
    }
}

/// Exposes the request counters of the shared Vault session cache
/// ([`SessionCache::stats`](certus_vault_client::SessionCache::stats)), read at each
/// scrape: `certus_vault_requests_total{kind="read"|"write"}`,
/// `certus_vault_logins_total`, `certus_vault_token_adoptions_total`,
/// `certus_vault_token_renewals_total`,
/// `certus_vault_errors_total`.
#[derive(Debug)]
pub struct VaultStatsCollector(pub std::sync::Arc<certus_vault_client::VaultStats>);

impl VaultStatsCollector {
    /// Registers the collector on `registry`.
    pub fn register(
        stats: std::sync::Arc<certus_vault_client::VaultStats>,
        registry: &mut Registry,
    ) {
        registry.register_collector(Box::new(VaultStatsCollector(stats)));
    }
}

impl prometheus_client::collector::Collector for VaultStatsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::MetricType;

        let s = self.0.snapshot();
        {
            let mut family = encoder.encode_descriptor(
                "certus_vault_requests",
                "Vault requests of the operator, by kind (read: GET/LIST; write: POST/PUT/DELETE; logins, renewals and health checks excluded)",
                None,
                MetricType::Counter,
            )?;
            for (kind, value) in [("read", s.reads), ("write", s.writes)] {
                let labels = [("kind", kind)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in [
            (
                "certus_vault_logins",
                "Vault logins (successful and failed attempts)",
                s.logins,
            ),
            (
                "certus_vault_token_adoptions",
                "Saved Vault login tokens adopted instead of logging in (after a restart or a leader change)",
                s.adoptions,
            ),
            (
                "certus_vault_token_renewals",
                "Renewals of the operator's Vault tokens",
                s.renewals,
            ),
            (
                "certus_vault_errors",
                "Vault requests that returned an error",
                s.errors,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
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
