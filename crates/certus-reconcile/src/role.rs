//! The VaultRole pipeline: resolve policy references → validate → check dependencies
//! (mount, policies, database connection) → write the role → read the AppRole role id.

use certus_api::{DeletionPolicy, VaultRole};
use certus_core::role::{self as core, MountProblem};
use certus_core::{Action, Change, ResourceId};
use certus_vault_client::VaultSession;
use serde_json::Value;

use crate::config::{
    may_write, ns_name, read_data, sync_object, ConfigOutcome, LastApplied, RoleIdOutput,
};
use crate::error::ReconcileError;
use crate::Mode;

/// The resource id used in plan output.
pub fn resource_id(r: &VaultRole) -> ResourceId {
    let (ns, name) = ns_name(&r.metadata.namespace, &r.metadata.name);
    ResourceId::new("VaultRole", Some(&ns), &name)
}

/// Resolves `policyRefs` with `lookup` (VaultPolicy name in the role's namespace → Vault
/// policy name) and computes the desired role. Pure; a reference to an unknown
/// VaultPolicy is a [`ReconcileError::Dependency`].
pub fn desired(
    r: &VaultRole,
    lookup: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<core::DesiredRole, ReconcileError> {
    let kind = core::kind_of(&r.spec).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    let (ns, _) = ns_name(&r.metadata.namespace, &r.metadata.name);
    let mut resolved = vec![];
    let mut missing = vec![];
    for name in core::policy_refs(&r.spec) {
        match lookup(name) {
            Some(v) => resolved.push(v),
            None => missing.push(format!("{ns}/{name}")),
        }
    }
    // Validate the rest first: a bad spec is reported as invalid even while it waits.
    let d = core::desired(&r.spec, &r.vault_name(), &resolved)
        .map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    if !missing.is_empty() {
        return Err(ReconcileError::Dependency(format!(
            "spec.{}.policyRefs: VaultPolicy {} does not exist",
            kind.field(),
            missing.join(", ")
        )));
    }
    Ok(d)
}

/// Reconciles one VaultRole. `lookup` resolves `policyRefs` (see [`desired`]). Before
/// writing, the role's mount must exist with a fitting type, every referenced policy
/// must exist in Vault, and a database role's connection must exist: otherwise
/// [`ReconcileError::Dependency`] names what is missing (retry with backoff).
pub async fn reconcile(
    vault: &VaultSession,
    r: &VaultRole,
    lookup: &(dyn Fn(&str) -> Option<String> + Sync),
    last: &LastApplied,
    mode: Mode,
) -> Result<ConfigOutcome, ReconcileError> {
    reconcile_with(vault, r, lookup, last, mode, &Hints::default()).await
}

/// What a caller reconciling many roles in one pass already read from Vault in bulk
/// (`order::apply_all_concurrent`), so each role skips the per-role reads whose answer
/// is known. Valid for one pass only; the default (nothing known) reads everything.
#[derive(Clone, Debug, Default)]
pub struct Hints {
    /// `sys/auth` and `sys/mounts` as read once for the pass, by `sys_path`.
    pub tables: std::collections::HashMap<&'static str, Value>,
    /// Vault policies known to exist (written or found in sync earlier in the pass, or
    /// listed): their `policyRefs` check is not read again.
    pub policies_present: std::collections::HashSet<String>,
    /// Role directories (`auth/kubernetes/role`, `database/roles`, …) listed once, with
    /// their lower-cased keys: a role absent from its directory's list is not read.
    pub listed_dirs: std::collections::HashMap<String, std::collections::HashSet<String>>,
}

impl Hints {
    fn known_absent(&self, path: &str) -> bool {
        path.rsplit_once('/').is_some_and(|(dir, name)| {
            self.listed_dirs
                .get(dir)
                .is_some_and(|keys| !keys.contains(&name.to_ascii_lowercase()))
        })
    }
}

/// The directory a role kind's objects are listed under (`LIST <dir>`), for [`Hints`].
pub fn role_dir(d: &core::DesiredRole) -> Option<&str> {
    d.object.path.rsplit_once('/').map(|(dir, _)| dir)
}

/// [`reconcile`] using what the caller already knows (see [`Hints`]).
pub async fn reconcile_with(
    vault: &VaultSession,
    r: &VaultRole,
    lookup: &(dyn Fn(&str) -> Option<String> + Sync),
    last: &LastApplied,
    mode: Mode,
    hints: &Hints,
) -> Result<ConfigOutcome, ReconcileError> {
    let d = desired(r, lookup)?;
    let id = resource_id(r);
    let sys_path = d.kind.table().sys_path();
    let fetched;
    let table = match hints.tables.get(sys_path) {
        Some(t) => t,
        None => {
            fetched = vault.read(sys_path).await?.unwrap_or(Value::Null);
            &fetched
        }
    };
    match core::check_mount(&d, table) {
        Ok(()) => {}
        Err(MountProblem::Missing(m)) => return Err(ReconcileError::Dependency(m)),
        Err(MountProblem::WrongType(m)) => return Err(ReconcileError::Invalid(m)),
    }
    let refs = core::policy_refs(&r.spec);
    for name in refs {
        let vault_name = lookup(name).unwrap_or_default();
        if hints.policies_present.contains(&vault_name) {
            continue;
        }
        if vault.policy_read(&vault_name).await?.is_none() {
            return Err(ReconcileError::Dependency(format!(
                "spec.{}.policyRefs: VaultPolicy {name} (Vault policy {vault_name:?}) is not in Vault yet",
                d.kind.field()
            )));
        }
    }
    if let Some(db) = &d.db_name {
        if read_data(vault, &format!("{}/config/{db}", d.mount))
            .await?
            .is_none()
        {
            return Err(ReconcileError::Dependency(format!(
                "spec.{}.dbName: the connection {db:?} does not exist in {}/ yet",
                d.kind.field(),
                d.mount
            )));
        }
    }
    let hash = d.hash();
    let drift = last.applied_hash.as_deref() == Some(hash.as_str());
    let write = may_write(mode, drift, r.spec.drift_policy);
    let mut out = ConfigOutcome::new(d.object.path.clone(), hash, last);
    out.policies = d.policies.clone();
    let action = sync_object(
        vault,
        &id,
        &d.object,
        &[],
        !hints.known_absent(&d.object.path),
        last,
        drift,
        write,
        &mut out,
    )
    .await?;
    // The role moved (another mount): remove the old one, as deleting the resource would.
    if let Some(old) = last.vault_path.as_deref().filter(|p| *p != d.object.path) {
        if r.spec.deletion_policy == DeletionPolicy::Delete
            && read_data(vault, old).await?.is_some()
        {
            if mode == Mode::Apply {
                vault.delete(old).await?;
                out.written = true;
            } else {
                out.in_sync = false;
            }
            out.changes.push(Change {
                resource: id.clone(),
                action: Action::Delete,
                target: old.to_string(),
                drift: false,
                detail: Some(format!("the role moved to {}", d.object.path)),
            });
        }
    }
    if let Some(secret_name) = &d.role_id_secret {
        let exists = action != Action::Create || out.written;
        if exists {
            let v = read_data(vault, &format!("{}/role-id", d.object.path)).await?;
            if let Some(role_id) = v
                .as_ref()
                .and_then(|v| v.get("role_id"))
                .and_then(Value::as_str)
            {
                out.role_id = Some(RoleIdOutput {
                    secret_name: secret_name.clone(),
                    role_id: role_id.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Cleans up when the resource is deleted: deletes the role with `deletionPolicy:
/// Delete` (the default), leaves it with `Retain`. An absent role or mount is success.
pub async fn delete(
    vault: &VaultSession,
    r: &VaultRole,
    mode: Mode,
) -> Result<Change, ReconcileError> {
    let id = resource_id(r);
    // Policy references do not matter for the path.
    let d = desired(r, &|_| Some(String::new()))?;
    let target = d.object.path.clone();
    let mk = |action, detail: &str| Change {
        resource: id.clone(),
        action,
        target: target.clone(),
        drift: false,
        detail: Some(detail.to_string()),
    };
    if r.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(mk(Action::NoChange, "deletionPolicy: Retain"));
    }
    let table = vault
        .read(d.kind.table().sys_path())
        .await?
        .unwrap_or(Value::Null);
    if core::check_mount(&d, &table).is_err() {
        return Ok(mk(
            Action::NoChange,
            "the mount is gone, and the role with it",
        ));
    }
    if read_data(vault, &target).await?.is_none() {
        return Ok(mk(Action::NoChange, "already absent"));
    }
    if mode == Mode::Apply {
        vault.delete(&target).await?;
    }
    Ok(mk(Action::Delete, "delete role"))
}
