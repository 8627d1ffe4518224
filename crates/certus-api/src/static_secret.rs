//! `StaticSecret`: a KV secret (v2 or v1) projected into a Kubernetes Secret and kept
//! fresh.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ConnectionRef};
use crate::projection::{RolloutTarget, SecretTarget};

/// Annotations the StaticSecret pipeline writes on its Secret, besides the shared
/// `vault.certus.io/spec-hash` and `vault.certus.io/data-hash`.
pub mod static_secret_annotations {
    /// The KV v2 version the Secret's content was read from (absent for KV v1).
    pub const SYNCED_VERSION: &str = "vault.certus.io/synced-version";
    /// `<mount>/<path>` the Secret's content was read from.
    pub const SOURCE: &str = "vault.certus.io/source";
}

/// A KV secret projected into a Kubernetes Secret. For KV v2 the operator notices a new
/// version with a metadata read (the data is read only when the version changed or the
/// Secret was deleted or edited); KV v1 has no versions, so its data is read on every
/// refresh and the Secret written only when it changed.
// The printer columns repeat `name`/`type_`/`json_path`; clippy takes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "StaticSecret",
    namespaced,
    status = "StaticSecretStatus",
    category = "vault",
    shortname = "ssec",
    doc = "A KV v2/v1 secret projected into a Kubernetes Secret, refreshed on an interval, with optional rollout restarts.",
    printcolumn(name = "Path", type_ = "string", json_path = ".status.source"),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".status.syncedVersion"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("!has(self.version) || self.kvVersion == 2").message("spec.version pins a KV v2 version; KV v1 has no versions"))]
#[serde(rename_all = "camelCase")]
pub struct StaticSecretSpec {
    /// The Vault connection to read through. When omitted, the `VaultConnection` named
    /// `default` in the same namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// Path the KV secrets engine is mounted at, e.g. `secret` or `certus`.
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = "^[^/\\s]([^\\s]*[^/\\s])?$")
    )]
    pub mount: String,
    /// Path of the secret inside the mount, e.g. `prod/openai` (without `data/`).
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = "^[^/\\s]([^\\s]*[^/\\s])?$")
    )]
    pub path: String,
    /// KV engine version of the mount: `2` (default, versioned) or `1`.
    #[serde(default = "default_kv_version")]
    #[schemars(range(min = 1, max = 2))]
    pub kv_version: u8,
    /// Pins a KV v2 version instead of following the latest one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<u64>,
    /// The Kubernetes Secret to write. Its `data` templates select and rename keys, e.g.
    /// `{"OPENAI_API_KEY": "{{ api_key }}"}`; when empty every key of the KV secret is
    /// copied as it is.
    #[serde(default)]
    pub secret: SecretTarget,
    /// How often Vault is checked for a new version, e.g. `1m` (default), `30s`, `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub refresh_interval: Option<String>,
    /// Workloads rolled out (pod template annotation bump) when the Secret's data
    /// changes; not when only the version changed with identical data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rollout_restart_targets: Vec<RolloutTarget>,
}

fn default_kv_version() -> u8 {
    2
}

/// Default `refreshInterval`.
pub const DEFAULT_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

impl StaticSecretSpec {
    /// The refresh interval, or why it is invalid.
    pub fn refresh(&self) -> Result<std::time::Duration, String> {
        match &self.refresh_interval {
            None => Ok(DEFAULT_REFRESH_INTERVAL),
            Some(s) => {
                let d =
                    crate::parse_duration(s).map_err(|e| format!("spec.refreshInterval: {e}"))?;
                if d < std::time::Duration::from_secs(1) {
                    return Err(format!("spec.refreshInterval: {s:?} is shorter than 1s"));
                }
                Ok(d)
            }
        }
    }

    /// `<mount>/<path>`, for messages and the status.
    pub fn source(&self) -> String {
        format!(
            "{}/{}",
            self.mount.trim_matches('/'),
            self.path.trim_matches('/')
        )
    }
}

/// Observed state of a `StaticSecret`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticSecretStatus {
    /// `Ready` is `True` when the Secret holds the KV secret's current data.
    /// `Ready=False` with `WaitingForDependency` means the KV path does not exist (yet).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `<mount>/<path>` of the KV secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The KV v2 version the Secret holds (absent for KV v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_version: Option<u64>,
    /// When the Secret was last confirmed to match Vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<DateTime<Utc>>,
    /// When the Secret's data last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<DateTime<Utc>>,
    /// Short hash of the Secret's data (detects edits; not reversible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,
    /// Name of the Secret written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn parse(y: &str) -> StaticSecret {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn defaults_and_cel_rules() {
        let s = parse("apiVersion: vault.certus.io/v1alpha1\nkind: StaticSecret\nmetadata: {name: a, namespace: n}\nspec: {mount: secret, path: app/db}\n");
        assert_eq!(s.spec.kv_version, 2);
        assert_eq!(s.spec.refresh().unwrap(), DEFAULT_REFRESH_INTERVAL);
        assert_eq!(s.spec.source(), "secret/app/db");
        kube::core::cel::validate_cel(&s).unwrap();
        let pinned_v1 = parse("apiVersion: vault.certus.io/v1alpha1\nkind: StaticSecret\nmetadata: {name: a, namespace: n}\nspec: {mount: kv, path: x, kvVersion: 1, version: 3}\n");
        let err = kube::core::cel::validate_cel(&pinned_v1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("KV v1 has no versions"), "{err}");
        let bad = parse("apiVersion: vault.certus.io/v1alpha1\nkind: StaticSecret\nmetadata: {name: a, namespace: n}\nspec: {mount: kv, path: x, refreshInterval: 500ms}\n");
        assert!(bad.spec.refresh().unwrap_err().contains("shorter than 1s"));
    }

    #[test]
    fn crd_shape() {
        let crd = serde_json::to_value(StaticSecret::crd()).unwrap();
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "ssec");
        assert_eq!(crd["spec"]["names"]["categories"][0], "vault");
        let v = &crd["spec"]["versions"][0];
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            cols,
            ["Path", "Version", "Ready", "Reason", "Last Sync", "Age"]
        );
        let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["kvVersion"]["maximum"].as_f64(),
            Some(2.0)
        );
    }
}
