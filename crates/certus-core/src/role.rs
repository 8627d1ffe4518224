//! VaultRole: pick the one role kind the spec sets, validate it, and compute the role
//! object (path + managed fields) and its dependencies.

use certus_api::VaultRoleSpec;
use serde_json::Value;

use crate::mount::{live_type, MountTable};
use crate::object::{applied_hash, ConfigError, DesiredObject, Want};
use crate::ttl::opt_seconds;

/// The kind of role a `VaultRole` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    Kubernetes,
    AppRole,
    Jwt,
    Oidc,
    Database,
    DatabaseStatic,
    Pki,
    Aws,
    KubernetesSecrets,
}

impl RoleKind {
    /// The spec field that holds this kind.
    pub fn field(self) -> &'static str {
        match self {
            RoleKind::Kubernetes => "kubernetes",
            RoleKind::AppRole => "appRole",
            RoleKind::Jwt => "jwt",
            RoleKind::Oidc => "oidc",
            RoleKind::Database => "database",
            RoleKind::DatabaseStatic => "databaseStatic",
            RoleKind::Pki => "pki",
            RoleKind::Aws => "aws",
            RoleKind::KubernetesSecrets => "kubernetesSecrets",
        }
    }
    /// Which mount table the role's mount is in.
    pub fn table(self) -> MountTable {
        match self {
            RoleKind::Kubernetes | RoleKind::AppRole | RoleKind::Jwt | RoleKind::Oidc => {
                MountTable::Auth
            }
            _ => MountTable::Secrets,
        }
    }
    /// The mount types the role may live in.
    pub fn mount_types(self) -> &'static [&'static str] {
        match self {
            RoleKind::Kubernetes => &["kubernetes"],
            RoleKind::AppRole => &["approle"],
            // Both are the same plugin: a JWT role may live on an OIDC mount and back.
            RoleKind::Jwt | RoleKind::Oidc => &["jwt", "oidc"],
            RoleKind::Database | RoleKind::DatabaseStatic => &["database"],
            RoleKind::Pki => &["pki"],
            RoleKind::Aws => &["aws"],
            RoleKind::KubernetesSecrets => &["kubernetes"],
        }
    }
}

/// Everything a VaultRole wants in Vault.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredRole {
    pub kind: RoleKind,
    /// The mount path (without slashes).
    pub mount: String,
    /// Role name in Vault.
    pub name: String,
    /// The role object.
    pub object: DesiredObject,
    /// Database roles: the connection they use (must exist).
    pub db_name: Option<String>,
    /// Vault policy names granted (plain names and resolved references), sorted.
    pub policies: Vec<String>,
    /// AppRole: publish the role id to this Secret.
    pub role_id_secret: Option<String>,
}

impl DesiredRole {
    /// The resource's applied hash.
    pub fn hash(&self) -> String {
        applied_hash([self.object.fingerprint().as_str()])
    }
}

/// Which role kind the spec sets; exactly one is allowed.
pub fn kind_of(spec: &VaultRoleSpec) -> Result<RoleKind, ConfigError> {
    let set: Vec<RoleKind> = [
        (spec.kubernetes.is_some(), RoleKind::Kubernetes),
        (spec.app_role.is_some(), RoleKind::AppRole),
        (spec.jwt.is_some(), RoleKind::Jwt),
        (spec.oidc.is_some(), RoleKind::Oidc),
        (spec.database.is_some(), RoleKind::Database),
        (spec.database_static.is_some(), RoleKind::DatabaseStatic),
        (spec.pki.is_some(), RoleKind::Pki),
        (spec.aws.is_some(), RoleKind::Aws),
        (
            spec.kubernetes_secrets.is_some(),
            RoleKind::KubernetesSecrets,
        ),
    ]
    .into_iter()
    .filter_map(|(s, k)| s.then_some(k))
    .collect();
    match set.as_slice() {
        [k] => Ok(*k),
        [] => Err(ConfigError::new(
            "spec",
            "set one of kubernetes, appRole, jwt, oidc, database, databaseStatic, pki, aws, kubernetesSecrets",
        )),
        many => Err(ConfigError::new(
            "spec",
            format!(
                "set exactly one role kind, not {}",
                many.iter().map(|k| k.field()).collect::<Vec<_>>().join(" and ")
            ),
        )),
    }
}

/// The `VaultPolicy` names the spec references (`policyRefs`).
pub fn policy_refs(spec: &VaultRoleSpec) -> &[String] {
    if let Some(r) = &spec.kubernetes {
        &r.policy_refs
    } else if let Some(r) = &spec.app_role {
        &r.policy_refs
    } else if let Some(r) = spec.jwt.as_ref().or(spec.oidc.as_ref()) {
        &r.policy_refs
    } else {
        &[]
    }
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "spec.name",
            format!("{name:?} is not a valid role name: use 1-128 letters, digits, '.', '_', '-', starting with a letter or digit"),
        ))
    }
}

fn mount_of(field: &str, m: &str) -> Result<String, ConfigError> {
    let p = m.trim_matches('/');
    if p.is_empty()
        || !p.split('/').all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
    {
        return Err(ConfigError::new(
            field,
            format!("{m:?} is not a mount path"),
        ));
    }
    Ok(p.to_string())
}

fn non_empty(field: &str, v: &[String]) -> Result<(), ConfigError> {
    if v.iter().all(|s| s.trim().is_empty()) {
        Err(ConfigError::new(field, "list at least one value"))
    } else {
        Ok(())
    }
}

fn secs(field: String, s: Option<&String>) -> Result<Option<Want>, ConfigError> {
    Ok(opt_seconds(&field, s)?.map(Want::Seconds))
}

fn merged_policies(plain: &[String], resolved: &[String]) -> Vec<String> {
    let mut v: Vec<String> = plain
        .iter()
        .chain(resolved)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Validates a spec and computes the desired role. `vault_name` is the role name
/// (`spec.name` or `metadata.name`); `resolved_refs` are the Vault policy names of the
/// spec's `policyRefs` (resolved by the caller). Pure.
pub fn desired(
    spec: &VaultRoleSpec,
    vault_name: &str,
    resolved_refs: &[String],
) -> Result<DesiredRole, ConfigError> {
    let kind = kind_of(spec)?;
    validate_name(vault_name)?;
    let f = |name: &str| format!("spec.{}.{name}", kind.field());
    let mut db_name = None;
    let mut policies = vec![];
    let mut role_id_secret = None;
    let (mount, object) = match kind {
        RoleKind::Kubernetes => {
            let r = spec.kubernetes.as_ref().expect("kind checked");
            let mount = mount_of(&f("mount"), &r.mount)?;
            non_empty(
                &f("boundServiceAccountNames"),
                &r.bound_service_account_names,
            )?;
            non_empty(
                &f("boundServiceAccountNamespaces"),
                &r.bound_service_account_namespaces,
            )?;
            policies = merged_policies(&r.policies, resolved_refs);
            let o = DesiredObject::new(format!("auth/{mount}/role/{vault_name}"))
                .set(
                    "bound_service_account_names",
                    &r.bound_service_account_names,
                )
                .set(
                    "bound_service_account_namespaces",
                    &r.bound_service_account_namespaces,
                )
                .opt("audience", r.audience.clone().map(Want::Str))
                .set("token_policies", &policies)
                .opt("token_ttl", secs(f("tokenTTL"), r.token_ttl.as_ref())?)
                .opt(
                    "token_max_ttl",
                    secs(f("tokenMaxTTL"), r.token_max_ttl.as_ref())?,
                )
                .opt(
                    "token_period",
                    secs(f("tokenPeriod"), r.token_period.as_ref())?,
                );
            (mount, o)
        }
        RoleKind::AppRole => {
            let r = spec.app_role.as_ref().expect("kind checked");
            let mount = mount_of(&f("mount"), &r.mount)?;
            policies = merged_policies(&r.policies, resolved_refs);
            if r.bind_secret_id == Some(false) && r.secret_id_bound_cidrs.is_empty() {
                return Err(ConfigError::new(
                    f("bindSecretId"),
                    "false needs secretIdBoundCIDRs (Vault requires another constraint; otherwise anyone with the role id could log in)",
                ));
            }
            if let Some(s) = &r.role_id_secret {
                if s.name.trim().is_empty() {
                    return Err(ConfigError::new(
                        f("roleIdSecret.name"),
                        "must not be empty",
                    ));
                }
                role_id_secret = Some(s.name.trim().to_string());
            }
            let o = DesiredObject::new(format!("auth/{mount}/role/{vault_name}"))
                .set("token_policies", &policies)
                .opt(
                    "secret_id_ttl",
                    secs(f("secretIdTTL"), r.secret_id_ttl.as_ref())?,
                )
                .opt(
                    "secret_id_num_uses",
                    r.secret_id_num_uses.map(|n| Want::Int(n.into())),
                )
                .opt("bind_secret_id", r.bind_secret_id.map(Want::Bool))
                .set("secret_id_bound_cidrs", &r.secret_id_bound_cidrs)
                .opt("token_ttl", secs(f("tokenTTL"), r.token_ttl.as_ref())?)
                .opt(
                    "token_max_ttl",
                    secs(f("tokenMaxTTL"), r.token_max_ttl.as_ref())?,
                )
                .opt(
                    "token_period",
                    secs(f("tokenPeriod"), r.token_period.as_ref())?,
                );
            (mount, o)
        }
        RoleKind::Jwt | RoleKind::Oidc => {
            let r = if kind == RoleKind::Jwt {
                spec.jwt.as_ref()
            } else {
                spec.oidc.as_ref()
            }
            .expect("kind checked");
            let default_mount = if kind == RoleKind::Jwt { "jwt" } else { "oidc" };
            let mount = mount_of(&f("mount"), r.mount.as_deref().unwrap_or(default_mount))?;
            let role_type = r.role_type.clone().unwrap_or_else(|| default_mount.into());
            if !matches!(role_type.as_str(), "jwt" | "oidc") {
                return Err(ConfigError::new(
                    f("roleType"),
                    format!("{role_type:?}: use jwt or oidc"),
                ));
            }
            if r.user_claim.trim().is_empty() {
                return Err(ConfigError::new(f("userClaim"), "must not be empty"));
            }
            if role_type == "oidc" {
                non_empty(&f("allowedRedirectURIs"), &r.allowed_redirect_uris)?;
            } else if r.bound_audiences.is_empty()
                && r.bound_subject.is_none()
                && r.bound_claims.is_empty()
            {
                return Err(ConfigError::new(
                    f("boundAudiences"),
                    "a jwt role needs at least one of boundAudiences, boundSubject, boundClaims",
                ));
            }
            policies = merged_policies(&r.policies, resolved_refs);
            let claims = (!r.bound_claims.is_empty()).then(|| {
                Want::Json(Value::Object(
                    r.bound_claims
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ))
            });
            let o = DesiredObject::new(format!("auth/{mount}/role/{vault_name}"))
                .field("role_type", Want::Str(role_type))
                .field("user_claim", Want::Str(r.user_claim.trim().to_string()))
                .set("bound_audiences", &r.bound_audiences)
                .opt("bound_subject", r.bound_subject.clone().map(Want::Str))
                .opt("bound_claims", claims)
                .opt("groups_claim", r.groups_claim.clone().map(Want::Str))
                .set("allowed_redirect_uris", &r.allowed_redirect_uris)
                .set("oidc_scopes", &r.oidc_scopes)
                .set("token_policies", &policies)
                .opt("token_ttl", secs(f("tokenTTL"), r.token_ttl.as_ref())?)
                .opt(
                    "token_max_ttl",
                    secs(f("tokenMaxTTL"), r.token_max_ttl.as_ref())?,
                );
            (mount, o)
        }
        RoleKind::Database => {
            let r = spec.database.as_ref().expect("kind checked");
            let mount = mount_of(&f("mount"), &r.mount)?;
            if r.db_name.trim().is_empty() {
                return Err(ConfigError::new(f("dbName"), "must not be empty"));
            }
            non_empty(&f("creationStatements"), &r.creation_statements)?;
            let (d, m) = (
                opt_seconds(&f("defaultTTL"), r.default_ttl.as_ref())?,
                opt_seconds(&f("maxTTL"), r.max_ttl.as_ref())?,
            );
            if let (Some(d), Some(m)) = (d, m) {
                if m > 0 && d > m {
                    return Err(ConfigError::new(f("defaultTTL"), "must not exceed maxTTL"));
                }
            }
            db_name = Some(r.db_name.trim().to_string());
            let o = DesiredObject::new(format!("{mount}/roles/{vault_name}"))
                .field("db_name", Want::Str(r.db_name.trim().to_string()))
                .list("creation_statements", &r.creation_statements)
                .list("revocation_statements", &r.revocation_statements)
                .list("renew_statements", &r.renew_statements)
                .list("rollback_statements", &r.rollback_statements)
                .opt("default_ttl", d.map(Want::Seconds))
                .opt("max_ttl", m.map(Want::Seconds));
            (mount, o)
        }
        RoleKind::DatabaseStatic => {
            let r = spec.database_static.as_ref().expect("kind checked");
            let mount = mount_of(&f("mount"), &r.mount)?;
            if r.db_name.trim().is_empty() {
                return Err(ConfigError::new(f("dbName"), "must not be empty"));
            }
            if r.username.trim().is_empty() {
                return Err(ConfigError::new(f("username"), "must not be empty"));
            }
            let period =
                opt_seconds(&f("rotationPeriod"), Some(&r.rotation_period))?.unwrap_or_default();
            if period < 5 {
                return Err(ConfigError::new(f("rotationPeriod"), "must be at least 5s"));
            }
            db_name = Some(r.db_name.trim().to_string());
            let o = DesiredObject::new(format!("{mount}/static-roles/{vault_name}"))
                .field("db_name", Want::Str(r.db_name.trim().to_string()))
                .field("username", Want::Str(r.username.trim().to_string()))
                .field("rotation_period", Want::Seconds(period))
                .list("rotation_statements", &r.rotation_statements);
            (mount, o)
        }
        RoleKind::Pki => {
            let r = spec.pki.as_ref().expect("kind checked");
            let mount = mount_of(&f("mount"), &r.mount)?;
            if let Some(k) = &r.key_type {
                if !matches!(k.as_str(), "rsa" | "ec" | "ed25519" | "any") {
                    return Err(ConfigError::new(
                        f("keyType"),
                        format!("{k:?}: use rsa, ec, ed25519 or any"),
                    ));
                }
            }
            let o = DesiredObject::new(format!("{mount}/roles/{vault_name}"))
                .set("allowed_domains", &r.allowed_domains)
                .opt("allow_subdomains", r.allow_subdomains.map(Want::Bool))
                .opt("allow_bare_domains", r.allow_bare_domains.map(Want::Bool))
                .opt("allow_glob_domains", r.allow_glob_domains.map(Want::Bool))
                .opt("allow_localhost", r.allow_localhost.map(Want::Bool))
                .opt("allow_ip_sans", r.allow_ip_sans.map(Want::Bool))
                .opt("ttl", secs(f("ttl"), r.ttl.as_ref())?)
                .opt("max_ttl", secs(f("maxTTL"), r.max_ttl.as_ref())?)
                .opt("key_type", r.key_type.clone().map(Want::Str))
                .opt("key_bits", r.key_bits.map(|n| Want::Int(n.into())))
                .opt("server_flag", r.server_flag.map(Want::Bool))
                .opt("client_flag", r.client_flag.map(Want::Bool))
                .opt("issuer_ref", r.issuer_ref.clone().map(Want::Str))
                .set("organization", &r.organization);
            (mount, o)
        }
        RoleKind::Aws => {
            let r = spec.aws.as_ref().expect("kind checked");
            let mount = mount_of(&f("mount"), &r.mount)?;
            let doc = match &r.policy_document {
                Some(d) => Some(Want::Json(serde_json::from_str::<Value>(d).map_err(
                    |e| ConfigError::new(f("policyDocument"), format!("is not JSON: {e}")),
                )?)),
                None => None,
            };
            use certus_api::AwsCredentialType as T;
            match r.credential_type {
                T::AssumedRole if r.role_arns.is_empty() => {
                    return Err(ConfigError::new(
                        f("roleArns"),
                        "assumed_role needs at least one role ARN",
                    ))
                }
                T::IamUser | T::FederationToken
                    if doc.is_none() && r.policy_arns.is_empty() && r.iam_groups.is_empty() =>
                {
                    return Err(ConfigError::new(
                        f("policyDocument"),
                        "set policyDocument, policyArns or iamGroups",
                    ))
                }
                _ => {}
            }
            let o = DesiredObject::new(format!("{mount}/roles/{vault_name}"))
                .field(
                    "credential_type",
                    Want::Str(r.credential_type.as_str().into()),
                )
                .opt("policy_document", doc)
                .set("policy_arns", &r.policy_arns)
                .set("role_arns", &r.role_arns)
                .set("iam_groups", &r.iam_groups)
                .opt(
                    "default_sts_ttl",
                    secs(f("defaultStsTTL"), r.default_sts_ttl.as_ref())?,
                )
                .opt("max_sts_ttl", secs(f("maxStsTTL"), r.max_sts_ttl.as_ref())?);
            (mount, o)
        }
        RoleKind::KubernetesSecrets => {
            let r = spec.kubernetes_secrets.as_ref().expect("kind checked");
            let mount = mount_of(&f("mount"), &r.mount)?;
            non_empty(
                &f("allowedKubernetesNamespaces"),
                &r.allowed_kubernetes_namespaces,
            )?;
            let ways = [
                r.service_account_name.is_some(),
                r.kubernetes_role_name.is_some(),
                r.generated_role_rules.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if ways != 1 {
                return Err(ConfigError::new(
                    f("serviceAccountName"),
                    "set exactly one of serviceAccountName, kubernetesRoleName and generatedRoleRules",
                ));
            }
            let o = DesiredObject::new(format!("{mount}/roles/{vault_name}"))
                .set(
                    "allowed_kubernetes_namespaces",
                    &r.allowed_kubernetes_namespaces,
                )
                .opt(
                    "service_account_name",
                    r.service_account_name.clone().map(Want::Str),
                )
                .opt(
                    "kubernetes_role_name",
                    r.kubernetes_role_name.clone().map(Want::Str),
                )
                .opt(
                    "kubernetes_role_type",
                    r.kubernetes_role_type.clone().map(Want::Str),
                )
                .opt(
                    "generated_role_rules",
                    r.generated_role_rules.clone().map(Want::Text),
                )
                .opt(
                    "token_default_ttl",
                    secs(f("tokenDefaultTTL"), r.token_default_ttl.as_ref())?,
                )
                .opt(
                    "token_max_ttl",
                    secs(f("tokenMaxTTL"), r.token_max_ttl.as_ref())?,
                );
            (mount, o)
        }
    };
    Ok(DesiredRole {
        kind,
        mount,
        name: vault_name.to_string(),
        object,
        db_name,
        policies,
        role_id_secret,
    })
}

/// Checks the role's mount in the mount table: `Ok` when it exists with a fitting type,
/// `Err(Missing)` / `Err(WrongType)` with a message naming it otherwise.
pub fn check_mount(role: &DesiredRole, table: &Value) -> Result<(), MountProblem> {
    let entry = crate::mount::find_entry(table, &role.mount);
    let noun = match role.kind.table() {
        MountTable::Auth => "auth method",
        MountTable::Secrets => "secrets engine",
    };
    let wanted = role.kind.mount_types().join(" or ");
    match entry {
        None => Err(MountProblem::Missing(format!(
            "spec.{}.mount: the {wanted} {noun} at {}/{}/ does not exist yet",
            role.kind.field(),
            role.kind.table().sys_path(),
            role.mount
        ))),
        Some(e) => {
            let t = live_type(e);
            if role.kind.mount_types().contains(&t.as_str()) {
                Ok(())
            } else {
                Err(MountProblem::WrongType(format!(
                    "spec.{}.mount: {}/{}/ is a {t} {noun}, not {wanted}",
                    role.kind.field(),
                    role.kind.table().sys_path(),
                    role.mount
                )))
            }
        }
    }
}

/// Why a role's mount is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountProblem {
    /// Not mounted (yet): wait for it.
    Missing(String),
    /// Mounted with another type: the spec names the wrong mount.
    WrongType(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::*;
    use serde_json::json;

    pub(crate) fn role() -> VaultRoleSpec {
        VaultRoleSpec {
            connection_ref: None,
            name: None,
            kubernetes: None,
            app_role: None,
            jwt: None,
            oidc: None,
            database: None,
            database_static: None,
            pki: None,
            aws: None,
            kubernetes_secrets: None,
            deletion_policy: DeletionPolicy::Delete,
            drift_policy: DriftPolicy::Correct,
        }
    }

    fn k8s() -> KubernetesAuthRole {
        KubernetesAuthRole {
            mount: "kubernetes".into(),
            bound_service_account_names: vec!["certus-agent".into()],
            bound_service_account_namespaces: vec!["certus-tap".into()],
            audience: None,
            policies: vec!["extra".into()],
            policy_refs: vec!["certus-agent".into()],
            token_ttl: Some("15m".into()),
            token_max_ttl: None,
            token_period: None,
        }
    }

    #[test]
    fn exactly_one_kind() {
        assert_eq!(kind_of(&role()).unwrap_err().field, "spec");
        let both = VaultRoleSpec {
            kubernetes: Some(k8s()),
            pki: Some(serde_json::from_value(json!({})).unwrap()),
            ..role()
        };
        assert!(kind_of(&both)
            .unwrap_err()
            .to_string()
            .contains("not kubernetes and pki"));
    }

    #[test]
    fn kubernetes_role_compares_with_vault_answer() {
        let spec = VaultRoleSpec {
            kubernetes: Some(k8s()),
            ..role()
        };
        assert_eq!(policy_refs(&spec), ["certus-agent".to_string()]);
        let d = desired(&spec, "certus-agent", &["certus-agent-policy".into()]).unwrap();
        assert_eq!(d.object.path, "auth/kubernetes/role/certus-agent");
        assert_eq!(d.policies, ["certus-agent-policy", "extra"]);
        let live = json!({"bound_service_account_names": ["certus-agent"],
            "bound_service_account_namespaces": ["certus-tap"], "token_policies": ["extra", "certus-agent-policy"],
            "policies": ["extra", "certus-agent-policy"], "token_ttl": 900, "ttl": 900, "token_max_ttl": 0,
            "alias_name_source": "serviceaccount_uid"});
        assert!(
            d.object.diff(&live).is_empty(),
            "{:?}",
            d.object.diff(&live)
        );
        let mut edited = live.clone();
        edited["token_ttl"] = json!(3600);
        assert_eq!(
            d.object.diff(&edited),
            ["~ token_ttl: 3600 → 900s".to_string()]
        );
    }

    #[test]
    fn errors_name_fields() {
        let mut r = k8s();
        r.token_ttl = Some("15 minutes".into());
        let e = desired(
            &VaultRoleSpec {
                kubernetes: Some(r),
                ..role()
            },
            "x",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.kubernetes.tokenTTL");
        let e = desired(
            &VaultRoleSpec {
                database: Some(DatabaseRole {
                    mount: "database".into(),
                    db_name: "pg".into(),
                    creation_statements: vec![],
                    revocation_statements: vec![],
                    renew_statements: vec![],
                    rollback_statements: vec![],
                    default_ttl: None,
                    max_ttl: None,
                }),
                ..role()
            },
            "x",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.database.creationStatements");
        let e = desired(
            &VaultRoleSpec {
                kubernetes: Some(k8s()),
                ..role()
            },
            "bad name",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.name");
        let e = desired(
            &VaultRoleSpec {
                aws: Some(AwsRole {
                    mount: "aws".into(),
                    credential_type: AwsCredentialType::IamUser,
                    policy_document: Some("{not json".into()),
                    policy_arns: vec![],
                    role_arns: vec![],
                    iam_groups: vec![],
                    default_sts_ttl: None,
                    max_sts_ttl: None,
                }),
                ..role()
            },
            "x",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.aws.policyDocument");
    }

    #[test]
    fn aws_role_request() {
        let doc = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::certus-artifacts/*"}]}"#;
        let d = desired(
            &VaultRoleSpec {
                aws: Some(AwsRole {
                    mount: "aws".into(),
                    credential_type: AwsCredentialType::IamUser,
                    policy_document: Some(doc.into()),
                    policy_arns: vec![],
                    role_arns: vec![],
                    iam_groups: vec![],
                    default_sts_ttl: None,
                    max_sts_ttl: None,
                }),
                ..role()
            },
            "certus-s3-access",
            &[],
        )
        .unwrap();
        assert_eq!(d.object.path, "aws/roles/certus-s3-access");
        assert_eq!(d.kind.mount_types(), ["aws"]);
        let body = Value::Object(d.object.body());
        assert_eq!(body["credential_type"], "iam_user");
        assert_eq!(body["policy_document"]["Statement"][0]["Effect"], "Allow");
        // Vault answers with the document as a compacted string.
        let live = json!({"credential_type": "iam_user", "policy_document": serde_json::to_string(&serde_json::from_str::<Value>(doc).unwrap()).unwrap()});
        assert!(d.object.diff(&live).is_empty());
    }

    #[test]
    fn oidc_and_approle_and_database_paths() {
        let oidc: JwtRole = serde_json::from_value(json!({"userClaim": "email",
            "boundAudiences": ["cid"], "allowedRedirectURIs": ["http://localhost:8250/oidc/callback"],
            "policyRefs": ["developer"]}))
        .unwrap();
        let d = desired(
            &VaultRoleSpec {
                oidc: Some(oidc),
                ..role()
            },
            "developer",
            &["developer-policy".into()],
        )
        .unwrap();
        assert_eq!(d.object.path, "auth/oidc/role/developer");
        assert_eq!(d.object.body()["role_type"], "oidc");
        let ar: AppRoleRole = serde_json::from_value(json!({"secretIdTTL": "24h",
            "tokenTTL": "1h", "tokenMaxTTL": "4h", "roleIdSecret": {"name": "certus-service-role-id"}}))
        .unwrap();
        let d = desired(
            &VaultRoleSpec {
                app_role: Some(ar),
                ..role()
            },
            "certus-service",
            &[],
        )
        .unwrap();
        assert_eq!(d.role_id_secret.as_deref(), Some("certus-service-role-id"));
        assert_eq!(d.object.body()["secret_id_ttl"], "86400s");
        let st: DatabaseStaticRole = serde_json::from_value(
            json!({"dbName": "pg", "username": "app", "rotationPeriod": "1s"}),
        )
        .unwrap();
        let e = desired(
            &VaultRoleSpec {
                database_static: Some(st),
                ..role()
            },
            "app",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.databaseStatic.rotationPeriod");
    }

    #[test]
    fn mount_checks() {
        let d = desired(
            &VaultRoleSpec {
                kubernetes: Some(k8s()),
                ..role()
            },
            "a",
            &[],
        )
        .unwrap();
        let table = json!({"kubernetes/": {"type": "kubernetes"}, "approle/": {"type": "approle"}});
        assert_eq!(check_mount(&d, &table), Ok(()));
        let none = json!({});
        assert!(
            matches!(check_mount(&d, &none), Err(MountProblem::Missing(m)) if m.contains("sys/auth/kubernetes/ does not exist yet"))
        );
        let mut d2 = d.clone();
        d2.mount = "approle".into();
        assert!(
            matches!(check_mount(&d2, &table), Err(MountProblem::WrongType(m)) if m.contains("is a approle auth method"))
        );
    }
}
