//! The StaticSecret pipeline: KV secret → Kubernetes Secret.
//!
//! KV v2: one metadata read (`<mount>/metadata/<path>`) per refresh. The data
//! (`<mount>/data/<path>`) is read only when the current (or pinned) version differs from
//! the one the Secret was written from, or the Secret is missing, was edited (its data no
//! longer matches the data-hash annotation) or was written for another spec.
//! KV v1 has no metadata: the data is read on every refresh and the Secret written only
//! when its content changed. Workloads are restarted only when the data changed.

use std::collections::BTreeMap;
use std::time::Duration;

use certus_api::{
    annotations, static_secret_annotations as ann, SecretTarget, StaticSecret, StaticSecretSpec,
};
use certus_core::{Action, Change, ResourceId};
use certus_vault_client::VaultSession;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::ReconcileError;
use crate::sink::{data_hash, LiveSecret, Owner, Restarter, SecretDraft, SecretStore};
use crate::Mode;

/// Label put on every Secret the operator projects.
pub const MANAGED_BY_LABEL: (&str, &str) =
    ("app.kubernetes.io/managed-by", "certus-vault-operator");

/// What the previous reconcile remembered (the operator's status; the CLI passes the
/// default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StaticLast {
    pub synced_version: Option<u64>,
    pub data_hash: Option<String>,
}

impl From<&certus_api::StaticSecretStatus> for StaticLast {
    fn from(s: &certus_api::StaticSecretStatus) -> Self {
        StaticLast {
            synced_version: s.synced_version,
            data_hash: s.data_hash.clone(),
        }
    }
}

/// The result of one StaticSecret reconcile.
#[derive(Clone, Debug)]
pub struct StaticOutcome {
    pub change: Change,
    /// The Secret was written (apply mode).
    pub written: bool,
    /// The Secret's data differs from what it held before (restarts follow this).
    pub data_changed: bool,
    /// Whether the KV data was read (false when the metadata showed nothing new).
    pub full_read: bool,
    /// Workloads restarted, `Kind/name`.
    pub restarted: Vec<String>,
    /// The KV v2 version the Secret holds (`None` for KV v1).
    pub synced_version: Option<u64>,
    /// Hash of the Secret's data.
    pub data_hash: String,
    pub secret_name: String,
    /// `<mount>/<path>`.
    pub source: String,
    /// When to check again.
    pub requeue: Duration,
}

/// The resource id used in plan output.
pub fn resource_id(s: &StaticSecret) -> ResourceId {
    ResourceId::new(
        "StaticSecret",
        Some(&ns_of(&s.metadata.namespace)),
        &s.metadata.name.clone().unwrap_or_default(),
    )
}

pub(crate) fn ns_of(namespace: &Option<String>) -> String {
    namespace.clone().unwrap_or_else(|| "default".into())
}

/// Hash of the parts of a spec that shape the Secret.
pub fn spec_hash(spec: &StaticSecretSpec) -> String {
    let v = serde_json::json!({
        "mount": spec.mount, "path": spec.path, "kv": spec.kv_version,
        "version": spec.version, "secret": spec.secret,
    });
    certus_core::hash::short_hash(v.to_string().as_bytes())
}

/// Whether `k` may be a Secret data key.
pub fn valid_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a SecretTarget's templates and keys (pure).
pub fn check_target(t: &SecretTarget, field: &str) -> Result<(), ReconcileError> {
    for (k, tpl) in &t.data {
        if !valid_secret_key(k) {
            return Err(ReconcileError::Invalid(format!(
                "{field}.data: {k:?} is not a valid Secret key (letters, digits, '-', '_', '.')"
            )));
        }
        certus_core::template::check(tpl)
            .map_err(|e| ReconcileError::Invalid(format!("{field}.data[{k}]: {e}")))?;
    }
    Ok(())
}

/// Renders a SecretTarget over a Vault response's `data` object: its templates, or
/// every field when it has none.
pub fn render_target(
    t: &SecretTarget,
    data: &Value,
    field: &str,
) -> Result<BTreeMap<String, Vec<u8>>, ReconcileError> {
    let fields = certus_core::template::fields_of(data);
    let mut out = BTreeMap::new();
    if t.data.is_empty() {
        for (k, v) in fields {
            if !valid_secret_key(&k) {
                return Err(ReconcileError::Invalid(format!(
                    "the Vault data has key {k:?}, which is not a valid Secret key: select and rename keys with {field}.data"
                )));
            }
            out.insert(k, v.into_bytes());
        }
    } else {
        for (k, tpl) in &t.data {
            let v = certus_core::template::render(tpl, &fields)
                .map_err(|e| ReconcileError::Invalid(format!("{field}.data[{k}]: {e}")))?;
            out.insert(k.clone(), v.into_bytes());
        }
    }
    Ok(out)
}

/// Builds the Secret draft for a target: its labels and annotations, ours on top.
pub fn draft(
    t: &SecretTarget,
    namespace: &str,
    default_name: &str,
    data: BTreeMap<String, Vec<u8>>,
    extra_annotations: BTreeMap<String, String>,
    owner: Option<Owner>,
) -> SecretDraft {
    let mut labels = t.labels.clone();
    labels.insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
    let mut annotations_out = t.annotations.clone();
    annotations_out.insert(annotations::DATA_HASH.into(), data_hash(&data));
    annotations_out.extend(extra_annotations);
    SecretDraft {
        namespace: namespace.to_string(),
        name: t.name.clone().unwrap_or_else(|| default_name.to_string()),
        type_: t.type_.clone().unwrap_or_else(|| "Opaque".into()),
        labels,
        annotations: annotations_out,
        data,
        owner,
    }
}

/// Whether the live Secret still holds exactly what the operator wrote (its data
/// matches its data-hash annotation).
pub fn untouched(live: &LiveSecret) -> bool {
    live.annotations.get(annotations::DATA_HASH) == Some(&data_hash(&live.data))
}

fn kv_paths(spec: &StaticSecretSpec) -> (String, String) {
    let mount = spec.mount.trim_matches('/');
    let path = spec.path.trim_matches('/');
    (mount.to_string(), path.to_string())
}

/// Pure validation.
pub fn validate(spec: &StaticSecretSpec) -> Result<Duration, ReconcileError> {
    let refresh = spec.refresh().map_err(ReconcileError::Invalid)?;
    if !matches!(spec.kv_version, 1 | 2) {
        return Err(ReconcileError::Invalid(format!(
            "spec.kvVersion: {} is not 1 or 2",
            spec.kv_version
        )));
    }
    if spec.version.is_some() && spec.kv_version != 2 {
        return Err(ReconcileError::Invalid(
            "spec.version pins a KV v2 version; KV v1 has no versions".into(),
        ));
    }
    if spec.mount.trim_matches('/').is_empty() || spec.path.trim_matches('/').is_empty() {
        return Err(ReconcileError::Invalid(
            "spec.mount and spec.path must not be empty".into(),
        ));
    }
    check_target(&spec.secret, "spec.secret")?;
    Ok(refresh)
}

/// Reconciles one StaticSecret: reads Vault as cheaply as possible, writes the Secret
/// when it differs, restarts the rollout targets when the data changed.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile<S: SecretStore, R: Restarter>(
    vault: &VaultSession,
    s: &StaticSecret,
    last: &StaticLast,
    store: &S,
    restarter: &R,
    mode: Mode,
    now: DateTime<Utc>,
) -> Result<StaticOutcome, ReconcileError> {
    let spec = &s.spec;
    let refresh = validate(spec)?;
    let id = resource_id(s);
    let ns = ns_of(&s.metadata.namespace);
    let name = s.metadata.name.clone().unwrap_or_default();
    let secret_name = spec.secret.name.clone().unwrap_or_else(|| name.clone());
    let (mount, path) = kv_paths(spec);
    let source = spec.source();
    let shash = spec_hash(spec);
    let live = store.get(&ns, &secret_name).await?;

    let live_current = |version: Option<u64>| -> bool {
        live.as_ref().is_some_and(|l| {
            untouched(l)
                && l.annotations.get(annotations::SPEC_HASH) == Some(&shash)
                && l.annotations.get(ann::SYNCED_VERSION).cloned() == version.map(|v| v.to_string())
        })
    };

    // KV v2: which version should the Secret hold?
    let mut target_version = None;
    if spec.kv_version == 2 {
        let v = match spec.version {
            Some(pin) => pin,
            None => {
                let meta = vault.read(&format!("{mount}/metadata/{path}")).await?;
                let Some(meta) = meta.and_then(|m| m.get("data").cloned()) else {
                    return Err(ReconcileError::Dependency(format!(
                        "KV secret {source} does not exist (yet)"
                    )));
                };
                let m = certus_core::rotation::KvMetadata::from_json(&meta);
                if !m.exists() {
                    return Err(ReconcileError::Dependency(format!(
                        "KV secret {source}: the current version {} is deleted or destroyed",
                        m.current_version
                    )));
                }
                m.current_version
            }
        };
        target_version = Some(v);
        if live_current(target_version) {
            let hash = data_hash(&live.as_ref().expect("checked").data);
            return Ok(StaticOutcome {
                change: Change {
                    resource: id,
                    action: Action::NoChange,
                    target: format!("Secret {ns}/{secret_name}"),
                    drift: false,
                    detail: Some(format!("{source} version {v}")),
                },
                written: false,
                data_changed: false,
                full_read: false,
                restarted: vec![],
                synced_version: target_version,
                data_hash: hash,
                secret_name,
                source,
                requeue: refresh,
            });
        }
    }

    // Full read.
    let data = match target_version {
        Some(v) => {
            let r = vault
                .read(&format!("{mount}/data/{path}?version={v}"))
                .await?;
            match r
                .as_ref()
                .and_then(|r| r.pointer("/data/data"))
                .filter(|d| d.is_object())
            {
                Some(d) => d.clone(),
                None => {
                    return Err(ReconcileError::Dependency(format!(
                        "KV secret {source} version {v} does not exist or is deleted"
                    )))
                }
            }
        }
        None => {
            let r = vault.read(&format!("{mount}/{path}")).await?;
            match r
                .as_ref()
                .and_then(|r| r.get("data"))
                .filter(|d| d.is_object())
            {
                Some(d) => d.clone(),
                None => {
                    return Err(ReconcileError::Dependency(format!(
                        "KV secret {source} does not exist (yet)"
                    )))
                }
            }
        }
    };
    let rendered = render_target(&spec.secret, &data, "spec.secret")?;
    let new_hash = data_hash(&rendered);
    let mut extra = BTreeMap::from([
        (annotations::SPEC_HASH.to_string(), shash.clone()),
        (ann::SOURCE.to_string(), source.clone()),
    ]);
    if let Some(v) = target_version {
        extra.insert(ann::SYNCED_VERSION.into(), v.to_string());
    }
    let owner = Owner {
        api_version: certus_api::API_VERSION.into(),
        kind: "StaticSecret".into(),
        name: name.clone(),
        uid: s.metadata.uid.clone().unwrap_or_default(),
    };
    let d = draft(&spec.secret, &ns, &name, rendered, extra, Some(owner));
    // The data the workloads saw before: the status' hash, else the live Secret's
    // annotation. A first sync restarts nothing (pods start with the Secret).
    let before = last.data_hash.clone().or_else(|| {
        live.as_ref()
            .and_then(|l| l.annotations.get(annotations::DATA_HASH).cloned())
    });
    let data_changed = before.as_ref().is_some_and(|b| *b != new_hash);
    let same_as_live = live.as_ref().is_some_and(|l| {
        l.data == d.data
            && l.type_ == d.type_
            && l.labels == d.labels
            && l.annotations == d.annotations
    });
    let action = match (&live, same_as_live) {
        (_, true) => Action::NoChange,
        (None, _) => Action::Create,
        (Some(_), false) => Action::Update,
    };
    let drift = live.as_ref().is_some_and(|l| !untouched(l));
    let detail = match target_version {
        Some(v) => format!(
            "{source} version {v}{}",
            if data_changed { " (data changed)" } else { "" }
        ),
        None => format!(
            "{source} (KV v1){}",
            if data_changed { " (data changed)" } else { "" }
        ),
    };
    let mut written = false;
    let mut restarted = vec![];
    if mode == Mode::Apply && action != Action::NoChange {
        store.apply(&d).await?;
        written = true;
    }
    if mode == Mode::Apply && data_changed && !spec.rollout_restart_targets.is_empty() {
        restarted = restarter
            .restart(
                &ns,
                &spec.rollout_restart_targets,
                &now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .await?;
    }
    Ok(StaticOutcome {
        change: Change {
            resource: id,
            action,
            target: format!("Secret {ns}/{}", d.name),
            drift,
            detail: Some(detail),
        },
        written,
        data_changed,
        full_read: true,
        restarted,
        synced_version: target_version,
        data_hash: new_hash,
        secret_name: d.name,
        source,
        requeue: refresh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(data: &[(&str, &str)]) -> SecretTarget {
        SecretTarget {
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn renders_all_keys_or_templates() {
        let data = serde_json::json!({"api_key": "sk-1", "org": "o", "n": 3});
        let all = render_target(&SecretTarget::default(), &data, "spec.secret").unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["api_key", "n", "org"]);
        assert_eq!(all["n"], b"3");
        let t = render_target(
            &target(&[
                ("OPENAI_API_KEY", "{{ api_key }}"),
                ("URL", "https://x/{{ org | urlquery }}"),
            ]),
            &data,
            "spec.secret",
        )
        .unwrap();
        assert_eq!(t["OPENAI_API_KEY"], b"sk-1");
        assert_eq!(t.len(), 2);
        let err = render_target(&target(&[("K", "{{ nope }}")]), &data, "spec.secret").unwrap_err();
        assert!(matches!(err, ReconcileError::Invalid(_)));
        assert!(
            !err.to_string().contains("sk-1"),
            "errors never carry values"
        );
        let bad = render_target(
            &SecretTarget::default(),
            &serde_json::json!({"a b": "x"}),
            "spec.secret",
        )
        .unwrap_err();
        assert!(bad.to_string().contains("not a valid Secret key"));
    }

    #[test]
    fn validation_is_pure_and_explains() {
        let spec: StaticSecretSpec = serde_json::from_value(
            serde_json::json!({"mount": "kv", "path": "p", "kvVersion": 1, "version": 2}),
        )
        .unwrap();
        assert!(validate(&spec).unwrap_err().to_string().contains("KV v1"));
        let spec: StaticSecretSpec = serde_json::from_value(
            serde_json::json!({"mount": "kv", "path": "p", "secret": {"data": {"bad key": "x"}}}),
        )
        .unwrap();
        assert!(validate(&spec).is_err());
        let spec: StaticSecretSpec = serde_json::from_value(serde_json::json!({"mount": "kv", "path": "p", "refreshInterval": "10s", "secret": {"data": {"k": "{{ a | nope }}"}}})).unwrap();
        assert!(validate(&spec).unwrap_err().to_string().contains("nope"));
        let spec: StaticSecretSpec = serde_json::from_value(
            serde_json::json!({"mount": "kv", "path": "p", "refreshInterval": "10s"}),
        )
        .unwrap();
        assert_eq!(validate(&spec).unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn spec_hash_follows_the_shape() {
        let a: StaticSecretSpec =
            serde_json::from_value(serde_json::json!({"mount": "kv", "path": "p"})).unwrap();
        let mut b = a.clone();
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.refresh_interval = Some("5m".into());
        assert_eq!(
            spec_hash(&a),
            spec_hash(&b),
            "the refresh interval does not shape the Secret"
        );
        b.secret.data.insert("X".into(), "{{ y }}".into());
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }

    #[test]
    fn untouched_detects_edits() {
        let mut data = BTreeMap::new();
        data.insert("k".to_string(), b"v".to_vec());
        let mut live = LiveSecret {
            data: data.clone(),
            ..Default::default()
        };
        live.annotations
            .insert(annotations::DATA_HASH.into(), data_hash(&data));
        assert!(untouched(&live));
        live.data.insert("k".into(), b"edited".to_vec());
        assert!(!untouched(&live));
    }
}
