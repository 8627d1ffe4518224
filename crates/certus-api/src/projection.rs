//! Pieces shared by the kinds that project Vault data into Kubernetes Secrets
//! (`DynamicCredential`, `StaticSecret`, `RotationPolicy`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotations the operator writes on projected Secrets.
pub mod annotations {
    /// Hash of the spec the Secret's content was produced for.
    pub const SPEC_HASH: &str = "vault.certus.io/spec-hash";
    /// Hash of the data the operator wrote (detects edits made by others).
    pub const DATA_HASH: &str = "vault.certus.io/data-hash";
    /// Annotation set on a workload's pod template to roll it out.
    pub const RESTARTED_AT: &str = "vault.certus.io/restartedAt";
    /// Forces an immediate rotation / re-issue when set to a new value.
    pub const ROTATE_NOW: &str = "vault.certus.io/rotate-now";
    /// Forces a reconcile when set to a new value (any string; a timestamp is handy):
    /// `kubectl annotate vaultpolicy NAME vault.certus.io/reconcile-at="$(date +%s)" --overwrite`.
    /// Without it a metadata-only change does not trigger a reconcile, and drift is only
    /// found at the next periodic resync.
    pub const RECONCILE_AT: &str = "vault.certus.io/reconcile-at";
}

/// The Kubernetes Secret the operator writes. The Secret is owned by the resource
/// (deleted with it) and written with server-side apply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTarget {
    /// Name of the Secret (default: the resource's name). Same namespace as the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Secret type, e.g. `Opaque` (default), `kubernetes.io/tls`,
    /// `kubernetes.io/basic-auth`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Extra labels on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Secret keys and how to fill them: each value is a template over the Vault
    /// response's fields, e.g. `"{{ username }}"` or
    /// `"postgresql://{{ username | urlquery }}:{{ password | urlquery }}@db:5432/app"`.
    /// Filters: `urlquery`, `base64`, `json`, `trim`. When empty, every field of the
    /// response becomes a key (non-string values as JSON).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// Kind of workload to restart.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// A workload that is rolled out (pod template annotation bump) when the projected
/// Secret's content changes. Exactly one of `name` and `selector`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("has(self.name) != has(self.selector)").message("set exactly one of name and selector"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    /// Deployment, StatefulSet or DaemonSet (same namespace as the resource).
    pub kind: WorkloadKind,
    /// Name of the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Label selector choosing the workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}
