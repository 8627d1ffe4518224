//! `VaultConnection` and `ClusterVaultConnection`: where Vault is and how to log in.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretKeyRef};

/// Where Vault is and how the operator logs in to it. Every resource that names this
/// connection shares one login (one token per identity, cached and renewed).
// kube's `printcolumn(type_ = ..)` repeats attribute keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "VaultConnection",
    namespaced,
    status = "VaultConnectionStatus",
    category = "vault",
    shortname = "vconn",
    doc = "A connection to a Vault/OpenBao server and the identity the operator logs in with.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.vaultVersion"),
    printcolumn(name = "Sealed", type_ = "boolean", json_path = ".status.sealed"),
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
#[serde(rename_all = "camelCase")]
pub struct VaultConnectionSpec {
    /// Base URL of the Vault/OpenBao server, e.g. `https://vault.vault.svc:8200`.
    #[schemars(regex(pattern = "^https?://[^\\s/]+(:[0-9]+)?/?$"), length(max = 2048))]
    pub address: String,
    /// TLS settings for `https` addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Vault Enterprise / OpenBao namespace every request is made in (`X-Vault-Namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_namespace: Option<String>,
    /// Timeout of one Vault request, e.g. `30s` (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub timeout: Option<String>,
    /// How the operator logs in to Vault through this connection. Exactly one method.
    pub auth: VaultAuth,
}

/// TLS settings for talking to Vault.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("!(has(self.caBundle) && has(self.caSecretRef))").message("set at most one of caBundle and caSecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM-encoded CA certificates that sign Vault's serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// A Secret key holding the PEM CA bundle (alternative to `caBundle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Server name to verify in Vault's certificate when it differs from the address host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Skip certificate verification. Only for throwaway development servers.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The login method. Exactly one of `kubernetes`, `appRole`, `jwt` or `token` is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("(has(self.kubernetes) ? 1 : 0) + (has(self.appRole) ? 1 : 0) + (has(self.jwt) ? 1 : 0) + (has(self.token) ? 1 : 0) == 1").message("set exactly one of auth.kubernetes, auth.appRole, auth.jwt, auth.token"))]
#[serde(rename_all = "camelCase")]
pub struct VaultAuth {
    /// Log in with Vault's Kubernetes auth method, using a token the operator requests for
    /// a ServiceAccount through the TokenRequest API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuth>,
    /// Log in with AppRole (role id + SecretID from a Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<AppRoleAuth>,
    /// Log in with Vault's JWT/OIDC auth method, presenting a ServiceAccount token
    /// (Vault trusts the cluster's OIDC issuer) or a JWT kept in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    /// Use a Vault token stored in a Secret (renewed if renewable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenAuth>,
}

/// Kubernetes auth method login.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuth {
    /// Path the Kubernetes auth method is mounted at (default `kubernetes`).
    #[serde(default = "default_kubernetes_mount")]
    pub mount: String,
    /// Vault role to log in as.
    #[schemars(length(min = 1))]
    pub role: String,
    /// ServiceAccount whose token is presented to Vault. For a namespaced connection it
    /// lives in the connection's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: String,
    /// Namespace of the ServiceAccount; required for `ClusterVaultConnection`, must be
    /// empty for `VaultConnection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_namespace: Option<String>,
    /// Audiences requested for the ServiceAccount token (default `vault`). They must match
    /// the Vault role's `audience`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_approle_mount() -> String {
    "approle".into()
}

/// AppRole login.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRoleAuth {
    /// Path the AppRole auth method is mounted at (default `approle`).
    #[serde(default = "default_approle_mount")]
    pub mount: String,
    /// The role id (not a secret).
    #[schemars(length(min = 1))]
    pub role_id: String,
    /// Secret key holding the SecretID.
    pub secret_id_ref: SecretKeyRef,
}

/// JWT login (`auth/<mount>/login` with `role` and `jwt`). Exactly one source of the
/// JWT: `serviceAccountName` (a short-lived token requested through the TokenRequest
/// API with `audiences`, for a Vault `jwt` auth method that trusts the cluster's service
/// account issuer) or `secretRef` (a JWT an external identity provider issued; read
/// again whenever it changes).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("has(self.serviceAccountName) != has(self.secretRef)").message("set exactly one of serviceAccountName and secretRef"))]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// Path the JWT/OIDC auth method is mounted at (default `jwt`).
    #[serde(default = "default_jwt_mount")]
    pub mount: String,
    /// Vault role to log in as (`role_type: jwt`).
    #[schemars(length(min = 1))]
    pub role: String,
    /// ServiceAccount whose token is presented. For a namespaced connection it lives in
    /// the connection's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Namespace of the ServiceAccount; required with `serviceAccountName` on a
    /// `ClusterVaultConnection`, must be empty on a `VaultConnection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_namespace: Option<String>,
    /// Audiences requested for the ServiceAccount token (default `vault`); they must
    /// match the role's `bound_audiences`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Secret key holding a JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

fn default_jwt_mount() -> String {
    "jwt".into()
}

/// Token login: a token kept in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenAuth {
    /// Secret key holding the Vault token.
    pub secret_ref: SecretKeyRef,
}

/// Observed state of a connection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultConnectionStatus {
    /// `Ready` is `True` when Vault is reachable, unsealed and the login succeeded.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Server version reported by `sys/health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_version: Option<String>,
    /// Whether Vault reported itself sealed at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<bool>,
    /// Policies attached to the operator's token (no token material).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_policies: Vec<String>,
    /// When the connection was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<DateTime<Utc>>,
}

/// A cluster-wide connection that resources in `allowedNamespaces` may use.
// kube's `printcolumn(type_ = ..)` repeats attribute keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "ClusterVaultConnection",
    status = "VaultConnectionStatus",
    category = "vault",
    shortname = "cvconn",
    doc = "A cluster-scoped connection to a Vault/OpenBao server, usable from allowed namespaces.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.vaultVersion"),
    printcolumn(name = "Sealed", type_ = "boolean", json_path = ".status.sealed"),
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
#[serde(rename_all = "camelCase")]
pub struct ClusterVaultConnectionSpec {
    /// Base URL of the Vault/OpenBao server, e.g. `https://vault.vault.svc:8200`.
    #[schemars(regex(pattern = "^https?://[^\\s/]+(:[0-9]+)?/?$"), length(max = 2048))]
    pub address: String,
    /// TLS settings for `https` addresses. A `caSecretRef` must name its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Vault Enterprise / OpenBao namespace every request is made in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_namespace: Option<String>,
    /// Timeout of one Vault request (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub timeout: Option<String>,
    /// How the operator logs in. Secret and ServiceAccount references must name their
    /// namespace.
    pub auth: VaultAuth,
    /// Namespaces whose resources may use this connection. `*` admits every namespace.
    /// Empty admits none.
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
}

impl ClusterVaultConnectionSpec {
    /// The connection settings shared with `VaultConnection`.
    pub fn as_connection_spec(&self) -> VaultConnectionSpec {
        VaultConnectionSpec {
            address: self.address.clone(),
            tls: self.tls.clone(),
            vault_namespace: self.vault_namespace.clone(),
            timeout: self.timeout.clone(),
            auth: self.auth.clone(),
        }
    }

    /// Whether resources in `namespace` may use this connection.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.allowed_namespaces
            .iter()
            .any(|n| n == "*" || n == namespace)
    }
}

#[cfg(test)]
mod jwt_tests {
    use super::*;
    use kube::core::cel::validate_cel;
    use serde_json::{json, Value};

    fn vc(auth: Value) -> VaultConnection {
        serde_json::from_value(json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultConnection",
            "metadata": {"name": "v", "namespace": "ns"},
            "spec": {"address": "https://vault:8200", "auth": auth}
        }))
        .unwrap()
    }

    #[test]
    fn jwt_auth_cel_rules_need_exactly_one_method_and_one_jwt_source() {
        let sa = vc(json!({"jwt": {"role": "op", "serviceAccountName": "certus"}}));
        assert!(validate_cel(&sa).is_ok(), "{:?}", validate_cel(&sa));
        assert_eq!(sa.spec.auth.jwt.as_ref().unwrap().mount, "jwt");
        let secret = vc(json!({"jwt": {"role": "ci", "secretRef": {"name": "j", "key": "t"}}}));
        assert!(validate_cel(&secret).is_ok(), "{:?}", validate_cel(&secret));

        let both = vc(json!({"jwt": {"role": "op", "serviceAccountName": "certus",
                                     "secretRef": {"name": "j", "key": "t"}}}));
        let err = validate_cel(&both).unwrap_err().to_string();
        assert!(
            err.contains("exactly one of serviceAccountName and secretRef"),
            "{err}"
        );
        let neither = vc(json!({"jwt": {"role": "op"}}));
        assert!(validate_cel(&neither).is_err());

        let two_methods = vc(
            json!({"jwt": {"role": "op", "serviceAccountName": "certus"},
                                    "token": {"secretRef": {"name": "t", "key": "token"}}}),
        );
        let err = validate_cel(&two_methods).unwrap_err().to_string();
        assert!(err.contains("auth.jwt"), "{err}");
    }
}
