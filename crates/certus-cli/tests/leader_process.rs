//! Tier 2, whole processes: real `certus-vault run --leader-election` binaries against
//! an in-process fake Kubernetes API server (loopback HTTP) that serves the Lease
//! (get/create/patch with server-side-apply conflicts) and answers 404 for the
//! CustomResourceDefinitions (so a leader's controllers keep polling for them). Each
//! process has its own bearer token, so the fake sees who asks.
//!
//! Asserts: one holder; only the holder's controllers talk to the API (CRD polls) and
//! its `certus_leader` is 1; a SIGKILLed leader is replaced within the lease duration
//! plus a margin; SIGTERM exits 0 after releasing the Lease and the standby takes over.

#![cfg(unix)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};

const NS: &str = "ops";
const LEASE: &str = "certus-vault-operator";

#[derive(Default)]
struct Fake {
    lease: Option<Value>,
    resource_version: u64,
    /// CRD reads per token.
    crd_reads: HashMap<String, usize>,
    unexpected: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "code": code, "reason": reason, "message": reason})
}

fn patch_lease(f: &mut Fake, apply: bool, patch: &Value) -> Result<Value, (u16, Value)> {
    let Some(lease) = f.lease.as_mut() else {
        return Err((404, status(404, "NotFound")));
    };
    let spec = lease["spec"].as_object_mut().unwrap();
    if apply {
        if let (Some(new), Some(old)) = (
            patch["spec"]["holderIdentity"].as_str(),
            spec.get("holderIdentity").and_then(Value::as_str),
        ) {
            if new != old {
                return Err((409, status(409, "Conflict")));
            }
        }
    }
    if let Some(fields) = patch["spec"].as_object() {
        for (k, v) in fields {
            if v.is_null() {
                spec.remove(k);
            } else {
                spec.insert(k.clone(), v.clone());
            }
        }
    }
    f.resource_version += 1;
    lease["metadata"]["resourceVersion"] = json!(f.resource_version.to_string());
    Ok(lease.clone())
}

async fn api(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path();
    let lease_path = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE}");
    let leases_path = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    let mut f = fake.lock().unwrap();
    let (code, value) = if path
        .starts_with("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/")
    {
        *f.crd_reads.entry(token).or_default() += 1;
        (404, status(404, "NotFound"))
    } else if method == Method::GET && path == lease_path {
        match &f.lease {
            Some(l) => (200, l.clone()),
            None => (404, status(404, "NotFound")),
        }
    } else if method == Method::POST && path == leases_path {
        if f.lease.is_some() {
            (409, status(409, "AlreadyExists"))
        } else {
            f.resource_version += 1;
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE, "namespace": NS, "resourceVersion": f.resource_version.to_string()},
                "spec": {}
            });
            f.lease = Some(lease.clone());
            (201, lease)
        }
    } else if method == Method::PATCH && path == lease_path {
        match patch_lease(
            &mut f,
            content_type.starts_with("application/apply-patch"),
            &body,
        ) {
            Ok(l) => (200, l),
            Err((code, s)) => (code, s),
        }
    } else {
        f.unexpected.push(format!("{method} {uri}"));
        (404, status(404, "NotFound"))
    };
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        value.to_string(),
    )
}

fn holder(fake: &Shared) -> Option<String> {
    fake.lock().unwrap().lease.as_ref()?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

fn crd_reads(fake: &Shared, token: &str) -> usize {
    fake.lock()
        .unwrap()
        .crd_reads
        .get(token)
        .copied()
        .unwrap_or(0)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_string()))
}

fn leader_gauge(addr: SocketAddr) -> Option<u8> {
    let (_, text) = http_get(addr, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix("certus_leader "))
        .and_then(|v| v.trim().parse().ok())
}

struct Process {
    token: &'static str,
    child: Child,
    metrics: SocketAddr,
    log: std::path::PathBuf,
}

impl Process {
    fn start(dir: &std::path::Path, api: SocketAddr, token: &'static str) -> Process {
        let kubeconfig = dir.join(format!("kubeconfig-{token}"));
        std::fs::write(
            &kubeconfig,
            format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://{api}\"}}\nusers:\n- name: u\n  user: {{token: {token}}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u, namespace: {NS}}}\ncurrent-context: x\n"),
        )
        .unwrap();
        let metrics = free_addr();
        let log = dir.join(format!("operator-{token}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_certus-vault"))
            .args([
                "run",
                "--leader-election",
                "--lease-duration=2s",
                &format!("--metrics-addr={metrics}"),
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Process {
            token,
            child,
            metrics,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn holds(&self, holder: &Option<String>) -> bool {
        holder
            .as_deref()
            .is_some_and(|h| h.ends_with(&format!("-{}", self.pid())))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit:\n{}",
                self.token,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_processes_share_one_lease() {
    let fake: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(api).with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();

    let mut a = Process::start(dir.path(), api_addr, "a");
    wait_until(
        "a to hold the Lease",
        Duration::from_secs(20),
        || a.holds(&holder(&fake)),
        || a.log_text(),
    )
    .await;
    let mut b = Process::start(dir.path(), api_addr, "b");
    wait_until(
        "b to serve its probes",
        Duration::from_secs(20),
        || leader_gauge(b.metrics).is_some(),
        || b.log_text(),
    )
    .await;
    // Several renewal periods of the 2 s lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        a.holds(&holder(&fake)),
        "a kept the Lease:\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    assert_eq!(leader_gauge(a.metrics), Some(1));
    assert_eq!(leader_gauge(b.metrics), Some(0));
    assert!(
        crd_reads(&fake, "a") > 0,
        "the leader's controllers started (they poll the CRDs)"
    );
    assert_eq!(
        crd_reads(&fake, "b"),
        0,
        "the standby's controllers never ran:\n{}",
        b.log_text()
    );
    // A standby is ready while its last exchange with the Lease succeeded; one exchange
    // can time out on a loaded machine (the lease client's timeouts are a third of the
    // 2 s lease), so readiness is awaited, not sampled once.
    wait_until(
        "the healthy standby b to be ready",
        Duration::from_secs(10),
        || http_get(b.metrics, "/readyz").is_some_and(|(code, _)| code == 200),
        || b.log_text(),
    )
    .await;
    assert_eq!(
        http_get(a.metrics, "/readyz").unwrap().0,
        503,
        "a leader waiting for its CRDs is not ready"
    );

    // SIGKILL: no release; b takes the Lease once it expires.
    a.signal("-KILL");
    let _ = a.wait_exit(Duration::from_secs(5));
    let took = wait_until(
        "b to take over",
        Duration::from_secs(8),
        || b.holds(&holder(&fake)),
        || b.log_text(),
    )
    .await;
    assert!(
        took <= Duration::from_millis(2000 + 1000 + 2000),
        "b took over after {took:?}"
    );
    wait_until(
        "b to lead",
        Duration::from_secs(5),
        || leader_gauge(b.metrics) == Some(1),
        || b.log_text(),
    )
    .await;
    wait_until(
        "b's controllers to start",
        Duration::from_secs(5),
        || crd_reads(&fake, "b") > 0,
        || b.log_text(),
    )
    .await;

    // SIGTERM: b exits 0 and releases; c (already standing by) takes over.
    let c = Process::start(dir.path(), api_addr, "c");
    wait_until(
        "c to serve its probes",
        Duration::from_secs(20),
        || leader_gauge(c.metrics) == Some(0),
        || c.log_text(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(crd_reads(&fake, "c"), 0);
    b.signal("-TERM");
    assert_eq!(
        b.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        b.log_text()
    );
    let h = holder(&fake);
    assert!(h.is_none() || c.holds(&h), "b released the Lease: {h:?}");
    assert!(b.log_text().contains("Lease released"), "{}", b.log_text());
    wait_until(
        "c to take over",
        Duration::from_secs(5),
        || c.holds(&holder(&fake)),
        || c.log_text(),
    )
    .await;
    wait_until(
        "c to lead",
        Duration::from_secs(5),
        || leader_gauge(c.metrics) == Some(1),
        || c.log_text(),
    )
    .await;
    assert_eq!(fake.lock().unwrap().unexpected, Vec::<String>::new());
}
