//! Audit reader throughput: generates a realistic 100k-line audit file (OpenBao 2.7 line
//! shapes: KV reads/writes by Kubernetes-auth services and root, failed userpass logins,
//! permission denials, system calls with HMAC'd response data) and reads it through the
//! production path — `FileTailer` → `AuditProcessor` (parse, metrics, 5 rules, alert
//! dispatch) — reporting lines per second and peak memory (VmHWM).
//!
//!   cargo bench -p certus-audit --bench reader            # 100k lines
//!   CERTUS_BENCH_LINES=1000000 cargo bench -p certus-audit --bench reader
//!   CERTUS_BENCH_FILE=$CERTUS_AUDIT_LOG cargo bench -p certus-audit --bench reader
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a 2,000-line smoke
//! pass instead, so the test suite stays fast.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use certus_api::AuditAlertRule;
use certus_audit::{
    parse_line, Alert, AuditMetrics, AuditRuntime, DispatcherOptions, EventSink, FileTailer,
    MetricsOptions, StartAt, SystemClock, TailOptions, TimeBasis, WebhookResolution,
};
use futures::future::BoxFuture;

struct CountEvents(AtomicU64);

impl EventSink for CountEvents {
    fn publish<'a>(&'a self, _alert: &'a Alert) -> BoxFuture<'a, Result<(), String>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A deterministic generator (xorshift) so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    fn hmac(&mut self) -> String {
        format!(
            "hmac-sha256:{:016x}{:016x}{:016x}{:016x}",
            self.next(),
            self.next(),
            self.next(),
            self.next()
        )
    }
}

fn generate(path: &Path, lines: usize) -> u64 {
    let mut w = BufWriter::new(std::fs::File::create(path).unwrap());
    let mut r = Rng(0x9e3779b97f4a7c15);
    let services = [
        ("certus-tap", "certus-ask"),
        ("certus-tap", "certus-trust"),
        ("certus-agents", "goose"),
        ("certus-insight", "insight"),
        ("ci", "deployer"),
    ];
    let envs = ["prod", "staging", "dev"];
    let keys = ["openai", "db", "github", "mcp-token", "s3"];
    let day0 = chrono::DateTime::parse_from_rfc3339("2026-06-03T00:00:00Z").unwrap();
    let mut bytes = 0u64;
    for i in 0..lines {
        // Spread over one day, in order.
        let t = day0 + chrono::Duration::milliseconds((i as i64) * 86_400_000 / lines as i64);
        let time = t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let kind = if i % 2 == 0 { "request" } else { "response" };
        let roll = r.next() % 100;
        let remote = format!("10.42.{}.{}", r.next() % 4, r.next() % 250);
        let req_id = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            r.next() as u32,
            r.next() as u16,
            r.next() as u16,
            r.next() as u16,
            r.next() & 0xffff_ffff_ffff
        );
        let line = if roll < 70 {
            let (ns, sa) = services[(r.next() % services.len() as u64) as usize];
            let path = format!("certus/data/{}/{}", r.pick(&envs), r.pick(&keys));
            let op = if r.next().is_multiple_of(10) {
                "update"
            } else {
                "read"
            };
            let mut v = serde_json::json!({
                "time": time, "type": kind,
                "auth": {
                    "client_token": r.hmac(), "accessor": r.hmac(),
                    "display_name": format!("kubernetes-{ns}-{sa}"),
                    "policies": ["default", sa], "token_policies": ["default", sa],
                    "policy_results": {"allowed": true, "granting_policies": [{"name": sa, "namespace_id": "root", "type": "acl"}]},
                    "metadata": {"role": sa, "service_account_name": sa, "service_account_namespace": ns, "service_account_secret_name": "", "service_account_uid": format!("{:x}", r.next())},
                    "entity_id": format!("{:x}-{sa}", r.next() % 1000), "token_type": "service", "token_ttl": 3600,
                    "token_issue_time": "2026-06-03T00:00:00Z"
                },
                "request": {
                    "id": req_id, "operation": op, "mount_point": "certus/", "mount_type": "kv",
                    "mount_accessor": "kv_5af30da3", "mount_running_version": "v2.7.2+builtin.bao", "mount_class": "secret",
                    "client_token": r.hmac(), "client_token_accessor": r.hmac(),
                    "namespace": {"id": "root"}, "path": path,
                    "remote_address": remote, "remote_port": 40000 + r.next() % 20000
                }
            });
            if kind == "response" {
                v["response"] = serde_json::json!({
                    "mount_point": "certus/", "mount_type": "kv", "mount_accessor": "kv_5af30da3",
                    "mount_running_plugin_version": "v2.7.2+builtin.bao", "mount_class": "secret",
                    "data": {"data": {"value": r.hmac()}, "metadata": {"created_time": r.hmac(), "version": 3}}
                });
            }
            v
        } else if roll < 80 {
            // Failed userpass logins from a few addresses.
            let user = r.pick(&["alice", "bob", "admin", "root"]);
            let remote = format!("203.0.113.{}", r.next() % 3);
            let mut v = serde_json::json!({
                "time": time, "type": kind,
                "auth": {"policy_results": {"allowed": true}, "token_type": "default"},
                "request": {
                    "id": req_id, "operation": "update", "mount_point": "auth/userpass/", "mount_type": "userpass",
                    "mount_accessor": "auth_userpass_27f929d2", "mount_class": "auth", "namespace": {"id": "root"},
                    "path": format!("auth/userpass/login/{user}"), "data": {"password": r.hmac()},
                    "remote_address": remote, "remote_port": 50000 + r.next() % 10000
                }
            });
            if kind == "response" {
                v["response"] = serde_json::json!({"mount_point": "auth/userpass/", "mount_type": "userpass", "data": {"error": r.hmac()}});
                v["error"] = "invalid credentials".into();
            }
            v
        } else if roll < 85 {
            // Denied reads of prod secrets by a human token.
            serde_json::json!({
                "time": time, "type": kind,
                "auth": {"client_token": r.hmac(), "accessor": r.hmac(), "display_name": "userpass-bob", "policies": ["default"],
                         "policy_results": {"allowed": false}, "metadata": {"username": "bob"}, "entity_id": "ent-bob", "token_type": "service"},
                "request": {"id": req_id, "operation": "read", "mount_point": "secret/", "mount_type": "kv", "namespace": {"id": "root"},
                            "path": format!("secret/data/prod/{}", r.pick(&keys)), "remote_address": remote},
                "error": "1 error occurred:\n\t* permission denied\n\n"
            })
        } else {
            // The operator's own system calls (policy and mount reconciliation).
            let mut v = serde_json::json!({
                "time": time, "type": kind,
                "auth": {"client_token": r.hmac(), "accessor": r.hmac(), "display_name": "kubernetes-certus-system-certus-vault-operator",
                         "policies": ["certus-operator"], "policy_results": {"allowed": true}, "token_type": "service"},
                "request": {"id": req_id, "operation": r.pick(&["read", "list", "update"]), "mount_point": "sys/", "mount_type": "system",
                            "namespace": {"id": "root"}, "path": format!("sys/policies/acl/{}", r.pick(&keys)), "remote_address": "10.42.0.5"}
            });
            if kind == "response" {
                v["response"] = serde_json::json!({"mount_point": "sys/", "mount_type": "system",
                    "data": {"name": r.hmac(), "policy": r.hmac(), "version": 1, "modified": r.hmac()}});
            }
            v
        };
        let s = serde_json::to_string(&line).unwrap();
        bytes += s.len() as u64 + 1;
        w.write_all(s.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
    }
    w.flush().unwrap();
    bytes
}

fn rules() -> Vec<AuditAlertRule> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/samples/audit");
    let mut out: Vec<AuditAlertRule> = [
        "prod-reads-outside-hours.yaml",
        "failed-logins.yaml",
        "unexpected-identity.yaml",
    ]
    .iter()
    .map(|f| serde_yaml::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap())
    .collect();
    for (name, spec) in [
        (
            "denials-per-identity",
            "match: {result: PermissionDenied}\nthreshold: {count: 10, window: 1m, groupBy: Identity}",
        ),
        (
            "operator-policy-writes",
            "match: {paths: ['sys/policies/acl/*'], operations: [update, delete], identities: [{displayName: 'kubernetes-*'}]}\nthreshold: {count: 1, window: 1h}",
        ),
    ] {
        out.push(AuditAlertRule::new(name, serde_yaml::from_str(spec).unwrap()));
    }
    out
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("CERTUS_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 100_000 } else { 2_000 });
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, generated) = match std::env::var("CERTUS_BENCH_FILE") {
        Ok(p) => {
            let len = std::fs::metadata(&p).unwrap().len();
            (std::path::PathBuf::from(p), len, false)
        }
        Err(_) => {
            let p = dir.path().join("audit.log");
            let b = generate(&p, n);
            (p, b, true)
        }
    };
    let rss_before = vm_kib("VmRSS:");

    // 1. The production path: tailer → processor (parse, metrics, rules, dispatch).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let events = Arc::new(CountEvents(AtomicU64::new(0)));
    let metrics = Arc::new(AuditMetrics::unregistered(MetricsOptions::default()));
    let runtime = AuditRuntime::with_metrics(
        metrics.clone(),
        Some(events.clone() as Arc<dyn EventSink>),
        DispatcherOptions::default(),
        Arc::new(SystemClock),
        TimeBasis::EntryTime,
        None,
    )
    .unwrap();
    for r in rules() {
        runtime.rules().apply(&r, WebhookResolution::None);
    }
    let processor = runtime.processor();
    let mut tailer = FileTailer::new(
        &path,
        TailOptions {
            start_at: StartAt::Beginning,
            ..Default::default()
        },
        None,
    );
    let t = Instant::now();
    let mut lines = 0u64;
    let mut alerts = 0u64;
    loop {
        let r = tailer
            .poll(&mut |line| {
                if let certus_audit::LineOutcome::Entry { alerts: a } =
                    processor.process_line("file", line)
                {
                    alerts += a as u64;
                }
            })
            .unwrap();
        lines += r.lines;
        if !r.more {
            break;
        }
    }
    let cp = tailer.checkpoint().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(cp.offset, bytes, "read to the end");
    assert_eq!(metrics.malformed_count("file"), 0);
    let hwm_pipeline = vm_kib("VmHWM:");

    // 2. Parse only (the model), streaming from the page cache with one reused buffer.
    let mut reader =
        std::io::BufReader::with_capacity(256 << 10, std::fs::File::open(&path).unwrap());
    let mut buf = Vec::with_capacity(8192);
    let t = Instant::now();
    let mut parsed = 0u64;
    loop {
        buf.clear();
        if std::io::BufRead::read_until(&mut reader, b'\n', &mut buf).unwrap() == 0 {
            break;
        }
        if let Ok(Some(e)) = parse_line(&buf) {
            parsed += u64::from(!e.path().is_empty());
        }
    }
    let parse_secs = t.elapsed().as_secs_f64();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "| audit reader | {} lines ({:.1} MiB{}) | parse only: {:.0} lines/s | tail+parse+metrics+5 rules: {:.0} lines/s ({:.1} MiB/s) | {} alerts | peak RSS (VmHWM) after the pipeline pass {:.1} MiB (RSS before reading {:.1} MiB) | {} |",
        lines,
        mib,
        if generated { ", generated" } else { "" },
        parsed as f64 / parse_secs,
        lines as f64 / secs,
        mib / secs,
        alerts,
        hwm_pipeline as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        cpu,
    );
    if bench {
        println!(
            "(read {} lines in {:.3} s; parse-only pass {:.3} s; 2 cores shared)",
            lines, secs, parse_secs
        );
    }
}
