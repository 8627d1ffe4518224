//! `VaultPolicy`: a Vault ACL policy written as HCL or as structured paths.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ConnectionRef, DeletionPolicy, DriftPolicy};

/// A Vault ACL policy. Exactly one of `rules` (HCL) or `paths` (structured) is set.
// kube's `printcolumn(type_ = ..)` repeats attribute keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "VaultPolicy",
    namespaced,
    status = "VaultPolicyStatus",
    category = "vault",
    shortname = "vpol",
    doc = "A Vault ACL policy reconciled into sys/policies/acl, with drift detection.",
    printcolumn(name = "Vault Name", type_ = "string", json_path = ".status.vaultName"),
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
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("has(self.rules) != has(self.paths)").message("set exactly one of spec.rules (HCL) and spec.paths"))]
#[x_kube(validation = kube::core::Rule::new("has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)").message("spec.name is immutable: create a new VaultPolicy to use another Vault policy name"))]
#[serde(rename_all = "camelCase")]
pub struct VaultPolicySpec {
    /// The Vault connection to reconcile through. When omitted, the `VaultConnection`
    /// named `default` in the same namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// Name of the policy in Vault. Defaults to `<namespace>.<name>`, which cannot collide
    /// between namespaces. Immutable. `root` and `default` are Vault's own and refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$"))]
    #[x_kube(validation = kube::core::Rule::new("self != 'root' && self != 'default'").message("root and default are Vault's built-in policies and cannot be managed"))]
    pub name: Option<String>,
    /// The policy in Vault's HCL syntax, e.g. `path "secret/data/app/*" { capabilities = ["read"] }`.
    /// It is parsed and validated before anything is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 262144))]
    pub rules: Option<String>,
    /// The policy as a list of paths and capabilities (rendered to HCL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub paths: Option<Vec<PolicyPath>>,
    /// `Delete` (default) removes the policy from Vault when this resource is deleted;
    /// `Retain` leaves it.
    #[serde(default = "default_delete")]
    pub deletion_policy: DeletionPolicy,
    /// `Correct` (default) writes the spec back when the policy was edited in Vault;
    /// `Report` only reports the drift.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
}

fn default_delete() -> DeletionPolicy {
    DeletionPolicy::Delete
}

/// One `path` stanza of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPath {
    /// The Vault API path, optionally with `*` (suffix glob) or `+` (one segment).
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// Capabilities granted on the path.
    #[schemars(length(min = 1))]
    pub capabilities: Vec<Capability>,
    /// Free text rendered as a comment above the stanza.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A Vault policy capability.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Create,
    Read,
    Update,
    Patch,
    Delete,
    List,
    Sudo,
    Deny,
    Subscribe,
}

impl Capability {
    /// The name Vault uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Create => "create",
            Capability::Read => "read",
            Capability::Update => "update",
            Capability::Patch => "patch",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Sudo => "sudo",
            Capability::Deny => "deny",
            Capability::Subscribe => "subscribe",
        }
    }
    /// Every capability Vault knows.
    pub const ALL: [Capability; 9] = [
        Capability::Create,
        Capability::Read,
        Capability::Update,
        Capability::Patch,
        Capability::Delete,
        Capability::List,
        Capability::Sudo,
        Capability::Deny,
        Capability::Subscribe,
    ];
}

/// Observed state of a `VaultPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultPolicyStatus {
    /// `Ready` and `Drifted` conditions.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The policy's name in Vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_name: Option<String>,
    /// SHA-256 (first 16 hex digits) of the policy text last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// When Vault was last confirmed to match the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced: Option<DateTime<Utc>>,
    /// When drift was last detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drift: Option<DateTime<Utc>>,
}

impl VaultPolicy {
    /// The Vault policy name: `spec.name`, or `<namespace>.<name>`.
    pub fn vault_name(&self) -> String {
        match &self.spec.name {
            Some(n) => n.clone(),
            None => default_vault_name(
                self.namespace().as_deref().unwrap_or("default"),
                &self.name_any(),
            ),
        }
    }
}

/// `<namespace>.<name>`, lower-cased: a namespace cannot contain a dot, so two
/// resources never get the same default name.
pub fn default_vault_name(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}").to_ascii_lowercase()
}
