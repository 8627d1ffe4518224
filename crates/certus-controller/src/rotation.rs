//! The `RotationPolicy` controller.
//!
//! resolve the connection → the shared `certus_reconcile::rotation::reconcile` (decide
//! from Vault's record of the last change; rotate with check-and-set; end grace periods)
//! → status (last/next rotation, current version, history, `RotationDue`) → Events and
//! the rotation metrics. Requeued at the next rotation or the end of a grace period,
//! whichever comes first (at most every 5 minutes). No finalizer: deleting a policy
//! stops rotations and leaves the secret as it is.
//!
//! Metrics (exact names; a PrometheusRule alerts on the first):
//! `certus_rotation_due{namespace,name}` (1 when a manual secret is overdue or an
//! automatic rotation is failing), `certus_rotation_last_rotated_timestamp_seconds` and
//! `certus_rotation_next_timestamp_seconds`. Series of deleted policies are removed by
//! [`prune_metrics`].

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use certus_api::{
    condition_types, find_condition, rotation_conditions as rc, set_condition, Condition,
    ConditionStatus, RotationPolicy, RotationPolicyStatus,
};
use certus_core::rotation::SystemClock;
use certus_reconcile::rotation::{
    self as pipeline, RotationError, RotationLast, RotationResult, MAX_REQUEUE,
};
use certus_reconcile::Mode;
use chrono::{DateTime, Utc};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use tracing::{debug, info, instrument, warn};

use crate::backoff::error_action;
use crate::context::Context;
use crate::error::Error;
use crate::projection::{KubeRestarter, KubeSecretStore};
use crate::resolve::session_for;
use crate::status::{self, apply_status, ready, ready_changed};

/// The kind label used in metrics and logs.
pub const KIND: &str = "RotationPolicy";

/// Labels of the rotation metrics: one series per policy (bounded by the number of
/// RotationPolicy objects).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub name: String,
}

/// The rotation gauges.
#[derive(Debug, Default, Clone)]
pub struct RotationMetrics {
    due: Family<PolicyLabels, Gauge>,
    last_rotated: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    next: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    /// The label sets set so far (a `Family` cannot be iterated).
    known: Arc<std::sync::Mutex<std::collections::HashSet<PolicyLabels>>>,
}

impl RotationMetrics {
    /// Registers the gauges without a prefix (their names are part of the alerting API).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "certus_rotation_due",
            "1 when a RotationPolicy's secret is due and not rotated (manual secrets older than their interval, failing rotations)",
            self.due.clone(),
        );
        registry.register(
            "certus_rotation_last_rotated_timestamp_seconds",
            "Unix time of the last change of a RotationPolicy's secret",
            self.last_rotated.clone(),
        );
        registry.register(
            "certus_rotation_next_timestamp_seconds",
            "Unix time a RotationPolicy's secret is next due",
            self.next.clone(),
        );
    }

    /// Records a policy's state.
    pub fn set(
        &self,
        namespace: &str,
        name: &str,
        due: bool,
        last: Option<DateTime<Utc>>,
        next: Option<DateTime<Utc>>,
    ) {
        let l = PolicyLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.due.get_or_create(&l).set(i64::from(due));
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(l.clone());
        match last {
            Some(t) => {
                self.last_rotated.get_or_create(&l).set(t.timestamp());
            }
            None => {
                self.last_rotated.remove(&l);
            }
        }
        match next {
            Some(t) => {
                self.next.get_or_create(&l).set(t.timestamp());
            }
            None => {
                self.next.remove(&l);
            }
        }
    }

    /// The `certus_rotation_due` value of a policy (tests).
    pub fn due(&self, namespace: &str, name: &str) -> Option<i64> {
        let l = PolicyLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.due.get(&l).map(|g| g.get())
    }

    /// Removes the series of policies `keep` does not hold (deleted policies).
    pub fn retain(&self, keep: &std::collections::HashSet<(String, String)>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|l| {
            let stays = keep.contains(&(l.namespace.clone(), l.name.clone()));
            if !stays {
                self.due.remove(l);
                self.last_rotated.remove(l);
                self.next.remove(l);
            }
            stays
        });
    }
}

/// Drops the metric series of policies that no longer exist.
pub fn prune_metrics(store: &Store<RotationPolicy>, metrics: &RotationMetrics) {
    let keep = store
        .state()
        .iter()
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    metrics.retain(&keep);
}

fn namespace_of(p: &RotationPolicy) -> String {
    p.namespace().unwrap_or_else(|| "default".to_string())
}

fn due_condition(
    due: bool,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    Condition::new(
        rc::ROTATION_DUE,
        if due {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        if due { rc::OVERDUE } else { rc::NOT_DUE },
        message,
        generation,
        now,
    )
}

/// Status after a successful reconcile (pure).
pub fn success_status(
    old: &RotationPolicyStatus,
    generation: Option<i64>,
    r: &RotationResult,
    now: DateTime<Utc>,
) -> RotationPolicyStatus {
    let mut s = old.clone();
    s.observed_generation = generation;
    s.target = Some(r.target.clone());
    s.when = Some(r.when.clone());
    s.last_rotated = r.last_change.or(s.last_rotated);
    s.next_rotation = r.next_rotation;
    s.grace_ends = r.grace_ends;
    s.current_version = r.current_version.or(s.current_version);
    s.handled_rotate_now = r
        .handled_rotate_now
        .clone()
        .or(s.handled_rotate_now.clone());
    s.secret_name = r.secret_name.clone();
    for rec in &r.records {
        s.record(rec.clone());
    }
    let next = r
        .next_rotation
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "unknown".into());
    let (reason, message) = match (r.rotated, r.grace_ended, r.rotation_due) {
        (true, _, _) => (
            rc::ROTATED,
            format!(
                "rotated{}; next rotation {next}",
                r.current_version
                    .map(|v| format!(" to version {v}"))
                    .unwrap_or_default()
            ),
        ),
        (_, true, _) => (
            rc::UP_TO_DATE,
            format!("grace period ended: the previous value is gone; next rotation {next}"),
        ),
        (_, _, Some(true)) => (
            rc::UP_TO_DATE,
            format!("manual secret is due since {next}: rotate it by hand"),
        ),
        _ => (rc::UP_TO_DATE, format!("next rotation {next}")),
    };
    set_condition(
        &mut s.conditions,
        ready(true, reason, message, generation, now),
    );
    let due = r.rotation_due.unwrap_or(false);
    let due_msg = if due {
        format!(
            "the secret last changed {} and was due {next}; only its vendor can issue a new one",
            r.last_change.map(|t| t.to_rfc3339()).unwrap_or_default()
        )
    } else {
        format!("not due before {next}")
    };
    set_condition(
        &mut s.conditions,
        due_condition(due, due_msg, generation, now),
    );
    s
}

/// Status after a failed reconcile (pure): `Ready=False` (`RotationFailed` when a
/// rotation failed: the previous value is still in force), the attempt in the history.
pub fn failure_status(
    old: &RotationPolicyStatus,
    p: &RotationPolicy,
    err: &RotationError,
    now: DateTime<Utc>,
) -> RotationPolicyStatus {
    let mut s = old.clone();
    let generation = p.metadata.generation;
    s.observed_generation = generation;
    s.target = Some(p.spec.target_label());
    s.when = Some(p.spec.when_label());
    let message = if err.rotating {
        format!(
            "rotation failed, the previous value is still in force: {}",
            err.error
        )
    } else {
        err.error.to_string()
    };
    set_condition(
        &mut s.conditions,
        ready(false, err.reason(), message.clone(), generation, now),
    );
    if err.rotating {
        set_condition(
            &mut s.conditions,
            due_condition(true, message, generation, now),
        );
    }
    if let Some(rec) = err.record(now) {
        s.record(rec);
    }
    if !err.rotating {
        if let Some(v) = &err.rotate_now {
            // The rotation happened; a later step failed.
            s.handled_rotate_now = Some(v.clone());
        }
    }
    s
}

/// Reconciles one `RotationPolicy` (entry point of the controller).
#[instrument(skip_all, fields(kind = KIND, namespace = %namespace_of(&obj), name = %obj.name_any()))]
pub async fn reconcile(obj: Arc<RotationPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(KIND);
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let p = obj.as_ref();
    let ns = namespace_of(p);
    let name = p.name_any();
    let api: Api<RotationPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let old = p.status.clone().unwrap_or_default();
    let last = RotationLast::from(&old);
    let regarding = p.object_ref(&());
    let now = status::now();
    let result = async {
        pipeline::validate(&p.spec)?;
        let session = session_for(&ctx, &ns, p.spec.connection_ref.as_ref())
            .await
            .map_err(RotationError::from)?;
        let store = KubeSecretStore::new(ctx.client.clone());
        let restarter = KubeRestarter::new(ctx.client.clone());
        // New values come from a CSPRNG seeded by the operating system.
        let mut rng = rand::rngs::StdRng::from_os_rng();
        pipeline::reconcile(
            &session,
            p,
            &last,
            &store,
            &restarter,
            &SystemClock,
            &mut rng,
            Mode::Apply,
        )
        .await
    }
    .await;
    let rotation = &ctx.metrics.rotation;
    match result {
        Ok(r) => {
            let new = success_status(&old, p.metadata.generation, &r, now);
            if new != old {
                apply_status(&api, &name, &new).await?;
            }
            let due = r.rotation_due.unwrap_or(false);
            rotation.set(&ns, &name, due, new.last_rotated, new.next_rotation);
            if r.rotated {
                info!(target = %r.target, version = ?r.current_version, reason = ?r.reason, "rotated");
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    rc::ROTATED,
                    "Rotate",
                    format!(
                        "Rotated {}{}{}; next rotation {}",
                        r.target,
                        r.current_version
                            .map(|v| format!(" (version {v})"))
                            .unwrap_or_default(),
                        r.grace_ends
                            .map(|t| format!(
                                "; the previous value stays valid until {}",
                                t.to_rfc3339()
                            ))
                            .unwrap_or_default(),
                        r.next_rotation.map(|t| t.to_rfc3339()).unwrap_or_default()
                    ),
                )
                .await;
            }
            if r.grace_ended {
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    "GraceEnded",
                    "Rotate",
                    format!(
                        "The grace period of {} ended: the previous value is no longer valid",
                        r.target
                    ),
                )
                .await;
            }
            if !r.restarted.is_empty() {
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    "RolloutRestarted",
                    "RestartWorkloads",
                    format!("Restarted {} after the rotation", r.restarted.join(", ")),
                )
                .await;
            }
            let was_due = find_condition(&old.conditions, rc::ROTATION_DUE)
                .is_some_and(|c| c.status == ConditionStatus::True);
            if due && !was_due {
                warn!(target = %r.target, "manual rotation due");
                ctx.publish(&regarding, EventType::Warning, rc::ROTATION_DUE, "CheckAge", format!(
                    "{} last changed {} and is due for rotation since {}: rotate it by hand (the operator never changes a manual secret)",
                    r.target,
                    r.last_change.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    r.next_rotation.map(|t| t.to_rfc3339()).unwrap_or_default()
                )).await;
            }
            ctx.failures.reset(&ObjectRef::from_obj(p).erase());
            debug!(requeue = ?r.requeue, "reconciled");
            Ok(Action::requeue(r.requeue))
        }
        Err(err) => {
            let new = failure_status(&old, p, &err, now);
            apply_status(&api, &name, &new).await?;
            // Due and not done: a failed rotation, or any failure once the next rotation
            // time has passed (e.g. Vault unreachable).
            if err.rotating || new.next_rotation.is_some_and(|t| t <= now) {
                rotation.set(&ns, &name, true, new.last_rotated, new.next_rotation);
            }
            let changed = ready_changed(&old.conditions, &new.conditions);
            if err.rotating || changed {
                warn!(reason = err.reason(), error = %err, "reconcile failed");
                ctx.publish(
                    &regarding,
                    EventType::Warning,
                    err.reason(),
                    "Rotate",
                    new.conditions
                        .iter()
                        .find(|c| c.type_ == condition_types::READY)
                        .map(|c| c.message.clone())
                        .unwrap_or_else(|| err.to_string()),
                )
                .await;
            }
            Err(Error::Reconcile(err.error))
        }
    }
}

/// Requeue after a failure: backoff, at most [`MAX_REQUEUE`].
pub fn error_policy(obj: Arc<RotationPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(KIND, err.category());
    error_action(obj.as_ref(), err, &ctx, Some(MAX_REQUEUE))
}

/// Which RotationPolicy updates trigger a reconcile: spec, deletion and the rotate-now
/// and reconcile-at annotations; not the operator's own status writes.
pub fn predicate(p: &RotationPolicy) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        p.metadata.generation,
        p.metadata.deletion_timestamp.is_some(),
        p.annotations().get(certus_api::annotations::ROTATE_NOW),
        p.annotations().get(crate::static_secret::RECONCILE_AT),
    )
        .hash(&mut h);
    Some(h.finish())
}

/// Prunes the metric series of deleted policies every `every` until `shutdown`.
pub async fn prune_loop(
    store: Store<RotationPolicy>,
    metrics: RotationMetrics,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let tick = async {
        loop {
            tokio::time::sleep(every).await;
            prune_metrics(&store, &metrics);
        }
    };
    tokio::select! {
        _ = tick => {}
        _ = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::{RotationOutcome, RotationRecord};
    use certus_core::rotation::DueReason;
    use certus_core::{Action as ChangeAction, Change, ResourceId};
    use certus_reconcile::ReconcileError;

    fn result(rotated: bool, due: Option<bool>) -> RotationResult {
        let now = Utc::now();
        RotationResult {
            change: Change {
                resource: ResourceId::new(KIND, Some("n"), "p"),
                action: ChangeAction::NoChange,
                target: "t".into(),
                drift: false,
                detail: None,
            },
            rotated,
            reason: if rotated {
                DueReason::Due
            } else {
                DueReason::NotDue
            },
            grace_ended: false,
            records: if rotated {
                vec![RotationRecord {
                    time: now,
                    version: Some(4),
                    outcome: RotationOutcome::Succeeded,
                    message: None,
                }]
            } else {
                vec![]
            },
            last_change: Some(now),
            next_rotation: Some(now + chrono::Duration::days(7)),
            grace_ends: None,
            current_version: Some(4),
            rotation_due: due,
            handled_rotate_now: Some("x".into()),
            secret_name: None,
            restarted: vec![],
            target: "kv:certus/mcp/assurance".into(),
            when: "7d".into(),
            requeue: MAX_REQUEUE,
        }
    }

    fn policy() -> RotationPolicy {
        let mut p = RotationPolicy::new("p", serde_json::from_value(serde_json::json!({"interval": "90d", "manual": {"mount": "certus", "path": "prod/openai"}})).unwrap());
        p.metadata.namespace = Some("n".into());
        p.metadata.generation = Some(3);
        p
    }

    #[test]
    fn statuses_carry_history_conditions_and_rotate_now() {
        let now = Utc::now();
        let s = success_status(
            &RotationPolicyStatus::default(),
            Some(1),
            &result(true, None),
            now,
        );
        assert_eq!(s.history.len(), 1);
        assert_eq!(s.current_version, Some(4));
        assert_eq!(s.handled_rotate_now.as_deref(), Some("x"));
        let ready = find_condition(&s.conditions, condition_types::READY).unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::True, rc::ROTATED)
        );
        let due = find_condition(&s.conditions, rc::ROTATION_DUE).unwrap();
        assert_eq!(due.status, ConditionStatus::False);
        let manual = success_status(&s, Some(1), &result(false, Some(true)), now);
        let due = find_condition(&manual.conditions, rc::ROTATION_DUE).unwrap();
        assert_eq!(
            (due.status, due.reason.as_str()),
            (ConditionStatus::True, rc::OVERDUE)
        );
        assert_eq!(manual.history.len(), 1);

        let mut err: RotationError =
            ReconcileError::Conflict("KV secret changed while rotating (check-and-set)".into())
                .into();
        err.rotating = true;
        err.conflict = true;
        let f = failure_status(&manual, &policy(), &err, now);
        let ready = find_condition(&f.conditions, condition_types::READY).unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::False, rc::ROTATION_FAILED)
        );
        assert!(ready.message.contains("previous value is still in force"));
        assert_eq!(f.history[0].outcome, RotationOutcome::Conflict);
        assert_eq!(f.observed_generation, Some(3));
        let dep: RotationError = ReconcileError::Dependency("missing".into()).into();
        let f2 = failure_status(&RotationPolicyStatus::default(), &policy(), &dep, now);
        assert!(f2.history.is_empty());
        assert_eq!(
            find_condition(&f2.conditions, condition_types::READY)
                .unwrap()
                .reason,
            "WaitingForDependency"
        );
    }

    #[test]
    fn metrics_have_the_alerting_names_and_are_pruned() {
        let m = RotationMetrics::default();
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        m.set(
            "certus-tap",
            "openai",
            true,
            Some(t),
            Some(t + chrono::Duration::days(90)),
        );
        m.set("certus-tap", "mcp", false, Some(t), None);
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("certus_rotation_due{namespace=\"certus-tap\",name=\"openai\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("certus_rotation_due{namespace=\"certus-tap\",name=\"mcp\"} 0"),
            "{out}"
        );
        assert!(out.contains("certus_rotation_last_rotated_timestamp_seconds{namespace=\"certus-tap\",name=\"openai\"} 1800000000"), "{out}");
        assert!(out.contains("certus_rotation_next_timestamp_seconds{namespace=\"certus-tap\",name=\"openai\"} 1807776000"), "{out}");
        let keep = [("certus-tap".to_string(), "mcp".to_string())]
            .into_iter()
            .collect();
        m.retain(&keep);
        assert_eq!(m.due("certus-tap", "openai"), None);
        assert_eq!(m.due("certus-tap", "mcp"), Some(0));
    }

    #[test]
    fn predicate_follows_spec_and_rotate_now_only() {
        let p = policy();
        let mut q = p.clone();
        q.status = Some(RotationPolicyStatus {
            current_version: Some(9),
            ..Default::default()
        });
        assert_eq!(predicate(&p), predicate(&q));
        let mut r = p.clone();
        r.metadata.annotations = Some(
            [(
                certus_api::annotations::ROTATE_NOW.to_string(),
                "1".to_string(),
            )]
            .into(),
        );
        assert_ne!(predicate(&p), predicate(&r));
    }
}
