//! Generic desired state of one Vault object (a config endpoint or a role) and the
//! field-by-field comparison with what Vault returns.
//!
//! Only the fields the spec sets are compared (server-side defaults are ignored, so there
//! is no endless fight), each with a normalization: TTLs as seconds, lists of names as
//! sets, statements as ordered lists, PEM text without trailing whitespace, JSON
//! documents structurally. Secret fields (passwords, client secrets, JWTs) are never
//! returned by Vault: the core only knows where they come from; the reconcile layer
//! resolves them and records a hash of the written request (never the value).

use std::collections::BTreeMap;
use std::fmt;

use certus_api::SecretKeyRef;
use serde_json::{Map, Value};

use crate::change::{Action, Change, ResourceId};
use crate::hash::short_hash;
use crate::ttl::live_seconds;

/// Why a spec cannot be turned into Vault requests. Always names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The spec field, e.g. `spec.database.connections[0].connectionURL`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A desired value and how it is compared with Vault's.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// A string compared exactly.
    Str(String),
    /// Multi-line text (PEM, YAML) compared without trailing whitespace.
    Text(String),
    Bool(bool),
    Int(i64),
    /// A duration in seconds; Vault's integer or Go-duration answer is normalized.
    Seconds(u64),
    /// An unordered list of names (policies, domains, audiences); Vault may answer with
    /// an array or a comma-separated string.
    Set(Vec<String>),
    /// An ordered list (SQL statements).
    List(Vec<String>),
    /// A JSON document compared structurally (Vault may answer with it as a string).
    Json(Value),
}

impl Want {
    /// The JSON written to Vault. Durations are sent as `"<n>s"`, which every Vault
    /// duration field accepts (mount tuning only takes strings).
    pub fn to_json(&self) -> Value {
        match self {
            Want::Str(s) | Want::Text(s) => Value::String(s.clone()),
            Want::Bool(b) => Value::Bool(*b),
            Want::Int(i) => Value::from(*i),
            Want::Seconds(s) => Value::String(format!("{s}s")),
            Want::Set(v) | Want::List(v) => {
                Value::Array(v.iter().cloned().map(Value::String).collect())
            }
            Want::Json(v) => v.clone(),
        }
    }

    fn show(&self) -> String {
        match self {
            Want::Seconds(s) => format!("{s}s"),
            Want::Set(v) => {
                let mut v = v.clone();
                v.sort();
                v.dedup();
                format!("{v:?}")
            }
            Want::Text(s) | Want::Str(s) => summarize(s),
            other => summarize(&other.to_json().to_string()),
        }
    }

    /// Whether Vault's value (`None` = field absent) matches.
    pub fn matches(&self, live: Option<&Value>) -> bool {
        match self {
            Want::Str(s) => match live {
                None | Some(Value::Null) => s.is_empty(),
                Some(Value::String(l)) => l == s,
                Some(Value::Number(n)) => n.to_string() == *s,
                Some(Value::Bool(b)) => b.to_string() == *s,
                _ => false,
            },
            Want::Text(s) => match live {
                None | Some(Value::Null) => s.trim().is_empty(),
                Some(Value::String(l)) => l.trim_end() == s.trim_end(),
                _ => false,
            },
            Want::Bool(b) => match live {
                Some(Value::Bool(l)) => l == b,
                Some(Value::String(l)) => l == &b.to_string(),
                None | Some(Value::Null) => !b,
                _ => false,
            },
            Want::Int(i) => match live {
                Some(Value::Number(n)) => n.as_i64() == Some(*i),
                Some(Value::String(l)) => l.trim().parse::<i64>().ok() == Some(*i),
                None | Some(Value::Null) => *i == 0,
                _ => false,
            },
            Want::Seconds(s) => live_seconds(live) == Some(*s),
            Want::Set(v) => live_set(live).is_some_and(|l| l == norm_set(v)),
            Want::List(v) => live_list(live).is_some_and(|l| {
                l.len() == v.len() && l.iter().zip(v).all(|(a, b)| a.trim() == b.trim())
            }),
            Want::Json(want) => {
                let live = match live {
                    Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
                    Some(v) => Some(v.clone()),
                    None => Some(Value::Null),
                };
                match (live, want) {
                    (Some(Value::Null), Value::Object(m)) => m.is_empty(),
                    (Some(l), w) => l == *w,
                    (None, _) => false,
                }
            }
        }
    }
}

fn summarize(s: &str) -> String {
    let one_line = s.trim().replace('\n', "\\n");
    if one_line.chars().count() > 80 {
        let cut: String = one_line.chars().take(60).collect();
        format!("{cut}… ({} chars)", s.len())
    } else {
        one_line
    }
}

fn norm_set(v: &[String]) -> Vec<String> {
    let mut v: Vec<String> = v
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn live_set(live: Option<&Value>) -> Option<Vec<String>> {
    match live {
        None | Some(Value::Null) => Some(vec![]),
        Some(Value::String(s)) => Some(norm_set(
            &s.split(',').map(str::to_string).collect::<Vec<_>>(),
        )),
        Some(Value::Array(a)) => {
            let v: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(String::from)).collect();
            v.map(|v| norm_set(&v))
        }
        _ => None,
    }
}

fn live_list(live: Option<&Value>) -> Option<Vec<String>> {
    match live {
        None | Some(Value::Null) => Some(vec![]),
        Some(Value::String(s)) if s.is_empty() => Some(vec![]),
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
        _ => None,
    }
}

fn show_live(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => summarize(s),
        Some(v) => summarize(&v.to_string()),
    }
}

/// One managed field of a Vault object.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Key in the write request, e.g. `token_ttl`.
    pub key: String,
    /// JSON pointer into the read response's `data`, e.g. `/connection_details/username`.
    pub read: String,
    pub want: Want,
}

impl Field {
    /// A field read back under the same key it is written with.
    pub fn new(key: &str, want: Want) -> Self {
        Field {
            key: key.into(),
            read: format!("/{key}"),
            want,
        }
    }
    /// A field read back at another location.
    pub fn at(key: &str, read: &str, want: Want) -> Self {
        Field {
            key: key.into(),
            read: read.into(),
            want,
        }
    }
}

/// The value that puts a field back to Vault's default, for the fields where Vault
/// documents one: mount tuning (`description`, lease TTLs, audit keys), the token
/// settings every auth role shares (`token_*`: zero is "unset"), and the TTLs of
/// secrets-engine roles (0 is "the mount's default"). `None` when no neutral value is
/// known: such a field, once removed from the spec, is left in Vault as it is.
pub fn reset_value(key: &str) -> Option<Want> {
    match key {
        "description" => Some(Want::Str(String::new())),
        "default_lease_ttl"
        | "max_lease_ttl"
        | "token_ttl"
        | "token_max_ttl"
        | "token_explicit_max_ttl"
        | "token_period"
        | "default_ttl"
        | "max_ttl"
        | "ttl" => Some(Want::Seconds(0)),
        "audit_non_hmac_request_keys"
        | "audit_non_hmac_response_keys"
        | "token_policies"
        | "token_bound_cidrs" => Some(Want::Set(vec![])),
        "token_num_uses" => Some(Want::Int(0)),
        "token_no_default_policy" => Some(Want::Bool(false)),
        _ => None,
    }
}

/// The keys of `fields` (what a resource manages on one Vault object), sorted.
pub fn managed_keys(fields: &[Field]) -> Vec<String> {
    let mut keys: Vec<String> = fields.iter().map(|f| f.key.clone()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// For every key in `previously` (what the resource managed on this object at its last
/// successful reconcile) that `fields` no longer has, adds a field resetting it to
/// Vault's default ([`reset_value`]), read back at `read_of(key)`. Returns the removed
/// keys that have no known default (left in Vault as they are).
pub fn add_resets(
    fields: &mut Vec<Field>,
    previously: &[String],
    read_of: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut left = vec![];
    for key in previously {
        if fields.iter().any(|f| &f.key == key) {
            continue;
        }
        match reset_value(key) {
            Some(want) => fields.push(Field::at(key, &read_of(key), want)),
            None => left.push(key.clone()),
        }
    }
    left
}

/// A secret field of a request: where its value comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretField {
    /// Key in the write request, e.g. `password`.
    pub key: String,
    /// The spec field naming the Secret, for messages, e.g.
    /// `spec.database.connections[0].passwordSecretRef`.
    pub field: String,
    pub secret_ref: SecretKeyRef,
}

/// The desired state of one Vault object.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    /// The Vault path read and written, e.g. `database/config/pg`.
    pub path: String,
    /// Managed fields: compared and written.
    pub fields: Vec<Field>,
    /// Sent with every write but not compared (Vault does not return them), e.g.
    /// `verify_connection`.
    pub write_only: Map<String, Value>,
    /// Secret fields, resolved by the reconcile layer.
    pub secrets: Vec<SecretField>,
    /// Hash of the whole request including resolved secret values, set by the reconcile
    /// layer (`None` until then, or when there are no secrets).
    pub secret_hash: Option<String>,
    /// Secrets are sent only when the object is created (e.g. a database connection
    /// whose root password Vault rotates right after creation).
    pub secrets_on_create_only: bool,
}

impl DesiredObject {
    pub fn new(path: impl Into<String>) -> Self {
        DesiredObject {
            path: path.into(),
            fields: vec![],
            write_only: Map::new(),
            secrets: vec![],
            secret_hash: None,
            secrets_on_create_only: false,
        }
    }

    /// Adds a field.
    pub fn field(mut self, key: &str, want: Want) -> Self {
        self.fields.push(Field::new(key, want));
        self
    }

    /// Adds a field when the spec sets it.
    pub fn opt(mut self, key: &str, want: Option<Want>) -> Self {
        if let Some(w) = want {
            self.fields.push(Field::new(key, w));
        }
        self
    }

    /// Adds a set field when the spec's list is not empty.
    pub fn set(self, key: &str, v: &[String]) -> Self {
        let w = (!v.is_empty()).then(|| Want::Set(v.to_vec()));
        self.opt(key, w)
    }

    /// Adds an ordered-list field when the spec's list is not empty.
    pub fn list(self, key: &str, v: &[String]) -> Self {
        let w = (!v.is_empty()).then(|| Want::List(v.to_vec()));
        self.opt(key, w)
    }

    /// The request body without secret values.
    pub fn body(&self) -> Map<String, Value> {
        let mut m = self.write_only.clone();
        for f in &self.fields {
            m.insert(f.key.clone(), f.want.to_json());
        }
        m
    }

    /// Fields that differ from Vault's `data`, as `key: live → wanted` lines.
    pub fn diff(&self, live: &Value) -> Vec<String> {
        self.fields
            .iter()
            .filter_map(|f| {
                let l = live.pointer(&f.read);
                (!f.want.matches(l))
                    .then(|| format!("~ {}: {} → {}", f.key, show_live(l), f.want.show()))
            })
            .collect()
    }

    /// A stable description of the desired state (secret values excluded; their hash
    /// included), hashed into the resource's applied hash.
    pub fn fingerprint(&self) -> String {
        let mut m: BTreeMap<String, Value> = self.body().into_iter().collect();
        for s in &self.secrets {
            m.insert(
                s.key.clone(),
                Value::String(format!("secret:{}/{}", s.secret_ref.name, s.secret_ref.key)),
            );
        }
        format!(
            "{}={}#{}",
            self.path,
            serde_json::to_string(&m).unwrap_or_default(),
            self.secret_hash.as_deref().unwrap_or("")
        )
    }
}

/// Hash of a list of fingerprints: the resource's applied hash.
pub fn applied_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut all = String::new();
    for p in parts {
        all.push_str(p);
        all.push('\n');
    }
    short_hash(all.as_bytes())
}

/// Plans one object: `live` is the `data` Vault returned (`None` when absent),
/// `last_secret_hash` what status recorded for this path after the last write (`None`
/// when unknown: then a changed Secret cannot be noticed and is not reported).
/// `drift` says whether a difference counts as drift (the spec did not change since the
/// last write).
pub fn plan_object(
    resource: &ResourceId,
    obj: &DesiredObject,
    live: Option<&Value>,
    last_secret_hash: Option<&str>,
    drift: bool,
) -> Change {
    let mk = |action, drift, detail| Change {
        resource: resource.clone(),
        action,
        target: obj.path.clone(),
        drift,
        detail,
    };
    let Some(live) = live else {
        let mut lines: Vec<String> = obj
            .fields
            .iter()
            .map(|f| format!("+ {} = {}", f.key, f.want.show()))
            .collect();
        for s in &obj.secrets {
            lines.push(format!(
                "+ {} = (from Secret {} key {})",
                s.key, s.secret_ref.name, s.secret_ref.key
            ));
        }
        return mk(Action::Create, drift, Some(lines.join("\n")));
    };
    let mut lines = obj.diff(live);
    if !obj.secrets_on_create_only {
        if let (Some(last), Some(now)) = (last_secret_hash, obj.secret_hash.as_deref()) {
            if last != now {
                let keys: Vec<&str> = obj.secrets.iter().map(|s| s.key.as_str()).collect();
                lines.push(format!(
                    "~ {}: the request changed since the last write (Secret value or fields)",
                    keys.join(", ")
                ));
            }
        }
    }
    if lines.is_empty() {
        mk(Action::NoChange, false, None)
    } else {
        mk(Action::Update, drift, Some(lines.join("\n")))
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rid() -> ResourceId {
        ResourceId::new("VaultRole", Some("ns"), "r")
    }

    #[test]
    fn normalizations() {
        assert!(Want::Seconds(900).matches(Some(&json!(900))));
        assert!(Want::Seconds(900).matches(Some(&json!("15m0s"))));
        assert!(!Want::Seconds(900).matches(Some(&json!(3600))));
        assert!(Want::Set(vec!["b".into(), "a".into()]).matches(Some(&json!(["a", "b"]))));
        assert!(Want::Set(vec!["b".into(), "a".into()]).matches(Some(&json!("a,b"))));
        assert!(Want::Set(vec!["a".into(), "a".into()]).matches(Some(&json!(["a"]))));
        assert!(!Want::Set(vec!["a".into()]).matches(Some(&json!(["a", "b"]))));
        assert!(Want::List(vec!["x;".into(), "y;".into()]).matches(Some(&json!(["x;", "y;"]))));
        assert!(!Want::List(vec!["y;".into(), "x;".into()]).matches(Some(&json!(["x;", "y;"]))));
        assert!(Want::Text("PEM\n".into()).matches(Some(&json!("PEM"))));
        assert!(Want::Bool(false).matches(None));
        assert!(Want::Bool(true).matches(Some(&json!("true"))));
        assert!(Want::Int(3).matches(Some(&json!(3))));
        assert!(Want::Json(json!({"a": [1, 2]})).matches(Some(&json!("{\"a\":[1,2]}"))));
        assert!(Want::Json(json!({})).matches(Some(&Value::Null)));
        assert!(Want::Str("".into()).matches(None));
    }

    #[test]
    fn plan_create_nochange_update_and_secret_change() {
        let mut obj = DesiredObject::new("database/config/pg")
            .field(
                "plugin_name",
                Want::Str("postgresql-database-plugin".into()),
            )
            .set("allowed_roles", &["a".into(), "b".into()])
            .opt("missing", None);
        obj.fields.push(Field::at(
            "username",
            "/connection_details/username",
            Want::Str("certus".into()),
        ));
        obj.secrets.push(SecretField {
            key: "password".into(),
            field: "spec.x".into(),
            secret_ref: SecretKeyRef {
                name: "pg".into(),
                key: "password".into(),
                namespace: None,
            },
        });
        obj.secret_hash = Some("h1".into());
        let c = plan_object(&rid(), &obj, None, None, false);
        assert_eq!(c.action, Action::Create);
        let d = c.detail.unwrap();
        assert!(
            d.contains("+ password = (from Secret pg key password)"),
            "{d}"
        );
        let live = json!({"plugin_name": "postgresql-database-plugin", "allowed_roles": ["b", "a"],
            "connection_details": {"username": "certus"}, "server_default": 7});
        assert_eq!(
            plan_object(&rid(), &obj, Some(&live), Some("h1"), true).action,
            Action::NoChange
        );
        // An unknown last hash (CLI without state) is not a change.
        assert_eq!(
            plan_object(&rid(), &obj, Some(&live), None, true).action,
            Action::NoChange
        );
        let c = plan_object(&rid(), &obj, Some(&live), Some("h0"), false);
        assert_eq!(c.action, Action::Update);
        assert!(!c.detail.as_ref().unwrap().contains("h1"));
        obj.secrets_on_create_only = true;
        assert_eq!(
            plan_object(&rid(), &obj, Some(&live), Some("h0"), false).action,
            Action::NoChange
        );
        let edited = json!({"plugin_name": "postgresql-database-plugin", "allowed_roles": ["a"],
            "connection_details": {"username": "other"}});
        let c = plan_object(&rid(), &obj, Some(&edited), Some("h1"), true);
        assert_eq!((c.action, c.drift), (Action::Update, true));
        let d = c.detail.unwrap();
        assert!(
            d.contains("~ allowed_roles: [\"a\"] → [\"a\", \"b\"]"),
            "{d}"
        );
        assert!(d.contains("~ username: other → certus"), "{d}");
    }

    #[test]
    fn body_and_fingerprint_never_hold_secret_values() {
        let mut obj = DesiredObject::new("p").field("token_ttl", Want::Seconds(60));
        obj.secrets.push(SecretField {
            key: "password".into(),
            field: "f".into(),
            secret_ref: SecretKeyRef {
                name: "s".into(),
                key: "k".into(),
                namespace: None,
            },
        });
        assert_eq!(Value::Object(obj.body()), json!({"token_ttl": "60s"}));
        assert!(obj.fingerprint().contains("secret:s/k"));
        let a = applied_hash([obj.fingerprint().as_str()]);
        obj.secret_hash = Some("x".into());
        assert_ne!(a, applied_hash([obj.fingerprint().as_str()]));
    }

    #[test]
    fn removed_fields_are_reset_where_vault_has_a_default() {
        let mut fields = vec![Field::new(
            "bound_service_account_names",
            Want::Set(vec!["a".into()]),
        )];
        let previously: Vec<String> = [
            "bound_service_account_names",
            "token_ttl",
            "token_policies",
            "alias_name_source",
        ]
        .map(String::from)
        .to_vec();
        let left = add_resets(&mut fields, &previously, |k| format!("/{k}"));
        assert_eq!(left, ["alias_name_source"], "no known default: left as is");
        assert_eq!(fields.len(), 3);
        let ttl = fields.iter().find(|f| f.key == "token_ttl").unwrap();
        assert_eq!(ttl.want, Want::Seconds(0));
        assert!(ttl.want.matches(Some(&json!(0))));
        let pol = fields.iter().find(|f| f.key == "token_policies").unwrap();
        assert!(
            pol.want.matches(Some(&json!([]))),
            "reset list matches an empty answer"
        );
        assert_eq!(managed_keys(&fields[..1]), ["bound_service_account_names"]);
        // Tuning reads the mount table.
        let mut tune = vec![];
        add_resets(&mut tune, &["max_lease_ttl".to_string()], |k| {
            format!("/config/{k}")
        });
        assert_eq!(tune[0].read, "/config/max_lease_ttl");
        assert_eq!(tune[0].want.to_json(), json!("0s"));
    }
}
