//! RotationPolicy against the real OpenBao (+ PostgreSQL): a KV token rotated every 10s
//! with a grace period and a `valid_tokens` list, check-and-set races, a database static
//! role and root credential, a manual policy, AppRole SecretIDs, Vault password policies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certus_api::{rotation_annotations as rann, RotationPolicy, StaticSecret};
use certus_core::rotation::{DueReason, FixedClock, SystemClock};
use certus_integration_tests::{env, prefix, psql, psql_admin, session, stats, Raw};
use certus_reconcile::rotation::{reconcile, RotationLast, RotationResult};
use certus_reconcile::sink::{MemorySecretStore, RecordingRestarter, SecretStore};
use certus_reconcile::static_secret::{self, StaticLast};
use certus_reconcile::Mode;
use chrono::Utc;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

const NS: &str = "certus";

fn policy(name: &str, spec: Value) -> RotationPolicy {
    let mut p = RotationPolicy::new(name, serde_json::from_value(spec).unwrap());
    p.metadata.namespace = Some(NS.into());
    p
}

fn rotate_now(mut p: RotationPolicy, value: &str) -> RotationPolicy {
    p.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(certus_api::annotations::ROTATE_NOW.into(), value.into());
    p
}

fn rng() -> StdRng {
    StdRng::from_os_rng()
}

fn remember(last: &mut RotationLast, r: &RotationResult) {
    if r.rotated {
        last.last_rotated = r.last_change;
    }
    last.handled_rotate_now = r.handled_rotate_now.clone();
}

async fn kv2(raw: &Raw, mount: &str) {
    raw.write(
        &format!("sys/mounts/{mount}"),
        json!({"type": "kv", "options": {"version": "2"}}),
    )
    .await;
}

async fn secret_str(store: &MemorySecretStore, name: &str, key: &str) -> Option<String> {
    store.get(NS, name).await.unwrap().and_then(|s| {
        s.data
            .get(key)
            .map(|v| String::from_utf8(v.clone()).unwrap())
    })
}

fn tokens(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap_or_else(|_| panic!("not a list of tokens: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_token_rotates_every_10s_and_the_previous_stays_valid_until_the_grace_ends() {
    let raw = Raw::new().await;
    let mount = format!("{}-kv", prefix());
    kv2(&raw, &mount).await;
    let v = session().await;
    let store = MemorySecretStore::new();
    let restarter = RecordingRestarter::default();
    let p = policy(
        "mcp-assurance",
        json!({"interval": "10s", "gracePeriod": "4s",
               "kv": {"mount": mount, "path": "mcp/assurance", "keepPrevious": "ValidTokens",
                      "keys": [{"key": "server_token", "token": {"length": 32}}],
                      "secret": {"name": "mcp-assurance-tokens"}},
               "rolloutRestartTargets": [{"kind": "Deployment", "name": "mcp-assurance"}]}),
    );
    // A StaticSecret consuming the same KV path (e.g. the MCP clients).
    let mut consumer = StaticSecret::new("mcp-client", serde_json::from_value(json!({"mount": mount, "path": "mcp/assurance", "refreshInterval": "1s", "secret": {"data": {"TOKEN": "{{ server_token }}"}}})).unwrap());
    consumer.metadata.namespace = Some(NS.into());
    let mut consumer_last = StaticLast::default();

    let clock = SystemClock;
    let mut last = RotationLast::default();
    let start = Instant::now();
    let mut rotations: Vec<(Instant, String, u64)> = vec![]; // (when, new token, version)
    let mut grace_ends = 0;
    while rotations.len() < 4 || grace_ends < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rotations: {rotations:?}, grace ends: {grace_ends}"
        );
        let r = reconcile(
            &v,
            &p,
            &last,
            &store,
            &restarter,
            &clock,
            &mut rng(),
            Mode::Apply,
        )
        .await
        .expect("reconcile");
        let reconciled_at = Instant::now();
        let mut wait = r.requeue;
        remember(&mut last, &r);
        let kv = raw
            .data(&format!("{mount}/data/mcp/assurance"))
            .await
            .unwrap();
        let token = kv["data"]["server_token"].as_str().unwrap().to_string();
        let valid = tokens(&kv["data"]["valid_tokens"]);
        let version = kv["metadata"]["version"].as_u64().unwrap();
        // The projected Secret always holds what KV holds.
        assert_eq!(
            secret_str(&store, "mcp-assurance-tokens", "server_token")
                .await
                .as_deref(),
            Some(token.as_str())
        );
        let projected: Vec<String> = serde_json::from_str(
            &secret_str(&store, "mcp-assurance-tokens", "valid_tokens")
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(projected, valid);
        if r.rotated {
            assert_eq!(r.current_version, Some(version));
            assert_eq!(r.records.len(), 1);
            if let Some((at, prev, _)) = rotations.last() {
                // Rotated on the interval: not before 10s, and promptly after.
                let gap = reconciled_at - *at;
                assert!(
                    gap >= Duration::from_millis(9_800) && gap < Duration::from_millis(11_500),
                    "gap {gap:?}"
                );
                assert_ne!(&token, prev);
                // The new token first, the previous one still valid during the grace.
                assert_eq!(valid, vec![token.clone(), prev.clone()]);
                assert!(r.grace_ends.is_some());
                // Still listed two seconds later (grace 4s).
                tokio::time::sleep(Duration::from_secs(2)).await;
                wait = wait.saturating_sub(reconciled_at.elapsed());
                let mid = raw
                    .data(&format!("{mount}/data/mcp/assurance"))
                    .await
                    .unwrap();
                assert_eq!(
                    tokens(&mid["data"]["valid_tokens"]),
                    vec![token.clone(), prev.clone()]
                );
            } else {
                assert_eq!(r.reason, DueReason::Initialize);
                assert_eq!(valid, vec![token.clone()]);
            }
            rotations.push((reconciled_at, token.clone(), version));
            // Consumers follow at once.
            let c = static_secret::reconcile(
                &v,
                &consumer,
                &consumer_last,
                &store,
                &restarter,
                Mode::Apply,
                Utc::now(),
            )
            .await
            .unwrap();
            consumer_last = StaticLast {
                synced_version: c.synced_version,
                data_hash: Some(c.data_hash),
            };
            assert_eq!(
                secret_str(&store, "mcp-client", "TOKEN").await.as_deref(),
                Some(token.as_str())
            );
        } else if r.grace_ended {
            grace_ends += 1;
            // The previous token is gone; the current one stays.
            assert_eq!(valid, vec![token.clone()]);
            assert_eq!(&token, &rotations.last().unwrap().1);
            assert!(r.grace_ends.is_none());
            assert!(
                rotations.last().unwrap().0.elapsed() < Duration::from_secs(6),
                "the grace ended promptly"
            );
        }
        tokio::time::sleep(wait).await;
    }
    // Three rotations after the initialization, each a new version; the versions that
    // only ended a grace period did not move the schedule.
    assert_eq!(rotations.len(), 4);
    let distinct: std::collections::BTreeSet<_> = rotations.iter().map(|r| r.1.clone()).collect();
    assert_eq!(distinct.len(), 4);
    let meta = raw
        .data(&format!("{mount}/metadata/mcp/assurance"))
        .await
        .unwrap();
    assert_eq!(
        meta["current_version"].as_u64(),
        Some(7),
        "1 init + 3 rotations + 3 grace ends"
    );
    assert_eq!(
        meta["custom_metadata"]["certus-rotated-by"],
        "certus/mcp-assurance"
    );
    // Restarts: once per rotation and once per grace end (the Secret changed each time).
    assert_eq!(restarter.restarts.lock().unwrap().len(), 7);
    raw.unmount(&mount).await;
}

/// An RNG that makes two rotations meet after both read the KV metadata and before
/// either writes, so their check-and-set writes really race.
struct MeetingRng {
    inner: StdRng,
    barrier: Arc<Barrier>,
    met: bool,
}

impl rand::RngCore for MeetingRng {
    fn next_u32(&mut self) -> u32 {
        self.meet();
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.meet();
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.meet();
        self.inner.fill_bytes(dst)
    }
}

impl MeetingRng {
    fn meet(&mut self) {
        if !self.met {
            self.met = true;
            self.barrier.wait();
        }
    }
}

/// A two-party meeting point that gives up after a timeout, so a run where one side
/// never generates a value fails on its assertions instead of hanging the suite.
struct Barrier {
    state: std::sync::Mutex<usize>,
    cv: std::sync::Condvar,
    parties: usize,
}

impl Barrier {
    fn new(parties: usize) -> Self {
        Barrier {
            state: std::sync::Mutex::new(0),
            cv: std::sync::Condvar::new(),
            parties,
        }
    }
    fn wait(&self) {
        let mut arrived = self.state.lock().unwrap();
        *arrived += 1;
        if *arrived >= self.parties {
            self.cv.notify_all();
            return;
        }
        let _ = self
            .cv
            .wait_timeout_while(arrived, std::time::Duration::from_secs(15), |n| {
                *n < self.parties
            })
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotations_exactly_one_wins_by_check_and_set() {
    let raw = Raw::new().await;
    let mount = format!("{}-kv", prefix());
    kv2(&raw, &mount).await;
    let spec = json!({"interval": "30d", "gracePeriod": "1h",
                      "kv": {"mount": mount, "path": "aws/certus", "keys": [{"key": "secret_access_key", "password": {"length": 40, "symbols": 0}}],
                             "secret": {"name": "aws"}}});
    let v = session().await;
    let clock = SystemClock;
    // Initialize (version 1).
    let store = Arc::new(MemorySecretStore::new());
    let r = reconcile(
        &v,
        &policy("aws-a", spec.clone()),
        &RotationLast::default(),
        store.as_ref(),
        &RecordingRestarter::default(),
        &clock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.reason, r.current_version),
        (DueReason::Initialize, Some(1))
    );

    let barrier = Arc::new(Barrier::new(2));
    let run = |name: &'static str| {
        let (v, store, barrier) = (v.clone(), store.clone(), barrier.clone());
        let p = rotate_now(policy(name, spec.clone()), "race");
        tokio::spawn(async move {
            let mut g = MeetingRng {
                inner: StdRng::from_os_rng(),
                barrier,
                met: false,
            };
            reconcile(
                &v,
                &p,
                &RotationLast::default(),
                store.as_ref(),
                &RecordingRestarter::default(),
                &SystemClock,
                &mut g,
                Mode::Apply,
            )
            .await
        })
    };
    let (a, b) = tokio::join!(run("aws-a"), run("aws-b"));
    let results = [a.unwrap(), b.unwrap()];
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{results:?}");
    assert!(won[0].rotated && won[0].current_version == Some(2));
    let e = lost[0];
    assert!(e.conflict && e.rotating, "{e:?}");
    assert_eq!(e.reason(), "RotationFailed");
    assert!(e.to_string().contains("check-and-set"), "{e}");
    let rec = e.record(Utc::now()).unwrap();
    assert_eq!(rec.outcome, certus_api::RotationOutcome::Conflict);

    // KV history: exactly one new version; the projected Secret holds the winner's value.
    let meta = raw
        .data(&format!("{mount}/metadata/aws/certus"))
        .await
        .unwrap();
    assert_eq!(meta["current_version"].as_u64(), Some(2));
    assert_eq!(meta["versions"].as_object().unwrap().len(), 2);
    let kv = raw.data(&format!("{mount}/data/aws/certus")).await.unwrap();
    assert_eq!(
        secret_str(&store, "aws", "secret_access_key")
            .await
            .as_deref(),
        kv["data"]["secret_access_key"].as_str()
    );
    assert_eq!(kv["data"]["secret_access_key"].as_str().unwrap().len(), 40);
    assert!(
        kv["data"]["secret_access_key_previous"].is_string(),
        "the previous key stays for the grace period"
    );
    // The rotate-now value is remembered in KV metadata too: running again does nothing,
    // even for a policy whose status remembers an older value.
    let before = stats(&v);
    let again = reconcile(
        &v,
        &rotate_now(policy("aws-b", spec.clone()), "race"),
        &RotationLast {
            handled_rotate_now: Some("older".into()),
            ..Default::default()
        },
        store.as_ref(),
        &RecordingRestarter::default(),
        &clock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(!again.rotated);
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.unmount(&mount).await;
}

#[tokio::test]
async fn database_static_role_rotation_changes_the_postgres_password() {
    let e = env();
    let raw = Raw::new().await;
    let p = prefix();
    let mount = format!("{p}-db");
    let user = format!("{p}_app");
    psql_admin(&format!(
        "DROP ROLE IF EXISTS \"{user}\"; CREATE ROLE \"{user}\" WITH LOGIN PASSWORD 'initial-{p}'"
    ))
    .await;
    raw.write(&format!("sys/mounts/{mount}"), json!({"type": "database"}))
        .await;
    raw.write(&format!("{mount}/config/pg"), json!({"plugin_name": "postgresql-database-plugin", "connection_url": e.pg_url_template(),
        "username": e.pg_user, "password": e.pg_password, "allowed_roles": ["*"], "verify_connection": true})).await;
    raw.write(
        &format!("{mount}/static-roles/app"),
        json!({"db_name": "pg", "username": user, "rotation_period": "720h"}),
    )
    .await;
    let creds = || async {
        raw.data(&format!("{mount}/static-creds/app"))
            .await
            .unwrap()["password"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before_pw = creds().await;
    psql(&user, &before_pw, "SELECT 1")
        .await
        .expect("Vault's first password logs in");

    let v = session().await;
    let store = MemorySecretStore::new();
    let restarter = RecordingRestarter::default();
    let pol = policy(
        "app-db",
        json!({"interval": "30d", "databaseStaticRole": {"mount": mount, "role": "app", "secret": {"name": "app-db", "data": {"DATABASE_URL": "postgresql://{{ username }}:{{ password | urlquery }}@db/certus"}}}}),
    );
    // Not due (Vault just set the password), but the Secret gets projected.
    let mut last = RotationLast::default();
    let r = reconcile(
        &v,
        &pol,
        &last,
        &store,
        &restarter,
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(!r.rotated && r.last_change.is_some());
    assert!(r.next_rotation.unwrap() > Utc::now() + chrono::Duration::days(29));
    assert!(secret_str(&store, "app-db", "DATABASE_URL")
        .await
        .unwrap()
        .contains(&user));
    remember(&mut last, &r);

    // rotate-now: Vault rotates the password; the new one logs in, the old one does not.
    let pol = rotate_now(pol, "2026-01-01T00:00:00Z");
    let r = reconcile(
        &v,
        &pol,
        &last,
        &store,
        &restarter,
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(r.rotated);
    assert_eq!(r.reason, DueReason::RotateNow);
    remember(&mut last, &r);
    let after_pw = creds().await;
    assert_ne!(after_pw, before_pw);
    assert_eq!(
        psql(&user, &after_pw, "SELECT current_user").await.unwrap(),
        user
    );
    assert!(
        psql(&user, &before_pw, "SELECT 1").await.is_err(),
        "the old password no longer logs in"
    );
    let url = secret_str(&store, "app-db", "DATABASE_URL").await.unwrap();
    assert!(url.contains(
        &certus_core::template::render(
            "{{ p | urlquery }}",
            &[("p".to_string(), after_pw.clone())].into()
        )
        .unwrap()
    ));
    assert_eq!(
        restarter.restarts.lock().unwrap().len(),
        0,
        "no rollout targets configured"
    );

    // The same rotate-now value again: nothing happens.
    let before = stats(&v);
    let r = reconcile(
        &v,
        &pol,
        &last,
        &store,
        &restarter,
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(!r.rotated);
    assert_eq!(stats(&v).since(&before).writes, 0);
    assert_eq!(creds().await, after_pw);

    // A missing role waits instead of failing hard.
    let missing = policy(
        "none",
        json!({"interval": "30d", "databaseStaticRole": {"mount": mount, "role": "nope"}}),
    );
    let err = reconcile(
        &v,
        &missing,
        &RotationLast::default(),
        &store,
        &restarter,
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "WaitingForDependency");

    raw.unmount(&mount).await;
    psql_admin(&format!("DROP ROLE IF EXISTS \"{user}\"")).await;
}

#[tokio::test]
async fn database_root_rotation_leaves_only_vault_knowing_the_password() {
    let e = env();
    let raw = Raw::new().await;
    let p = prefix();
    let mount = format!("{p}-db");
    let admin = format!("{p}_vault_admin");
    let pw = format!("root-{p}");
    psql_admin(&format!("DROP ROLE IF EXISTS \"{admin}\"; CREATE ROLE \"{admin}\" WITH LOGIN CREATEROLE PASSWORD '{pw}'")).await;
    raw.write(&format!("sys/mounts/{mount}"), json!({"type": "database"}))
        .await;
    raw.write(
        &format!("{mount}/config/pg"),
        json!({"plugin_name": "postgresql-database-plugin", "connection_url": e.pg_url_template(),
        "username": admin, "password": pw, "allowed_roles": ["*"], "verify_connection": true}),
    )
    .await;
    let v = session().await;
    let store = MemorySecretStore::new();
    let pol = policy(
        "pg-root",
        json!({"interval": "90d", "databaseRoot": {"mount": mount, "connection": "pg"}}),
    );

    // The CLI (no status) never rotates a root credential on an unknown schedule.
    let cli = RotationLast {
        stateless: true,
        ..Default::default()
    };
    let r = reconcile(
        &v,
        &pol,
        &cli,
        &store,
        &RecordingRestarter::default(),
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(!r.rotated);
    psql(&admin, &pw, "SELECT 1").await.expect("unchanged");

    // The operator, with no rotation recorded yet, rotates at once.
    let r = reconcile(
        &v,
        &pol,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(r.rotated);
    assert_eq!(r.reason, DueReason::Initialize);
    assert!(
        psql(&admin, &pw, "SELECT 1").await.is_err(),
        "the given root password no longer works"
    );
    // Vault still can use the connection: a dynamic role issues working credentials.
    raw.write(&format!("{mount}/roles/probe"), json!({"db_name": "pg", "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"], "default_ttl": "5m"})).await;
    let c = raw.data(&format!("{mount}/creds/probe")).await.unwrap();
    psql(
        c["username"].as_str().unwrap(),
        c["password"].as_str().unwrap(),
        "SELECT 1",
    )
    .await
    .expect("Vault's root credential works");
    // Recorded: not due again for 90 days.
    let mut last = RotationLast::default();
    remember(&mut last, &r);
    let r = reconcile(
        &v,
        &pol,
        &last,
        &store,
        &RecordingRestarter::default(),
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(!r.rotated);

    raw.unmount(&mount).await;
    psql_admin(&format!("DROP ROLE IF EXISTS \"{admin}\"")).await;
}

#[tokio::test]
async fn manual_policy_reports_rotation_due_and_changes_nothing() {
    let raw = Raw::new().await;
    let mount = format!("{}-kv", prefix());
    kv2(&raw, &mount).await;
    raw.write(
        &format!("{mount}/data/prod/openai"),
        json!({"data": {"api_key": "sk-vendor-issued"}}),
    )
    .await;
    let v = session().await;
    let store = MemorySecretStore::new();
    let p = policy(
        "openai",
        json!({"interval": "90d", "manual": {"mount": mount, "path": "prod/openai"}}),
    );

    let r = reconcile(
        &v,
        &p,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert_eq!(r.rotation_due, Some(false));
    let created = r.last_change.unwrap();
    assert_eq!(r.next_rotation, Some(created + chrono::Duration::days(90)));

    // 91 days later: due, reported, and nothing written anywhere — even with rotate-now.
    let later = FixedClock::new(Utc::now() + chrono::Duration::days(91));
    let before = stats(&v);
    let r = reconcile(
        &v,
        &rotate_now(p.clone(), "please"),
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &later,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert_eq!(r.rotation_due, Some(true));
    assert!(!r.rotated);
    assert!(r
        .change
        .detail
        .as_deref()
        .unwrap()
        .contains("rotate it by hand"));
    let d = stats(&v).since(&before);
    assert_eq!((d.reads, d.writes), (1, 0), "{d:?}");
    assert_eq!(store.writes(), 0);
    let kv = raw
        .data(&format!("{mount}/data/prod/openai"))
        .await
        .unwrap();
    assert_eq!(kv["data"]["api_key"], "sk-vendor-issued");
    assert_eq!(kv["metadata"]["version"], 1);
    assert_eq!(r.requeue, certus_reconcile::rotation::MAX_REQUEUE);

    // Rotated by hand: no longer due (a rotation done by hand counts).
    raw.write(
        &format!("{mount}/data/prod/openai"),
        json!({"data": {"api_key": "sk-new"}}),
    )
    .await;
    let later = FixedClock::new(Utc::now() + chrono::Duration::days(1));
    let r = reconcile(
        &v,
        &p,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &later,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert_eq!(r.rotation_due, Some(false));
    assert_eq!(r.current_version, Some(2));

    // A missing secret waits.
    let none = policy(
        "none",
        json!({"interval": "90d", "manual": {"mount": mount, "path": "nope"}}),
    );
    let err = reconcile(
        &v,
        &none,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "WaitingForDependency");
    raw.unmount(&mount).await;
}

#[tokio::test]
async fn hand_rotation_counts_and_plan_mode_writes_nothing_and_vault_password_policies_work() {
    let raw = Raw::new().await;
    let p = prefix();
    let mount = format!("{p}-kv");
    kv2(&raw, &mount).await;
    raw.write(&format!("sys/policies/password/{p}-pw"), json!({"policy": "length = 24\nrule \"charset\" {\n  charset = \"abcdefghijklmnopqrstuvwxyz\"\n  min-chars = 1\n}\nrule \"charset\" {\n  charset = \"0123456789\"\n  min-chars = 4\n}\n"})).await;
    let v = session().await;
    let store = MemorySecretStore::new();
    let pol = policy(
        "svc",
        json!({"interval": "1h", "kv": {"mount": mount, "path": "svc", "keys": [
        {"key": "db_password", "vaultPasswordPolicy": {"name": format!("{p}-pw")}},
        {"key": "encryption_key", "randomBytes": {"length": 32, "encoding": "hex"}}]}}),
    );
    let clock = FixedClock::new(Utc::now());

    // Plan: reports the initialization, writes nothing.
    let before = stats(&v);
    let r = reconcile(
        &v,
        &pol,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &clock,
        &mut rng(),
        Mode::Plan,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.rotated, r.change.action),
        (true, certus_core::Action::Create)
    );
    assert_eq!(stats(&v).since(&before).writes, 0);
    assert!(raw.data(&format!("{mount}/data/svc")).await.is_none());

    let r = reconcile(
        &v,
        &pol,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &clock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert_eq!(r.reason, DueReason::Initialize);
    let kv = raw.data(&format!("{mount}/data/svc")).await.unwrap();
    let pw = kv["data"]["db_password"].as_str().unwrap();
    assert_eq!(pw.len(), 24);
    assert!(pw.bytes().filter(u8::is_ascii_digit).count() >= 4, "{pw}");
    assert_eq!(kv["data"]["encryption_key"].as_str().unwrap().len(), 64);
    assert!(
        kv["data"].get("db_password_previous").is_none(),
        "no grace period, no previous value"
    );

    // Someone rotates by hand: the next rotation is an hour after that.
    raw.write(
        &format!("{mount}/data/svc"),
        json!({"data": {"db_password": "by-hand", "encryption_key": "00"}}),
    )
    .await;
    clock.set(Utc::now() + chrono::Duration::minutes(30));
    let r = reconcile(
        &v,
        &pol,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &clock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(!r.rotated, "the hand rotation reset the interval");
    assert_eq!(r.current_version, Some(2));
    clock.set(Utc::now() + chrono::Duration::minutes(61));
    let r = reconcile(
        &v,
        &pol,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &clock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(r.rotated && r.reason == DueReason::Due);
    assert_eq!(r.current_version, Some(3));
    let kv = raw.data(&format!("{mount}/data/svc")).await.unwrap();
    assert_ne!(kv["data"]["db_password"], "by-hand");

    // A password policy that does not exist: the rotation fails, the old value stays.
    let bad = rotate_now(
        policy(
            "svc",
            json!({"interval": "1h", "kv": {"mount": mount, "path": "svc", "keys": [{"key": "db_password", "vaultPasswordPolicy": {"name": format!("{p}-none")}}]}}),
        ),
        "x",
    );
    let err = reconcile(
        &v,
        &bad,
        &RotationLast::default(),
        &store,
        &RecordingRestarter::default(),
        &clock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "RotationFailed");
    assert!(err.record(Utc::now()).is_some());
    assert_eq!(
        raw.data(&format!("{mount}/metadata/svc")).await.unwrap()["current_version"],
        3
    );

    let _ = raw.0.delete(&format!("sys/policies/password/{p}-pw")).await;
    raw.unmount(&mount).await;
}

#[tokio::test]
async fn approle_secret_id_rotates_and_the_old_one_is_destroyed_after_the_grace() {
    let raw = Raw::new().await;
    let p = prefix();
    let auth = format!("{p}-approle");
    raw.write(&format!("sys/auth/{auth}"), json!({"type": "approle"}))
        .await;
    raw.write(
        &format!("auth/{auth}/role/ci"),
        json!({"token_policies": ["default"], "token_ttl": "5m"}),
    )
    .await;
    let v = session().await;
    let store = MemorySecretStore::new();
    let restarter = RecordingRestarter::default();
    let pol = policy(
        "ci-secret-id",
        json!({"interval": "24h", "gracePeriod": "2s", "appRoleSecretId": {"mount": auth, "role": "ci", "secret": {"name": "ci-approle"}, "metadata": {"owner": "ci"}},
        "rolloutRestartTargets": [{"kind": "Deployment", "name": "runner"}]}),
    );
    let login = |role_id: String, secret_id: String| {
        let auth = auth.clone();
        async move {
            let anon = certus_vault_client::VaultSession::connect(
                certus_vault_client::ConnectionConfig::new(env().vault_addr),
                certus_vault_client::Credentials::AppRole {
                    mount: auth,
                    role_id,
                    secret_id: certus_vault_client::SecretString::new(secret_id),
                },
            )
            .await
            .unwrap();
            anon.token_info().await.is_ok()
        }
    };

    let mut last = RotationLast::default();
    let r = reconcile(
        &v,
        &pol,
        &last,
        &store,
        &restarter,
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert_eq!(r.reason, DueReason::Initialize);
    remember(&mut last, &r);
    let role_id = secret_str(&store, "ci-approle", "role_id").await.unwrap();
    let first = secret_str(&store, "ci-approle", "secret_id").await.unwrap();
    assert!(login(role_id.clone(), first.clone()).await);

    let pol = rotate_now(pol, "1");
    let r = reconcile(
        &v,
        &pol,
        &last,
        &store,
        &restarter,
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(r.rotated && r.grace_ends.is_some());
    remember(&mut last, &r);
    let second = secret_str(&store, "ci-approle", "secret_id").await.unwrap();
    assert_ne!(first, second);
    assert!(login(role_id.clone(), second.clone()).await);
    assert!(
        login(role_id.clone(), first.clone()).await,
        "the old SecretID is valid during the grace period"
    );
    assert_eq!(restarter.restarts.lock().unwrap().len(), 2);
    let live = store.get(NS, "ci-approle").await.unwrap().unwrap();
    assert!(live
        .annotations
        .contains_key(rann::PREVIOUS_SECRET_ID_ACCESSOR));

    tokio::time::sleep(r.requeue).await;
    let r = reconcile(
        &v,
        &pol,
        &last,
        &store,
        &restarter,
        &SystemClock,
        &mut rng(),
        Mode::Apply,
    )
    .await
    .unwrap();
    assert!(r.grace_ended && !r.rotated);
    assert!(
        !login(role_id.clone(), first).await,
        "destroyed after the grace period"
    );
    assert!(login(role_id, second.clone()).await);
    let live = store.get(NS, "ci-approle").await.unwrap().unwrap();
    assert!(!live
        .annotations
        .contains_key(rann::PREVIOUS_SECRET_ID_ACCESSOR));
    assert_eq!(
        secret_str(&store, "ci-approle", "secret_id").await.unwrap(),
        second
    );
    raw.disable_auth(&auth).await;
}
