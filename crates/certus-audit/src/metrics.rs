//! Audit metrics (prometheus-client), with bounded label cardinality.
//!
//! Every metric is registered on the registry the caller passes to
//! [`AuditMetrics::register`] under its full name (pass the root registry, not a
//! prefixed sub-registry). Counters get `_total` appended on exposition.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `certus_audit_lines_total` | counter | `source` (`file`, `socket`) |
//! | `certus_audit_malformed_lines_total` | counter | `source` |
//! | `certus_audit_requests_total` | counter | `mount`, `operation`, `identity` |
//! | `certus_audit_denials_total` | counter | `mount`, `operation`, `identity` |
//! | `certus_audit_failed_logins_total` | counter | `mount` |
//! | `certus_audit_rule_matches_total` | counter | `rule`, `severity` |
//! | `certus_audit_alerts_dropped_total` | counter | `sink` (`event`, `webhook`) |
//! | `certus_audit_webhook_deliveries_total` | counter | `result` (`delivered`, `failed`) |
//! | `certus_audit_webhook_retries_total` | counter | – |
//! | `certus_audit_event_failures_total` | counter | – |
//! | `certus_audit_source_events_total` | counter | `event` (`rotated`, `truncated`, `replaced`, `resumed`, `resumed_rotated`, `checkpoint_lost`, `oversized_line`) |
//! | `certus_audit_checkpoint_failures_total` | counter | – |
//! | `certus_audit_last_entry_timestamp_seconds` | gauge | – |
//!
//! Requests and denials are counted from response entries only (each request has a
//! request and a response entry). A denial is an entry whose ACL check failed or whose
//! error is `permission denied`; a failed login is a response with an error on
//! `auth/<mount>/login...`.
//!
//! ## Cardinality
//! - `identity` is the token's display name, `anonymous` for unauthenticated requests,
//!   or `other`. A display name gets its own label value when it is in the allow-list
//!   ([`MetricsOptions::identity_allow_list`]), or while the dynamic budget
//!   ([`MetricsOptions::identity_budget`], default 50) lasts: the first N distinct
//!   display names seen by this process keep their label for the process lifetime (no
//!   series churn); every later one is reported as `other`. Set the budget to 0 to
//!   label only allow-listed identities.
//! - `mount` is the mount point (e.g. `secret/`), bounded the same way by
//!   [`MetricsOptions::mount_budget`] (default 200).
//! - `operation` is one of Vault's operations; anything else is `other`.
//! - `rule` is bounded by the number of `AuditAlertRule` resources.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::entry::{AuditEntry, EntryKind, Outcome, ANONYMOUS};

/// Label value for identities and mounts beyond the budget.
pub const OTHER: &str = "other";

/// Vault's request operations (anything else is labelled `other`).
pub const OPERATIONS: &[&str] = &[
    "create",
    "read",
    "update",
    "patch",
    "delete",
    "list",
    "help",
    "alias-lookahead",
    "resolve-role",
    "header",
    "revoke",
    "renew",
    "rollback",
];

/// Cardinality settings.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// Display names that always get their own `identity` label value.
    pub identity_allow_list: Vec<String>,
    /// How many further display names get their own label value (first come).
    pub identity_budget: usize,
    /// How many mount points get their own `mount` label value (first come).
    pub mount_budget: usize,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            identity_allow_list: Vec::new(),
            identity_budget: 50,
            mount_budget: 200,
        }
    }
}

/// `source` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `file` or `socket`.
    pub source: &'static str,
}

/// Labels of request and denial counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Mount point or `other`.
    pub mount: String,
    /// Operation or `other`.
    pub operation: String,
    /// Display name, `anonymous` or `other`.
    pub identity: String,
}

/// `mount` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountLabels {
    /// Mount point or `other`.
    pub mount: String,
}

/// Labels of rule matches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// Rule name.
    pub rule: String,
    /// Severity.
    pub severity: &'static str,
}

/// `sink` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// `event` or `webhook`.
    pub sink: &'static str,
}

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `delivered` or `failed`.
    pub result: &'static str,
}

/// `event` label of source events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceEventLabels {
    /// What happened to the audit file.
    pub event: &'static str,
}

#[derive(Debug)]
struct Budget {
    allow: HashSet<String>,
    admitted: HashSet<String>,
    budget: usize,
}

impl Budget {
    fn new(allow: &[String], budget: usize) -> Self {
        Budget {
            allow: allow.iter().cloned().collect(),
            admitted: HashSet::new(),
            budget,
        }
    }

    fn label(&mut self, v: &str) -> String {
        if self.allow.contains(v) || self.admitted.contains(v) {
            return v.to_string();
        }
        if self.admitted.len() < self.budget {
            self.admitted.insert(v.to_string());
            return v.to_string();
        }
        OTHER.to_string()
    }
}

/// The audit metrics. Create once with [`AuditMetrics::register`].
#[derive(Debug)]
pub struct AuditMetrics {
    lines: Family<SourceLabels, Counter>,
    malformed: Family<SourceLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    denials: Family<RequestLabels, Counter>,
    failed_logins: Family<MountLabels, Counter>,
    rule_matches: Family<RuleLabels, Counter>,
    dropped: Family<SinkLabels, Counter>,
    webhook: Family<ResultLabels, Counter>,
    webhook_retries: Counter,
    event_failures: Counter,
    source_events: Family<SourceEventLabels, Counter>,
    checkpoint_failures: Counter,
    last_entry: Gauge<f64, AtomicU64>,
    identities: Mutex<Budget>,
    mounts: Mutex<Budget>,
}

impl AuditMetrics {
    /// Registers every audit metric on `registry`.
    pub fn register(registry: &mut Registry, opts: MetricsOptions) -> Self {
        let m = AuditMetrics::unregistered(opts);
        registry.register("certus_audit_lines", "Audit lines read", m.lines.clone());
        registry.register(
            "certus_audit_malformed_lines",
            "Audit lines that are not JSON audit entries (skipped)",
            m.malformed.clone(),
        );
        registry.register(
            "certus_audit_requests",
            "Vault requests seen in the audit log (response entries)",
            m.requests.clone(),
        );
        registry.register(
            "certus_audit_denials",
            "Vault requests denied by policy or for an invalid token",
            m.denials.clone(),
        );
        registry.register(
            "certus_audit_failed_logins",
            "Failed logins (error on auth/<mount>/login)",
            m.failed_logins.clone(),
        );
        registry.register(
            "certus_audit_rule_matches",
            "Alerts raised by AuditAlertRules",
            m.rule_matches.clone(),
        );
        registry.register(
            "certus_audit_alerts_dropped",
            "Alerts dropped because a sink queue was full",
            m.dropped.clone(),
        );
        registry.register(
            "certus_audit_webhook_deliveries",
            "Alert webhook deliveries by final result",
            m.webhook.clone(),
        );
        registry.register(
            "certus_audit_webhook_retries",
            "Alert webhook attempts that failed and were retried",
            m.webhook_retries.clone(),
        );
        registry.register(
            "certus_audit_event_failures",
            "Alerts the Kubernetes Event sink failed to publish",
            m.event_failures.clone(),
        );
        registry.register(
            "certus_audit_source_events",
            "Audit file events: rotation, truncation, replacement, resume",
            m.source_events.clone(),
        );
        registry.register(
            "certus_audit_checkpoint_failures",
            "Failures to save the audit reader checkpoint",
            m.checkpoint_failures.clone(),
        );
        registry.register(
            "certus_audit_last_entry_timestamp_seconds",
            "Time (Unix seconds) of the last audit entry processed",
            m.last_entry.clone(),
        );
        m
    }

    /// Metrics that are not registered anywhere (tests, benchmarks).
    pub fn unregistered(opts: MetricsOptions) -> Self {
        let m = AuditMetrics {
            lines: Family::default(),
            malformed: Family::default(),
            requests: Family::default(),
            denials: Family::default(),
            failed_logins: Family::default(),
            rule_matches: Family::default(),
            dropped: Family::default(),
            webhook: Family::default(),
            webhook_retries: Counter::default(),
            event_failures: Counter::default(),
            source_events: Family::default(),
            checkpoint_failures: Counter::default(),
            last_entry: Gauge::default(),
            identities: Mutex::new(Budget::new(&opts.identity_allow_list, opts.identity_budget)),
            mounts: Mutex::new(Budget::new(&[], opts.mount_budget)),
        };
        // Zero-valued series for every bounded label value, so `increase()` sees the
        // first event and dashboards show 0 instead of "no data".
        for source in ["file", "socket"] {
            let _ = m.lines.get_or_create(&SourceLabels { source });
            let _ = m.malformed.get_or_create(&SourceLabels { source });
        }
        for sink in ["event", "webhook"] {
            let _ = m.dropped.get_or_create(&SinkLabels { sink });
        }
        for result in ["delivered", "failed"] {
            let _ = m.webhook.get_or_create(&ResultLabels { result });
        }
        for event in crate::tail::TailEvent::ALL {
            let _ = m.source_events.get_or_create(&SourceEventLabels {
                event: event.as_str(),
            });
        }
        m
    }

    pub(crate) fn line(&self, source: &'static str) {
        self.lines.get_or_create(&SourceLabels { source }).inc();
    }

    pub(crate) fn malformed(&self, source: &'static str) {
        self.malformed.get_or_create(&SourceLabels { source }).inc();
    }

    /// Malformed lines counted so far for a source.
    pub fn malformed_count(&self, source: &'static str) -> u64 {
        self.malformed.get_or_create(&SourceLabels { source }).get()
    }

    /// Lines counted so far for a source.
    pub fn line_count(&self, source: &'static str) -> u64 {
        self.lines.get_or_create(&SourceLabels { source }).get()
    }

    /// Counts an entry in the request/denial/failed-login metrics.
    pub(crate) fn entry(&self, e: &AuditEntry<'_>) {
        if let Some(t) = e.time {
            self.last_entry
                .set(t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1000.0);
        }
        if e.kind() != EntryKind::Response {
            return;
        }
        let mount = {
            let mp = e.mount_point();
            let mp = if mp.is_empty() { "none" } else { mp };
            self.mounts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .label(mp)
        };
        let operation = if OPERATIONS.contains(&e.operation()) {
            e.operation().to_string()
        } else {
            OTHER.to_string()
        };
        let identity = match e.display_name() {
            None => ANONYMOUS.to_string(),
            Some(d) => self
                .identities
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .label(d),
        };
        let outcome = e.outcome();
        let labels = RequestLabels {
            mount,
            operation,
            identity,
        };
        if outcome == Outcome::PermissionDenied {
            self.denials.get_or_create(&labels).inc();
        }
        if outcome != Outcome::Success && e.is_login() {
            self.failed_logins
                .get_or_create(&MountLabels {
                    mount: labels.mount.clone(),
                })
                .inc();
        }
        self.requests.get_or_create(&labels).inc();
    }

    pub(crate) fn rule_match(&self, rule: &str, severity: &'static str) {
        self.rule_matches
            .get_or_create(&RuleLabels {
                rule: rule.to_string(),
                severity,
            })
            .inc();
    }

    pub(crate) fn dropped(&self, sink: &'static str) {
        self.dropped.get_or_create(&SinkLabels { sink }).inc();
    }

    /// Alerts dropped so far for a sink (`event` or `webhook`).
    pub fn dropped_count(&self, sink: &'static str) -> u64 {
        self.dropped.get_or_create(&SinkLabels { sink }).get()
    }

    pub(crate) fn webhook_result(&self, result: &'static str) {
        self.webhook.get_or_create(&ResultLabels { result }).inc();
    }

    /// Webhook deliveries so far with a final result (`delivered` or `failed`).
    pub fn webhook_count(&self, result: &'static str) -> u64 {
        self.webhook.get_or_create(&ResultLabels { result }).get()
    }

    pub(crate) fn webhook_retries(&self, n: u64) {
        self.webhook_retries.inc_by(n);
    }

    pub(crate) fn event_failure(&self) {
        self.event_failures.inc();
    }

    pub(crate) fn source_event(&self, event: &'static str) {
        self.source_events
            .get_or_create(&SourceEventLabels { event })
            .inc();
    }

    /// Source events so far of a kind (e.g. `rotated`).
    pub fn source_event_count(&self, event: &'static str) -> u64 {
        self.source_events
            .get_or_create(&SourceEventLabels { event })
            .get()
    }

    pub(crate) fn checkpoint_failure(&self) {
        self.checkpoint_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::parse_line;
    use crate::rule::tests::entry;
    use prometheus_client::encoding::text::encode;

    fn observe(m: &AuditMetrics, line: &str) {
        m.entry(&parse_line(line.as_bytes()).unwrap().unwrap());
    }

    #[test]
    fn requests_denials_and_failed_logins_are_exported() {
        let mut reg = Registry::default();
        let m = AuditMetrics::register(&mut reg, MetricsOptions::default());
        observe(&m, &entry().line());
        observe(&m, &entry().request().line());
        observe(&m, &entry().denied().line());
        observe(
            &m,
            &entry()
                .anonymous()
                .op("update")
                .path("auth/userpass/login/bob")
                .error("invalid credentials")
                .line(),
        );
        m.rule_match("prod-reads", "Warning");
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(out.contains(r#"certus_audit_requests_total{mount="none",operation="read",identity="userpass-alice"} 2"#), "{out}");
        assert!(out.contains(r#"certus_audit_denials_total{mount="none",operation="read",identity="userpass-alice"} 1"#), "{out}");
        assert!(
            out.contains(r#"certus_audit_failed_logins_total{mount="none"} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"identity="anonymous""#), "{out}");
        assert!(
            out.contains(
                r#"certus_audit_rule_matches_total{rule="prod-reads",severity="Warning"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains("certus_audit_last_entry_timestamp_seconds"),
            "{out}"
        );
        assert!(!out.contains("hmac"), "{out}");
    }

    #[test]
    fn identity_labels_are_bounded() {
        let mut reg = Registry::default();
        let m = AuditMetrics::register(
            &mut reg,
            MetricsOptions {
                identity_allow_list: vec!["kubernetes-certus-ask".into()],
                identity_budget: 3,
                mount_budget: 200,
            },
        );
        for i in 0..100 {
            observe(&m, &entry().display(&format!("user-{i}")).line());
        }
        observe(&m, &entry().display("kubernetes-certus-ask").line());
        observe(&m, &entry().display("user-1").line());
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        let series: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("certus_audit_requests_total{"))
            .collect();
        assert_eq!(
            series.len(),
            5,
            "3 budgeted + allow-listed + other: {series:#?}"
        );
        assert!(out.contains(r#"identity="other"} 97"#), "{out}");
        assert!(out.contains(r#"identity="user-1"} 2"#), "{out}");
        assert!(
            out.contains(r#"identity="kubernetes-certus-ask"} 1"#),
            "{out}"
        );
    }

    #[test]
    fn unknown_operations_are_other() {
        let m = AuditMetrics::unregistered(MetricsOptions::default());
        observe(&m, &entry().op("weird-op-123").line());
        let mut reg = Registry::default();
        reg.register("x", "x", m.requests.clone());
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(out.contains(r#"operation="other""#), "{out}");
    }
}
