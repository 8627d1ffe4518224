//! Vault's audit stream inside the operator: the `AuditAlertRule` controller, the
//! Kubernetes side of [`certus_audit`] (an [`EventSink`] and a ConfigMap
//! [`CheckpointStore`]) and the audit sources.
//!
//! ```text
//!  AuditAlertRule watch ──► reconcile ──► RuleSet::apply ──► status (server-side apply)
//!                                            ▲      │ counters changed
//!  file device  ──► file source ─┐           │      ▼
//!                                ├─► AuditProcessor ──► alerts ──► Event on the rule (KubeEventSink)
//!  socket device ─► listener ────┘                         ├──► certus_audit_rule_matches_total
//!                                                         └──► webhook (from the rule's Secret)
//! ```
//!
//! # Leader only
//!
//! Everything here runs inside [`crate::run`], which only the holder of the leader Lease
//! executes ([`crate::leader::supervise`]). That is what keeps two replicas from reading
//! the same audit file (and raising every alert twice): a standby neither reads the file
//! nor listens on the socket port, and a replica that loses the Lease drops its sources at
//! once. The new leader resumes the file from the checkpoint ConfigMap, which is saved at
//! most every [`AuditConfig::checkpoint_interval`] and on a graceful stop; after a lost
//! Lease (no final save) the lines since the last save are evaluated again, so an alert
//! can repeat (at-least-once). Threshold state (hits in a window) starts empty for each
//! leadership term.
//!
//! # Without a source
//!
//! The rule controller always runs: rules are validated and get a `Ready` condition. With
//! neither `--audit-file` nor `--audit-socket` nothing is evaluated, and a rule that would
//! be active reports `Ready=False` with reason [`NO_AUDIT_SOURCE`].
//!
//! # Metrics
//!
//! `certus_audit_*` are registered once per process on the root registry by
//! [`AuditConfig::register_metrics`] (before the registry is shared with `/metrics`), and
//! every leadership term feeds the same counters.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certus_api::{
    condition_types, find_condition, reasons, set_condition, AuditAlertRule, AuditAlertRuleStatus,
    Condition, ConditionStatus, FIELD_MANAGER,
};
use certus_audit::{
    Alert, AuditMetrics, AuditRuntime, Checkpoint, CheckpointError, CheckpointStore,
    DispatcherOptions, EventSink, FileSourceOptions, MetricsOptions, RuleSet, SocketSourceOptions,
    SystemClock, TimeBasis, WebhookResolution, WebhookTarget,
};
use certus_reconcile::ReconcileError;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{PredicateConfig, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use tracing::{debug, error, info, instrument, warn};

use crate::backoff::error_action;
use crate::context::{truncate, Context};
use crate::error::{kube_detail, kube_error, Error};
use crate::options::RunOptions;
use crate::status::apply_status;

/// The kind label used in metrics and logs.
pub const KIND: &str = "AuditAlertRule";
/// Default name of the checkpoint ConfigMap (`--audit-checkpoint-configmap`).
pub const DEFAULT_CHECKPOINT_CONFIGMAP: &str = "certus-vault-audit-checkpoint";
/// The ConfigMap key holding [`Checkpoint::to_json`].
pub const CHECKPOINT_KEY: &str = "checkpoint.json";
/// `Ready=False` reason of a valid rule while the operator reads no audit source.
pub const NO_AUDIT_SOURCE: &str = "NoAuditSource";
/// `Ready=False` reason of a webhook Secret that holds no usable URL or headers.
pub const INVALID_WEBHOOK: &str = "InvalidWebhook";
/// `Ready=False` reason of a webhook Secret that could not be read (transient; retried).
pub const SECRET_UNAVAILABLE: &str = "SecretUnavailable";
/// `action` of alert Events.
pub const EVENT_ACTION: &str = "Alert";
/// Where Events about the cluster-scoped `AuditAlertRule` are recorded (as kube's
/// recorder does for cluster-scoped objects).
pub const EVENT_NAMESPACE: &str = "default";
/// How long a webhook whose Secret is missing or unusable waits before it is looked up
/// again (creating the Secret does not trigger the rule).
pub const WEBHOOK_RECHECK: Duration = Duration::from_secs(60);

// ---- configuration ------------------------------------------------------------------------

/// Where the operator reads Vault's audit stream ([`RunOptions::audit`]).
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The file audit device's `file_path` as the operator sees it (`--audit-file`).
    pub file: Option<PathBuf>,
    /// Address of the socket audit device listener (`--audit-socket`, e.g. `0.0.0.0:9090`).
    pub socket: Option<SocketAddr>,
    /// Name of the ConfigMap (in [`namespace`](Self::namespace)) holding the file
    /// reader's checkpoint (`--audit-checkpoint-configmap`).
    pub checkpoint_configmap: String,
    /// The operator's namespace (from `$POD_NAMESPACE`); `None`: the client's default
    /// namespace.
    pub namespace: Option<String>,
    /// Least time between two checkpoint saves (a final one is saved on shutdown).
    pub checkpoint_interval: Duration,
    /// How long counter changes are collected before the rules' status is written.
    pub status_debounce: Duration,
    /// The `certus_audit_*` metrics, registered on the root registry by
    /// [`register_metrics`](Self::register_metrics). `None`: counted but not exported.
    pub metrics: Option<Arc<AuditMetrics>>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: None,
            socket: None,
            checkpoint_configmap: DEFAULT_CHECKPOINT_CONFIGMAP.to_string(),
            namespace: std::env::var("POD_NAMESPACE")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            checkpoint_interval: Duration::from_secs(30),
            status_debounce: Duration::from_secs(3),
            metrics: None,
        }
    }
}

impl AuditConfig {
    /// Whether an audit source is configured.
    pub fn has_source(&self) -> bool {
        self.file.is_some() || self.socket.is_some()
    }

    /// Registers `certus_audit_*` on the process's root registry, once, before the
    /// registry is shared with `/metrics`. Does nothing without a source.
    pub fn register_metrics(&mut self, registry: &mut Registry) {
        if self.has_source() && self.metrics.is_none() {
            self.metrics = Some(Arc::new(AuditMetrics::register(
                registry,
                MetricsOptions::default(),
            )));
        }
    }
}

// ---- Events -------------------------------------------------------------------------------

/// Publishes audit alerts as Warning Events (`events.k8s.io/v1`) on the `AuditAlertRule`
/// that raised them, reason [`Alert::EVENT_REASON`], note [`Alert::event_note`].
///
/// One Event per alert. kube's `Recorder` is not used on purpose: it folds repeats of the
/// same (reason, action, object) into one Event series that keeps the first note, which
/// would hide every later alert's summary behind the first one. Rules bound their own
/// rate (a `threshold` raises at most one alert per window and group) and the alert queue
/// is bounded ([`DispatcherOptions::event_queue`]).
pub struct KubeEventSink {
    client: Client,
    instance: String,
    rules: Store<AuditAlertRule>,
}

impl KubeEventSink {
    /// A sink over `client`; `rules` (the rule reflector's store) gives the `uid` of the
    /// rule an Event is about; `instance` is the Events' `reportingInstance` (the Pod).
    pub fn new(client: Client, instance: Option<String>, rules: Store<AuditAlertRule>) -> Self {
        KubeEventSink {
            client,
            instance: instance.unwrap_or_else(|| FIELD_MANAGER.to_string()),
            rules,
        }
    }

    /// The reference to the rule `name` (with its uid when it is known).
    pub fn regarding(&self, name: &str) -> ObjectReference {
        match self.rules.get(&ObjectRef::new(name)) {
            Some(rule) => rule.object_ref(&()),
            None => ObjectReference {
                api_version: Some(AuditAlertRule::api_version(&()).into_owned()),
                kind: Some(KIND.to_string()),
                name: Some(name.to_string()),
                ..ObjectReference::default()
            },
        }
    }

    /// The Event for `alert` (pure).
    pub fn event(&self, alert: &Alert, regarding: ObjectReference) -> KubeEvent {
        let now = k8s_openapi::jiff::Timestamp::now();
        let base: String = alert.rule.chars().take(200).collect();
        KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                namespace: Some(EVENT_NAMESPACE.to_string()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some("Warning".to_string()),
            reason: Some(Alert::EVENT_REASON.to_string()),
            action: Some(EVENT_ACTION.to_string()),
            note: Some(truncate(alert.event_note(), 1000)),
            regarding: Some(regarding),
            reporting_controller: Some(FIELD_MANAGER.to_string()),
            reporting_instance: Some(self.instance.clone()),
            ..KubeEvent::default()
        }
    }
}

impl EventSink for KubeEventSink {
    fn publish<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let event = self.event(alert, self.regarding(&alert.rule));
            let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), EVENT_NAMESPACE);
            api.create(&PostParams::default(), &event)
                .await
                .map(|_| ())
                .map_err(|e| kube_detail(&e))
        })
    }
}

// ---- checkpoint ---------------------------------------------------------------------------

/// The file reader's checkpoint in a ConfigMap of the operator's namespace: the JSON of
/// [`Checkpoint::to_json`] under [`CHECKPOINT_KEY`], written with server-side apply (field
/// manager [`FIELD_MANAGER`], which creates the ConfigMap the first time). Shared by every
/// replica, so a new leader resumes where the previous one stopped.
pub struct ConfigMapCheckpointStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
}

impl ConfigMapCheckpointStore {
    /// The store of ConfigMap `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        ConfigMapCheckpointStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    fn what(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }
}

impl CheckpointStore for ConfigMapCheckpointStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Checkpoint>, CheckpointError>> {
        Box::pin(async move {
            let cm = self.api.get_opt(&self.name).await.map_err(|e| {
                CheckpointError(format!("reading {}: {}", self.what(), kube_detail(&e)))
            })?;
            let Some(text) = cm
                .and_then(|cm| cm.data)
                .and_then(|mut d| d.remove(CHECKPOINT_KEY))
            else {
                return Ok(None);
            };
            Checkpoint::from_json(&text)
                .map(Some)
                .map_err(|e| CheckpointError(format!("{} key {CHECKPOINT_KEY}: {e}", self.what())))
        })
    }

    fn save<'a>(&'a self, cp: &'a Checkpoint) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(async move {
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "labels": {
                        "app.kubernetes.io/managed-by": FIELD_MANAGER,
                        "app.kubernetes.io/component": "audit-checkpoint",
                    },
                },
                "data": { CHECKPOINT_KEY: cp.to_json() },
            });
            self.api
                .patch(
                    &self.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map(|_| ())
                .map_err(|e| {
                    CheckpointError(format!("writing {}: {}", self.what(), kube_detail(&e)))
                })
        })
    }
}

// ---- the AuditAlertRule controller ----------------------------------------------------------

/// What the rule controller's reconciles share.
pub struct RuleContext {
    /// The controllers' context (client, metrics, options, backoff).
    pub ctx: Arc<Context>,
    /// The rules the audit processor evaluates.
    pub rules: RuleSet,
    /// Whether an audit source is read (otherwise rules report [`NO_AUDIT_SOURCE`]).
    pub source: bool,
}

/// Which rule updates trigger a reconcile: spec (generation) and deletion; not status
/// writes (the status loop writes counters often).
pub fn predicate(r: &AuditAlertRule) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        r.metadata.generation,
        r.metadata.deletion_timestamp.is_some(),
    )
        .hash(&mut h);
    Some(h.finish())
}

/// Resolves `spec.webhook` into what the rule set needs. A missing, forbidden or unusable
/// Secret is a [`WebhookResolution::Unavailable`] (the rule still raises Events and
/// metrics); only a failed request (API server unreachable, 5xx) is an error.
pub async fn resolve_webhook(
    client: &Client,
    rule: &AuditAlertRule,
) -> Result<WebhookResolution, ReconcileError> {
    let Some(spec) = &rule.spec.webhook else {
        return Ok(WebhookResolution::None);
    };
    let (ns, name) = (&spec.secret_ref.namespace, &spec.secret_ref.name);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let unavailable = |reason: &str, message: String| WebhookResolution::Unavailable {
        reason: reason.to_string(),
        message,
    };
    match api.get_opt(name).await {
        Ok(None) => Ok(unavailable(
            reasons::SECRET_NOT_FOUND,
            format!("Secret {ns}/{name} not found"),
        )),
        Ok(Some(secret)) => {
            let data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            Ok(match WebhookTarget::from_secret_data(&data, spec) {
                Ok(target) => WebhookResolution::Target(Arc::new(target)),
                Err(e) => unavailable(INVALID_WEBHOOK, format!("Secret {ns}/{name}: {e}")),
            })
        }
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(unavailable(
            reasons::PERMISSION_DENIED,
            format!("the operator may not read Secret {ns}/{name} (RBAC)"),
        )),
        Err(e) => Err(kube_error(&format!("reading Secret {ns}/{name}"), &e)),
    }
}

/// Replaces an active `Ready=True` by `Ready=False` [`NO_AUDIT_SOURCE`]: the rule is valid
/// but the operator reads no audit stream. Other reasons (invalid spec, suspended,
/// webhook problems) are left as they are.
pub fn mark_no_source(status: &mut AuditAlertRuleStatus, generation: Option<i64>) {
    let active = find_condition(&status.conditions, condition_types::READY)
        .is_some_and(|c| c.status == ConditionStatus::True);
    if active {
        set_condition(
            &mut status.conditions,
            Condition::new(
                condition_types::READY,
                ConditionStatus::False,
                NO_AUDIT_SOURCE,
                "the rule is valid, but the operator reads no Vault audit stream (start it with --audit-file or --audit-socket; Helm values audit.file.path / audit.socket.enabled), so nothing is evaluated",
                generation,
                crate::status::now(),
            ),
        );
    }
}

/// The status to write for `rule`: the rule set's status, marked when no source is read.
pub fn rule_status(rules: &RuleSet, rule: &AuditAlertRule, source: bool) -> AuditAlertRuleStatus {
    let mut status = rules.status(rule);
    if !source {
        mark_no_source(&mut status, rule.metadata.generation);
    }
    status
}

/// Reasons that deserve a Warning Event when `Ready` turns to them.
fn warn_worthy(reason: &str) -> bool {
    !matches!(
        reason,
        NO_AUDIT_SOURCE | certus_audit::engine::reasons::SUSPENDED | reasons::PROGRESSING
    )
}

/// Loads the rule into the rule set (compiling it, resolving its webhook Secret) and
/// writes its status. Counters continue from `status.matchesTotal` the first time a
/// process sees the rule. No finalizer: a deleted rule is dropped from the rule set when
/// the watch reports the deletion.
#[instrument(skip_all, fields(kind = KIND, name = %obj.name_any()))]
pub async fn reconcile(obj: Arc<AuditAlertRule>, rctx: Arc<RuleContext>) -> Result<Action, Error> {
    let ctx = &rctx.ctx;
    let _timer = ctx.metrics.reconcile_started(KIND);
    let name = obj.name_any();
    if obj.metadata.deletion_timestamp.is_some() {
        rctx.rules.remove(&name);
        return Ok(Action::await_change());
    }
    let (webhook, failed) = match resolve_webhook(&ctx.client, &obj).await {
        Ok(w) => (w, None),
        Err(e) => (
            WebhookResolution::Unavailable {
                reason: SECRET_UNAVAILABLE.to_string(),
                message: e.to_string(),
            },
            Some(e),
        ),
    };
    let webhook_pending = matches!(webhook, WebhookResolution::Unavailable { .. });
    rctx.rules.apply(&obj, webhook);
    let status = rule_status(&rctx.rules, &obj, rctx.source);

    let old = obj.status.clone().unwrap_or_default();
    if crate::status::ready_changed(&old.conditions, &status.conditions) {
        if let Some(c) = find_condition(&status.conditions, condition_types::READY) {
            if c.status == ConditionStatus::False && warn_worthy(&c.reason) {
                ctx.publish(
                    &obj.object_ref(&()),
                    EventType::Warning,
                    &c.reason,
                    "Reconcile",
                    c.message.clone(),
                )
                .await;
            }
        }
    }
    let api: Api<AuditAlertRule> = Api::all(ctx.client.clone());
    apply_status(&api, &name, &status).await?;
    if let Some(e) = failed {
        return Err(Error::Reconcile(e));
    }
    ctx.failures
        .reset(&ObjectRef::from_obj(obj.as_ref()).erase());
    Ok(if webhook_pending {
        Action::requeue(WEBHOOK_RECHECK)
    } else if obj.spec.webhook.is_some() {
        // Picks up a changed webhook Secret.
        Action::requeue(ctx.options.resync_interval)
    } else {
        Action::await_change()
    })
}

/// Requeue a rule after a failed reconcile (exponential backoff; see [`error_action`]).
pub fn error_policy(obj: Arc<AuditAlertRule>, err: &Error, rctx: Arc<RuleContext>) -> Action {
    rctx.ctx.metrics.reconcile_failed(KIND, err.category());
    error_action(obj.as_ref(), err, &rctx.ctx, Some(WEBHOOK_RECHECK))
}

// ---- status freshness -----------------------------------------------------------------------

/// Writes the status of every rule whose counters changed (plus `retry`, the names whose
/// last write failed, which it refills). A dirty rule that is gone from `store` is dropped
/// from the rule set. Returns the number of statuses written.
pub async fn flush_status(
    api: &Api<AuditAlertRule>,
    rules: &RuleSet,
    store: &Store<AuditAlertRule>,
    source: bool,
    retry: &mut BTreeSet<String>,
) -> usize {
    let mut names: BTreeSet<String> = std::mem::take(retry);
    names.extend(rules.take_dirty());
    let mut written = 0;
    for name in names {
        let Some(rule) = store.get(&ObjectRef::new(&name)) else {
            rules.remove(&name);
            continue;
        };
        let status = rule_status(rules, &rule, source);
        match apply_status(api, &name, &status).await {
            Ok(()) => written += 1,
            Err(e) => {
                debug!(rule = %name, error = %e, "writing the audit rule status failed; retrying with the next flush");
                retry.insert(name);
            }
        }
    }
    written
}

/// Keeps the counters in the rules' status fresh until `shutdown`: after a change, waits
/// `debounce` (collecting more changes), then writes the changed rules' status. Also
/// flushes every 30 s, in case a change notification came while it was writing.
pub async fn status_loop(
    api: Api<AuditAlertRule>,
    rules: RuleSet,
    store: Store<AuditAlertRule>,
    source: bool,
    debounce: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut retry = BTreeSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = rules.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(debounce) => {}
        }
        flush_status(&api, &rules, &store, source, &mut retry).await;
    }
}

// ---- sources --------------------------------------------------------------------------------

/// Retry delay of a source that failed to start (exponential, 5 s up to 5 min).
fn source_retry(failures: u32) -> Duration {
    crate::backoff::retry_delay(
        failures,
        Duration::from_secs(5),
        Duration::from_secs(300),
        rand::random::<f64>(),
    )
}

/// Follows the audit file until `shutdown` (then saves the final checkpoint). A source
/// that stops with an error (the checkpoint cannot be loaded: the API server is
/// unreachable, or the ConfigMap is corrupt) is restarted with backoff; it never skips
/// ahead silently.
pub async fn run_file_source<S>(
    runtime: &AuditRuntime,
    opts: FileSourceOptions,
    store: Arc<dyn CheckpointStore>,
    shutdown: S,
) where
    S: Future<Output = ()> + Clone + Send,
{
    let mut failures = 0u32;
    loop {
        let result = certus_audit::run_file_source(
            runtime.processor(),
            opts.clone(),
            store.clone(),
            shutdown.clone(),
        )
        .await;
        let Err(e) = result else { return };
        failures += 1;
        let delay = source_retry(failures);
        error!(path = %opts.path.display(), error = %e, retry_in = ?delay, "the audit file source stopped; restarting it");
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Serves the socket audit device on `addr` until `shutdown`; a failed bind (port taken)
/// is retried with backoff.
pub async fn run_socket_source<S>(runtime: &AuditRuntime, addr: SocketAddr, shutdown: S)
where
    S: Future<Output = ()> + Clone + Send,
{
    let mut failures = 0u32;
    loop {
        let error = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => match certus_audit::run_socket_source(
                runtime.processor(),
                listener,
                SocketSourceOptions::default(),
                shutdown.clone(),
            )
            .await
            {
                Ok(()) => return,
                Err(e) => e.to_string(),
            },
            Err(e) => format!("cannot listen on {addr}: {e}"),
        };
        failures += 1;
        let delay = source_retry(failures);
        error!(%addr, error, retry_in = ?delay, "the audit socket source stopped; restarting it");
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Waits until the rule store has been listed and every listed rule is in the rule set
/// (its first reconcile ran), at most `timeout`, so a resumed backlog is evaluated
/// against every rule.
async fn rules_loaded(store: &Store<AuditAlertRule>, rules: &RuleSet, timeout: Duration) {
    let wait = async {
        let _ = store.wait_until_ready().await;
        loop {
            let known: BTreeSet<String> = rules.names().into_iter().collect();
            if store.state().iter().all(|r| known.contains(&r.name_any())) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(timeout, wait).await.is_err() {
        warn!(
            ?timeout,
            "not every AuditAlertRule was loaded in time; starting the audit sources anyway"
        );
    }
}

// ---- everything together ----------------------------------------------------------------------

/// The shutdown signal [`run`] shares between its parts.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// The audit part of [`crate::run`]: the `AuditAlertRule` controller (always), and with a
/// configured source ([`RunOptions::audit`]) the audit runtime, its sources and the
/// status freshness loop. The returned future ends after `shutdown`: the controller
/// drains, the sources stop (the file source saves its checkpoint), the counters are
/// written a last time and queued alert Events are published (at most 10 s). Only
/// [`crate::run`] (i.e. the leader) should call it.
pub fn run(
    client: Client,
    ctx: Arc<Context>,
    opts: &RunOptions,
    config: controller::Config,
    shutdown: Shutdown,
) -> anyhow::Result<BoxFuture<'static, ()>> {
    let audit = opts.audit.clone();
    let source = audit.has_source();
    let (reader, writer) = reflector::store::<AuditAlertRule>();

    let runtime = if source {
        let metrics = audit.metrics.clone().unwrap_or_else(|| {
            warn!("the audit metrics are not registered on the /metrics registry (AuditConfig::register_metrics was not called)");
            Arc::new(AuditMetrics::unregistered(MetricsOptions::default()))
        });
        let sink = KubeEventSink::new(client.clone(), opts.instance.clone(), reader.clone());
        Some(
            AuditRuntime::with_metrics(
                metrics,
                Some(Arc::new(sink) as Arc<dyn EventSink>),
                DispatcherOptions::default(),
                Arc::new(SystemClock),
                TimeBasis::EntryTime,
                None,
            )
            .map_err(|e| anyhow::anyhow!("starting the audit runtime: {e}"))?,
        )
    } else {
        None
    };
    let rules = match &runtime {
        Some(r) => r.rules(),
        None => RuleSet::new(Arc::new(SystemClock)),
    };

    // The watch, with deletions removing the rule from the rule set (no finalizer).
    let on_delete = rules.clone();
    let stream = crate::watch::guarded_watch(
        KIND,
        &client,
        vec![None],
        watcher::Config::default(),
        reader.clone(),
        ctx.metrics.clone(),
    )
    .inspect(move |e| {
        if let Ok(Event::Delete(r)) = e {
            debug!(rule = %r.name_any(), "AuditAlertRule deleted; no longer evaluated");
            on_delete.remove(&r.name_any());
        }
    })
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicate, PredicateConfig::default());

    let rctx = Arc::new(RuleContext {
        ctx: ctx.clone(),
        rules: rules.clone(),
        source,
    });
    let controller = Controller::for_stream(stream, reader.clone())
        .with_config(config)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, rctx)
        .for_each(|r| async move { crate::log_result(KIND, r) });

    let Some(runtime) = runtime else {
        info!("no audit source configured (--audit-file, --audit-socket): AuditAlertRules are validated but not evaluated");
        return Ok(controller.boxed());
    };

    let namespace = audit
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let status_api: Api<AuditAlertRule> = Api::all(client.clone());
    if audit.file.is_some() && audit.socket.is_some() {
        warn!("both --audit-file and --audit-socket are set: when both are devices of the same Vault, every entry is evaluated twice (double alerts and counts)");
    }
    let fut = async move {
        let sources = async {
            rules_loaded(&reader, &rules, Duration::from_secs(30)).await;
            let file = async {
                if let Some(path) = &audit.file {
                    info!(path = %path.display(), checkpoint = %format!("{namespace}/{}", audit.checkpoint_configmap), "reading the Vault audit file (leader only)");
                    let store: Arc<dyn CheckpointStore> = Arc::new(ConfigMapCheckpointStore::new(
                        client.clone(),
                        &namespace,
                        &audit.checkpoint_configmap,
                    ));
                    let opts = FileSourceOptions {
                        checkpoint_interval: audit.checkpoint_interval,
                        ..FileSourceOptions::new(path)
                    };
                    run_file_source(&runtime, opts, store, shutdown.clone()).await;
                }
            };
            let socket = async {
                if let Some(addr) = audit.socket {
                    info!(%addr, "serving the Vault socket audit device (leader only)");
                    run_socket_source(&runtime, addr, shutdown.clone()).await;
                }
            };
            tokio::select! {
                _ = futures::future::join(file, socket) => {}
                // Shut down while waiting for the rules: no source started.
                _ = shutdown.clone() => {}
            }
        };
        let status = status_loop(
            status_api.clone(),
            rules.clone(),
            reader.clone(),
            true,
            audit.status_debounce,
            shutdown.clone(),
        );
        tokio::join!(controller, sources, status);
        // The counters of the last lines read, then the queued alert Events.
        flush_status(&status_api, &rules, &reader, true, &mut BTreeSet::new()).await;
        if tokio::time::timeout(Duration::from_secs(10), runtime.shutdown())
            .await
            .is_err()
        {
            warn!("queued audit alerts were not all delivered within 10s of shutdown");
        }
        info!("audit sources stopped");
    };
    Ok(fut.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn rule(yaml: &str) -> AuditAlertRule {
        let mut r = AuditAlertRule::new("r", serde_json::from_str(yaml).unwrap());
        r.metadata.generation = Some(2);
        r
    }

    fn ready(s: &AuditAlertRuleStatus) -> (ConditionStatus, String) {
        let c = find_condition(&s.conditions, condition_types::READY).unwrap();
        (c.status, c.reason.clone())
    }

    #[test]
    fn without_a_source_an_active_rule_says_so_and_other_reasons_stay() {
        let rules = RuleSet::new(Arc::new(SystemClock));
        let ok = rule(r#"{"match": {"paths": ["secret/**"]}}"#);
        rules.apply(&ok, WebhookResolution::None);
        let s = rule_status(&rules, &ok, false);
        assert_eq!(ready(&s), (ConditionStatus::False, NO_AUDIT_SOURCE.into()));
        assert_eq!(s.observed_generation, Some(2));
        let s = rule_status(&rules, &ok, true);
        assert_eq!(ready(&s), (ConditionStatus::True, "Active".into()));

        let bad = rule(
            r#"{"timeWindow": {"start": "01:00", "end": "02:00", "timeZone": "Mars/Olympus"}}"#,
        );
        rules.apply(&bad, WebhookResolution::None);
        let s = rule_status(&rules, &bad, false);
        assert_eq!(ready(&s), (ConditionStatus::False, "InvalidSpec".into()));

        let suspended = rule(r#"{"suspend": true}"#);
        rules.apply(&suspended, WebhookResolution::None);
        assert_eq!(
            ready(&rule_status(&rules, &suspended, false)),
            (ConditionStatus::False, "Suspended".into())
        );
    }

    #[test]
    fn counters_continue_from_the_recorded_status() {
        let rules = RuleSet::new(Arc::new(SystemClock));
        let mut r = rule(r#"{}"#);
        r.status = Some(AuditAlertRuleStatus {
            matches_total: 41,
            last_match_time: Some(Utc::now()),
            ..Default::default()
        });
        let s = rules.apply(&r, WebhookResolution::None);
        assert_eq!(s.matches_total, 41);
    }

    #[test]
    fn predicate_ignores_status() {
        let a = rule(r#"{}"#);
        let mut b = a.clone();
        b.status = Some(AuditAlertRuleStatus {
            matches_total: 3,
            ..Default::default()
        });
        assert_eq!(predicate(&a), predicate(&b));
        b.metadata.generation = Some(3);
        assert_ne!(predicate(&a), predicate(&b));
    }

    #[test]
    fn config_defaults_and_metrics_registration() {
        let mut c = AuditConfig::default();
        assert_eq!(c.checkpoint_configmap, DEFAULT_CHECKPOINT_CONFIGMAP);
        assert_eq!(c.checkpoint_interval, Duration::from_secs(30));
        assert!(!c.has_source());
        let mut registry = Registry::default();
        c.register_metrics(&mut registry);
        assert!(c.metrics.is_none(), "nothing registered without a source");
        c.socket = Some("127.0.0.1:0".parse().unwrap());
        c.register_metrics(&mut registry);
        assert!(c.metrics.is_some());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("certus_audit_"), "{out}");
    }
}
