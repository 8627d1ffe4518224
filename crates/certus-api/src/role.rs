//! `VaultRole`: one kind for every kind of Vault role, as a union.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConnectionRef, DeletionPolicy, DriftPolicy};
use crate::config_status::VaultObjectStatus;

/// A Vault role: set exactly one of `kubernetes`, `appRole`, `jwt`, `oidc`, `database`,
/// `databaseStatic`, `pki`, `aws`, `kubernetesSecrets`. The role is written under its
/// mount (which must exist: until it does the resource waits with
/// `reason: WaitingForDependency`).
// kube's printcolumn(..) arguments repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "VaultRole",
    namespaced,
    status = "VaultObjectStatus",
    category = "vault",
    shortname = "vrole",
    doc = "A Vault role (auth method role, database/PKI/AWS/Kubernetes secrets role), with drift detection.",
    printcolumn(name = "Vault Path", type_ = "string", json_path = ".status.vaultPath"),
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
#[x_kube(validation = kube::core::Rule::new("(has(self.kubernetes) ? 1 : 0) + (has(self.appRole) ? 1 : 0) + (has(self.jwt) ? 1 : 0) + (has(self.oidc) ? 1 : 0) + (has(self.database) ? 1 : 0) + (has(self.databaseStatic) ? 1 : 0) + (has(self.pki) ? 1 : 0) + (has(self.aws) ? 1 : 0) + (has(self.kubernetesSecrets) ? 1 : 0) == 1").message("set exactly one of kubernetes, appRole, jwt, oidc, database, databaseStatic, pki, aws, kubernetesSecrets"))]
#[x_kube(validation = kube::core::Rule::new("has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)").message("spec.name is immutable: create a new VaultRole to use another Vault role name"))]
#[serde(rename_all = "camelCase")]
pub struct VaultRoleSpec {
    /// The Vault connection to reconcile through. When omitted, the `VaultConnection`
    /// named `default` in the same namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// Role name in Vault. Defaults to `metadata.name`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
    pub name: Option<String>,
    /// A role of the Kubernetes auth method (`auth/<mount>/role/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuthRole>,
    /// An AppRole (`auth/<mount>/role/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<AppRoleRole>,
    /// A role of a JWT auth method (`auth/<mount>/role/<name>`, `role_type: jwt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtRole>,
    /// A role of an OIDC auth method (`auth/<mount>/role/<name>`, `role_type: oidc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<JwtRole>,
    /// A dynamic database role (`<mount>/roles/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRole>,
    /// A static database role (`<mount>/static-roles/<name>`): Vault rotates an
    /// existing database user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_static: Option<DatabaseStaticRole>,
    /// A PKI role (`<mount>/roles/<name>`): which certificates may be issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<PkiRole>,
    /// An AWS engine role (`<mount>/roles/<name>`). OpenBao has no AWS engine; with
    /// HashiCorp Vault this writes the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsRole>,
    /// A Kubernetes secrets engine role (`<mount>/roles/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_secrets: Option<KubernetesSecretsRole>,
    /// `Delete` (default) removes the role from Vault when this resource is deleted;
    /// `Retain` leaves it.
    #[serde(default = "default_delete")]
    pub deletion_policy: DeletionPolicy,
    /// `Correct` (default) writes the spec back when the role was edited in Vault;
    /// `Report` only reports the drift.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
}

fn default_delete() -> DeletionPolicy {
    DeletionPolicy::Delete
}
fn mount_kubernetes() -> String {
    "kubernetes".into()
}
fn mount_approle() -> String {
    "approle".into()
}
fn mount_database() -> String {
    "database".into()
}
fn mount_pki() -> String {
    "pki".into()
}
fn mount_aws() -> String {
    "aws".into()
}

/// A Kubernetes auth role: which ServiceAccounts may log in and what they get.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuthRole {
    /// Path of the Kubernetes auth method (default `kubernetes`).
    #[serde(default = "mount_kubernetes")]
    pub mount: String,
    /// ServiceAccount names allowed to log in (`*` for any).
    #[schemars(length(min = 1))]
    pub bound_service_account_names: Vec<String>,
    /// Namespaces of those ServiceAccounts (`*` for any).
    #[schemars(length(min = 1))]
    pub bound_service_account_namespaces: Vec<String>,
    /// Required audience of the ServiceAccount token, e.g. `vault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Vault policy names attached to the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// `VaultPolicy` resources (same namespace) whose Vault policies are attached. The
    /// role waits until they exist in Vault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_refs: Vec<String>,
    /// Token TTL, e.g. `1h`.
    #[serde(default, rename = "tokenTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_ttl: Option<String>,
    /// Token maximum TTL, e.g. `4h`.
    #[serde(
        default,
        rename = "tokenMaxTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_max_ttl: Option<String>,
    /// Makes tokens periodic with this renewal period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_period: Option<String>,
}

/// Where the role id of an AppRole is published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleIdSecret {
    /// Name of the Kubernetes Secret (same namespace) that receives the key `role_id`.
    /// The role id is an identifier, not a credential, but it is half of a login: keep
    /// the Secret's readers to the workloads that use it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An AppRole: a role id plus SecretIDs for machines outside Kubernetes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRoleRole {
    /// Path of the AppRole auth method (default `approle`).
    #[serde(default = "mount_approle")]
    pub mount: String,
    /// Vault policy names attached to the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// `VaultPolicy` resources (same namespace) whose Vault policies are attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_refs: Vec<String>,
    /// Lifetime of a SecretID, e.g. `24h` (`0s` = no expiry).
    #[serde(
        default,
        rename = "secretIdTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub secret_id_ttl: Option<String>,
    /// Uses allowed per SecretID (0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub secret_id_num_uses: Option<u32>,
    /// Whether a SecretID is required to log in (default `true` in Vault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_secret_id: Option<bool>,
    /// CIDRs SecretIDs may be used from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_id_bound_cidrs: Vec<String>,
    /// Token TTL, e.g. `1h`.
    #[serde(default, rename = "tokenTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_ttl: Option<String>,
    /// Token maximum TTL, e.g. `4h`.
    #[serde(
        default,
        rename = "tokenMaxTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_max_ttl: Option<String>,
    /// Makes tokens periodic with this renewal period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_period: Option<String>,
    /// Publish the role id into this Secret (key `role_id`). SecretIDs are never
    /// published here; they are issued by `RotationPolicy` or by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id_secret: Option<RoleIdSecret>,
}

/// A JWT or OIDC auth role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtRole {
    /// Path of the JWT/OIDC auth method (default `jwt` for `jwt`, `oidc` for `oidc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// `jwt` or `oidc`; defaults to the field the role is under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^(jwt|oidc)$"))]
    pub role_type: Option<String>,
    /// Claim whose value becomes the identity alias name, e.g. `email` or `sub`.
    #[schemars(length(min = 1))]
    pub user_claim: String,
    /// Accepted `aud` values (the OAuth client id for OIDC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_audiences: Vec<String>,
    /// Required `sub` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_subject: Option<String>,
    /// Claims that must match, e.g. `{hd: example.com}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bound_claims: BTreeMap<String, String>,
    /// Claim holding group names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    /// Redirect URIs allowed in the OIDC flow (required for `oidc`).
    #[serde(
        default,
        rename = "allowedRedirectURIs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allowed_redirect_uris: Vec<String>,
    /// OIDC scopes requested besides `openid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc_scopes: Vec<String>,
    /// Vault policy names attached to the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// `VaultPolicy` resources (same namespace) whose Vault policies are attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_refs: Vec<String>,
    /// Token TTL, e.g. `1h`.
    #[serde(default, rename = "tokenTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_ttl: Option<String>,
    /// Token maximum TTL.
    #[serde(
        default,
        rename = "tokenMaxTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_max_ttl: Option<String>,
}

/// A dynamic database role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRole {
    /// Path of the database engine (default `database`).
    #[serde(default = "mount_database")]
    pub mount: String,
    /// Connection name (`SecretEngine.spec.database.connections[].name`).
    #[schemars(length(min = 1))]
    pub db_name: String,
    /// SQL run to create a user; Vault substitutes `{{name}}`, `{{password}}`,
    /// `{{expiration}}`.
    #[schemars(length(min = 1))]
    pub creation_statements: Vec<String>,
    /// SQL run when the lease is revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocation_statements: Vec<String>,
    /// SQL run when the lease is renewed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renew_statements: Vec<String>,
    /// SQL run when creation fails halfway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback_statements: Vec<String>,
    /// Default lease TTL of the credentials, e.g. `1h`.
    #[serde(
        default,
        rename = "defaultTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub default_ttl: Option<String>,
    /// Maximum lease TTL of the credentials, e.g. `24h`.
    #[serde(default, rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub max_ttl: Option<String>,
}

/// A static database role: Vault owns and rotates an existing user's password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStaticRole {
    /// Path of the database engine (default `database`).
    #[serde(default = "mount_database")]
    pub mount: String,
    /// Connection name.
    #[schemars(length(min = 1))]
    pub db_name: String,
    /// The existing database user. Vault rotates its password when the role is created.
    #[schemars(length(min = 1))]
    pub username: String,
    /// How often Vault rotates the password, e.g. `24h` (at least `5s`).
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub rotation_period: String,
    /// SQL used to rotate; Vault substitutes `{{name}}` and `{{password}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotation_statements: Vec<String>,
}

/// A PKI role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PkiRole {
    /// Path of the PKI engine (default `pki`).
    #[serde(default = "mount_pki")]
    pub mount: String,
    /// Domains certificates may be issued for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_domains: Vec<String>,
    /// Allow subdomains of `allowedDomains`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_subdomains: Option<bool>,
    /// Allow the `allowedDomains` themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_bare_domains: Option<bool>,
    /// Allow glob patterns in `allowedDomains`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_glob_domains: Option<bool>,
    /// Allow `localhost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_localhost: Option<bool>,
    /// Allow IP subject alternative names.
    #[serde(
        default,
        rename = "allowIPSans",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_ip_sans: Option<bool>,
    /// Default certificate TTL, e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub ttl: Option<String>,
    /// Maximum certificate TTL, e.g. `72h`.
    #[serde(default, rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub max_ttl: Option<String>,
    /// Key type of issued certificates: `rsa`, `ec`, `ed25519` or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^(rsa|ec|ed25519|any)$"))]
    pub key_type: Option<String>,
    /// Key size of issued certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_bits: Option<u32>,
    /// Certificates are valid for TLS servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_flag: Option<bool>,
    /// Certificates are valid for TLS clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_flag: Option<bool>,
    /// Issuer that signs (name or id; default: the mount's default issuer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<String>,
    /// Organization written into issued certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organization: Vec<String>,
}

/// How an AWS role issues credentials.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AwsCredentialType {
    /// A new IAM user per lease.
    IamUser,
    /// STS AssumeRole on one of `roleArns`.
    AssumedRole,
    /// STS GetFederationToken.
    FederationToken,
}

impl AwsCredentialType {
    /// The value Vault uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AwsCredentialType::IamUser => "iam_user",
            AwsCredentialType::AssumedRole => "assumed_role",
            AwsCredentialType::FederationToken => "federation_token",
        }
    }
}

/// An AWS secrets engine role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsRole {
    /// Path of the AWS engine (default `aws`).
    #[serde(default = "mount_aws")]
    pub mount: String,
    /// `iam_user`, `assumed_role` or `federation_token`.
    pub credential_type: AwsCredentialType,
    /// Inline IAM policy document (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_document: Option<String>,
    /// Managed policy ARNs attached to the credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_arns: Vec<String>,
    /// Role ARNs that may be assumed (`assumed_role`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_arns: Vec<String>,
    /// IAM groups the generated user joins (`iam_user`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iam_groups: Vec<String>,
    /// Default STS credential TTL, e.g. `1h`.
    #[serde(
        default,
        rename = "defaultStsTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub default_sts_ttl: Option<String>,
    /// Maximum STS credential TTL.
    #[serde(default, rename = "maxStsTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub max_sts_ttl: Option<String>,
}

/// A Kubernetes secrets engine role: Vault creates ServiceAccount tokens (and optionally
/// the ServiceAccount and RBAC) in the target cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("(has(self.serviceAccountName) ? 1 : 0) + (has(self.kubernetesRoleName) ? 1 : 0) + (has(self.generatedRoleRules) ? 1 : 0) == 1").message("set exactly one of serviceAccountName, kubernetesRoleName and generatedRoleRules"))]
#[serde(rename_all = "camelCase")]
pub struct KubernetesSecretsRole {
    /// Path of the Kubernetes secrets engine (default `kubernetes`).
    #[serde(default = "mount_kubernetes")]
    pub mount: String,
    /// Namespaces credentials may be generated in (`*` for all).
    #[schemars(length(min = 1))]
    pub allowed_kubernetes_namespaces: Vec<String>,
    /// Issue tokens for this existing ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Bind a new ServiceAccount to this existing Role/ClusterRole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_role_name: Option<String>,
    /// `Role` (default) or `ClusterRole`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^(Role|ClusterRole)$"))]
    pub kubernetes_role_type: Option<String>,
    /// Rules (YAML or JSON) of a Role Vault generates for each credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_role_rules: Option<String>,
    /// Default token TTL, e.g. `1h`.
    #[serde(
        default,
        rename = "tokenDefaultTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_default_ttl: Option<String>,
    /// Maximum token TTL.
    #[serde(
        default,
        rename = "tokenMaxTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub token_max_ttl: Option<String>,
}

impl VaultRole {
    /// The role name in Vault: `spec.name`, or `metadata.name`.
    pub fn vault_name(&self) -> String {
        self.spec.name.clone().unwrap_or_else(|| self.name_any())
    }
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
    fn crds_carry_the_essential_cel_rules() {
        let role = serde_json::to_value(VaultRole::crd()).unwrap();
        let r = rules(&role);
        assert!(r
            .iter()
            .any(|r| r.contains("has(self.kubernetesSecrets) ? 1 : 0) == 1")));
        assert!(r.iter().any(|r| r.contains("self.name == oldSelf.name")));
        let engine = serde_json::to_value(crate::SecretEngine::crd()).unwrap();
        let r = rules(&engine);
        assert_eq!(
            r.iter().filter(|r| *r == "self == oldSelf").count(),
            2,
            "path and type are immutable"
        );
        assert!(r.iter().any(|r| r.contains("self.type == 'database'")));
        let auth = serde_json::to_value(crate::AuthMethod::crd()).unwrap();
        assert_eq!(
            rules(&auth)
                .iter()
                .filter(|r| *r == "self == oldSelf")
                .count(),
            2
        );
        for crd in [&role, &engine, &auth] {
            assert_eq!(crd["spec"]["names"]["categories"][0], "vault");
            let v = &crd["spec"]["versions"][0];
            assert!(v["subresources"]["status"].is_object());
            let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
            assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
            assert!(status["observedGeneration"].is_object());
        }
    }

    #[test]
    fn every_spec_field_has_a_description() {
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    let here = format!("{path}.{k}");
                    if p.get("description").is_none() {
                        missing.push(here.clone());
                    }
                    walk(&here, p, missing);
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = vec![];
        for crd in [
            VaultRole::crd(),
            crate::SecretEngine::crd(),
            crate::AuthMethod::crd(),
        ] {
            let v = serde_json::to_value(&crd).unwrap();
            let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
            walk(&crd.spec.names.kind, spec, &mut missing);
        }
        assert!(
            missing.is_empty(),
            "fields without a doc comment: {missing:?}"
        );
    }

    #[test]
    fn defaults_and_field_names() {
        let e: crate::SecretEngineSpec = serde_json::from_value(serde_json::json!({
            "path": "certus", "type": "kv-v2",
            "tune": {"defaultLeaseTTL": "1h", "maxLeaseTTL": "24h"}
        }))
        .unwrap();
        assert_eq!(e.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(e.drift_policy, DriftPolicy::Correct);
        assert_eq!(e.tune.unwrap().max_lease_ttl.as_deref(), Some("24h"));
        let a: crate::AuthMethodSpec =
            serde_json::from_value(serde_json::json!({"path": "kubernetes", "type": "kubernetes"}))
                .unwrap();
        assert_eq!(a.deletion_policy, DeletionPolicy::Retain);
        let r: VaultRoleSpec = serde_json::from_value(serde_json::json!({
            "kubernetes": {"boundServiceAccountNames": ["a"], "boundServiceAccountNamespaces": ["b"], "tokenTTL": "15m", "policyRefs": ["p"]}
        }))
        .unwrap();
        assert_eq!(r.deletion_policy, DeletionPolicy::Delete);
        let k = r.kubernetes.unwrap();
        assert_eq!(
            (k.mount.as_str(), k.token_ttl.as_deref()),
            ("kubernetes", Some("15m"))
        );
        let d: DatabaseRole = serde_json::from_value(
            serde_json::json!({"dbName": "pg", "creationStatements": ["x"], "defaultTTL": "1h", "maxTTL": "24h"}),
        )
        .unwrap();
        assert_eq!(d.mount, "database");
        assert_eq!(d.max_ttl.as_deref(), Some("24h"));
    }

    fn cel_err<
        K: serde::Serialize + kube::Resource + schemars::JsonSchema + kube::CustomResourceExt,
    >(
        obj: &K,
    ) -> String {
        kube::core::cel::validate_cel(obj)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    fn manifest<K: serde::de::DeserializeOwned>(kind: &str, spec: &str) -> K {
        serde_yaml::from_str(&format!(
            "apiVersion: vault.certus.io/v1alpha1\nkind: {kind}\nmetadata: {{name: a, namespace: n}}\nspec: {spec}\n"
        ))
        .unwrap()
    }

    #[test]
    fn vault_role_cel_rules_behave() {
        let k8s = "kubernetes: {boundServiceAccountNames: [a], boundServiceAccountNamespaces: [b]}";
        let ok: VaultRole = manifest("VaultRole", &format!("{{{k8s}}}"));
        assert_eq!(cel_err(&ok), "");
        let none: VaultRole = manifest("VaultRole", "{}");
        assert!(
            cel_err(&none).contains("set exactly one of kubernetes, appRole"),
            "{}",
            cel_err(&none)
        );
        let two: VaultRole = manifest("VaultRole", &format!("{{{k8s}, appRole: {{}}}}"));
        assert!(cel_err(&two).contains("set exactly one of"));
        let named: VaultRole = manifest("VaultRole", &format!("{{name: x, {k8s}}}"));
        let renamed: VaultRole = manifest("VaultRole", &format!("{{name: y, {k8s}}}"));
        let e = kube::core::cel::validate_cel_update(&renamed, &named)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.name is immutable"), "{e}");
        kube::core::cel::validate_cel_update(&named, &named).unwrap();
        let ks: VaultRole = manifest(
            "VaultRole",
            "{kubernetesSecrets: {allowedKubernetesNamespaces: [a], serviceAccountName: s, kubernetesRoleName: r}}",
        );
        assert!(cel_err(&ks).contains("exactly one of serviceAccountName, kubernetesRoleName"));
    }

    #[test]
    fn secret_engine_cel_rules_behave() {
        use crate::SecretEngine;
        let kv: SecretEngine = manifest(
            "SecretEngine",
            "{path: certus, type: kv-v2, kv: {maxVersions: 3}}",
        );
        assert_eq!(cel_err(&kv), "");
        let moved: SecretEngine = manifest("SecretEngine", "{path: other, type: kv-v2}");
        let e = kube::core::cel::validate_cel_update(&moved, &kv)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.path is immutable"), "{e}");
        let retyped: SecretEngine = manifest("SecretEngine", "{path: certus, type: kv}");
        let e = kube::core::cel::validate_cel_update(&retyped, &kv)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.type is immutable"), "{e}");
        let wrong: SecretEngine = manifest(
            "SecretEngine",
            "{path: db, type: database, kv: {maxVersions: 3}}",
        );
        assert!(cel_err(&wrong).contains("spec.kv is only valid with spec.type kv-v2"));
        let sys: SecretEngine = manifest("SecretEngine", "{path: sys, type: kv-v2}");
        assert!(cel_err(&sys).contains("reserves"));
        let int: SecretEngine = manifest(
            "SecretEngine",
            "{path: pki-int, type: pki, pki: {ca: {type: Intermediate, commonName: x}}}",
        );
        assert!(cel_err(&int).contains("needs signedBy"));
    }

    #[test]
    fn auth_method_cel_rules_behave() {
        use crate::AuthMethod;
        let k: AuthMethod = manifest("AuthMethod", "{path: kubernetes, type: kubernetes}");
        assert_eq!(cel_err(&k), "");
        let retyped: AuthMethod = manifest("AuthMethod", "{path: kubernetes, type: approle}");
        let e = kube::core::cel::validate_cel_update(&retyped, &k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.type is immutable"), "{e}");
        let token: AuthMethod = manifest("AuthMethod", "{path: token, type: token}");
        assert!(cel_err(&token).contains("built into Vault"));
        let two: AuthMethod = manifest(
            "AuthMethod",
            "{path: oidc, type: oidc, jwt: {oidcDiscoveryURL: 'https://i', jwksURL: 'https://j'}}",
        );
        assert!(cel_err(&two).contains("exactly one of oidcDiscoveryURL, jwksURL"));
        let misplaced: AuthMethod = manifest(
            "AuthMethod",
            "{path: a, type: approle, jwt: {jwksURL: 'https://j'}}",
        );
        assert!(cel_err(&misplaced).contains("spec.jwt is only valid"));
    }
}
