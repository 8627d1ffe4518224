//! The AuthMethod pipeline: validate → resolve Secrets → read `sys/auth` → refuse a type
//! change → enable or tune → write `auth/<path>/config`.

use certus_api::{AuthMethod, DeletionPolicy};
use certus_core::auth_method as core;
use certus_core::mount::{find_entry, live_type, plan_mount};
use certus_core::{Action, Change, ResourceId};
use certus_vault_client::VaultSession;
use serde_json::Value;

use crate::config::{
    manage_mount, may_write, note_left, ns_name, resolve_object_secrets, sync_object,
    ConfigOutcome, LastApplied,
};
use crate::connection::Resolver;
use crate::error::ReconcileError;
use crate::Mode;

/// The resource id used in plan output.
pub fn resource_id(a: &AuthMethod) -> ResourceId {
    let (ns, name) = ns_name(&a.metadata.namespace, &a.metadata.name);
    ResourceId::new("AuthMethod", Some(&ns), &name)
}

/// Pure validation and desired state; no Vault request.
pub fn desired(a: &AuthMethod) -> Result<core::DesiredAuth, ReconcileError> {
    core::desired(&a.spec).map_err(|err| ReconcileError::Invalid(err.to_string()))
}

/// Reconciles one AuthMethod (see [`crate::engine::reconcile`] for the contract).
/// The outcome carries the mount accessor.
pub async fn reconcile<R: Resolver>(
    vault: &VaultSession,
    a: &AuthMethod,
    resolver: &R,
    last: &LastApplied,
    mode: Mode,
) -> Result<ConfigOutcome, ReconcileError> {
    let mut desired = desired(a)?;
    let id = resource_id(a);
    let (ns, _) = ns_name(&a.metadata.namespace, &a.metadata.name);
    let values = match desired.config.as_mut() {
        Some(obj) => resolve_object_secrets(resolver, &ns, obj).await?,
        None => vec![],
    };
    let hash = desired.hash();
    let drift = last.applied_hash.as_deref() == Some(hash.as_str());
    let write = may_write(mode, drift, a.spec.drift_policy);
    let mut out = ConfigOutcome::new(desired.mount.target(), hash, last);
    let left = manage_mount(&mut desired.mount, last, &mut out);

    let table = vault.read("sys/auth").await?.unwrap_or(Value::Null);
    let entry = find_entry(&table, &desired.mount.path).cloned();
    let mut change =
        plan_mount(&id, &desired.mount, entry.as_ref(), drift).map_err(ReconcileError::Conflict)?;
    note_left(&mut change, &left);
    match change.action {
        Action::Create | Action::Update if write => {
            if change.action == Action::Create {
                vault
                    .write(&desired.mount.target(), &desired.mount.create_body())
                    .await?;
            } else {
                vault
                    .write(
                        &format!("{}/tune", desired.mount.target()),
                        &desired.mount.tune_body(),
                    )
                    .await?;
            }
            out.written = true;
        }
        Action::Create | Action::Update => out.in_sync = false,
        _ => {}
    }
    out.drift |= change.drift;
    let created = change.action == Action::Create && write;
    out.changes.push(change);
    if let Some(obj) = &desired.config {
        sync_object(
            vault,
            &id,
            obj,
            &values,
            entry.is_some(),
            last,
            drift,
            write,
            &mut out,
        )
        .await?;
    }
    out.accessor = match entry {
        Some(e) => e.get("accessor").and_then(Value::as_str).map(String::from),
        None if created => {
            let table = vault.read("sys/auth").await?.unwrap_or(Value::Null);
            find_entry(&table, &desired.mount.path)
                .and_then(|e| e.get("accessor"))
                .and_then(Value::as_str)
                .map(String::from)
        }
        None => None,
    };
    Ok(out)
}

/// Cleans up when the resource is deleted. With `deletionPolicy: Retain` (the default)
/// nothing happens; with `Delete` the auth method is disabled, which deletes its roles
/// and revokes the tokens issued through it.
pub async fn delete(
    vault: &VaultSession,
    a: &AuthMethod,
    mode: Mode,
) -> Result<Change, ReconcileError> {
    let id = resource_id(a);
    let path = a.mount_path().to_string();
    let target = format!("sys/auth/{path}");
    let mk = |action, detail: &str| Change {
        resource: id.clone(),
        action,
        target: target.clone(),
        drift: false,
        detail: Some(detail.to_string()),
    };
    if a.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(mk(
            Action::NoChange,
            "deletionPolicy: Retain (the auth method stays enabled)",
        ));
    }
    let table = vault.read("sys/auth").await?.unwrap_or(Value::Null);
    let Some(entry) = find_entry(&table, &path) else {
        return Ok(mk(Action::NoChange, "already absent"));
    };
    let live = live_type(entry);
    if live != a.spec.type_.trim() {
        return Ok(mk(
            Action::Conflict,
            &format!("enabled as {live}, not {}; left in place", a.spec.type_),
        ));
    }
    if mode == Mode::Apply {
        vault.delete(&target).await?;
    }
    Ok(mk(
        Action::Delete,
        "disable (deletes its roles and revokes its tokens)",
    ))
}
