//! The SecretEngine pipeline: validate → resolve Secrets → read the mount table → refuse
//! a type change → mount or tune → write configuration objects → generate the PKI CA.

use certus_api::{DeletionPolicy, PkiCaType, SecretEngine};
use certus_core::engine as core;
use certus_core::mount::{find_entry, live_type, plan_mount};
use certus_core::{Action, Change, ResourceId};
use certus_vault_client::VaultSession;
use serde_json::{json, Value};

use crate::config::{
    manage_mount, may_write, note_left, ns_name, read_data, resolve_object_secrets, sync_object,
    ConfigOutcome, LastApplied,
};
use crate::connection::Resolver;
use crate::error::ReconcileError;
use crate::Mode;

/// The resource id used in plan output.
pub fn resource_id(e: &SecretEngine) -> ResourceId {
    let (ns, name) = ns_name(&e.metadata.namespace, &e.metadata.name);
    ResourceId::new("SecretEngine", Some(&ns), &name)
}

/// Pure validation and desired state; no Vault request.
pub fn desired(e: &SecretEngine) -> Result<core::DesiredEngine, ReconcileError> {
    core::desired(&e.spec).map_err(|err| ReconcileError::Invalid(err.to_string()))
}

/// Reconciles one SecretEngine. `last` comes from its status (`LastApplied::default()`
/// when there is none). Writes only in [`Mode::Apply`] and only what differs; a path
/// mounted with another type is a [`ReconcileError::Conflict`] and nothing is written.
pub async fn reconcile<R: Resolver>(
    vault: &VaultSession,
    e: &SecretEngine,
    resolver: &R,
    last: &LastApplied,
    mode: Mode,
) -> Result<ConfigOutcome, ReconcileError> {
    let mut desired = desired(e)?;
    let id = resource_id(e);
    let (ns, _) = ns_name(&e.metadata.namespace, &e.metadata.name);
    let mut values = vec![];
    for obj in desired.objects.iter_mut() {
        values.push(resolve_object_secrets(resolver, &ns, obj).await?);
    }
    let hash = desired.hash();
    let drift = last.applied_hash.as_deref() == Some(hash.as_str());
    let write = may_write(mode, drift, e.spec.drift_policy);
    let mut out = ConfigOutcome::new(desired.mount.target(), hash, last);
    let left = manage_mount(&mut desired.mount, last, &mut out);

    let table = vault.read("sys/mounts").await?.unwrap_or(Value::Null);
    let entry = find_entry(&table, &desired.mount.path);
    let mut mount_change =
        plan_mount(&id, &desired.mount, entry, drift).map_err(ReconcileError::Conflict)?;
    note_left(&mut mount_change, &left);
    let mounted = entry.is_some();
    match mount_change.action {
        Action::Create | Action::Update if write => {
            if mount_change.action == Action::Create {
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
    out.drift |= mount_change.drift;
    out.changes.push(mount_change);
    let parent_exists = mounted;
    for (obj, vals) in desired.objects.iter().zip(&values) {
        let action = sync_object(
            vault,
            &id,
            obj,
            vals,
            parent_exists,
            last,
            drift,
            write,
            &mut out,
        )
        .await?;
        if action == Action::Create && write {
            let name = obj.path.rsplit('/').next().unwrap_or_default();
            if desired.rotate_root.iter().any(|n| n == name)
                && obj.path == format!("{}/config/{name}", desired.mount.path)
            {
                vault
                    .write(
                        &format!("{}/rotate-root/{name}", desired.mount.path),
                        &json!({}),
                    )
                    .await?;
            }
        }
    }
    if let Some(ca) = &desired.ca {
        let exists = if parent_exists {
            issuers(vault, &ca.mount)
                .await?
                .is_some_and(|l| core::issuer_exists(Some(&l), &ca.issuer_name))
        } else {
            false
        };
        let change = core::plan_ca(&id, ca, exists, drift);
        if change.action == Action::Create {
            if write {
                generate_ca(vault, ca).await?;
                out.written = true;
            } else {
                out.in_sync = false;
            }
        }
        out.drift |= change.drift;
        out.changes.push(change);
    }
    Ok(out)
}

async fn issuers(vault: &VaultSession, mount: &str) -> Result<Option<Value>, ReconcileError> {
    read_data(vault, &format!("{mount}/issuers?list=true")).await
}

async fn generate_ca(vault: &VaultSession, ca: &core::DesiredCa) -> Result<(), ReconcileError> {
    match ca.ca_type {
        PkiCaType::Root => {
            vault
                .write(
                    &ca.generate_path(),
                    &Value::Object(ca.generate_body.clone()),
                )
                .await?;
        }
        PkiCaType::Intermediate => {
            let signer = ca.signed_by.as_deref().unwrap_or_default();
            if issuers(vault, signer).await?.is_none() {
                return Err(ReconcileError::Dependency(format!(
                    "spec.pki.ca.signedBy: the PKI mount {signer}/ has no CA yet"
                )));
            }
            let gen = vault
                .write(
                    &ca.generate_path(),
                    &Value::Object(ca.generate_body.clone()),
                )
                .await?
                .unwrap_or(Value::Null);
            let csr = gen
                .pointer("/data/csr")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ReconcileError::Invalid(format!(
                        "{}: Vault returned no CSR",
                        ca.generate_path()
                    ))
                })?
                .to_string();
            let mut sign = ca.sign_body.clone();
            sign.insert("csr".into(), Value::String(csr));
            let signed = vault
                .write(
                    &format!("{signer}/root/sign-intermediate"),
                    &Value::Object(sign),
                )
                .await?
                .unwrap_or(Value::Null);
            let cert = signed
                .pointer("/data/certificate")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let chain = signed
                .pointer("/data/issuing_ca")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let bundle = format!("{}\n{}", cert.trim_end(), chain.trim_end());
            let set = vault
                .write(
                    &format!("{}/intermediate/set-signed", ca.mount),
                    &json!({ "certificate": bundle }),
                )
                .await?
                .unwrap_or(Value::Null);
            let id = set
                .pointer("/data/imported_issuers/0")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(id) = id {
                vault
                    .write(
                        &format!("{}/issuer/{id}", ca.mount),
                        &json!({ "issuer_name": ca.issuer_name }),
                    )
                    .await?;
            }
        }
    }
    Ok(())
}

/// Cleans up when the resource is deleted. With `deletionPolicy: Retain` (the default)
/// nothing happens; with `Delete` the mount is disabled, which destroys its data. A path
/// mounted with another type is left alone (Conflict).
pub async fn delete(
    vault: &VaultSession,
    e: &SecretEngine,
    mode: Mode,
) -> Result<Change, ReconcileError> {
    let id = resource_id(e);
    let path = e.mount_path().to_string();
    let target = format!("sys/mounts/{path}");
    let mk = |action, detail: &str| Change {
        resource: id.clone(),
        action,
        target: target.clone(),
        drift: false,
        detail: Some(detail.to_string()),
    };
    if e.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(mk(
            Action::NoChange,
            "deletionPolicy: Retain (the mount and its data stay in Vault)",
        ));
    }
    let table = vault.read("sys/mounts").await?.unwrap_or(Value::Null);
    let Some(entry) = find_entry(&table, &path) else {
        return Ok(mk(Action::NoChange, "already absent"));
    };
    let live = live_type(entry);
    let want = desired(e).map(|d| d.mount.spec_type).unwrap_or_default();
    if !want.is_empty() && live != want && !(want == "kv-v1" && live == "kv") {
        return Ok(mk(
            Action::Conflict,
            &format!("mounted as {live}, not {want}; left in place"),
        ));
    }
    if mode == Mode::Apply {
        vault.delete(&target).await?;
    }
    Ok(mk(Action::Delete, "unmount (destroys the engine's data)"))
}
