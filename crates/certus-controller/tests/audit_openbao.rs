//! Tier 2: the operator's audit wiring on the REAL OpenBao and its file audit device
//! (`$CERTUS_AUDIT_LOG`), started by `hack/services-up.sh`. Fails, never skips, when
//! `VAULT_ADDR` (or the token / audit log) is not set: run `hack/services-up.sh && . .hack/env`.
//!
//! Each test follows the live audit log from its current end with the operator's file
//! source ([`audit::run_file_source`]: restarts on errors, checkpoint saves), uses a
//! unique userpass mount (other suites write to the same log in parallel), and ends with
//! a "marker" request whose rule tells when every earlier entry has been processed.

#[path = "../../certus-audit/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certus_api::AuditAlertRule;
use certus_audit::{
    CheckpointStore, FileSourceOptions, MemoryCheckpointStore, StartAt, TailOptions,
    WebhookResolution,
};
use certus_controller::audit::{self, ConfigMapCheckpointStore, KubeEventSink};
use common::{harness, rule, sample, wait_until, Harness};
use futures::FutureExt;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::reflector;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock;

struct Bao {
    addr: String,
    token: String,
    audit_log: PathBuf,
    http: reqwest::Client,
}

fn bao() -> Bao {
    let need = |k: &str| {
        std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!("{k} is not set: this test needs the real OpenBao with its file audit device. Run `hack/services-up.sh && . .hack/env` first")
        })
    };
    let addr = need("VAULT_ADDR");
    let token = need("VAULT_TOKEN");
    let audit_log = PathBuf::from(need("CERTUS_AUDIT_LOG"));
    assert!(
        audit_log.exists(),
        "CERTUS_AUDIT_LOG={} does not exist: run `hack/services-up.sh`",
        audit_log.display()
    );
    Bao {
        addr,
        token,
        audit_log,
        http: certus_audit::webhook::default_client().unwrap(),
    }
}

impl Bao {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> u16 {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr));
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| {
            panic!(
                "OpenBao at {} is not reachable ({e}): run `hack/services-up.sh`",
                self.addr
            )
        });
        resp.status().as_u16()
    }

    async fn root(&self, method: reqwest::Method, path: &str, body: Value) {
        let token = self.token.clone();
        let status = self.call(method, path, Some(&token), Some(body)).await;
        assert!(status < 300, "{path}: HTTP {status}");
    }

    /// A userpass mount with users `alice` and `bob` (password `correct-horse`).
    async fn userpass(&self, mount: &str) {
        self.root(
            reqwest::Method::POST,
            &format!("sys/auth/{mount}"),
            json!({"type": "userpass"}),
        )
        .await;
        for user in ["alice", "bob"] {
            self.root(
                reqwest::Method::POST,
                &format!("auth/{mount}/users/{user}"),
                json!({"password": "correct-horse", "token_policies": "default"}),
            )
            .await;
        }
    }

    async fn login(&self, mount: &str, user: &str, password: &str) -> bool {
        self.call(
            reqwest::Method::POST,
            &format!("auth/{mount}/login/{user}"),
            None,
            Some(json!({"password": password})),
        )
        .await
            == 200
    }

    async fn cleanup(&self, mount: &str) {
        let token = self.token.clone();
        self.call(
            reqwest::Method::DELETE,
            &format!("sys/auth/{mount}"),
            Some(&token),
            None,
        )
        .await;
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// The proposal's failed-login sample (count 6 in 5m per address) on `mount` only, and
/// a marker rule (a successful login on `mount`).
fn rules_for(mount: &str) -> Vec<AuditAlertRule> {
    let mut failed = sample("failed-logins.yaml");
    failed.spec.match_.paths = vec![format!("auth/{mount}/login/**")];
    failed.spec.webhook = None;
    failed.metadata.uid = Some("uid-failed-logins-burst".into());
    let marker = rule(
        "marker",
        &format!("match: {{paths: ['auth/{mount}/login/*'], result: Success}}"),
    );
    vec![failed, marker]
}

fn file_opts(bao: &Bao) -> FileSourceOptions {
    FileSourceOptions {
        tail: TailOptions {
            start_at: StartAt::End,
            ..Default::default()
        },
        poll_interval: Duration::from_millis(25),
        checkpoint_interval: Duration::from_millis(100),
        ..FileSourceOptions::new(&bao.audit_log)
    }
}

/// Runs the operator's file source on the real log (with `store`) while `requests` runs;
/// then waits for the marker rule to reach `markers`, stops the source (final checkpoint)
/// and drains the alert queues.
async fn follow<F: std::future::Future<Output = ()>>(
    h: Harness,
    bao: &Bao,
    store: Arc<dyn CheckpointStore>,
    markers: u64,
    requests: F,
) -> (Arc<common::Collect>, Arc<certus_audit::AuditMetrics>) {
    let Harness {
        runtime,
        events,
        metrics,
    } = h;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stop_rx.await;
    }
    .boxed()
    .shared();
    let source = audit::run_file_source(&runtime, file_opts(bao), store, shutdown);
    let rules = runtime.rules();
    let m = metrics.clone();
    let driver = async move {
        wait_until(
            "the audit file to be opened",
            Duration::from_secs(10),
            || m.source_event_count("opened") + m.source_event_count("resumed") > 0,
        )
        .await;
        requests.await;
        wait_until("the marker entry", Duration::from_secs(15), || {
            rules
                .stats("marker")
                .is_some_and(|s| s.matches_total >= markers)
        })
        .await;
        stop_tx.send(()).unwrap();
    };
    tokio::time::timeout(Duration::from_secs(40), async {
        tokio::join!(source, driver);
    })
    .await
    .expect("the file source stops on shutdown");
    runtime.shutdown().await;
    (events, metrics)
}

/// Six failed userpass logins on the real OpenBao, read by the operator's file source
/// from the file audit device: the failed-login rule raises exactly one alert (one Event)
/// with count 6; the checkpoint is saved; a restart from that checkpoint does not raise
/// it again.
#[tokio::test]
async fn six_failed_logins_raise_exactly_one_event_and_a_restart_does_not_repeat_it() {
    let bao = bao();
    let mount = unique("ctl-aud-");
    bao.userpass(&mount).await;
    let store = Arc::new(MemoryCheckpointStore::default());

    let h = harness();
    for r in rules_for(&mount) {
        h.runtime.rules().apply(&r, WebhookResolution::None);
    }
    let (events, metrics) = follow(h, &bao, store.clone(), 1, async {
        for _ in 0..6 {
            assert!(!bao.login(&mount, "alice", "wrong-password").await);
        }
        // The marker: a successful login (alice is locked out after 5 failures).
        assert!(bao.login(&mount, "bob", "correct-horse").await);
    })
    .await;
    let alerts = events.for_rule("failed-logins-burst");
    assert_eq!(alerts.len(), 1, "exactly one Event: {alerts:#?}");
    let a = &alerts[0];
    assert_eq!((a.count, a.severity), (6, "Critical"));
    assert_eq!(a.path, format!("auth/{mount}/login/alice"));
    assert_eq!(a.group.as_deref(), Some("127.0.0.1"));
    assert_eq!(metrics.malformed_count("file"), 0);

    // The Event the operator would publish for this real alert.
    let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (reader, _) = reflector::store::<AuditAlertRule>();
    let sink = KubeEventSink::new(Client::new(service, "default"), None, reader);
    let e = sink.event(a, sink.regarding(&a.rule));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reason.as_deref(), Some("AuditAlert"));
    let note = e.note.unwrap();
    assert!(
        note.starts_with(&format!(
            "[Critical] 6 hits in 5m for 127.0.0.1; last: update auth/{mount}/login/alice"
        )),
        "{note}"
    );
    assert!(!note.contains("wrong-password"), "{note}");

    let cp = store.get().expect("the checkpoint was saved");
    assert_eq!(PathBuf::from(&cp.path), bao.audit_log);
    let len = std::fs::metadata(&bao.audit_log).unwrap().len();
    assert!(
        cp.offset > 0 && cp.offset <= len,
        "{cp:?} (file has {len} bytes)"
    );

    // A restart resumes after the six failures: a new marker, no new alert.
    let h = harness();
    for r in rules_for(&mount) {
        h.runtime.rules().apply(&r, WebhookResolution::None);
    }
    let (events, metrics) = follow(h, &bao, store.clone(), 1, async {
        assert!(bao.login(&mount, "bob", "correct-horse").await);
    })
    .await;
    assert!(
        metrics.source_event_count("resumed") > 0,
        "resumed from the checkpoint"
    );
    assert_eq!(
        events.for_rule("failed-logins-burst"),
        vec![],
        "no repeat after the restart"
    );
    assert_eq!(events.for_rule("marker").len(), 1);
    bao.cleanup(&mount).await;
}

/// What the fake API server saw.
#[derive(Default)]
struct Seen {
    configmap: Option<Value>,
    events: Vec<Value>,
    unexpected: Vec<String>,
}

/// The same burst through the operator's Kubernetes sinks against a fake API server: the
/// alert is one `AuditAlert` Warning Event POSTed on the rule (with its uid), and the
/// checkpoint lands in the ConfigMap by server-side apply.
#[tokio::test]
async fn the_kubernetes_sinks_post_one_event_and_checkpoint_to_the_configmap() {
    let bao = bao();
    let mount = unique("ctl-aud-k-");
    bao.userpass(&mount).await;
    let rules = rules_for(&mount);

    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        let cm = "/api/v1/namespaces/certus-system/configmaps/certus-vault-audit-checkpoint";
        while let Some((req, respond)) = handle.next_request().await {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let body = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut s = s.lock().unwrap();
            let (status, reply) = match (method.clone(), path.as_str()) {
                (Method::GET, p) if p == cm => match &s.configmap {
                    Some(c) => (200, c.clone()),
                    None => (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
                    ),
                },
                (Method::PATCH, p) if p == cm => {
                    s.configmap = Some(body.clone());
                    (200, body)
                }
                (Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events") => {
                    s.events.push(body.clone());
                    (201, body)
                }
                _ => {
                    s.unexpected.push(format!("{method} {path}"));
                    (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not served"}),
                    )
                }
            };
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });

    let (reader, mut writer) = reflector::store::<AuditAlertRule>();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
    for r in &rules {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(r.clone()));
    }
    writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
    let sink = Arc::new(KubeEventSink::new(
        client.clone(),
        Some("operator-0".into()),
        reader,
    ));
    let metrics = Arc::new(certus_audit::AuditMetrics::unregistered(Default::default()));
    let runtime = certus_audit::AuditRuntime::with_metrics(
        metrics.clone(),
        Some(sink as Arc<dyn certus_audit::EventSink>),
        Default::default(),
        Arc::new(certus_audit::SystemClock),
        certus_audit::TimeBasis::EntryTime,
        None,
    )
    .unwrap();
    for r in &rules {
        runtime.rules().apply(r, WebhookResolution::None);
    }
    let store = Arc::new(ConfigMapCheckpointStore::new(
        client,
        "certus-system",
        audit::DEFAULT_CHECKPOINT_CONFIGMAP,
    ));
    let h = Harness {
        runtime,
        events: Arc::new(common::Collect::default()),
        metrics,
    };
    follow(h, &bao, store, 1, async {
        for _ in 0..6 {
            assert!(!bao.login(&mount, "alice", "wrong-password").await);
        }
        assert!(bao.login(&mount, "bob", "correct-horse").await);
    })
    .await;
    bao.cleanup(&mount).await;

    let s = seen.lock().unwrap();
    assert_eq!(s.unexpected, Vec::<String>::new());
    let burst: Vec<&Value> = s
        .events
        .iter()
        .filter(|e| e["regarding"]["name"] == "failed-logins-burst")
        .collect();
    assert_eq!(burst.len(), 1, "exactly one Event: {burst:#?}");
    let e = burst[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "AuditAlert");
    assert_eq!(e["regarding"]["uid"], "uid-failed-logins-burst");
    assert_eq!(e["reportingInstance"], "operator-0");
    assert!(
        e["note"]
            .as_str()
            .unwrap()
            .starts_with("[Critical] 6 hits in 5m for 127.0.0.1"),
        "{e}"
    );
    let cm = s
        .configmap
        .as_ref()
        .expect("the checkpoint ConfigMap was applied");
    let cp =
        certus_audit::Checkpoint::from_json(cm["data"][audit::CHECKPOINT_KEY].as_str().unwrap())
            .unwrap();
    assert_eq!(PathBuf::from(&cp.path), bao.audit_log);
    assert!(cp.offset > 0);
}
