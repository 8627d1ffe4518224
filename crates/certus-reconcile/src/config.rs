//! Shared steps of the SecretEngine, AuthMethod and VaultRole pipelines: resolving
//! secret fields, reading and writing one Vault object, and the outcome they report.

use std::collections::BTreeMap;

use certus_api::{
    condition_types, reasons, set_condition, Condition, ConditionStatus, SecretKeyRef,
    VaultObjectStatus,
};
use certus_core::hash::short_hash;
use certus_core::object::{plan_object, DesiredObject};
use certus_core::{Action, Change, ResourceId};
use certus_vault_client::{SecretString, VaultSession};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::connection::Resolver;
use crate::error::ReconcileError;
use crate::Mode;

/// What status remembered after the last successful reconcile. The operator builds it
/// from the resource's status; the CLI from its state (or `default()`: then drift cannot
/// be told from a spec change, and a changed Secret behind a write-only field is not
/// noticed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastApplied {
    /// `status.appliedHash`.
    pub applied_hash: Option<String>,
    /// `status.secretHashes`.
    pub secret_hashes: BTreeMap<String, String>,
    /// `status.vaultPath`: where the object was last written (a VaultRole whose mount
    /// changed removes its old role there when `deletionPolicy: Delete`).
    pub vault_path: Option<String>,
    /// `status.ownedFields`: Vault path → the fields set at the last successful
    /// reconcile (a field since removed from the spec is reset where Vault has a default).
    pub managed: BTreeMap<String, Vec<String>>,
}

impl LastApplied {
    /// What was managed on `path` last time.
    pub fn managed_on(&self, path: &str) -> &[String] {
        self.managed.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Reads the remembered hashes from a status.
    pub fn from_status(status: Option<&VaultObjectStatus>) -> Self {
        status
            .map(|s| LastApplied {
                applied_hash: s.applied_hash.clone(),
                secret_hashes: s.secret_hashes.clone(),
                vault_path: s.vault_path.clone(),
                managed: s.owned_fields.clone(),
            })
            .unwrap_or_default()
    }
}

/// An AppRole role id to publish into a Kubernetes Secret (key `role_id`).
#[derive(Clone, PartialEq, Eq)]
pub struct RoleIdOutput {
    /// Name of the Secret (the resource's namespace).
    pub secret_name: String,
    /// The role id. An identifier, not a credential, but half of a login: write it only
    /// to the named Secret and never log it.
    pub role_id: String,
}

impl std::fmt::Debug for RoleIdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RoleIdOutput {{ secret_name: {:?}, role_id: [not shown] }}",
            self.secret_name
        )
    }
}

/// The result of reconciling one SecretEngine, AuthMethod or VaultRole.
#[derive(Clone, Debug)]
pub struct ConfigOutcome {
    /// Every object considered, in order (mount, configuration, CA, role).
    pub changes: Vec<Change>,
    /// Whether anything was written to Vault.
    pub written: bool,
    /// Whether a difference came from an out-of-band edit (the spec did not change since
    /// the last write).
    pub drift: bool,
    /// Whether Vault now matches the spec (false in plan mode with pending changes, and
    /// when drift was only reported).
    pub in_sync: bool,
    /// The hash of the desired state; record it as `status.appliedHash` when `in_sync`.
    pub applied_hash: String,
    /// `status.secretHashes` to record (Vault path → hash of the last written request).
    pub secret_hashes: BTreeMap<String, String>,
    /// `status.ownedFields` to record: Vault path → the fields the spec sets there.
    pub managed: BTreeMap<String, Vec<String>>,
    /// The main Vault path (`status.vaultPath`).
    pub vault_path: String,
    /// Auth methods: the mount accessor.
    pub accessor: Option<String>,
    /// Roles: the Vault policies granted.
    pub policies: Vec<String>,
    /// AppRole roles with `roleIdSecret`: the role id to publish.
    pub role_id: Option<RoleIdOutput>,
}

impl ConfigOutcome {
    pub(crate) fn new(vault_path: String, applied_hash: String, last: &LastApplied) -> Self {
        ConfigOutcome {
            changes: vec![],
            written: false,
            drift: false,
            in_sync: true,
            applied_hash,
            secret_hashes: last.secret_hashes.clone(),
            managed: BTreeMap::new(),
            vault_path,
            accessor: None,
            policies: vec![],
            role_id: None,
        }
    }

    /// Whether the plan holds changes that writing would make.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action.writes())
    }

    /// Records the outcome in a status: vault path and hashes (only when Vault matches
    /// the spec), accessor, policies, `lastSynced`/`lastDrift`, and the `Ready` and `Drifted`
    /// conditions. `role_id_secret` is set by the caller after it wrote the Secret.
    pub fn record(
        &self,
        status: &mut VaultObjectStatus,
        generation: Option<i64>,
        now: DateTime<Utc>,
    ) {
        status.observed_generation = generation;
        if self.in_sync {
            status.vault_path = Some(self.vault_path.clone());
            status.applied_hash = Some(self.applied_hash.clone());
            status.secret_hashes = self.secret_hashes.clone();
            status.owned_fields = self.managed.clone();
            status.last_synced = Some(now);
        }
        if self.accessor.is_some() {
            status.accessor = self.accessor.clone();
        }
        status.policies = self.policies.clone();
        if self.drift {
            status.last_drift = Some(now);
        }
        let (ready, reason, msg) = if self.in_sync {
            (
                ConditionStatus::True,
                if self.drift && self.written {
                    reasons::DRIFT_CORRECTED
                } else {
                    reasons::RECONCILED
                },
                format!("{} matches the spec", self.vault_path),
            )
        } else if self.drift {
            (
                ConditionStatus::False,
                reasons::DRIFT_DETECTED,
                "Vault differs from the spec and driftPolicy is Report".to_string(),
            )
        } else {
            (
                ConditionStatus::False,
                reasons::PROGRESSING,
                "changes pending".to_string(),
            )
        };
        set_condition(
            &mut status.conditions,
            Condition::new(condition_types::READY, ready, reason, msg, generation, now),
        );
        let drift_detail: Vec<String> = self
            .changes
            .iter()
            .filter(|c| c.drift)
            .map(|c| c.target.clone())
            .collect();
        set_condition(
            &mut status.conditions,
            if self.drift {
                Condition::new(
                    condition_types::DRIFTED,
                    ConditionStatus::True,
                    reasons::DRIFT_DETECTED,
                    format!("edited in Vault: {}", drift_detail.join(", ")),
                    generation,
                    now,
                )
            } else {
                Condition::new(
                    condition_types::DRIFTED,
                    ConditionStatus::False,
                    reasons::IN_SYNC,
                    "",
                    generation,
                    now,
                )
            },
        );
    }
}

/// Resolves a Secret reference of a namespaced resource (its own namespace only).
pub(crate) async fn resolve_secret<R: Resolver>(
    resolver: &R,
    namespace: &str,
    r: &SecretKeyRef,
    field: &str,
) -> Result<SecretString, ReconcileError> {
    if let Some(ns) = r.namespace.as_deref().filter(|ns| *ns != namespace) {
        return Err(ReconcileError::Invalid(format!(
            "{field}.namespace: {ns:?} differs from the resource's namespace {namespace:?}; a namespaced resource may only read Secrets in its own namespace"
        )));
    }
    match resolver.secret_value(namespace, &r.name, &r.key).await? {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(ReconcileError::Dependency(format!(
            "{field}: key {:?} of Secret {namespace}/{} is empty",
            r.key, r.name
        ))),
        None => Err(ReconcileError::Dependency(format!(
            "{field}: Secret {namespace}/{} or its key {:?} does not exist yet",
            r.name, r.key
        ))),
    }
}

/// Resolves the secret fields of an object, sets its `secret_hash`, and returns the
/// values (in `obj.secrets` order). The hash covers the whole request (path, fields and
/// values), never a secret alone.
pub(crate) async fn resolve_object_secrets<R: Resolver>(
    resolver: &R,
    namespace: &str,
    obj: &mut DesiredObject,
) -> Result<Vec<SecretString>, ReconcileError> {
    let mut values = vec![];
    for s in &obj.secrets {
        values.push(resolve_secret(resolver, namespace, &s.secret_ref, &s.field).await?);
    }
    if !values.is_empty() {
        let mut material = format!("{}\n{}\n", obj.path, Value::Object(obj.body()));
        for (s, v) in obj.secrets.iter().zip(&values) {
            material.push_str(&s.key);
            material.push('=');
            material.push_str(v.expose());
            material.push('\n');
        }
        obj.secret_hash = Some(short_hash(material.as_bytes()));
    }
    Ok(values)
}

/// The full write body: fields plus secret values (sent only to Vault).
pub(crate) fn body_with_secrets(
    obj: &DesiredObject,
    values: &[SecretString],
    include_secrets: bool,
) -> Value {
    let mut body = obj.body();
    if include_secrets {
        for (s, v) in obj.secrets.iter().zip(values) {
            body.insert(s.key.clone(), Value::String(v.expose().to_string()));
        }
    }
    Value::Object(body)
}

/// Reads a Vault object's `data` (`None` when absent).
pub(crate) async fn read_data(
    vault: &VaultSession,
    path: &str,
) -> Result<Option<Value>, ReconcileError> {
    Ok(vault
        .read(path)
        .await?
        .map(|v| v.get("data").cloned().unwrap_or(Value::Null)))
}

/// Plans one object against Vault and writes it when allowed. `parent_exists` false means
/// the object cannot exist yet (its mount is being created), so it is not read.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn sync_object(
    vault: &VaultSession,
    id: &ResourceId,
    obj: &DesiredObject,
    values: &[SecretString],
    parent_exists: bool,
    last: &LastApplied,
    drift: bool,
    may_write: bool,
    out: &mut ConfigOutcome,
) -> Result<Action, ReconcileError> {
    let live = if parent_exists {
        read_data(vault, &obj.path).await?
    } else {
        None
    };
    // Fields the spec set last time and no longer sets go back to Vault's default.
    out.managed.insert(
        obj.path.clone(),
        certus_core::object::managed_keys(&obj.fields),
    );
    let mut with_resets = obj.clone();
    let left =
        certus_core::object::add_resets(&mut with_resets.fields, last.managed_on(&obj.path), |k| {
            format!("/{k}")
        });
    let obj = &with_resets;
    let mut change = plan_object(
        id,
        obj,
        live.as_ref(),
        last.secret_hashes.get(&obj.path).map(String::as_str),
        drift,
    );
    note_left(&mut change, &left);
    let action = change.action;
    if action.writes() {
        if may_write {
            let include_secrets = !(obj.secrets_on_create_only && action == Action::Update);
            vault
                .write(&obj.path, &body_with_secrets(obj, values, include_secrets))
                .await?;
            out.written = true;
        } else {
            out.in_sync = false;
        }
    }
    if let Some(h) = &obj.secret_hash {
        // Remember the request only once it is (or already was) in Vault.
        let known = last.secret_hashes.contains_key(&obj.path);
        if (action.writes() && may_write) || (!action.writes() && (known || live.is_some())) {
            out.secret_hashes.insert(obj.path.clone(), h.clone());
        }
    }
    out.drift |= change.drift;
    out.changes.push(change);
    Ok(action)
}

/// Adds the mount's tuning fields to what the resource manages and resets the tuning
/// fields the spec no longer sets (see [`sync_object`]); returns the removed fields left
/// in Vault as they are.
pub(crate) fn manage_mount(
    mount: &mut certus_core::mount::DesiredMount,
    last: &LastApplied,
    out: &mut ConfigOutcome,
) -> Vec<String> {
    let target = mount.target();
    out.managed.insert(
        target.clone(),
        certus_core::object::managed_keys(&mount.tune),
    );
    certus_core::object::add_resets(&mut mount.tune, last.managed_on(&target), |k| {
        if k == "description" {
            "/description".to_string()
        } else {
            format!("/config/{k}")
        }
    })
}

/// Says in a change which fields removed from the spec stay in Vault as they are.
pub(crate) fn note_left(change: &mut Change, left: &[String]) {
    if left.is_empty() {
        return;
    }
    let line = format!(
        "= {}: removed from the spec, left in Vault as it is (no default to reset to)",
        left.join(", ")
    );
    change.detail = Some(match change.detail.take() {
        Some(d) => format!("{d}\n{line}"),
        None => line,
    });
}

/// Whether writes are allowed for a change with this drift flag.
pub(crate) fn may_write(mode: Mode, drift: bool, policy: certus_api::DriftPolicy) -> bool {
    mode == Mode::Apply && !(drift && policy == certus_api::DriftPolicy::Report)
}

/// `(namespace, name)` of a namespaced resource.
pub(crate) fn ns_name(namespace: &Option<String>, name: &Option<String>) -> (String, String) {
    (
        namespace.clone().unwrap_or_else(|| "default".into()),
        name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::find_condition;
    use chrono::TimeZone;

    fn outcome(in_sync: bool, drift: bool, written: bool) -> ConfigOutcome {
        let mut o =
            ConfigOutcome::new("auth/k/role/r".into(), "h2".into(), &LastApplied::default());
        o.in_sync = in_sync;
        o.drift = drift;
        o.written = written;
        o.secret_hashes.insert("p".into(), "s".into());
        o
    }

    #[test]
    fn record_sets_hashes_only_when_in_sync_and_conditions() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut st = VaultObjectStatus {
            applied_hash: Some("h1".into()),
            ..Default::default()
        };
        outcome(false, true, false).record(&mut st, Some(3), now);
        assert_eq!(
            st.applied_hash.as_deref(),
            Some("h1"),
            "reported drift keeps the old hash"
        );
        assert_eq!(st.vault_path, None);
        assert_eq!(st.last_drift, Some(now));
        let ready = find_condition(&st.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::False, "DriftDetected")
        );
        assert_eq!(
            find_condition(&st.conditions, "Drifted").unwrap().status,
            ConditionStatus::True
        );

        outcome(true, true, true).record(&mut st, Some(3), now);
        assert_eq!(st.applied_hash.as_deref(), Some("h2"));
        assert_eq!(st.secret_hashes.get("p").map(String::as_str), Some("s"));
        assert_eq!(st.vault_path.as_deref(), Some("auth/k/role/r"));
        assert_eq!(st.observed_generation, Some(3));
        let ready = find_condition(&st.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::True, "DriftCorrected")
        );
        outcome(true, false, false).record(&mut st, Some(4), now);
        assert_eq!(
            find_condition(&st.conditions, "Ready").unwrap().reason,
            "Reconciled"
        );
        assert_eq!(
            find_condition(&st.conditions, "Drifted").unwrap().status,
            ConditionStatus::False
        );
        let back = LastApplied::from_status(Some(&st));
        assert_eq!(back.applied_hash.as_deref(), Some("h2"));
    }

    #[test]
    fn role_id_is_not_in_debug_output() {
        let r = RoleIdOutput {
            secret_name: "s".into(),
            role_id: "0f1e2d3c".into(),
        };
        assert!(!format!("{r:?}").contains("0f1e2d3c"));
    }

    #[test]
    fn writes_only_in_apply_and_not_for_reported_drift() {
        use certus_api::DriftPolicy::*;
        assert!(may_write(Mode::Apply, false, Report));
        assert!(may_write(Mode::Apply, true, Correct));
        assert!(!may_write(Mode::Apply, true, Report));
        assert!(!may_write(Mode::Plan, false, Correct));
    }
}
