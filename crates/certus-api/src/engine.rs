//! `SecretEngine`: a secrets engine mount and its typed configuration.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConnectionRef, DeletionPolicy, DriftPolicy, SecretKeyRef};
use crate::config_status::VaultObjectStatus;

/// A secrets engine mounted in Vault (`sys/mounts/<path>`), its tuning, and its typed
/// configuration (database connections, PKI CA and URLs, AWS root credentials, KV
/// settings). The mount type and path are immutable: changing them would mean
/// unmounting, which destroys every secret stored under the mount.
// kube's printcolumn(..) arguments repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "SecretEngine",
    namespaced,
    status = "VaultObjectStatus",
    category = "vault",
    shortname = "vse",
    doc = "A Vault secrets engine mount with tuning and typed configuration, with drift detection.",
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
#[x_kube(validation = kube::core::Rule::new("!has(self.kv) || self.type == 'kv-v2'").message("spec.kv is only valid with spec.type kv-v2"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.database) || self.type == 'database'").message("spec.database is only valid with spec.type database"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.pki) || self.type == 'pki'").message("spec.pki is only valid with spec.type pki"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.aws) || self.type == 'aws'").message("spec.aws is only valid with spec.type aws"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.kubernetes) || self.type == 'kubernetes'").message("spec.kubernetes is only valid with spec.type kubernetes"))]
#[serde(rename_all = "camelCase")]
pub struct SecretEngineSpec {
    /// The Vault connection to reconcile through. When omitted, the `VaultConnection`
    /// named `default` in the same namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// Mount path, without leading or trailing slash, e.g. `certus` or `database`.
    /// Immutable: moving a mount would destroy its data.
    #[schemars(
        regex(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$"),
        length(min = 1, max = 128)
    )]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.path is immutable: unmounting destroys the engine's data; create a new SecretEngine for another path"))]
    #[x_kube(validation = kube::core::Rule::new("!(self in ['sys', 'auth', 'cubbyhole', 'identity', 'token']) && !self.startsWith('sys/') && !self.startsWith('auth/')").message("spec.path must not be a path Vault reserves (sys, auth, cubbyhole, identity, token)"))]
    pub path: String,
    /// Engine type: `kv-v2` (KV version 2), `kv` (KV version 1), `database`, `pki`,
    /// `transit`, `kubernetes`, `aws`, or any other plugin name, which is mounted as a
    /// generic engine without typed configuration. Immutable: changing the type of an
    /// existing mount would destroy its data, so the operator refuses it. Note: OpenBao
    /// ships no `aws` engine (mounting it fails there); HashiCorp Vault does.
    #[serde(rename = "type")]
    #[schemars(regex(pattern = "^[a-z0-9][a-z0-9_-]*$"), length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.type is immutable: changing an engine's type means unmounting it, which destroys its data"))]
    pub type_: String,
    /// Human-readable description shown by `vault secrets list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Mount tuning (lease TTLs, audit settings). Only the fields set here are managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune: Option<MountTune>,
    /// KV version 2 settings (`<path>/config`). Only with `type: kv-v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvConfig>,
    /// Database engine connections (`<path>/config/<name>`). Only with `type: database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseEngineConfig>,
    /// PKI engine: a root or intermediate CA and the URLs written into certificates.
    /// Only with `type: pki`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<PkiEngineConfig>,
    /// AWS engine root credentials (`<path>/config/root`). Only with `type: aws`.
    /// OpenBao has no AWS engine; with HashiCorp Vault this configures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsEngineConfig>,
    /// Kubernetes secrets engine configuration (`<path>/config`). Only with
    /// `type: kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesEngineConfig>,
    /// `Retain` (default) leaves the mount and its data in Vault when this resource is
    /// deleted; `Delete` unmounts it, which destroys every secret under the mount.
    #[serde(default = "default_retain")]
    pub deletion_policy: DeletionPolicy,
    /// `Correct` (default) writes the spec back when the mount or its configuration was
    /// edited in Vault; `Report` only reports the drift.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
}

pub(crate) fn default_retain() -> DeletionPolicy {
    DeletionPolicy::Retain
}

/// Mount tuning shared by secrets engines and auth methods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MountTune {
    /// Default lease TTL of the mount, e.g. `1h` (units ms, s, m, h, d, w).
    #[serde(
        default,
        rename = "defaultLeaseTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub default_lease_ttl: Option<String>,
    /// Maximum lease TTL of the mount, e.g. `24h`.
    #[serde(
        default,
        rename = "maxLeaseTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub max_lease_ttl: Option<String>,
    /// Request keys the audit log records in clear text instead of HMAC-ed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_non_hmac_request_keys: Vec<String>,
    /// Response keys the audit log records in clear text instead of HMAC-ed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_non_hmac_response_keys: Vec<String>,
}

/// KV version 2 engine settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvConfig {
    /// Versions kept per key (0 = Vault's default of 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_versions: Option<u32>,
    /// Require check-and-set on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cas_required: Option<bool>,
    /// Delete versions older than this, e.g. `2160h` (`0s` keeps them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub delete_version_after: Option<String>,
}

/// Database engine configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseEngineConfig {
    /// Connections the engine manages credentials for. Names are unique.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub connections: Vec<DatabaseConnection>,
}

/// One database connection (`<mount>/config/<name>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseConnection {
    /// Connection name in Vault; roles refer to it as `dbName`.
    #[schemars(
        regex(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"),
        length(min = 1, max = 128)
    )]
    pub name: String,
    /// Database plugin, e.g. `postgresql-database-plugin`, `mysql-database-plugin`.
    #[schemars(length(min = 1))]
    pub plugin: String,
    /// Connection URL template; Vault substitutes `{{username}}` and `{{password}}`, e.g.
    /// `postgresql://{{username}}:{{password}}@postgres:5432/app?sslmode=disable`.
    /// It must not contain a literal password.
    #[serde(rename = "connectionURL")]
    #[schemars(length(min = 1, max = 4096))]
    pub connection_url: String,
    /// The user Vault connects as (it creates and revokes the dynamic users).
    #[schemars(length(min = 1))]
    pub username: String,
    /// Secret key holding that user's password. Vault never returns it, so the operator
    /// detects a changed password by a hash of the last written request (in status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Vault roles allowed to use this connection; `*` allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_roles: Vec<String>,
    /// Whether Vault checks the connection when it is written (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_connection: Option<bool>,
    /// Rotate the connection user's password right after the connection is created, so
    /// only Vault knows it. The Secret's password is then only used at creation; later
    /// updates do not resend it. Do not enable it for a user anything else logs in as.
    #[serde(default)]
    pub rotate_root_on_create: bool,
    /// Maximum open connections from Vault to the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_open_connections: Option<u32>,
    /// Maximum idle connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_idle_connections: Option<u32>,
    /// Maximum lifetime of a connection, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub max_connection_lifetime: Option<String>,
    /// Vault password policy used to generate passwords for dynamic users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_policy: Option<String>,
    /// Statements used to rotate the connection user's password.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_rotation_statements: Vec<String>,
}

/// PKI engine configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PkiEngineConfig {
    /// A CA the operator generates once, when no issuer named `issuerName` exists. It is
    /// never regenerated afterwards (that would invalidate every issued certificate):
    /// changes here apply only to a new issuer name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PkiCa>,
    /// URLs written into issued certificates (`<mount>/config/urls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<PkiUrls>,
}

/// Whether the generated CA is a root or an intermediate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PkiCaType {
    /// A self-signed root CA (`<mount>/root/generate/internal`).
    Root,
    /// An intermediate CA whose CSR is signed by the root of another PKI mount in the
    /// same Vault (`signedBy`).
    Intermediate,
}

/// A CA generated inside Vault (the private key never leaves it).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.type == 'Root' ? !has(self.signedBy) : has(self.signedBy)").message("an Intermediate CA needs signedBy (the PKI mount holding its root); a Root CA must not set it"))]
#[serde(rename_all = "camelCase")]
pub struct PkiCa {
    /// `Root` or `Intermediate`.
    #[serde(rename = "type")]
    pub type_: PkiCaType,
    /// Common name of the CA certificate, e.g. `Certus Root CA`.
    #[schemars(length(min = 1, max = 256))]
    pub common_name: String,
    /// Lifetime of the CA certificate, e.g. `87600h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub ttl: Option<String>,
    /// Key type: `rsa`, `ec` or `ed25519` (Vault's default is `rsa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^(rsa|ec|ed25519)$"))]
    pub key_type: Option<String>,
    /// Key size: 2048/3072/4096 for rsa, 224/256/384/521 for ec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_bits: Option<u32>,
    /// Organization written into the CA subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// Issuer name in Vault; the operator generates the CA when no issuer of this name
    /// exists (default `certus-root` or `certus-intermediate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Za-z0-9_-]{1,128}$"))]
    pub issuer_name: Option<String>,
    /// For `Intermediate`: the path of the PKI mount (same Vault) whose root signs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// Certificate URLs of a PKI mount.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PkiUrls {
    /// Issuing-certificate URLs (AIA), e.g. `https://vault.example/v1/pki/ca`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuing_certificates: Vec<String>,
    /// CRL distribution points, e.g. `https://vault.example/v1/pki/crl`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_distribution_points: Vec<String>,
    /// OCSP server URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ocsp_servers: Vec<String>,
}

/// AWS engine root credentials (`<mount>/config/root`).
///
/// OpenBao has no AWS secrets engine; against HashiCorp Vault the operator writes
/// `access_key`, `secret_key` (from the Secret), `region` and the endpoints. Vault never
/// returns the secret key, so a change of it is detected by a hash kept in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsEngineConfig {
    /// Access key id of the IAM user Vault uses (not secret).
    #[schemars(length(min = 1))]
    pub access_key_id: String,
    /// Secret key holding the secret access key.
    pub secret_access_key_ref: SecretKeyRef,
    /// AWS region, e.g. `us-west-2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// IAM endpoint override (e.g. for a private endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_endpoint: Option<String>,
    /// STS endpoint override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    /// Retries on throttled AWS requests (-1 = SDK default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
}

/// Kubernetes secrets engine configuration (`<mount>/config`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesEngineConfig {
    /// API server URL, e.g. `https://kubernetes.default.svc:443`. Empty: Vault uses its
    /// own pod's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_host: Option<String>,
    /// PEM CA certificate of the API server.
    #[serde(
        default,
        rename = "kubernetesCACert",
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes_ca_cert: Option<String>,
    /// Secret key holding the JWT of the ServiceAccount Vault manages tokens with.
    #[serde(
        default,
        rename = "serviceAccountJWTSecretRef",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account_jwt_secret_ref: Option<SecretKeyRef>,
    /// Do not fall back to Vault's own pod CA and token.
    #[serde(
        default,
        rename = "disableLocalCAJWT",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_local_ca_jwt: Option<bool>,
}

impl SecretEngine {
    /// The mount path without slashes.
    pub fn mount_path(&self) -> &str {
        self.spec.path.trim_matches('/')
    }
}
