//! Tier 2 (no Vault needed): the audit wiring against a mocked Kubernetes API. Every
//! request's method, path, query and body is asserted, in order, with short timeouts that
//! also catch unexpected extra requests (`ApiServerVerifier` on `tower-test`).
//!
//! - the `AuditAlertRule` reconcile: webhook Secret lookup, server-side applied status
//!   (`NoAuditSource` without a source, `SecretNotFound`, `Active`), Warning Events on a
//!   changed `Ready`, counters continued from `status.matchesTotal`;
//! - `KubeEventSink`: one Warning Event (`AuditAlert`) per alert on the rule;
//! - `ConfigMapCheckpointStore`: load (missing → `None`), save (apply body), load back;
//! - the status freshness loop: a rule that fired gets its counters written.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use certus_api::{AuditAlertRule, AuditAlertRuleStatus};
use certus_audit::{Alert, Checkpoint, CheckpointStore, EventSink, RuleSet, SystemClock};
use certus_controller::audit::{
    self, ConfigMapCheckpointStore, KubeEventSink, RuleContext, CHECKPOINT_KEY,
    DEFAULT_CHECKPOINT_CONFIGMAP, NO_AUDIT_SOURCE,
};
use certus_controller::{Context, RunOptions};
use chrono::{TimeZone, Utc};
use http::{Method, Request, Response};
use kube::api::Api;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self, SendResponse};

const RULES: &str = "/apis/vault.certus.io/v1alpha1/auditalertrules";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

impl Call {
    fn expect_apply(&self) {
        assert_eq!(
            self.content_type, "application/apply-patch+yaml",
            "server-side apply expected"
        );
        assert!(
            self.query.contains("fieldManager=certus-vault-operator"),
            "query: {}",
            self.query
        );
        assert!(self.query.contains("force=true"), "query: {}", self.query);
    }
    fn fail(self, code: u16, reason: &str) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{reason} (mock)"), "reason": reason, "code": code
        });
        self.reply(code, &body);
    }
}

impl ApiServerVerifier {
    /// Asserts the status apply of rule `name`, answers it, returns the `status` sent.
    async fn expect_status(&mut self, name: &str) -> Value {
        let call = self.next("the status PATCH").await;
        call.expect(Method::PATCH, &format!("{RULES}/{name}/status"));
        call.expect_apply();
        assert_eq!(call.body["apiVersion"], "vault.certus.io/v1alpha1");
        assert_eq!(call.body["kind"], "AuditAlertRule");
        let status = call.body["status"].clone();
        let reply = json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "AuditAlertRule",
            "metadata": {"name": name, "uid": "u", "generation": 1}, "spec": {}, "status": status
        });
        call.reply(200, &reply);
        status
    }

    /// Asserts an Event POST in `default`; answers it; returns the body.
    async fn expect_event(&mut self) -> Value {
        let call = self.next("an Event POST").await;
        call.expect(Method::POST, EVENTS);
        let body = call.body.clone();
        call.reply(201, &body);
        body
    }
}

fn mocked() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

fn context(client: Client) -> Arc<Context> {
    let (policies, _) = reflector::store();
    Arc::new(Context::new(client, RunOptions::default(), policies))
}

fn rule(name: &str, spec: Value) -> AuditAlertRule {
    let mut r = AuditAlertRule::new(name, serde_json::from_value(spec).unwrap());
    r.metadata.uid = Some(format!("uid-{name}"));
    r.metadata.generation = Some(1);
    r.metadata.resource_version = Some("5".into());
    r
}

fn store_of(rules: &[AuditAlertRule]) -> Store<AuditAlertRule> {
    let (reader, mut writer) = reflector::store::<AuditAlertRule>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for r in rules {
        writer.apply_watcher_event(&watcher::Event::InitApply(r.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

fn ready(status: &Value) -> (String, String, String) {
    let c = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition in {status:#}"));
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
        c["message"].as_str().unwrap().to_string(),
    )
}

/// Runs `fut` beside the scripted server; the scenario's panics surface first.
async fn drive<T>(
    scenario: JoinHandle<ApiServerVerifier>,
    fut: impl std::future::Future<Output = T>,
) -> T {
    let (result, verifier) =
        tokio::join!(tokio::time::timeout(Duration::from_secs(20), fut), scenario);
    if let Err(e) = verifier {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("scenario failed: {e}");
    }
    result.expect("did not finish in 20s (a request went unanswered?)")
}

const WEBHOOK: &str = "audit-hook";
const WEBHOOK_NS: &str = "security";

fn with_webhook(name: &str) -> AuditAlertRule {
    rule(
        name,
        json!({
            "severity": "Critical",
            "match": {"paths": ["auth/*/login/*"], "result": "Error"},
            "threshold": {"count": 6, "window": "5m", "groupBy": "RemoteAddress"},
            "webhook": {"secretRef": {"name": WEBHOOK, "namespace": WEBHOOK_NS}}
        }),
    )
}

// ---- the AuditAlertRule reconcile ---------------------------------------------------------

/// No audit source: the rule is compiled, its counters continue from the recorded
/// status, and `Ready=False NoAuditSource` is applied on /status (no Event: it is the
/// operator's configuration, not the rule's fault).
#[tokio::test]
async fn without_a_source_the_rule_reports_no_audit_source_and_keeps_its_counters() {
    let (client, mut api) = mocked();
    let mut r = rule(
        "prod-reads",
        json!({"match": {"paths": ["secret/data/prod/**"]}}),
    );
    let last = Utc.with_ymd_and_hms(2026, 5, 1, 3, 0, 0).unwrap();
    r.status = Some(AuditAlertRuleStatus {
        matches_total: 7,
        last_match_time: Some(last),
        last_match_summary: Some("read secret/data/prod/db by svc".into()),
        ..Default::default()
    });
    let rules = RuleSet::new(Arc::new(SystemClock));
    let rctx = Arc::new(RuleContext {
        ctx: context(client),
        rules: rules.clone(),
        source: false,
    });
    let scenario = tokio::spawn(async move {
        let status = api.expect_status("prod-reads").await;
        let (st, reason, message) = ready(&status);
        assert_eq!((st.as_str(), reason.as_str()), ("False", NO_AUDIT_SOURCE));
        assert!(message.contains("--audit-file"), "{message}");
        assert_eq!(status["matchesTotal"], 7, "{status:#}");
        assert_eq!(
            status["lastMatchSummary"],
            "read secret/data/prod/db by svc"
        );
        assert_eq!(status["observedGeneration"], 1);
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let action = drive(scenario, audit::reconcile(Arc::new(r), rctx.clone())).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(rules.names(), vec!["prod-reads".to_string()]);
    assert_eq!(rules.stats("prod-reads").unwrap().matches_total, 7);
    assert_eq!(rctx.ctx.metrics.reconciles("AuditAlertRule"), 1);
}

/// A webhook whose Secret is missing: `Ready=False SecretNotFound` (naming the Secret,
/// never a value), one Warning Event, a re-check within a minute. The rule is loaded
/// anyway: Events and metrics still work.
#[tokio::test]
async fn a_missing_webhook_secret_is_secret_not_found_with_a_warning_and_a_recheck() {
    let (client, mut api) = mocked();
    let r = with_webhook("failed-logins");
    let rules = RuleSet::new(Arc::new(SystemClock));
    let rctx = Arc::new(RuleContext {
        ctx: context(client),
        rules: rules.clone(),
        source: true,
    });
    let scenario = tokio::spawn(async move {
        let call = api.next("the webhook Secret GET").await;
        call.expect(
            Method::GET,
            &format!("/api/v1/namespaces/{WEBHOOK_NS}/secrets/{WEBHOOK}"),
        );
        call.fail(404, "NotFound");
        let event = api.expect_event().await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "SecretNotFound");
        assert_eq!(event["regarding"]["kind"], "AuditAlertRule");
        assert_eq!(event["regarding"]["name"], "failed-logins");
        let status = api.expect_status("failed-logins").await;
        let (st, reason, message) = ready(&status);
        assert_eq!((st.as_str(), reason.as_str()), ("False", "SecretNotFound"));
        assert!(message.contains("security/audit-hook"), "{message}");
        assert_eq!(status["matchesTotal"], 0);
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let action = drive(scenario, audit::reconcile(Arc::new(r), rctx)).await;
    assert_eq!(action.unwrap(), Action::requeue(audit::WEBHOOK_RECHECK));
    assert_eq!(rules.names(), vec!["failed-logins".to_string()]);
}

/// With a source and a usable webhook Secret: `Ready=True Active`, no Event, and a
/// periodic re-read of the Secret (resync interval).
#[tokio::test]
async fn a_rule_with_its_webhook_secret_is_active() {
    let (client, mut api) = mocked();
    let mut r = with_webhook("failed-logins");
    // Already Active before: nothing changes, no Event.
    r.status = Some(AuditAlertRuleStatus {
        conditions: vec![certus_api::Condition::new(
            "Ready",
            certus_api::ConditionStatus::True,
            "Active",
            "evaluating audit entries",
            Some(1),
            Utc::now(),
        )],
        ..Default::default()
    });
    let rctx = Arc::new(RuleContext {
        ctx: context(client),
        rules: RuleSet::new(Arc::new(SystemClock)),
        source: true,
    });
    let scenario = tokio::spawn(async move {
        let call = api.next("the webhook Secret GET").await;
        call.expect(
            Method::GET,
            &format!("/api/v1/namespaces/{WEBHOOK_NS}/secrets/{WEBHOOK}"),
        );
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": WEBHOOK, "namespace": WEBHOOK_NS},
            "data": {
                // https://hooks.example.com/certus, Bearer t0ken
                "url": "aHR0cHM6Ly9ob29rcy5leGFtcGxlLmNvbS9jZXJ0dXM=",
                "header.Authorization": "QmVhcmVyIHQwa2Vu"
            }
        });
        call.reply(200, &secret);
        let status = api.expect_status("failed-logins").await;
        assert_eq!(
            ready(&status),
            (
                "True".to_string(),
                "Active".to_string(),
                "evaluating audit entries".to_string()
            )
        );
        assert!(!status.to_string().contains("t0ken"), "{status}");
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let action = drive(scenario, audit::reconcile(Arc::new(r), rctx)).await;
    assert_eq!(
        action.unwrap(),
        Action::requeue(RunOptions::default().resync_interval)
    );
}

// ---- Events ---------------------------------------------------------------------------------

fn alert(rule: &str) -> Alert {
    Alert {
        kind: "AuditAlert",
        rule: rule.to_string(),
        severity: "Critical",
        description: None,
        time: Utc.with_ymd_and_hms(2026, 5, 1, 3, 0, 0).unwrap(),
        operation: "update".into(),
        path: "auth/userpass/login/alice".into(),
        mount_type: "userpass".into(),
        identity: "anonymous".into(),
        remote_address: "10.0.0.9".into(),
        outcome: "error",
        count: 6,
        window: Some("5m".into()),
        group: Some("10.0.0.9".into()),
        summary: "6 hits in 5m for 10.0.0.9; last: update auth/userpass/login/alice by anonymous from 10.0.0.9 (error)".into(),
    }
}

/// An alert is one Warning Event `AuditAlert` on the rule (with its uid, from the rule
/// store), in `default` (the rule is cluster-scoped), note `[severity] summary`. A
/// rejected Event is an error for the sink (counted and logged by the dispatcher).
#[tokio::test]
async fn an_alert_is_a_warning_event_on_its_rule() {
    let (client, mut api) = mocked();
    let r = with_webhook("failed-logins");
    let sink = KubeEventSink::new(
        client,
        Some("certus-vault-operator-7d9f".into()),
        store_of(&[r]),
    );
    let scenario = tokio::spawn(async move {
        let call = api.next("the alert Event").await;
        call.expect(Method::POST, EVENTS);
        let e = call.body.clone();
        assert_eq!(e["apiVersion"], "events.k8s.io/v1");
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["reason"], "AuditAlert");
        assert_eq!(e["action"], "Alert");
        assert_eq!(
            e["note"],
            "[Critical] 6 hits in 5m for 10.0.0.9; last: update auth/userpass/login/alice by anonymous from 10.0.0.9 (error)"
        );
        assert_eq!(
            e["regarding"],
            json!({"apiVersion": "vault.certus.io/v1alpha1", "kind": "AuditAlertRule", "name": "failed-logins", "uid": "uid-failed-logins"})
        );
        assert_eq!(e["metadata"]["namespace"], "default");
        assert!(
            e["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("failed-logins."),
            "{e}"
        );
        assert_eq!(e["reportingController"], "certus-vault-operator");
        assert_eq!(e["reportingInstance"], "certus-vault-operator-7d9f");
        assert!(e["eventTime"].is_string());
        call.reply(201, &e);
        // A second alert is a second Event (not folded into the first one's series).
        let call = api.next("the second alert Event").await;
        call.expect(Method::POST, EVENTS);
        call.fail(403, "Forbidden");
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let a = alert("failed-logins");
    let (first, second) = drive(scenario, async {
        let first = sink.publish(&a).await;
        let second = sink.publish(&a).await;
        (first, second)
    })
    .await;
    assert_eq!(first, Ok(()));
    let err = second.unwrap_err();
    assert!(err.contains("403"), "{err}");
}

// ---- checkpoint ConfigMap ---------------------------------------------------------------------

/// Load of a missing ConfigMap is `None`; save is a server-side apply of the ConfigMap
/// with the checkpoint JSON under `checkpoint.json`; load reads it back; a corrupt value
/// is an error (the file source then retries instead of skipping).
#[tokio::test]
async fn checkpoint_configmap_load_missing_save_and_load_back() {
    let (client, mut api) = mocked();
    let store =
        ConfigMapCheckpointStore::new(client, "certus-system", DEFAULT_CHECKPOINT_CONFIGMAP);
    let cp = Checkpoint {
        path: "/vault/audit/audit.log".into(),
        dev: 64769,
        inode: 1234567,
        offset: 987654,
        prefix_len: 1024,
        prefix_hash: "ab".repeat(32),
    };
    let path =
        format!("/api/v1/namespaces/certus-system/configmaps/{DEFAULT_CHECKPOINT_CONFIGMAP}");
    let expected = cp.clone();
    let scenario = tokio::spawn(async move {
        let call = api.next("the checkpoint GET").await;
        call.expect(Method::GET, &path);
        call.fail(404, "NotFound");

        let call = api.next("the checkpoint apply").await;
        call.expect(Method::PATCH, &path);
        call.expect_apply();
        let body = call.body.clone();
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "ConfigMap");
        assert_eq!(body["metadata"]["name"], DEFAULT_CHECKPOINT_CONFIGMAP);
        assert_eq!(body["metadata"]["namespace"], "certus-system");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "certus-vault-operator"
        );
        let text = body["data"][CHECKPOINT_KEY]
            .as_str()
            .expect("the checkpoint key")
            .to_string();
        assert_eq!(text, expected.to_json());
        assert_eq!(Checkpoint::from_json(&text).unwrap(), expected);
        assert_eq!(body["data"].as_object().unwrap().len(), 1, "{body}");
        call.reply(200, &body);

        let call = api.next("the checkpoint GET").await;
        call.expect(Method::GET, &path);
        call.reply(200, &body);

        let call = api.next("the checkpoint GET").await;
        call.expect(Method::GET, &path);
        let mut corrupt = body.clone();
        corrupt["data"][CHECKPOINT_KEY] = json!("{not json");
        call.reply(200, &corrupt);
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (missing, saved, loaded, corrupt) = drive(scenario, async {
        let missing = store.load().await;
        let saved = store.save(&cp).await;
        let loaded = store.load().await;
        let corrupt = store.load().await;
        (missing, saved, loaded, corrupt)
    })
    .await;
    assert_eq!(missing.unwrap(), None);
    saved.unwrap();
    assert_eq!(loaded.unwrap(), Some(cp));
    let err = corrupt.unwrap_err().to_string();
    assert!(
        err.contains("certus-system/certus-vault-audit-checkpoint"),
        "{err}"
    );
}

// ---- status freshness ---------------------------------------------------------------------------

fn failed_login(addr: &str, second: u32) -> String {
    json!({
        "time": format!("2026-05-01T03:00:{second:02}Z"),
        "type": "response",
        "request": {"operation": "update", "path": "auth/userpass/login/alice", "mount_type": "userpass", "remote_address": addr},
        "response": {"mount_type": "userpass"},
        "error": "invalid username or password"
    })
    .to_string()
}

/// When a rule fires, the status loop writes its counters (after the debounce); a fired
/// rule that is gone from the store is dropped from the rule set without a request.
#[tokio::test]
async fn the_status_loop_writes_the_counters_of_rules_that_fired() {
    let (client, mut api) = mocked();
    let kept = with_webhook("failed-logins");
    let mut gone = kept.clone();
    gone.metadata.name = Some("deleted-meanwhile".into());
    let rules = RuleSet::new(Arc::new(SystemClock));
    rules.apply(&kept, certus_audit::WebhookResolution::None);
    rules.apply(&gone, certus_audit::WebhookResolution::None);
    let store = store_of(&[kept]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let status_loop = tokio::spawn(audit::status_loop(
        Api::all(client),
        rules.clone(),
        store,
        true,
        Duration::from_millis(50),
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fired = 0;
    for i in 0..6 {
        let line = failed_login("10.0.0.9", i);
        let entry = certus_audit::parse_line(line.as_bytes()).unwrap().unwrap();
        fired += rules.evaluate_at(&entry, entry.time.unwrap()).len();
    }
    assert_eq!(fired, 2, "each rule fires once, on the 6th failure");

    let status = tokio::time::timeout(Duration::from_secs(5), api.expect_status("failed-logins"))
        .await
        .unwrap();
    assert_eq!(status["matchesTotal"], 1, "{status:#}");
    assert_eq!(status["lastMatchTime"], "2026-05-01T03:00:05Z");
    let summary = status["lastMatchSummary"].as_str().unwrap();
    assert!(
        summary.starts_with("6 hits in 5m for 10.0.0.9"),
        "{summary}"
    );
    api.expect_no_more(Duration::from_millis(300)).await;
    assert_eq!(rules.names(), vec!["failed-logins".to_string()]);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), status_loop)
        .await
        .expect("the loop ends on shutdown")
        .unwrap();

    // A write that fails is retried with the next flush.
    let mut retry = BTreeSet::from(["failed-logins".to_string()]);
    let (client, mut api) = mocked();
    let store = store_of(&[with_webhook("failed-logins")]);
    let scenario = tokio::spawn(async move {
        let call = api.next("the status PATCH").await;
        call.expect(Method::PATCH, &format!("{RULES}/failed-logins/status"));
        call.fail(500, "InternalError");
        api
    });
    let api_rules: Api<AuditAlertRule> = Api::all(client);
    let written = drive(
        scenario,
        audit::flush_status(&api_rules, &rules, &store, true, &mut retry),
    )
    .await;
    assert_eq!(written, 0);
    assert_eq!(retry, BTreeSet::from(["failed-logins".to_string()]));
}

// ---- the whole audit part of `run`, with a socket source ------------------------------------

/// What the fake API server saw.
#[derive(Default)]
struct Seen {
    lists: usize,
    watches: usize,
    statuses: Vec<Value>,
    events: Vec<Value>,
    unexpected: Vec<String>,
}

/// A fake API server for `audit::run`: lists one rule, holds watches open, records
/// status applies and Events; anything else is unexpected.
async fn serve_rules(mut handle: ApiHandle, rule: Value, seen: Arc<std::sync::Mutex<Seen>>) {
    let mut open_watches = vec![];
    while let Some((req, respond)) = handle.next_request().await {
        let (method, path, query) = (
            req.method().clone(),
            req.uri().path().to_string(),
            req.uri().query().unwrap_or("").to_string(),
        );
        let body = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut s = seen.lock().unwrap();
        let reply = |respond: SendResponse<Response<Body>>, status: u16, body: &Value| {
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(body).unwrap()))
                    .unwrap(),
            )
        };
        match (method.clone(), path.as_str()) {
            (Method::GET, RULES) if query.contains("watch=true") => {
                s.watches += 1;
                open_watches.push(respond);
            }
            (Method::GET, RULES) => {
                s.lists += 1;
                let list = json!({"apiVersion": "vault.certus.io/v1alpha1", "kind": "AuditAlertRuleList", "metadata": {"resourceVersion": "10"}, "items": [rule.clone()]});
                reply(respond, 200, &list);
            }
            (Method::PATCH, p) if p == format!("{RULES}/failed-logins/status") => {
                s.statuses.push(body["status"].clone());
                let mut out = rule.clone();
                out["status"] = body["status"].clone();
                reply(respond, 200, &out);
            }
            (Method::POST, EVENTS) => {
                s.events.push(body.clone());
                reply(respond, 201, &body);
            }
            _ => {
                s.unexpected.push(format!("{method} {path}?{query}"));
                reply(
                    respond,
                    404,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not served"}),
                );
            }
        }
    }
}

async fn wait_for(what: &str, seen: &std::sync::Mutex<Seen>, f: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f(&seen.lock().unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `audit::run` with `--audit-socket`: the rule is listed through the guarded watch and
/// reconciled (`Ready=True Active`), the socket source starts once the rule is loaded, six
/// failed logins sent over the socket raise one `AuditAlert` Event on the rule, the status
/// loop writes `matchesTotal: 1`, `certus_audit_rule_matches_total` counts it on the
/// registry the caller registered, and shutdown ends the whole thing.
#[tokio::test]
async fn audit_run_with_a_socket_source_alerts_through_kubernetes_and_stops_on_shutdown() {
    use tokio::io::AsyncWriteExt;

    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut rule = serde_json::to_value(rule(
        "failed-logins",
        json!({
            "severity": "Critical",
            "match": {"paths": ["auth/*/login/*"], "result": "Error"},
            "threshold": {"count": 6, "window": "5m", "groupBy": "RemoteAddress"}
        }),
    ))
    .unwrap();
    rule["apiVersion"] = json!("vault.certus.io/v1alpha1");
    rule["kind"] = json!("AuditAlertRule");
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    tokio::spawn(serve_rules(handle, rule, seen.clone()));

    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut opts = RunOptions::default();
    opts.audit.socket = Some(addr);
    opts.audit.namespace = Some("certus-system".into());
    opts.audit.status_debounce = Duration::from_millis(50);
    let mut registry = prometheus_client::registry::Registry::default();
    opts.audit.register_metrics(&mut registry);
    let (policies, _) = reflector::store();
    let ctx = Arc::new(Context::new(client.clone(), opts.clone(), policies));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown: audit::Shutdown = futures::FutureExt::shared(Box::pin(async move {
        let _ = stop_rx.await;
    })
        as futures::future::BoxFuture<'static, ()>);
    let fut = audit::run(
        client,
        ctx,
        &opts,
        kube::runtime::controller::Config::default(),
        shutdown,
    )
    .unwrap();
    let task = tokio::spawn(fut);

    wait_for("the Active status", &seen, |s| {
        s.statuses.iter().any(|st| ready(st).1 == "Active")
    })
    .await;
    // The listener comes up once the rule is loaded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "socket source not listening: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    for i in 0..6 {
        conn.write_all((failed_login("10.0.0.9", i) + "\n").as_bytes())
            .await
            .unwrap();
    }
    conn.flush().await.unwrap();
    wait_for("the alert Event", &seen, |s| !s.events.is_empty()).await;
    wait_for("matchesTotal 1 in status", &seen, |s| {
        s.statuses.iter().any(|st| st["matchesTotal"] == 1)
    })
    .await;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            "certus_audit_rule_matches_total{rule=\"failed-logins\",severity=\"Critical\"} 1"
        ),
        "{text}"
    );

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("audit::run ends after shutdown")
        .unwrap();

    let s = seen.lock().unwrap();
    assert_eq!(s.unexpected, Vec::<String>::new());
    assert_eq!(
        (s.lists, s.watches),
        (1, 1),
        "one guarded watch of the rules"
    );
    assert_eq!(s.events.len(), 1, "exactly one Event: {:#?}", s.events);
    let e = &s.events[0];
    assert_eq!(e["reason"], "AuditAlert");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["uid"], "uid-failed-logins");
    assert!(
        e["note"]
            .as_str()
            .unwrap()
            .starts_with("[Critical] 6 hits in 5m for 10.0.0.9"),
        "{e}"
    );
    let last = s.statuses.last().unwrap();
    assert_eq!(last["matchesTotal"], 1, "{last:#}");
    assert_eq!(ready(last).1, "Active");
}
