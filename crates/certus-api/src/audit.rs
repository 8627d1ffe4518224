//! `AuditAlertRule`: a rule over Vault's audit stream that raises alerts (Kubernetes
//! Events, a Prometheus counter and an optional webhook) on suspicious access.
//!
//! The rule is evaluated by the `certus-audit` crate; this module only holds the types.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// A rule over Vault's audit log. Every audit entry that passes `match` (and, when set,
/// `unexpectedIdentity` and `timeWindow`) is a hit; without `threshold` each hit raises an
/// alert, with `threshold` an alert is raised once per window when `count` hits fall
/// within it.
///
/// Cluster-scoped on purpose: one Vault audit stream records the access of every tenant
/// (paths, identities, client addresses), so a rule can observe all of it. A namespaced
/// kind would let anyone allowed to create rules in their namespace watch other tenants'
/// Vault activity; cluster scope keeps rule authoring with the platform/security team,
/// which RBAC grants with one ClusterRole.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "AuditAlertRule",
    status = "AuditAlertRuleStatus",
    category = "vault",
    shortname = "aar",
    doc = "A rule over Vault's audit log that raises Kubernetes Events, Prometheus counters and optional webhooks on suspicious access.",
    printcolumn(name = "Severity", type_ = "string", json_path = ".spec.severity"),
    printcolumn(
        name = "Matches",
        type_ = "integer",
        json_path = ".status.matchesTotal"
    ),
    printcolumn(
        name = "Last Match",
        type_ = "date",
        json_path = ".status.lastMatchTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Summary",
        type_ = "string",
        json_path = ".status.lastMatchSummary",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AuditAlertRuleSpec {
    /// What the rule is about, copied into alerts (Events, webhook body). No secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Severity carried by the alerts: `Critical`, `Warning` (default) or `Info`.
    #[serde(default)]
    pub severity: AuditAlertSeverity,
    /// When true the rule is kept but not evaluated (no alerts, status kept).
    #[serde(default)]
    pub suspend: bool,
    /// Which audit entries the rule looks at. Every list that is set must match (lists
    /// are ORs of their items); an empty `match` looks at every response entry.
    #[serde(rename = "match", default)]
    pub match_: AuditMatch,
    /// "Only these identities may do this": an entry that passes `match` is a hit only
    /// when its identity matches none of `allowed`. Unauthenticated requests (no
    /// identity) never match an allowed identity, so they are hits too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unexpected_identity: Option<AuditUnexpectedIdentity>,
    /// Restricts hits to a time-of-day window (or to the time outside it), evaluated in
    /// an IANA time zone at the time the entry was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_window: Option<AuditTimeWindow>,
    /// Raise an alert only when `count` hits fall within a sliding `window`, and then at
    /// most once per window (per group). Without it every hit raises an alert; with
    /// `count: 1` it de-duplicates alerts to one per window and group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<AuditThreshold>,
    /// POST each alert as JSON to a webhook whose URL and headers come from a Secret.
    /// Delivery is retried with exponential backoff and never delays the audit stream;
    /// when the delivery queue is full the alert is dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<AuditWebhook>,
}

/// Alert severity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum AuditAlertSeverity {
    /// Page someone.
    Critical,
    /// Look at it soon.
    #[default]
    Warning,
    /// For the record.
    Info,
}

impl AuditAlertSeverity {
    /// The name used in alerts and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAlertSeverity::Critical => "Critical",
            AuditAlertSeverity::Warning => "Warning",
            AuditAlertSeverity::Info => "Info",
        }
    }
}

/// Conditions on one audit entry. Unset or empty lists match anything.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuditMatch {
    /// Request path globs, without a leading slash, e.g. `secret/data/prod/**`,
    /// `auth/*/login/*`. `*` matches any characters within one path segment (never `/`);
    /// `**` matches any characters including `/` (so `secret/data/prod/**` matches
    /// everything below `secret/data/prod/`, but not `secret/data/prod` itself); every
    /// other character matches itself. A path matches when any glob matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 1024), regex(pattern = "^[^/]"))
    )]
    pub paths: Vec<String>,
    /// Path globs (same syntax as `paths`) that are never hits, e.g.
    /// `sys/internal/ui/**` to ignore the UI's lookups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 1024), regex(pattern = "^[^/]"))
    )]
    pub exclude_paths: Vec<String>,
    /// Vault operations, e.g. `read`, `list`, `create`, `update`, `patch`, `delete`.
    /// Logins are `update` operations on `auth/<mount>/login/...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = "^[a-z][a-z-]{0,31}$")))]
    pub operations: Vec<String>,
    /// Mount types (`request.mount_type`), e.g. `kv`, `userpass`, `kubernetes`,
    /// `database`, `pki`, `token`, `system`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    pub mount_types: Vec<String>,
    /// Identities the rule looks at: an entry matches when any selector matches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub identities: Vec<AuditIdentitySelector>,
    /// Outcome of the request: `Any` (default), `Success`, `Error` (any error, including
    /// failed logins and denials) or `PermissionDenied` (refused by policy or token).
    #[serde(default)]
    pub result: AuditResult,
    /// Which entries to look at: `Response` (default; one per request, carries the
    /// outcome), `Request` (written before Vault handles the request) or `Any` (counts
    /// most requests twice).
    #[serde(default)]
    pub entry_type: AuditEntryType,
}

/// Outcome filter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuditResult {
    /// Every outcome.
    #[default]
    Any,
    /// Entries without an error.
    Success,
    /// Entries with an error (failed logins, denials, invalid requests).
    Error,
    /// Requests refused by policy or because the token was invalid.
    PermissionDenied,
}

/// Audit entry type filter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuditEntryType {
    /// Response entries only.
    #[default]
    Response,
    /// Request entries only.
    Request,
    /// Both.
    Any,
}

/// Selects identities by the fields Vault records in `auth`. Every field that is set must
/// match; values may contain `*` (any characters). At least one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("has(self.displayName) || has(self.entityId) || has(self.policy) || has(self.serviceAccountName) || has(self.serviceAccountNamespace)").message("an identity selector sets at least one of displayName, entityId, policy, serviceAccountName, serviceAccountNamespace"))]
#[serde(rename_all = "camelCase")]
pub struct AuditIdentitySelector {
    /// The token's display name (`auth.display_name`), e.g. `kubernetes-certus-tap-certus-ask`
    /// or `userpass-alice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub display_name: Option<String>,
    /// The Vault identity entity id (`auth.entity_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub entity_id: Option<String>,
    /// A policy the token carries (`auth.policies` contains it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub policy: Option<String>,
    /// Kubernetes ServiceAccount name from Kubernetes-auth metadata
    /// (`auth.metadata.service_account_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Kubernetes ServiceAccount namespace from Kubernetes-auth metadata
    /// (`auth.metadata.service_account_namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service_account_namespace: Option<String>,
}

/// The identities allowed to do what `match` describes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditUnexpectedIdentity {
    /// Allowed identities; any other identity is a hit.
    #[schemars(length(min = 1, max = 64))]
    pub allowed: Vec<AuditIdentitySelector>,
}

/// A daily time-of-day window in a time zone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.start != self.end").message("timeWindow.start and timeWindow.end must differ (an end before the start spans midnight)"))]
#[serde(rename_all = "camelCase")]
pub struct AuditTimeWindow {
    /// Start of the window, `HH:MM` (24-hour clock, inclusive).
    #[schemars(regex(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// End of the window, `HH:MM` (exclusive). An end before the start spans midnight,
    /// e.g. `22:00`–`06:00`.
    #[schemars(regex(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// IANA time zone the times are in, e.g. `Europe/Berlin` (default `UTC`). Daylight
    /// saving time is applied. An unknown zone makes the rule `Ready=False`.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Days of the week the window applies to (in `timeZone`; the day the window
    /// starts for windows that span midnight). Empty means every day. With
    /// `when: Outside`, every moment on other days is outside the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub days: Vec<AuditWeekday>,
    /// `Inside` (default): hits only inside the window. `Outside`: hits only outside it,
    /// e.g. production reads outside business hours.
    #[serde(default)]
    pub when: AuditWindowMode,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

/// A day of the week.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AuditWeekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Whether a time window selects the time inside or outside it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuditWindowMode {
    /// Hits only inside the window.
    #[default]
    Inside,
    /// Hits only outside the window.
    Outside,
}

/// N hits within a sliding window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditThreshold {
    /// Number of hits within `window` that raises an alert (the alert fires on the
    /// `count`-th hit). "More than 5" is `count: 6`.
    #[schemars(range(min = 1, max = 10000))]
    pub count: u32,
    /// Length of the sliding window, e.g. `5m` (units ms, s, m, h, d, w; at most `24h`).
    /// After an alert, the same group raises no further alert until a window has passed.
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub window: String,
    /// Count hits per `Identity` (entity id, else display name), per `RemoteAddress`
    /// (client IP as Vault saw it), or all together (`None`, default).
    #[serde(default)]
    pub group_by: AuditGroupBy,
}

/// How threshold hits are grouped.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuditGroupBy {
    /// One counter for the whole rule.
    #[default]
    None,
    /// One counter per identity.
    Identity,
    /// One counter per client address.
    RemoteAddress,
}

/// Webhook delivery of alerts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditWebhook {
    /// The Secret that holds the webhook: key `url` is the URL (`https://...`), and every
    /// key `header.<Name>` adds the HTTP header `<Name>` with the key's value (e.g.
    /// `header.Authorization`).
    pub secret_ref: AuditWebhookSecretRef,
    /// Timeout of one delivery attempt, e.g. `10s` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub timeout: Option<String>,
    /// Attempts per alert (default 5), with exponential backoff between them. Server
    /// errors (5xx), 429 and connection errors are retried; other 4xx are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: Option<u32>,
}

/// A Secret in a given namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditWebhookSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret (the rule is cluster-scoped, so it is always explicit).
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
}

/// Observed state of an `AuditAlertRule`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditAlertRuleStatus {
    /// `Ready`: `True` while the rule is evaluated; `False` with `InvalidSpec` (e.g. an
    /// unknown time zone), `Suspended`, `NoAuditSource` (the operator reads no audit
    /// stream), or a webhook problem: `SecretNotFound`, `PermissionDenied`,
    /// `InvalidWebhook`, `SecretUnavailable` (the rule still raises Events and metrics).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Alerts this rule raised since it was created (a threshold rule raises one per
    /// window and group in which the threshold was reached).
    #[serde(default)]
    pub matches_total: i64,
    /// Audit time of the entry that raised the last alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_match_time: Option<DateTime<Utc>>,
    /// Short, secret-free summary of the last alert: operation, path, identity display
    /// name, client address and count. Never request or response data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_match_summary: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn rules(crd: &serde_json::Value) -> Vec<String> {
        let mut out = vec![];
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::Array(rs)) = m.get("x-kubernetes-validations") {
                        for r in rs {
                            out.push(r["rule"].as_str().unwrap_or_default().to_string());
                        }
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(crd, &mut out);
        out
    }

    #[test]
    fn crd_is_cluster_scoped_with_columns_and_status() {
        let crd = serde_json::to_value(AuditAlertRule::crd()).unwrap();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["categories"][0], "vault");
        let v = &crd["spec"]["versions"][0];
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for c in ["Matches", "Last Match", "Ready", "Age"] {
            assert!(cols.contains(&c), "{cols:?}");
        }
        let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        for f in [
            "observedGeneration",
            "matchesTotal",
            "lastMatchTime",
            "lastMatchSummary",
        ] {
            assert!(status[f].is_object(), "status.{f}");
        }
        let r = rules(&crd);
        assert!(r.iter().any(|r| r == "self.start != self.end"));
        assert!(r.iter().any(|r| r.contains("has(self.displayName)")));
        let spec =
            serde_json::to_string(&v["schema"]["openAPIV3Schema"]["properties"]["spec"]).unwrap();
        for bad in ["\"$ref\"", "\"anyOf\"", "\"oneOf\"", "\"allOf\""] {
            assert!(!spec.contains(bad), "non-structural schema: {bad}");
        }
    }

    #[test]
    fn every_field_is_documented_for_kubectl_explain() {
        fn walk(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    if p.get("description")
                        .and_then(|d| d.as_str())
                        .is_none_or(str::is_empty)
                    {
                        out.push(format!("{path}.{k}"));
                    }
                    walk(p, &format!("{path}.{k}"), out);
                    if let Some(items) = p.get("items") {
                        walk(items, &format!("{path}.{k}[]"), out);
                    }
                }
            }
        }
        let crd = serde_json::to_value(AuditAlertRule::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let mut missing = vec![];
        walk(&schema["spec"], "spec", &mut missing);
        walk(&schema["status"], "status", &mut missing);
        missing.retain(|m| !m.starts_with("status.conditions[]"));
        assert!(missing.is_empty(), "undocumented: {missing:#?}");
    }

    #[test]
    fn cel_rules_reject_bad_windows_and_empty_selectors() {
        let parse = |spec: serde_json::Value| -> AuditAlertRule {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "vault.certus.io/v1alpha1", "kind": "AuditAlertRule",
                "metadata": {"name": "x"}, "spec": spec
            }))
            .unwrap()
        };
        let same = parse(serde_json::json!({"timeWindow": {"start": "06:00", "end": "06:00"}}));
        let err = kube::core::cel::validate_cel(&same)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must differ"), "{err}");
        let empty = parse(serde_json::json!({"unexpectedIdentity": {"allowed": [{}]}}));
        let err = kube::core::cel::validate_cel(&empty)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one of displayName"), "{err}");
        let ok = parse(serde_json::json!({
            "match": {"paths": ["auth/*/login/**"], "identities": [{"policy": "admin"}]},
            "timeWindow": {"start": "22:00", "end": "06:00", "timeZone": "Europe/Berlin"}
        }));
        kube::core::cel::validate_cel(&ok).unwrap();
    }

    #[test]
    fn sample_shape_deserializes_with_defaults() {
        let r: AuditAlertRule = serde_json::from_value(serde_json::json!({
            "apiVersion": "vault.certus.io/v1alpha1",
            "kind": "AuditAlertRule",
            "metadata": {"name": "x"},
            "spec": {
                "match": {"paths": ["secret/data/prod/**"], "operations": ["read"]},
                "timeWindow": {"start": "06:00", "end": "18:00", "when": "Outside"},
                "threshold": {"count": 1, "window": "1h"}
            }
        }))
        .unwrap();
        assert_eq!(r.spec.severity, AuditAlertSeverity::Warning);
        assert_eq!(r.spec.match_.entry_type, AuditEntryType::Response);
        let tw = r.spec.time_window.unwrap();
        assert_eq!(tw.time_zone, "UTC");
        assert_eq!(tw.when, AuditWindowMode::Outside);
        assert_eq!(r.spec.threshold.unwrap().group_by, AuditGroupBy::None);
    }
}
