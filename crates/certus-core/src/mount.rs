//! Mounts (secrets engines under `sys/mounts`, auth methods under `sys/auth`): the
//! desired mount, the type check that refuses a remount, and tuning drift.

use certus_api::MountTune;
use serde_json::{json, Map, Value};

use crate::change::{Action, Change, ResourceId};
use crate::object::{ConfigError, Field, Want};
use crate::ttl::opt_seconds;

/// Which mount table a mount lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountTable {
    /// `sys/mounts` (secrets engines).
    Secrets,
    /// `sys/auth` (auth methods).
    Auth,
}

impl MountTable {
    /// `sys/mounts` or `sys/auth`.
    pub fn sys_path(self) -> &'static str {
        match self {
            MountTable::Secrets => "sys/mounts",
            MountTable::Auth => "sys/auth",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            MountTable::Secrets => "secrets engine",
            MountTable::Auth => "auth method",
        }
    }
}

/// The desired mount.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredMount {
    pub table: MountTable,
    /// Path without slashes, e.g. `certus`.
    pub path: String,
    /// The type as the spec names it (`kv-v2`, `kv`, `database`, …).
    pub spec_type: String,
    /// The plugin type sent to Vault (`kv` for both KV versions).
    pub vault_type: String,
    /// Mount options sent at creation (`version` for KV).
    pub options: Map<String, Value>,
    /// Tuning fields, read from the mount table entry (`/description`,
    /// `/config/default_lease_ttl`, …) and written to `<table>/<path>/tune`.
    pub tune: Vec<Field>,
}

impl DesiredMount {
    /// `sys/mounts/<path>` or `sys/auth/<path>`.
    pub fn target(&self) -> String {
        format!("{}/{}", self.table.sys_path(), self.path)
    }

    /// The body that enables the mount.
    pub fn create_body(&self) -> Value {
        let mut config = Map::new();
        let mut description = None;
        for f in &self.tune {
            if f.key == "description" {
                description = Some(f.want.to_json());
            } else {
                config.insert(f.key.clone(), f.want.to_json());
            }
        }
        let mut body = json!({ "type": self.vault_type, "config": config });
        if let Some(d) = description {
            body["description"] = d;
        }
        if !self.options.is_empty() {
            body["options"] = Value::Object(self.options.clone());
        }
        body
    }

    /// The body of `<table>/<path>/tune`.
    pub fn tune_body(&self) -> Value {
        let mut m = Map::new();
        for f in &self.tune {
            m.insert(f.key.clone(), f.want.to_json());
        }
        Value::Object(m)
    }

    /// The fingerprint hashed into the resource's applied hash.
    pub fn fingerprint(&self) -> String {
        format!("{}={}", self.target(), self.create_body())
    }
}

/// Validates a mount path (repeats the CRD checks for manifests read by the CLI).
pub fn validate_path(table: MountTable, path: &str) -> Result<String, ConfigError> {
    let p = path.trim_matches('/');
    let reserved: &[&str] = match table {
        MountTable::Secrets => &["sys", "auth", "cubbyhole", "identity", "token"],
        MountTable::Auth => &["token"],
    };
    if p.is_empty() {
        return Err(ConfigError::new("spec.path", "must not be empty"));
    }
    if reserved.contains(&p) || p.starts_with("sys/") || p.starts_with("auth/") {
        return Err(ConfigError::new(
            "spec.path",
            format!("{p:?} is reserved by Vault ({})", reserved.join(", ")),
        ));
    }
    let ok = p.split('/').all(|seg| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }) && p.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(ConfigError::new(
            "spec.path",
            format!("{p:?}: use letters, digits, '.', '_', '-' and '/' between segments"),
        ));
    }
    Ok(p.to_string())
}

/// Validates a mount type name.
pub fn validate_type(t: &str) -> Result<(), ConfigError> {
    let ok = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "spec.type",
            format!("{t:?} is not a plugin type (lower-case letters, digits, '-', '_')"),
        ))
    }
}

/// Tuning fields from the spec's `tune` and `description`.
pub fn tune_fields(
    description: Option<&String>,
    tune: Option<&MountTune>,
) -> Result<Vec<Field>, ConfigError> {
    let mut out = vec![];
    if let Some(d) = description {
        out.push(Field::new("description", Want::Str(d.clone())));
    }
    if let Some(t) = tune {
        if let Some(s) = opt_seconds("spec.tune.defaultLeaseTTL", t.default_lease_ttl.as_ref())? {
            out.push(Field::at(
                "default_lease_ttl",
                "/config/default_lease_ttl",
                Want::Seconds(s),
            ));
        }
        if let Some(s) = opt_seconds("spec.tune.maxLeaseTTL", t.max_lease_ttl.as_ref())? {
            out.push(Field::at(
                "max_lease_ttl",
                "/config/max_lease_ttl",
                Want::Seconds(s),
            ));
        }
        if let (Some(d), Some(m)) = (&t.default_lease_ttl, &t.max_lease_ttl) {
            let (d, m) = (
                opt_seconds("", Some(d))?.unwrap_or(0),
                opt_seconds("", Some(m))?.unwrap_or(0),
            );
            if m > 0 && d > m {
                return Err(ConfigError::new(
                    "spec.tune.defaultLeaseTTL",
                    "must not exceed spec.tune.maxLeaseTTL",
                ));
            }
        }
        if !t.audit_non_hmac_request_keys.is_empty() {
            out.push(Field::at(
                "audit_non_hmac_request_keys",
                "/config/audit_non_hmac_request_keys",
                Want::Set(t.audit_non_hmac_request_keys.clone()),
            ));
        }
        if !t.audit_non_hmac_response_keys.is_empty() {
            out.push(Field::at(
                "audit_non_hmac_response_keys",
                "/config/audit_non_hmac_response_keys",
                Want::Set(t.audit_non_hmac_response_keys.clone()),
            ));
        }
    }
    Ok(out)
}

/// The type a mount-table entry has, in spec terms (`kv` with option version 2 is
/// `kv-v2`).
pub fn live_type(entry: &Value) -> String {
    let t = entry.get("type").and_then(Value::as_str).unwrap_or("");
    let version = entry
        .pointer("/options/version")
        .and_then(Value::as_str)
        .unwrap_or("");
    match (t, version) {
        ("kv", "2") => "kv-v2".into(),
        ("generic", _) => "kv".into(),
        (t, _) => t.to_string(),
    }
}

/// Finds a mount's entry in the answer of `GET sys/mounts` / `GET sys/auth` (keys end
/// with `/`; newer servers nest them under `data`).
pub fn find_entry<'a>(table: &'a Value, path: &str) -> Option<&'a Value> {
    let key = format!("{}/", path.trim_matches('/'));
    table
        .get("data")
        .and_then(|d| d.get(&key))
        .or_else(|| table.get(&key))
}

/// The types a spec type accepts in Vault.
fn types_match(spec_type: &str, live: &str) -> bool {
    spec_type == live || (spec_type == "kv-v1" && live == "kv")
}

/// Plans a mount against its mount-table entry. Returns `Err(message)` when the path
/// is mounted with another type: nothing may be written (a remount destroys data).
pub fn plan_mount(
    resource: &ResourceId,
    m: &DesiredMount,
    entry: Option<&Value>,
    drift: bool,
) -> Result<Change, String> {
    let target = m.target();
    let mk = |action, drift, detail| Change {
        resource: resource.clone(),
        action,
        target: target.clone(),
        drift,
        detail,
    };
    let Some(entry) = entry else {
        let mut lines = vec![format!("+ type = {}", m.spec_type)];
        lines.extend(m.tune.iter().map(|f| format!("+ {} = {}", f.key, f.want)));
        return Ok(mk(Action::Create, drift, Some(lines.join("\n"))));
    };
    let live = live_type(entry);
    if !types_match(&m.spec_type, &live) {
        return Err(format!(
            "{}/{}/ is already mounted as a {live} {}, not {}: changing the type would unmount it and destroy its data, so nothing was written. Restore spec.type: {live}, or use another spec.path",
            m.table.sys_path(),
            m.path,
            m.table.noun(),
            m.spec_type
        ));
    }
    let lines: Vec<String> = m
        .tune
        .iter()
        .filter_map(|f| {
            let l = entry.pointer(&f.read);
            (!f.want.matches(l)).then(|| {
                format!(
                    "~ {}: {} → {}",
                    f.key,
                    l.map(|v| v.to_string())
                        .unwrap_or_else(|| "(absent)".into()),
                    f.want
                )
            })
        })
        .collect();
    if lines.is_empty() {
        Ok(mk(Action::NoChange, false, None))
    } else {
        Ok(Change {
            target: format!("{target}/tune"),
            ..mk(Action::Update, drift, Some(lines.join("\n")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid() -> ResourceId {
        ResourceId::new("SecretEngine", Some("ns"), "e")
    }

    fn kv2() -> DesiredMount {
        DesiredMount {
            table: MountTable::Secrets,
            path: "certus".into(),
            spec_type: "kv-v2".into(),
            vault_type: "kv".into(),
            options: [("version".to_string(), json!("2"))].into_iter().collect(),
            tune: tune_fields(
                Some(&"static".to_string()),
                Some(&MountTune {
                    default_lease_ttl: Some("1h".into()),
                    max_lease_ttl: Some("24h".into()),
                    ..Default::default()
                }),
            )
            .unwrap(),
        }
    }

    #[test]
    fn create_body_has_type_options_and_string_ttls() {
        assert_eq!(
            kv2().create_body(),
            json!({"type": "kv", "description": "static", "options": {"version": "2"},
                   "config": {"default_lease_ttl": "3600s", "max_lease_ttl": "86400s"}})
        );
    }

    #[test]
    fn plan_mount_cases() {
        let m = kv2();
        assert_eq!(
            plan_mount(&rid(), &m, None, false).unwrap().action,
            Action::Create
        );
        let same = json!({"type": "kv", "options": {"version": "2"}, "description": "static",
            "config": {"default_lease_ttl": 3600, "max_lease_ttl": 86400, "force_no_cache": false}});
        assert_eq!(
            plan_mount(&rid(), &m, Some(&same), true).unwrap().action,
            Action::NoChange
        );
        let mut tuned = same.clone();
        tuned["config"]["max_lease_ttl"] = json!(7200);
        let c = plan_mount(&rid(), &m, Some(&tuned), true).unwrap();
        assert_eq!((c.action, c.drift), (Action::Update, true));
        assert_eq!(c.target, "sys/mounts/certus/tune");
        assert!(c.detail.unwrap().contains("max_lease_ttl: 7200 → 86400s"));
        let v1 = json!({"type": "kv", "options": {}});
        let e = plan_mount(&rid(), &m, Some(&v1), false).unwrap_err();
        assert!(
            e.contains("already mounted as a kv secrets engine, not kv-v2"),
            "{e}"
        );
        let db = json!({"type": "database"});
        assert!(plan_mount(&rid(), &m, Some(&db), false).is_err());
    }

    #[test]
    fn entries_and_types() {
        let table = json!({"data": {"certus/": {"type": "kv", "options": {"version": "2"}}}});
        assert_eq!(live_type(find_entry(&table, "/certus/").unwrap()), "kv-v2");
        assert!(find_entry(&table, "cert").is_none());
        assert_eq!(live_type(&json!({"type": "kv", "options": null})), "kv");
    }

    #[test]
    fn path_validation() {
        assert_eq!(
            validate_path(MountTable::Secrets, "/team/kv/").unwrap(),
            "team/kv"
        );
        assert!(validate_path(MountTable::Secrets, "sys")
            .unwrap_err()
            .to_string()
            .starts_with("spec.path: "));
        assert!(validate_path(MountTable::Secrets, "a//b").is_err());
        assert!(validate_path(MountTable::Auth, "token").is_err());
        assert!(validate_type("Kv").is_err());
        let e = tune_fields(
            None,
            Some(&MountTune {
                default_lease_ttl: Some("48h".into()),
                max_lease_ttl: Some("24h".into()),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.tune.defaultLeaseTTL");
    }
}
