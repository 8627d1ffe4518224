//! StaticSecret against the real OpenBao: following a KV v2 secret through versions
//! within the refresh interval, cheap refreshes (one metadata read), restarts only when
//! data changed, restoring deleted/edited Secrets, KV v1, version pins, a missing path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use certus_api::{annotations, static_secret_annotations as ann, StaticSecret};
use certus_integration_tests::{prefix, session, stats, Raw};
use certus_reconcile::sink::{MemorySecretStore, RecordingRestarter, SecretStore};
use certus_reconcile::static_secret::{reconcile, StaticLast};
use certus_reconcile::{Mode, ReconcileError};
use serde_json::json;

const NS: &str = "apps";

fn static_secret(name: &str, spec: serde_json::Value) -> StaticSecret {
    let mut s = StaticSecret::new(name, serde_json::from_value(spec).unwrap());
    s.metadata.namespace = Some(NS.into());
    s
}

async fn kv2(raw: &Raw, mount: &str) {
    raw.write(
        &format!("sys/mounts/{mount}"),
        json!({"type": "kv", "options": {"version": "2"}}),
    )
    .await;
}

async fn secret_value(store: &MemorySecretStore, name: &str, key: &str) -> Option<String> {
    store.get(NS, name).await.unwrap().and_then(|s| {
        s.data
            .get(key)
            .map(|v| String::from_utf8(v.clone()).unwrap())
    })
}

async fn synced_version(store: &MemorySecretStore, name: &str) -> Option<String> {
    store
        .get(NS, name)
        .await
        .unwrap()
        .and_then(|s| s.annotations.get(ann::SYNCED_VERSION).cloned())
}

/// Polls until `check` holds, returning how long it took; panics after `limit`.
async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_three_kv_versions_within_the_refresh_interval_and_restarts_only_on_data_change() {
    let raw = Raw::new().await;
    let mount = format!("{}-kv", prefix());
    kv2(&raw, &mount).await;
    raw.write(
        &format!("{mount}/data/prod/openai"),
        json!({"data": {"api_key": "sk-1", "org": "certus"}}),
    )
    .await;

    let refresh = Duration::from_secs(2);
    let s = static_secret(
        "openai",
        json!({"mount": mount, "path": "prod/openai", "refreshInterval": "2s",
               "secret": {"name": "openai-key", "data": {"OPENAI_API_KEY": "{{ api_key }}"}},
               "rolloutRestartTargets": [{"kind": "Deployment", "name": "assistant"}]}),
    );
    let store = Arc::new(MemorySecretStore::new());
    let restarter = Arc::new(RecordingRestarter::default());
    let v = session().await;

    // The operator's loop: reconcile, remember the status, wait for the requeue.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let driver = {
        let (v, s, store, restarter, stop) = (
            v.clone(),
            s.clone(),
            store.clone(),
            restarter.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut last = StaticLast::default();
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = reconcile(
                    &v,
                    &s,
                    &last,
                    store.as_ref(),
                    restarter.as_ref(),
                    Mode::Apply,
                    chrono::Utc::now(),
                )
                .await
                .expect("reconcile");
                last = StaticLast {
                    synced_version: out.synced_version,
                    data_hash: Some(out.data_hash.clone()),
                };
                assert_eq!(out.requeue, Duration::from_secs(2));
                rounds += 1;
                tokio::time::sleep(out.requeue).await;
            }
            (last, rounds)
        })
    };

    let limit = refresh + Duration::from_secs(1);
    wait_for(limit, "version 1 projected", || async {
        secret_value(&store, "openai-key", "OPENAI_API_KEY")
            .await
            .as_deref()
            == Some("sk-1")
    })
    .await;
    assert_eq!(
        synced_version(&store, "openai-key").await.as_deref(),
        Some("1")
    );
    assert!(
        restarter.restarts.lock().unwrap().is_empty(),
        "the first sync restarts nothing"
    );

    // Version 2 changes the projected key: projected within refresh + 1s, one restart.
    raw.write(
        &format!("{mount}/data/prod/openai"),
        json!({"data": {"api_key": "sk-2", "org": "certus"}}),
    )
    .await;
    let took = wait_for(limit, "version 2 projected", || async {
        secret_value(&store, "openai-key", "OPENAI_API_KEY")
            .await
            .as_deref()
            == Some("sk-2")
    })
    .await;
    assert!(took <= limit, "{took:?}");
    assert_eq!(
        synced_version(&store, "openai-key").await.as_deref(),
        Some("2")
    );
    wait_for(
        Duration::from_secs(1),
        "restart after version 2",
        || async { restarter.restarts.lock().unwrap().len() == 1 },
    )
    .await;

    // Version 3 changes only a key the Secret does not use: the Secret follows the
    // version, the data stays the same, nobody is restarted.
    raw.write(
        &format!("{mount}/data/prod/openai"),
        json!({"data": {"api_key": "sk-2", "org": "certus-eu"}}),
    )
    .await;
    wait_for(limit, "version 3 synced", || async {
        synced_version(&store, "openai-key").await.as_deref() == Some("3")
    })
    .await;
    assert_eq!(
        secret_value(&store, "openai-key", "OPENAI_API_KEY")
            .await
            .as_deref(),
        Some("sk-2")
    );

    // Version 4 changes the key again: a second restart.
    raw.write(
        &format!("{mount}/data/prod/openai"),
        json!({"data": {"api_key": "sk-4", "org": "certus-eu"}}),
    )
    .await;
    wait_for(limit, "version 4 projected", || async {
        secret_value(&store, "openai-key", "OPENAI_API_KEY")
            .await
            .as_deref()
            == Some("sk-4")
    })
    .await;
    wait_for(
        Duration::from_secs(1),
        "restart after version 4",
        || async { restarter.restarts.lock().unwrap().len() == 2 },
    )
    .await;
    tokio::time::sleep(refresh + Duration::from_millis(500)).await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (last, rounds) = driver.await.unwrap();
    assert!(rounds >= 4, "the loop ran {rounds} times");
    let restarts = restarter.restarts.lock().unwrap().clone();
    assert_eq!(
        restarts.len(),
        2,
        "restarted only when the data changed: {restarts:?}"
    );
    assert!(restarts
        .iter()
        .all(|(ns, what, _)| ns == NS && what == "Deployment/assistant"));
    assert_eq!(last.synced_version, Some(4));

    // An unchanged refresh is one metadata read and nothing else.
    let writes_before = store.writes();
    let before = stats(&v);
    let out = reconcile(
        &v,
        &s,
        &last,
        store.as_ref(),
        restarter.as_ref(),
        Mode::Apply,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let d = stats(&v).since(&before);
    assert_eq!(
        (d.reads, d.writes),
        (1, 0),
        "an unchanged refresh reads only the metadata: {d:?}"
    );
    assert!(!out.full_read && !out.written && !out.data_changed);
    assert_eq!(store.writes(), writes_before);

    // An edited Secret is restored (full read), without a restart: the data the
    // workloads had is the data Vault has.
    store.with(|m| {
        m.get_mut(&(NS.to_string(), "openai-key".to_string()))
            .unwrap()
            .data
            .insert("OPENAI_API_KEY".into(), b"tampered".to_vec())
    });
    let before = stats(&v);
    let out = reconcile(
        &v,
        &s,
        &last,
        store.as_ref(),
        restarter.as_ref(),
        Mode::Apply,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(out.full_read && out.written && out.change.drift);
    assert!(!out.data_changed);
    assert_eq!(stats(&v).since(&before).reads, 2, "metadata + data");
    assert_eq!(
        secret_value(&store, "openai-key", "OPENAI_API_KEY")
            .await
            .as_deref(),
        Some("sk-4")
    );

    // A deleted Secret is restored too.
    store.delete(NS, "openai-key").await.unwrap();
    let out = reconcile(
        &v,
        &s,
        &last,
        store.as_ref(),
        restarter.as_ref(),
        Mode::Apply,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(out.written);
    let live = store.get(NS, "openai-key").await.unwrap().unwrap();
    assert_eq!(
        live.annotations
            .get(ann::SYNCED_VERSION)
            .map(String::as_str),
        Some("4")
    );
    assert_eq!(
        live.annotations.get(annotations::DATA_HASH),
        Some(&out.data_hash)
    );
    assert_eq!(
        live.labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("certus-vault-operator")
    );
    assert_eq!(restarter.restarts.lock().unwrap().len(), 2);

    raw.unmount(&mount).await;
}

#[tokio::test]
async fn missing_path_waits_and_pins_and_kv_v1_work() {
    let raw = Raw::new().await;
    let p = prefix();
    let mount = format!("{p}-kv");
    kv2(&raw, &mount).await;
    let v = session().await;
    let store = MemorySecretStore::new();
    let restarter = RecordingRestarter::default();
    let now = chrono::Utc::now();

    // A path that does not exist yet: WaitingForDependency, nothing written.
    let s = static_secret("later", json!({"mount": mount, "path": "not/yet"}));
    let err = reconcile(
        &v,
        &s,
        &StaticLast::default(),
        &store,
        &restarter,
        Mode::Apply,
        now,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ReconcileError::Dependency(_)), "{err}");
    assert_eq!(err.reason(), "WaitingForDependency");
    assert!(err.retryable());
    assert!(
        err.to_string().contains(&format!("{mount}/not/yet")),
        "{err}"
    );
    assert_eq!(store.writes(), 0);

    // Once written, the same resource syncs; every key is copied when no templates.
    raw.write(
        &format!("{mount}/data/not/yet"),
        json!({"data": {"user": "u", "password": "p1"}}),
    )
    .await;
    let out = reconcile(
        &v,
        &s,
        &StaticLast::default(),
        &store,
        &restarter,
        Mode::Apply,
        now,
    )
    .await
    .unwrap();
    assert_eq!(out.change.action, certus_core::Action::Create);
    let live = store.get(NS, "later").await.unwrap().unwrap();
    assert_eq!(live.data.keys().collect::<Vec<_>>(), ["password", "user"]);
    assert_eq!(live.type_, "Opaque");

    // A pinned version stays pinned while newer versions arrive.
    raw.write(
        &format!("{mount}/data/not/yet"),
        json!({"data": {"user": "u", "password": "p2"}}),
    )
    .await;
    let pinned = static_secret(
        "pinned",
        json!({"mount": mount, "path": "not/yet", "version": 1}),
    );
    let before = stats(&v);
    let out = reconcile(
        &v,
        &pinned,
        &StaticLast::default(),
        &store,
        &restarter,
        Mode::Apply,
        now,
    )
    .await
    .unwrap();
    assert_eq!(out.synced_version, Some(1));
    assert_eq!(
        stats(&v).since(&before).reads,
        1,
        "a pin needs no metadata read"
    );
    assert_eq!(
        store.get(NS, "pinned").await.unwrap().unwrap().data["password"],
        b"p1"
    );
    let before = stats(&v);
    let again = reconcile(
        &v,
        &pinned,
        &StaticLast {
            synced_version: out.synced_version,
            data_hash: Some(out.data_hash),
        },
        &store,
        &restarter,
        Mode::Apply,
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        stats(&v).since(&before).reads,
        0,
        "a pinned, untouched Secret needs no Vault read"
    );
    assert!(!again.written);

    // Plan mode reads but never writes.
    let planned = static_secret("planned", json!({"mount": mount, "path": "not/yet"}));
    let out = reconcile(
        &v,
        &planned,
        &StaticLast::default(),
        &store,
        &restarter,
        Mode::Plan,
        now,
    )
    .await
    .unwrap();
    assert_eq!(out.change.action, certus_core::Action::Create);
    assert!(store.get(NS, "planned").await.unwrap().is_none());

    // KV v1: no metadata, so every refresh reads the data; the Secret is written only
    // when the content changed.
    let v1 = format!("{p}-kv1");
    raw.write(
        &format!("sys/mounts/{v1}"),
        json!({"type": "kv", "options": {"version": "1"}}),
    )
    .await;
    raw.write(&format!("{v1}/legacy"), json!({"token": "a"}))
        .await;
    let s1 = static_secret(
        "legacy",
        json!({"mount": v1, "path": "legacy", "kvVersion": 1, "rolloutRestartTargets": [{"kind": "StatefulSet", "selector": {"matchLabels": {"app": "legacy"}}}]}),
    );
    let out = reconcile(
        &v,
        &s1,
        &StaticLast::default(),
        &store,
        &restarter,
        Mode::Apply,
        now,
    )
    .await
    .unwrap();
    assert!(out.written && out.synced_version.is_none());
    let mut last = StaticLast {
        synced_version: None,
        data_hash: Some(out.data_hash.clone()),
    };
    let writes = store.writes();
    let before = stats(&v);
    let out = reconcile(&v, &s1, &last, &store, &restarter, Mode::Apply, now)
        .await
        .unwrap();
    assert_eq!(stats(&v).since(&before).reads, 1);
    assert!(!out.written && !out.data_changed);
    assert_eq!(store.writes(), writes);
    raw.write(&format!("{v1}/legacy"), json!({"token": "b"}))
        .await;
    let out = reconcile(&v, &s1, &last, &store, &restarter, Mode::Apply, now)
        .await
        .unwrap();
    assert!(out.written && out.data_changed);
    last.data_hash = Some(out.data_hash);
    assert_eq!(
        store.get(NS, "legacy").await.unwrap().unwrap().data["token"],
        b"b"
    );
    assert_eq!(restarter.restarts.lock().unwrap().len(), 1);
    assert_eq!(out.restarted.len(), 1);

    // A deleted current version: waiting, not a crash.
    raw.0
        .delete(&format!("{mount}/data/not/yet"))
        .await
        .unwrap();
    let err = reconcile(
        &v,
        &s,
        &StaticLast::default(),
        &store,
        &restarter,
        Mode::Apply,
        now,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("deleted"), "{err}");

    raw.unmount(&mount).await;
    raw.unmount(&v1).await;
}
