//! End-to-end tests of the audit pipeline without Vault: file source with checkpoints
//! and restarts, socket listener, webhook delivery (against an in-process HTTP server),
//! and the samples.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certus_audit::{
    Backoff, CheckpointStore, CompiledRule, DispatcherOptions, FileCheckpointStore,
    FileSourceOptions, LineOutcome, SocketSourceOptions, StartAt, SystemClock, TailOptions,
    TimeBasis, WebhookResolution, WebhookTarget,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Mutex};

fn append(path: &Path, s: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

fn lines(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            read_line(
                &format!("secret/data/prod/n{i}"),
                "svc",
                "2026-06-01T10:00:00Z",
            ) + "\n"
        })
        .collect()
}

const EVERY_PROD_READ: &str = "match: {paths: ['secret/data/prod/**'], operations: [read]}";

fn file_opts(path: &Path, start_at: StartAt) -> FileSourceOptions {
    FileSourceOptions {
        tail: TailOptions {
            start_at,
            rotation_grace: Duration::ZERO,
            ..Default::default()
        },
        poll_interval: Duration::from_millis(20),
        checkpoint_interval: Duration::from_millis(50),
        ..FileSourceOptions::new(path)
    }
}

/// Runs one "operator process": a fresh runtime (fresh rules and threshold state)
/// reading `path` with `store`, until `until` holds; then a clean shutdown.
async fn run_process(
    path: &Path,
    store: Arc<dyn CheckpointStore>,
    start_at: StartAt,
    during: impl FnOnce(),
    until: impl Fn(&Harness) -> bool,
) -> Harness {
    let h = harness();
    h.runtime.rules().apply(
        &rule("prod-reads", EVERY_PROD_READ),
        WebhookResolution::None,
    );
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(h.runtime.run_file(file_opts(path, start_at), store, async {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(60)).await;
    during();
    wait_until("alerts", Duration::from_secs(10), || until(&h)).await;
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    h
}

fn paths(h: &Harness) -> Vec<String> {
    h.events.alerts().into_iter().map(|a| a.path).collect()
}

fn expected(from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| format!("secret/data/prod/n{i}"))
        .collect()
}

#[tokio::test]
async fn restart_resumes_from_the_checkpoint_without_duplicate_or_missed_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let store: Arc<dyn CheckpointStore> =
        Arc::new(FileCheckpointStore::new(dir.path().join("checkpoint.json")));
    append(&log, &lines(0, 10));
    // First process: reads 0..15 and a partial 16th line, then stops.
    let first = run_process(
        &log,
        store.clone(),
        StartAt::Beginning,
        || {
            append(&log, &lines(10, 15));
            let l15 = lines(15, 16);
            append(&log, &l15[..40]);
        },
        |h| h.events.alerts().len() >= 15,
    )
    .await;
    assert_eq!(paths(&first), expected(0, 15));
    let cp = store.load().await.unwrap().unwrap();
    assert_eq!(
        cp.offset,
        lines(0, 15).len() as u64,
        "the checkpoint is right after the last complete line"
    );
    // While the operator is down: the partial line completes, more entries arrive.
    let l15 = lines(15, 16);
    append(&log, &l15[40..]);
    append(&log, &lines(16, 21));
    // Second process (StartAt::End would skip everything: the checkpoint wins).
    let second = run_process(
        &log,
        store.clone(),
        StartAt::End,
        || {},
        |h| h.events.alerts().len() >= 6,
    )
    .await;
    // Give it a moment to show that nothing else arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(paths(&second), expected(15, 21), "no duplicate, no gap");
    assert_eq!(second.metrics.source_event_count("resumed"), 1);
    // Third process with nothing new: no alert at all.
    let third = run_process(&log, store, StartAt::Beginning, || {}, |_| true).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(third.events.alerts().is_empty());
}

#[tokio::test]
async fn restart_after_rotation_while_down_reads_the_rest_of_the_old_file_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let store: Arc<dyn CheckpointStore> =
        Arc::new(FileCheckpointStore::new(dir.path().join("checkpoint.json")));
    append(&log, &lines(0, 3));
    let first = run_process(
        &log,
        store.clone(),
        StartAt::Beginning,
        || {},
        |h| h.events.alerts().len() >= 3,
    )
    .await;
    assert_eq!(paths(&first), expected(0, 3));
    // Down: two more lines in the old file, rotation, three lines in the new one.
    append(&log, &lines(3, 5));
    std::fs::rename(&log, dir.path().join("audit.log.1")).unwrap();
    append(&log, &lines(5, 8));
    let second = run_process(
        &log,
        store,
        StartAt::Beginning,
        || {},
        |h| h.events.alerts().len() >= 5,
    )
    .await;
    assert_eq!(paths(&second), expected(3, 8));
    assert_eq!(second.metrics.source_event_count("resumed_rotated"), 1);
    assert_eq!(second.metrics.source_event_count("rotated"), 1);
}

#[tokio::test]
async fn malformed_lines_are_skipped_and_live_rotation_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let store: Arc<dyn CheckpointStore> =
        Arc::new(FileCheckpointStore::new(dir.path().join("checkpoint.json")));
    append(&log, &lines(0, 2));
    let h = run_process(
        &log,
        store,
        StartAt::Beginning,
        || {
            append(
                &log,
                "this is not json\n{\"type\": \"response\", \"auth\": {\"policies\": 7}}\n",
            );
            append(&log, &lines(2, 4));
        },
        |h| h.events.alerts().len() >= 4,
    )
    .await;
    assert_eq!(paths(&h), expected(0, 4));
    assert_eq!(
        h.metrics.malformed_count("file"),
        2,
        "counted and skipped, not fatal"
    );
    assert_eq!(h.metrics.line_count("file"), 6);

    // Live rotation then copytruncate, in one process.
    let store: Arc<dyn CheckpointStore> = Arc::new(certus_audit::MemoryCheckpointStore::default());
    let log2 = dir.path().join("audit2.log");
    append(&log2, &lines(0, 2));
    let dir_path = dir.path().to_path_buf();
    let log2c = log2.clone();
    let h = run_process(
        &log2,
        store,
        StartAt::Beginning,
        move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::rename(&log2c, dir_path.join("audit2.log.1")).unwrap();
            append(&log2c, &lines(2, 4));
        },
        |h| h.events.alerts().len() >= 4,
    )
    .await;
    assert_eq!(paths(&h), expected(0, 4));
    assert_eq!(h.metrics.source_event_count("rotated"), 1);
}

#[tokio::test]
async fn socket_listener_receives_entries_from_several_connections() {
    let h = harness();
    h.runtime.rules().apply(
        &rule("prod-reads", EVERY_PROD_READ),
        WebhookResolution::None,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(h.runtime.run_socket(
        listener,
        SocketSourceOptions::default(),
        async {
            let _ = rx.await;
        },
    ));
    // Connection 1: a line split across writes, a malformed line, a normal line.
    let mut c1 = TcpStream::connect(addr).await.unwrap();
    let l0 = read_line("secret/data/prod/s0", "svc", "2026-06-01T10:00:00Z");
    c1.write_all(&l0.as_bytes()[..30]).await.unwrap();
    c1.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.events.alerts().is_empty(), "a partial line is not parsed");
    c1.write_all(format!("{}\nnot json\n", &l0[30..]).as_bytes())
        .await
        .unwrap();
    // Connection 2 at the same time.
    let mut c2 = TcpStream::connect(addr).await.unwrap();
    c2.write_all(
        (read_line("secret/data/prod/s1", "svc", "2026-06-01T10:00:00Z") + "\n").as_bytes(),
    )
    .await
    .unwrap();
    c1.write_all(
        (read_line("secret/data/prod/s2", "svc", "2026-06-01T10:00:00Z") + "\n").as_bytes(),
    )
    .await
    .unwrap();
    // The last line of a connection may come without a newline before it closes.
    c2.write_all(read_line("secret/data/prod/s3", "svc", "2026-06-01T10:00:00Z").as_bytes())
        .await
        .unwrap();
    drop(c2);
    wait_until("4 socket alerts", Duration::from_secs(5), || {
        h.events.alerts().len() >= 4
    })
    .await;
    let got: BTreeSet<String> = paths(&h).into_iter().collect();
    let want: BTreeSet<String> = (0..4).map(|i| format!("secret/data/prod/s{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(h.metrics.malformed_count("socket"), 1);
    assert_eq!(h.metrics.line_count("socket"), 5);
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A tiny HTTP/1.1 server: answers each request with the next status of `script`
/// (the last one repeats) after `delay`, recording the requests.
struct Hook {
    url: String,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    hits: Arc<AtomicUsize>,
}

async fn hook(script: Vec<u16>, delay: Duration) -> Hook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks/s3cr3t-token",
        listener.local_addr().unwrap()
    );
    let requests = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(AtomicUsize::new(0));
    let (reqs, n) = (requests.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (reqs, n, script) = (reqs.clone(), n.clone(), script.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let (head, body) = loop {
                    let k = s.read(&mut tmp).await.unwrap_or(0);
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..k]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let head = text[..i].to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            break (
                                head,
                                String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string(),
                            );
                        }
                    }
                };
                let k = n.fetch_add(1, Ordering::SeqCst);
                reqs.lock().await.push((head, body));
                tokio::time::sleep(delay).await;
                let status = *script.get(k).or(script.last()).unwrap();
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Hook {
        url,
        requests,
        hits,
    }
}

fn target(url: &str, attempts: u32, timeout: &str) -> Arc<WebhookTarget> {
    let spec = serde_yaml::from_str(&format!(
        "{{secretRef: {{name: hook, namespace: ops}}, timeout: {timeout}, maxAttempts: {attempts}}}"
    ))
    .unwrap();
    let data = [
        ("url".to_string(), url.as_bytes().to_vec()),
        (
            "header.Authorization".to_string(),
            b"Bearer hook-secret".to_vec(),
        ),
    ]
    .into_iter()
    .collect();
    Arc::new(WebhookTarget::from_secret_data(&data, &spec).unwrap())
}

fn fast_backoff() -> DispatcherOptions {
    DispatcherOptions {
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn webhook_retries_server_errors_with_backoff_and_posts_json() {
    let server = hook(vec![500, 503, 200], Duration::ZERO).await;
    let h = harness_with(Arc::new(SystemClock), TimeBasis::EntryTime, fast_backoff());
    h.runtime.rules().apply(
        &rule("prod-reads", EVERY_PROD_READ),
        WebhookResolution::Target(target(&server.url, 5, "2s")),
    );
    let p = h.runtime.processor();
    let out = p.process_line(
        "file",
        read_line(
            "secret/data/prod/db",
            "userpass-alice",
            "2026-06-01T10:00:00Z",
        )
        .as_bytes(),
    );
    assert_eq!(out, LineOutcome::Entry { alerts: 1 });
    wait_until("delivery", Duration::from_secs(5), || {
        h.metrics.webhook_count("delivered") == 1
    })
    .await;
    assert_eq!(server.hits.load(Ordering::SeqCst), 3, "500, 503, then 200");
    let reqs = server.requests.lock().await.clone();
    let (head, body) = &reqs[2];
    assert!(
        head.starts_with("POST /hooks/s3cr3t-token HTTP/1.1"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("authorization: bearer hook-secret"),
        "{head}"
    );
    assert!(lower.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["kind"], "AuditAlert");
    assert_eq!(json["rule"], "prod-reads");
    assert_eq!(json["path"], "secret/data/prod/db");
    assert_eq!(json["identity"], "userpass-alice");
    assert_eq!(json["remoteAddress"], "10.1.2.3");
    assert!(
        !body.contains("hmac"),
        "no HMACs or bodies in the payload: {body}"
    );
    assert_eq!(h.metrics.webhook_count("failed"), 0);
}

#[tokio::test]
async fn webhook_gives_up_on_client_errors_and_after_max_attempts() {
    let bad_request = hook(vec![400], Duration::ZERO).await;
    let down = hook(vec![502], Duration::ZERO).await;
    let h = harness_with(Arc::new(SystemClock), TimeBasis::EntryTime, fast_backoff());
    let rules = h.runtime.rules();
    rules.apply(
        &rule("to-400", EVERY_PROD_READ),
        WebhookResolution::Target(target(&bad_request.url, 5, "2s")),
    );
    rules.apply(
        &rule("to-502", EVERY_PROD_READ),
        WebhookResolution::Target(target(&down.url, 3, "2s")),
    );
    h.runtime.processor().process_line(
        "file",
        read_line("secret/data/prod/db", "x", "2026-06-01T10:00:00Z").as_bytes(),
    );
    wait_until("two failures", Duration::from_secs(5), || {
        h.metrics.webhook_count("failed") == 2
    })
    .await;
    assert_eq!(
        bad_request.hits.load(Ordering::SeqCst),
        1,
        "4xx is not retried"
    );
    assert_eq!(down.hits.load(Ordering::SeqCst), 3, "maxAttempts");
    // Events were published regardless.
    assert_eq!(h.events.alerts().len(), 2);
}

#[tokio::test]
async fn a_slow_webhook_never_blocks_the_stream() {
    // The webhook takes 3 s per request; one delivery at a time; 8 queued at most.
    let slow = hook(vec![200], Duration::from_secs(3)).await;
    let h = harness_with(
        Arc::new(SystemClock),
        TimeBasis::EntryTime,
        DispatcherOptions {
            webhook_queue: 8,
            webhook_concurrency: 1,
            ..fast_backoff()
        },
    );
    h.runtime.rules().apply(
        &rule("prod-reads", EVERY_PROD_READ),
        WebhookResolution::Target(target(&slow.url, 1, "10s")),
    );
    let p = h.runtime.processor();
    let started = Instant::now();
    for i in 0..500 {
        let line = read_line(
            &format!("secret/data/prod/n{i}"),
            "x",
            "2026-06-01T10:00:00Z",
        );
        assert_eq!(
            p.process_line("file", line.as_bytes()),
            LineOutcome::Entry { alerts: 1 }
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "500 entries took {took:?}"
    );
    // Every alert reached the Event sink and the rule status; the webhook backlog was
    // bounded: the overflow was dropped and counted.
    wait_until("events", Duration::from_secs(5), || {
        h.events.alerts().len() == 500
    })
    .await;
    assert_eq!(
        h.runtime.rules().stats("prod-reads").unwrap().matches_total,
        500
    );
    let dropped = h.metrics.dropped_count("webhook");
    assert!((490..=492).contains(&dropped), "dropped {dropped}");
    assert!(slow.hits.load(Ordering::SeqCst) <= 1);
}

#[test]
fn samples_parse_validate_and_compile() {
    let mut seen = 0;
    for entry in std::fs::read_dir(samples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        if v["kind"] != "AuditAlertRule" {
            continue;
        }
        let rule: certus_api::AuditAlertRule = serde_yaml::from_str(&text).unwrap();
        kube::core::cel::validate_cel(&rule).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        CompiledRule::compile("sample", &rule.spec)
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[test]
fn sample_rules_behave_as_described() {
    use certus_audit::{parse_line, RuleSet};
    use chrono::{TimeZone, Utc};
    let clock = Arc::new(SystemClock);
    let rules = RuleSet::new(clock);
    for f in [
        "prod-reads-outside-hours.yaml",
        "failed-logins.yaml",
        "unexpected-identity.yaml",
    ] {
        rules.apply(&sample(f), WebhookResolution::None);
    }
    let eval = |line: String| -> Vec<String> {
        let e = parse_line(line.as_bytes()).unwrap().unwrap();
        let at = e.time.unwrap();
        rules
            .evaluate_at(&e, at)
            .into_iter()
            .map(|f| f.alert.rule)
            .collect()
    };
    // 03:00 Berlin on a Wednesday (01:00Z in summer).
    assert_eq!(
        eval(read_line(
            "secret/data/prod/db",
            "svc",
            "2026-06-03T01:00:00Z"
        )),
        ["prod-secrets-read-outside-business-hours"]
    );
    assert!(eval(read_line(
        "secret/data/prod/db",
        "svc2",
        "2026-06-03T10:00:00Z"
    ))
    .is_empty());
    // Saturday noon is outside business days.
    assert_eq!(
        eval(read_line(
            "certus/data/prod/x",
            "svc3",
            "2026-06-06T10:00:00Z"
        ))
        .len(),
        1
    );
    // The OpenAI key read by a human at noon: unexpected identity.
    assert_eq!(
        eval(read_line(
            "certus/data/prod/openai",
            "userpass-bob",
            "2026-06-03T10:00:00Z"
        )),
        ["openai-key-unexpected-reader"]
    );
    // By the certus-ask ServiceAccount: nothing.
    let sa_read = serde_json::json!({
        "time": "2026-06-03T10:00:00Z", "type": "response",
        "auth": {"display_name": "kubernetes-certus-tap-certus-ask", "metadata": {"service_account_name": "certus-ask", "service_account_namespace": "certus-tap"}},
        "request": {"operation": "read", "path": "certus/data/prod/openai", "mount_type": "kv"}
    });
    assert!(eval(sa_read.to_string()).is_empty());
    // 6 failed logins on two different mount styles from one address: fires on the 6th.
    let login = |path: &str, t: i64| {
        serde_json::json!({
            "time": (Utc.with_ymd_and_hms(2026, 6, 3, 10, 0, 0).unwrap() + chrono::Duration::seconds(t)).to_rfc3339(),
            "type": "response", "auth": {},
            "request": {"operation": "update", "path": path, "mount_type": "userpass", "remote_address": "203.0.113.9"},
            "error": "invalid credentials"
        })
        .to_string()
    };
    let mut fired = vec![];
    for i in 0..8 {
        let p = if i % 2 == 0 {
            "auth/userpass/login/bob"
        } else {
            "auth/approle/login"
        };
        fired.push(eval(login(p, i * 10)).len());
    }
    assert_eq!(fired, [0, 0, 0, 0, 0, 1, 0, 0]);
}

#[tokio::test]
async fn prometheus_rule_references_metrics_that_exist() {
    use prometheus_client::encoding::text::encode;
    let text = std::fs::read_to_string(samples_dir().join("prometheusrule.yaml")).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(v["kind"], "PrometheusRule");
    let mut registry = prometheus_client::registry::Registry::default();
    // Through the real path: the runtime registers the metrics; one alert and a few
    // entries create the series whose labels are not known in advance.
    let runtime =
        certus_audit::AuditRuntime::start(&mut registry, None, Default::default()).unwrap();
    runtime.rules().apply(
        &rule("prod-reads", EVERY_PROD_READ),
        WebhookResolution::None,
    );
    let p = runtime.processor();
    p.process_line(
        "file",
        read_line("secret/data/prod/db", "svc", "2026-06-01T10:00:00Z").as_bytes(),
    );
    let failed_login = r#"{"type":"response","auth":{},"request":{"operation":"update","path":"auth/userpass/login/bob","mount_point":"auth/userpass/"},"error":"invalid credentials"}"#;
    let denied = r#"{"type":"response","auth":{"display_name":"x","policy_results":{"allowed":false}},"request":{"operation":"read","path":"secret/data/a","mount_point":"secret/"},"error":"permission denied"}"#;
    p.process_line("file", failed_login.as_bytes());
    p.process_line("file", denied.as_bytes());
    let mut exposition = String::new();
    encode(&mut exposition, &registry).unwrap();
    let mut alerts = 0;
    let mut external = BTreeSet::new();
    for group in v["spec"]["groups"].as_sequence().unwrap() {
        for r in group["rules"].as_sequence().unwrap() {
            alerts += 1;
            let expr = r["expr"].as_str().unwrap();
            assert!(r["labels"]["severity"].is_string());
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("certus_audit_") {
                    let family = word.trim_end_matches("_total");
                    assert!(
                        exposition.contains(&format!("# TYPE {family} ")),
                        "{word} is not exported by AuditMetrics:\n{exposition}"
                    );
                } else if word.starts_with("certus_") {
                    external.insert(word.to_string());
                }
            }
        }
    }
    assert!(alerts >= 10);
    for name in [
        "certus_audit_requests_total{",
        "certus_audit_denials_total{",
        "certus_audit_failed_logins_total{",
        "certus_audit_rule_matches_total{rule=\"prod-reads\"",
    ] {
        assert!(exposition.contains(name), "{name} missing:\n{exposition}");
    }
    // Emitted by the DynamicCredential and RotationPolicy controllers.
    assert_eq!(
        external.into_iter().collect::<Vec<_>>(),
        [
            "certus_dynamic_credential_expiry_seconds",
            "certus_dynamic_credential_renewal_overdue_seconds",
            "certus_rotation_due"
        ]
    );
}
