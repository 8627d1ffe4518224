//! SecretEngine against the real OpenBao (+ PostgreSQL for the database engine).

use certus_api::SecretEngine;
use certus_core::Action;
use certus_integration_tests::*;
use certus_reconcile::{engine, LastApplied, Mode, ReconcileError};
use serde_json::json;

const NS: &str = "it";

fn se(name: &str, spec: serde_json::Value) -> SecretEngine {
    in_ns(
        SecretEngine::new(name, serde_json::from_value(spec).expect("spec")),
        NS,
    )
}

#[tokio::test]
async fn kv_v2_create_update_drift_zero_writes_and_delete_policies() {
    let v = session().await;
    let raw = Raw::new().await;
    let path = format!("{}-kv", prefix());
    let r = MapResolver::new();
    let mut last = LastApplied::default();
    let mut e = se(
        "kv",
        json!({"path": path, "type": "kv-v2", "description": "static secrets",
               "tune": {"defaultLeaseTTL": "1h", "maxLeaseTTL": "24h", "auditNonHmacRequestKeys": ["role"]},
               "kv": {"maxVersions": 5, "deleteVersionAfter": "720h"}}),
    );

    // Create → read back.
    let out = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written && out.in_sync && !out.drift, "{out:?}");
    assert_eq!(out.changes[0].action, Action::Create);
    remember(&mut last, &out);
    let m = raw.mount(&path).await.expect("mounted");
    assert_eq!(
        (m["type"].as_str(), m["options"]["version"].as_str()),
        (Some("kv"), Some("2"))
    );
    assert_eq!(m["description"], "static secrets");
    assert_eq!(m["config"]["default_lease_ttl"], 3600);
    assert_eq!(m["config"]["max_lease_ttl"], 86400);
    assert_eq!(m["config"]["audit_non_hmac_request_keys"], json!(["role"]));
    let c = raw.data(&format!("{path}/config")).await.unwrap();
    assert_eq!(c["max_versions"], 5);
    assert_eq!(c["delete_version_after"], "720h0m0s");

    // Resync: zero writes.
    let before = stats(&v);
    let out = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.written && !out.has_changes(), "{:?}", out.changes);
    assert_eq!(stats(&v).since(&before).writes, 0);

    // Update the spec → changed in Vault, not drift.
    e.spec.tune.as_mut().unwrap().max_lease_ttl = Some("48h".into());
    e.spec.kv.as_mut().unwrap().max_versions = Some(7);
    let out = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written && !out.drift);
    remember(&mut last, &out);
    assert_eq!(
        raw.mount(&path).await.unwrap()["config"]["max_lease_ttl"],
        172800
    );
    assert_eq!(
        raw.data(&format!("{path}/config")).await.unwrap()["max_versions"],
        7
    );

    // Out-of-band edits → plan shows drift, writes nothing → apply corrects.
    raw.write(
        &format!("sys/mounts/{path}/tune"),
        json!({"max_lease_ttl": "1h", "description": "edited"}),
    )
    .await;
    raw.write(&format!("{path}/config"), json!({"max_versions": 1}))
        .await;
    let before = stats(&v);
    let plan = engine::reconcile(&v, &e, &r, &last, Mode::Plan)
        .await
        .unwrap();
    assert_eq!(stats(&v).since(&before).writes, 0);
    assert!(plan.drift && !plan.in_sync);
    let detail: Vec<String> = plan
        .changes
        .iter()
        .filter_map(|c| c.detail.clone())
        .collect();
    let detail = detail.join("\n");
    assert!(detail.contains("max_lease_ttl: 3600 → 172800s"), "{detail}");
    assert!(
        detail.contains("description: \"edited\" → static secrets"),
        "{detail}"
    );
    assert!(detail.contains("max_versions: 1 → 7"), "{detail}");
    let out = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written && out.drift && out.in_sync);
    remember(&mut last, &out);
    assert_eq!(
        raw.mount(&path).await.unwrap()["description"],
        "static secrets"
    );
    let before = stats(&v);
    let out = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.written && !out.drift);
    assert_eq!(stats(&v).since(&before).writes, 0);

    // Delete: Retain (default) keeps the mount; Delete unmounts it.
    raw.write(&format!("{path}/data/keep"), json!({"data": {"k": "v"}}))
        .await;
    let c = engine::delete(&v, &e, Mode::Apply).await.unwrap();
    assert_eq!(c.action, Action::NoChange);
    assert!(raw.mount(&path).await.is_some());
    assert!(raw.data(&format!("{path}/data/keep")).await.is_some());
    e.spec.deletion_policy = certus_api::DeletionPolicy::Delete;
    assert_eq!(
        engine::delete(&v, &e, Mode::Plan).await.unwrap().action,
        Action::Delete
    );
    assert!(raw.mount(&path).await.is_some(), "plan deletes nothing");
    assert_eq!(
        engine::delete(&v, &e, Mode::Apply).await.unwrap().action,
        Action::Delete
    );
    assert!(raw.mount(&path).await.is_none());
    assert_eq!(
        engine::delete(&v, &e, Mode::Apply).await.unwrap().action,
        Action::NoChange
    );
}

#[tokio::test]
async fn changing_the_type_of_an_existing_mount_is_refused() {
    let v = session().await;
    let raw = Raw::new().await;
    let path = format!("{}-typed", prefix());
    let r = MapResolver::new();
    let e = se("a", json!({"path": path, "type": "kv-v2"}));
    engine::reconcile(&v, &e, &r, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap();
    for other in ["kv", "database", "transit"] {
        let e2 = se("a", json!({"path": path, "type": other}));
        let before = stats(&v);
        let err = engine::reconcile(&v, &e2, &r, &LastApplied::default(), Mode::Apply)
            .await
            .unwrap_err();
        assert!(matches!(err, ReconcileError::Conflict(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("sys/mounts/{path}/ is already mounted as a kv-v2")),
            "{msg}"
        );
        assert!(msg.contains("destroy its data"), "{msg}");
        assert_eq!(err.reason(), "Conflict");
        assert_eq!(stats(&v).since(&before).writes, 0);
    }
    // Deleting a resource whose type no longer matches leaves the mount alone.
    let mut e3 = se("a", json!({"path": path, "type": "transit"}));
    e3.spec.deletion_policy = certus_api::DeletionPolicy::Delete;
    assert_eq!(
        engine::delete(&v, &e3, Mode::Apply).await.unwrap().action,
        Action::Conflict
    );
    assert_eq!(raw.mount(&path).await.unwrap()["options"]["version"], "2");
    raw.unmount(&path).await;
}

#[tokio::test]
async fn database_engine_connection_secret_change_and_bad_password() {
    let v = session().await;
    let raw = Raw::new().await;
    let env = env();
    let path = format!("{}-db", prefix());
    let r = MapResolver::new();
    r.set(NS, "pg", "password", &env.pg_password);
    let mut e = se(
        "db",
        json!({"path": path, "type": "database", "deletionPolicy": "Delete",
               "database": {"connections": [{
                  "name": "certus-postgres", "plugin": "postgresql-database-plugin",
                  "connectionURL": env.pg_url_template(), "username": env.pg_user,
                  "passwordSecretRef": {"name": "pg", "key": "password"},
                  "allowedRoles": ["certus-ask", "certus-assurance"], "maxOpenConnections": 3}]}}),
    );
    let mut last = LastApplied::default();
    let out = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written);
    remember(&mut last, &out);
    let cfg_path = format!("{path}/config/certus-postgres");
    assert!(last.secret_hashes.contains_key(&cfg_path), "{last:?}");
    assert!(
        !format!("{last:?}{out:?}").contains(&env.pg_password),
        "no secret in outcome/status"
    );
    let c = raw.data(&cfg_path).await.unwrap();
    assert_eq!(c["plugin_name"], "postgresql-database-plugin");
    assert_eq!(
        c["allowed_roles"],
        json!(["certus-ask", "certus-assurance"])
    );
    assert_eq!(c["connection_details"]["username"], env.pg_user.as_str());
    assert_eq!(c["connection_details"]["max_open_connections"], 3);

    let before = stats(&v);
    let out = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.has_changes(), "{:?}", out.changes);
    assert_eq!(stats(&v).since(&before).writes, 0);

    // A changed password in the Secret is noticed by the request hash (not drift); the
    // wrong password is rejected by Vault's connection check.
    r.set(NS, "pg", "password", "not-the-password");
    let plan = engine::reconcile(&v, &e, &r, &last, Mode::Plan)
        .await
        .unwrap();
    let ch = plan.changes.iter().find(|c| c.target == cfg_path).unwrap();
    assert_eq!(ch.action, Action::Update);
    assert!(!ch.drift);
    assert!(ch
        .detail
        .as_ref()
        .unwrap()
        .contains("password: the request changed"));
    assert!(!ch.detail.as_ref().unwrap().contains("not-the-password"));
    let err = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "VaultRejected", "{err}");
    assert!(!err.to_string().contains("not-the-password"));
    r.set(NS, "pg", "password", &env.pg_password);

    // Out-of-band: allowed_roles edited → drift → corrected (the request is resent whole).
    raw.write(
        &cfg_path,
        json!({"allowed_roles": ["x"], "verify_connection": false}),
    )
    .await;
    let out = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written, "{:?}", out.changes);
    assert_eq!(
        raw.data(&cfg_path).await.unwrap()["allowed_roles"],
        json!(["certus-ask", "certus-assurance"])
    );

    // A missing Secret waits (no write).
    e.spec.database.as_mut().unwrap().connections[0]
        .password_secret_ref
        .as_mut()
        .unwrap()
        .name = "absent".into();
    let before = stats(&v);
    let err = engine::reconcile(&v, &e, &r, &last, Mode::Apply)
        .await
        .unwrap_err();
    assert!(matches!(err, ReconcileError::Dependency(_)), "{err:?}");
    assert!(err.to_string().contains("Secret it/absent"), "{err}");
    assert_eq!(stats(&v).since(&before), Default::default());
    assert_eq!(
        engine::delete(&v, &e, Mode::Apply).await.unwrap().action,
        Action::Delete
    );
}

#[tokio::test]
async fn pki_root_and_intermediate_ca_with_urls() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let (root, int) = (format!("{p}-pki"), format!("{p}-pki-int"));
    let r = MapResolver::new();
    let root_e = se(
        "pki",
        json!({"path": root, "type": "pki", "tune": {"maxLeaseTTL": "87600h"},
               "pki": {"ca": {"type": "Root", "commonName": "Certus Root CA", "ttl": "8760h", "keyType": "ec", "keyBits": 256},
                       "urls": {"issuingCertificates": ["http://127.0.0.1:18200/v1/pki/ca"],
                                "crlDistributionPoints": ["http://127.0.0.1:18200/v1/pki/crl"]}}}),
    );
    let int_e = se(
        "pki-int",
        json!({"path": int, "type": "pki",
               "pki": {"ca": {"type": "Intermediate", "commonName": "Certus Issuing CA", "ttl": "720h", "signedBy": root, "keyType": "ec", "keyBits": 256}}}),
    );
    // The intermediate waits for its root's CA.
    let err = engine::reconcile(&v, &int_e, &r, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap_err();
    assert!(matches!(err, ReconcileError::Dependency(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!("{root}/ has no CA yet")),
        "{err}"
    );

    let mut last = LastApplied::default();
    let out = engine::reconcile(&v, &root_e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let issuer = raw
        .data(&format!("{root}/issuer/certus-root"))
        .await
        .unwrap();
    assert_eq!(issuer["issuer_name"], "certus-root");
    let urls = raw.data(&format!("{root}/config/urls")).await.unwrap();
    assert_eq!(
        urls["issuing_certificates"],
        json!(["http://127.0.0.1:18200/v1/pki/ca"])
    );
    let before = stats(&v);
    let out = engine::reconcile(&v, &root_e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.has_changes(), "CA not regenerated: {:?}", out.changes);
    assert_eq!(stats(&v).since(&before).writes, 0);

    let out = engine::reconcile(&v, &int_e, &r, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap();
    assert!(out.written);
    let issuer = raw
        .data(&format!("{int}/issuer/certus-intermediate"))
        .await
        .unwrap();
    let chain = issuer["ca_chain"].as_array().map(|a| a.len()).unwrap_or(0);
    assert!(chain >= 2, "intermediate chains to the root: {issuer}");
    let out = engine::reconcile(&v, &int_e, &r, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap();
    assert!(!out.has_changes());

    // Out-of-band URL edit is drift and corrected.
    raw.write(
        &format!("{root}/config/urls"),
        json!({"issuing_certificates": ["http://evil/ca"]}),
    )
    .await;
    let out = engine::reconcile(&v, &root_e, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);
    assert_eq!(
        raw.data(&format!("{root}/config/urls")).await.unwrap()["issuing_certificates"],
        json!(["http://127.0.0.1:18200/v1/pki/ca"])
    );
    raw.unmount(&int).await;
    raw.unmount(&root).await;
}

#[tokio::test]
async fn generic_transit_and_kubernetes_engines() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let r = MapResolver::new();
    r.set(NS, "k8s-sa", "token", "eyJhbGciOiJSUzI1NiJ9.e30.sig");
    let transit = se(
        "transit",
        json!({"path": format!("{p}-transit"), "type": "transit", "description": "encryption"}),
    );
    let out = engine::reconcile(&v, &transit, &r, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap();
    assert!(out.written);
    assert_eq!(
        raw.mount(&format!("{p}-transit")).await.unwrap()["type"],
        "transit"
    );
    let k = se(
        "k8s",
        json!({"path": format!("{p}-k8s"), "type": "kubernetes",
               "kubernetes": {"kubernetesHost": "https://kubernetes.default.svc:443", "kubernetesCACert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                              "disableLocalCAJWT": true, "serviceAccountJWTSecretRef": {"name": "k8s-sa", "key": "token"}}}),
    );
    let mut last = LastApplied::default();
    let out = engine::reconcile(&v, &k, &r, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let c = raw.data(&format!("{p}-k8s/config")).await.unwrap();
    assert_eq!(c["kubernetes_host"], "https://kubernetes.default.svc:443");
    assert!(
        c.get("service_account_jwt").is_none(),
        "Vault never returns the JWT"
    );
    let before = stats(&v);
    let out = engine::reconcile(&v, &k, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.has_changes(), "{:?}", out.changes);
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.unmount(&format!("{p}-transit")).await;
    raw.unmount(&format!("{p}-k8s")).await;
}

#[tokio::test]
async fn aws_engine_is_not_in_openbao() {
    // OpenBao ships no AWS engine: the same generic path sends the mount request, and
    // OpenBao rejects it (the request shapes are unit-tested in certus-core).
    let v = session().await;
    let r = MapResolver::new();
    r.set(
        NS,
        "aws-root",
        "secret_access_key",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    );
    let e = se(
        "aws",
        json!({"path": format!("{}-aws", prefix()), "type": "aws",
               "aws": {"accessKeyId": "AKIAEXAMPLE", "secretAccessKeyRef": {"name": "aws-root", "key": "secret_access_key"}, "region": "us-west-2"}}),
    );
    let plan = engine::reconcile(&v, &e, &r, &LastApplied::default(), Mode::Plan)
        .await
        .unwrap();
    assert_eq!(plan.changes.len(), 2);
    assert_eq!(
        plan.changes[1].target,
        format!("{}/config/root", e.spec.path)
    );
    let err = engine::reconcile(&v, &e, &r, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "VaultRejected");
    assert!(err.to_string().contains("aws"), "{err}");
    assert!(!err.to_string().contains("wJalrXUtnFEMI"));
}

#[tokio::test]
async fn bad_input_is_invalid_and_touches_nothing() {
    let v = session().await;
    let r = MapResolver::new();
    let p = prefix();
    let cases = [
        (
            json!({"path": format!("{p}-a"), "type": "kv-v2", "tune": {"defaultLeaseTTL": "1 hour"}}),
            "spec.tune.defaultLeaseTTL",
        ),
        (json!({"path": "sys", "type": "kv-v2"}), "spec.path"),
        (json!({"path": format!("{p}-b"), "type": "Kv"}), "spec.type"),
        (
            json!({"path": format!("{p}-c"), "type": "kv-v2", "database": {"connections": []}}),
            "spec.database",
        ),
        (
            json!({"path": format!("{p}-d"), "type": "database", "database": {"connections": [{
            "name": "pg", "plugin": "postgresql-database-plugin", "username": "u",
            "connectionURL": "postgresql://u:hunter2@db:5432/x"}]}}),
            "spec.database.connections[0].connectionURL",
        ),
        (
            json!({"path": format!("{p}-e"), "type": "pki", "pki": {"ca": {"type": "Intermediate", "commonName": "x"}}}),
            "spec.pki.ca.signedBy",
        ),
    ];
    for (spec, field) in cases {
        let e = se("bad", spec);
        let before = stats(&v);
        let err = engine::reconcile(&v, &e, &r, &LastApplied::default(), Mode::Apply)
            .await
            .unwrap_err();
        assert!(matches!(err, ReconcileError::Invalid(_)), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        assert_eq!(err.reason(), "InvalidSpec");
        assert_eq!(
            stats(&v).since(&before),
            Default::default(),
            "no Vault request at all"
        );
    }
}
