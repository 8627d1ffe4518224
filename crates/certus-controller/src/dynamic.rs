//! The `DynamicCredential` controller.
//!
//! Under the finalizer helper: validate (pure) → resolve the connection → the shared
//! `certus_reconcile::dynamic::reconcile` (lease state from the Secret's annotations;
//! issue / renew / wait; superseded credentials revoked after their grace period) →
//! status (display only; a hash of the lease id) → Events → metrics. Requeued at the next
//! renewal, re-issue or revocation (at most every `resync_interval`). The projected
//! Secret is `.owns()`-watched through a metadata-only watch that also sees deletions, so
//! a deleted or edited Secret is restored from a fresh issue at once (and the old lease
//! revoked after the grace period). Cleanup revokes every credential when
//! `revokeOnDelete` (default).
//!
//! Vault errors leave the Secret as it is: `Ready` stays `True` (reason
//! `RenewalDelayed`) while the credential is still valid, `VaultAvailable` turns `False`
//! with a Warning Event, and retries back off with jitter, never later than half the
//! time left before the credential expires.
//!
//! Metrics (exact names; alerts use the first two): `certus_dynamic_credential_expiry_seconds
//! {namespace,name}` (computed at scrape time from the recorded expiry, so it keeps
//! falling when renewals stop), `certus_dynamic_credential_renewal_overdue_seconds
//! {namespace,name}` (how long the planned renewal or re-issue is overdue; 0 on
//! schedule, whatever the TTL), `certus_dynamic_credential_renewals_total`,
//! `certus_dynamic_credential_reissues_total`, `certus_dynamic_credential_revocations_total`
//! and `certus_dynamic_credential_failures_total{class}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use certus_api::{
    annotations, reasons, set_condition, DynamicCredential, DynamicCredentialStatus, FINALIZER,
    VAULT_AVAILABLE,
};
use certus_core::lease::IssueReason;
use certus_reconcile::dynamic::{self as pipeline, DynamicOutcome, LeaseMemory, Taken};
use certus_reconcile::ReconcileError;
use chrono::{DateTime, Utc};
use futures::{stream, Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, PredicateConfig, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tracing::{debug, info, instrument, warn};

use crate::backoff::error_action;
use crate::context::Context;
use crate::error::Error;
use crate::projection::{KubeRestarter, KubeSecretStore};
use crate::resolve::session_for;
use crate::status::{self, apply_status, ready, ready_changed};

/// The kind label used in metrics and logs.
pub const KIND: &str = "DynamicCredential";

/// The lease state this process saw, by resource: lets a deleted Secret's lease be
/// superseded and revoked (the Secret's annotations are the primary record).
fn memory() -> &'static LeaseMemory {
    static MEMORY: OnceLock<LeaseMemory> = OnceLock::new();
    MEMORY.get_or_init(LeaseMemory::new)
}

fn namespace_of(d: &DynamicCredential) -> String {
    d.namespace().unwrap_or_else(|| "default".to_string())
}

/// Expiry per `(namespace, name)`.
/// Per `(namespace, name)`: when the credential expires unless renewed, and when the
/// operator planned its next renewal or re-issue. Both gauges are computed from it at
/// scrape time, so they keep moving when reconciles stop.
type ExpiryMap = Arc<Mutex<HashMap<(String, String), Tracked>>>;

#[derive(Clone, Copy, Debug)]
struct Tracked {
    expires: DateTime<Utc>,
    next_action: Option<DateTime<Utc>>,
}

/// Labels of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

/// The `certus_dynamic_credential_*` metrics.
#[derive(Debug, Default, Clone)]
pub struct DynamicMetrics {
    /// Expiry per `(namespace, name)`; the gauge is computed from it at scrape time.
    expiry: ExpiryMap,
    renewals: Counter,
    reissues: Counter,
    revocations: Counter,
    failures: Family<ClassLabel, Counter>,
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// Encodes `certus_dynamic_credential_expiry_seconds` and
/// `certus_dynamic_credential_renewal_overdue_seconds` at scrape time.
#[derive(Debug)]
struct ExpiryCollector(ExpiryMap);

impl prometheus_client::collector::Collector for ExpiryCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let now = Utc::now();
        let entries: Vec<((String, String), Tracked)> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        type Gauge = fn(&Tracked, DateTime<Utc>) -> f64;
        let gauges: [(&str, &str, Gauge); 2] = [
            (
                "certus_dynamic_credential_expiry_seconds",
                "Seconds until the credential a DynamicCredential projects expires unless renewed (negative once expired)",
                |t, now| secs(t.expires - now),
            ),
            (
                "certus_dynamic_credential_renewal_overdue_seconds",
                "Seconds since the planned renewal or re-issue of a DynamicCredential's credential passed without one succeeding (0 while on schedule)",
                |t, now| t.next_action.map_or(0.0, |n| secs(now - n).max(0.0)),
            ),
        ];
        for (metric, help, value) in gauges {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for ((namespace, name), t) in &entries {
                let labels = [("namespace", namespace), ("name", name)];
                ConstGauge::new(value(t, now)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl DynamicMetrics {
    /// Registers the metrics without a prefix (their names are part of the alerting API).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(ExpiryCollector(self.expiry.clone())));
        registry.register(
            "certus_dynamic_credential_renewals",
            "Lease renewals made for DynamicCredentials",
            self.renewals.clone(),
        );
        registry.register(
            "certus_dynamic_credential_reissues",
            "Credentials issued to replace an earlier one (maximum TTL, refused renewal, spec change, deleted or edited Secret, rotate-now)",
            self.reissues.clone(),
        );
        registry.register(
            "certus_dynamic_credential_revocations",
            "Superseded or deleted DynamicCredential credentials revoked",
            self.revocations.clone(),
        );
        registry.register(
            "certus_dynamic_credential_failures",
            "Failed DynamicCredential Vault/Kubernetes operations, by error class",
            self.failures.clone(),
        );
    }

    /// Records a successful reconcile.
    pub fn observe(&self, namespace: &str, name: &str, o: &DynamicOutcome) {
        self.renewals.inc_by(u64::from(o.renewed));
        let reissued = match o.taken {
            Taken::Issued(IssueReason::Initial) => 0,
            Taken::Issued(_) | Taken::RenewedThenIssued(_) => 1,
            _ => 0,
        };
        self.reissues.inc_by(reissued);
        self.revocations.inc_by(u64::from(o.revoked));
        for class in &o.failures {
            self.failure(class);
        }
        let key = (namespace.to_string(), name.to_string());
        let mut expiry = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
        match o.state.as_ref().and_then(|s| s.expires_at) {
            Some(expires) => {
                let next_action = match (o.schedule.renew_at, o.schedule.reissue_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                expiry.insert(
                    key,
                    Tracked {
                        expires,
                        next_action,
                    },
                );
            }
            None => {
                expiry.remove(&key);
            }
        }
    }

    /// Counts a failure of `class`.
    pub fn failure(&self, class: &'static str) {
        self.failures.get_or_create(&ClassLabel { class }).inc();
    }

    /// Counts revocations made by a cleanup.
    pub fn revoked(&self, n: u32) {
        self.revocations.inc_by(u64::from(n));
    }

    /// Drops the expiry series of a deleted resource.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.expiry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Seconds until expiry of one resource (tests).
    pub fn expiry_seconds(&self, namespace: &str, name: &str) -> Option<i64> {
        self.expiry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .map(|t| (t.expires - Utc::now()).num_seconds())
    }

    /// Current counter values: (renewals, reissues, revocations) (tests).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.renewals.get(),
            self.reissues.get(),
            self.revocations.get(),
        )
    }

    /// Failures of `class` so far (tests).
    pub fn failures(&self, class: &'static str) -> u64 {
        self.failures.get_or_create(&ClassLabel { class }).get()
    }
}

/// The metrics failure class of an error: the Vault error class, else its category.
pub fn failure_class(err: &ReconcileError) -> &'static str {
    match err {
        ReconcileError::Vault(e) => e.class.as_str(),
        other => other.category(),
    }
}

/// Status after a successful reconcile (pure).
pub fn success_status(
    old: &DynamicCredentialStatus,
    generation: Option<i64>,
    o: &DynamicOutcome,
    now: DateTime<Utc>,
) -> DynamicCredentialStatus {
    let mut s = old.clone();
    o.record(&mut s, generation, now);
    s
}

/// Status after a failed reconcile (pure): the credential facts are kept; `Ready` stays
/// `True` while the Secret's credential is valid.
pub fn failure_status(
    old: &DynamicCredentialStatus,
    generation: Option<i64>,
    err: &ReconcileError,
    now: DateTime<Utc>,
) -> DynamicCredentialStatus {
    let mut s = old.clone();
    pipeline::record_error(&mut s, err, generation, now);
    s
}

/// The Event action of a pipeline event reason.
fn event_action(reason: &str) -> &'static str {
    match reason {
        "Issued" | "Reissued" => "IssueCredential",
        "Revoked" | "RevocationFailed" => "RevokeCredential",
        "RenewalRefused" => "RenewCredential",
        "RolloutRestarted" | "RolloutRestartFailed" => "RestartWorkloads",
        _ => "Reconcile",
    }
}

/// Reconciles one `DynamicCredential` (entry point of the controller).
#[instrument(skip_all, fields(kind = KIND, namespace = %namespace_of(&obj), name = %obj.name_any()))]
pub async fn reconcile(obj: Arc<DynamicCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(KIND);
    let api: Api<DynamicCredential> = Api::namespaced(ctx.client.clone(), &namespace_of(&obj));
    finalizer(&api, FINALIZER, obj, |event| {
        let (api, ctx) = (&api, &ctx);
        async move {
            match event {
                FinalizerEvent::Apply(d) => apply(&d, api, ctx).await,
                FinalizerEvent::Cleanup(d) => cleanup(&d, api, ctx).await,
            }
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// How long before the credential expires the next retry must come at the latest: half
/// the time left (at least a second), so retries speed up as expiry nears.
pub fn retry_cap(status: Option<&DynamicCredentialStatus>, now: DateTime<Utc>) -> Option<Duration> {
    let left = (status?.expires_at? - now)
        .to_std()
        .unwrap_or(Duration::ZERO);
    Some((left / 2).max(Duration::from_secs(1)))
}

/// Requeue after a failure: backoff with jitter, capped by [`retry_cap`].
pub fn error_policy(obj: Arc<DynamicCredential>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(KIND, err.category());
    let class = match err {
        Error::Reconcile(e) => failure_class(e),
        other => other.category(),
    };
    ctx.metrics.dynamic.failure(class);
    error_action(
        obj.as_ref(),
        err,
        &ctx,
        retry_cap(obj.status.as_ref(), Utc::now()),
    )
}

async fn apply(
    d: &DynamicCredential,
    api: &Api<DynamicCredential>,
    ctx: &Context,
) -> Result<Action, Error> {
    let now = status::now();
    let ns = namespace_of(d);
    let name = d.name_any();
    let generation = d.metadata.generation;
    let old = d.status.clone().unwrap_or_default();
    let regarding = d.object_ref(&());
    let result = async {
        // An invalid spec is reported without touching the connection or Vault.
        pipeline::validate(d)?;
        let session = session_for(ctx, &ns, d.spec.connection_ref.as_ref()).await?;
        let store = KubeSecretStore::new(ctx.client.clone());
        let restarter = KubeRestarter::new(ctx.client.clone());
        pipeline::reconcile(&session, d, &store, &restarter, memory(), now).await
    }
    .await;
    match result {
        Ok(o) => {
            let new = success_status(&old, generation, &o, now);
            if new != old {
                apply_status(api, &name, &new).await?;
            }
            ctx.metrics.dynamic.observe(&ns, &name, &o);
            match o.taken {
                Taken::Unchanged => debug!(requeue = ?o.requeue_after, "credential current"),
                Taken::Renewed => debug!(requeue = ?o.requeue_after, "renewed"),
                taken => info!(?taken, secret = %o.secret_name, "issued a credential"),
            }
            for e in &o.events {
                let t = if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                ctx.publish(
                    &regarding,
                    t,
                    e.reason,
                    event_action(e.reason),
                    e.message.clone(),
                )
                .await;
            }
            let became_available = certus_api::find_condition(&old.conditions, VAULT_AVAILABLE)
                .is_some_and(|c| c.status == certus_api::ConditionStatus::False)
                && o.failures.is_empty();
            if became_available {
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    "VaultAvailable",
                    "RenewCredential",
                    "Vault answers again; the credential lifecycle resumed".to_string(),
                )
                .await;
            }
            ctx.failures.reset(&ObjectRef::from_obj(d).erase());
            let requeue = o
                .requeue_after
                .unwrap_or(ctx.options.resync_interval)
                .min(ctx.options.resync_interval);
            Ok(Action::requeue(requeue))
        }
        Err(err) => {
            let new = failure_status(&old, generation, &err, now);
            apply_status(api, &name, &new).await?;
            let avail_changed = {
                let key = |cs: &[certus_api::Condition]| {
                    certus_api::find_condition(cs, VAULT_AVAILABLE)
                        .map(|c| (c.status, c.reason.clone()))
                };
                key(&old.conditions) != key(&new.conditions)
            };
            if ready_changed(&old.conditions, &new.conditions) || avail_changed {
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

async fn cleanup(
    d: &DynamicCredential,
    api: &Api<DynamicCredential>,
    ctx: &Context,
) -> Result<Action, Error> {
    let ns = namespace_of(d);
    let name = d.name_any();
    let key = ObjectRef::from_obj(d).erase();
    let regarding = d.object_ref(&());
    ctx.metrics.dynamic.forget(&ns, &name);
    if !d.spec.revoke_on_delete {
        info!("revokeOnDelete is false: the credentials are left to expire");
        pipeline::forget(d, memory());
        ctx.failures.reset(&key);
        return Ok(Action::await_change());
    }
    let result = async {
        let session = session_for(ctx, &ns, d.spec.connection_ref.as_ref()).await?;
        let store = KubeSecretStore::new(ctx.client.clone());
        pipeline::cleanup(&session, d, &store, memory()).await
    }
    .await;
    let now = status::now();
    match result {
        Ok(c) => {
            ctx.metrics.dynamic.revoked(c.revoked);
            if c.revoked > 0 {
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    "Revoked",
                    "RevokeCredential",
                    format!(
                        "Revoked {} credential(s) of the deleted DynamicCredential",
                        c.revoked
                    ),
                )
                .await;
            } else if !c.found_state {
                warn!("no lease state found (Secret and memory empty): nothing to revoke; an unknown lease expires on its own");
            }
        }
        Err(err) => {
            ctx.metrics.dynamic.failure(failure_class(&err));
            let deadline = crate::policy::deletion_deadline(d, ctx).unwrap_or(now);
            if now >= deadline {
                warn!(error = %err, "revoking kept failing until the deletion timeout; releasing the finalizer");
                ctx.publish(&regarding, EventType::Warning, "FinalizerReleased", "RevokeCredential", format!(
                    "Revoking the credentials kept failing after deletion ({err}); the finalizer was released: they are no longer renewed and expire on their own"
                )).await;
            } else {
                let old = d.status.clone().unwrap_or_default();
                let mut new = old.clone();
                set_condition(
                    &mut new.conditions,
                    ready(
                        false,
                        reasons::DELETING,
                        format!(
                            "revoking the credentials failed: {err}; retrying until {}, then the finalizer is released",
                            deadline.to_rfc3339()
                        ),
                        d.metadata.generation,
                        now,
                    ),
                );
                apply_status(api, &name, &new).await?;
                if ready_changed(&old.conditions, &new.conditions) {
                    ctx.publish(
                        &regarding,
                        EventType::Warning,
                        err.reason(),
                        "RevokeCredential",
                        format!("Revoking the credentials failed: {err}"),
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

/// Which DynamicCredential updates trigger a reconcile: spec, finalizers, deletion, the
/// `vault.certus.io/rotate-now` annotation (issue anew) and the
/// `vault.certus.io/reconcile-at` annotation (reconcile now: renew if due, repair the
/// Secret); not the operator's own status writes.
pub fn predicate(d: &DynamicCredential) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        d.metadata.generation,
        d.finalizers(),
        d.metadata.deletion_timestamp.is_some(),
        d.annotations().get(annotations::ROTATE_NOW),
        d.annotations().get(annotations::RECONCILE_AT),
    )
        .hash(&mut h);
    Some(h.finish())
}

/// Metadata of the Secrets the operator manages, including deletions (a deleted Secret
/// must re-trigger its owner). Metadata only: Secret data is never cached here.
pub fn owned_secrets(
    client: &Client,
    scopes: Vec<Option<String>>,
    wc: watcher::Config,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    let wc = wc.labels("app.kubernetes.io/managed-by=certus-vault-operator");
    let streams = scopes.into_iter().map(move |ns| {
        // `Api<PartialObjectMeta<_>>` makes metadata-only requests.
        let api: Api<PartialObjectMeta<Secret>> = match &ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        watcher::watcher(api, wc.clone())
            .default_backoff()
            .touched_objects()
            .boxed()
    });
    stream::select_all(streams)
}

/// The DynamicCredential controller, ready to be joined with the others in [`crate::run`].
pub fn controller<S>(
    client: &Client,
    scopes: Vec<Option<String>>,
    wc: watcher::Config,
    ctx: Arc<Context>,
    config: Config,
    shutdown: S,
) -> impl std::future::Future<Output = ()> + Send
where
    S: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let (store, stream) = crate::watch::reflected::<DynamicCredential>(
        KIND,
        client,
        scopes.clone(),
        wc.clone(),
        ctx.metrics.clone(),
    );
    let stream = stream.predicate_filter(predicate, PredicateConfig::default());
    Controller::for_stream(stream, store)
        .with_config(config)
        .owns_stream(owned_secrets(client, scopes, wc))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move { crate::log_result(KIND, r) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_reconcile::dynamic::{DynEvent, StateSource};
    use certus_vault_client::{ErrorClass, VaultError};

    fn outcome(taken: Taken, expires_in: i64) -> DynamicOutcome {
        let now = Utc::now();
        let issued = certus_core::lease::read_issued(
            "db/creds/r",
            &serde_json::json!({"lease_id": "db/creds/r/abc", "lease_duration": 60, "renewable": true}),
            now,
        );
        let mut state = certus_core::lease::issued_state(&issued, now, "S", "D", None, None, None);
        state.expires_at = Some(now + chrono::Duration::seconds(expires_in));
        DynamicOutcome {
            taken,
            secret_name: "db".into(),
            state: Some(state),
            schedule: Default::default(),
            pending_revocations: 0,
            requeue_after: Some(Duration::from_secs(40)),
            events: vec![DynEvent {
                warning: false,
                reason: "Issued",
                message: "m".into(),
            }],
            issued: 1,
            renewed: u32::from(taken == Taken::Renewed),
            revoked: 1,
            failures: vec!["transient"],
            written: true,
            restarted: vec![],
            source: StateSource::Secret,
            now,
        }
    }

    #[test]
    fn overdue_gauge_is_zero_on_schedule_and_grows_once_the_planned_renewal_passes() {
        let m = DynamicMetrics::default();
        let mut on_time = outcome(Taken::Renewed, 60);
        on_time.schedule.renew_at = Some(on_time.now + chrono::Duration::seconds(40));
        on_time.schedule.reissue_at = Some(on_time.now + chrono::Duration::seconds(600));
        m.observe("ns", "on-time", &on_time);
        // A 20-second credential whose renewal was planned 90 s ago and never happened
        // (every reconcile since failed, so nothing was observed).
        let mut late = outcome(Taken::Renewed, -70);
        late.schedule.renew_at = Some(late.now - chrono::Duration::seconds(90));
        m.observe("ns", "late", &late);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        let value = |name: &str| -> f64 {
            let prefix =
                format!("certus_dynamic_credential_renewal_overdue_seconds{{namespace=\"ns\",name=\"{name}\"}} ");
            let line = out
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("{prefix} missing:\n{out}"));
            line[prefix.len()..].parse().unwrap()
        };
        assert_eq!(value("on-time"), 0.0);
        let late = value("late");
        assert!((90.0..100.0).contains(&late), "{late}");
        m.forget("ns", "late");
        let mut out2 = String::new();
        prometheus_client::encoding::text::encode(&mut out2, &registry).unwrap();
        assert!(!out2.contains("name=\"late\""), "{out2}");
    }

    #[test]
    fn metrics_count_and_expose_expiry_at_scrape_time() {
        let m = DynamicMetrics::default();
        m.observe("ns", "a", &outcome(Taken::Issued(IssueReason::Initial), 60));
        m.observe("ns", "a", &outcome(Taken::Renewed, 60));
        m.observe(
            "ns",
            "a",
            &outcome(Taken::Issued(IssueReason::MaxTtlNear), 30),
        );
        assert_eq!(m.counts(), (1, 1, 3));
        assert_eq!(m.failures("transient"), 3);
        let left = m.expiry_seconds("ns", "a").unwrap();
        assert!((28..=30).contains(&left), "{left}");
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("certus_dynamic_credential_expiry_seconds{namespace=\"ns\",name=\"a\"} 2"),
            "{out}"
        );
        // No planned action recorded: not overdue.
        assert!(
            out.contains(
                "certus_dynamic_credential_renewal_overdue_seconds{namespace=\"ns\",name=\"a\"} 0"
            ),
            "{out}"
        );
        assert!(
            out.contains("certus_dynamic_credential_renewals_total 1"),
            "{out}"
        );
        assert!(
            out.contains("certus_dynamic_credential_reissues_total 1"),
            "{out}"
        );
        assert!(
            out.contains("certus_dynamic_credential_revocations_total 3"),
            "{out}"
        );
        assert!(
            out.contains("certus_dynamic_credential_failures_total{class=\"transient\"} 3"),
            "{out}"
        );
        m.forget("ns", "a");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(!out.contains("name=\"a\""), "{out}");
    }

    #[test]
    fn status_keeps_ready_while_the_credential_is_valid_and_retries_speed_up() {
        let now = Utc::now();
        let o = outcome(Taken::Issued(IssueReason::Initial), 60);
        let s = success_status(&DynamicCredentialStatus::default(), Some(1), &o, now);
        assert_eq!(s.lease_id_hash.as_deref().map(str::len), Some(16));
        assert!(!serde_json::to_string(&s)
            .unwrap()
            .contains("db/creds/r/abc"));
        let err = ReconcileError::Vault(VaultError::new(
            ErrorClass::Transient,
            "POST sys/leases/renew",
            None,
            "connection refused",
        ));
        let f = failure_status(&s, Some(1), &err, now);
        let r = certus_api::find_condition(&f.conditions, "Ready").unwrap();
        assert_eq!(r.status, certus_api::ConditionStatus::True);
        assert_eq!(r.reason, pipeline::RENEWAL_DELAYED);
        assert_eq!(f.expires_at, s.expires_at, "credential facts are kept");
        let cap = retry_cap(Some(&f), now).unwrap();
        assert!(
            cap <= Duration::from_secs(31) && cap >= Duration::from_secs(29),
            "{cap:?}"
        );
        let expired = DynamicCredentialStatus {
            expires_at: Some(now - chrono::Duration::seconds(5)),
            ..Default::default()
        };
        assert_eq!(retry_cap(Some(&expired), now), Some(Duration::from_secs(1)));
        assert_eq!(retry_cap(None, now), None);
        assert_eq!(failure_class(&err), "transient");
        assert_eq!(
            failure_class(&ReconcileError::Invalid("x".into())),
            "invalid_spec"
        );
    }

    #[test]
    fn predicate_ignores_status_and_sees_rotate_now() {
        let mut d: DynamicCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "DynamicCredential",
            "metadata": {"name": "x", "namespace": "n", "generation": 1},
            "spec": {"path": "database/creds/app"}
        }))
        .unwrap();
        let a = predicate(&d);
        d.status = Some(DynamicCredentialStatus {
            renewals: 3,
            ..Default::default()
        });
        assert_eq!(predicate(&d), a);
        d.metadata.annotations =
            Some([(annotations::ROTATE_NOW.to_string(), "1".to_string())].into());
        let b = predicate(&d);
        assert_ne!(b, a);
        d.metadata.annotations.as_mut().unwrap().insert(
            annotations::RECONCILE_AT.to_string(),
            "1733356800".to_string(),
        );
        assert_ne!(predicate(&d), b, "reconcile-at triggers a reconcile");
    }

    #[test]
    fn event_actions() {
        assert_eq!(event_action("Reissued"), "IssueCredential");
        assert_eq!(event_action("RevocationFailed"), "RevokeCredential");
        assert_eq!(event_action("Other"), "Reconcile");
    }
}
