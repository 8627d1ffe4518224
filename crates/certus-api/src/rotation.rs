//! `RotationPolicy`: what to rotate, how, and when.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ConnectionRef};
use crate::projection::{RolloutTarget, SecretTarget};

/// Condition types and reasons of `RotationPolicy`.
pub mod rotation_conditions {
    /// `True` when a `manual` policy's secret is older than its interval (someone must
    /// rotate it by hand), or when an automatic rotation is due but could not run.
    pub const ROTATION_DUE: &str = "RotationDue";
    /// Reason: the last rotation attempt failed; the previous value is still in force.
    pub const ROTATION_FAILED: &str = "RotationFailed";
    /// Reason: a rotation happened in this reconcile.
    pub const ROTATED: &str = "Rotated";
    /// Reason: nothing to do before `nextRotation`.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// Reason (`RotationDue`): the secret is older than the interval.
    pub const OVERDUE: &str = "Overdue";
    /// Reason (`RotationDue=False`): the secret is younger than the interval.
    pub const NOT_DUE: &str = "NotDue";
}

/// Annotations the rotation pipeline writes on the Secrets it projects.
pub mod rotation_annotations {
    /// When the value in the Secret was issued.
    pub const ROTATED_AT: &str = "vault.certus.io/rotated-at";
    /// AppRole: accessor of the SecretID the Secret holds (not a secret itself).
    pub const SECRET_ID_ACCESSOR: &str = "vault.certus.io/secret-id-accessor";
    /// AppRole: accessor of the previous SecretID, destroyed when the grace period ends.
    pub const PREVIOUS_SECRET_ID_ACCESSOR: &str = "vault.certus.io/previous-secret-id-accessor";
    /// AppRole: when the previous SecretID is destroyed.
    pub const DESTROY_PREVIOUS_AFTER: &str = "vault.certus.io/destroy-previous-after";
}

/// Keys of KV v2 `custom_metadata` the rotation pipeline maintains (so the state
/// survives without the operator's status, e.g. for `certus-vault apply`).
pub mod rotation_kv_metadata {
    /// The version the operator's last rotation wrote.
    pub const ROTATED_VERSION: &str = "certus-rotated-version";
    /// When the operator's last rotation happened (RFC 3339).
    pub const ROTATED_AT: &str = "certus-rotated-at";
    /// The version that removed the previous values at the end of the grace period. It
    /// is not a change of the secret, so the interval still counts from `ROTATED_AT`.
    pub const CLEANUP_VERSION: &str = "certus-cleanup-version";
    /// The `vault.certus.io/rotate-now` value the last rotation handled.
    pub const ROTATE_NOW: &str = "certus-rotate-now";
    /// `namespace/name` of the RotationPolicy that rotates the secret.
    pub const ROTATED_BY: &str = "certus-rotated-by";
}

/// Rotates a static secret on an `interval` or a cron `schedule`. Set exactly one
/// target: `kv`, `databaseStaticRole`, `databaseRoot`, `appRoleSecretId` or `manual`.
/// Annotate with `vault.certus.io/rotate-now: <any new value>` to rotate once at once.
// The printer columns repeat `name`/`type_`/`json_path`; clippy takes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vault.certus.io",
    version = "v1alpha1",
    kind = "RotationPolicy",
    namespaced,
    status = "RotationPolicyStatus",
    category = "vault",
    shortname = "rotpol",
    doc = "Rotates a static secret (generated KV values, database static role or root credential, AppRole SecretID) on an interval or cron schedule, or reports that a manual rotation is due.",
    printcolumn(name = "Target", type_ = "string", json_path = ".status.target"),
    printcolumn(
        name = "Interval/Schedule",
        type_ = "string",
        json_path = ".status.when"
    ),
    printcolumn(
        name = "Last Rotated",
        type_ = "date",
        json_path = ".status.lastRotated"
    ),
    printcolumn(
        name = "Next Rotation",
        type_ = "string",
        json_path = ".status.nextRotation"
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
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("(has(self.kv) ? 1 : 0) + (has(self.databaseStaticRole) ? 1 : 0) + (has(self.databaseRoot) ? 1 : 0) + (has(self.appRoleSecretId) ? 1 : 0) + (has(self.manual) ? 1 : 0) == 1").message("set exactly one of kv, databaseStaticRole, databaseRoot, appRoleSecretId, manual"))]
#[x_kube(validation = kube::core::Rule::new("has(self.interval) != has(self.schedule)").message("set exactly one of interval and schedule"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.timeZone) || has(self.schedule)").message("timeZone applies to schedule only"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.gracePeriod) || has(self.kv) || has(self.appRoleSecretId)").message("gracePeriod applies to kv and appRoleSecretId targets only (Vault replaces database passwords at once)"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.manual) || has(self.interval)").message("a manual policy needs an interval (the age after which the secret is due)"))]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicySpec {
    /// The Vault connection to rotate through. When omitted, the `VaultConnection` named
    /// `default` in the same namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// Generated values in a KV v2 secret, written with check-and-set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvRotation>,
    /// A database static role: `POST <mount>/rotate-role/<role>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_static_role: Option<DatabaseStaticRoleRotation>,
    /// A database connection's root credential: `POST <mount>/rotate-root/<connection>`.
    /// Afterwards only Vault knows the root password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_root: Option<DatabaseRootRotation>,
    /// An AppRole SecretID: a new one is issued into a Kubernetes Secret and the old one
    /// destroyed after `gracePeriod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role_secret_id: Option<AppRoleSecretIdRotation>,
    /// A value only a vendor can issue (e.g. an OpenAI API key) kept in KV v2: never
    /// touched; when it is older than `interval`, `RotationDue=True`, a Warning Event and
    /// the metric `certus_rotation_due` = 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualRotation>,
    /// Rotate when the secret's last change is older than this, e.g. `90d`, `7d`, `1h`.
    /// The last change is read from Vault (KV metadata, a static role's last rotation),
    /// so a rotation done by hand counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub interval: Option<String>,
    /// Rotate at the first time of this cron schedule (5 fields: minute hour day month
    /// weekday, e.g. `0 2 * * 0`) after the secret's last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 256))]
    pub schedule: Option<String>,
    /// IANA time zone of `schedule`, e.g. `Europe/Berlin` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// How long the previous value stays valid after a rotation, e.g. `24h`. KV: the
    /// previous value stays readable (see `kv.keepPrevious`) until then; AppRole: the
    /// previous SecretID is destroyed then. Default: no grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub grace_period: Option<String>,
    /// Workloads rolled out after a rotation changed a Secret this policy writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rollout_restart_targets: Vec<RolloutTarget>,
}

fn default_database() -> String {
    "database".into()
}
fn default_approle() -> String {
    "approle".into()
}
fn default_valid_tokens_key() -> String {
    "valid_tokens".into()
}

/// How the previous value of a rotated KV key stays readable during `gracePeriod`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum KeepPrevious {
    /// As `<key>_previous` next to `<key>` (default).
    #[default]
    Suffix,
    /// As a JSON list under `validTokensKey` holding the current value first and the
    /// previous one second (the proposal's MCP `valid_tokens`); needs exactly one key.
    ValidTokens,
    /// Not kept: the old value is gone at once.
    None,
}

/// Generated values in a KV v2 secret. Keys of the secret that are not listed are kept
/// as they are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.keepPrevious != 'ValidTokens' || size(self.keys) == 1").message("keepPrevious: ValidTokens needs exactly one key"))]
#[serde(rename_all = "camelCase")]
pub struct KvRotation {
    /// Path the KV v2 engine is mounted at, e.g. `secret`.
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = "^[^/\\s]([^\\s]*[^/\\s])?$")
    )]
    pub mount: String,
    /// Path of the secret inside the mount, e.g. `mcp/assurance`.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = "^[^/\\s]([^\\s]*[^/\\s])?$")
    )]
    pub path: String,
    /// The keys to generate and how.
    #[schemars(length(min = 1, max = 32))]
    pub keys: Vec<GeneratedKey>,
    /// How the previous value stays readable during `gracePeriod`: `Suffix` (default,
    /// `<key>_previous`), `ValidTokens` (a list) or `None`.
    #[serde(default)]
    pub keep_previous: KeepPrevious,
    /// With `keepPrevious: ValidTokens`: the key holding the list of valid values
    /// (default `valid_tokens`).
    #[serde(default = "default_valid_tokens_key")]
    #[schemars(length(min = 1, max = 200), regex(pattern = "^[-._a-zA-Z0-9]+$"))]
    pub valid_tokens_key: String,
    /// A Kubernetes Secret updated at every rotation with the new values (templates
    /// over the KV secret's keys, including `<key>_previous` / the list key; empty = all
    /// keys). StaticSecrets reading the same path also pick the new version up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTarget>,
}

/// One generated key. Set exactly one generator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("(has(self.password) ? 1 : 0) + (has(self.vaultPasswordPolicy) ? 1 : 0) + (has(self.randomBytes) ? 1 : 0) + (has(self.token) ? 1 : 0) == 1").message("set exactly one of password, vaultPasswordPolicy, randomBytes, token"))]
#[serde(rename_all = "camelCase")]
pub struct GeneratedKey {
    /// The key in the KV secret, e.g. `server_token`.
    #[schemars(length(min = 1, max = 200), regex(pattern = "^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// A password with character-class minimums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordGenerator>,
    /// A password generated by Vault from a password policy
    /// (`sys/policies/password/<name>/generate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_password_policy: Option<VaultPasswordPolicyGenerator>,
    /// Random bytes, hex or base64 encoded (e.g. an encryption key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_bytes: Option<RandomBytesGenerator>,
    /// A URL-safe random token (`A-Z a-z 0-9 - _`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenGenerator>,
}

fn d32() -> u32 {
    32
}
fn d1() -> u32 {
    1
}
fn default_symbols() -> String {
    DEFAULT_SYMBOLS.into()
}
fn d43() -> u32 {
    43
}

/// The default `symbolCharset`: symbols that need no quoting in URLs' userinfo after
/// percent-encoding and are safe in most shells and connection strings.
pub const DEFAULT_SYMBOLS: &str = "!#%+-.:=?@^_~";

/// A generated password. Each class minimum says how many characters of that class
/// the password has at least; a minimum of `0` leaves the class out entirely.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.lowercase + self.uppercase + self.digits + self.symbols <= self.length").message("the class minimums add up to more than length"))]
#[x_kube(validation = kube::core::Rule::new("self.lowercase + self.uppercase + self.digits + self.symbols > 0").message("at least one character class needs a minimum above 0"))]
#[serde(rename_all = "camelCase")]
pub struct PasswordGenerator {
    /// Length in characters (default 32).
    #[serde(default = "d32")]
    #[schemars(range(min = 8, max = 1024))]
    pub length: u32,
    /// Minimum number of lowercase letters (default 1; 0 = none).
    #[serde(default = "d1")]
    #[schemars(range(max = 1024))]
    pub lowercase: u32,
    /// Minimum number of uppercase letters (default 1; 0 = none).
    #[serde(default = "d1")]
    #[schemars(range(max = 1024))]
    pub uppercase: u32,
    /// Minimum number of digits (default 1; 0 = none).
    #[serde(default = "d1")]
    #[schemars(range(max = 1024))]
    pub digits: u32,
    /// Minimum number of symbols from `symbolCharset` (default 0 = none).
    #[serde(default)]
    #[schemars(range(max = 1024))]
    pub symbols: u32,
    /// The symbols to use (default `!#%+-.:=?@^_~`).
    #[serde(default = "default_symbols")]
    #[schemars(length(min = 1, max = 64))]
    pub symbol_charset: String,
}

/// A password from a Vault password policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultPasswordPolicyGenerator {
    /// Name of the password policy (`sys/policies/password/<name>`).
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
}

/// Encoding of random bytes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ByteEncoding {
    /// Lowercase hexadecimal.
    Hex,
    /// Standard base64 with padding (default).
    #[default]
    Base64,
}

/// Random bytes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RandomBytesGenerator {
    /// Number of random bytes (default 32).
    #[serde(default = "d32")]
    #[schemars(range(min = 1, max = 1024))]
    pub length: u32,
    /// `hex` or `base64` (default).
    #[serde(default)]
    pub encoding: ByteEncoding,
}

/// A URL-safe token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenGenerator {
    /// Length in characters (default 43, about 256 bits).
    #[serde(default = "d43")]
    #[schemars(range(min = 16, max = 1024))]
    pub length: u32,
}

/// A database static role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStaticRoleRotation {
    /// Path of the database secrets engine (default `database`).
    #[serde(default = "default_database")]
    #[schemars(length(min = 1, max = 512))]
    pub mount: String,
    /// Name of the static role.
    #[schemars(length(min = 1, max = 128))]
    pub role: String,
    /// A Kubernetes Secret updated after each rotation from
    /// `<mount>/static-creds/<role>` (fields `username`, `password`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTarget>,
}

/// A database connection's root credential.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRootRotation {
    /// Path of the database secrets engine (default `database`).
    #[serde(default = "default_database")]
    #[schemars(length(min = 1, max = 512))]
    pub mount: String,
    /// Name of the connection (`<mount>/config/<connection>`).
    #[schemars(length(min = 1, max = 128))]
    pub connection: String,
}

/// An AppRole SecretID.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRoleSecretIdRotation {
    /// Path of the AppRole auth method (default `approle`).
    #[serde(default = "default_approle")]
    #[schemars(length(min = 1, max = 512))]
    pub mount: String,
    /// Name of the AppRole.
    #[schemars(length(min = 1, max = 128))]
    pub role: String,
    /// The Kubernetes Secret that receives the SecretID. Fields for templates:
    /// `secret_id`, `secret_id_accessor`, `role_id`; empty `data` writes `role_id` and
    /// `secret_id`.
    pub secret: SecretTarget,
    /// Metadata attached to each SecretID (visible in Vault's audit log).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A KV v2 secret rotated by hand.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManualRotation {
    /// Path the KV v2 engine is mounted at.
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = "^[^/\\s]([^\\s]*[^/\\s])?$")
    )]
    pub mount: String,
    /// Path of the secret inside the mount, e.g. `prod/openai`.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = "^[^/\\s]([^\\s]*[^/\\s])?$")
    )]
    pub path: String,
}

/// Outcome of one rotation attempt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RotationOutcome {
    /// The new value is in force.
    Succeeded,
    /// The rotation failed; the previous value is still in force.
    Failed,
    /// Another writer changed the secret first (check-and-set); nothing was written.
    Conflict,
    /// The previous values were removed at the end of the grace period.
    GraceEnded,
}

/// One entry of the rotation history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationRecord {
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The KV version written (KV targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `Succeeded`, `Failed`, `Conflict` or `GraceEnded`.
    pub outcome: RotationOutcome,
    /// Why (never a secret value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How many history entries the status keeps.
pub const HISTORY_LIMIT: usize = 5;

/// Observed state of a `RotationPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicyStatus {
    /// `Ready` (`False` with reason `RotationFailed` when the last attempt failed) and
    /// `RotationDue`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What is rotated, e.g. `kv:secret/mcp/assurance` or
    /// `databaseStaticRole:database/app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The interval or the schedule with its time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// When the secret last changed (rotated by the operator or by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated: Option<DateTime<Utc>>,
    /// When the next rotation is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<DateTime<Utc>>,
    /// When the previous value stops being valid (during a grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ends: Option<DateTime<Utc>>,
    /// The current KV version (KV and manual targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The last rotations, newest first (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RotationRecord>,
    /// The `vault.certus.io/rotate-now` value already handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_rotate_now: Option<String>,
    /// Name of the Secret written (KV with `secret`, static role with `secret`, AppRole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

impl RotationPolicyStatus {
    /// Adds a history entry, newest first, keeping at most [`HISTORY_LIMIT`].
    pub fn record(&mut self, r: RotationRecord) {
        self.history.insert(0, r);
        self.history.truncate(HISTORY_LIMIT);
    }
}

impl RotationPolicySpec {
    /// A short description of the target for status and plan output.
    pub fn target_label(&self) -> String {
        if let Some(k) = &self.kv {
            format!("kv:{}/{}", k.mount, k.path)
        } else if let Some(d) = &self.database_static_role {
            format!("databaseStaticRole:{}/{}", d.mount, d.role)
        } else if let Some(d) = &self.database_root {
            format!("databaseRoot:{}/{}", d.mount, d.connection)
        } else if let Some(a) = &self.app_role_secret_id {
            format!("appRoleSecretId:{}/{}", a.mount, a.role)
        } else if let Some(m) = &self.manual {
            format!("manual:{}/{}", m.mount, m.path)
        } else {
            "none".into()
        }
    }

    /// The interval or schedule as shown in `kubectl get`.
    pub fn when_label(&self) -> String {
        match (&self.interval, &self.schedule) {
            (Some(i), _) => i.clone(),
            (None, Some(s)) => format!("{s} ({})", self.time_zone.as_deref().unwrap_or("UTC")),
            (None, None) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    const HEAD: &str = "apiVersion: vault.certus.io/v1alpha1\nkind: RotationPolicy\nmetadata: {name: a, namespace: n}\n";

    fn parse(spec: &str) -> RotationPolicy {
        serde_yaml::from_str(&format!("{HEAD}spec:\n{spec}")).unwrap()
    }
    fn cel_err(spec: &str) -> String {
        kube::core::cel::validate_cel(&parse(spec))
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn valid_specs_pass_and_default() {
        let p = parse("  interval: 7d\n  gracePeriod: 24h\n  kv:\n    mount: secret\n    path: mcp/assurance\n    keepPrevious: ValidTokens\n    keys: [{key: server_token, token: {}}]\n");
        kube::core::cel::validate_cel(&p).unwrap();
        let kv = p.spec.kv.as_ref().unwrap();
        assert_eq!(kv.valid_tokens_key, "valid_tokens");
        assert_eq!(kv.keys[0].token.as_ref().unwrap().length, 43);
        assert_eq!(p.spec.target_label(), "kv:secret/mcp/assurance");
        assert_eq!(p.spec.when_label(), "7d");
        let pw = parse("  schedule: '0 2 * * 0'\n  timeZone: Europe/Berlin\n  kv:\n    mount: secret\n    path: aws\n    keys: [{key: a, password: {length: 20, symbols: 2}}, {key: b, randomBytes: {encoding: hex}}]\n");
        kube::core::cel::validate_cel(&pw).unwrap();
        let g = pw.spec.kv.as_ref().unwrap().keys[0]
            .password
            .clone()
            .unwrap();
        assert_eq!(
            (g.length, g.lowercase, g.uppercase, g.digits, g.symbols),
            (20, 1, 1, 1, 2)
        );
        assert_eq!(pw.spec.when_label(), "0 2 * * 0 (Europe/Berlin)");
        let db = parse("  interval: 30d\n  databaseStaticRole: {role: app}\n");
        kube::core::cel::validate_cel(&db).unwrap();
        assert_eq!(db.spec.database_static_role.unwrap().mount, "database");
        let manual = parse("  interval: 90d\n  manual: {mount: secret, path: prod/openai}\n");
        kube::core::cel::validate_cel(&manual).unwrap();
    }

    #[test]
    fn cel_rules_reject_bad_unions() {
        assert!(cel_err(
            "  interval: 1d\n  manual: {mount: s, path: p}\n  databaseRoot: {connection: pg}\n"
        )
        .contains("exactly one of kv"));
        assert!(cel_err("  interval: 1d\n").contains("exactly one of kv"));
        assert!(cel_err(
            "  interval: 1d\n  schedule: '0 2 * * *'\n  databaseRoot: {connection: pg}\n"
        )
        .contains("exactly one of interval"));
        assert!(cel_err("  databaseRoot: {connection: pg}\n").contains("exactly one of interval"));
        assert!(
            cel_err("  interval: 1d\n  timeZone: UTC\n  databaseRoot: {connection: pg}\n")
                .contains("timeZone")
        );
        assert!(
            cel_err("  interval: 1d\n  gracePeriod: 1h\n  databaseRoot: {connection: pg}\n")
                .contains("gracePeriod")
        );
        assert!(
            cel_err("  schedule: '0 2 * * *'\n  manual: {mount: s, path: p}\n")
                .contains("manual policy needs an interval")
        );
        assert!(cel_err("  interval: 1d\n  kv: {mount: s, path: p, keys: [{key: k, token: {}, password: {}}]}\n").contains("exactly one of password"));
        assert!(cel_err("  interval: 1d\n  kv: {mount: s, path: p, keepPrevious: ValidTokens, keys: [{key: a, token: {}}, {key: b, token: {}}]}\n").contains("exactly one key"));
        assert!(cel_err("  interval: 1d\n  kv: {mount: s, path: p, keys: [{key: k, password: {length: 8, lowercase: 4, uppercase: 4, digits: 1}}]}\n").contains("add up to more than length"));
        assert!(cel_err("  interval: 1d\n  kv: {mount: s, path: p, keys: [{key: k, password: {lowercase: 0, uppercase: 0, digits: 0}}]}\n").contains("at least one character class"));
    }

    #[test]
    fn crd_shape_and_columns() {
        let crd = serde_json::to_value(RotationPolicy::crd()).unwrap();
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "rotpol");
        assert_eq!(crd["spec"]["names"]["plural"], "rotationpolicies");
        assert_eq!(crd["spec"]["names"]["categories"][0], "vault");
        let v = &crd["spec"]["versions"][0];
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["priority"].as_i64().unwrap_or(0) == 0)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            cols,
            [
                "Target",
                "Interval/Schedule",
                "Last Rotated",
                "Next Rotation",
                "Ready",
                "Age"
            ]
        );
        let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        assert!(status["history"].is_object());
    }

    #[test]
    fn history_keeps_the_newest_five() {
        let mut s = RotationPolicyStatus::default();
        for v in 1..=7 {
            s.record(RotationRecord {
                time: Utc::now(),
                version: Some(v),
                outcome: RotationOutcome::Succeeded,
                message: None,
            });
        }
        assert_eq!(
            s.history
                .iter()
                .map(|r| r.version.unwrap())
                .collect::<Vec<_>>(),
            [7, 6, 5, 4, 3]
        );
    }
}
