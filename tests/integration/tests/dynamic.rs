//! DynamicCredential against the real OpenBao (+ PostgreSQL): the lease lifecycle of
//! `certus_reconcile::dynamic` with the Kubernetes side in memory.
//!
//! Most scenarios drive the lifecycle with an injected clock (`now + n seconds`) so they
//! finish in seconds; `database_credentials_log_in_for_three_minutes_across_renewals_and_reissues`
//! runs on the wall clock for three minutes, as the issue's "Done when" asks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use certus_api::{find_condition, ConditionStatus, DynamicCredential, DynamicCredentialStatus};
use certus_core::lease::IssueReason;
use certus_integration_tests::*;
use certus_reconcile::dynamic::{self, LeaseMemory, Taken, LEASE_STATE_ANNOTATION};
use certus_reconcile::sink::{MemorySecretStore, RecordingRestarter, SecretStore};
use certus_reconcile::ReconcileError;
use certus_vault_client::{
    ConnectionConfig, Credentials, ErrorClass, SecretString, SessionCache, VaultSession,
};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

const NS: &str = "it";

fn dc(name: &str, spec: Value) -> DynamicCredential {
    serde_json::from_value(json!({
        "apiVersion": "vault.certus.io/v1alpha1", "kind": "DynamicCredential",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": spec,
    }))
    .expect("DynamicCredential")
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// A database mount on the local PostgreSQL with role `app` (`default_ttl`, `max_ttl`).
async fn db_mount(raw: &Raw, p: &str, default_ttl: &str, max_ttl: &str) -> String {
    let e = env();
    let mount = format!("{p}-db");
    raw.write(&format!("sys/mounts/{mount}"), json!({"type": "database"}))
        .await;
    raw.write(
        &format!("{mount}/config/pg"),
        json!({"plugin_name": "postgresql-database-plugin", "connection_url": e.pg_url_template(),
               "username": e.pg_user, "password": e.pg_password, "allowed_roles": "*"}),
    )
    .await;
    raw.write(
        &format!("{mount}/roles/app"),
        json!({"db_name": "pg",
               "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
               "default_ttl": default_ttl, "max_ttl": max_ttl}),
    )
    .await;
    mount
}

/// The lease ids Vault holds under a prefix (`LIST sys/leases/lookup/<prefix>/`).
async fn leases(raw: &Raw, prefix: &str) -> Vec<String> {
    raw.0
        .list(&format!("sys/leases/lookup/{prefix}/"))
        .await
        .unwrap_or_else(|e| panic!("list leases {prefix}: {e}"))
}

fn secret(store: &MemorySecretStore, name: &str) -> Option<certus_reconcile::sink::LiveSecret> {
    store.with(|m| m.get(&(NS.to_string(), name.to_string())).cloned())
}

fn value(store: &MemorySecretStore, name: &str, key: &str) -> String {
    let s = secret(store, name).unwrap_or_else(|| panic!("Secret {name} missing"));
    String::from_utf8(
        s.data
            .get(key)
            .unwrap_or_else(|| panic!("key {key} missing"))
            .clone(),
    )
    .unwrap()
}

async fn pg_login(user: &str, password: &str) -> Result<String, String> {
    psql(user, password, "SELECT current_user").await
}

async fn pg_role_exists(user: &str) -> bool {
    psql_admin(&format!(
        "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
        user.replace('\'', "''")
    ))
    .await
        == "1"
}

/// An AppRole (`<p>-approle`, role `op`) for the operator to log in with: its policy
/// (`<p>-creds`) may read `<mount>/creds/app` and renew/revoke leases; `token` holds the
/// role's token settings. Returns the auth mount, the policy and a credentials factory.
async fn operator_approle(
    raw: &Raw,
    p: &str,
    mount: &str,
    token: Value,
) -> (String, String, impl Fn() -> Credentials) {
    let approle = format!("{p}-approle");
    let policy = format!("{p}-creds");
    raw.write(&format!("sys/policies/acl/{policy}"), json!({"policy": format!(
        "path \"{mount}/creds/app\" {{ capabilities = [\"read\"] }}\npath \"sys/leases/*\" {{ capabilities = [\"update\"] }}"
    )})).await;
    raw.write(&format!("sys/auth/{approle}"), json!({"type": "approle"}))
        .await;
    let mut role = token;
    role["token_policies"] = json!([policy]);
    raw.write(&format!("auth/{approle}/role/op"), role).await;
    let role_id = raw
        .data(&format!("auth/{approle}/role/op/role-id"))
        .await
        .unwrap()["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = raw
        .write(&format!("auth/{approle}/role/op/secret-id"), json!({}))
        .await
        .unwrap()["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mount_name = approle.clone();
    let creds = move || Credentials::AppRole {
        mount: mount_name.clone(),
        role_id: role_id.clone(),
        secret_id: SecretString::new(secret_id.clone()),
    };
    (approle, policy, creds)
}

async fn run(
    v: &VaultSession,
    obj: &DynamicCredential,
    store: &MemorySecretStore,
    memory: &LeaseMemory,
    now: DateTime<Utc>,
) -> dynamic::DynamicOutcome {
    dynamic::reconcile(v, obj, store, &RecordingRestarter::default(), memory, now)
        .await
        .unwrap_or_else(|e| panic!("reconcile at {now}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_credentials_log_in_for_three_minutes_across_renewals_and_reissues() {
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "20s", "60s").await;
    let cache = SessionCache::new();
    let e = env();
    let v = cache
        .get(
            ConnectionConfig::new(e.vault_addr.clone()),
            Credentials::Token(SecretString::new(e.vault_token.clone())),
        )
        .await
        .unwrap();
    let obj = dc(
        "orders-db",
        json!({"path": format!("{mount}/creds/app"),
        "secret": {"data": {"username": "{{ username }}", "password": "{{ password }}",
                            "url": "postgresql://{{ username | urlquery }}:{{ password | urlquery }}@db/app"}}}),
    );
    let store = Arc::new(MemorySecretStore::new());
    let memory = LeaseMemory::new();
    let run_for = Duration::from_secs(180);

    // The first credential exists before the checker starts.
    let first = run(&v, &obj, &store, &memory, Utc::now()).await;
    assert_eq!(first.taken, Taken::Issued(IssueReason::Initial));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let checker = {
        let (store, stop, ok, failed) = (store.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut users = BTreeSet::new();
            let mut failures = vec![];
            while !stop.load(Ordering::Relaxed) {
                let t0 = tokio::time::Instant::now();
                let (u, pw) = (
                    value(&store, "orders-db", "username"),
                    value(&store, "orders-db", "password"),
                );
                match pg_login(&u, &pw).await {
                    Ok(who) if who == u => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{} {u}: {other:?}", Utc::now()));
                    }
                }
                users.insert(u);
                tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
            }
            (users, failures)
        })
    };

    let started = tokio::time::Instant::now();
    let (mut renewals, mut reissues, mut revoked, mut reconciles) = (0u32, 0u32, 0u32, 0u32);
    let mut max_leases = 0usize;
    while started.elapsed() < run_for {
        let out = run(&v, &obj, &store, &memory, Utc::now()).await;
        reconciles += 1;
        renewals += out.renewed;
        revoked += out.revoked;
        if matches!(out.taken, Taken::Issued(_) | Taken::RenewedThenIssued(_)) {
            reissues += 1;
            assert!(
                matches!(
                    out.taken,
                    Taken::Issued(IssueReason::MaxTtlNear)
                        | Taken::RenewedThenIssued(IssueReason::MaxTtlNear)
                ),
                "only the maximum TTL may cause a re-issue here: {:?}",
                out.taken
            );
        }
        max_leases = max_leases.max(leases(&raw, &format!("{mount}/creds/app")).await.len());
        let wait = out.requeue_after.expect("a lease always has a next step");
        let left = run_for.saturating_sub(started.elapsed());
        tokio::time::sleep(wait.min(left)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (users, failures) = checker.await.unwrap();
    let status = {
        let out = run(&v, &obj, &store, &memory, Utc::now()).await;
        let mut s = DynamicCredentialStatus::default();
        out.record(&mut s, Some(1), Utc::now());
        s
    };

    // Deletion: everything this credential ever held is revoked, the roles dropped.
    let cleaned = dynamic::cleanup(&v, &obj, &*store, &memory).await.unwrap();
    let left = leases(&raw, &format!("{mount}/creds/app")).await;
    let mut roles_left = vec![];
    for u in &users {
        if pg_role_exists(u).await {
            roles_left.push(u.clone());
        }
    }
    eprintln!(
        "3-minute run: {} logins ok, {} failed, {reconciles} reconciles, {renewals} renewals, {reissues} re-issues, {revoked} revoked during the run, {} revoked at cleanup, {} distinct credentials, at most {max_leases} live leases, {} leases and {} roles left after cleanup; status renewals={} reissues={}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        cleaned.revoked,
        users.len(),
        left.len(),
        roles_left.len(),
        status.renewals,
        status.reissues,
    );
    assert!(failures.is_empty(), "failed logins: {failures:#?}");
    assert!(
        ok.load(Ordering::Relaxed) >= 150,
        "the checker ran about once a second"
    );
    assert!(
        reissues >= 2,
        "at least two re-issues in three minutes (got {reissues})"
    );
    assert!(renewals >= 4, "renewals between re-issues (got {renewals})");
    assert_eq!(users.len() as u32, reissues + 1, "one credential per issue");
    assert!(
        max_leases <= 2,
        "never more than the current and one superseded lease (saw {max_leases})"
    );
    assert_eq!(status.reissues as u32, reissues);
    assert!(left.is_empty(), "leases left after cleanup: {left:?}");
    assert!(
        roles_left.is_empty(),
        "PostgreSQL roles left after cleanup: {roles_left:?}"
    );
    assert!(
        secret(&store, "orders-db").is_none(),
        "the Secret is removed with its credential"
    );
    raw.unmount(&mount).await;
}

#[tokio::test]
async fn a_restarted_operator_resumes_the_lease_instead_of_issuing() {
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "60s", "10m").await;
    let e = env();
    let obj = dc("restart-db", json!({"path": format!("{mount}/creds/app")}));
    let store = MemorySecretStore::new();
    let t0 = Utc::now();
    let user = {
        let cache = SessionCache::new();
        let v = cache
            .get(
                ConnectionConfig::new(e.vault_addr.clone()),
                Credentials::Token(SecretString::new(e.vault_token.clone())),
            )
            .await
            .unwrap();
        let out = run(&v, &obj, &store, &LeaseMemory::new(), t0).await;
        assert_eq!(out.taken, Taken::Issued(IssueReason::Initial));
        value(&store, "restart-db", "username")
    };
    // A new process: new session cache, new memory; only the Secret survives.
    let cache = SessionCache::new();
    let v = cache
        .get(
            ConnectionConfig::new(e.vault_addr.clone()),
            Credentials::Token(SecretString::new(e.vault_token.clone())),
        )
        .await
        .unwrap();
    let memory = LeaseMemory::new();
    let writes = store.writes();
    let out = run(&v, &obj, &store, &memory, t0 + secs(5)).await;
    assert_eq!(out.taken, Taken::Unchanged, "no re-issue on restart");
    assert_eq!(out.source, dynamic::StateSource::Secret);
    assert_eq!(store.writes(), writes);
    // Later it renews the same lease.
    let out = run(&v, &obj, &store, &memory, t0 + secs(50)).await;
    assert_eq!(out.taken, Taken::Renewed);
    assert_eq!(value(&store, "restart-db", "username"), user);
    assert_eq!(
        leases(&raw, &format!("{mount}/creds/app")).await.len(),
        1,
        "exactly one live lease"
    );
    pg_login(&user, &value(&store, "restart-db", "password"))
        .await
        .expect("the resumed credential works");
    // A second restart right after the renewal: the renewal was persisted, nothing is due.
    let out = run(&v, &obj, &store, &LeaseMemory::new(), t0 + secs(51)).await;
    assert_eq!(out.taken, Taken::Unchanged);
    assert_eq!(out.state.unwrap().renewals, 1);
    raw.unmount(&mount).await;
}

fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn first_pem(text: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let i = text.find(end).expect("a PEM certificate") + end.len();
    format!("{}\n", &text[..i])
}

#[tokio::test]
async fn pki_certificate_is_a_tls_secret_chained_to_the_mount_ca_and_reissued_before_expiry() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = format!("{p}-pki");
    raw.write(
        &format!("sys/mounts/{mount}"),
        json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}}),
    )
    .await;
    raw.write(
        &format!("{mount}/root/generate/internal"),
        json!({"common_name": format!("{p} root"), "ttl": "8760h"}),
    )
    .await;
    raw.write(
        &format!("{mount}/roles/web"),
        json!({"allowed_domains": "example.com", "allow_subdomains": true, "max_ttl": "1h"}),
    )
    .await;
    let ca = raw.data(&format!("{mount}/cert/ca")).await.unwrap()["certificate"]
        .as_str()
        .unwrap()
        .to_string();
    let obj = dc(
        "web-tls",
        json!({"path": format!("{mount}/issue/web"), "gracePeriod": "2s",
        "parameters": {"common_name": "api.example.com", "alt_names": "www.example.com", "ttl": "40s"},
        "secret": {"type": "kubernetes.io/tls"}}),
    );
    let store = MemorySecretStore::new();
    let memory = LeaseMemory::new();
    let t0 = Utc::now();

    let out = run(&v, &obj, &store, &memory, t0).await;
    assert_eq!(out.taken, Taken::Issued(IssueReason::Initial));
    let s = secret(&store, "web-tls").unwrap();
    assert_eq!(s.type_, "kubernetes.io/tls");
    assert_eq!(
        s.data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "tls.crt", "tls.key"]
    );
    let dir = tempfile_dir(&p);
    let crt = value(&store, "web-tls", "tls.crt");
    std::fs::write(dir.join("ca.pem"), &ca).unwrap();
    std::fs::write(dir.join("leaf.pem"), first_pem(&crt)).unwrap();
    std::fs::write(dir.join("key.pem"), value(&store, "web-tls", "tls.key")).unwrap();
    let ca_path = dir.join("ca.pem").display().to_string();
    let leaf = dir.join("leaf.pem").display().to_string();
    assert!(openssl(&["verify", "-CAfile", &ca_path, &leaf]).contains(": OK"));
    assert_eq!(value(&store, "web-tls", "ca.crt").trim(), ca.trim());
    let cert_key = openssl(&["x509", "-in", &leaf, "-noout", "-pubkey"]);
    let key_pub = openssl(&[
        "pkey",
        "-in",
        &dir.join("key.pem").display().to_string(),
        "-pubout",
    ]);
    assert_eq!(cert_key, key_pub, "tls.key belongs to tls.crt");
    assert!(
        openssl(&["x509", "-in", &leaf, "-noout", "-ext", "subjectAltName"])
            .contains("www.example.com")
    );

    let st = out.state.clone().unwrap();
    let lifetime = (st.expires_at.unwrap() - t0).num_seconds();
    assert!(
        (35..=41).contains(&lifetime),
        "certificate lifetime {lifetime}s"
    );
    let reissue_at = out.schedule.reissue_at.unwrap();
    assert!(
        reissue_at < st.expires_at.unwrap() - secs(5),
        "re-issued well before expiry"
    );
    assert!(
        out.schedule.renew_at.is_none(),
        "certificates are not renewed"
    );
    let serial_of = |o: &dynamic::DynamicOutcome| match &o.state.as_ref().unwrap().lease {
        certus_core::lease::LeaseRef::Certificate { serial, .. } => serial.clone(),
        other => panic!("expected a certificate, got {}", other.kind()),
    };
    let first_serial = serial_of(&out);

    // Just before the planned re-issue nothing happens; at it, a new certificate.
    let quiet = run(&v, &obj, &store, &memory, reissue_at - secs(1)).await;
    assert_eq!(quiet.taken, Taken::Unchanged);
    let again = run(&v, &obj, &store, &memory, reissue_at).await;
    assert_eq!(again.taken, Taken::Issued(IssueReason::MaxTtlNear));
    assert_ne!(serial_of(&again), first_serial);
    assert_eq!(again.pending_revocations, 1);
    let revoked_before = raw
        .data(&format!("{mount}/cert/{first_serial}"))
        .await
        .unwrap()["revocation_time"]
        .as_i64()
        .unwrap_or(0);
    assert_eq!(
        revoked_before, 0,
        "the old certificate stays valid during the grace period"
    );
    // After the grace period the superseded serial is revoked.
    let later = run(&v, &obj, &store, &memory, reissue_at + secs(3)).await;
    assert_eq!(
        (later.taken, later.revoked, later.pending_revocations),
        (Taken::Unchanged, 1, 0)
    );
    let rev = raw
        .data(&format!("{mount}/cert/{first_serial}"))
        .await
        .unwrap();
    assert!(
        rev["revocation_time"].as_i64().unwrap_or(0) > 0,
        "old serial revoked: {rev}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    raw.unmount(&mount).await;
}

fn tempfile_dir(p: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("certus-dyn-{p}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn token_credential_has_policies_and_ttl_is_renewed_and_revoked_on_cleanup() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let policy = format!("{p}-agent");
    raw.write(
        &format!("sys/policies/acl/{policy}"),
        json!({"policy": "path \"secret/data/agents/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    let obj = dc(
        "agent-token",
        json!({"path": "auth/token/create",
        "parameters": {"policies": [policy], "ttl": "60s", "display_name": "agent", "no_default_policy": true}}),
    );
    let store = MemorySecretStore::new();
    let memory = LeaseMemory::new();
    let t0 = Utc::now();
    let out = run(&v, &obj, &store, &memory, t0).await;
    assert_eq!(out.taken, Taken::Issued(IssueReason::Initial));
    let mut status = DynamicCredentialStatus::default();
    out.record(&mut status, Some(1), t0);
    assert_eq!(status.lease_kind, Some(certus_api::LeaseKind::Token));
    assert_eq!(status.lease_duration_seconds, Some(60));
    let token = value(&store, "agent-token", "token");
    let accessor = value(&store, "agent-token", "accessor");
    assert_eq!(value(&store, "agent-token", "ttl"), "60");
    assert!(
        !serde_json::to_string(&status).unwrap().contains(&accessor),
        "status never shows the accessor"
    );
    let info = raw
        .write("auth/token/lookup", json!({"token": token}))
        .await
        .unwrap()["data"]
        .clone();
    assert_eq!(info["policies"], json!([policy]));
    assert_eq!(info["creation_ttl"], 60);
    assert!(info["ttl"].as_i64().unwrap() > 50);

    // Renewed at about two thirds (by accessor; the token itself is not needed).
    let renew_at = out.schedule.renew_at.unwrap();
    assert!(
        renew_at > t0 + secs(30) && renew_at < t0 + secs(50),
        "{renew_at}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let renewed = run(&v, &obj, &store, &memory, renew_at).await;
    assert_eq!(renewed.taken, Taken::Renewed);
    let info = raw
        .write("auth/token/lookup", json!({"token": token}))
        .await
        .unwrap()["data"]
        .clone();
    assert!(
        info["last_renewal_time"].as_i64().unwrap_or(0) > 0,
        "renewed: {info}"
    );
    assert_eq!(
        value(&store, "agent-token", "token"),
        token,
        "a renewal keeps the token"
    );

    let cleaned = dynamic::cleanup(&v, &obj, &store, &memory).await.unwrap();
    assert_eq!(cleaned.revoked, 1);
    let err = raw
        .0
        .write("auth/token/lookup", &json!({"token": token}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.class,
            ErrorClass::PermissionDenied | ErrorClass::InvalidRequest
        ),
        "{err}"
    );
    raw.0
        .delete(&format!("sys/policies/acl/{policy}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn spec_change_deleted_and_tampered_secrets_issue_anew_and_revoke_the_old_after_grace() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "5m", "1h").await;
    let prefix_path = format!("{mount}/creds/app");
    let mut obj = dc(
        "shop-db",
        json!({"path": prefix_path, "gracePeriod": "10s",
        "rolloutRestartTargets": [{"kind": "Deployment", "name": "shop"}]}),
    );
    let store = MemorySecretStore::new();
    let memory = LeaseMemory::new();
    let restarter = RecordingRestarter::default();
    let t0 = Utc::now();
    let step = |obj: DynamicCredential, at: DateTime<Utc>| {
        let (v, store, memory, restarter) = (&v, &store, &memory, &restarter);
        async move {
            dynamic::reconcile(v, &obj, store, restarter, memory, at)
                .await
                .unwrap()
        }
    };

    let first = step(obj.clone(), t0).await;
    assert_eq!(first.taken, Taken::Issued(IssueReason::Initial));
    assert!(
        restarter.restarts.lock().unwrap().is_empty(),
        "a first issue restarts nothing"
    );
    let u1 = value(&store, "shop-db", "username");

    // 1. Spec change: a new credential now, the old one revoked after the grace period.
    obj.spec
        .secret
        .data
        .insert("DB_USER".into(), "{{ username }}".into());
    obj.spec
        .secret
        .data
        .insert("DB_PASSWORD".into(), "{{ password }}".into());
    let changed = step(obj.clone(), t0 + secs(1)).await;
    assert_eq!(changed.taken, Taken::Issued(IssueReason::SpecChanged));
    let u2 = value(&store, "shop-db", "DB_USER");
    assert_ne!(u1, u2);
    assert_eq!(
        restarter.restarts.lock().unwrap().len(),
        1,
        "the new credential rolls the Deployment"
    );
    assert_eq!(
        leases(&raw, &prefix_path).await.len(),
        2,
        "old lease alive during grace"
    );
    assert!(pg_role_exists(&u1).await);
    let quiet = step(obj.clone(), t0 + secs(5)).await;
    assert_eq!((quiet.taken, quiet.revoked), (Taken::Unchanged, 0));
    let after = step(obj.clone(), t0 + secs(12)).await;
    assert_eq!(
        (after.taken, after.revoked, after.pending_revocations),
        (Taken::Unchanged, 1, 0)
    );
    assert_eq!(leases(&raw, &prefix_path).await.len(), 1);
    assert!(
        !pg_role_exists(&u1).await,
        "the superseded database role is dropped"
    );

    // 2. The Secret is deleted: restored from a fresh issue, the old lease revoked after grace.
    store.delete(NS, "shop-db").await.unwrap();
    let restored = step(obj.clone(), t0 + secs(13)).await;
    assert_eq!(
        restored.taken,
        Taken::Issued(IssueReason::SecretMissingOrTampered)
    );
    assert_eq!(restored.source, dynamic::StateSource::Memory);
    let u3 = value(&store, "shop-db", "DB_USER");
    assert_ne!(u3, u2);
    let after = step(obj.clone(), t0 + secs(24)).await;
    assert_eq!(after.revoked, 1);
    assert!(!pg_role_exists(&u2).await);

    // 3. The Secret is edited: re-issued, the old lease revoked after grace.
    store.with(|m| {
        let s = m.get_mut(&(NS.to_string(), "shop-db".to_string())).unwrap();
        s.data.insert("DB_PASSWORD".into(), b"guessed".to_vec());
    });
    let fixed = step(obj.clone(), t0 + secs(25)).await;
    assert_eq!(
        fixed.taken,
        Taken::Issued(IssueReason::SecretMissingOrTampered)
    );
    let u4 = value(&store, "shop-db", "DB_USER");
    pg_login(&u4, &value(&store, "shop-db", "DB_PASSWORD"))
        .await
        .expect("the fresh credential works");
    let after = step(obj.clone(), t0 + secs(36)).await;
    assert_eq!(after.revoked, 1);
    assert!(!pg_role_exists(&u3).await);
    assert_eq!(leases(&raw, &prefix_path).await.len(), 1);
    assert_eq!(after.state.as_ref().unwrap().reissues, 3);

    // 4. rotate-now forces a new credential once per value.
    obj.metadata.annotations = Some(
        [(
            certus_api::annotations::ROTATE_NOW.to_string(),
            "1".to_string(),
        )]
        .into(),
    );
    assert_eq!(
        step(obj.clone(), t0 + secs(37)).await.taken,
        Taken::Issued(IssueReason::Forced)
    );
    assert_eq!(
        step(obj.clone(), t0 + secs(38)).await.taken,
        Taken::Unchanged
    );

    dynamic::cleanup(&v, &obj, &store, &memory).await.unwrap();
    assert!(leases(&raw, &prefix_path).await.is_empty());
    raw.unmount(&mount).await;
}

#[tokio::test]
async fn vault_unavailable_leaves_the_secret_and_resumes_without_reissue() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "60s", "10m").await;
    let obj = dc("dead-db", json!({"path": format!("{mount}/creds/app")}));
    let store = MemorySecretStore::new();
    let memory = LeaseMemory::new();
    let t0 = Utc::now();
    let first = run(&v, &obj, &store, &memory, t0).await;
    let mut status = DynamicCredentialStatus::default();
    first.record(&mut status, Some(1), t0);
    let before = secret(&store, "dead-db").unwrap();
    let writes = store.writes();

    let dead = VaultSession::connect(
        ConnectionConfig::new("http://127.0.0.1:1"),
        Credentials::Token(SecretString::new(env().vault_token)),
    )
    .await
    .unwrap();
    // Renewal is due, but Vault cannot be reached.
    let err = dynamic::reconcile(
        &dead,
        &obj,
        &store,
        &RecordingRestarter::default(),
        &memory,
        t0 + secs(50),
    )
    .await
    .unwrap_err();
    match &err {
        ReconcileError::Vault(e) => assert_eq!(e.class, ErrorClass::Transient, "{e}"),
        other => panic!("expected a Vault error, got {other:?}"),
    }
    assert!(err.retryable());
    assert_eq!(store.writes(), writes, "the Secret is left untouched");
    assert!(secret(&store, "dead-db").unwrap() == before);
    dynamic::record_error(&mut status, &err, Some(1), t0 + secs(50));
    let ready = find_condition(&status.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status, ready.reason.as_str()),
        (ConditionStatus::True, dynamic::RENEWAL_DELAYED)
    );
    assert_eq!(
        find_condition(&status.conditions, "VaultAvailable")
            .unwrap()
            .status,
        ConditionStatus::False
    );

    // Vault is back: the same lease is renewed, nothing is issued.
    let back = run(&v, &obj, &store, &memory, t0 + secs(52)).await;
    assert_eq!(back.taken, Taken::Renewed);
    assert_eq!(leases(&raw, &format!("{mount}/creds/app")).await.len(), 1);
    dynamic::cleanup(&v, &obj, &store, &memory).await.unwrap();
    raw.unmount(&mount).await;
}

#[tokio::test]
async fn bad_template_is_invalid_before_any_vault_request() {
    let v = session().await;
    let obj = dc(
        "bad",
        json!({"path": "database/creds/app", "secret": {"data": {"url": "{{ username | upper }}"}}}),
    );
    let store = MemorySecretStore::new();
    let before = stats(&v);
    let err = dynamic::reconcile(
        &v,
        &obj,
        &store,
        &RecordingRestarter::default(),
        &LeaseMemory::new(),
        Utc::now(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ReconcileError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string().contains("spec.secret.data[url]") && err.to_string().contains("upper"),
        "{err}"
    );
    assert!(!err.retryable());
    assert_eq!(
        stats(&v).since(&before),
        Default::default(),
        "no Vault request at all"
    );
    assert_eq!(store.writes(), 0);
}

#[tokio::test]
async fn unknown_template_field_revokes_the_just_issued_lease() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "60s", "10m").await;
    let obj = dc(
        "typo",
        json!({"path": format!("{mount}/creds/app"), "secret": {"data": {"user": "{{ usrname }}"}}}),
    );
    let store = MemorySecretStore::new();
    let err = dynamic::reconcile(
        &v,
        &obj,
        &store,
        &RecordingRestarter::default(),
        &LeaseMemory::new(),
        Utc::now(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown field \"usrname\""),
        "{err}"
    );
    assert!(
        leases(&raw, &format!("{mount}/creds/app")).await.is_empty(),
        "no orphaned lease"
    );
    assert_eq!(store.writes(), 0);
    raw.unmount(&mount).await;
}

/// A store whose writes fail: the just-issued credential must be revoked at once.
struct FailingStore;

impl certus_reconcile::sink::SecretStore for FailingStore {
    async fn get(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<certus_reconcile::sink::LiveSecret>, ReconcileError> {
        Ok(None)
    }
    async fn apply(&self, _: &certus_reconcile::sink::SecretDraft) -> Result<(), ReconcileError> {
        Err(ReconcileError::Kubernetes(
            "the API server refused the Secret".into(),
        ))
    }
    async fn delete(&self, _: &str, _: &str) -> Result<(), ReconcileError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_secret_write_revokes_the_new_lease() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "60s", "10m").await;
    let obj = dc("nowrite", json!({"path": format!("{mount}/creds/app")}));
    let err = dynamic::reconcile(
        &v,
        &obj,
        &FailingStore,
        &RecordingRestarter::default(),
        &LeaseMemory::new(),
        Utc::now(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ReconcileError::Kubernetes(_)), "{err:?}");
    assert!(
        leases(&raw, &format!("{mount}/creds/app")).await.is_empty(),
        "no orphaned lease"
    );
    raw.unmount(&mount).await;
}

#[tokio::test]
async fn lease_state_lives_in_the_secret_annotations_and_status_shows_only_a_hash() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "60s", "10m").await;
    let obj = dc(
        "ann",
        json!({"path": format!("{mount}/creds/app"), "secret": {"labels": {"team": "a"}}}),
    );
    let store = MemorySecretStore::new();
    let out = run(&v, &obj, &store, &LeaseMemory::new(), Utc::now()).await;
    let s = secret(&store, "ann").unwrap();
    let state: Value = serde_json::from_str(&s.annotations[LEASE_STATE_ANNOTATION]).unwrap();
    let lease_id = state["current"]["lease"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(lease_id.starts_with(&format!("{mount}/creds/app/")));
    assert_eq!(s.labels["team"], "a");
    assert_eq!(
        s.labels["app.kubernetes.io/managed-by"],
        "certus-vault-operator"
    );
    let mut status = DynamicCredentialStatus::default();
    out.record(&mut status, Some(1), Utc::now());
    let text = serde_json::to_string(&status).unwrap();
    assert!(
        !text.contains(&lease_id) && !text.contains(lease_id.rsplit('/').next().unwrap()),
        "{text}"
    );
    assert_eq!(status.lease_id_hash.as_deref().map(str::len), Some(16));
    assert!(status.next_renewal_at.is_some() && status.expires_at.is_some());
    raw.unmount(&mount).await;
}

/// A token with the `default` policy created by root.
async fn child_token(raw: &Raw, body: Value) -> (String, String) {
    let auth = raw.write("auth/token/create", body).await.unwrap()["auth"].clone();
    (
        auth["client_token"].as_str().unwrap().to_string(),
        auth["accessor"].as_str().unwrap().to_string(),
    )
}

async fn accessor_ttl(raw: &Raw, accessor: &str) -> Option<i64> {
    raw.0
        .write("auth/token/lookup-accessor", &json!({"accessor": accessor}))
        .await
        .ok()
        .flatten()
        .and_then(|v| v["data"]["ttl"].as_i64())
}

#[tokio::test]
async fn session_renewal_task_keeps_an_idle_token_alive_and_reports_when_it_is_capped() {
    let raw = Raw::new().await;
    let e = env();
    let (token, accessor) = child_token(&raw, json!({"policies": ["default"], "ttl": "9s"})).await;
    let (capped_token, _) = child_token(
        &raw,
        json!({"policies": ["default"], "ttl": "9s", "explicit_max_ttl": "12s"}),
    )
    .await;
    let cache = Arc::new(SessionCache::new());
    let s = cache
        .get(
            ConnectionConfig::new(e.vault_addr.clone()),
            Credentials::Token(SecretString::new(token)),
        )
        .await
        .unwrap();
    let c = cache
        .get(
            ConnectionConfig::new(e.vault_addr.clone()),
            Credentials::Token(SecretString::new(capped_token)),
        )
        .await
        .unwrap();
    let life = s.token_lifetime().await.unwrap();
    assert_eq!(life.accessor, accessor);
    assert!(life.expires_in.unwrap() <= Duration::from_secs(9));
    assert!(life.extendable);
    assert!(
        c.token_lifetime().await.unwrap().extendable,
        "not capped yet"
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .run_renewal(async {
                    let _ = rx.await;
                })
                .await
        })
    };
    // After the first background renewal (about 6s), the token with a 12s maximum was
    // granted less than its TTL: its expiry is final, and leases must not outlive it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let capped = c
        .token_lifetime()
        .await
        .expect("the capped token is still valid");
    assert!(
        !capped.extendable,
        "capped token reported as not extendable: {capped:?}"
    );
    assert!(capped.expires_in.unwrap() <= Duration::from_secs(5));
    // Idle for longer than the TTL: the task keeps the other token alive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        accessor_ttl(&raw, &accessor).await.is_some_and(|t| t > 0),
        "the idle session's token is alive"
    );
    assert!(
        s.token_lifetime().await.unwrap().extendable,
        "an uncapped token stays extendable"
    );
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run_renewal stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_login_token_that_issued_leases_is_not_revoked_on_shutdown() {
    let raw = Raw::new().await;
    let p = prefix();
    let e = env();
    let mount = db_mount(&raw, &p, "60s", "10m").await;
    let (approle, policy, creds) =
        operator_approle(&raw, &p, &mount, json!({"token_ttl": "10m"})).await;

    // A session that issued nothing revokes its token on shutdown, as before.
    let idle = VaultSession::connect(ConnectionConfig::new(e.vault_addr.clone()), creds())
        .await
        .unwrap();
    let idle_accessor = idle.token_lifetime().await.unwrap().accessor;
    idle.revoke().await.unwrap();
    assert_eq!(
        accessor_ttl(&raw, &idle_accessor).await,
        None,
        "an idle login token is revoked"
    );

    // A session whose token parents a lease keeps it: revoking it would revoke the lease.
    let cache = SessionCache::new();
    let v = cache
        .get(ConnectionConfig::new(e.vault_addr.clone()), creds())
        .await
        .unwrap();
    let obj = dc("approle-db", json!({"path": format!("{mount}/creds/app")}));
    let store = MemorySecretStore::new();
    let out = run(&v, &obj, &store, &LeaseMemory::new(), Utc::now()).await;
    let token = out
        .state
        .as_ref()
        .unwrap()
        .token
        .clone()
        .expect("the lease records its issuing token");
    assert!(token.expires_at.is_some());
    let accessor = v.token_lifetime().await.unwrap().accessor;
    cache.revoke_all().await;
    assert!(
        accessor_ttl(&raw, &accessor).await.is_some(),
        "the issuing token survives shutdown"
    );
    assert_eq!(
        leases(&raw, &format!("{mount}/creds/app")).await.len(),
        1,
        "and so does the lease"
    );
    let user = value(&store, "approle-db", "username");
    pg_login(&user, &value(&store, "approle-db", "password"))
        .await
        .expect("the credential still works after shutdown");

    raw.unmount(&mount).await;
    let _ = raw.0.delete(&format!("sys/auth/{approle}")).await;
    let _ = raw.0.delete(&format!("sys/policies/acl/{policy}")).await;
}

#[tokio::test]
async fn a_secret_deleted_while_the_operator_was_down_is_reissued_and_the_old_lease_found_by_its_status_hash(
) {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "5m", "1h").await;
    let prefix_path = format!("{mount}/creds/app");
    let mut obj = dc("lost-db", json!({"path": prefix_path, "gracePeriod": "5s"}));
    let store = MemorySecretStore::new();
    let t0 = Utc::now();
    let first = run(&v, &obj, &store, &LeaseMemory::new(), t0).await;
    let mut status = DynamicCredentialStatus::default();
    first.record(&mut status, Some(1), t0);
    obj.status = Some(status);
    let old_user = value(&store, "lost-db", "username");

    // The operator is down; someone deletes the Secret; a new operator starts.
    store.delete(NS, "lost-db").await.unwrap();
    let memory = LeaseMemory::new();
    let out = run(&v, &obj, &store, &memory, t0 + secs(2)).await;
    assert_eq!(out.taken, Taken::Issued(IssueReason::Initial));
    assert_eq!(out.source, dynamic::StateSource::None);
    assert!(
        out.events
            .iter()
            .any(|e| e.reason == "PreviousCredentialFound"),
        "{:?}",
        out.events
    );
    assert_eq!(out.pending_revocations, 1);
    assert_eq!(leases(&raw, &prefix_path).await.len(), 2);
    let after = run(&v, &obj, &store, &memory, t0 + secs(8)).await;
    assert_eq!(after.revoked, 1);
    assert_eq!(
        leases(&raw, &prefix_path).await.len(),
        1,
        "the old lease is not orphaned"
    );
    assert!(!pg_role_exists(&old_user).await);

    // Deleted while its Secret is gone and nothing is remembered: found by hash again.
    let mut status = DynamicCredentialStatus::default();
    after.record(&mut status, Some(1), t0 + secs(8));
    obj.status = Some(status);
    store.delete(NS, "lost-db").await.unwrap();
    let c = dynamic::cleanup(&v, &obj, &store, &LeaseMemory::new())
        .await
        .unwrap();
    assert_eq!((c.revoked, c.found_state), (1, true));
    assert!(leases(&raw, &prefix_path).await.is_empty());
    raw.unmount(&mount).await;
}

/// A revocation OpenBao refuses (here: the role's revocation statement fails, so the
/// lease and the PostgreSQL user survive) is an error, not "already revoked": cleanup
/// reports it, keeps the Secret that holds the lease state, and a retry after the fault
/// is fixed revokes the credential. (Before, the 400 was taken as success and the lease
/// and user were orphaned while the CLI printed "revoked".)
#[tokio::test]
async fn a_failed_revocation_is_an_error_and_the_retry_revokes_the_credential() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = db_mount(&raw, &p, "5m", "1h").await;
    let role = |revocation: &str| {
        json!({"db_name": "pg",
               "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
               "revocation_statements": [revocation],
               "default_ttl": "5m", "max_ttl": "1h"})
    };
    raw.write(
        &format!("{mount}/roles/app"),
        role("SELECT certus_no_such_function('{{name}}');"),
    )
    .await;
    let path = format!("{mount}/creds/app");
    let obj = dc("unrevokable", json!({"path": path}));
    let store = MemorySecretStore::new();
    let memory = LeaseMemory::new();
    run(&v, &obj, &store, &memory, Utc::now()).await;
    let user = value(&store, "unrevokable", "username");
    let password = value(&store, "unrevokable", "password");
    assert_eq!(leases(&raw, &path).await.len(), 1);

    let err = dynamic::cleanup(&v, &obj, &store, &memory)
        .await
        .expect_err("a refused revocation must not count as revoked");
    let text = err.to_string();
    assert!(text.contains("sys/leases/revoke"), "{text}");
    assert!(!text.contains(&password), "no secret value in the error");
    assert!(err.retryable(), "{err:?}");
    assert!(
        secret(&store, "unrevokable").is_some(),
        "the Secret (the lease state) is kept for the retry"
    );
    assert_eq!(leases(&raw, &path).await.len(), 1, "the lease still exists");
    assert!(pg_role_exists(&user).await);

    // The fault is fixed; the finalizer's retry revokes it.
    raw.write(
        &format!("{mount}/roles/app"),
        role("DROP ROLE IF EXISTS \"{{name}}\";"),
    )
    .await;
    let c = dynamic::cleanup(&v, &obj, &store, &memory).await.unwrap();
    assert_eq!((c.revoked, c.found_state), (1, true));
    assert!(secret(&store, "unrevokable").is_none());
    assert!(leases(&raw, &path).await.is_empty());
    assert!(!pg_role_exists(&user).await);
    raw.unmount(&mount).await;
}

/// The restart gap: leases die with the login token that issued them. Without a token
/// store, an operator restarted with AppRole login holds a new token, cannot extend the
/// old one, and must re-issue every credential before the old token's deadline (and
/// restart their workloads). With the store the new process adopts the saved token:
/// no login, the lease keeps being renewed, nothing is re-issued.
#[tokio::test]
async fn after_a_restart_the_saved_login_token_is_adopted_and_nothing_is_reissued() {
    use certus_vault_client::MemoryTokenStore;
    let raw = Raw::new().await;
    let p = prefix();
    let e = env();
    // The lease (10m) outlives the login token's TTL (60s): the token sets the deadline.
    let mount = db_mount(&raw, &p, "10m", "1h").await;
    let (approle, policy, creds) = operator_approle(
        &raw,
        &p,
        &mount,
        json!({"token_ttl": "60s", "token_max_ttl": "1h"}),
    )
    .await;
    let cfg = || ConnectionConfig::new(e.vault_addr.clone());
    let tokens = Arc::new(MemoryTokenStore::new());
    let obj = dc("restart-db", json!({"path": format!("{mount}/creds/app")}));
    let store = MemorySecretStore::new();
    let t0 = Utc::now();

    // Process 1 issues the credential and stops (its token is kept: it issued a lease).
    let first = SessionCache::with_token_store(tokens.clone());
    let v1 = first.get(cfg(), creds()).await.unwrap();
    let issued = run(&v1, &obj, &store, &LeaseMemory::new(), t0).await;
    assert_eq!(issued.taken, Taken::Issued(IssueReason::Initial));
    let user = value(&store, "restart-db", "username");
    first.revoke_all().await;

    // Process 2 (restart or new leader): same Secret, same token store, empty memory.
    let second = SessionCache::with_token_store(tokens.clone());
    let v2 = second.get(cfg(), creds()).await.unwrap();
    let resumed = run(&v2, &obj, &store, &LeaseMemory::new(), t0 + secs(5)).await;
    assert_eq!(resumed.taken, Taken::Unchanged, "{:?}", resumed.events);
    assert!(
        !resumed.schedule.token_bound,
        "the adopted token is extended, so it sets no deadline: {:?}",
        resumed.schedule
    );
    let st = second.stats().snapshot();
    assert_eq!((st.logins, st.adoptions), (0, 1), "{st:?}");
    assert_eq!(value(&store, "restart-db", "username"), user);
    assert_eq!(leases(&raw, &format!("{mount}/creds/app")).await.len(), 1);
    // It is the token that issued the lease, and it is renewed like any session token.
    assert_eq!(
        v2.token_lifetime().await.unwrap().accessor,
        v1.token_lifetime().await.unwrap().accessor
    );

    // The control: a process without the store logs in anew and, holding a token other
    // than the lease's parent, must re-issue before the old token dies.
    let third = SessionCache::new();
    let v3 = third.get(cfg(), creds()).await.unwrap();
    let forced = run(&v3, &obj, &store, &LeaseMemory::new(), t0 + secs(6)).await;
    assert_eq!(
        forced.taken,
        Taken::Issued(IssueReason::IssuingTokenExpiring),
        "{:?}",
        forced.events
    );
    assert_eq!(third.stats().snapshot().logins, 1);

    dynamic::cleanup(&v3, &obj, &store, &LeaseMemory::new())
        .await
        .unwrap();
    raw.unmount(&mount).await;
    let _ = raw.0.delete(&format!("sys/auth/{approle}")).await;
    let _ = raw.0.delete(&format!("sys/policies/acl/{policy}")).await;
}
