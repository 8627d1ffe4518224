//! Leader election end to end: two and then three real `certus-vault run` processes
//! with `--leader-election` against a real API server, the Lease in the test namespace.
//! Skipped (with one line on stderr) unless `CERTUS_E2E_KUBECONFIG` is set; see
//! tests/e2e/README.md.
//!
//! Asserts: exactly one process holds the Lease (`holderIdentity` = `<host>-<pid>`) and
//! only it reconciles (its `certus_leader` is 1 and its reconcile counter grows; the
//! standby's stays 0 and its log never starts the controllers); a killed leader
//! (SIGKILL, no release) is replaced within the lease duration plus a margin and the new
//! leader keeps reconciling; a leader stopped with SIGTERM exits 0 and releases the Lease,
//! and the next standby takes over.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use certus_api::VaultPolicy;
use certus_e2e::fixtures::{hcl_path, vault_policy};
use certus_e2e::{Check, E2e, Operator, READY_TIMEOUT};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

/// `--lease-duration` of the operators under test.
const LEASE_SECONDS: u64 = 10;
/// Takeover after a crash: the lease duration, kube-lease-manager's random pause (up to
/// 1 s) before taking an expired Lease, and the API round trips.
const TAKEOVER: Duration = Duration::from_secs(LEASE_SECONDS + 8);
const LEASE_NAME: &str = "certus-vault-operator";

fn args(ns: &str) -> Vec<String> {
    vec![
        "--leader-election".into(),
        format!("--lease-namespace={ns}"),
        format!("--lease-name={LEASE_NAME}"),
        format!("--lease-duration={LEASE_SECONDS}s"),
    ]
}

fn start(e2e: &E2e, label: &str) -> Result<Operator> {
    let args = args(e2e.ns());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    e2e.start_operator(label, &args, None)
}

async fn holder(e2e: &E2e) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(e2e.client(), e2e.ns());
    Ok(api
        .get_opt(LEASE_NAME)
        .await
        .context("reading the Lease")?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

fn holds(holder: &Option<String>, op: &Operator) -> bool {
    holder
        .as_deref()
        .is_some_and(|h| h.ends_with(&format!("-{}", op.pid())))
}

const POLICY_RECONCILES: &str = "certus_controller_reconciles_total{kind=\"VaultPolicy\"}";

/// Waits until `op` holds the Lease and runs its controllers (`certus_leader 1`,
/// `/readyz` 200).
async fn wait_leader(e2e: &E2e, op: &Operator, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    e2e.eventually(
        &format!("operator pid {} to hold the Lease and lead", op.pid()),
        timeout,
        async || {
            op.ensure_running()?;
            let h = holder(e2e).await?;
            if !holds(&h, op) {
                return Ok(Check::Pending(format!("holderIdentity {h:?}")));
            }
            if op.metric("certus_leader")? != 1.0 {
                return Ok(Check::Pending("certus_leader is not 1 yet".into()));
            }
            match op.http_get("/readyz")? {
                (200, _) => Ok(Check::Done(())),
                (code, body) => Ok(Check::Pending(format!("/readyz {code}: {body}"))),
            }
        },
    )
    .await?;
    Ok(start.elapsed())
}

/// A standby: alive, ready, `certus_leader 0`, no controllers started.
fn assert_standby(op: &Operator) -> Result<()> {
    op.ensure_running()?;
    assert_eq!(
        op.metric("certus_leader")?,
        0.0,
        "the standby is not leader"
    );
    assert_eq!(
        op.metric(POLICY_RECONCILES)?,
        0.0,
        "the standby reconciled nothing"
    );
    assert!(
        !op.log_contains("starting the controllers"),
        "the standby never started its controllers:\n{}",
        op.log_excerpt(30)
    );
    let (code, body) = op.http_get("/readyz")?;
    assert_eq!(code, 200, "a healthy standby is ready: {body}");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(op.http_get("/livez")?.0, 200);
    Ok(())
}

#[tokio::test]
async fn leader_election_failover() -> Result<()> {
    let Some(mut e2e) = E2e::start_without_operator("leader_election_failover").await else {
        return Ok(());
    };
    let ns = e2e.ns().to_string();

    // a starts first and takes the Lease; b stands by.
    let a = start(&e2e, "operator-a")?;
    wait_leader(&e2e, &a, Duration::from_secs(60)).await?;
    let b = start(&e2e, "operator-b")?;
    e2e.eventually(
        "operator b to be a ready standby",
        Duration::from_secs(30),
        async || {
            b.ensure_running()?;
            match b.http_get("/readyz") {
                Ok((200, _)) => Ok(Check::Done(())),
                Ok((code, body)) => Ok(Check::Pending(format!("/readyz {code}: {body}"))),
                Err(e) => Ok(Check::Pending(format!("{e:#}"))),
            }
        },
    )
    .await?;
    e2e.set_operator(a);

    // Only the leader reconciles.
    e2e.connect_vault().await?;
    let p1 = vault_policy("p1")
        .rules(&hcl_path("secret/data/le/*", &["read"]))
        .build();
    e2e.apply(&p1).await?;
    let p1 = e2e.wait_ready::<VaultPolicy>("p1", READY_TIMEOUT).await?;
    let vault_name = p1
        .status
        .as_ref()
        .and_then(|s| s.vault_name.clone())
        .context("status.vaultName")?;
    let a = e2e.operator().context("operator a")?;
    assert!(holds(&holder(&e2e).await?, a), "a still holds the Lease");
    assert!(
        a.metric(POLICY_RECONCILES)? >= 1.0,
        "the leader reconciled p1"
    );
    assert_standby(&b)?;
    // A few more renewal periods: still exactly the same split.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS)).await;
    let a = e2e.operator().context("operator a")?;
    assert!(holds(&holder(&e2e).await?, a));
    assert_eq!(a.metric("certus_leader")?, 1.0);
    assert_standby(&b)?;

    // Crash of the leader: no graceful shutdown, no release.
    let a = e2e.take_operator().context("operator a")?;
    let killed_at = Instant::now();
    a.kill();
    let took = wait_leader(&e2e, &b, TAKEOVER).await?;
    eprintln!(
        "e2e leader_election_failover: b took over {:.1}s after a was killed (lease duration {LEASE_SECONDS}s)",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        took <= certus_e2e::scaled(TAKEOVER),
        "takeover within the lease duration plus margin"
    );
    e2e.set_operator(b);

    // The new leader keeps reconciling: a spec change of p1 and a new policy.
    let p1 = vault_policy("p1")
        .rules(&format!(
            "{}{}",
            hcl_path("secret/data/le/*", &["read"]),
            hcl_path("secret/data/le2/*", &["list"])
        ))
        .build();
    e2e.apply(&p1).await?;
    e2e.wait_ready::<VaultPolicy>("p1", READY_TIMEOUT).await?;
    e2e.eventually(
        "Vault to have p1's new rules",
        READY_TIMEOUT,
        async || match e2e.vault().policy(&vault_name).await? {
            Some(text) if text.contains("secret/data/le2/*") => Ok(Check::Done(())),
            other => Ok(Check::Pending(format!("{other:?}"))),
        },
    )
    .await?;
    let p2 = vault_policy("p2")
        .rules(&hcl_path("secret/data/le3/*", &["read"]))
        .build();
    e2e.apply(&p2).await?;
    e2e.wait_ready::<VaultPolicy>("p2", READY_TIMEOUT).await?;
    let b = e2e.operator().context("operator b")?;
    assert!(
        b.metric(POLICY_RECONCILES)? >= 2.0,
        "b reconciled after taking over"
    );

    // Graceful handover: c stands by, b gets SIGTERM, exits 0 and releases the Lease.
    let c = start(&e2e, "operator-c")?;
    e2e.eventually(
        "operator c to be a ready standby",
        Duration::from_secs(30),
        async || {
            c.ensure_running()?;
            match c.http_get("/readyz") {
                Ok((200, _)) => Ok(Check::Done(())),
                Ok((code, body)) => Ok(Check::Pending(format!("/readyz {code}: {body}"))),
                Err(e) => Ok(Check::Pending(format!("{e:#}"))),
            }
        },
    )
    .await?;
    assert_standby(&c)?;
    let b = e2e.take_operator().context("operator b")?;
    b.stop();
    let status = b.exited().context("b has exited after stop()")?;
    assert!(
        status.success(),
        "SIGTERM exits 0: {status}\n{}",
        b.log_excerpt(30)
    );
    assert!(
        b.log_contains("Lease released"),
        "b released the Lease on shutdown:\n{}",
        b.log_excerpt(30)
    );
    let h = holder(&e2e).await?;
    assert!(
        h.is_none() || holds(&h, &c),
        "after b's shutdown the Lease is free or c's: {h:?}"
    );
    wait_leader(&e2e, &c, TAKEOVER).await?;
    e2e.set_operator(c);
    let p3 = vault_policy("p3")
        .rules(&hcl_path("secret/data/le4/*", &["read"]))
        .build();
    e2e.apply(&p3).await?;
    e2e.wait_ready::<VaultPolicy>("p3", READY_TIMEOUT).await?;
    eprintln!("e2e leader_election_failover: namespace {ns} done");
    Ok(())
}
