//! Kubernetes controllers of certus-vault-operator (kube-runtime).
//!
//! [`run`] starts, in one process and sharing one Vault [`SessionCache`]
//! (one login per identity):
//! - the `VaultConnection` and `ClusterVaultConnection` controllers ([`connection`]):
//!   credentials, login and health, re-checked every `connection_check_interval`;
//! - the `VaultPolicy` controller ([`policy`]): ACL policies with a finalizer, claim
//!   conflicts, drift detection every `resync_interval`, re-triggered when the connection
//!   it uses changes or becomes ready.
//! - the `SecretEngine`, `AuthMethod` and `VaultRole` controllers ([`config`], [`role`]):
//!   mounts, auth methods and roles with a finalizer honouring `deletionPolicy`,
//!   dependencies waited for with backoff, drift detection every `resync_interval`;
//!   re-triggered by the Secrets they read and, for roles, by the mounts and
//!   VaultPolicies they need becoming ready.
//! - the `AuditAlertRule` controller and, with `--audit-file`/`--audit-socket`, the Vault
//!   audit stream ([`audit`]): rules loaded into the audit engine, alerts as Events, and
//!   the audit sources, read only by the leader since only the leader runs [`run`].
//!
//! Every watch goes through a deserialize guard ([`watch`]): an object that cannot be
//! decoded is logged and skipped instead of stalling its controller.
//!
//! Status is written with server-side apply on the status subresource (field manager
//! [`certus_api::FIELD_MANAGER`], forced). With several replicas only the holder of a
//! Lease runs [`run`]: see [`leader::supervise`]. [`server`] serves `/metrics`,
//! `/livez` and `/readyz`.
//!
//! [`SessionCache`]: certus_vault_client::SessionCache
#![forbid(unsafe_code)]

pub mod audit;
pub mod backoff;
mod claim;
pub mod config;
pub mod connection;
pub mod context;
pub mod crds;
pub mod dynamic;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod options;
pub mod policy;
pub mod projection;
pub mod resolve;
pub mod role;
pub mod rotation;
pub mod server;
pub mod static_secret;
pub mod status;
pub mod testing;
pub mod token_store;
pub mod watch;

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use certus_api::{
    condition_types, find_condition, ClusterVaultConnection, VaultConnection, VaultPolicy,
    ADOPT_ANNOTATION,
};
use futures::{FutureExt, StreamExt};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, PredicateConfig, WatchStreamExt};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use tracing::{debug, info, warn};

pub use context::Context;
pub use error::Error;
pub use leader::{supervise, LeaderElector, LeaderStatus, LeaseTimings};
pub use metrics::Metrics;
pub use options::{RunOptions, SharedSessions};
pub use resolve::{ConnectionKey, KubeResolver};

fn hash_of(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Which VaultPolicy updates trigger a reconcile: spec (generation), finalizers, deletion,
/// the adopt annotation and the `vault.certus.io/reconcile-at` annotation
/// ([`certus_api::annotations::RECONCILE_AT`]: set it to a new value to reconcile now).
/// Status-only updates (including the operator's own status writes) do not.
pub fn policy_predicate(p: &VaultPolicy) -> Option<u64> {
    Some(hash_of((
        p.metadata.generation,
        p.finalizers(),
        p.metadata.deletion_timestamp.is_some(),
        p.annotations().get(ADOPT_ANNOTATION),
        p.annotations().get(certus_api::annotations::RECONCILE_AT),
    )))
}

/// Which connection updates trigger the connection controller: spec changes, deletion
/// and the `vault.certus.io/reconcile-at` annotation (check the connection now, e.g.
/// after fixing Vault); it re-checks on its own schedule, and its status writes must
/// not re-trigger it.
pub fn connection_predicate<K: Resource>(c: &K) -> Option<u64> {
    Some(hash_of((
        c.meta().generation,
        c.meta().deletion_timestamp.is_some(),
        c.meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(certus_api::annotations::RECONCILE_AT)),
    )))
}

/// Which connection updates re-trigger the policies that use it: spec changes and
/// changes of its `Ready` status (e.g. it just became usable).
pub fn connection_ready_predicate(
    generation: Option<i64>,
    status: Option<&certus_api::VaultConnectionStatus>,
) -> Option<u64> {
    let ready = status
        .and_then(|s| find_condition(&s.conditions, condition_types::READY))
        .map(|c| format!("{:?}", c.status));
    Some(hash_of((generation, ready)))
}

/// The CRDs the controllers of this crate need.
pub fn crd_names() -> Vec<String> {
    vec![
        VaultConnection::crd_name().to_string(),
        ClusterVaultConnection::crd_name().to_string(),
        VaultPolicy::crd_name().to_string(),
        certus_api::StaticSecret::crd_name().to_string(),
        certus_api::RotationPolicy::crd_name().to_string(),
        certus_api::SecretEngine::crd_name().to_string(),
        certus_api::AuthMethod::crd_name().to_string(),
        certus_api::VaultRole::crd_name().to_string(),
        certus_api::DynamicCredential::crd_name().to_string(),
        certus_api::AuditAlertRule::crd_name().to_string(),
    ]
}

fn log_result<K, E>(
    kind: &'static str,
    result: Result<(ObjectRef<K>, controller::Action), controller::Error<E, watcher::Error>>,
) where
    K: Resource,
    K::DynamicType: std::fmt::Debug,
    E: std::error::Error + 'static,
{
    match result {
        Ok((obj, action)) => debug!(kind, object = %obj, ?action, "reconciled"),
        // Already reported in status/Events and logged by the reconcile.
        Err(controller::Error::ReconcilerFailed(e, obj)) => {
            debug!(kind, object = %obj, error = %e, "reconcile failed")
        }
        Err(controller::Error::ObjectNotFound(obj)) => {
            debug!(kind, object = %obj, "object gone before its reconcile")
        }
        Err(controller::Error::QueueError(e)) => {
            warn!(kind, error = %e, "watch failed; retrying with backoff")
        }
        Err(e) => warn!(kind, error = %e, "controller error"),
    }
}

/// Runs the controllers until `shutdown` resolves.
///
/// Waits until the CRDs are established (polling them, with a log line saying what is
/// missing), then runs the `VaultConnection`, `ClusterVaultConnection` and `VaultPolicy`
/// controllers sharing one [`Context`]. When `shutdown` resolves, no new reconcile
/// starts, running ones finish, and every Vault token obtained by login is revoked.
pub async fn run(
    client: Client,
    opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown.boxed().shared();
    let names = crd_names();
    tokio::select! {
        _ = crds::wait_for_crds(&client, &names, opts.crd_poll_interval) => {}
        _ = shutdown.clone() => {
            info!("shutdown requested while waiting for the CustomResourceDefinitions");
            return Ok(());
        }
    }

    let metrics = opts.metrics.clone();
    let wc = watcher::Config::default();
    let scopes = opts.namespaced_scopes();
    let all = vec![None];

    let (policy_store, policy_stream) = watch::reflected::<VaultPolicy>(
        policy::KIND,
        &client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let policy_stream =
        policy_stream.predicate_filter(policy_predicate, PredicateConfig::default());

    let (vc_store, vc_stream) = watch::reflected::<VaultConnection>(
        "VaultConnection",
        &client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let vc_stream = vc_stream.predicate_filter(connection_predicate, PredicateConfig::default());
    let (cvc_store, cvc_stream) = watch::reflected::<ClusterVaultConnection>(
        "ClusterVaultConnection",
        &client,
        all.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let cvc_stream = cvc_stream.predicate_filter(connection_predicate, PredicateConfig::default());

    // Connection changes that re-trigger the policies using them (own watches: the
    // policy controller needs different filtering than the connection controllers).
    let (_, vc_trigger) = watch::reflected::<VaultConnection>(
        "VaultConnection",
        &client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let vc_trigger = vc_trigger.predicate_filter(
        |c: &VaultConnection| connection_ready_predicate(c.metadata.generation, c.status.as_ref()),
        PredicateConfig::default(),
    );
    let (_, cvc_trigger) = watch::reflected::<ClusterVaultConnection>(
        "ClusterVaultConnection",
        &client,
        all,
        wc.clone(),
        metrics.clone(),
    );
    let cvc_trigger = cvc_trigger.predicate_filter(
        |c: &ClusterVaultConnection| {
            connection_ready_predicate(c.metadata.generation, c.status.as_ref())
        },
        PredicateConfig::default(),
    );

    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(
        Context::new(client.clone(), opts.clone(), policy_store.clone())
            .with_policy_trigger(trigger_tx),
    );
    let config = controller::Config::default()
        .concurrency(opts.concurrency)
        .debounce(opts.debounce);

    // StaticSecret (owns its Secret; re-triggered when a RotationPolicy rotates the KV
    // path it reads) and RotationPolicy controllers.
    let (ss_store, ss_stream) = watch::reflected::<certus_api::StaticSecret>(
        static_secret::KIND,
        &client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let ss_stream =
        ss_stream.predicate_filter(static_secret::predicate, PredicateConfig::default());
    let (_, owned_secrets) = watch::reflected::<k8s_openapi::api::core::v1::Secret>(
        "Secret",
        &client,
        scopes.clone(),
        wc.clone()
            .labels("app.kubernetes.io/managed-by=certus-vault-operator"),
        metrics.clone(),
    );
    let (rot_store, rot_stream) = watch::reflected::<certus_api::RotationPolicy>(
        rotation::KIND,
        &client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let rot_stream = rot_stream.predicate_filter(rotation::predicate, PredicateConfig::default());
    let (_, rot_trigger) = watch::reflected::<certus_api::RotationPolicy>(
        rotation::KIND,
        &client,
        scopes.clone(),
        wc.clone(),
        metrics.clone(),
    );
    let rot_trigger = rot_trigger.predicate_filter(
        static_secret::rotation_trigger_predicate,
        PredicateConfig::default(),
    );
    let by_rotation = ss_store.clone();
    let static_secrets = Controller::for_stream(ss_stream, ss_store)
        .with_config(config.clone())
        .owns_stream(owned_secrets)
        .watches_stream(rot_trigger, move |p: certus_api::RotationPolicy| {
            static_secret::consumers_of(&by_rotation, &p)
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(
            static_secret::reconcile,
            static_secret::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move { log_result(static_secret::KIND, r) });
    let rotations = Controller::for_stream(rot_stream, rot_store.clone())
        .with_config(config.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(rotation::reconcile, rotation::error_policy, ctx.clone())
        .for_each(|r| async move { log_result(rotation::KIND, r) });
    let prune_rotation_metrics = rotation::prune_loop(
        rot_store,
        metrics.rotation.clone(),
        std::time::Duration::from_secs(60),
        shutdown.clone(),
    );
    // DynamicCredential (owns its Secret through a metadata watch that sees deletions).
    let dynamic_credentials = dynamic::controller(
        &client,
        scopes.clone(),
        wc.clone(),
        ctx.clone(),
        config.clone(),
        shutdown.clone(),
    );

    // SecretEngine, AuthMethod and VaultRole (re-triggered by their connections, the
    // Secrets they read, and for roles the mounts and VaultPolicies they depend on).
    let vault_config = config::controllers(
        &client,
        scopes.clone(),
        wc.clone(),
        ctx.clone(),
        config.clone(),
        shutdown.clone(),
    );
    // AuditAlertRule (always) and, with an audit source configured, the audit stream:
    // only the leader runs `run`, so only the leader reads the audit file or socket.
    let audit = audit::run(
        client.clone(),
        ctx.clone(),
        &opts,
        config.clone(),
        shutdown.clone(),
    )?;

    let by_vc = policy_store.clone();
    let by_cvc = policy_store.clone();
    let policies = Controller::for_stream(policy_stream, policy_store)
        .with_config(config.clone())
        .watches_stream(vc_trigger, move |c: VaultConnection| {
            let key = ConnectionKey::Namespaced {
                namespace: c.namespace().unwrap_or_default(),
                name: c.name_any(),
            };
            policy::policies_using(&by_vc, &key)
        })
        .watches_stream(cvc_trigger, move |c: ClusterVaultConnection| {
            policy::policies_using(&by_cvc, &ConnectionKey::Cluster { name: c.name_any() })
        })
        .reconcile_on(trigger_rx)
        .graceful_shutdown_on(shutdown.clone())
        .run(policy::reconcile, policy::error_policy, ctx.clone())
        .for_each(|r| async move { log_result(policy::KIND, r) });

    let connections = Controller::for_stream(vc_stream, vc_store)
        .with_config(config.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            connection::reconcile::<VaultConnection>,
            connection::error_policy::<VaultConnection>,
            ctx.clone(),
        )
        .for_each(|r| async move { log_result("VaultConnection", r) });

    let cluster_connections = Controller::for_stream(cvc_stream, cvc_store)
        .with_config(config)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            connection::reconcile::<ClusterVaultConnection>,
            connection::error_policy::<ClusterVaultConnection>,
            ctx.clone(),
        )
        .for_each(|r| async move { log_result("ClusterVaultConnection", r) });

    let ready = metrics.ready_guard();
    info!(
        namespaces = %if opts.namespaces.is_empty() { "*".to_string() } else { opts.namespaces.join(",") },
        concurrency = opts.concurrency,
        resync = ?opts.resync_interval,
        "controllers started"
    );
    tokio::join!(
        policies,
        connections,
        cluster_connections,
        static_secrets,
        rotations,
        prune_rotation_metrics,
        vault_config,
        dynamic_credentials,
        audit
    );
    drop(ready);
    info!("controllers stopped; revoking the Vault tokens obtained by login");
    ctx.sessions.revoke_all().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_predicate_sees_spec_and_reconcile_at_not_status() {
        let mut c: VaultConnection = serde_json::from_value(serde_json::json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultConnection",
            "metadata": {"name": "v", "namespace": "n", "generation": 1},
            "spec": {"address": "http://127.0.0.1:8200",
                     "auth": {"kubernetes": {"role": "r", "serviceAccountName": "sa"}}}
        }))
        .unwrap();
        let a = connection_predicate(&c);
        c.status = Some(Default::default());
        assert_eq!(
            connection_predicate(&c),
            a,
            "status writes do not re-trigger"
        );
        c.metadata.annotations = Some(
            [(
                certus_api::annotations::RECONCILE_AT.to_string(),
                "1".to_string(),
            )]
            .into(),
        );
        let b = connection_predicate(&c);
        assert_ne!(b, a, "reconcile-at re-checks now");
        c.metadata.generation = Some(2);
        assert_ne!(connection_predicate(&c), b, "a spec change re-checks");
    }
}
