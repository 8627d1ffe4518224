//! `DynamicCredential`: a lease-issuing Vault endpoint (database, AWS, PKI, Kubernetes
//! secrets, child tokens, …) kept fresh in a Kubernetes Secret.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ConnectionRef};
use crate::projection::{RolloutTarget, SecretTarget};

/// A short-lived credential issued by Vault and projected into a Secret. The operator
/// renews the lease at `renewal.renewAtPercent` of its duration (with jitter), issues a
/// new credential before the lease's maximum TTL (or the certificate's lifetime) runs
/// out, keeps the superseded credential valid for `gracePeriod`, then revokes it.
/// The lease state is persisted in the Secret's annotations, so a restarted operator
/// resumes renewing instead of issuing again.
// kube's printcolumn(..) arguments repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "DynamicCredential",
    namespaced,
    status = "DynamicCredentialStatus",
    category = "vault",
    shortname = "dcred",
    doc = "A dynamic Vault credential (database, PKI, token, cloud) projected into a Secret and kept renewed.",
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Next Renewal",
        type_ = "date",
        json_path = ".status.nextRenewalAt"
    ),
    printcolumn(name = "Renewals", type_ = "integer", json_path = ".status.renewals"),
    printcolumn(
        name = "TTL",
        type_ = "integer",
        json_path = ".status.leaseDurationSeconds"
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
#[x_kube(validation = kube::core::Rule::new("!has(self.parameters) || !has(self.method) || self.method != 'GET'").message("spec.parameters need method POST or PUT (GET sends no body)"))]
#[x_kube(validation = kube::core::Rule::new("has(self.connectionRef) == has(oldSelf.connectionRef) && (!has(self.connectionRef) || self.connectionRef == oldSelf.connectionRef)").message("spec.connectionRef is immutable: the current lease can only be renewed and revoked through the connection that issued it; create a new DynamicCredential"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.secret) && has(self.secret.name) ? self.secret.name : '') == (has(oldSelf.secret) && has(oldSelf.secret.name) ? oldSelf.secret.name : '')").message("spec.secret.name is immutable: the lease state lives on the Secret; create a new DynamicCredential for another Secret"))]
#[serde(rename_all = "camelCase")]
pub struct DynamicCredentialSpec {
    /// The Vault connection to issue through. When omitted, the `VaultConnection` named
    /// `default` in the same namespace is used. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// The Vault path that issues the credential, without `/v1/`: e.g.
    /// `database/creds/app`, `pki/issue/web`, `aws/creds/deploy`, `auth/token/create`,
    /// `kubernetes/creds/ci`, or any other lease-issuing endpoint.
    #[schemars(
        regex(pattern = "^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.+@=:-]+)+$"),
        length(min = 3, max = 1024)
    )]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('sys/')").message("spec.path must not be a sys/ path"))]
    pub path: String,
    /// HTTP method: `GET` (the default without parameters, e.g. `database/creds/<role>`)
    /// or `POST`/`PUT` (the default with parameters, e.g. `pki/issue/<role>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "method_schema")]
    pub method: Option<IssueMethod>,
    /// Request body sent to the path, e.g. `{common_name: api.example.com, ttl: 24h}` for
    /// PKI or `{policies: [agent], ttl: 15m}` for `auth/token/create`. Values may be
    /// strings, numbers, booleans, lists or objects. Never put secrets here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// The Secret the credential is written to, with optional key templates. Templates
    /// see the response's `data` fields (`username`, `password`, `certificate`,
    /// `private_key`, `issuing_ca`, `ca_chain` as PEM text, …) and, for token endpoints,
    /// `token`, `accessor`, `policies` and `ttl`. With type `kubernetes.io/tls` and no
    /// `data`, the keys are `tls.crt` (certificate and chain), `tls.key` and `ca.crt`.
    #[serde(default)]
    pub secret: SecretTarget,
    /// When to renew the lease.
    #[serde(default)]
    pub renewal: RenewalSpec,
    /// How long a superseded credential stays valid after the Secret was switched to a
    /// new one, before it is revoked (default `30s`; never beyond its own expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub grace_period: Option<String>,
    /// Revoke the current and superseded credentials when this resource is deleted
    /// (default `true`). With `false` they expire on their own.
    #[serde(default = "default_true")]
    pub revoke_on_delete: bool,
    /// Workloads rolled out (pod template annotation) when the credential in the Secret
    /// changes — not on renewals, which leave the Secret's content as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_restart_targets: Vec<RolloutTarget>,
}

fn default_true() -> bool {
    true
}

// Optional enums would otherwise be generated as `nullable` with a `null` enum value.
fn method_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "enum": ["GET", "POST", "PUT"] })
}

fn lease_kind_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "enum": ["lease", "token", "certificate", "none"] })
}

fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// HTTP method of the issuing request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum IssueMethod {
    Get,
    Post,
    Put,
}

impl IssueMethod {
    /// The method name Vault expects.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueMethod::Get => "GET",
            IssueMethod::Post => "POST",
            IssueMethod::Put => "PUT",
        }
    }
}

/// When leases are renewed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new("self.jitterPercent < self.renewAtPercent && self.renewAtPercent + self.jitterPercent <= 99").message("renewal: renewAtPercent ± jitterPercent must stay between 1 and 99"))]
#[serde(rename_all = "camelCase")]
pub struct RenewalSpec {
    /// Renew when this percentage of the lease's current duration has elapsed (default
    /// 67). A new credential is issued when the lease (or certificate) can no longer be
    /// extended and the remaining `100 - renewAtPercent` percent begins.
    #[serde(default = "default_renew_at")]
    #[schemars(range(min = 1, max = 95))]
    pub renew_at_percent: u8,
    /// Random spread, in percentage points of the lease duration, so credentials issued
    /// together do not renew together (default 10).
    #[serde(default = "default_jitter")]
    #[schemars(range(min = 0, max = 50))]
    pub jitter_percent: u8,
}

fn default_renew_at() -> u8 {
    67
}
fn default_jitter() -> u8 {
    10
}

impl Default for RenewalSpec {
    fn default() -> Self {
        RenewalSpec {
            renew_at_percent: default_renew_at(),
            jitter_percent: default_jitter(),
        }
    }
}

/// Default grace period of a superseded credential.
pub const DEFAULT_GRACE_PERIOD: &str = "30s";

/// Condition type reporting whether the last Vault requests (renewal, issue, revocation)
/// succeeded. `False` while the credential in the Secret is still valid but Vault
/// cannot be reached: the Secret is left as it is and renewals retry with backoff.
pub const VAULT_AVAILABLE: &str = "VaultAvailable";

/// What kind of lease backs the credential.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeaseKind {
    /// A secret lease (`sys/leases/renew`, `sys/leases/revoke`).
    Lease,
    /// A token from `auth/token/create` (renewed and revoked by accessor).
    Token,
    /// A PKI certificate without a lease: re-issued before it expires, the superseded
    /// serial revoked after the grace period.
    Certificate,
    /// A static result without expiry: issued once, issued again only on spec change
    /// or when the Secret was deleted or edited.
    None,
}

/// Observed state of a `DynamicCredential`. Display only: the source of truth for the
/// lease is the Secret's annotations. Never holds lease ids or secret values.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamicCredentialStatus {
    /// `Ready` (the Secret holds a valid credential) and `VaultAvailable` (the last Vault
    /// requests succeeded).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Secret holding the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// SHA-256 prefix (16 hex digits) of the lease id, token accessor or certificate
    /// serial; enough to correlate with Vault's audit log, not to use the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id_hash: Option<String>,
    /// What kind of lease backs the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "lease_kind_schema")]
    pub lease_kind: Option<LeaseKind>,
    /// When the current credential was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<DateTime<Utc>>,
    /// When the current credential expires unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When the next renewal is planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_renewal_at: Option<DateTime<Utc>>,
    /// When a new credential will be issued because the current one cannot be extended
    /// (maximum TTL, certificate lifetime, or the issuing token's expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reissue_at: Option<DateTime<Utc>>,
    /// The lease duration Vault granted at the last issue or renewal, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i64>,
    /// Renewals of the current credential.
    #[serde(default)]
    pub renewals: u64,
    /// Credentials issued after the first one (spec changes, maximum TTL, refused
    /// renewals, deleted or edited Secrets).
    #[serde(default)]
    pub reissues: u64,
    /// When the lease was last renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renewal_at: Option<DateTime<Utc>>,
    /// Hash of the spec the current credential was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// Superseded credentials waiting for their grace period to end before revocation.
    #[serde(default)]
    pub pending_revocations: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::Value;

    #[test]
    fn parameters_are_a_structural_preserve_unknown_object() {
        let crd = serde_json::to_value(DynamicCredential::crd()).unwrap();
        let spec = crd
            .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
            .unwrap();
        let params = &spec["properties"]["parameters"];
        assert_eq!(params["type"], "object");
        assert_eq!(params["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(
            spec["properties"]["method"]["enum"],
            serde_json::json!(["GET", "POST", "PUT"])
        );
        assert!(params.get("additionalProperties").is_none(), "{params}");
        assert_eq!(
            crd.pointer("/spec/names/shortNames/0"),
            Some(&Value::from("dcred"))
        );
        assert_eq!(
            crd.pointer("/spec/names/categories/0"),
            Some(&Value::from("vault"))
        );
        let cols: Vec<&str> = crd
            .pointer("/spec/versions/0/additionalPrinterColumns")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            cols,
            [
                "Path",
                "Ready",
                "Expires",
                "Next Renewal",
                "Renewals",
                "TTL",
                "Reason",
                "Age"
            ]
        );
        let rules = spec["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(rules.len(), 3, "{rules:?}");
    }

    #[test]
    fn defaults_apply() {
        let s: DynamicCredentialSpec =
            serde_json::from_value(serde_json::json!({"path": "database/creds/app"})).unwrap();
        assert_eq!(s.renewal, RenewalSpec::default());
        assert_eq!(s.renewal.renew_at_percent, 67);
        assert_eq!(s.renewal.jitter_percent, 10);
        assert!(s.revoke_on_delete);
        assert!(s.method.is_none() && s.parameters.is_none() && s.grace_period.is_none());
        let p: DynamicCredentialSpec = serde_json::from_value(serde_json::json!({
            "path": "pki/issue/web", "method": "PUT",
            "parameters": {"common_name": "a.example.com", "alt_names": ["b", "c"], "ttl": 60}
        }))
        .unwrap();
        assert_eq!(p.method, Some(IssueMethod::Put));
        assert_eq!(p.parameters.unwrap()["alt_names"][1], "c");
    }

    #[test]
    fn cel_rules_reject_get_with_parameters_and_identity_changes() {
        use kube::core::cel::validate_cel;
        let mk = |spec: Value| -> DynamicCredential {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "vault.certus.io/v1alpha1", "kind": "DynamicCredential",
                "metadata": {"name": "x", "namespace": "ns"}, "spec": spec
            }))
            .unwrap()
        };
        let ok = mk(serde_json::json!({"path": "database/creds/app"}));
        assert!(validate_cel(&ok).is_ok(), "{:?}", validate_cel(&ok));
        let get = mk(
            serde_json::json!({"path": "pki/issue/web", "method": "GET", "parameters": {"common_name": "x"}}),
        );
        let err = validate_cel(&get).unwrap_err().to_string();
        assert!(err.contains("POST or PUT"), "{err}");
        let bad = mk(
            serde_json::json!({"path": "database/creds/app", "renewal": {"renewAtPercent": 95, "jitterPercent": 10}}),
        );
        assert!(validate_cel(&bad).is_err());
    }
}
