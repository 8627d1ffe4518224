//! Tier 2: `/metrics`, `/livez` and `/readyz` answer, served in-process on 127.0.0.1:0
//! by `server::serve` with a real registry (controller metrics, `certus_leader`, the Vault
//! counters of a session cache that talked to the real OpenBao when `VAULT_ADDR` is set).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certus_controller::leader::{
    supervise, LeaderStatus, LeaseTimings, MemoryElector, MemoryLease, NoElection, Role,
    StopSignal, SuperviseOptions,
};
use certus_controller::metrics::VaultStatsCollector;
use certus_controller::server::{self, Probes, OPENMETRICS_CONTENT_TYPE};
use certus_controller::Metrics;
use certus_vault_client::{ConnectionConfig, Credentials, SecretString, SessionCache};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET: (status, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("the server answers within 5s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

struct Served {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    status: Arc<LeaderStatus>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve(sessions: Option<Arc<SessionCache>>) -> Served {
    let metrics = Arc::new(Metrics::default());
    let status = Arc::new(LeaderStatus::new("test-0"));
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    status.register(&mut registry);
    let sessions = sessions.unwrap_or_default();
    VaultStatsCollector::register(sessions.stats().clone(), &mut registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let probes = Probes {
        registry: Arc::new(registry),
        metrics: metrics.clone(),
        leader: status.clone(),
    };
    let task = tokio::spawn(server::serve(listener, probes, async move {
        let _ = stop_rx.await;
    }));
    Served {
        addr,
        metrics,
        status,
        stop,
        task,
    }
}

/// The endpoints through a leader's life: a standby that has not reached the lease is
/// not ready, a healthy standby is; the leader is ready only once its controllers are;
/// `/metrics` shows the controller counters and `certus_leader`; `/livez` is 200 while the
/// supervisor loop beats and 503 once it has returned.
#[tokio::test]
async fn probes_follow_the_supervisor() {
    let s = serve(None).await;
    // A reconcile counted, so the counter has a sample line.
    drop(s.metrics.reconcile_started("VaultPolicy"));
    s.metrics.reconcile_failed("VaultPolicy", "transient");

    let (code, ct, body) = get(s.addr, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
    for line in [
        "certus_controller_reconciles_total{kind=\"VaultPolicy\"} 1",
        "certus_controller_reconcile_failures_total{kind=\"VaultPolicy\",category=\"transient\"} 1",
        "certus_controller_reconcile_duration_seconds_count{kind=\"VaultPolicy\"} 1",
        "certus_leader 0",
        "certus_vault_requests_total{kind=\"read\"} 0",
        "certus_vault_requests_total{kind=\"write\"} 0",
        "certus_vault_logins_total 0",
        "certus_vault_token_adoptions_total 0",
        "certus_vault_token_renewals_total 0",
        "certus_vault_errors_total 0",
        "# EOF",
    ] {
        assert!(body.contains(line), "/metrics lacks {line:?}:\n{body}");
    }

    // Standby that has not reached the lease store yet: alive, not ready.
    assert_eq!(get(s.addr, "/livez").await.0, 200);
    let (code, _, body) = get(s.addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("standby"), "{body}");

    // Run a supervisor over an in-memory lease with controllers that wait for a gate
    // before they report ready (like CRDs not yet established).
    let lease = MemoryLease::new();
    let timings = LeaseTimings::new(Duration::from_secs(15)).unwrap();
    let elector = MemoryElector::new(lease.clone(), "test-0", timings);
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let status = s.status.clone();
    let metrics = s.metrics.clone();
    let supervisor = tokio::spawn(async move {
        let start = move |stop: StopSignal| {
            let mut gate = gate_rx.clone();
            let metrics = metrics.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                let ready = ReadyFlag(metrics);
                ready.0.set_ready(true);
                stop.await;
                drop(ready);
                Ok(())
            }
        };
        supervise(
            &elector,
            SuperviseOptions::for_timings(&timings),
            &status,
            start,
            async move {
                let _ = shutdown_rx.await;
            },
        )
        .await
    });
    wait(|| s.status.role() == Role::Leader).await;
    let (code, _, body) = get(s.addr, "/readyz").await;
    assert_eq!(
        code, 503,
        "a leader whose controllers are not ready: {body}"
    );
    assert!(body.contains("leader"), "{body}");
    assert!(get(s.addr, "/metrics").await.2.contains("certus_leader 1"));

    gate_tx.send(true).unwrap();
    wait(|| s.metrics.is_ready()).await;
    let (code, _, body) = get(s.addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok: leader"), "{body}");

    shutdown_tx.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
    assert_eq!(lease.holder(), None);
    let (code, _, body) = get(s.addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        get(s.addr, "/livez").await.0,
        503,
        "the supervisor has returned"
    );
    assert!(get(s.addr, "/metrics").await.2.contains("certus_leader 0"));

    s.stop.send(()).unwrap();
    s.task.await.unwrap().unwrap();
}

/// A healthy standby (another instance holds the lease) answers 200 on `/readyz`.
#[tokio::test]
async fn a_healthy_standby_is_ready() {
    let s = serve(None).await;
    let lease = MemoryLease::new();
    let timings = LeaseTimings::new(Duration::from_secs(15)).unwrap();
    let other = MemoryElector::new(lease.clone(), "other", timings);
    // The other instance takes the lease first.
    assert!(certus_controller::LeaderElector::changed(&other)
        .await
        .unwrap());
    let elector = MemoryElector::new(lease.clone(), "test-0", timings);
    let status = s.status.clone();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(async move {
        supervise(
            &elector,
            SuperviseOptions {
                heartbeat: Duration::from_millis(50),
                ..SuperviseOptions::for_timings(&timings)
            },
            &status,
            |_stop: StopSignal| async { panic!("a standby must not start controllers") },
            async move {
                let _ = shutdown_rx.await;
            },
        )
        .await
    });
    let addr = s.addr;
    wait_async(|| async move { get(addr, "/readyz").await.0 == 200 }).await;
    let (_, _, body) = get(s.addr, "/readyz").await;
    assert!(body.starts_with("ok: standby"), "{body}");
    assert!(get(s.addr, "/metrics").await.2.contains("certus_leader 0"));
    shutdown_tx.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
    assert_eq!(lease.valid_holder().as_deref(), Some("other"));
}

/// Without leader election the process is its own leader.
#[tokio::test]
async fn without_election_readyz_follows_the_controllers() {
    let s = serve(None).await;
    let status = s.status.clone();
    let metrics = s.metrics.clone();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(async move {
        supervise(
            &NoElection::new("solo"),
            SuperviseOptions::default(),
            &status,
            move |stop: StopSignal| {
                let metrics = metrics.clone();
                async move {
                    metrics.set_ready(true);
                    stop.await;
                    metrics.set_ready(false);
                    Ok(())
                }
            },
            async move {
                let _ = shutdown_rx.await;
            },
        )
        .await
    });
    let addr = s.addr;
    wait_async(|| async move { get(addr, "/readyz").await.0 == 200 }).await;
    assert!(get(s.addr, "/metrics").await.2.contains("certus_leader 1"));
    shutdown_tx.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
}

/// The Vault counters come from the shared session cache: after a login and a few
/// requests against the real OpenBao, `/metrics` shows them. Skipped without `VAULT_ADDR`.
#[tokio::test]
async fn metrics_show_the_vault_counters_of_the_session_cache() {
    let (Ok(addr), Ok(token)) = (std::env::var("VAULT_ADDR"), std::env::var("VAULT_TOKEN")) else {
        eprintln!(
            "SKIPPED: VAULT_ADDR/VAULT_TOKEN not set (run `hack/services-up.sh && . .hack/env`)"
        );
        return;
    };
    let sessions = Arc::new(SessionCache::new());
    let session = sessions
        .get(
            ConnectionConfig::new(addr),
            Credentials::Token(SecretString::new(token)),
        )
        .await
        .unwrap();
    let name = format!("certus-probes-{}", std::process::id());
    session
        .policy_write(&name, "path \"secret/*\" { capabilities = [\"read\"] }")
        .await
        .unwrap();
    assert!(session.policy_read(&name).await.unwrap().is_some());
    session.policy_delete(&name).await.unwrap();
    let _ = session
        .read("sys/policies/acl/certus-probes-does-not-exist")
        .await;
    let snapshot = sessions.stats().snapshot();

    let s = serve(Some(sessions.clone())).await;
    let (code, _, body) = get(s.addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(snapshot.reads >= 1 && snapshot.writes >= 2, "{snapshot:?}");
    for line in [
        format!(
            "certus_vault_requests_total{{kind=\"read\"}} {}",
            snapshot.reads
        ),
        format!(
            "certus_vault_requests_total{{kind=\"write\"}} {}",
            snapshot.writes
        ),
        format!("certus_vault_logins_total {}", snapshot.logins),
        format!("certus_vault_errors_total {}", snapshot.errors),
    ] {
        assert!(body.contains(&line), "/metrics lacks {line:?}:\n{body}");
    }
}

/// Clears the ready flag when dropped (like the guard of `certus_controller::run`).
struct ReadyFlag(Arc<Metrics>);

impl Drop for ReadyFlag {
    fn drop(&mut self) {
        self.0.set_ready(false);
    }
}

async fn wait(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached within 5s");
}

async fn wait_async<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) {
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached within 5s");
}
