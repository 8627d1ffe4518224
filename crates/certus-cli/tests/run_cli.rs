//! `certus-vault run`: the log filter and JSON log shape, and the real binary against an
//! unreachable API server (probes answer, SIGTERM exits 0, with and without leader
//! election).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certus_cli::{json_subscriber, log_filter, DEFAULT_LOG_FILTER};
use tracing_subscriber::EnvFilter;

#[test]
fn the_default_filter_applies_without_rust_log() {
    assert_eq!(log_filter(None), DEFAULT_LOG_FILTER);
    assert_eq!(log_filter(Some("  ")), DEFAULT_LOG_FILTER);
}

#[test]
fn rust_log_keeps_vaultrs_and_rustify_silent_unless_it_names_them() {
    assert_eq!(log_filter(Some("info")), "info,rustify=off,vaultrs=off");
    assert_eq!(
        log_filter(Some("info,vaultrs=debug")),
        "info,vaultrs=debug,rustify=off"
    );
    assert_eq!(
        log_filter(Some("debug,rustify=warn,vaultrs=info")),
        "debug,rustify=warn,vaultrs=info"
    );
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON logs carry the reconcile span's `kind`, `namespace` and `name` (the controllers'
/// `#[instrument]` fields) and the event's own fields at the top level; vaultrs stays
/// silent under `RUST_LOG=info`.
#[test]
fn json_logs_carry_the_resource_of_the_span() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let filter = EnvFilter::try_new(log_filter(Some("info"))).unwrap();
    let subscriber = json_subscriber(filter, move || writer.clone());
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!(
            "reconcile",
            kind = "VaultPolicy",
            namespace = "team-a",
            name = "app-read"
        );
        let _entered = span.enter();
        tracing::info!(vault_name = "team-a.app-read", "policy written");
        tracing::error!(target: "vaultrs::api", "404 Not Found");
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line, vaultrs silenced: {text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["message"], "policy written", "{v}");
    assert_eq!(v["vault_name"], "team-a.app-read", "{v}");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["namespace"], "team-a", "{v}");
    assert_eq!(
        v["name"], "app-read",
        "the resource name, not the span's: {v}"
    );
    assert_eq!(v["kind"], "VaultPolicy", "{v}");
    assert_eq!(v["target"], "run_cli", "{v}");
    assert_eq!(v["spans"], serde_json::json!(["reconcile"]), "{v}");
    assert!(
        v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
}

// ---- the binary ---------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A kubeconfig whose API server refuses connections (port 9 on loopback).
fn unreachable_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"http://127.0.0.1:9\"}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u, namespace: ops}\ncurrent-context: x\n",
    )
    .unwrap();
    path
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

struct Operator {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Operator {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Operator {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("operator-{}.log", addr.port()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_certus-vault"))
            .arg("run")
            .arg(format!("--metrics-addr={addr}"))
            .args(extra)
            .env("KUBECONFIG", unreachable_kubeconfig(dir))
            .env("RUST_LOG", "info")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        let op = Operator { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(op.addr, "/livez").is_none() {
            assert!(
                Instant::now() < deadline,
                "no /livez within 20s:\n{}",
                op.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        op
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code (within 15 s).
    fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.log_text());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit within 15s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Without leader election: alive, not ready while the CRDs cannot be read, metrics
/// served with `certus_leader 1`; SIGTERM exits 0 after a clean shutdown.
#[cfg(unix)]
#[test]
fn the_operator_serves_probes_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(dir.path(), &[]);
    assert_eq!(http_get(op.addr, "/livez").unwrap().0, 200);
    let (code, body) = http_get(op.addr, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("leader"), "{body}");
    let (code, metrics) = http_get(op.addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("certus_leader 1"), "{metrics}");
    assert!(
        metrics.contains("certus_vault_requests_total{kind=\"read\"} 0"),
        "{metrics}"
    );
    let (code, log) = op.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

/// With leader election and no reachable API server: a standby that cannot reach its
/// Lease is alive but not ready and never runs the controllers; SIGTERM exits 0.
#[cfg(unix)]
#[test]
fn an_isolated_standby_is_alive_not_ready_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(
        dir.path(),
        &[
            "--leader-election",
            "--lease-duration=4s",
            "--lease-namespace=ops",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(http_get(op.addr, "/livez").unwrap().0, 200);
    let (code, body) = http_get(op.addr, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("standby"), "{body}");
    let (_, metrics) = http_get(op.addr, "/metrics").unwrap();
    assert!(metrics.contains("certus_leader 0"), "{metrics}");
    let (code, log) = op.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("leader election on"), "{log}");
    assert!(log.contains("ops/certus-vault-operator"), "{log}");
    assert!(!log.contains("starting the controllers"), "{log}");
}

/// Bad flags fail before anything starts.
#[test]
fn a_bad_lease_duration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certus-vault"))
        .args([
            "run",
            "--leader-election",
            "--lease-duration=1500ms",
            "--metrics-addr=127.0.0.1:0",
        ])
        .env("KUBECONFIG", unreachable_kubeconfig(dir.path()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lease-duration") && err.contains("at least 2s"),
        "{err}"
    );
}
