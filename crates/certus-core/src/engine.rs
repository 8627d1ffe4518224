//! SecretEngine: validate the spec and compute the desired mount, configuration
//! objects and PKI CA.

use certus_api::{PkiCaType, SecretEngineSpec};
use serde_json::{json, Map, Value};

use crate::change::{Action, Change, ResourceId};
use crate::mount::{tune_fields, validate_path, validate_type, DesiredMount, MountTable};
use crate::object::{applied_hash, ConfigError, DesiredObject, SecretField, Want};
use crate::ttl::opt_seconds;

/// A CA the operator generates once in a PKI mount.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredCa {
    /// The PKI mount path.
    pub mount: String,
    /// The issuer name that identifies the CA; generated only when no issuer has it.
    pub issuer_name: String,
    pub ca_type: PkiCaType,
    /// For intermediates: the PKI mount whose root signs the CSR.
    pub signed_by: Option<String>,
    /// Body of `<mount>/root/generate/internal` or `<mount>/intermediate/generate/internal`.
    pub generate_body: Map<String, Value>,
    /// Body of `<signed_by>/root/sign-intermediate` (without the CSR).
    pub sign_body: Map<String, Value>,
}

impl DesiredCa {
    /// The path that generates the CA.
    pub fn generate_path(&self) -> String {
        match self.ca_type {
            PkiCaType::Root => format!("{}/root/generate/internal", self.mount),
            PkiCaType::Intermediate => format!("{}/intermediate/generate/internal", self.mount),
        }
    }
    fn fingerprint(&self) -> String {
        format!(
            "ca:{}:{}:{:?}:{:?}:{}:{}",
            self.mount,
            self.issuer_name,
            self.ca_type,
            self.signed_by,
            Value::Object(self.generate_body.clone()),
            Value::Object(self.sign_body.clone())
        )
    }
}

/// Everything a SecretEngine wants in Vault.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredEngine {
    pub mount: DesiredMount,
    /// Configuration objects written after the mount exists, in order.
    pub objects: Vec<DesiredObject>,
    /// Database connections whose root password Vault rotates after creation.
    pub rotate_root: Vec<String>,
    pub ca: Option<DesiredCa>,
}

impl DesiredEngine {
    /// The resource's applied hash (call after the reconcile layer set secret hashes).
    pub fn hash(&self) -> String {
        let mut parts = vec![self.mount.fingerprint()];
        parts.extend(self.objects.iter().map(DesiredObject::fingerprint));
        if let Some(ca) = &self.ca {
            parts.push(ca.fingerprint());
        }
        applied_hash(parts.iter().map(String::as_str))
    }
}

fn secs(field: &str, s: Option<&String>) -> Result<Option<Want>, ConfigError> {
    Ok(opt_seconds(field, s)?.map(Want::Seconds))
}

/// Checks a connection URL template carries no literal password.
fn check_connection_url(field: &str, url: &str) -> Result<(), ConfigError> {
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, pw)) = userinfo.split_once(':') {
                if pw != "{{password}}" {
                    return Err(ConfigError::new(
                        field,
                        "contains a literal password; write {{password}} and set passwordSecretRef",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Validates a spec and computes the desired state. Pure.
pub fn desired(spec: &SecretEngineSpec) -> Result<DesiredEngine, ConfigError> {
    let path = validate_path(MountTable::Secrets, &spec.path)?;
    let t = spec.type_.trim();
    validate_type(t)?;
    let (vault_type, options) = match t {
        "kv-v2" => ("kv", json!({"version": "2"})),
        "kv" | "kv-v1" => ("kv", json!({"version": "1"})),
        other => (other, json!({})),
    };
    let sections = [
        ("kv", spec.kv.is_some(), "kv-v2"),
        ("database", spec.database.is_some(), "database"),
        ("pki", spec.pki.is_some(), "pki"),
        ("aws", spec.aws.is_some(), "aws"),
        ("kubernetes", spec.kubernetes.is_some(), "kubernetes"),
    ];
    for (name, set, needs) in sections {
        if set && t != needs {
            return Err(ConfigError::new(
                format!("spec.{name}"),
                format!("only valid with spec.type {needs} (spec.type is {t})"),
            ));
        }
    }
    let mount = DesiredMount {
        table: MountTable::Secrets,
        path: path.clone(),
        spec_type: t.to_string(),
        vault_type: vault_type.to_string(),
        options: options.as_object().cloned().unwrap_or_default(),
        tune: tune_fields(spec.description.as_ref(), spec.tune.as_ref())?,
    };
    let mut objects = vec![];
    let mut rotate_root = vec![];
    let mut ca = None;

    if let Some(kv) = &spec.kv {
        let o = DesiredObject::new(format!("{path}/config"))
            .opt("max_versions", kv.max_versions.map(|n| Want::Int(n.into())))
            .opt("cas_required", kv.cas_required.map(Want::Bool))
            .opt(
                "delete_version_after",
                secs(
                    "spec.kv.deleteVersionAfter",
                    kv.delete_version_after.as_ref(),
                )?,
            );
        if !o.fields.is_empty() {
            objects.push(o);
        }
    }

    if let Some(db) = &spec.database {
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in db.connections.iter().enumerate() {
            let f = |name: &str| format!("spec.database.connections[{i}].{name}");
            let name = c.name.trim();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(ConfigError::new(
                    f("name"),
                    format!("{name:?}: use letters, digits, '.', '_', '-'"),
                ));
            }
            if !names.insert(name.to_string()) {
                return Err(ConfigError::new(
                    f("name"),
                    format!("{name:?} is listed twice"),
                ));
            }
            if c.plugin.trim().is_empty() {
                return Err(ConfigError::new(f("plugin"), "must not be empty"));
            }
            if c.connection_url.trim().is_empty() {
                return Err(ConfigError::new(f("connectionURL"), "must not be empty"));
            }
            check_connection_url(&f("connectionURL"), &c.connection_url)?;
            if c.username.trim().is_empty() {
                return Err(ConfigError::new(f("username"), "must not be empty"));
            }
            if c.rotate_root_on_create && c.password_secret_ref.is_none() {
                return Err(ConfigError::new(
                    f("rotateRootOnCreate"),
                    "needs passwordSecretRef (the initial password Vault rotates away)",
                ));
            }
            let mut o = DesiredObject::new(format!("{path}/config/{name}"))
                .field("plugin_name", Want::Str(c.plugin.trim().to_string()));
            o.fields.push(crate::object::Field::at(
                "connection_url",
                "/connection_details/connection_url",
                Want::Str(c.connection_url.clone()),
            ));
            o.fields.push(crate::object::Field::at(
                "username",
                "/connection_details/username",
                Want::Str(c.username.clone()),
            ));
            o = o.set("allowed_roles", &c.allowed_roles);
            if let Some(n) = c.max_open_connections {
                o.fields.push(crate::object::Field::at(
                    "max_open_connections",
                    "/connection_details/max_open_connections",
                    Want::Int(n.into()),
                ));
            }
            if let Some(n) = c.max_idle_connections {
                o.fields.push(crate::object::Field::at(
                    "max_idle_connections",
                    "/connection_details/max_idle_connections",
                    Want::Int(n.into()),
                ));
            }
            if let Some(s) = secs(
                &f("maxConnectionLifetime"),
                c.max_connection_lifetime.as_ref(),
            )? {
                o.fields.push(crate::object::Field::at(
                    "max_connection_lifetime",
                    "/connection_details/max_connection_lifetime",
                    s,
                ));
            }
            o = o
                .opt("password_policy", c.password_policy.clone().map(Want::Str))
                .list("root_rotation_statements", &c.root_rotation_statements);
            if let Some(i) = o
                .fields
                .iter()
                .position(|f| f.key == "root_rotation_statements")
            {
                o.fields[i].read = "/root_credentials_rotate_statements".into();
            }
            o.write_only.insert(
                "verify_connection".into(),
                Value::Bool(c.verify_connection.unwrap_or(true)),
            );
            if let Some(r) = &c.password_secret_ref {
                o.secrets.push(SecretField {
                    key: "password".into(),
                    field: f("passwordSecretRef"),
                    secret_ref: r.clone(),
                });
            }
            o.secrets_on_create_only = c.rotate_root_on_create;
            if c.rotate_root_on_create {
                rotate_root.push(name.to_string());
            }
            objects.push(o);
        }
    }

    if let Some(pki) = &spec.pki {
        if let Some(c) = &pki.ca {
            if c.common_name.trim().is_empty() {
                return Err(ConfigError::new(
                    "spec.pki.ca.commonName",
                    "must not be empty",
                ));
            }
            let signed_by = match (c.type_, c.signed_by.as_deref().map(|s| s.trim_matches('/'))) {
                (PkiCaType::Root, None) => None,
                (PkiCaType::Root, Some(_)) => {
                    return Err(ConfigError::new(
                        "spec.pki.ca.signedBy",
                        "only valid for type Intermediate",
                    ))
                }
                (PkiCaType::Intermediate, None) | (PkiCaType::Intermediate, Some("")) => {
                    return Err(ConfigError::new(
                        "spec.pki.ca.signedBy",
                        "an Intermediate CA needs the path of the PKI mount holding its root",
                    ))
                }
                (PkiCaType::Intermediate, Some(s)) if s == path => {
                    return Err(ConfigError::new(
                        "spec.pki.ca.signedBy",
                        "must name another PKI mount, not this one",
                    ))
                }
                (PkiCaType::Intermediate, Some(s)) => Some(s.to_string()),
            };
            if let Some(k) = &c.key_type {
                if !matches!(k.as_str(), "rsa" | "ec" | "ed25519") {
                    return Err(ConfigError::new(
                        "spec.pki.ca.keyType",
                        format!("{k:?}: use rsa, ec or ed25519"),
                    ));
                }
            }
            let issuer_name = c.issuer_name.clone().unwrap_or_else(|| {
                match c.type_ {
                    PkiCaType::Root => "certus-root",
                    PkiCaType::Intermediate => "certus-intermediate",
                }
                .to_string()
            });
            let mut generate = Map::new();
            generate.insert("common_name".into(), json!(c.common_name));
            if let Some(k) = &c.key_type {
                generate.insert("key_type".into(), json!(k));
            }
            if let Some(b) = c.key_bits {
                generate.insert("key_bits".into(), json!(b));
            }
            if let Some(o) = &c.organization {
                generate.insert("organization".into(), json!(o));
            }
            let ttl = opt_seconds("spec.pki.ca.ttl", c.ttl.as_ref())?;
            let mut sign = Map::new();
            sign.insert("common_name".into(), json!(c.common_name));
            if let Some(t) = ttl {
                sign.insert("ttl".into(), json!(format!("{t}s")));
            }
            match c.type_ {
                PkiCaType::Root => {
                    generate.insert("issuer_name".into(), json!(issuer_name));
                    if let Some(t) = ttl {
                        generate.insert("ttl".into(), json!(format!("{t}s")));
                    }
                }
                PkiCaType::Intermediate => {
                    sign.insert("format".into(), json!("pem_bundle"));
                    if let Some(o) = &c.organization {
                        sign.insert("organization".into(), json!(o));
                    }
                }
            }
            ca = Some(DesiredCa {
                mount: path.clone(),
                issuer_name,
                ca_type: c.type_,
                signed_by,
                generate_body: generate,
                sign_body: sign,
            });
        }
        if let Some(u) = &pki.urls {
            objects.push(
                DesiredObject::new(format!("{path}/config/urls"))
                    .field(
                        "issuing_certificates",
                        Want::List(u.issuing_certificates.clone()),
                    )
                    .field(
                        "crl_distribution_points",
                        Want::List(u.crl_distribution_points.clone()),
                    )
                    .field("ocsp_servers", Want::List(u.ocsp_servers.clone())),
            );
        }
    }

    if let Some(aws) = &spec.aws {
        if aws.access_key_id.trim().is_empty() {
            return Err(ConfigError::new(
                "spec.aws.accessKeyId",
                "must not be empty",
            ));
        }
        let mut o = DesiredObject::new(format!("{path}/config/root"))
            .field(
                "access_key",
                Want::Str(aws.access_key_id.trim().to_string()),
            )
            .opt("region", aws.region.clone().map(Want::Str))
            .opt("iam_endpoint", aws.iam_endpoint.clone().map(Want::Str))
            .opt("sts_endpoint", aws.sts_endpoint.clone().map(Want::Str))
            .opt("max_retries", aws.max_retries.map(|n| Want::Int(n.into())));
        o.secrets.push(SecretField {
            key: "secret_key".into(),
            field: "spec.aws.secretAccessKeyRef".into(),
            secret_ref: aws.secret_access_key_ref.clone(),
        });
        objects.push(o);
    }

    if let Some(k) = &spec.kubernetes {
        let mut o = DesiredObject::new(format!("{path}/config"))
            .opt("kubernetes_host", k.kubernetes_host.clone().map(Want::Str))
            .opt(
                "kubernetes_ca_cert",
                k.kubernetes_ca_cert.clone().map(Want::Text),
            )
            .opt(
                "disable_local_ca_jwt",
                k.disable_local_ca_jwt.map(Want::Bool),
            );
        if let Some(r) = &k.service_account_jwt_secret_ref {
            o.secrets.push(SecretField {
                key: "service_account_jwt".into(),
                field: "spec.kubernetes.serviceAccountJWTSecretRef".into(),
                secret_ref: r.clone(),
            });
        }
        objects.push(o);
    }
    Ok(DesiredEngine {
        mount,
        objects,
        rotate_root,
        ca,
    })
}

/// Whether the answer of `LIST <mount>/issuers` (`None` = no issuer) has an issuer named
/// `name`.
pub fn issuer_exists(list: Option<&Value>, name: &str) -> bool {
    list.and_then(|v| v.pointer("/data/key_info").or_else(|| v.get("key_info")))
        .and_then(Value::as_object)
        .is_some_and(|m| {
            m.values()
                .any(|i| i.get("issuer_name").and_then(Value::as_str) == Some(name))
        })
}

/// Plans the CA: generated when no issuer of its name exists, never regenerated.
pub fn plan_ca(resource: &ResourceId, ca: &DesiredCa, exists: bool, drift: bool) -> Change {
    let (action, detail) = if exists {
        (Action::NoChange, None)
    } else {
        let cn = ca
            .generate_body
            .get("common_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let how = match (&ca.ca_type, &ca.signed_by) {
            (PkiCaType::Root, _) => "self-signed root".to_string(),
            (PkiCaType::Intermediate, Some(s)) => format!("intermediate signed by {s}/"),
            (PkiCaType::Intermediate, None) => "intermediate".to_string(),
        };
        (
            Action::Create,
            Some(format!(
                "+ generate {how} CA {cn:?} as issuer {:?}",
                ca.issuer_name
            )),
        )
    };
    Change {
        resource: resource.clone(),
        action,
        target: ca.generate_path(),
        drift: drift && action != Action::NoChange,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::{
        AwsEngineConfig, DatabaseConnection, DatabaseEngineConfig, DeletionPolicy, DriftPolicy,
        KvConfig, PkiCa, PkiEngineConfig, PkiUrls, SecretKeyRef,
    };

    pub(crate) fn engine(path: &str, t: &str) -> SecretEngineSpec {
        SecretEngineSpec {
            connection_ref: None,
            path: path.into(),
            type_: t.into(),
            description: None,
            tune: None,
            kv: None,
            database: None,
            pki: None,
            aws: None,
            kubernetes: None,
            deletion_policy: DeletionPolicy::Retain,
            drift_policy: DriftPolicy::Correct,
        }
    }

    fn pg(name: &str) -> DatabaseConnection {
        DatabaseConnection {
            name: name.into(),
            plugin: "postgresql-database-plugin".into(),
            connection_url: "postgresql://{{username}}:{{password}}@127.0.0.1:15432/certus".into(),
            username: "certus".into(),
            password_secret_ref: Some(SecretKeyRef {
                name: "pg".into(),
                key: "password".into(),
                namespace: None,
            }),
            allowed_roles: vec!["certus-ask".into()],
            verify_connection: None,
            rotate_root_on_create: false,
            max_open_connections: Some(4),
            max_idle_connections: None,
            max_connection_lifetime: Some("1m".into()),
            password_policy: None,
            root_rotation_statements: vec![],
        }
    }

    #[test]
    fn kv_v2_engine() {
        let d = desired(&SecretEngineSpec {
            kv: Some(KvConfig {
                max_versions: Some(5),
                cas_required: None,
                delete_version_after: Some("720h".into()),
            }),
            ..engine("certus", "kv-v2")
        })
        .unwrap();
        assert_eq!(d.mount.vault_type, "kv");
        assert_eq!(d.mount.options["version"], "2");
        assert_eq!(d.objects.len(), 1);
        assert_eq!(
            Value::Object(d.objects[0].body()),
            json!({"max_versions": 5, "delete_version_after": "2592000s"})
        );
        let v1 = desired(&engine("old", "kv")).unwrap();
        assert_eq!(v1.mount.options["version"], "1");
        assert!(v1.objects.is_empty());
    }

    #[test]
    fn database_connection_object() {
        let d = desired(&SecretEngineSpec {
            database: Some(DatabaseEngineConfig {
                connections: vec![pg("certus-postgres")],
            }),
            ..engine("database", "database")
        })
        .unwrap();
        let o = &d.objects[0];
        assert_eq!(o.path, "database/config/certus-postgres");
        assert_eq!(o.write_only["verify_connection"], true);
        assert_eq!(o.secrets[0].key, "password");
        let live = json!({"plugin_name": "postgresql-database-plugin", "allowed_roles": ["certus-ask"],
            "connection_details": {"connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:15432/certus",
            "username": "certus", "max_open_connections": 4, "max_connection_lifetime": "1m0s"}});
        assert!(o.diff(&live).is_empty(), "{:?}", o.diff(&live));
    }

    #[test]
    fn bad_database_specs_name_the_field() {
        let mut c = pg("x");
        c.connection_url = "postgresql://certus:hunter2@db/certus".into();
        let e = desired(&SecretEngineSpec {
            database: Some(DatabaseEngineConfig {
                connections: vec![c],
            }),
            ..engine("database", "database")
        })
        .unwrap_err();
        assert_eq!(e.field, "spec.database.connections[0].connectionURL");
        assert!(!e.to_string().contains("hunter2"));
        let e = desired(&SecretEngineSpec {
            database: Some(DatabaseEngineConfig {
                connections: vec![pg("a"), pg("a")],
            }),
            ..engine("database", "database")
        })
        .unwrap_err();
        assert_eq!(e.field, "spec.database.connections[1].name");
        let e = desired(&SecretEngineSpec {
            database: Some(DatabaseEngineConfig::default()),
            ..engine("kv", "kv-v2")
        })
        .unwrap_err();
        assert_eq!(e.field, "spec.database");
        let e = desired(&SecretEngineSpec {
            tune: Some(certus_api::MountTune {
                max_lease_ttl: Some("1y".into()),
                ..Default::default()
            }),
            ..engine("kv", "kv-v2")
        })
        .unwrap_err();
        assert_eq!(e.field, "spec.tune.maxLeaseTTL");
    }

    #[test]
    fn pki_ca_and_urls() {
        let d = desired(&SecretEngineSpec {
            pki: Some(PkiEngineConfig {
                ca: Some(PkiCa {
                    type_: PkiCaType::Root,
                    common_name: "Certus Root".into(),
                    ttl: Some("87600h".into()),
                    key_type: Some("ec".into()),
                    key_bits: Some(256),
                    organization: None,
                    issuer_name: None,
                    signed_by: None,
                }),
                urls: Some(PkiUrls {
                    issuing_certificates: vec!["http://v/v1/pki/ca".into()],
                    ..Default::default()
                }),
            }),
            ..engine("pki", "pki")
        })
        .unwrap();
        let ca = d.ca.as_ref().unwrap();
        assert_eq!(ca.generate_path(), "pki/root/generate/internal");
        assert_eq!(ca.generate_body["issuer_name"], "certus-root");
        assert_eq!(ca.generate_body["ttl"], "315360000s");
        let rid = ResourceId::new("SecretEngine", Some("ns"), "pki");
        assert_eq!(plan_ca(&rid, ca, false, false).action, Action::Create);
        assert_eq!(plan_ca(&rid, ca, true, true).action, Action::NoChange);
        let list =
            json!({"data": {"keys": ["id"], "key_info": {"id": {"issuer_name": "certus-root"}}}});
        assert!(issuer_exists(Some(&list), "certus-root"));
        assert!(!issuer_exists(Some(&list), "other"));
        assert!(!issuer_exists(None, "certus-root"));
        assert_eq!(d.objects[0].path, "pki/config/urls");
    }

    #[test]
    fn aws_root_config_request() {
        let d = desired(&SecretEngineSpec {
            aws: Some(AwsEngineConfig {
                access_key_id: "AKIAEXAMPLE".into(),
                secret_access_key_ref: SecretKeyRef {
                    name: "aws-root".into(),
                    key: "secret_access_key".into(),
                    namespace: None,
                },
                region: Some("us-west-2".into()),
                iam_endpoint: None,
                sts_endpoint: None,
                max_retries: None,
            }),
            ..engine("aws", "aws")
        })
        .unwrap();
        assert_eq!(d.mount.create_body()["type"], "aws");
        let o = &d.objects[0];
        assert_eq!(o.path, "aws/config/root");
        assert_eq!(
            Value::Object(o.body()),
            json!({"access_key": "AKIAEXAMPLE", "region": "us-west-2"})
        );
        assert_eq!(o.secrets[0].key, "secret_key");
        assert_eq!(o.secrets[0].field, "spec.aws.secretAccessKeyRef");
    }

    #[test]
    fn generic_types_pass_through() {
        let d = desired(&engine("transit", "transit")).unwrap();
        assert_eq!(
            d.mount.create_body(),
            json!({"type": "transit", "config": {}})
        );
        let d = desired(&engine("totp", "totp")).unwrap();
        assert!(d.objects.is_empty());
        let h1 = d.hash();
        let d2 = desired(&SecretEngineSpec {
            description: Some("x".into()),
            ..engine("totp", "totp")
        })
        .unwrap();
        assert_ne!(h1, d2.hash());
    }
}
