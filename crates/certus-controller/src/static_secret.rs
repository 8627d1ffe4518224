//! The `StaticSecret` controller.
//!
//! resolve the connection → the shared `certus_reconcile::static_secret::reconcile`
//! (metadata read; data read and Secret write only when something changed; restarts only
//! when the data changed) → status → Events. Requeued every `refreshInterval`; the
//! projected Secret is `.owns()`-watched (a deleted or edited Secret is restored at once),
//! and a `RotationPolicy` that rotates the same KV path re-triggers it right after the
//! rotation. No finalizer: the Secret is garbage-collected with its owner and nothing in
//! Vault belongs to a StaticSecret.

use std::sync::Arc;
use std::time::Duration;

use certus_api::{reasons, set_condition, RotationPolicy, StaticSecret, StaticSecretStatus};
use certus_core::Action as ChangeAction;
use certus_reconcile::static_secret::{self as pipeline, StaticLast, StaticOutcome};
use certus_reconcile::{Mode, ReconcileError};
use chrono::{DateTime, Utc};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use crate::backoff::error_action;
use crate::context::Context;
use crate::error::Error;
use crate::projection::{KubeRestarter, KubeSecretStore};
use crate::resolve::session_for;
use crate::status::{self, apply_status, ready, ready_changed, set_failed};

/// The kind label used in metrics and logs.
pub const KIND: &str = "StaticSecret";

fn namespace_of(s: &StaticSecret) -> String {
    s.namespace().unwrap_or_else(|| "default".to_string())
}

/// The refresh interval, falling back to the default for an invalid spec (which is
/// reported by the pipeline).
fn refresh_of(s: &StaticSecret) -> Duration {
    s.spec
        .refresh()
        .unwrap_or(certus_api::DEFAULT_REFRESH_INTERVAL)
}

/// Status after a successful reconcile (pure).
pub fn success_status(
    old: &StaticSecretStatus,
    generation: Option<i64>,
    o: &StaticOutcome,
    now: DateTime<Utc>,
) -> StaticSecretStatus {
    let mut s = old.clone();
    let version = o
        .synced_version
        .map(|v| format!(" version {v}"))
        .unwrap_or_default();
    let message = if o.written {
        format!(
            "Secret {} updated from {}{version}",
            o.secret_name, o.source
        )
    } else {
        format!("Secret {} matches {}{version}", o.secret_name, o.source)
    };
    set_condition(
        &mut s.conditions,
        ready(true, reasons::RECONCILED, message, generation, now),
    );
    s.observed_generation = generation;
    s.source = Some(o.source.clone());
    s.synced_version = o.synced_version;
    s.last_sync_time = Some(now);
    if o.data_changed || s.last_change_time.is_none() && o.written {
        s.last_change_time = Some(now);
    }
    s.data_hash = Some(o.data_hash.clone());
    s.secret_name = Some(o.secret_name.clone());
    s
}

/// Status after a failed reconcile (pure): `Ready=False`, earlier facts kept.
pub fn failure_status(
    old: &StaticSecretStatus,
    s: &StaticSecret,
    err: &ReconcileError,
    now: DateTime<Utc>,
) -> StaticSecretStatus {
    let mut new = old.clone();
    set_failed(&mut new.conditions, err, s.metadata.generation, now);
    new.observed_generation = s.metadata.generation;
    new.source = Some(s.spec.source());
    new
}

/// Reconciles one `StaticSecret` (entry point of the controller).
#[instrument(skip_all, fields(kind = KIND, namespace = %namespace_of(&obj), name = %obj.name_any()))]
pub async fn reconcile(obj: Arc<StaticSecret>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(KIND);
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let s = obj.as_ref();
    let ns = namespace_of(s);
    let api: Api<StaticSecret> = Api::namespaced(ctx.client.clone(), &ns);
    let old = s.status.clone().unwrap_or_default();
    let last = StaticLast::from(&old);
    let regarding = s.object_ref(&());
    let now = status::now();
    let result = async {
        pipeline::validate(&s.spec)?;
        let session = session_for(&ctx, &ns, s.spec.connection_ref.as_ref()).await?;
        let store = KubeSecretStore::new(ctx.client.clone());
        let restarter = KubeRestarter::new(ctx.client.clone());
        pipeline::reconcile(&session, s, &last, &store, &restarter, Mode::Apply, now).await
    }
    .await;
    match result {
        Ok(o) => {
            let new = success_status(&old, s.metadata.generation, &o, now);
            if new != old {
                apply_status(&api, &s.name_any(), &new).await?;
            }
            if o.written {
                let what = match o.change.action {
                    ChangeAction::Create => "Created",
                    _ if o.change.drift => "Restored",
                    _ => "Updated",
                };
                info!(secret = %o.secret_name, version = ?o.synced_version, data_changed = o.data_changed, "wrote Secret");
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    what,
                    "SyncSecret",
                    format!(
                        "{what} Secret {} from {}{}",
                        o.secret_name,
                        o.source,
                        o.synced_version
                            .map(|v| format!(" version {v}"))
                            .unwrap_or_default()
                    ),
                )
                .await;
            }
            if !o.restarted.is_empty() {
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    "RolloutRestarted",
                    "RestartWorkloads",
                    format!(
                        "The data of Secret {} changed: restarted {}",
                        o.secret_name,
                        o.restarted.join(", ")
                    ),
                )
                .await;
            }
            ctx.failures.reset(&ObjectRef::from_obj(s).erase());
            debug!(requeue = ?o.requeue, full_read = o.full_read, "synced");
            Ok(Action::requeue(o.requeue))
        }
        Err(err) => {
            let new = failure_status(&old, s, &err, now);
            apply_status(&api, &s.name_any(), &new).await?;
            if ready_changed(&old.conditions, &new.conditions) {
                warn!(reason = err.reason(), error = %err, "sync failed");
                ctx.publish(
                    &regarding,
                    EventType::Warning,
                    err.reason(),
                    "SyncSecret",
                    err.to_string(),
                )
                .await;
            }
            Err(err.into())
        }
    }
}

/// Requeue after a failure: backoff, but never later than the refresh interval.
pub fn error_policy(obj: Arc<StaticSecret>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(KIND, err.category());
    error_action(obj.as_ref(), err, &ctx, Some(refresh_of(&obj)))
}

/// The StaticSecrets that read the KV path a `RotationPolicy` rotates (same namespace,
/// same mount and path): re-triggered when the policy's current version changes.
pub fn consumers_of(
    store: &Store<StaticSecret>,
    p: &RotationPolicy,
) -> Vec<ObjectRef<StaticSecret>> {
    let Some(kv) = &p.spec.kv else {
        return vec![];
    };
    let ns = p.namespace();
    let norm = |s: &str| s.trim_matches('/').to_string();
    store
        .state()
        .iter()
        .filter(|s| {
            s.namespace() == ns
                && norm(&s.spec.mount) == norm(&kv.mount)
                && norm(&s.spec.path) == norm(&kv.path)
                && s.spec.kv_version == 2
                && s.spec.version.is_none()
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// `vault.certus.io/reconcile-at`: a new value forces a reconcile (e.g. a refresh now).
pub use certus_api::annotations::RECONCILE_AT;

/// Which StaticSecret updates trigger a reconcile: spec changes, deletion and the
/// reconcile-at annotation; not the operator's own status writes.
pub fn predicate(s: &StaticSecret) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        s.metadata.generation,
        s.metadata.deletion_timestamp.is_some(),
        s.annotations().get(RECONCILE_AT),
    )
        .hash(&mut h);
    Some(h.finish())
}

/// Which RotationPolicy updates re-trigger the StaticSecrets reading its KV path: a new
/// current version.
pub fn rotation_trigger_predicate(p: &RotationPolicy) -> Option<u64> {
    p.status.as_ref().and_then(|s| s.current_version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_core::{Change, ResourceId};
    use kube::runtime::reflector;

    fn ss(ns: &str, name: &str, mount: &str, path: &str) -> StaticSecret {
        let mut s = StaticSecret::new(
            name,
            serde_json::from_value(serde_json::json!({"mount": mount, "path": path})).unwrap(),
        );
        s.metadata.namespace = Some(ns.into());
        s
    }

    #[test]
    fn status_records_sync_and_change_times() {
        let t0 = Utc::now();
        let o = StaticOutcome {
            change: Change {
                resource: ResourceId::new("StaticSecret", Some("n"), "a"),
                action: ChangeAction::Update,
                target: "Secret n/a".into(),
                drift: false,
                detail: None,
            },
            written: true,
            data_changed: true,
            full_read: true,
            restarted: vec![],
            synced_version: Some(3),
            data_hash: "h".into(),
            secret_name: "a".into(),
            source: "kv/p".into(),
            requeue: Duration::from_secs(60),
        };
        let s = success_status(&StaticSecretStatus::default(), Some(2), &o, t0);
        assert_eq!(s.synced_version, Some(3));
        assert_eq!(s.last_change_time, Some(t0));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.conditions[0].status, certus_api::ConditionStatus::True);
        let later = t0 + chrono::Duration::seconds(60);
        let quiet = StaticOutcome {
            written: false,
            data_changed: false,
            ..o
        };
        let s2 = success_status(&s, Some(2), &quiet, later);
        assert_eq!(
            s2.last_change_time,
            Some(t0),
            "unchanged data keeps the change time"
        );
        assert_eq!(s2.last_sync_time, Some(later));
        let err = ReconcileError::Dependency("KV secret kv/p does not exist (yet)".into());
        let f = failure_status(&s2, &ss("n", "a", "kv", "p"), &err, later);
        assert_eq!(f.conditions[0].reason, "WaitingForDependency");
        assert_eq!(f.synced_version, Some(3), "earlier facts are kept");
    }

    #[test]
    fn rotation_policies_trigger_their_consumers() {
        let (reader, mut writer) = reflector::store::<StaticSecret>();
        for s in [
            ss("n", "same", "certus", "mcp/assurance"),
            ss("n", "slashes", "certus/", "/mcp/assurance"),
            ss("n", "other-path", "certus", "mcp/trust"),
            ss("m", "other-ns", "certus", "mcp/assurance"),
        ] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(s));
        }
        let mut p = RotationPolicy::new(
            "mcp",
            serde_json::from_value(serde_json::json!({"interval": "7d", "kv": {"mount": "certus", "path": "mcp/assurance", "keys": [{"key": "t", "token": {}}]}})).unwrap(),
        );
        p.metadata.namespace = Some("n".into());
        let mut names: Vec<String> = consumers_of(&reader, &p)
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.sort();
        assert_eq!(names, ["same", "slashes"]);
        assert_eq!(rotation_trigger_predicate(&p), None);
    }
}
