//! config/samples/certus/: the proposal's whole Vault setup, applied in shuffled orders
//! against a fresh OpenBao state, read back, used (database login), re-applied with zero
//! writes, and corrected after out-of-band edits of every kind.
//!
//! The samples use the proposal's fixed paths (certus, database, kubernetes, approle,
//! oidc) and policy names, so this file has one test, which first removes them from the
//! dev Vault.

use std::collections::BTreeMap;

use certus_core::{Action, ResourceId};
use certus_integration_tests::*;
use certus_reconcile::{apply_all, Applied, LastApplied, Mode, Resource};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

const MOUNTS: [&str; 2] = ["certus", "database"];
const AUTHS: [&str; 3] = ["kubernetes", "approle", "oidc"];
const POLICIES: [&str; 4] = [
    "certus-ask-policy",
    "certus-assurance-policy",
    "certus-agent-policy",
    "developer-policy",
];

async fn fresh(raw: &Raw) {
    for m in MOUNTS {
        raw.unmount(m).await;
    }
    for a in AUTHS {
        raw.disable_auth(a).await;
    }
    for p in POLICIES {
        raw.0.policy_delete(p).await.unwrap();
    }
}

fn shuffled(resources: &[Resource], seed: u64) -> Vec<Resource> {
    let mut v = resources.to_vec();
    v.shuffle(&mut StdRng::seed_from_u64(seed));
    v
}

fn state_of(results: &[Applied], state: &mut BTreeMap<ResourceId, LastApplied>) {
    for a in results {
        if let Ok(o) = &a.result {
            state.insert(a.id.clone(), o.last_applied());
        }
    }
}

fn all_ok(results: &[Applied]) {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|a| a.result.as_ref().err().map(|e| format!("{}: {e}", a.id)))
        .collect();
    assert!(failed.is_empty(), "not converged: {failed:#?}");
}

#[tokio::test]
async fn certus_samples_converge_in_any_order_and_match_the_proposal() {
    let v = session().await;
    let raw = Raw::new().await;
    let env = env();
    let (resources, resolver) = load_dir(&repo_root().join("config/samples/certus"));
    assert_eq!(
        resources.len(),
        15,
        "4 policies, 2 engines, 3 auth methods, 6 roles"
    );

    // Shuffled orders on a fresh Vault converge; roles wait for mounts and policies.
    let mut state = BTreeMap::new();
    for seed in [7, 42] {
        fresh(&raw).await;
        state.clear();
        let order = shuffled(&resources, seed);
        let results = apply_all(&v, &order, &resolver, &state, Mode::Apply).await;
        all_ok(&results);
        assert!(results.iter().all(|a| a.result.as_ref().unwrap().written()));
        state_of(&results, &mut state);
        let rounds = results.iter().map(|a| a.round).max().unwrap();
        assert!(rounds <= 3, "converged in {rounds} rounds");
    }

    // Read back: what the proposal's commands would have created.
    let kv = raw.mount("certus").await.unwrap();
    assert_eq!(
        (kv["type"].as_str(), kv["options"]["version"].as_str()),
        (Some("kv"), Some("2"))
    );
    let db = raw.data("database/config/certus-postgres").await.unwrap();
    assert_eq!(db["plugin_name"], "postgresql-database-plugin");
    assert_eq!(
        db["allowed_roles"],
        json!(["certus-ask", "certus-assurance"])
    );
    for (role, grant) in [
        ("certus-ask", "GRANT SELECT ON"),
        ("certus-assurance", "GRANT SELECT, INSERT, UPDATE ON"),
    ] {
        let r = raw.data(&format!("database/roles/{role}")).await.unwrap();
        assert_eq!(
            (r["default_ttl"].as_u64(), r["max_ttl"].as_u64()),
            (Some(3600), Some(86400))
        );
        assert!(r["creation_statements"][1]
            .as_str()
            .unwrap()
            .starts_with(grant));
    }
    assert_eq!(raw.auth("kubernetes").await.unwrap()["type"], "kubernetes");
    let ask = raw.data("auth/kubernetes/role/certus-ask").await.unwrap();
    assert_eq!(ask["token_ttl"], 3600);
    assert_eq!(ask["token_policies"], json!(["certus-ask-policy"]));
    assert_eq!(ask["bound_service_account_names"], json!(["certus-ask"]));
    assert_eq!(
        ask["bound_service_account_namespaces"],
        json!(["certus-tap"])
    );
    let agent = raw.data("auth/kubernetes/role/certus-agent").await.unwrap();
    assert_eq!(agent["token_ttl"], 900);
    assert_eq!(agent["token_policies"], json!(["certus-agent-policy"]));
    let svc = raw.data("auth/approle/role/certus-service").await.unwrap();
    assert_eq!(
        (
            svc["secret_id_ttl"].as_u64(),
            svc["token_ttl"].as_u64(),
            svc["token_max_ttl"].as_u64()
        ),
        (Some(86400), Some(3600), Some(14400))
    );
    assert_eq!(svc["token_policies"], json!(["certus-service-policy"]));
    let dev = raw.data("auth/oidc/role/developer").await.unwrap();
    assert_eq!(dev["user_claim"], "email");
    assert_eq!(dev["token_policies"], json!(["developer-policy"]));
    assert_eq!(
        raw.data("auth/oidc/config").await.unwrap()["default_role"],
        "developer"
    );
    for p in POLICIES {
        assert!(raw.0.policy_read(p).await.unwrap().is_some(), "{p}");
    }
    let ask_policy = raw
        .0
        .policy_read("certus-ask-policy")
        .await
        .unwrap()
        .unwrap();
    assert!(ask_policy.contains("path \"database/creds/certus-ask\""));

    // database/creds/certus-ask is a working PostgreSQL login (and certus-assurance too).
    for role in ["certus-ask", "certus-assurance"] {
        let c = raw
            .0
            .read(&format!("database/creds/{role}"))
            .await
            .unwrap()
            .unwrap();
        let (u, p) = (
            c["data"]["username"].as_str().unwrap(),
            c["data"]["password"].as_str().unwrap(),
        );
        assert_eq!(
            psql(u, p, "SELECT current_user").await.unwrap(),
            u,
            "{role} login"
        );
    }
    let _ = env;

    // A second apply (another order) writes nothing; a plan shows no change.
    let before = stats(&v);
    let results = apply_all(&v, &shuffled(&resources, 3), &resolver, &state, Mode::Apply).await;
    all_ok(&results);
    assert_eq!(
        stats(&v).since(&before).writes,
        0,
        "resync of unchanged resources"
    );
    let plan = apply_all(&v, &resources, &resolver, &state, Mode::Plan).await;
    all_ok(&plan);
    let changes: Vec<String> = plan
        .iter()
        .flat_map(|a| a.result.as_ref().unwrap().changes())
        .filter(|c| c.action != Action::NoChange)
        .map(|c| c.to_string())
        .collect();
    assert!(changes.is_empty(), "{changes:#?}");

    // Out-of-band edits of every kind are detected as drift and corrected.
    raw.write("sys/mounts/certus/tune", json!({"description": "edited"}))
        .await;
    raw.write(
        "database/config/certus-postgres",
        json!({"allowed_roles": ["*"], "verify_connection": false}),
    )
    .await;
    raw.write("database/roles/certus-ask", json!({"db_name": "certus-postgres", "creation_statements": ["SELECT 1;"], "default_ttl": "5m"})).await;
    raw.write(
        "auth/kubernetes/config",
        json!({"kubernetes_host": "https://evil:6443", "kubernetes_ca_cert": TEST_CA_PEM}),
    )
    .await;
    raw.write(
        "auth/kubernetes/role/certus-agent",
        json!({"token_ttl": "24h"}),
    )
    .await;
    raw.write(
        "auth/approle/role/certus-service",
        json!({"token_max_ttl": "768h"}),
    )
    .await;
    raw.write("auth/oidc/role/developer", json!({"user_claim": "sub"}))
        .await;
    raw.0
        .policy_write(
            "developer-policy",
            "path \"certus/data/prod/*\" { capabilities = [\"read\"] }",
        )
        .await
        .unwrap();
    let plan = apply_all(&v, &resources, &resolver, &state, Mode::Plan).await;
    all_ok(&plan);
    let drifted: Vec<String> = plan
        .iter()
        .flat_map(|a| a.result.as_ref().unwrap().changes())
        .filter(|c| c.drift)
        .map(|c| c.target.clone())
        .collect();
    for t in [
        "sys/mounts/certus/tune",
        "database/config/certus-postgres",
        "database/roles/certus-ask",
        "auth/kubernetes/config",
        "auth/kubernetes/role/certus-agent",
        "auth/approle/role/certus-service",
        "auth/oidc/role/developer",
        "sys/policies/acl/developer-policy",
    ] {
        assert!(
            drifted.iter().any(|d| d == t),
            "{t} not reported as drift: {drifted:?}"
        );
    }
    let results = apply_all(
        &v,
        &shuffled(&resources, 11),
        &resolver,
        &state,
        Mode::Apply,
    )
    .await;
    all_ok(&results);
    state_of(&results, &mut state);
    assert_eq!(
        raw.mount("certus").await.unwrap()["description"],
        "Certus static secrets (KV v2)"
    );
    assert_eq!(
        raw.data("auth/kubernetes/role/certus-agent").await.unwrap()["token_ttl"],
        900
    );
    assert_eq!(
        raw.data("database/roles/certus-ask").await.unwrap()["default_ttl"],
        3600
    );
    let before = stats(&v);
    let results = apply_all(&v, &resources, &resolver, &state, Mode::Apply).await;
    all_ok(&results);
    assert_eq!(stats(&v).since(&before).writes, 0);
    // The corrected database role still issues working logins.
    let c = raw
        .0
        .read("database/creds/certus-ask")
        .await
        .unwrap()
        .unwrap();
    let (u, p) = (
        c["data"]["username"].as_str().unwrap(),
        c["data"]["password"].as_str().unwrap(),
    );
    assert!(psql(u, p, "SELECT 1").await.is_ok());
}
