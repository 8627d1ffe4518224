//! The VaultPolicy pipeline.

use certus_api::{DeletionPolicy, DriftPolicy, VaultPolicy};
use certus_core::policy as core;
use certus_core::{Action, Change, ResourceId};
use certus_vault_client::VaultSession;
use kube_like::ResourceMeta;

use crate::error::ReconcileError;
use crate::Mode;

/// Minimal metadata access, so this crate does not need the Kubernetes client.
mod kube_like {
    pub trait ResourceMeta {
        fn ns(&self) -> String;
        fn nm(&self) -> String;
        fn adopt(&self) -> bool;
    }
    impl ResourceMeta for certus_api::VaultPolicy {
        fn ns(&self) -> String {
            self.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into())
        }
        fn nm(&self) -> String {
            self.metadata.name.clone().unwrap_or_default()
        }
        fn adopt(&self) -> bool {
            self.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(certus_api::ADOPT_ANNOTATION))
                .is_some_and(|v| v == "true")
        }
    }
}

/// The result of reconciling one VaultPolicy.
#[derive(Clone, Debug)]
pub struct PolicyOutcome {
    /// The change that was planned (and, in apply mode, made unless `written` is false).
    pub change: Change,
    /// Whether Vault was written.
    pub written: bool,
    /// Hash of the desired policy text (recorded in status).
    pub hash: String,
    /// The Vault policy name.
    pub vault_name: String,
}

/// The resource id used in plan output.
pub fn resource_id(p: &VaultPolicy) -> ResourceId {
    ResourceId::new("VaultPolicy", Some(&p.ns()), &p.nm())
}

/// Pure validation and desired state; no Vault request.
pub fn desired(p: &VaultPolicy) -> Result<core::DesiredPolicy, ReconcileError> {
    core::desired(&p.ns(), &p.nm(), &p.vault_name(), &p.spec)
        .map_err(|e| ReconcileError::Invalid(e.to_string()))
}

/// Among resources that claim the same Vault policy through the same connection, the
/// first claimant (oldest, then by position) owns it. Returns the owner when it is not `me`.
pub fn claimed_by_other<'a>(
    me: &ResourceId,
    claimants: impl IntoIterator<Item = &'a ResourceId>,
) -> Option<&'a ResourceId> {
    claimants.into_iter().next().filter(|first| *first != me)
}

/// Reconciles one policy. `last_hash` is the hash recorded in status after the last
/// write (the operator has it; the CLI passes `None`).
pub async fn reconcile(
    vault: &VaultSession,
    p: &VaultPolicy,
    last_hash: Option<&str>,
    mode: Mode,
) -> Result<PolicyOutcome, ReconcileError> {
    reconcile_listed(vault, p, last_hash, mode, None).await
}

/// [`reconcile`] with the policy names a `LIST sys/policies/acl` made in the same run
/// returned (see `order::apply_all_concurrent`): a policy absent from that list is not
/// read again (a cold apply then makes one write per policy instead of a read and a
/// write). `None` reads the policy as [`reconcile`] does.
pub async fn reconcile_listed(
    vault: &VaultSession,
    p: &VaultPolicy,
    last_hash: Option<&str>,
    mode: Mode,
    listed: Option<&std::collections::HashSet<String>>,
) -> Result<PolicyOutcome, ReconcileError> {
    let desired = desired(p)?;
    let id = resource_id(p);
    let live = match listed {
        Some(names) if !names.contains(&desired.name) => None,
        _ => vault.policy_read(&desired.name).await?,
    };
    let change = core::plan(&id, &desired, live.as_deref(), last_hash, p.adopt());
    let mut written = false;
    match change.action {
        Action::Conflict => {
            return Err(ReconcileError::Conflict(
                change.detail.clone().unwrap_or_default(),
            ))
        }
        Action::Create | Action::Update
            if mode == Mode::Apply
                && !(change.drift && p.spec.drift_policy == DriftPolicy::Report) =>
        {
            vault.policy_write(&desired.name, &desired.text).await?;
            written = true;
        }
        _ => {}
    }
    Ok(PolicyOutcome {
        change,
        written,
        hash: desired.hash,
        vault_name: desired.name,
    })
}

/// Cleans up when the resource is deleted: deletes the policy from Vault when
/// `deletionPolicy: Delete` and the policy is still ours.
pub async fn delete(
    vault: &VaultSession,
    p: &VaultPolicy,
    mode: Mode,
) -> Result<Change, ReconcileError> {
    let id = resource_id(p);
    let name = p.vault_name();
    if p.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Change {
            resource: id,
            action: Action::NoChange,
            target: format!("sys/policies/acl/{name}"),
            drift: false,
            detail: Some("deletionPolicy: Retain".into()),
        });
    }
    let owner = format!("{}/{}", p.ns(), p.nm());
    let live = vault.policy_read(&name).await?;
    let change = core::plan_delete(&id, &name, &owner, live.as_deref());
    if change.action == Action::Delete && mode == Mode::Apply {
        vault.policy_delete(&name).await?;
    }
    Ok(change)
}
