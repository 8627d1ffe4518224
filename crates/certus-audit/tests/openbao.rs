//! Integration tests against the REAL OpenBao dev server and its file audit device
//! (`$CERTUS_AUDIT_LOG`), started by `hack/services-up.sh`.
//!
//! Each test follows the live audit log from its current end with the production file
//! source, makes real requests, and evaluates rules restricted to its own unique mount
//! and path names, because the tests run in parallel on one Vault (and other suites
//! write to the same log). A "marker" request made last, matched by a marker rule, tells
//! when every earlier entry has been processed (the log is written in order).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certus_api::AuditAlertRule;
use certus_audit::{
    CheckpointStore, Clock, DispatcherOptions, FileCheckpointStore, FileSourceOptions, ManualClock,
    MemoryCheckpointStore, StartAt, SystemClock, TailOptions, TimeBasis, WebhookResolution,
};
use chrono::{TimeZone, Utc};
use common::*;
use serde_json::{json, Value};
use tokio::sync::oneshot;

struct Bao {
    addr: String,
    token: String,
    audit_log: PathBuf,
    http: reqwest::Client,
}

/// The OpenBao the hack/ scripts started: from the environment, else from
/// `.hack/openbao.env`. Fails (never skips) when neither exists.
fn bao() -> Bao {
    let mut file_vars = std::collections::BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(repo_root().join(".hack/openbao.env")) {
        for line in text.lines() {
            if let Some((k, v)) = line
                .trim()
                .strip_prefix("export ")
                .and_then(|r| r.split_once('='))
            {
                file_vars.insert(k.to_string(), v.trim_matches('\'').to_string());
            }
        }
    }
    let get = |k: &str| std::env::var(k).ok().or_else(|| file_vars.get(k).cloned());
    let missing = |k: &str| -> String {
        panic!(
            "{k} is not set and .hack/openbao.env does not define it: these tests need the real OpenBao with its file audit device. Run `hack/services-up.sh` (then `. .hack/env`)."
        )
    };
    let audit_log =
        PathBuf::from(get("CERTUS_AUDIT_LOG").unwrap_or_else(|| missing("CERTUS_AUDIT_LOG")));
    assert!(
        audit_log.exists(),
        "CERTUS_AUDIT_LOG={} does not exist: run `hack/services-up.sh`",
        audit_log.display()
    );
    Bao {
        addr: get("VAULT_ADDR").unwrap_or_else(|| missing("VAULT_ADDR")),
        token: get("VAULT_TOKEN").unwrap_or_else(|| missing("VAULT_TOKEN")),
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
    ) -> (u16, Value) {
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
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn root(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self
            .call(method, path, Some(&self.token.clone()), body)
            .await;
        assert!(status < 300, "{path}: HTTP {status} {v}");
        v
    }

    async fn userpass(&self, mount: &str, users: &[(&str, &str)]) {
        self.root(
            reqwest::Method::POST,
            &format!("sys/auth/{mount}"),
            Some(json!({"type": "userpass"})),
        )
        .await;
        for (user, policy) in users {
            self.root(
                reqwest::Method::POST,
                &format!("auth/{mount}/users/{user}"),
                Some(json!({"password": "correct-horse", "token_policies": policy})),
            )
            .await;
        }
    }

    async fn login(&self, mount: &str, user: &str, password: &str) -> Option<String> {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("auth/{mount}/login/{user}"),
                None,
                Some(json!({"password": password})),
            )
            .await;
        (status == 200).then(|| v["auth"]["client_token"].as_str().unwrap().to_string())
    }

    async fn cleanup(&self, mount: &str) {
        let _ = self
            .call(
                reqwest::Method::DELETE,
                &format!("sys/auth/{mount}"),
                Some(&self.token.clone()),
                None,
            )
            .await;
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// A running file source on the real audit log, started at its current end.
struct Live {
    h: Harness,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), certus_audit::AuditError>>,
}

/// `rules` are loaded before the reader starts, so a resumed backlog is evaluated too.
async fn follow(
    bao: &Bao,
    clock: Arc<dyn Clock>,
    basis: TimeBasis,
    store: Arc<dyn CheckpointStore>,
    rules: Vec<AuditAlertRule>,
) -> Live {
    let h = harness_with(clock, basis, DispatcherOptions::default());
    for r in &rules {
        h.runtime.rules().apply(r, WebhookResolution::None);
    }
    let (tx, rx) = oneshot::channel::<()>();
    let opts = FileSourceOptions {
        tail: TailOptions {
            start_at: StartAt::End,
            ..Default::default()
        },
        poll_interval: Duration::from_millis(25),
        checkpoint_interval: Duration::from_millis(100),
        ..FileSourceOptions::new(&bao.audit_log)
    };
    let task = tokio::spawn(h.runtime.run_file(opts, store, async {
        let _ = rx.await;
    }));
    // The reader must have opened the file (at its end) before the test's requests.
    let m = h.metrics.clone();
    wait_until(
        "the audit file to be opened",
        Duration::from_secs(5),
        || m.source_event_count("opened") + m.source_event_count("resumed") > 0,
    )
    .await;
    Live {
        h,
        stop: Some(tx),
        task,
    }
}

impl Live {
    async fn stop(mut self) -> Harness {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
        self.h
    }

    /// Waits until the marker rule has fired `n` times in total.
    async fn wait_marker(&self, n: u64) {
        let rules = self.h.runtime.rules();
        wait_until("the marker entry", Duration::from_secs(15), || {
            rules.stats("marker").is_some_and(|s| s.matches_total >= n)
        })
        .await;
        // Give the Event queue a moment to drain.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn six_failed_logins_fire_the_failed_login_rule_exactly_once() {
    let bao = bao();
    let mount = unique("aud-fl-");
    bao.userpass(&mount, &[("alice", "default"), ("bob", "default")])
        .await;
    // The proposal's sample (count 6 = "more than 5 in 5 minutes"), restricted to this
    // test's mount; and a count-5 variant, which fires on the 5th failure and must then
    // stay quiet for the rest of the window.
    let mut sample = sample("failed-logins.yaml");
    sample.spec.match_.paths = vec![format!("auth/{mount}/login/**")];
    sample.spec.webhook = None;
    let five = rule(
        "failed-logins-5",
        &format!("match: {{paths: ['auth/{mount}/login/*'], result: Error}}\nthreshold: {{count: 5, window: 5m, groupBy: RemoteAddress}}"),
    );
    let marker = rule(
        "marker",
        &format!("match: {{paths: ['auth/{mount}/login/*'], result: Success}}"),
    );
    let live = follow(
        &bao,
        Arc::new(SystemClock),
        TimeBasis::EntryTime,
        Arc::new(MemoryCheckpointStore::default()),
        vec![sample, five, marker],
    )
    .await;
    let rules = live.h.runtime.rules();
    for _ in 0..6 {
        assert!(bao.login(&mount, "alice", "wrong-password").await.is_none());
    }
    // The marker: a successful login of another user (OpenBao locks `alice` out after
    // 5 failures, so she could not log in now).
    assert!(bao.login(&mount, "bob", "correct-horse").await.is_some());
    live.wait_marker(1).await;
    let h = live.stop().await;
    let five = h.events.for_rule("failed-logins-5");
    assert_eq!(five.len(), 1, "{five:#?}");
    assert_eq!(five[0].count, 5);
    assert_eq!(five[0].group.as_deref(), Some("127.0.0.1"));
    assert_eq!(five[0].identity, "anonymous");
    assert_eq!(five[0].path, format!("auth/{mount}/login/alice"));
    assert!(
        five[0]
            .summary
            .starts_with("5 hits in 5m for 127.0.0.1; last: update auth/"),
        "{}",
        five[0].summary
    );
    let six = h.events.for_rule("failed-logins-burst");
    assert_eq!(six.len(), 1, "{six:#?}");
    assert_eq!(six[0].count, 6);
    assert_eq!(six[0].severity, "Critical");
    assert_eq!(rules.stats("failed-logins-burst").unwrap().matches_total, 1);
    // Real lines from OpenBao parse: nothing malformed (other suites write too).
    assert_eq!(h.metrics.malformed_count("file"), 0);
    bao.cleanup(&mount).await;
}

#[tokio::test]
async fn a_prod_read_by_a_non_allowed_identity_fires_the_unexpected_identity_rule() {
    let bao = bao();
    let mount = unique("aud-ui-");
    let prefix = unique("aud-ui-");
    let policy = format!("{prefix}-reader");
    bao.root(
        reqwest::Method::PUT,
        &format!("sys/policies/acl/{policy}"),
        Some(json!({"policy": format!("path \"secret/data/{prefix}/prod/*\" {{ capabilities = [\"read\"] }}")})),
    )
    .await;
    bao.root(
        reqwest::Method::POST,
        &format!("secret/data/{prefix}/prod/openai"),
        Some(json!({"data": {"api_key": "sk-test-not-a-real-key"}})),
    )
    .await;
    bao.userpass(
        &mount,
        &[
            ("svc", &policy),
            ("intruder", &policy),
            ("nobody", "default"),
        ],
    )
    .await;
    let svc = bao.login(&mount, "svc", "correct-horse").await.unwrap();
    let intruder = bao
        .login(&mount, "intruder", "correct-horse")
        .await
        .unwrap();
    let nobody = bao.login(&mount, "nobody", "correct-horse").await.unwrap();
    // The sample, pointed at this test's path, allowing only the `svc` user.
    let mut sample = sample("unexpected-identity.yaml");
    sample.spec.match_.paths = vec![format!("secret/data/{prefix}/prod/**")];
    sample.spec.unexpected_identity.as_mut().unwrap().allowed =
        serde_yaml::from_str(&format!("[{{displayName: {mount}-svc}}]")).unwrap();
    let marker = rule(
        "marker",
        &format!("match: {{paths: ['secret/data/{prefix}/marker']}}"),
    );
    let live = follow(
        &bao,
        Arc::new(SystemClock),
        TimeBasis::EntryTime,
        Arc::new(MemoryCheckpointStore::default()),
        vec![sample, marker],
    )
    .await;
    let path = format!("secret/data/{prefix}/prod/openai");
    let (s, v) = bao
        .call(reqwest::Method::GET, &path, Some(&svc), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = bao
        .call(reqwest::Method::GET, &path, Some(&intruder), None)
        .await;
    assert_eq!(
        s, 200,
        "the intruder's policy allows the read: only the audit rule notices"
    );
    let (s, _) = bao
        .call(reqwest::Method::GET, &path, Some(&nobody), None)
        .await;
    assert_eq!(s, 403);
    bao.call(
        reqwest::Method::GET,
        &format!("secret/data/{prefix}/marker"),
        Some(&bao.token.clone()),
        None,
    )
    .await;
    live.wait_marker(1).await;
    let h = live.stop().await;
    let alerts = h.events.for_rule("openai-key-unexpected-reader");
    let who: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a.identity.as_str(), a.outcome))
        .collect();
    assert_eq!(
        who,
        [
            (format!("{mount}-intruder").as_str(), "success"),
            (format!("{mount}-nobody").as_str(), "permission denied")
        ],
        "{alerts:#?}"
    );
    assert_eq!(alerts[0].path, path);
    assert_eq!(alerts[0].operation, "read");
    // Secret-free: neither the value nor any HMAC reaches the alert.
    let dump = format!("{alerts:?}");
    assert!(
        !dump.contains("sk-test") && !dump.contains("hmac-sha256"),
        "{dump}"
    );
    bao.cleanup(&mount).await;
    let token = bao.token.clone();
    bao.call(
        reqwest::Method::DELETE,
        &format!("sys/policies/acl/{policy}"),
        Some(&token),
        None,
    )
    .await;
}

#[tokio::test]
async fn a_time_window_rule_fires_only_inside_its_window_with_an_injected_clock() {
    let bao = bao();
    let prefix = unique("aud-tw-");
    let path = format!("secret/data/{prefix}/prod/db");
    bao.root(
        reqwest::Method::POST,
        &path,
        Some(json!({"data": {"password": "x"}})),
    )
    .await;
    // Wednesday 2026-06-03, Berlin summer time (UTC+2).
    let at = |h: u32| Utc.with_ymd_and_hms(2026, 6, 3, h, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(at(1)));
    let mut sample = sample("prod-reads-outside-hours.yaml");
    sample.spec.match_.paths = vec![format!("secret/data/{prefix}/prod/**")];
    // Every read alerts (no per-hour de-duplication) so each step is visible.
    sample.spec.threshold = None;
    let marker_rule = rule(
        "marker",
        &format!("match: {{paths: ['secret/data/{prefix}/marker']}}"),
    );
    let live = follow(
        &bao,
        clock.clone(),
        TimeBasis::Clock,
        Arc::new(MemoryCheckpointStore::default()),
        vec![sample, marker_rule],
    )
    .await;
    let marker = format!("secret/data/{prefix}/marker");
    let name = "prod-secrets-read-outside-business-hours";
    // (UTC hour, expected alerts so far): 03:00, 12:00, 17:59→ inside, 21:00 Berlin.
    let steps = [(1u32, 1usize), (10, 1), (15, 1), (19, 2)];
    for (i, (hour, expected)) in steps.into_iter().enumerate() {
        clock.set(at(hour));
        bao.root(reqwest::Method::GET, &path, None).await;
        bao.call(
            reqwest::Method::GET,
            &marker,
            Some(&bao.token.clone()),
            None,
        )
        .await;
        live.wait_marker(i as u64 + 1).await;
        assert_eq!(
            live.h.events.for_rule(name).len(),
            expected,
            "after a read at {hour}:00 UTC"
        );
    }
    let h = live.stop().await;
    let alerts = h.events.for_rule(name);
    assert_eq!(alerts[0].time, at(1));
    assert_eq!(alerts[1].time, at(19));
    assert_eq!(alerts[0].identity, "token", "the root token's display name");
}

#[tokio::test]
async fn restarting_the_reader_on_the_real_log_neither_repeats_nor_skips() {
    let bao = bao();
    let prefix = unique("aud-rs-");
    for i in 0..6 {
        bao.root(
            reqwest::Method::POST,
            &format!("secret/data/{prefix}/prod/k{i}"),
            Some(json!({"data": {"v": i}})),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn CheckpointStore> =
        Arc::new(FileCheckpointStore::new(dir.path().join("cp.json")));
    let spec = format!("match: {{paths: ['secret/data/{prefix}/prod/*'], operations: [read]}}");
    let marker = format!("match: {{paths: ['secret/data/{prefix}/marker*']}}");

    let rules = || vec![rule("reads", &spec), rule("marker", &marker)];
    let first = follow(
        &bao,
        Arc::new(SystemClock),
        TimeBasis::EntryTime,
        store.clone(),
        rules(),
    )
    .await;
    for i in 0..3 {
        bao.root(
            reqwest::Method::GET,
            &format!("secret/data/{prefix}/prod/k{i}"),
            None,
        )
        .await;
    }
    bao.call(
        reqwest::Method::GET,
        &format!("secret/data/{prefix}/marker1"),
        Some(&bao.token.clone()),
        None,
    )
    .await;
    first.wait_marker(1).await;
    let first = first.stop().await;
    // While the reader is down.
    for i in 3..6 {
        bao.root(
            reqwest::Method::GET,
            &format!("secret/data/{prefix}/prod/k{i}"),
            None,
        )
        .await;
    }
    bao.call(
        reqwest::Method::GET,
        &format!("secret/data/{prefix}/marker2"),
        Some(&bao.token.clone()),
        None,
    )
    .await;
    let second = follow(
        &bao,
        Arc::new(SystemClock),
        TimeBasis::EntryTime,
        store,
        rules(),
    )
    .await;
    second.wait_marker(1).await;
    let second = second.stop().await;
    let paths = |h: &Harness| -> Vec<String> {
        h.events
            .for_rule("reads")
            .into_iter()
            .map(|a| a.path)
            .collect()
    };
    let want = |r: std::ops::Range<usize>| -> Vec<String> {
        r.map(|i| format!("secret/data/{prefix}/prod/k{i}"))
            .collect()
    };
    assert_eq!(paths(&first), want(0..3));
    assert_eq!(
        paths(&second),
        want(3..6),
        "resumed after the checkpoint: no repeat, no gap"
    );
    assert_eq!(second.metrics.source_event_count("resumed"), 1);
}
