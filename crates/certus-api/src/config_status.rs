//! The status shared by the kinds that configure Vault objects other than policies:
//! `SecretEngine`, `AuthMethod` and `VaultRole`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// Observed state of a `SecretEngine`, `AuthMethod` or `VaultRole`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultObjectStatus {
    /// `Ready` and `Drifted` conditions. `Ready=False` carries a reason such as
    /// `InvalidSpec`, `Conflict` (e.g. the path is mounted with another type) or
    /// `WaitingForDependency` (a mount, connection or policy does not exist yet).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The main Vault path of the object, e.g. `sys/mounts/certus`, `sys/auth/kubernetes`
    /// or `auth/kubernetes/role/certus-ask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_path: Option<String>,
    /// Hash (16 hex digits) of the desired state last written to Vault. When the spec
    /// still hashes to it but Vault differs, the difference is reported as drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_hash: Option<String>,
    /// For objects whose secret fields Vault never returns (database passwords, client
    /// secrets, reviewer JWTs): Vault path → hash of the last written request including
    /// the secret. Used to notice a changed Secret; never the value itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_hashes: BTreeMap<String, String>,
    /// Vault path → the fields of that object this resource set at its last successful
    /// reconcile. A field later removed from the spec is reset to Vault's default where
    /// Vault has one (mount description, lease TTLs and audit keys; `token_*` settings of
    /// roles; role TTLs), and otherwise left as it is (the plan says so).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owned_fields: BTreeMap<String, Vec<String>>,
    /// Auth methods: the mount accessor (used by identity aliases and templated policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessor: Option<String>,
    /// Roles: the Vault policy names the role grants (policy references resolved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// AppRole roles with `roleIdSecret`: the Secret the role id was published to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id_secret: Option<String>,
    /// When Vault was last confirmed to match the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced: Option<DateTime<Utc>>,
    /// When drift was last detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drift: Option<DateTime<Utc>>,
}
