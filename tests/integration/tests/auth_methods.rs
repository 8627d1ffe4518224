//! AuthMethod against the real OpenBao.

use certus_api::{AuthMethod, DeletionPolicy, DriftPolicy};
use certus_core::Action;
use certus_integration_tests::*;
use certus_reconcile::{auth_method, LastApplied, Mode, ReconcileError};
use serde_json::json;

const NS: &str = "it";

fn am(name: &str, spec: serde_json::Value) -> AuthMethod {
    in_ns(
        AuthMethod::new(name, serde_json::from_value(spec).expect("spec")),
        NS,
    )
}

#[tokio::test]
async fn kubernetes_auth_create_update_drift_zero_writes_and_delete() {
    let v = session().await;
    let raw = Raw::new().await;
    let path = format!("{}-k8s", prefix());
    let r = MapResolver::new();
    r.set(
        NS,
        "reviewer",
        "token",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXZpZXdlciJ9.c2ln",
    );
    let mut a = am(
        "k8s",
        json!({"path": path, "type": "kubernetes", "description": "pods",
               "tune": {"defaultLeaseTTL": "1h", "maxLeaseTTL": "4h"},
               "kubernetes": {"kubernetesHost": "https://kubernetes.default.svc:443",
                              "kubernetesCACert": TEST_CA_PEM,
                              "tokenReviewerJWTSecretRef": {"name": "reviewer", "key": "token"},
                              "issuer": "https://kubernetes.default.svc.cluster.local"}}),
    );
    let mut last = LastApplied::default();
    let out = auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written && out.in_sync);
    assert!(
        out.accessor
            .as_deref()
            .is_some_and(|s| s.starts_with("auth_kubernetes_")),
        "{:?}",
        out.accessor
    );
    remember(&mut last, &out);
    let m = raw.auth(&path).await.unwrap();
    assert_eq!(m["type"], "kubernetes");
    assert_eq!(m["description"], "pods");
    assert_eq!(m["config"]["default_lease_ttl"], 3600);
    assert_eq!(m["config"]["max_lease_ttl"], 14400);
    let c = raw.data(&format!("auth/{path}/config")).await.unwrap();
    assert_eq!(c["kubernetes_host"], "https://kubernetes.default.svc:443");
    assert_eq!(c["issuer"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(c["token_reviewer_jwt_set"], true);
    assert_eq!(
        c["kubernetes_ca_cert"].as_str().unwrap().trim(),
        TEST_CA_PEM.trim()
    );

    let before = stats(&v);
    let out = auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.has_changes(), "{:?}", out.changes);
    assert_eq!(stats(&v).since(&before).writes, 0);

    // Spec update.
    a.spec.tune.as_mut().unwrap().default_lease_ttl = Some("30m".into());
    let out = auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written && !out.drift);
    remember(&mut last, &out);
    assert_eq!(
        raw.auth(&path).await.unwrap()["config"]["default_lease_ttl"],
        1800
    );

    // Out-of-band edit of the config → drift → corrected, reviewer JWT resent.
    raw.write(
        &format!("auth/{path}/config"),
        json!({"kubernetes_host": "https://evil:6443", "kubernetes_ca_cert": TEST_CA_PEM}),
    )
    .await;
    let plan = auth_method::reconcile(&v, &a, &r, &last, Mode::Plan)
        .await
        .unwrap();
    assert!(plan.drift);
    let d = plan.changes[1].detail.clone().unwrap();
    assert!(
        d.contains("kubernetes_host: https://evil:6443 → https://kubernetes.default.svc:443"),
        "{d}"
    );
    let out = auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);
    remember(&mut last, &out);
    let c = raw.data(&format!("auth/{path}/config")).await.unwrap();
    assert_eq!(c["kubernetes_host"], "https://kubernetes.default.svc:443");
    assert_eq!(c["token_reviewer_jwt_set"], true);

    // A rotated reviewer JWT in the Secret is rewritten (hash in status).
    r.set(
        NS,
        "reviewer",
        "token",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJuZXcifQ.c2ln",
    );
    let out = auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.written && !out.drift, "{:?}", out.changes);
    remember(&mut last, &out);
    let before = stats(&v);
    auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert_eq!(stats(&v).since(&before).writes, 0);

    // Delete: Retain keeps it, Delete disables it.
    assert_eq!(
        auth_method::delete(&v, &a, Mode::Apply)
            .await
            .unwrap()
            .action,
        Action::NoChange
    );
    assert!(raw.auth(&path).await.is_some());
    a.spec.deletion_policy = DeletionPolicy::Delete;
    assert_eq!(
        auth_method::delete(&v, &a, Mode::Apply)
            .await
            .unwrap()
            .action,
        Action::Delete
    );
    assert!(raw.auth(&path).await.is_none());
}

#[tokio::test]
async fn oidc_mount_offline_with_public_keys_and_discovery_url_rejected() {
    let v = session().await;
    let raw = Raw::new().await;
    let path = format!("{}-oidc", prefix());
    let r = MapResolver::new();
    r.set(NS, "oidc", "client-secret", "s3cr3t-client");
    // What OpenBao 2.7 does offline: a discovery URL is fetched when the config is
    // written, so the write fails; the same mount accepts validation public keys.
    let online = am(
        "oidc",
        json!({"path": path, "type": "oidc", "jwt": {"oidcDiscoveryURL": "https://accounts.google.com",
               "oidcClientID": "certus-dev", "oidcClientSecretRef": {"name": "oidc", "key": "client-secret"}, "defaultRole": "developer"}}),
    );
    let err = auth_method::reconcile(&v, &online, &r, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "VaultRejected", "{err}");
    assert!(err.to_string().contains("discovery URL"), "{err}");
    assert!(!err.to_string().contains("s3cr3t-client"));

    let offline = am(
        "oidc",
        json!({"path": path, "type": "oidc", "jwt": {"jwtValidationPubkeys": [TEST_JWT_PUBKEY], "defaultRole": "developer",
               "boundIssuer": "https://accounts.google.com"}}),
    );
    let mut last = LastApplied::default();
    let out = auth_method::reconcile(&v, &offline, &r, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    let c = raw.data(&format!("auth/{path}/config")).await.unwrap();
    assert_eq!(c["default_role"], "developer");
    assert_eq!(
        c["jwt_validation_pubkeys"][0].as_str().unwrap().trim(),
        TEST_JWT_PUBKEY.trim()
    );
    let before = stats(&v);
    let out = auth_method::reconcile(&v, &offline, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(!out.has_changes(), "{:?}", out.changes);
    assert_eq!(stats(&v).since(&before).writes, 0);
    raw.disable_auth(&path).await;
}

#[tokio::test]
async fn approle_userpass_cert_mounts_drift_report_and_type_change() {
    let v = session().await;
    let raw = Raw::new().await;
    let p = prefix();
    let r = MapResolver::new();
    for t in ["approle", "userpass", "cert"] {
        let a = am(t, json!({"path": format!("{p}-{t}"), "type": t}));
        let out = auth_method::reconcile(&v, &a, &r, &LastApplied::default(), Mode::Apply)
            .await
            .unwrap();
        assert!(out.written);
        assert_eq!(raw.auth(&format!("{p}-{t}")).await.unwrap()["type"], t);
    }
    // driftPolicy Report: an out-of-band tune is reported, not corrected.
    let mut a = am(
        "approle",
        json!({"path": format!("{p}-approle"), "type": "approle", "description": "services",
               "driftPolicy": "Report"}),
    );
    let mut last = LastApplied::default();
    let out = auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    remember(&mut last, &out);
    raw.write(
        &format!("sys/auth/{p}-approle/tune"),
        json!({"description": "edited"}),
    )
    .await;
    let before = stats(&v);
    let out = auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && !out.written && !out.in_sync);
    assert_eq!(stats(&v).since(&before).writes, 0);
    assert_eq!(
        raw.auth(&format!("{p}-approle")).await.unwrap()["description"],
        "edited"
    );
    let mut st = certus_api::VaultObjectStatus::default();
    out.record(&mut st, Some(2), chrono_like_now());
    let ready = certus_api::find_condition(&st.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.reason.as_str(), ready.status),
        ("DriftDetected", certus_api::ConditionStatus::False)
    );
    a.spec.drift_policy = DriftPolicy::Correct;
    let out = auth_method::reconcile(&v, &a, &r, &last, Mode::Apply)
        .await
        .unwrap();
    assert!(out.drift && out.written);
    assert_eq!(
        raw.auth(&format!("{p}-approle")).await.unwrap()["description"],
        "services"
    );

    // Type change refused.
    let b = am(
        "approle",
        json!({"path": format!("{p}-approle"), "type": "userpass"}),
    );
    let before = stats(&v);
    let err = auth_method::reconcile(&v, &b, &r, &LastApplied::default(), Mode::Apply)
        .await
        .unwrap_err();
    assert!(matches!(err, ReconcileError::Conflict(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "sys/auth/{p}-approle/ is already mounted as a approle auth method"
        )),
        "{err}"
    );
    assert_eq!(stats(&v).since(&before).writes, 0);
    for t in ["approle", "userpass", "cert"] {
        raw.disable_auth(&format!("{p}-{t}")).await;
    }
}

fn chrono_like_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

#[tokio::test]
async fn bad_input_is_invalid_and_touches_nothing() {
    let v = session().await;
    let r = MapResolver::new();
    let p = prefix();
    let cases = [
        (json!({"path": "token", "type": "token"}), "spec.path"),
        (
            json!({"path": format!("{p}-a"), "type": "approle", "jwt": {"jwksURL": "https://x"}}),
            "spec.jwt",
        ),
        (
            json!({"path": format!("{p}-b"), "type": "jwt", "jwt": {"defaultRole": "x"}}),
            "spec.jwt",
        ),
        (
            json!({"path": format!("{p}-c"), "type": "kubernetes", "kubernetes": {"kubernetesHost": "https://k", "disableLocalCAJWT": true}}),
            "spec.kubernetes.kubernetesCACert",
        ),
        (
            json!({"path": format!("{p}-d"), "type": "kubernetes", "tune": {"maxLeaseTTL": "forever"}}),
            "spec.tune.maxLeaseTTL",
        ),
    ];
    for (spec, field) in cases {
        let a = am("bad", spec);
        let before = stats(&v);
        let err = auth_method::reconcile(&v, &a, &r, &LastApplied::default(), Mode::Apply)
            .await
            .unwrap_err();
        assert!(matches!(err, ReconcileError::Invalid(_)), "{err:?}");
        assert!(err.to_string().starts_with(field), "{err}");
        assert_eq!(stats(&v).since(&before), Default::default());
    }
}
