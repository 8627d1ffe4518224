//! `AuthMethod`: an auth method mount and its configuration.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConnectionRef, DeletionPolicy, DriftPolicy, SecretKeyRef};
use crate::config_status::VaultObjectStatus;
use crate::engine::{default_retain, MountTune};

/// An auth method enabled in Vault (`sys/auth/<path>`) and its configuration
/// (`auth/<path>/config`). Type and path are immutable.
// kube's printcolumn(..) arguments repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "AuthMethod",
    namespaced,
    status = "VaultObjectStatus",
    category = "vault",
    shortname = "vauth",
    doc = "A Vault auth method mount (kubernetes, approle, jwt, oidc, userpass, cert) and its configuration, with drift detection.",
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
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
#[x_kube(validation = kube::core::Rule::new("!has(self.kubernetes) || self.type == 'kubernetes'").message("spec.kubernetes is only valid with spec.type kubernetes"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.jwt) || self.type == 'jwt' || self.type == 'oidc'").message("spec.jwt is only valid with spec.type jwt or oidc"))]
#[serde(rename_all = "camelCase")]
pub struct AuthMethodSpec {
    /// The Vault connection to reconcile through. When omitted, the `VaultConnection`
    /// named `default` in the same namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// Mount path under `auth/`, without slashes at the ends, e.g. `kubernetes`.
    /// Immutable.
    #[schemars(
        regex(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$"),
        length(min = 1, max = 128)
    )]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.path is immutable: disabling an auth method deletes its roles; create a new AuthMethod for another path"))]
    #[x_kube(validation = kube::core::Rule::new("self != 'token'").message("the token auth method is built into Vault and cannot be managed"))]
    pub path: String,
    /// Auth method type: `kubernetes`, `approle`, `jwt`, `oidc`, `userpass`, `cert` (or
    /// another plugin name, enabled without typed configuration). Immutable.
    #[serde(rename = "type")]
    #[schemars(regex(pattern = "^[a-z0-9][a-z0-9_-]*$"), length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.type is immutable: changing an auth method's type means disabling it, which deletes its roles"))]
    #[x_kube(validation = kube::core::Rule::new("self != 'token'").message("the token auth method is built into Vault and cannot be managed"))]
    pub type_: String,
    /// Human-readable description shown by `vault auth list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Mount tuning (token lease TTLs, audit settings). Only the fields set are managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune: Option<MountTune>,
    /// Kubernetes auth configuration. Only with `type: kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuthConfig>,
    /// JWT / OIDC configuration. Only with `type: jwt` or `type: oidc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthConfig>,
    /// `Retain` (default) leaves the auth method enabled when this resource is deleted;
    /// `Delete` disables it, which also deletes every role and login under it. Retain is
    /// the default because disabling cuts off every workload that logs in through it.
    #[serde(default = "default_retain")]
    pub deletion_policy: DeletionPolicy,
    /// `Correct` (default) writes the spec back when the method or its configuration was
    /// edited in Vault; `Report` only reports the drift.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
}

/// Configuration of the Kubernetes auth method (`auth/<path>/config`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuthConfig {
    /// URL of the Kubernetes API server Vault calls to review tokens, e.g.
    /// `https://kubernetes.default.svc:443`.
    #[schemars(length(min = 1))]
    pub kubernetes_host: String,
    /// PEM CA certificate of the API server. Required when Vault does not run in the
    /// cluster (or when `disableLocalCAJWT` is true).
    #[serde(
        default,
        rename = "kubernetesCACert",
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes_ca_cert: Option<String>,
    /// Secret key holding a long-lived JWT Vault uses to call the TokenReview API. When
    /// omitted, Vault uses the JWT being reviewed (or its own pod's token). Vault never
    /// returns it; a change is detected by a hash in status.
    #[serde(
        default,
        rename = "tokenReviewerJWTSecretRef",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_reviewer_jwt_secret_ref: Option<SecretKeyRef>,
    /// Expected `iss` of ServiceAccount tokens (only checked when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Do not use Vault's own pod CA certificate and token.
    #[serde(
        default,
        rename = "disableLocalCAJWT",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_local_ca_jwt: Option<bool>,
    /// PEM public keys to verify ServiceAccount tokens offline instead of calling
    /// TokenReview.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pem_keys: Vec<String>,
}

/// Configuration of the JWT/OIDC auth method (`auth/<path>/config`). Set exactly one
/// way to verify tokens: `oidcDiscoveryURL`, `jwksURL` or `jwtValidationPubkeys`.
///
/// With `oidcDiscoveryURL`, Vault fetches the discovery document when the config is
/// written (OpenBao 2.7 rejects the write when the issuer is unreachable).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("(has(self.oidcDiscoveryURL) ? 1 : 0) + (has(self.jwksURL) ? 1 : 0) + (has(self.jwtValidationPubkeys) && size(self.jwtValidationPubkeys) > 0 ? 1 : 0) == 1").message("set exactly one of oidcDiscoveryURL, jwksURL and jwtValidationPubkeys"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.oidcClientSecretRef) || has(self.oidcClientID)").message("oidcClientSecretRef needs oidcClientID"))]
#[serde(rename_all = "camelCase")]
pub struct JwtAuthConfig {
    /// OIDC discovery URL (the issuer), e.g. `https://accounts.google.com`.
    #[serde(
        default,
        rename = "oidcDiscoveryURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub oidc_discovery_url: Option<String>,
    /// PEM CA certificate used to reach the discovery URL.
    #[serde(
        default,
        rename = "oidcDiscoveryCAPEM",
        skip_serializing_if = "Option::is_none"
    )]
    pub oidc_discovery_ca_pem: Option<String>,
    /// OAuth client id (OIDC login flow).
    #[serde(
        default,
        rename = "oidcClientID",
        skip_serializing_if = "Option::is_none"
    )]
    pub oidc_client_id: Option<String>,
    /// Secret key holding the OAuth client secret. Vault never returns it; a change is
    /// detected by a hash in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_client_secret_ref: Option<SecretKeyRef>,
    /// JWKS URL to fetch token signing keys from.
    #[serde(default, rename = "jwksURL", skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM public keys that verify JWT signatures offline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_validation_pubkeys: Vec<String>,
    /// Required `iss` claim (JWT with `jwksURL` or public keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_issuer: Option<String>,
    /// Role used when a login names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_role: Option<String>,
    /// Accepted signing algorithms, e.g. `RS256`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_supported_algs: Vec<String>,
}

impl AuthMethod {
    /// The mount path without slashes.
    pub fn mount_path(&self) -> &str {
        self.spec.path.trim_matches('/')
    }
}
