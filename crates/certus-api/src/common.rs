//! API pieces shared by every kind: conditions, references, deletion and drift policies.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The status of a condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// A condition in the standard Kubernetes shape (`metav1.Condition`), readable by
/// `kubectl wait --for=condition=Ready`, Flux's kstatus and Argo CD health checks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, e.g. `Ready`, `Drifted`, `Connected`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition: `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition, e.g. `Reconciled`,
    /// `InvalidSpec`, `Conflict`, `VaultUnavailable`.
    pub reason: String,
    /// Human-readable explanation; never contains secret values.
    #[serde(default)]
    pub message: String,
    /// When the condition last changed status.
    pub last_transition_time: DateTime<Utc>,
    /// The `.metadata.generation` the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Standard condition types.
pub mod condition_types {
    /// The resource is fully reconciled into Vault.
    pub const READY: &str = "Ready";
    /// The live Vault state differed from the spec at the last check.
    pub const DRIFTED: &str = "Drifted";
    /// The Vault connection works (reachable, unsealed, login succeeded).
    pub const CONNECTED: &str = "Connected";
}

/// Standard condition reasons.
pub mod reasons {
    pub const RECONCILED: &str = "Reconciled";
    pub const PROGRESSING: &str = "Progressing";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const CONFLICT: &str = "Conflict";
    pub const VAULT_UNAVAILABLE: &str = "VaultUnavailable";
    pub const PERMISSION_DENIED: &str = "PermissionDenied";
    pub const VAULT_REJECTED: &str = "VaultRejected";
    pub const CONNECTION_NOT_READY: &str = "ConnectionNotReady";
    pub const CONNECTION_NOT_FOUND: &str = "ConnectionNotFound";
    pub const NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
    pub const DRIFT_DETECTED: &str = "DriftDetected";
    pub const IN_SYNC: &str = "InSync";
    pub const LOGIN_FAILED: &str = "LoginFailed";
    pub const CONNECTED: &str = "Connected";
    pub const DELETING: &str = "Deleting";
    pub const WAITING_FOR_DEPENDENCY: &str = "WaitingForDependency";
}

impl Condition {
    /// Builds a condition stamped with `now`.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
        now: DateTime<Utc>,
    ) -> Self {
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: generation,
        }
    }
}

/// Inserts or replaces the condition of the same type, keeping `lastTransitionTime` when
/// the status did not change (the Kubernetes convention), and keeping the list sorted by type.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        let keep_time = existing.status == new.status;
        let time = existing.last_transition_time;
        *existing = new;
        if keep_time {
            existing.last_transition_time = time;
        }
    } else {
        conditions.push(new);
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    }
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Which kind of connection a resource refers to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum ConnectionKind {
    /// A `VaultConnection` in the resource's own namespace.
    #[default]
    VaultConnection,
    /// A cluster-scoped `ClusterVaultConnection` whose `allowedNamespaces` admits the
    /// resource's namespace.
    ClusterVaultConnection,
}

/// Reference to the Vault connection a resource is reconciled through.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRef {
    /// Name of the `VaultConnection` (same namespace) or `ClusterVaultConnection`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Kind of the referenced connection: `VaultConnection` (default) or
    /// `ClusterVaultConnection`.
    #[serde(default)]
    pub kind: ConnectionKind,
}

/// What happens in Vault when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove what the operator created in Vault (a finalizer waits for it).
    Delete,
    /// Leave the Vault object in place; only the Kubernetes resource goes away.
    Retain,
}

/// What to do when the live Vault state differs from the spec.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DriftPolicy {
    /// Report the drift (Event + `Drifted` condition) and write the spec back to Vault.
    #[default]
    Correct,
    /// Only report the drift; leave Vault as it is.
    Report,
}

/// Reference to one key of a Kubernetes Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Namespace of the Secret. Must be empty for namespaced resources (the resource's own
    /// namespace is used); required for cluster-scoped resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Status fields every kind carries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// Latest observations of the resource's state. `Ready` is always present once the
    /// operator has seen the resource.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Parses a duration such as `30s`, `15m`, `1h30m`, `90d` (units: ms, s, m, h, d, w).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!("{s:?} is not a duration: expected a number at position {start}, e.g. 30s, 15m, 1h, 90d"));
        }
        let n: u128 = s[start..i]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u128 = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(format!(
                    "{s:?} is not a duration: a unit (ms, s, m, h, d, w) must follow {n}"
                ))
            }
            u => {
                return Err(format!(
                    "{s:?} is not a duration: unknown unit {u:?} (use ms, s, m, h, d, w)"
                ))
            }
        };
        total = total
            .checked_add(n * unit_ms)
            .ok_or_else(|| format!("{s:?}: duration too large"))?;
    }
    Ok(std::time::Duration::from_millis(
        u64::try_from(total).map_err(|_| format!("{s:?}: duration too large"))?,
    ))
}

/// The regular expression the CRD schemas use for duration strings.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h|d|w))+$";

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("90d").unwrap().as_secs(), 90 * 86400);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").unwrap_err().contains("unit"));
        assert!(parse_duration("10y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_unchanged() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
        let mut cs = vec![];
        set_condition(
            &mut cs,
            Condition::new("Ready", ConditionStatus::True, "A", "", Some(1), t0),
        );
        set_condition(
            &mut cs,
            Condition::new("Ready", ConditionStatus::True, "B", "m", Some(2), t1),
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, t0);
        assert_eq!(cs[0].reason, "B");
        assert_eq!(cs[0].observed_generation, Some(2));
        set_condition(
            &mut cs,
            Condition::new("Ready", ConditionStatus::False, "C", "", Some(2), t1),
        );
        assert_eq!(cs[0].last_transition_time, t1);
        set_condition(
            &mut cs,
            Condition::new("Drifted", ConditionStatus::False, "C", "", Some(2), t1),
        );
        assert_eq!(
            cs.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Drifted", "Ready"]
        );
    }
}
