//! The controllers of the kinds that configure Vault objects other than policies:
//! `SecretEngine`, `AuthMethod` and `VaultRole`. One generic controller over
//! [`ConfigKind`]; the kinds differ only in which `certus_reconcile` pipeline they call
//! (and a VaultRole resolves `policyRefs` and publishes its AppRole role id, see
//! [`crate::role`]).
//!
//! Pipeline of one reconcile (under the finalizer helper), as for `VaultPolicy`:
//! validate (pure, no request; a VaultRole also resolves `policyRefs` from the VaultPolicy
//! store) → resolve the connection and its credentials (Kubernetes API) → the shared
//! pipeline (Vault; writes only what differs, drift per `driftPolicy`) → publish outputs
//! (the AppRole role id Secret) → status (server-side apply) → Events.
//!
//! Errors: `Ready=False` with the error's reason and message; retryable ones (a missing
//! mount, policy, connection or Secret is `WaitingForDependency`) are retried with the
//! shared per-object backoff, so applying a whole set in any order converges; the others
//! (invalid spec, conflict) wait for a change.
//!
//! Triggers (wired by `controllers`, called from [`crate::run`]):
//! - each controller watches its own kind (spec, finalizers, deletion and the
//!   `vault.certus.io/reconcile-at` annotation; not status);
//! - all three are re-triggered when the `VaultConnection`/`ClusterVaultConnection` they
//!   use changes or becomes Ready;
//! - a `VaultRole` is re-triggered when a `VaultPolicy` it references (`policyRefs`), or a
//!   `SecretEngine`/`AuthMethod` on its mount, changes or becomes Ready, and when its role
//!   id Secret is changed or deleted;
//! - a `SecretEngine`/`AuthMethod` is re-triggered when a Secret it reads (database
//!   password, AWS key, client secret, reviewer or service account JWT) changes. Secrets
//!   are watched metadata-only (no values are held in memory); without that watch the
//!   periodic resync (`resync_interval`) would still notice a changed Secret through the
//!   hash in `status.secretHashes`.
//!
//! Deletion: a finalizer honours `deletionPolicy` (`Retain` is the default of
//! `SecretEngine` and `AuthMethod`, `Delete` of `VaultRole`). With `Delete` the cleanup
//! retries until `deletion_timeout` after `deletionTimestamp`, then releases the
//! finalizer with a Warning `FinalizerReleased` Event. A spec that is invalid at deletion
//! time is handled by what status recorded: nothing in `status.vaultPath` means nothing
//! of this resource was ever in sync in Vault (every pipeline validates before writing),
//! so the finalizer is released without a Vault request; a recorded path is removed
//! (SecretEngine/AuthMethod: by the pipeline, which works from `spec.path`; for an
//! invalid SecretEngine it skips its mount-type check, for an AuthMethod it still
//! compares `spec.type`; VaultRole: the role at the recorded path, because the pipeline
//! cannot compute it).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use certus_api::{
    condition_types, find_condition, reasons, set_condition, AuthMethod, ClusterVaultConnection,
    ConnectionRef, DeletionPolicy, SecretEngine, SecretKeyRef, VaultConnection, VaultObjectStatus,
    VaultPolicy, VaultRole, FINALIZER,
};
use certus_core::mount::MountTable;
use certus_core::{Action as ChangeAction, Change};
use certus_reconcile::{auth_method, engine, ConfigOutcome, LastApplied, Mode, ReconcileError};
use certus_vault_client::VaultSession;
use chrono::{DateTime, Utc};
use futures::channel::mpsc::{self, UnboundedSender};
use futures::{stream, Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::NamespaceResourceScope;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, PredicateConfig, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, instrument, warn};

use crate::backoff::error_action;
use crate::claim::{same_object, sort_in_claim_order};
use crate::context::{Claims, Context};
use crate::error::Error;
use crate::resolve::{session_for, ConnectionKey};
use crate::status::{self, apply_status, ready, ready_changed, set_failed};
use crate::watch;

/// Setting this annotation (to any new value, e.g. the current time) makes the operator
/// reconcile the resource now instead of at its next periodic resync.
pub use certus_api::annotations::RECONCILE_AT as RECONCILE_AT_ANNOTATION;

/// One kind of Vault configuration resource handled by the generic controller.
pub trait ConfigKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The kind label in metrics, logs and messages.
    const KIND: &'static str;

    /// The observed state.
    fn status(&self) -> Option<&VaultObjectStatus>;

    /// `spec.connectionRef`.
    fn connection_ref(&self) -> Option<&ConnectionRef>;

    /// `spec.deletionPolicy`.
    fn deletion_policy(&self) -> DeletionPolicy;

    /// The Vault object, for messages, e.g. `secrets engine "certus/" (kv-v2)`.
    fn describe(&self) -> String;

    /// Validates the spec without any request or lookup.
    fn check_spec(&self) -> Result<(), ReconcileError>;

    /// Everything that can be decided before a request: the spec, and for a VaultRole
    /// whether the VaultPolicies it references exist.
    fn precheck(&self, _ctx: &Context) -> Result<(), ReconcileError> {
        self.check_spec()
    }

    /// Names of the Secrets (in the resource's namespace) the spec reads values from.
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        vec![]
    }

    /// The Vault object this resource claims (`sys/mounts/<path>`, `sys/auth/<path>`,
    /// a role's path), for the claim check: two resources of a kind on one Vault object
    /// through one connection would overwrite each other at every resync. `None` when
    /// the spec is invalid (precheck reports that).
    fn claim_target(&self) -> Option<String>;

    /// A cheap test that `other` may claim the same target as `self` (false only when
    /// it surely does not), run before [`claim_target`](Self::claim_target) on every
    /// cached object.
    fn may_share_target(&self, _other: &Self) -> bool {
        true
    }

    /// Where this kind's [`Claims`] live in the context.
    fn claims_cell(ctx: &Context) -> &std::sync::OnceLock<Claims<Self>>;

    /// Runs the shared pipeline in [`Mode::Apply`].
    fn reconcile_vault(
        &self,
        vault: &VaultSession,
        ctx: &Context,
        last: &LastApplied,
    ) -> impl Future<Output = Result<ConfigOutcome, ReconcileError>> + Send;

    /// Removes the Vault object (`deletionPolicy: Delete`).
    fn delete_vault(
        &self,
        vault: &VaultSession,
    ) -> impl Future<Output = Result<Change, ReconcileError>> + Send;

    /// Writes what the outcome asks to publish in Kubernetes and records it in `status`
    /// (a VaultRole's role id Secret). Runs before the status is applied.
    fn publish_outputs(
        &self,
        _outcome: &ConfigOutcome,
        _status: &mut VaultObjectStatus,
        _ctx: &Context,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send {
        async { Ok(()) }
    }
}

impl ConfigKind for SecretEngine {
    const KIND: &'static str = "SecretEngine";

    fn status(&self) -> Option<&VaultObjectStatus> {
        self.status.as_ref()
    }
    fn connection_ref(&self) -> Option<&ConnectionRef> {
        self.spec.connection_ref.as_ref()
    }
    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }
    fn describe(&self) -> String {
        format!(
            "secrets engine {:?} ({})",
            format!("{}/", self.mount_path()),
            self.spec.type_
        )
    }
    fn check_spec(&self) -> Result<(), ReconcileError> {
        engine::desired(self).map(|_| ())
    }
    fn claim_target(&self) -> Option<String> {
        Some(format!("sys/mounts/{}", self.mount_path()))
    }
    fn may_share_target(&self, other: &Self) -> bool {
        self.mount_path() == other.mount_path()
    }
    fn claims_cell(ctx: &Context) -> &std::sync::OnceLock<Claims<Self>> {
        &ctx.config_claims.engines
    }
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        let s = &self.spec;
        let mut refs: Vec<&SecretKeyRef> = s
            .database
            .iter()
            .flat_map(|d| &d.connections)
            .filter_map(|c| c.password_secret_ref.as_ref())
            .collect();
        refs.extend(s.aws.as_ref().map(|a| &a.secret_access_key_ref));
        refs.extend(
            s.kubernetes
                .as_ref()
                .and_then(|k| k.service_account_jwt_secret_ref.as_ref()),
        );
        refs
    }
    async fn reconcile_vault(
        &self,
        vault: &VaultSession,
        ctx: &Context,
        last: &LastApplied,
    ) -> Result<ConfigOutcome, ReconcileError> {
        engine::reconcile(vault, self, &ctx.resolver, last, Mode::Apply).await
    }
    async fn delete_vault(&self, vault: &VaultSession) -> Result<Change, ReconcileError> {
        engine::delete(vault, self, Mode::Apply).await
    }
}

impl ConfigKind for AuthMethod {
    const KIND: &'static str = "AuthMethod";

    fn status(&self) -> Option<&VaultObjectStatus> {
        self.status.as_ref()
    }
    fn connection_ref(&self) -> Option<&ConnectionRef> {
        self.spec.connection_ref.as_ref()
    }
    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }
    fn describe(&self) -> String {
        format!(
            "auth method {:?} ({})",
            format!("{}/", self.mount_path()),
            self.spec.type_
        )
    }
    fn check_spec(&self) -> Result<(), ReconcileError> {
        auth_method::desired(self).map(|_| ())
    }
    fn claim_target(&self) -> Option<String> {
        Some(format!("sys/auth/{}", self.mount_path()))
    }
    fn may_share_target(&self, other: &Self) -> bool {
        self.mount_path() == other.mount_path()
    }
    fn claims_cell(ctx: &Context) -> &std::sync::OnceLock<Claims<Self>> {
        &ctx.config_claims.auths
    }
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        let s = &self.spec;
        let mut refs: Vec<&SecretKeyRef> = vec![];
        refs.extend(
            s.kubernetes
                .as_ref()
                .and_then(|k| k.token_reviewer_jwt_secret_ref.as_ref()),
        );
        refs.extend(
            s.jwt
                .as_ref()
                .and_then(|j| j.oidc_client_secret_ref.as_ref()),
        );
        refs
    }
    async fn reconcile_vault(
        &self,
        vault: &VaultSession,
        ctx: &Context,
        last: &LastApplied,
    ) -> Result<ConfigOutcome, ReconcileError> {
        auth_method::reconcile(vault, self, &ctx.resolver, last, Mode::Apply).await
    }
    async fn delete_vault(&self, vault: &VaultSession) -> Result<Change, ReconcileError> {
        auth_method::delete(vault, self, Mode::Apply).await
    }
}

pub(crate) fn namespace_of<K: Resource>(obj: &K) -> String {
    obj.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

/// The connection a resource is reconciled through.
pub fn connection_key<K: ConfigKind>(obj: &K) -> ConnectionKey {
    ConnectionKey::for_ref(&namespace_of(obj), obj.connection_ref())
}

// ---------------------------------------------------------------------------------------
// Reconcile
// ---------------------------------------------------------------------------------------

/// Reconciles one resource of kind `K` (entry point of the controller).
#[instrument(skip_all, fields(kind = K::KIND, namespace = %namespace_of(obj.as_ref()), name = %obj.name_any()))]
pub async fn reconcile<K: ConfigKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(K::KIND);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace_of(obj.as_ref()));
    finalizer(&api, FINALIZER, obj, |event| {
        let (api, ctx) = (&api, &ctx);
        async move {
            match event {
                FinalizerEvent::Apply(o) => apply(o.as_ref(), api, ctx).await,
                FinalizerEvent::Cleanup(o) => cleanup(o.as_ref(), api, ctx).await,
            }
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// Requeue policy after a failed reconcile (see [`crate::backoff::error_requeue`]): backoff for retryable
/// errors (dependencies, Vault unavailable), a long wait for a change otherwise.
pub fn error_policy<K: ConfigKind>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(K::KIND, err.category());
    error_action(obj.as_ref(), err, &ctx, None)
}

async fn run_pipeline<K: ConfigKind>(
    obj: &K,
    ctx: &Context,
) -> Result<ConfigOutcome, ReconcileError> {
    // Validate before any request: an invalid spec (or a VaultRole whose VaultPolicy does
    // not exist) is reported even when the connection is missing.
    obj.precheck(ctx)?;
    if let Some((store, _)) = K::claims_cell(ctx).get() {
        check_claim(obj, &store.state())?;
    }
    let session = session_for(ctx, &namespace_of(obj), obj.connection_ref()).await?;
    let last = LastApplied::from_status(obj.status());
    obj.reconcile_vault(&session, ctx, &last).await
}

/// Every object among `all` (plus `me`) that claims `me`'s Vault object through the
/// same connection, in claim order: oldest `creationTimestamp` first, then namespace,
/// then name. The first one owns the Vault object (as for `VaultPolicy` names).
pub fn claimants<'a, K: ConfigKind>(me: &'a K, all: impl IntoIterator<Item = &'a K>) -> Vec<&'a K> {
    let Some(target) = me.claim_target() else {
        return vec![me];
    };
    let key = connection_key(me);
    let mut list: Vec<&K> = all
        .into_iter()
        .filter(|o| !same_object(*o, me) && me.may_share_target(o))
        .filter(|o| o.claim_target().as_ref() == Some(&target) && connection_key(*o) == key)
        .collect();
    list.push(me);
    sort_in_claim_order(&mut list);
    list
}

/// Fails with `Conflict` when another watched resource of the kind claimed the same
/// Vault object first (nothing is written), or with a retryable `Dependency` error while
/// that owner is being deleted.
pub fn check_claim<K: ConfigKind>(me: &K, all: &[Arc<K>]) -> Result<(), ReconcileError> {
    let list = claimants(me, all.iter().map(|a| a.as_ref()));
    let owner = list[0];
    if same_object(owner, me) {
        return Ok(());
    }
    let owner_name = format!("{}/{}", namespace_of(owner), owner.name_any());
    let target = me.claim_target().unwrap_or_default();
    if owner.meta().deletion_timestamp.is_some() {
        return Err(ReconcileError::Dependency(format!(
            "{} ({target}, {}) is claimed by {} {owner_name}, which is being deleted; waiting for it to be gone",
            me.describe(),
            connection_key(me),
            K::KIND
        )));
    }
    Err(ReconcileError::Conflict(format!(
        "{} ({target}, {}) is already managed by {} {owner_name}, which was created earlier; nothing was written. Point this resource at another path, or delete one of the two",
        me.describe(),
        connection_key(me),
        K::KIND
    )))
}

/// Status after a failed reconcile: `Ready=False` with the error's reason and message;
/// the fields recorded by earlier successes (hashes, path, accessor) are kept.
pub fn failure_status(
    old: &VaultObjectStatus,
    generation: Option<i64>,
    err: &ReconcileError,
    now: DateTime<Utc>,
) -> VaultObjectStatus {
    let mut s = old.clone();
    set_failed(&mut s.conditions, err, generation, now);
    s.observed_generation = generation;
    s
}

/// The Event a successful reconcile publishes, if any: `(type, reason, action, note)`.
/// Drift is a Warning `Drifted` (each correction; a drift that is only reported, once
/// until it goes away); a write without drift is a Normal `Created` (the main object was
/// created) or `Updated`.
pub fn success_event(
    kind: &str,
    old: &VaultObjectStatus,
    outcome: &ConfigOutcome,
) -> Option<(EventType, &'static str, &'static str, String)> {
    let targets = |pick: &dyn Fn(&Change) -> bool| {
        let t: Vec<String> = outcome
            .changes
            .iter()
            .filter(|c| pick(c))
            .map(|c| c.target.clone())
            .collect();
        if t.is_empty() {
            outcome.vault_path.clone()
        } else {
            t.join(", ")
        }
    };
    let written = |c: &Change| c.action.writes();
    match (outcome.drift, outcome.written) {
        (true, true) => Some((
            EventType::Warning,
            "Drifted",
            "CorrectDrift",
            format!(
                "{} was changed outside the operator; the spec was written back (driftPolicy: Correct)",
                targets(&|c| c.drift)
            ),
        )),
        (true, false) => {
            let already = old
                .conditions
                .iter()
                .any(|c| c.type_ == condition_types::READY && c.reason == reasons::DRIFT_DETECTED);
            (!already).then(|| {
                (
                    EventType::Warning,
                    "Drifted",
                    "DetectDrift",
                    format!(
                        "{} was changed outside the operator; it was only reported and left as is (driftPolicy: Report)",
                        targets(&|c| c.drift)
                    ),
                )
            })
        }
        (false, true) => {
            let created = outcome
                .changes
                .first()
                .is_some_and(|c| c.action == ChangeAction::Create);
            let summary: Vec<String> = outcome
                .changes
                .iter()
                .filter(|c| written(c))
                .map(|c| format!("{} {}", c.action, c.target))
                .collect();
            Some(if created {
                (
                    EventType::Normal,
                    "Created",
                    "Write",
                    format!("{kind} written to Vault: {}", summary.join(", ")),
                )
            } else {
                (
                    EventType::Normal,
                    "Updated",
                    "Write",
                    format!("{kind} updated in Vault from the spec: {}", summary.join(", ")),
                )
            })
        }
        (false, false) => None,
    }
}

async fn apply<K: ConfigKind>(obj: &K, api: &Api<K>, ctx: &Context) -> Result<Action, Error> {
    let now = status::now();
    let generation = obj.meta().generation;
    let old = obj.status().cloned().unwrap_or_default();
    let name = obj.name_any();
    let regarding = obj.object_ref(&());
    let result = match run_pipeline(obj, ctx).await {
        Ok(outcome) => {
            let mut new = old.clone();
            outcome.record(&mut new, generation, now);
            obj.publish_outputs(&outcome, &mut new, ctx)
                .await
                .map(|()| (outcome, new))
        }
        Err(err) => Err(err),
    };
    match result {
        Ok((outcome, new)) => {
            apply_status(api, &name, &new).await?;
            let changes: Vec<String> = outcome.changes.iter().map(|c| c.to_string()).collect();
            if outcome.written {
                info!(vault_path = %outcome.vault_path, drift = outcome.drift, ?changes, "wrote to Vault");
            } else {
                debug!(vault_path = %outcome.vault_path, drift = outcome.drift, "checked against Vault");
            }
            if let Some((type_, reason, action, note)) = success_event(K::KIND, &old, &outcome) {
                ctx.publish(&regarding, type_, reason, action, note).await;
            }
            ctx.failures.reset(&ObjectRef::from_obj(obj).erase());
            Ok(Action::requeue(ctx.options.resync_interval))
        }
        Err(err) => {
            let new = failure_status(&old, generation, &err, now);
            apply_status(api, &name, &new).await?;
            if ready_changed(&old.conditions, &new.conditions) {
                warn!(reason = err.reason(), error = %err, "reconcile failed");
                ctx.publish(
                    &regarding,
                    EventType::Warning,
                    err.reason(),
                    "Reconcile",
                    err.to_string(),
                )
                .await;
            } else {
                debug!(reason = err.reason(), error = %err, "reconcile failed again");
            }
            Err(err.into())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cleanup
// ---------------------------------------------------------------------------------------

async fn cleanup<K: ConfigKind>(obj: &K, api: &Api<K>, ctx: &Context) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(obj).erase();
    let what = obj.describe();
    let regarding = obj.object_ref(&());
    if let Some((store, trigger)) = K::claims_cell(ctx).get() {
        let all = store.state();
        let list = claimants(obj, all.iter().map(|a| a.as_ref()));
        let others: Vec<ObjectRef<K>> = list
            .iter()
            .filter(|o| !same_object(**o, obj))
            .map(|o| ObjectRef::from_obj(*o))
            .collect();
        if !same_object(list[0], obj) {
            // Another resource manages this Vault object: deleting this one (which
            // never wrote it) must not remove it.
            let owner = format!("{}/{}", namespace_of(list[0]), list[0].name_any());
            info!(
                what,
                owner, "another resource manages this Vault object; left in Vault"
            );
            ctx.publish(
                &regarding,
                EventType::Normal,
                "Retained",
                "Delete",
                format!(
                    "{what} was left in Vault: it is managed by {} {owner}",
                    K::KIND
                ),
            )
            .await;
            ctx.failures.reset(&key);
            return Ok(Action::await_change());
        }
        // The next claimant takes over once this one is gone (its reconcile waits for
        // the deletion to finish; see check_claim).
        for o in others {
            let _ = trigger.unbounded_send(o);
        }
    }
    if obj.deletion_policy() == DeletionPolicy::Retain {
        info!(what, "deletionPolicy is Retain: left in Vault");
        ctx.failures.reset(&key);
        return Ok(Action::await_change());
    }
    let recorded = obj.status().and_then(|s| s.vault_path.clone());
    if let (Err(invalid), None) = (obj.check_spec(), &recorded) {
        // Every pipeline validates before writing, and status.vaultPath is recorded
        // whenever Vault matched the spec: nothing of this resource is in Vault.
        info!(what, error = %invalid, "the spec is invalid and status records no Vault object; nothing to remove");
        ctx.failures.reset(&key);
        return Ok(Action::await_change());
    }
    let result = async {
        let session = session_for(ctx, &namespace_of(obj), obj.connection_ref()).await?;
        obj.delete_vault(&session).await
    }
    .await;
    let now = status::now();
    match result {
        Ok(change) => match change.action {
            ChangeAction::Delete => {
                info!(what, target = %change.target, "deleted from Vault");
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    "Deleted",
                    "Delete",
                    format!("Deleted {} from Vault", change.target),
                )
                .await;
            }
            ChangeAction::Conflict => {
                let detail = change
                    .detail
                    .as_deref()
                    .unwrap_or("it belongs to another owner");
                info!(what, detail, "left in place");
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    "Retained",
                    "Delete",
                    format!("{} was left in place: {detail}", change.target),
                )
                .await;
            }
            _ => debug!(
                what,
                detail = change.detail.as_deref().unwrap_or(""),
                "nothing to delete"
            ),
        },
        Err(ReconcileError::Vault(e)) if e.is_not_found() => {
            debug!(what, "already absent from Vault");
        }
        Err(err) => {
            let deadline = crate::policy::deletion_deadline(obj, ctx).unwrap_or(now);
            if now >= deadline {
                warn!(what, error = %err, "cleanup kept failing until the deletion timeout; releasing the finalizer");
                ctx.publish(&regarding, EventType::Warning, "FinalizerReleased", "Delete", format!(
                    "Removing {what} kept failing for {} after deletion ({err}); the finalizer was released and it may remain in Vault: remove it by hand if it must go",
                    humanize(ctx.options.deletion_timeout)
                )).await;
            } else {
                let old = obj.status().cloned().unwrap_or_default();
                let mut new = old.clone();
                set_condition(
                    &mut new.conditions,
                    ready(
                        false,
                        reasons::DELETING,
                        format!(
                            "removing {what} from Vault failed: {err}; retrying until {}, then the finalizer is released",
                            deadline.to_rfc3339()
                        ),
                        obj.meta().generation,
                        now,
                    ),
                );
                apply_status(api, &obj.name_any(), &new).await?;
                if ready_changed(&old.conditions, &new.conditions) {
                    warn!(what, error = %err, "cleanup failed");
                    ctx.publish(
                        &regarding,
                        EventType::Warning,
                        err.reason(),
                        "Delete",
                        format!("Removing {what} from Vault failed: {err}"),
                    )
                    .await;
                }
                return Err(err.into());
            }
        }
    }
    ctx.failures.reset(&key);
    Ok(Action::await_change())
}

fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

// ---------------------------------------------------------------------------------------
// Triggers (pure mappings over the reflector stores)
// ---------------------------------------------------------------------------------------

/// Which updates trigger a reconcile of the object itself: spec (generation),
/// finalizers, deletion and the [`RECONCILE_AT_ANNOTATION`]. Status-only updates
/// (including the operator's own status writes) do not.
pub fn predicate<K: Resource>(o: &K) -> Option<u64> {
    Some(crate::hash_of((
        o.meta().generation,
        o.finalizers(),
        o.meta().deletion_timestamp.is_some(),
        o.annotations().get(RECONCILE_AT_ANNOTATION),
    )))
}

fn ready_of(conditions: &[certus_api::Condition]) -> Option<String> {
    find_condition(conditions, condition_types::READY).map(|c| format!("{:?}", c.status))
}

/// Which SecretEngine/AuthMethod updates re-trigger the VaultRoles on their mount:
/// spec changes and changes of `Ready` (e.g. the mount was just created).
pub fn ready_predicate(generation: Option<i64>, status: Option<&VaultObjectStatus>) -> Option<u64> {
    Some(crate::hash_of((
        generation,
        status.and_then(|s| ready_of(&s.conditions)),
        status.and_then(|s| s.vault_path.clone()),
    )))
}

/// Which VaultPolicy updates re-trigger the VaultRoles referencing it: spec changes,
/// changes of `Ready` (the Vault policy now exists) and of its Vault name.
pub fn policy_ready_predicate(p: &VaultPolicy) -> Option<u64> {
    let status = p.status.as_ref();
    Some(crate::hash_of((
        p.metadata.generation,
        status.and_then(|s| ready_of(&s.conditions)),
        status.and_then(|s| s.vault_name.clone()),
    )))
}

/// The objects in `store` reconciled through connection `key`.
pub fn using_connection<K: ConfigKind>(store: &Store<K>, key: &ConnectionKey) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|o| &connection_key(o.as_ref()) == key)
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// The objects in `store` that read a value from Secret `namespace/name`.
pub fn reading_secret<K: ConfigKind>(
    store: &Store<K>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|o| {
            let own = namespace_of(o.as_ref());
            own == namespace
                && o.secret_refs()
                    .iter()
                    .any(|r| r.name == name && r.namespace.as_deref().is_none_or(|ns| ns == own))
        })
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// The connection a connection object is, as a key.
fn vc_key(c: &VaultConnection) -> ConnectionKey {
    ConnectionKey::Namespaced {
        namespace: c.namespace().unwrap_or_default(),
        name: c.name_any(),
    }
}

fn cvc_key(c: &ClusterVaultConnection) -> ConnectionKey {
    ConnectionKey::Cluster { name: c.name_any() }
}

/// What the shared side watches report.
enum Trigger {
    Connection(ConnectionKey),
    Secret {
        namespace: String,
        name: String,
        /// The VaultRole controlling it (a role id Secret).
        owner: Option<ObjectRef<VaultRole>>,
    },
}

impl Trigger {
    fn secret(s: &PartialObjectMeta<Secret>) -> Self {
        Trigger::Secret {
            namespace: s.namespace().unwrap_or_default(),
            name: s.name_any(),
            owner: crate::role::owner_of(&s.metadata),
        }
    }
}

/// Sends each trigger to the controllers it concerns.
struct Fanout {
    engines: Store<SecretEngine>,
    auths: Store<AuthMethod>,
    roles: Store<VaultRole>,
    engine_tx: UnboundedSender<ObjectRef<SecretEngine>>,
    auth_tx: UnboundedSender<ObjectRef<AuthMethod>>,
    role_tx: UnboundedSender<ObjectRef<VaultRole>>,
}

fn send_all<K: Resource>(tx: &UnboundedSender<ObjectRef<K>>, refs: Vec<ObjectRef<K>>)
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    for r in refs {
        // The receiver is gone only when its controller stopped (shutdown).
        let _ = tx.unbounded_send(r);
    }
}

impl Fanout {
    fn handle(&self, trigger: Trigger) {
        match trigger {
            Trigger::Connection(key) => {
                debug!(connection = %key, "connection changed; re-triggering its users");
                send_all(&self.engine_tx, using_connection(&self.engines, &key));
                send_all(&self.auth_tx, using_connection(&self.auths, &key));
                send_all(&self.role_tx, using_connection(&self.roles, &key));
            }
            Trigger::Secret {
                namespace,
                name,
                owner,
            } => {
                send_all(
                    &self.engine_tx,
                    reading_secret(&self.engines, &namespace, &name),
                );
                send_all(
                    &self.auth_tx,
                    reading_secret(&self.auths, &namespace, &name),
                );
                send_all(&self.role_tx, owner.into_iter().collect());
            }
        }
    }
}

/// Metadata-only watches of the Secrets in `scopes` (no values are transferred or held).
fn secret_metadata(
    client: &Client,
    scopes: Vec<Option<String>>,
    wc: watcher::Config,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    stream::select_all(scopes.into_iter().map(|ns| {
        // An `Api` of `PartialObjectMeta` makes metadata-only list and watch requests.
        let api: Api<PartialObjectMeta<Secret>> = match &ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        watcher::watcher(api, wc.clone())
            .default_backoff()
            .touched_objects()
            .boxed()
    }))
}

/// Builds the SecretEngine, AuthMethod and VaultRole controllers and the watches that
/// trigger them (see the module docs); the returned future runs them until `shutdown`.
pub(crate) fn controllers<S>(
    client: &Client,
    scopes: Vec<Option<String>>,
    wc: watcher::Config,
    ctx: Arc<Context>,
    config: controller::Config,
    shutdown: S,
) -> impl Future<Output = ()> + Send
where
    S: Future<Output = ()> + Clone + Send + Sync + 'static,
{
    let metrics = ctx.metrics.clone();
    let pc = PredicateConfig::default;

    // Each kind, filtered to the updates that concern its own reconcile.
    let (engine_store, engine_stream) = watch::reflected::<SecretEngine>(
        SecretEngine::KIND,
        client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let engine_stream = engine_stream.predicate_filter(predicate::<SecretEngine>, pc());
    let (auth_store, auth_stream) = watch::reflected::<AuthMethod>(
        AuthMethod::KIND,
        client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let auth_stream = auth_stream.predicate_filter(predicate::<AuthMethod>, pc());
    let (role_store, role_stream) = watch::reflected::<VaultRole>(
        VaultRole::KIND,
        client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let role_stream = role_stream.predicate_filter(predicate::<VaultRole>, pc());

    // What roles depend on, filtered to spec and readiness changes (own watches: the
    // controllers of those kinds need other filtering).
    let (_, engines_ready) = watch::reflected::<SecretEngine>(
        SecretEngine::KIND,
        client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let engines_ready = engines_ready.predicate_filter(
        |e: &SecretEngine| ready_predicate(e.metadata.generation, e.status.as_ref()),
        pc(),
    );
    let (_, auths_ready) = watch::reflected::<AuthMethod>(
        AuthMethod::KIND,
        client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let auths_ready = auths_ready.predicate_filter(
        |a: &AuthMethod| ready_predicate(a.metadata.generation, a.status.as_ref()),
        pc(),
    );
    let (_, policies_ready) = watch::reflected::<VaultPolicy>(
        crate::policy::KIND,
        client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let policies_ready = policies_ready.predicate_filter(policy_ready_predicate, pc());

    // Shared by the three controllers (one watch each, fanned out): connections and
    // Secrets.
    let (_, vc) = watch::reflected::<VaultConnection>(
        "VaultConnection",
        client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let vc = vc.predicate_filter(
        |c: &VaultConnection| {
            crate::connection_ready_predicate(c.metadata.generation, c.status.as_ref())
        },
        pc(),
    );
    let (_, cvc) = watch::reflected::<ClusterVaultConnection>(
        "ClusterVaultConnection",
        client,
        vec![None],
        wc.clone(),
        metrics,
    );
    let cvc = cvc.predicate_filter(
        |c: &ClusterVaultConnection| {
            crate::connection_ready_predicate(c.metadata.generation, c.status.as_ref())
        },
        pc(),
    );
    let secrets = secret_metadata(client, scopes, wc);
    let triggers = stream::select(
        stream::select(
            vc.map(|r| r.map(|c| Trigger::Connection(vc_key(&c)))),
            cvc.map(|r| r.map(|c| Trigger::Connection(cvc_key(&c)))),
        ),
        secrets.map(|r| r.map(|s| Trigger::secret(&s))),
    );
    let (engine_tx, engine_rx) = mpsc::unbounded();
    let (auth_tx, auth_rx) = mpsc::unbounded();
    let (role_tx, role_rx) = mpsc::unbounded();
    ctx.enable_claims(engine_store.clone(), engine_tx.clone());
    ctx.enable_claims(auth_store.clone(), auth_tx.clone());
    ctx.enable_claims(role_store.clone(), role_tx.clone());
    let fanout = Fanout {
        engines: engine_store.clone(),
        auths: auth_store.clone(),
        roles: role_store.clone(),
        engine_tx,
        auth_tx,
        role_tx,
    };
    let fan_out = triggers
        .take_until(shutdown.clone())
        .for_each(move |item| {
            match item {
                Ok(t) => fanout.handle(t),
                Err(e) => warn!(error = %e, "a trigger watch of the Vault configuration controllers failed; retrying with backoff"),
            }
            futures::future::ready(())
        });

    let engines = Controller::for_stream(engine_stream, engine_store)
        .with_config(config.clone())
        .reconcile_on(engine_rx)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            reconcile::<SecretEngine>,
            error_policy::<SecretEngine>,
            ctx.clone(),
        )
        .for_each(|r| async move { crate::log_result(SecretEngine::KIND, r) });
    let auths = Controller::for_stream(auth_stream, auth_store)
        .with_config(config.clone())
        .reconcile_on(auth_rx)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            reconcile::<AuthMethod>,
            error_policy::<AuthMethod>,
            ctx.clone(),
        )
        .for_each(|r| async move { crate::log_result(AuthMethod::KIND, r) });
    let (by_engine, by_auth, by_policy) =
        (role_store.clone(), role_store.clone(), role_store.clone());
    let roles = Controller::for_stream(role_stream, role_store)
        .with_config(config)
        .watches_stream(engines_ready, move |e: SecretEngine| {
            crate::role::roles_on_mount(&by_engine, MountTable::Secrets, e.mount_path())
        })
        .watches_stream(auths_ready, move |a: AuthMethod| {
            crate::role::roles_on_mount(&by_auth, MountTable::Auth, a.mount_path())
        })
        .watches_stream(policies_ready, move |p: VaultPolicy| {
            crate::role::roles_referencing(&by_policy, &p)
        })
        .reconcile_on(role_rx)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<VaultRole>, error_policy::<VaultRole>, ctx)
        .for_each(|r| async move { crate::log_result(VaultRole::KIND, r) });

    async move {
        tokio::join!(engines, auths, roles, fan_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::ConditionStatus;
    use certus_core::ResourceId;
    use kube::runtime::reflector;
    use serde_json::json;

    fn engine(ns: &str, name: &str, spec: serde_json::Value) -> SecretEngine {
        let mut e = SecretEngine::new(name, serde_json::from_value(spec).unwrap());
        e.metadata.namespace = Some(ns.into());
        e.metadata.generation = Some(1);
        e
    }

    fn store_of<K: ConfigKind>(objs: Vec<K>) -> Store<K> {
        let (reader, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objs {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        reader
    }

    fn names<K: Resource>(refs: Vec<ObjectRef<K>>) -> Vec<String> {
        let mut n: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    #[test]
    fn secret_refs_match_what_the_pipelines_resolve() {
        // Every Secret the pipeline reads is one the trigger mapping knows.
        let db = engine(
            "ns",
            "db",
            json!({"path": "database", "type": "database", "database": {"connections": [
                {"name": "a", "plugin": "postgresql-database-plugin", "connectionURL": "postgresql://{{username}}:{{password}}@h/db",
                 "username": "u", "passwordSecretRef": {"name": "pg-a", "key": "password"}},
                {"name": "b", "plugin": "postgresql-database-plugin", "connectionURL": "postgresql://{{username}}:{{password}}@h/db",
                 "username": "u", "passwordSecretRef": {"name": "pg-b", "key": "password"}}]}}),
        );
        let aws = engine(
            "ns",
            "aws",
            json!({"path": "aws", "type": "aws", "aws": {"accessKeyId": "AKIA", "secretAccessKeyRef": {"name": "aws-root", "key": "k"}}}),
        );
        let k8s = engine(
            "ns",
            "k8s",
            json!({"path": "kubernetes", "type": "kubernetes", "kubernetes": {"serviceAccountJWTSecretRef": {"name": "sa-jwt", "key": "token"}}}),
        );
        for e in [&db, &aws, &k8s] {
            let from_pipeline: Vec<String> = engine::desired(e)
                .unwrap()
                .objects
                .iter()
                .flat_map(|o| o.secrets.iter().map(|s| s.secret_ref.name.clone()))
                .collect();
            let mine: Vec<String> = e.secret_refs().iter().map(|r| r.name.clone()).collect();
            assert_eq!(mine, from_pipeline, "{}", e.name_any());
            assert!(!mine.is_empty());
        }
        let mut a = AuthMethod::new(
            "k",
            serde_json::from_value(json!({"path": "kubernetes", "type": "kubernetes",
                "kubernetes": {"kubernetesHost": "https://k", "tokenReviewerJWTSecretRef": {"name": "reviewer", "key": "token"}}}))
            .unwrap(),
        );
        a.metadata.namespace = Some("ns".into());
        let from_pipeline: Vec<String> = auth_method::desired(&a)
            .unwrap()
            .config
            .iter()
            .flat_map(|o| o.secrets.iter().map(|s| s.secret_ref.name.clone()))
            .collect();
        assert_eq!(from_pipeline, ["reviewer"]);
        let mine: Vec<&str> = a.secret_refs().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(mine, ["reviewer"]);

        // Mapping a Secret to its readers: same namespace only.
        let store = store_of(vec![db.clone(), aws.clone(), k8s.clone()]);
        assert_eq!(names(reading_secret(&store, "ns", "pg-b")), ["db"]);
        assert_eq!(names(reading_secret(&store, "ns", "aws-root")), ["aws"]);
        assert!(reading_secret(&store, "other", "pg-b").is_empty());
        assert!(reading_secret(&store, "ns", "unrelated").is_empty());
    }

    #[test]
    fn connection_mapping_follows_the_default_and_explicit_refs() {
        let default = engine("a", "one", json!({"path": "x", "type": "kv-v2"}));
        let explicit = engine(
            "a",
            "two",
            json!({"path": "y", "type": "kv-v2", "connectionRef": {"name": "shared", "kind": "ClusterVaultConnection"}}),
        );
        let elsewhere = engine("b", "three", json!({"path": "z", "type": "kv-v2"}));
        let store = store_of(vec![default, explicit, elsewhere]);
        let ns_default = ConnectionKey::Namespaced {
            namespace: "a".into(),
            name: "default".into(),
        };
        assert_eq!(names(using_connection(&store, &ns_default)), ["one"]);
        assert_eq!(
            names(using_connection(
                &store,
                &ConnectionKey::Cluster {
                    name: "shared".into()
                }
            )),
            ["two"]
        );
    }

    #[test]
    fn own_predicate_ignores_status_but_sees_the_reconcile_annotation() {
        let e = engine("ns", "e", json!({"path": "x", "type": "kv-v2"}));
        let base = predicate(&e);
        let mut with_status = e.clone();
        with_status.status = Some(VaultObjectStatus {
            applied_hash: Some("abc".into()),
            ..Default::default()
        });
        assert_eq!(predicate(&with_status), base);
        let mut annotated = e.clone();
        annotated.annotations_mut().insert(
            RECONCILE_AT_ANNOTATION.into(),
            "2026-01-01T00:00:00Z".into(),
        );
        assert_ne!(predicate(&annotated), base);
        let mut finalized = e.clone();
        finalized.finalizers_mut().push(FINALIZER.into());
        assert_ne!(predicate(&finalized), base);
        let mut newer = e;
        newer.metadata.generation = Some(2);
        assert_ne!(predicate(&newer), base);
    }

    #[test]
    fn ready_predicate_changes_when_ready_flips() {
        let t = DateTime::from_timestamp(1_000, 0).unwrap();
        let mut s = VaultObjectStatus::default();
        let none = ready_predicate(Some(1), None);
        set_condition(
            &mut s.conditions,
            ready(false, reasons::WAITING_FOR_DEPENDENCY, "x", Some(1), t),
        );
        let waiting = ready_predicate(Some(1), Some(&s));
        set_condition(
            &mut s.conditions,
            ready(true, reasons::RECONCILED, "ok", Some(1), t),
        );
        let ok = ready_predicate(Some(1), Some(&s));
        assert_ne!(none, waiting);
        assert_ne!(waiting, ok);
        // A resync that only moves lastSynced does not re-trigger anything.
        s.last_synced = Some(t);
        assert_eq!(ready_predicate(Some(1), Some(&s)), ok);
    }

    fn outcome(changes: Vec<(ChangeAction, &str, bool)>, written: bool) -> ConfigOutcome {
        let mut o = ConfigOutcome {
            changes: vec![],
            written,
            drift: false,
            in_sync: true,
            applied_hash: "h".into(),
            secret_hashes: Default::default(),
            managed: Default::default(),
            vault_path: "sys/mounts/x".into(),
            accessor: None,
            policies: vec![],
            role_id: None,
        };
        for (action, target, drift) in changes {
            o.drift |= drift;
            o.changes.push(Change {
                resource: ResourceId::new("SecretEngine", Some("ns"), "e"),
                action,
                target: target.into(),
                drift,
                detail: None,
            });
        }
        // Drift that was not written back leaves Vault out of sync (driftPolicy: Report).
        o.in_sync = written || !o.drift;
        o
    }

    #[test]
    fn events_for_created_updated_and_drift() {
        let old = VaultObjectStatus::default();
        let created = outcome(
            vec![
                (ChangeAction::Create, "sys/mounts/x", false),
                (ChangeAction::Create, "x/config", false),
            ],
            true,
        );
        let (t, reason, _, note) = success_event("SecretEngine", &old, &created).unwrap();
        assert_eq!((t, reason), (EventType::Normal, "Created"));
        assert_eq!(
            note,
            "SecretEngine written to Vault: create sys/mounts/x, create x/config"
        );

        let updated = outcome(
            vec![
                (ChangeAction::NoChange, "sys/mounts/x", false),
                (ChangeAction::Update, "x/config", false),
            ],
            true,
        );
        let (t, reason, _, note) = success_event("SecretEngine", &old, &updated).unwrap();
        assert_eq!((t, reason), (EventType::Normal, "Updated"));
        assert!(note.ends_with("update x/config"), "{note}");

        let corrected = outcome(vec![(ChangeAction::Update, "x/config", true)], true);
        let (t, reason, _, note) = success_event("SecretEngine", &old, &corrected).unwrap();
        assert_eq!((t, reason), (EventType::Warning, "Drifted"));
        assert!(note.starts_with("x/config was changed outside"), "{note}");
        assert!(note.contains("written back"), "{note}");

        // Reported drift: once, not on every resync while it stays.
        let reported = outcome(vec![(ChangeAction::Update, "x/config", true)], false);
        let (t, reason, _, note) = success_event("SecretEngine", &old, &reported).unwrap();
        assert_eq!((t, reason), (EventType::Warning, "Drifted"));
        assert!(note.contains("only reported"), "{note}");
        let mut already = VaultObjectStatus::default();
        reported.record(&mut already, Some(1), Utc::now());
        assert_eq!(
            find_condition(&already.conditions, "Ready").map(|c| c.status),
            Some(ConditionStatus::False)
        );
        assert!(success_event("SecretEngine", &already, &reported).is_none());

        let unchanged = outcome(vec![(ChangeAction::NoChange, "sys/mounts/x", false)], false);
        assert!(success_event("SecretEngine", &old, &unchanged).is_none());
    }

    #[test]
    fn failure_keeps_recorded_fields() {
        let t = DateTime::from_timestamp(1_000, 0).unwrap();
        let mut ok = VaultObjectStatus::default();
        outcome(vec![(ChangeAction::Create, "sys/mounts/x", false)], true).record(
            &mut ok,
            Some(1),
            t,
        );
        let err = ReconcileError::Dependency(
            "spec.kubernetes.mount: sys/auth/k/ does not exist yet".into(),
        );
        let s = failure_status(&ok, Some(2), &err, t);
        let r = find_condition(&s.conditions, "Ready").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str()),
            (ConditionStatus::False, "WaitingForDependency")
        );
        assert_eq!(r.observed_generation, Some(2));
        assert_eq!(s.applied_hash.as_deref(), Some("h"));
        assert_eq!(s.vault_path.as_deref(), Some("sys/mounts/x"));
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn humanize_durations() {
        assert_eq!(humanize(std::time::Duration::from_secs(600)), "10m");
        assert_eq!(humanize(std::time::Duration::from_secs(45)), "45s");
    }

    fn created(mut o: SecretEngine, secs: i64) -> SecretEngine {
        let at = chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap();
        o.metadata.creation_timestamp =
            Some(serde_json::from_value(serde_json::json!(at.to_rfc3339())).unwrap());
        o
    }

    #[test]
    fn two_engines_on_one_mount_through_one_connection_the_older_owns_it() {
        let spec = serde_json::json!({"path": "shared", "type": "kv-v2"});
        let a = created(engine("ns", "a", spec.clone()), 10);
        let b = created(engine("ns", "b", spec.clone()), 20);
        let elsewhere = created(
            engine(
                "ns",
                "c",
                serde_json::json!({"path": "other", "type": "kv-v2"}),
            ),
            0,
        );
        let all: Vec<Arc<SecretEngine>> = [&a, &b, &elsewhere]
            .into_iter()
            .cloned()
            .map(Arc::new)
            .collect();
        assert!(check_claim(&a, &all).is_ok(), "the older owns the mount");
        let err = check_claim(&b, &all).unwrap_err();
        assert!(matches!(err, ReconcileError::Conflict(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("sys/mounts/shared")
                && text.contains("SecretEngine ns/a")
                && text.contains("nothing was written"),
            "{text}"
        );
        assert!(check_claim(&elsewhere, &all).is_ok());

        // The owner is being deleted: the other waits (retryable), then owns it.
        let mut deleting = a.clone();
        deleting.metadata.deletion_timestamp = b.metadata.creation_timestamp.clone();
        let all2: Vec<Arc<SecretEngine>> = vec![Arc::new(deleting), Arc::new(b.clone())];
        let err = check_claim(&b, &all2).unwrap_err();
        assert!(
            matches!(err, ReconcileError::Dependency(_)) && err.retryable(),
            "{err:?}"
        );
        assert!(check_claim(&b, &[Arc::new(b.clone())]).is_ok());

        // Another namespace uses its own connection `default`: no conflict (claims are
        // per connection, as for VaultPolicy).
        let other_ns = created(engine("team-b", "a", spec), 0);
        let all3: Vec<Arc<SecretEngine>> = vec![Arc::new(other_ns), Arc::new(b.clone())];
        assert!(check_claim(&b, &all3).is_ok());
    }

    #[test]
    fn roles_conflict_only_on_the_same_mount_and_name() {
        let role = |name: &str, mount: &str, role_name: Option<&str>| {
            let mut spec = serde_json::json!({"kubernetes": {"mount": mount,
                "boundServiceAccountNames": ["app"], "boundServiceAccountNamespaces": ["apps"]}});
            if let Some(n) = role_name {
                spec["name"] = n.into();
            }
            let mut r = VaultRole::new(name, serde_json::from_value(spec).unwrap());
            r.metadata.namespace = Some("ns".into());
            r
        };
        let a = role("a", "kubernetes", Some("app"));
        let same = role("app", "kubernetes", None);
        let other_mount = role("c", "k8s-2", Some("app"));
        assert_eq!(
            a.claim_target().as_deref(),
            Some("auth/kubernetes/role/app")
        );
        let all: Vec<Arc<VaultRole>> = [&a, &same, &other_mount]
            .into_iter()
            .cloned()
            .map(Arc::new)
            .collect();
        // No creation timestamps: namespace, then name decide ("a" < "app").
        assert!(check_claim(&a, &all).is_ok());
        assert!(matches!(
            check_claim(&same, &all),
            Err(ReconcileError::Conflict(_))
        ));
        assert!(check_claim(&other_mount, &all).is_ok());
    }
}
