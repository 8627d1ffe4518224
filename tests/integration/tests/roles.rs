//! VaultRole against the real OpenBao (+ PostgreSQL for database roles).

use std::collections::BTreeMap;

use certus_api::{DeletionPolicy, SecretEngine, VaultRole};
use certus_core::Action;
use certus_integration_tests::*;
use certus_reconcile::{engine, role, LastApplied, Mode, ReconcileError};
use serde_json::{json, Value};

const NS: &str = "it";

fn vr(name: &str, spec: Value) -> VaultRole {
    in_ns(
        VaultRole::new(name, serde_json::from_value(spec).expect("spec")),
        NS,
    )
}

fn lookup<'a>(map: &'a BTreeMap<&'static str, String>) -> impl Fn(&str) -> Option<String> + 'a {
    move |n| map.get(n).cloned()
}

fn no_policies(_: &str) -> Option<String> {
    None
}

#[tokio::test]
async fn kubernetes_role_waits_for_mount_and_policy_then_drift_and_delete() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = format!("{p}-k8s");
    let policy = format!("{p}-agent-policy");
    let mut r = vr(
        "certus-agent",
        json!({"kubernetes": {"mount": mount, "boundServiceAccountNames": ["certus-agent"],
               "boundServiceAccountNamespaces": ["certus-tap"], "policyRefs": ["agent"],
               "tokenTTL": "15m", "audience": "vault"}}),
    );
    let mut last = LastApplied::default();

    // 1. The referenced VaultPolicy is unknown.
    let before = stats(&v);
    let err = role::reconcile(&v, &r, &no_policies, &last, Mode::Apply)
        .await
        .unwrap_err();
    assert!(matches!(err, ReconcileError::Dependency(_)), "{err:?}");
    assert_eq!(err.reason(), "WaitingForDependency");
    assert!(
        err.to_string()
            .contains("VaultPolicy it/agent does not exist"),
        "{err}"
    );
    assert_eq!(stats(&v).since(&before), Default::default());

    // 2. The auth mount does not exist yet.
    let names = BTreeMap::from([("agent", policy.clone())]);
    let err = role::reconcile(&v, &r, &lookup(&names), &last, Mode::Apply)
        .await
        .unwrap_err();
    assert!(matches!(err, ReconcileError::Dependency(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("sys/auth/{mount}/ does not exist yet")),
        "{err}"
    );

    // 3. The policy is not in Vault yet.
    raw.write(&format!("sys/auth/{mount}"), json!({"type": "kubernetes"}))
        .await;
    let err = role::reconcile(&v, &r, &lookup(&names), &last, Mode::Apply)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("Vault policy \"{policy}\") is not in Vault yet")),
        "{err}"
    );
    assert_eq!(stats(&v).since(&before).writes, 0);

    // 4. Everything exists → created.
    v.policy_write(
        &policy,
        "path \"certus/data/mcp/*\" { capabilities = [\"read\"] }",
    )
    .await
    .unwrap();
    let out = role::reconcile(&v, &r, &lookup(&names), &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written && out.in_sync);
    assert_eq!(out.vault_path, format!("auth/{mount}/role/certus-agent"));
    assert_eq!(out.policies, std::slice::from_ref(&policy));
    remember(&mut last, &out);
    let d = raw.data(&out.vault_path).await.unwrap();
    assert_eq!(d["token_ttl"], 900);
    assert_eq!(d["token_policies"], json!([policy]));
    assert_eq!(d["bound_service_account_names"], json!(["certus-agent"]));
    assert_eq!(d["bound_service_account_namespaces"], json!(["certus-tap"]));
    assert_eq!(d["audience"], "vault");

    let before = stats(&v);
    let out = role::reconcile(&v, &r, &lookup(&names), &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.has_changes(), "{:?}", out.changes);
    assert_eq!(stats(&v).since(&before).writes, 0);

    // Spec update.
    r.spec
        .kubernetes
        .as_mut()
        .unwrap()
        .bound_service_account_namespaces
        .push("certus-dev".into());
    let out = role::reconcile(&v, &r, &lookup(&names), &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written && !out.drift);
    remember(&mut last, &out);
    let d = raw.data(&out.vault_path).await.unwrap();
    assert_eq!(
        d["bound_service_account_namespaces"],
        json!(["certus-tap", "certus-dev"])
    );

    // Out-of-band edit → drift → corrected → quiet.
    raw.write(
        &out.vault_path,
        json!({"token_ttl": "1h", "token_policies": ["default"]}),
    )
    .await;
    let plan = role::reconcile(&v, &r, &lookup(&names), &last, Mode::Plan)
        .await
        .unwrap();
    assert!(plan.drift && !plan.in_sync);
    let detail = plan.changes[0].detail.clone().unwrap();
    assert!(detail.contains("~ token_ttl: 3600 → 900s"), "{detail}");
    assert!(detail.contains("token_policies"), "{detail}");
    let out = role::reconcile(&v, &r, &lookup(&names), &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);
    remember(&mut last, &out);
    assert_eq!(raw.data(&out.vault_path).await.unwrap()["token_ttl"], 900);
    let before = stats(&v);
    role::reconcile(&v, &r, &lookup(&names), &last, Mode::Apply)
        .await
        .unwrap();
    assert_eq!(stats(&v).since(&before).writes, 0);

    // A mount of the wrong type is an invalid spec.
    let approle = format!("{p}-approle");
    raw.write(&format!("sys/auth/{approle}"), json!({"type": "approle"}))
        .await;
    let mut wrong = r.clone();
    wrong.spec.kubernetes.as_mut().unwrap().mount = approle.clone();
    let err = role::reconcile(&v, &wrong, &lookup(&names), &last, Mode::Apply)
        .await
        .unwrap_err();
    assert!(matches!(err, ReconcileError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("is a approle auth method, not kubernetes"),
        "{err}"
    );

    // Delete: Retain keeps, Delete removes.
    r.spec.deletion_policy = DeletionPolicy::Retain;
    assert_eq!(
        role::delete(&v, &r, Mode::Apply).await.unwrap().action,
        Action::NoChange
    );
    assert!(raw.data(&out.vault_path).await.is_some());
    r.spec.deletion_policy = DeletionPolicy::Delete;
    assert_eq!(
        role::delete(&v, &r, Mode::Apply).await.unwrap().action,
        Action::Delete
    );
    assert!(raw.data(&out.vault_path).await.is_none());
    assert_eq!(
        role::delete(&v, &r, Mode::Apply).await.unwrap().action,
        Action::NoChange
    );
    raw.disable_auth(&mount).await;
    raw.disable_auth(&approle).await;
    v.policy_delete(&policy).await.unwrap();
}

#[tokio::test]
async fn approle_role_and_role_id_publication() {
    let v = session().await;
    let raw = Raw::new().await;
    let mount = format!("{}-approle", prefix());
    raw.write(&format!("sys/auth/{mount}"), json!({"type": "approle"}))
        .await;
    let r = vr(
        "certus-service",
        json!({"appRole": {"mount": mount, "policies": ["certus-service-policy"], "secretIdTTL": "24h",
               "tokenTTL": "1h", "tokenMaxTTL": "4h", "secretIdNumUses": 0, "bindSecretId": true,
               "roleIdSecret": {"name": "certus-service-role-id"}}}),
    );
    let mut last = LastApplied::default();
    let plan = role::reconcile(&v, &r, &no_policies, &last, Mode::Plan)
        .await
        .unwrap();
    assert!(plan.role_id.is_none(), "no role id before the role exists");
    let out = role::reconcile(&v, &r, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let d = raw
        .data(&format!("auth/{mount}/role/certus-service"))
        .await
        .unwrap();
    assert_eq!(
        (
            d["secret_id_ttl"].as_u64(),
            d["token_ttl"].as_u64(),
            d["token_max_ttl"].as_u64()
        ),
        (Some(86400), Some(3600), Some(14400))
    );
    assert_eq!(d["token_policies"], json!(["certus-service-policy"]));
    let want = raw
        .data(&format!("auth/{mount}/role/certus-service/role-id"))
        .await
        .unwrap()["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let got = out.role_id.clone().expect("role id published");
    assert_eq!(
        (got.secret_name.as_str(), got.role_id.as_str()),
        ("certus-service-role-id", want.as_str())
    );
    assert!(
        !format!("{out:?}").contains(&want),
        "the role id is not in Debug output"
    );
    let before = stats(&v);
    let out = role::reconcile(&v, &r, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.has_changes());
    assert_eq!(out.role_id.unwrap().role_id, want);
    assert_eq!(stats(&v).since(&before).writes, 0);
    // Out-of-band change of a TTL.
    raw.write(
        &format!("auth/{mount}/role/certus-service"),
        json!({"secret_id_ttl": "1h"}),
    )
    .await;
    let out = role::reconcile(&v, &r, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);
    remember(&mut last, &out);

    // Moving the role to another AppRole mount removes the old role (deletionPolicy Delete).
    let mount2 = format!("{mount}-2");
    raw.write(&format!("sys/auth/{mount2}"), json!({"type": "approle"}))
        .await;
    let mut moved = r.clone();
    moved.spec.app_role.as_mut().unwrap().mount = mount2.clone();
    let plan = role::reconcile(&v, &moved, &no_policies, &last, Mode::Plan)
        .await
        .unwrap();
    let actions: Vec<_> = plan
        .changes
        .iter()
        .map(|c| (c.action, c.target.clone()))
        .collect();
    assert_eq!(
        actions,
        [
            (Action::Create, format!("auth/{mount2}/role/certus-service")),
            (Action::Delete, format!("auth/{mount}/role/certus-service"))
        ]
    );
    let out = role::reconcile(&v, &moved, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    assert!(raw
        .data(&format!("auth/{mount}/role/certus-service"))
        .await
        .is_none());
    assert!(raw
        .data(&format!("auth/{mount2}/role/certus-service"))
        .await
        .is_some());
    assert_eq!(
        last.vault_path.as_deref(),
        Some(format!("auth/{mount2}/role/certus-service").as_str())
    );
    raw.disable_auth(&mount).await;
    raw.disable_auth(&mount2).await;
}

#[tokio::test]
async fn oidc_and_jwt_roles() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let (oidc, jwt) = (format!("{p}-oidc"), format!("{p}-jwt"));
    for (m, t) in [(&oidc, "oidc"), (&jwt, "jwt")] {
        raw.write(&format!("sys/auth/{m}"), json!({"type": t}))
            .await;
        raw.write(
            &format!("auth/{m}/config"),
            json!({"jwt_validation_pubkeys": [TEST_JWT_PUBKEY]}),
        )
        .await;
    }
    let dev = vr(
        "developer",
        json!({"oidc": {"mount": oidc, "boundAudiences": ["certus-dev"], "userClaim": "email",
               "allowedRedirectURIs": ["http://localhost:8200/ui/vault/auth/oidc/oidc/callback", "http://localhost:8250/oidc/callback"],
               "policies": ["developer-policy"], "groupsClaim": "groups", "tokenTTL": "8h"}}),
    );
    let mut last = LastApplied::default();
    let out = role::reconcile(&v, &dev, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let d = raw
        .data(&format!("auth/{oidc}/role/developer"))
        .await
        .unwrap();
    assert_eq!(d["role_type"], "oidc");
    assert_eq!(d["user_claim"], "email");
    assert_eq!(d["bound_audiences"], json!(["certus-dev"]));
    assert_eq!(d["token_ttl"], 28800);
    let before = stats(&v);
    assert!(!role::reconcile(&v, &dev, &no_policies, &last, Mode::Apply)
        .await
        .unwrap()
        .has_changes());
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.write(
        &format!("auth/{oidc}/role/developer"),
        json!({"bound_audiences": ["someone-else"]}),
    )
    .await;
    let out = role::reconcile(&v, &dev, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);

    let ci = vr(
        "ci",
        json!({"jwt": {"mount": jwt, "userClaim": "sub", "boundClaims": {"repository": "certus/tap"},
               "boundAudiences": ["https://github.com/certus"], "policies": ["ci"], "tokenTTL": "10m"}}),
    );
    let mut last = LastApplied::default();
    let out = role::reconcile(&v, &ci, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let d = raw.data(&format!("auth/{jwt}/role/ci")).await.unwrap();
    assert_eq!(d["role_type"], "jwt");
    assert_eq!(d["bound_claims"], json!({"repository": "certus/tap"}));
    let before = stats(&v);
    assert!(!role::reconcile(&v, &ci, &no_policies, &last, Mode::Apply)
        .await
        .unwrap()
        .has_changes());
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.disable_auth(&oidc).await;
    raw.disable_auth(&jwt).await;
}

#[tokio::test]
async fn database_roles_issue_working_logins() {
    let v = session().await;
    let raw = Raw::new().await;
    let env = env();
    let p = prefix();
    let mount = format!("{p}-db");
    let resolver = MapResolver::new();
    resolver.set(NS, "pg", "password", &env.pg_password);
    let static_user = format!("{p}_static");
    let ask = vr(
        "certus-ask",
        json!({"database": {"mount": mount, "dbName": "certus-postgres",
               "creationStatements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                                      "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";"],
               "revocationStatements": ["DROP ROLE IF EXISTS \"{{name}}\";"],
               "defaultTTL": "1h", "maxTTL": "24h"}}),
    );
    // The mount does not exist yet, then the connection does not.
    let err = role::reconcile(&v, &ask, &no_policies, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("sys/mounts/{mount}/ does not exist yet")),
        "{err}"
    );
    raw.write(&format!("sys/mounts/{mount}"), json!({"type": "database"}))
        .await;
    let err = role::reconcile(&v, &ask, &no_policies, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap_err();
    assert!(matches!(err, ReconcileError::Dependency(_)));
    assert!(
        err.to_string().contains(&format!(
            "the connection \"certus-postgres\" does not exist in {mount}/ yet"
        )),
        "{err}"
    );

    let e: SecretEngine = in_ns(
        SecretEngine::new(
            "db",
            serde_json::from_value(json!({"path": mount, "type": "database", "database": {"connections": [{
                "name": "certus-postgres", "plugin": "postgresql-database-plugin",
                "connectionURL": env.pg_url_template(), "username": env.pg_user,
                "passwordSecretRef": {"name": "pg", "key": "password"}, "allowedRoles": ["certus-ask", static_user]}]}}))
            .unwrap(),
        ),
        NS,
    );
    engine::reconcile(&v, &e, &resolver, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap();

    let mut last = LastApplied::default();
    let out = role::reconcile(&v, &ask, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let d = raw
        .data(&format!("{mount}/roles/certus-ask"))
        .await
        .unwrap();
    assert_eq!(
        (d["default_ttl"].as_u64(), d["max_ttl"].as_u64()),
        (Some(3600), Some(86400))
    );
    assert_eq!(d["db_name"], "certus-postgres");
    let before = stats(&v);
    assert!(!role::reconcile(&v, &ask, &no_policies, &last, Mode::Apply)
        .await
        .unwrap()
        .has_changes());
    assert_eq!(stats(&v).since(&before).writes, 0);

    // database/creds/<role> yields a login that works against PostgreSQL.
    let creds = raw
        .0
        .read(&format!("{mount}/creds/certus-ask"))
        .await
        .unwrap()
        .unwrap();
    let (user, pass) = (
        creds["data"]["username"].as_str().unwrap(),
        creds["data"]["password"].as_str().unwrap(),
    );
    assert_eq!(creds["lease_duration"], 3600);
    assert_eq!(psql(user, pass, "SELECT current_user").await.unwrap(), user);
    assert!(psql(user, "wrong", "SELECT 1").await.is_err());

    // Out-of-band edit of the statements → drift → corrected.
    raw.write(&format!("{mount}/roles/certus-ask"), json!({"db_name": "certus-postgres", "creation_statements": ["SELECT 1;"], "default_ttl": "5m"})).await;
    let out = role::reconcile(&v, &ask, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);
    assert_eq!(
        raw.data(&format!("{mount}/roles/certus-ask"))
            .await
            .unwrap()["default_ttl"],
        3600
    );

    // Static role: Vault takes over an existing user's password.
    psql_admin(&format!("DROP ROLE IF EXISTS \"{static_user}\"; CREATE ROLE \"{static_user}\" WITH LOGIN PASSWORD 'initial-{p}'")).await;
    let st = vr(
        &static_user,
        json!({"databaseStatic": {"mount": mount, "dbName": "certus-postgres", "username": static_user, "rotationPeriod": "24h"}}),
    );
    let mut last = LastApplied::default();
    let out = role::reconcile(&v, &st, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    assert_eq!(
        out.vault_path,
        format!("{mount}/static-roles/{static_user}")
    );
    let creds = raw
        .data(&format!("{mount}/static-creds/{static_user}"))
        .await
        .unwrap();
    let pass = creds["password"].as_str().unwrap();
    assert_eq!(
        psql(&static_user, pass, "SELECT current_user")
            .await
            .unwrap(),
        static_user
    );
    assert!(
        psql(&static_user, &format!("initial-{p}"), "SELECT 1")
            .await
            .is_err(),
        "rotated"
    );
    let before = stats(&v);
    assert!(!role::reconcile(&v, &st, &no_policies, &last, Mode::Apply)
        .await
        .unwrap()
        .has_changes());
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.write(
        &format!("{mount}/static-roles/{static_user}"),
        json!({"db_name": "certus-postgres", "username": static_user, "rotation_period": "48h"}),
    )
    .await;
    let out = role::reconcile(&v, &st, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);
    assert_eq!(
        raw.data(&out.vault_path).await.unwrap()["rotation_period"],
        86400
    );

    assert_eq!(
        role::delete(&v, &st, Mode::Apply).await.unwrap().action,
        Action::Delete
    );
    assert_eq!(
        role::delete(&v, &ask, Mode::Apply).await.unwrap().action,
        Action::Delete
    );
    raw.unmount(&mount).await;
    psql_admin(&format!("DROP ROLE IF EXISTS \"{static_user}\"")).await;
}

#[tokio::test]
async fn pki_and_kubernetes_secrets_roles() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let (pki, k8s) = (format!("{p}-pki"), format!("{p}-ks"));
    raw.write(
        &format!("sys/mounts/{pki}"),
        json!({"type": "pki", "config": {"max_lease_ttl": "8760h"}}),
    )
    .await;
    raw.write(
        &format!("{pki}/root/generate/internal"),
        json!({"common_name": "Test Root", "ttl": "8760h", "key_type": "ec", "key_bits": 256}),
    )
    .await;
    let web = vr(
        "certus-web",
        json!({"pki": {"mount": pki, "allowedDomains": ["certus.io"], "allowSubdomains": true, "allowBareDomains": false,
               "allowLocalhost": false, "maxTTL": "72h", "ttl": "24h", "keyType": "ec", "keyBits": 256, "serverFlag": true, "clientFlag": false}}),
    );
    let mut last = LastApplied::default();
    let out = role::reconcile(&v, &web, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let d = raw.data(&format!("{pki}/roles/certus-web")).await.unwrap();
    assert_eq!(
        (d["max_ttl"].as_u64(), d["ttl"].as_u64()),
        (Some(259200), Some(86400))
    );
    assert_eq!(d["client_flag"], false);
    let cert = raw
        .write(
            &format!("{pki}/issue/certus-web"),
            json!({"common_name": "api.certus.io"}),
        )
        .await
        .unwrap();
    assert!(cert["data"]["certificate"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let denied = raw
        .0
        .write(
            &format!("{pki}/issue/certus-web"),
            &json!({"common_name": "evil.example.com"}),
        )
        .await;
    assert!(denied.is_err(), "the role only allows certus.io");
    let before = stats(&v);
    assert!(!role::reconcile(&v, &web, &no_policies, &last, Mode::Apply)
        .await
        .unwrap()
        .has_changes());
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.write(
        &format!("{pki}/roles/certus-web"),
        json!({"allowed_domains": ["certus.io", "evil.example.com"], "allow_subdomains": true}),
    )
    .await;
    let out = role::reconcile(&v, &web, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);
    assert_eq!(
        raw.data(&format!("{pki}/roles/certus-web")).await.unwrap()["allowed_domains"],
        json!(["certus.io"])
    );

    raw.write(&format!("sys/mounts/{k8s}"), json!({"type": "kubernetes"}))
        .await;
    let ks = vr(
        "deployer",
        json!({"kubernetesSecrets": {"mount": k8s, "allowedKubernetesNamespaces": ["certus-tap"],
               "serviceAccountName": "deployer", "tokenDefaultTTL": "10m", "tokenMaxTTL": "1h"}}),
    );
    let mut last = LastApplied::default();
    let out = role::reconcile(&v, &ks, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let d = raw.data(&format!("{k8s}/roles/deployer")).await.unwrap();
    assert_eq!(d["service_account_name"], "deployer");
    assert_eq!(d["token_default_ttl"], 600);
    let before = stats(&v);
    assert!(!role::reconcile(&v, &ks, &no_policies, &last, Mode::Apply)
        .await
        .unwrap()
        .has_changes());
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.unmount(&pki).await;
    raw.unmount(&k8s).await;
}

#[tokio::test]
async fn aws_role_waits_for_an_engine_openbao_does_not_have() {
    let v = session().await;
    let r = vr(
        "certus-s3-access",
        json!({"aws": {"mount": format!("{}-aws", prefix()), "credentialType": "iam_user",
               "policyDocument": "{\"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\", \"s3:PutObject\"], \"Resource\": \"arn:aws:s3:::certus-artifacts/*\"}]}"}}),
    );
    let err = role::reconcile(&v, &r, &no_policies, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap_err();
    assert!(matches!(err, ReconcileError::Dependency(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("the aws secrets engine at sys/mounts/"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_is_invalid_and_touches_nothing() {
    let v = session().await;
    let cases = [
        (json!({}), "spec: "),
        (
            json!({"kubernetes": {"boundServiceAccountNames": ["a"], "boundServiceAccountNamespaces": ["b"]},
                "appRole": {}}),
            "spec: set exactly one role kind, not kubernetes and appRole",
        ),
        (
            json!({"kubernetes": {"boundServiceAccountNames": ["a"], "boundServiceAccountNamespaces": ["b"], "tokenTTL": "soon"}}),
            "spec.kubernetes.tokenTTL: ",
        ),
        (
            json!({"name": "no spaces allowed", "appRole": {}}),
            "spec.name: ",
        ),
        (
            json!({"database": {"dbName": "pg", "creationStatements": ["x"], "defaultTTL": "48h", "maxTTL": "24h"}}),
            "spec.database.defaultTTL: ",
        ),
        (
            json!({"oidc": {"userClaim": "email"}}),
            "spec.oidc.allowedRedirectURIs: ",
        ),
        (
            json!({"aws": {"credentialType": "assumed_role"}}),
            "spec.aws.roleArns: ",
        ),
    ];
    for (spec, msg) in cases {
        let r = vr("bad", spec);
        let before = stats(&v);
        let err = role::reconcile(&v, &r, &no_policies, &LastApplied::default(), Mode::Apply)
            .await
            .unwrap_err();
        assert!(matches!(err, ReconcileError::Invalid(_)), "{err:?}");
        assert!(err.to_string().starts_with(msg), "{err}");
        assert_eq!(
            stats(&v).since(&before),
            Default::default(),
            "no Vault request at all"
        );
    }
}

/// Fields removed from a spec: a role's `tokenTTL`/`tokenPolicies` and an engine's
/// `tune.maxLeaseTTL`/`description` go back to Vault's defaults (status.ownedFields
/// remembers what the spec set); a removed field Vault has no neutral value for
/// (`audience`) is left as it is and the plan says so; then everything is quiet.
#[tokio::test]
async fn fields_removed_from_the_spec_are_reset_to_vault_defaults() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let mount = format!("{p}-rm-k8s");
    raw.write(&format!("sys/auth/{mount}"), json!({"type": "kubernetes"}))
        .await;
    let full = json!({"kubernetes": {"mount": mount, "boundServiceAccountNames": ["app"],
        "boundServiceAccountNamespaces": ["apps"], "policies": ["default"],
        "tokenTTL": "15m", "audience": "vault"}});
    let mut last = LastApplied::default();
    let out = role::reconcile(&v, &vr("rm", full), &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let path = out.vault_path.clone();
    assert!(
        last.managed_on(&path).contains(&"token_ttl".to_string()),
        "{last:?}"
    );
    let d = raw.data(&path).await.unwrap();
    assert_eq!(
        (d["token_ttl"].clone(), d["audience"].clone()),
        (json!(900), json!("vault"))
    );

    // tokenTTL, policies and audience removed.
    let slim = vr(
        "rm",
        json!({"kubernetes": {"mount": mount, "boundServiceAccountNames": ["app"],
               "boundServiceAccountNamespaces": ["apps"]}}),
    );
    let plan = role::reconcile(&v, &slim, &no_policies, &last, Mode::Plan)
        .await
        .unwrap();
    let detail = plan.changes[0].detail.clone().unwrap_or_default();
    assert_eq!(plan.changes[0].action, Action::Update, "{detail}");
    assert!(detail.contains("token_ttl: 900 → 0s"), "{detail}");
    assert!(detail.contains("token_policies"), "{detail}");
    assert!(
        detail.contains("audience: removed from the spec, left in Vault"),
        "{detail}"
    );
    let out = role::reconcile(&v, &slim, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(
        out.written && !out.drift && out.in_sync,
        "{:?}",
        out.changes
    );
    remember(&mut last, &out);
    let d = raw.data(&path).await.unwrap();
    assert_eq!(d["token_ttl"], json!(0), "{d}");
    assert!(
        d["token_policies"].as_array().is_none_or(|a| a.is_empty()),
        "{d}"
    );
    assert_eq!(d["audience"], "vault", "no neutral value: left as it is");
    assert!(!last.managed_on(&path).contains(&"token_ttl".to_string()));
    let before = stats(&v);
    let quiet = role::reconcile(&v, &slim, &no_policies, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!quiet.has_changes(), "{:?}", quiet.changes);
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.disable_auth(&mount).await;

    // A SecretEngine's tuning.
    let kv = format!("{p}-rm-kv");
    let engine_of = |spec: Value| -> SecretEngine {
        in_ns(
            SecretEngine::new("rm-kv", serde_json::from_value(spec).unwrap()),
            NS,
        )
    };
    let tuned = engine_of(
        json!({"path": kv, "type": "kv-v2", "description": "team kv",
                                 "tune": {"maxLeaseTTL": "2h"}}),
    );
    let resolver = MapResolver::new();
    let mut last = LastApplied::default();
    let out = engine::reconcile(&v, &tuned, &resolver, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let entry = raw.mount(&kv).await.unwrap();
    assert_eq!(entry["config"]["max_lease_ttl"], json!(7200), "{entry}");
    let bare = engine_of(json!({"path": kv, "type": "kv-v2"}));
    let out = engine::reconcile(&v, &bare, &resolver, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written, "{:?}", out.changes);
    remember(&mut last, &out);
    let entry = raw.mount(&kv).await.unwrap();
    assert_eq!(entry["config"]["max_lease_ttl"], json!(0), "{entry}");
    assert_eq!(entry["description"], "", "{entry}");
    let quiet = engine::reconcile(&v, &bare, &resolver, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!quiet.has_changes(), "{:?}", quiet.changes);
    raw.unmount(&kv).await;
}
