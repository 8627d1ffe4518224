//! Controller scale (issue 8, scenario 5): memory and reconcile throughput of the
//! `VaultPolicy` controller's reconcile core with 1,000 → 10,000 resources held in its
//! reflector cache, the Kubernetes side faked in-process (objects fed to a kube-runtime
//! `reflector::store` as watch events; no API server, no status writes).
//!
//! Each size runs in a fresh child process (this binary, re-executed), so its peak RSS
//! (VmHWM from /proc/self/status) is its own. Per size:
//! - `store`: RSS the N cached objects take (VmRSS after filling the store minus before);
//! - `pure planning`: `certus_core::policy::desired` + `plan` against a prepared live map
//!   (every policy in Vault and unchanged: the steady-state resync) — objects/s;
//! - `controller core`: what `policy::run_pipeline` does per reconcile without I/O —
//!   validate, the claim check over the store (`check_claim(p, &store.state())`), plan,
//!   and the new status (`success_status`) — objects/s for one full resync of the store.
//!
//! With `CERTUS_BENCH_VAULT_SAMPLE=N` and `VAULT_ADDR`/`VAULT_TOKEN` set, also reconciles N
//! policies through the full shared pipeline (`certus_reconcile::apply_all_concurrent`)
//! against that real OpenBao: a cold pass (creates) and an idle pass (no change).
//!
//!   cargo bench -p certus-controller --bench scale
//!   CERTUS_BENCH_SCALE=1000,5000,10000 CERTUS_BENCH_VAULT_SAMPLE=200 \
//!     VAULT_ADDR=... VAULT_TOKEN=... cargo bench -p certus-controller --bench scale
//!
//! Prints one `BENCH_JSON {...}` line per figure (hack/bench/run reads them). Under
//! `cargo test --all-targets` (no `--bench` argument) it runs a 200-object smoke pass.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use certus_api::VaultPolicy;
use certus_controller::policy::{check_claim, success_status};
use certus_controller::testing::{policy, PolicyExt};
use certus_core::policy as core;
use certus_reconcile::{apply_all_concurrent, policy as pipeline, LastApplied, Mode, Resource};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;

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

/// A realistic policy: a few path blocks, 100 namespaces, `spec.name` set.
fn bench_policy(i: usize) -> VaultPolicy {
    let ns = format!("team-{:03}", i % 100);
    let mut p = policy(&ns, &format!("app-{i:05}")).named(&format!("bench-app-{i:05}"));
    p.spec.rules = Some(format!(
        "path \"apps/data/app-{i:05}/*\" {{\n  capabilities = [\"read\", \"list\"]\n}}\n\n\
         path \"database/creds/app-{i:05}\" {{\n  capabilities = [\"read\"]\n}}\n\n\
         path \"auth/token/renew-self\" {{\n  capabilities = [\"update\"]\n}}\n"
    ));
    p.metadata.uid = Some(format!("00000000-0000-4000-8000-{i:012}"));
    p
}

fn json(fields: &[(&str, serde_json::Value)]) {
    let m: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    println!("BENCH_JSON {}", serde_json::Value::Object(m));
}

fn child(n: usize) {
    let rss0 = vm_kib("VmRSS:");
    let (store, mut writer) = reflector::store::<VaultPolicy>();
    for i in 0..n {
        writer.apply_watcher_event(&Event::Apply(bench_policy(i)));
    }
    let rss_store = vm_kib("VmRSS:").saturating_sub(rss0);
    let objs = store.state();
    assert_eq!(objs.len(), n);

    // What Vault holds: every policy already written, unchanged (steady state).
    let live: HashMap<String, String> = objs
        .iter()
        .map(|p| {
            let d = pipeline::desired(p).expect("valid");
            (d.name, d.text)
        })
        .collect();
    let hashes: HashMap<String, String> = objs
        .iter()
        .map(|p| {
            let d = pipeline::desired(p).unwrap();
            (d.name, d.hash)
        })
        .collect();

    // 1. Pure planning.
    let t = Instant::now();
    let mut unchanged = 0usize;
    for p in &objs {
        let d = pipeline::desired(p).expect("valid");
        let id = pipeline::resource_id(p);
        let c = core::plan(
            &id,
            &d,
            live.get(&d.name).map(String::as_str),
            hashes.get(&d.name).map(String::as_str),
            false,
        );
        unchanged += usize::from(c.action == certus_core::Action::NoChange);
    }
    let pure = t.elapsed().as_secs_f64();
    assert_eq!(unchanged, n);

    // 2. The controller's reconcile core over the reflector store (one full resync).
    let now = chrono::Utc::now();
    let t = Instant::now();
    let mut ok = 0usize;
    for p in &objs {
        pipeline::desired(p).expect("valid");
        check_claim(p, &store.state()).expect("no conflict");
        let d = pipeline::desired(p).unwrap();
        let change = core::plan(
            &pipeline::resource_id(p),
            &d,
            live.get(&d.name).map(String::as_str),
            hashes.get(&d.name).map(String::as_str),
            false,
        );
        let outcome = pipeline::PolicyOutcome {
            change,
            written: false,
            hash: d.hash,
            vault_name: d.name,
        };
        let st = success_status(
            &p.status.clone().unwrap_or_default(),
            p.metadata.generation,
            &outcome,
            now,
        );
        ok += usize::from(st.vault_name.is_some());
    }
    let controller = t.elapsed().as_secs_f64();
    assert_eq!(ok, n);
    let hwm = vm_kib("VmHWM:") as f64 / 1024.0;
    let store_mib = rss_store as f64 / 1024.0;
    for (what, secs) in [
        ("pure planning (desired + plan)", pure),
        (
            "controller core (validate + claim check + plan + status)",
            controller,
        ),
    ] {
        json(&[
            ("what", what.into()),
            ("objects", n.into()),
            ("seconds", secs.into()),
            ("objects_per_s", (n as f64 / secs).into()),
            ("us_per_object", (secs * 1e6 / n as f64).into()),
            ("vmhwm_mib", hwm.into()),
            ("store_rss_mib", store_mib.into()),
        ]);
    }
}

struct NoSecrets;

impl certus_reconcile::Resolver for NoSecrets {
    async fn secret_value(
        &self,
        _namespace: &str,
        _name: &str,
        _key: &str,
    ) -> Result<Option<certus_vault_client::SecretString>, certus_reconcile::ReconcileError> {
        Ok(None)
    }
    fn service_account_jwt(
        &self,
        _namespace: &str,
        _name: &str,
        _audiences: Vec<String>,
    ) -> Result<certus_vault_client::JwtSource, certus_reconcile::ReconcileError> {
        Err(certus_reconcile::ReconcileError::Invalid(
            "no cluster".into(),
        ))
    }
}

fn vault_sample(n: usize) {
    let (Ok(addr), Ok(token)) = (std::env::var("VAULT_ADDR"), std::env::var("VAULT_TOKEN")) else {
        eprintln!("CERTUS_BENCH_VAULT_SAMPLE set but VAULT_ADDR/VAULT_TOKEN are not: skipped");
        return;
    };
    let concurrency: usize = std::env::var("CERTUS_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let session = certus_vault_client::VaultSession::connect(
            certus_vault_client::ConnectionConfig::new(addr),
            certus_vault_client::Credentials::Token(certus_vault_client::SecretString::new(token)),
        )
        .await
        .expect("session");
        // Distinct names per run so a reused OpenBao still starts from "absent".
        let run = std::process::id();
        let resources: Vec<Resource> = (0..n)
            .map(|i| {
                let p = bench_policy(i).named(&format!("bench-scale-{run}-{i:05}"));
                Resource::Policy(Box::new(p))
            })
            .collect();
        let mut state: BTreeMap<_, LastApplied> = BTreeMap::new();
        for pass in ["cold (create)", "idle (no change)"] {
            let before = session.stats().snapshot();
            let t = Instant::now();
            let out = apply_all_concurrent(
                &session,
                &resources,
                &NoSecrets,
                &state,
                Mode::Apply,
                concurrency,
            )
            .await;
            let secs = t.elapsed().as_secs_f64();
            let d = session.stats().snapshot().since(&before);
            let errors = out.iter().filter(|a| a.result.is_err()).count();
            for a in &out {
                if let Ok(o) = &a.result {
                    state.insert(a.id.clone(), o.last_applied());
                }
            }
            json(&[
                ("what", format!("full pipeline vs OpenBao, {pass}").into()),
                ("objects", n.into()),
                ("seconds", secs.into()),
                ("objects_per_s", (n as f64 / secs).into()),
                ("us_per_object", (secs * 1e6 / n as f64).into()),
                ("reads", d.reads.into()),
                ("writes", d.writes.into()),
                ("errors", errors.into()),
                ("concurrency", concurrency.into()),
                ("vmhwm_mib", (vm_kib("VmHWM:") as f64 / 1024.0).into()),
            ]);
        }
        // Leave the shared server as we found it.
        for r in &resources {
            if let Resource::Policy(p) = r {
                let _ = session.policy_delete(&p.vault_name()).await;
            }
        }
    });
}

fn main() {
    if let Ok(n) = std::env::var("CERTUS_BENCH_SCALE_CHILD") {
        match n.as_str() {
            "vault" => vault_sample(
                std::env::var("CERTUS_BENCH_VAULT_SAMPLE")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(200),
            ),
            n => child(n.parse().expect("size")),
        }
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = if bench {
        std::env::var("CERTUS_BENCH_SCALE")
            .unwrap_or_else(|_| "1000,5000,10000".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    } else {
        vec![200]
    };
    let sample: usize = if bench {
        std::env::var("CERTUS_BENCH_VAULT_SAMPLE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    let exe = std::env::current_exe().expect("current exe");
    let mut children: Vec<String> = sizes.iter().map(|n| n.to_string()).collect();
    if sample > 0 {
        children.push("vault".into());
    }
    for c in children {
        let out = std::process::Command::new(&exe)
            .env("CERTUS_BENCH_SCALE_CHILD", &c)
            .output()
            .expect("run child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "child {c} failed");
    }
}
