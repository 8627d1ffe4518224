//! Helpers shared by the integration tests: a collecting Event sink, runtime builders,
//! rule loading from the samples, and a waiting helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certus_api::AuditAlertRule;
use certus_audit::{
    Alert, AuditMetrics, AuditRuntime, Clock, DispatcherOptions, EventSink, MetricsOptions,
    SystemClock, TimeBasis,
};
use futures::future::BoxFuture;

/// An Event sink that records alerts.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<Alert>>);

impl Collect {
    pub fn alerts(&self) -> Vec<Alert> {
        self.0.lock().unwrap().clone()
    }
    pub fn for_rule(&self, rule: &str) -> Vec<Alert> {
        self.alerts()
            .into_iter()
            .filter(|a| a.rule == rule)
            .collect()
    }
}

impl EventSink for Collect {
    fn publish<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), String>> {
        self.0.lock().unwrap().push(alert.clone());
        Box::pin(async { Ok(()) })
    }
}

pub struct Harness {
    pub runtime: AuditRuntime,
    pub events: Arc<Collect>,
    pub metrics: Arc<AuditMetrics>,
}

pub fn harness_with(
    clock: Arc<dyn Clock>,
    basis: TimeBasis,
    dispatcher: DispatcherOptions,
) -> Harness {
    let events = Arc::new(Collect::default());
    let metrics = Arc::new(AuditMetrics::unregistered(MetricsOptions::default()));
    let runtime = AuditRuntime::with_metrics(
        metrics.clone(),
        Some(events.clone() as Arc<dyn EventSink>),
        dispatcher,
        clock,
        basis,
        None,
    )
    .unwrap();
    Harness {
        runtime,
        events,
        metrics,
    }
}

pub fn harness() -> Harness {
    harness_with(
        Arc::new(SystemClock),
        TimeBasis::EntryTime,
        DispatcherOptions::default(),
    )
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn samples_dir() -> PathBuf {
    repo_root().join("config/samples/audit")
}

/// Loads an AuditAlertRule sample.
pub fn sample(file: &str) -> AuditAlertRule {
    let text = std::fs::read_to_string(samples_dir().join(file)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A rule from YAML spec text.
pub fn rule(name: &str, spec_yaml: &str) -> AuditAlertRule {
    let mut r = AuditAlertRule::new(name, serde_yaml::from_str(spec_yaml).unwrap());
    r.metadata.generation = Some(1);
    r
}

/// Polls `f` every 20 ms until it is true or `timeout` passes.
pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One audit line (response entry) for a read of `path` by `display`.
pub fn read_line(path: &str, display: &str, time: &str) -> String {
    serde_json::json!({
        "time": time,
        "type": "response",
        "auth": {"client_token": "hmac-sha256:00", "display_name": display, "policies": ["default"]},
        "request": {"operation": "read", "path": path, "mount_type": "kv", "mount_point": "secret/", "remote_address": "10.1.2.3"},
        "response": {"mount_type": "kv", "data": {"value": "hmac-sha256:ff"}}
    })
    .to_string()
}
