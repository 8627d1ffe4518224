//! Tier 2: the controllers' reconcile functions against a mocked Kubernetes API (every
//! request's method, URI and body asserted, in order, with short timeouts) and the REAL
//! OpenBao started by `hack/services-up.sh` (VAULT_ADDR / VAULT_TOKEN).

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use certus_api::{DeletionPolicy, VaultConnection, VaultPolicy, FINALIZER};
use certus_controller::testing::{policy, PolicyExt};
use certus_controller::{connection, policy as policy_ctl, Context, RunOptions};
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self};

// ---------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// ApiServerVerifier: a scripted fake API server
// ---------------------------------------------------------------------------------------

const RECONCILE_TIMEOUT: Duration = Duration::from_secs(20);

impl Call {
    fn not_found(self, kind: &str, name: &str) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{kind} {name:?} not found"), "reason": "NotFound", "code": 404
        });
        self.reply(404, &body);
    }
}

impl ApiServerVerifier {
    // --- common steps -------------------------------------------------------------------

    async fn serve_connection(&mut self, ns: &str) {
        let (addr, _) = vault_env();
        let call = self.next("GET of the VaultConnection").await;
        call.expect(
            Method::GET,
            &format!("/apis/vault.certus.io/v1alpha1/namespaces/{ns}/vaultconnections/default"),
        );
        let conn = json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultConnection",
            "metadata": {"name": "default", "namespace": ns, "uid": "conn-uid", "generation": 1},
            "spec": {"address": addr, "auth": {"token": {"secretRef": {"name": "vault-token", "key": "token"}}}}
        });
        call.reply(200, &conn);
    }

    async fn serve_token_secret(&mut self, ns: &str) {
        let (_, token) = vault_env();
        let call = self.next("GET of the token Secret").await;
        call.expect(
            Method::GET,
            &format!("/api/v1/namespaces/{ns}/secrets/vault-token"),
        );
        let mut secret = Secret::default();
        secret.metadata.name = Some("vault-token".into());
        secret.metadata.namespace = Some(ns.into());
        secret.data = Some([("token".to_string(), ByteString(token.into_bytes()))].into());
        let mut body = serde_json::to_value(&secret).unwrap();
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Secret");
        call.reply(200, &body);
    }

    /// Asserts the server-side-apply status patch and returns its `status`.
    async fn expect_status_apply(&mut self, path: &str, obj: &Value) -> Value {
        let call = self.next("the status PATCH").await;
        call.expect(Method::PATCH, &format!("{path}/status"));
        assert_eq!(
            call.content_type, "application/apply-patch+yaml",
            "status must be server-side applied"
        );
        assert!(
            call.query.contains("fieldManager=certus-vault-operator"),
            "query: {}",
            call.query
        );
        assert!(call.query.contains("force=true"), "query: {}", call.query);
        assert_eq!(call.body["apiVersion"], "vault.certus.io/v1alpha1");
        let status = call.body["status"].clone();
        let mut reply = obj.clone();
        reply["status"] = status.clone();
        call.reply(200, &reply);
        status
    }

    /// Asserts an Event was created in `ns`; returns (type, reason, note).
    async fn expect_event(&mut self, ns: &str) -> (String, String, String) {
        let call = self.next("an Event POST").await;
        call.expect(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
        );
        let e = &call.body;
        let out = (
            e["type"].as_str().unwrap_or_default().to_string(),
            e["reason"].as_str().unwrap_or_default().to_string(),
            e["note"].as_str().unwrap_or_default().to_string(),
        );
        let body = call.body.clone();
        call.reply(201, &body);
        out
    }
}

/// A context whose client talks to a fresh `ApiServerVerifier`.
fn mocked(policies: Vec<VaultPolicy>) -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (reader, mut writer) = reflector::store::<VaultPolicy>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in policies {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Context::new(client, RunOptions::default(), reader);
    (Arc::new(ctx), ApiServerVerifier(handle))
}

fn policy_path(ns: &str, name: &str) -> String {
    format!("/apis/vault.certus.io/v1alpha1/namespaces/{ns}/vaultpolicies/{name}")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
}

/// Runs `reconcile` against the scripted server; the scenario's panics surface first.
async fn drive<T: Send + 'static>(
    scenario: JoinHandle<ApiServerVerifier>,
    reconcile: impl std::future::Future<Output = T>,
) -> (T, ApiServerVerifier) {
    let (result, verifier) =
        tokio::join!(tokio::time::timeout(RECONCILE_TIMEOUT, reconcile), scenario);
    let verifier = match verifier {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("scenario failed: {e}"),
    };
    let result = result.unwrap_or_else(|_| {
        panic!("reconcile did not finish within {RECONCILE_TIMEOUT:?} (a request went unanswered?)")
    });
    (result, verifier)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// A new VaultPolicy: the first reconcile only adds the finalizer; the next one resolves
/// the `default` VaultConnection and its token Secret, writes the policy to OpenBao,
/// applies Ready=True status and publishes a `Created` Event.
#[tokio::test]
async fn policy_apply_adds_finalizer_then_writes_vault_and_status() {
    let vault = root_session().await;
    let ns = "ctl-test";
    let name = unique("app");
    let obj = policy(ns, &name);
    let vault_name = obj.vault_name();
    assert_eq!(vault_name, format!("{ns}.{name}"));
    let path = policy_path(ns, &name);

    // 1. No finalizer yet: only the finalizer is added.
    let (ctx, mut api) = mocked(vec![obj.clone()]);
    let with_finalizer = obj.clone().with_finalizer();
    let reply = serde_json::to_value(&with_finalizer).unwrap();
    let p = path.clone();
    let scenario = tokio::spawn(async move {
        let call = api.next("the finalizer PATCH").await;
        call.expect(Method::PATCH, &p);
        assert_eq!(call.content_type, "application/json-patch+json");
        let ops = call.body.as_array().expect("a JSON patch").clone();
        assert!(
            ops.contains(
                &json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
            ),
            "finalizer patch: {ops:?}"
        );
        call.reply(200, &reply);
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(
        scenario,
        policy_ctl::reconcile(Arc::new(obj.clone()), ctx.clone()),
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(
        vault.policy_read(&vault_name).await.unwrap(),
        None,
        "nothing written before the finalizer is in place"
    );

    // 2. With the finalizer: connection + Secret are resolved, Vault is written, status applied.
    let (ctx, mut api) = mocked(vec![with_finalizer.clone()]);
    let reply = serde_json::to_value(&with_finalizer).unwrap();
    let p = path.clone();
    let scenario = tokio::spawn(async move {
        api.serve_connection(ns).await;
        api.serve_token_secret(ns).await;
        let status = api.expect_status_apply(&p, &reply).await;
        let ready = condition(&status, "Ready");
        assert_eq!(ready["status"], "True", "{status:#}");
        assert_eq!(ready["reason"], "Reconciled");
        assert_eq!(ready["observedGeneration"], 1);
        let drifted = condition(&status, "Drifted");
        assert_eq!(
            (drifted["status"].as_str(), drifted["reason"].as_str()),
            (Some("False"), Some("InSync"))
        );
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(
            status["vaultName"],
            format!("{ns}.{}", p.rsplit('/').next().unwrap())
        );
        assert_eq!(
            status["policyHash"].as_str().map(str::len),
            Some(16),
            "{status:#}"
        );
        assert!(status["lastSynced"].is_string());
        let (type_, reason, note) = api.expect_event(ns).await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Created"));
        assert!(note.contains("ctl-test."), "{note}");
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(
        scenario,
        policy_ctl::reconcile(Arc::new(with_finalizer.clone()), ctx.clone()),
    )
    .await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(RunOptions::default().resync_interval)
    );

    let text = vault
        .policy_read(&vault_name)
        .await
        .unwrap()
        .expect("the policy exists in Vault");
    assert!(
        text.starts_with(&format!(
            "# managed-by: certus-vault-operator owner={ns}/{name}\n"
        )),
        "{text}"
    );
    assert!(text.contains("path \"secret/data/app/*\""), "{text}");
    assert_eq!(ctx.metrics.reconciles("VaultPolicy"), 1);
    let expected_hash = certus_reconcile::policy::desired(&with_finalizer)
        .unwrap()
        .hash;

    // 3. A resync with status.policyHash recorded and Vault unchanged writes nothing.
    let mut synced = with_finalizer.clone();
    synced.status = Some(certus_api::VaultPolicyStatus {
        policy_hash: Some(expected_hash),
        ..Default::default()
    });
    let (ctx, mut api) = mocked(vec![synced.clone()]);
    let reply = serde_json::to_value(&synced).unwrap();
    let p = path.clone();
    let scenario = tokio::spawn(async move {
        api.serve_connection(ns).await;
        api.serve_token_secret(ns).await;
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(condition(&status, "Ready")["status"], "True");
        // No Event: nothing was written.
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(
        scenario,
        policy_ctl::reconcile(Arc::new(synced), ctx.clone()),
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(
        ctx.sessions.stats().snapshot().writes,
        0,
        "an unchanged policy is not rewritten"
    );

    vault.policy_delete(&vault_name).await.unwrap();
}

/// Deleting a VaultPolicy (deletionTimestamp + finalizer) deletes the Vault policy, then
/// removes the finalizer.
#[tokio::test]
async fn policy_cleanup_deletes_vault_policy_and_removes_finalizer() {
    let vault = root_session().await;
    let ns = "ctl-test";
    let name = unique("gone");
    let obj = policy(ns, &name).with_finalizer().deleting(5);
    let desired = certus_reconcile::policy::desired(&obj).unwrap();
    vault
        .policy_write(&desired.name, &desired.text)
        .await
        .unwrap();

    let (ctx, mut api) = mocked(vec![obj.clone()]);
    let mut released = serde_json::to_value(&obj).unwrap();
    released["metadata"]["finalizers"] = json!([]);
    let path = policy_path(ns, &name);
    let scenario = tokio::spawn(async move {
        api.serve_connection(ns).await;
        api.serve_token_secret(ns).await;
        let (type_, reason, _) = api.expect_event(ns).await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Deleted"));
        let call = api.next("the finalizer-removal PATCH").await;
        call.expect(Method::PATCH, &path);
        assert_eq!(call.content_type, "application/json-patch+json");
        assert_eq!(
            call.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"}
            ])
        );
        call.reply(200, &released);
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, policy_ctl::reconcile(Arc::new(obj), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(
        vault.policy_read(&desired.name).await.unwrap(),
        None,
        "the Vault policy is gone"
    );
}

/// `deletionPolicy: Retain`: the finalizer is released at once, Vault is not touched and
/// the connection is not even resolved.
#[tokio::test]
async fn policy_cleanup_with_retain_releases_immediately() {
    let vault = root_session().await;
    let ns = "ctl-test";
    let name = unique("kept");
    let obj = policy(ns, &name)
        .deletion(DeletionPolicy::Retain)
        .with_finalizer()
        .deleting(1);
    let desired = certus_reconcile::policy::desired(&obj).unwrap();
    vault
        .policy_write(&desired.name, &desired.text)
        .await
        .unwrap();

    let (ctx, mut api) = mocked(vec![obj.clone()]);
    let reply = serde_json::to_value(&obj).unwrap();
    let path = policy_path(ns, &name);
    let scenario = tokio::spawn(async move {
        let call = api.next("the finalizer-removal PATCH").await;
        call.expect(Method::PATCH, &path);
        assert!(
            call.body.to_string().contains("\"remove\""),
            "{}",
            call.body
        );
        call.reply(200, &reply);
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, policy_ctl::reconcile(Arc::new(obj), ctx)).await;
    assert!(result.is_ok());
    assert_eq!(
        vault.policy_read(&desired.name).await.unwrap(),
        Some(desired.text.clone())
    );
    vault.policy_delete(&desired.name).await.unwrap();
}

/// Two VaultPolicies claim the same Vault policy through the same connection: the newer
/// one gets Ready=False/Conflict and a Warning Event, and nothing is written to Vault.
#[tokio::test]
async fn policy_conflict_newer_claimant_gets_conflict_and_vault_is_untouched() {
    let vault = root_session().await;
    let ns = "ctl-test";
    let shared = unique("shared");
    let older = policy(ns, &unique("older"))
        .named(&shared)
        .created(100)
        .with_finalizer();
    let newer = policy(ns, &unique("newer"))
        .named(&shared)
        .created(200)
        .with_finalizer()
        .with_rules(
            "path \"secret/*\" {\n  capabilities = [\"create\", \"update\", \"delete\"]\n}\n",
        );
    let owner_text = certus_reconcile::policy::desired(&older).unwrap().text;
    vault.policy_write(&shared, &owner_text).await.unwrap();

    let (ctx, mut api) = mocked(vec![older.clone(), newer.clone()]);
    let reply = serde_json::to_value(&newer).unwrap();
    let path = policy_path(ns, &newer.name_any());
    let older_name = older.name_any();
    let scenario = tokio::spawn(async move {
        // No GET of the connection: the conflict is decided from the store alone.
        let status = api.expect_status_apply(&path, &reply).await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("Conflict"))
        );
        let message = ready["message"].as_str().unwrap();
        assert!(message.contains(&format!("{ns}/{older_name}")), "{message}");
        assert_eq!(ready["observedGeneration"], 1);
        let (type_, reason, _) = api.expect_event(ns).await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "Conflict"));
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(
        scenario,
        policy_ctl::reconcile(Arc::new(newer.clone()), ctx.clone()),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.category(), "conflict");
    // Non-retryable: wait for a change (long requeue), not a retry loop.
    let action = policy_ctl::error_policy(Arc::new(newer), &err, ctx.clone());
    assert_eq!(
        action,
        Action::requeue(RunOptions::default().await_change_requeue)
    );
    assert_eq!(ctx.metrics.failures("VaultPolicy", "conflict"), 1);

    assert_eq!(
        vault.policy_read(&shared).await.unwrap(),
        Some(owner_text),
        "the owner's policy is unchanged"
    );
    assert_eq!(ctx.sessions.stats().snapshot().writes, 0);
    vault.policy_delete(&shared).await.unwrap();
}

/// Invalid HCL: Ready=False/InvalidSpec with the parse error, before any request for the
/// connection, and no policy in Vault.
#[tokio::test]
async fn policy_invalid_hcl_is_invalid_spec_and_never_reaches_vault() {
    let vault = root_session().await;
    let ns = "ctl-test";
    let name = unique("bad");
    let obj = policy(ns, &name)
        .with_finalizer()
        .with_rules("path \"secret/*\" {\n  capabilities = [\"read\"\n}\n");
    let (ctx, mut api) = mocked(vec![obj.clone()]);
    let reply = serde_json::to_value(&obj).unwrap();
    let path = policy_path(ns, &name);
    let scenario = tokio::spawn(async move {
        let status = api.expect_status_apply(&path, &reply).await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("InvalidSpec"))
        );
        assert!(
            ready["message"].as_str().unwrap().contains("spec.rules"),
            "{ready}"
        );
        let (type_, reason, note) = api.expect_event(ns).await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "InvalidSpec")
        );
        assert!(note.contains("line"), "{note}");
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(
        scenario,
        policy_ctl::reconcile(Arc::new(obj.clone()), ctx.clone()),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.category(), "invalid_spec");
    assert_eq!(vault.policy_read(&obj.vault_name()).await.unwrap(), None);

    // Failing again the same way: status re-applied (idempotent) but no second Event.
    let mut failed = obj.clone();
    failed.status = Some(certus_controller::policy::failure_status(
        &Default::default(),
        Some(1),
        &obj.vault_name(),
        match &err {
            certus_controller::Error::Reconcile(e) => e,
            other => panic!("{other}"),
        },
        chrono::Utc::now(),
    ));
    let (ctx, mut api) = mocked(vec![failed.clone()]);
    let reply = serde_json::to_value(&failed).unwrap();
    let path = policy_path(ns, &name);
    let scenario = tokio::spawn(async move {
        api.expect_status_apply(&path, &reply).await;
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, policy_ctl::reconcile(Arc::new(failed), ctx)).await;
    assert!(result.is_err());
}

/// Deleting while the connection is gone, within the deletion timeout: Ready=False
/// (Deleting) and a retry bounded by the time left; nothing else.
#[tokio::test]
async fn policy_cleanup_without_connection_retries_within_deadline() {
    let ns = "ctl-test";
    let name = unique("orphan");
    let obj = policy(ns, &name).with_finalizer().deleting(60);
    let (ctx, mut api) = mocked(vec![obj.clone()]);
    let reply = serde_json::to_value(&obj).unwrap();
    let path = policy_path(ns, &name);
    let scenario = tokio::spawn(async move {
        let call = api.next("GET of the VaultConnection").await;
        call.expect(
            Method::GET,
            &format!("/apis/vault.certus.io/v1alpha1/namespaces/{ns}/vaultconnections/default"),
        );
        call.not_found("vaultconnections", "default");
        let status = api.expect_status_apply(&path, &reply).await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("Deleting"))
        );
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("does not exist"),
            "{ready}"
        );
        let (type_, reason, _) = api.expect_event(ns).await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "WaitingForDependency")
        );
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(
        scenario,
        policy_ctl::reconcile(Arc::new(obj.clone()), ctx.clone()),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.category(), "dependency");
    // Retried with backoff (first retry 2.5s..5s), whatever the error class, and
    // never later than the deletion deadline (about 9 minutes left here).
    let delay = certus_controller::backoff::error_requeue(&obj, &err, &ctx, None);
    assert!(
        delay >= Duration::from_millis(2500) && delay <= Duration::from_secs(5),
        "{delay:?}"
    );
    let late = policy(ns, &name).with_finalizer().deleting(10 * 60 - 3);
    for _ in 0..8 {
        let d = certus_controller::backoff::error_requeue(&late, &err, &ctx, None);
        assert!(
            d <= Duration::from_secs(3),
            "capped at the time left: {d:?}"
        );
    }
}

/// Deleting while the connection is gone, past the deletion timeout: a Warning
/// `FinalizerReleased` Event and the finalizer is removed anyway.
#[tokio::test]
async fn policy_cleanup_releases_finalizer_after_deletion_timeout() {
    let ns = "ctl-test";
    let name = unique("stuck");
    let obj = policy(ns, &name).with_finalizer().deleting(11 * 60);
    let vault_name = obj.vault_name();
    let (ctx, mut api) = mocked(vec![obj.clone()]);
    let reply = serde_json::to_value(&obj).unwrap();
    let path = policy_path(ns, &name);
    let scenario = tokio::spawn(async move {
        let call = api.next("GET of the VaultConnection").await;
        call.expect(
            Method::GET,
            &format!("/apis/vault.certus.io/v1alpha1/namespaces/{ns}/vaultconnections/default"),
        );
        call.not_found("vaultconnections", "default");
        let (type_, reason, note) = api.expect_event(ns).await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "FinalizerReleased")
        );
        assert!(
            note.contains(&vault_name) && note.contains("may remain"),
            "{note}"
        );
        let call = api.next("the finalizer-removal PATCH").await;
        call.expect(Method::PATCH, &path);
        assert!(
            call.body.to_string().contains("\"remove\""),
            "{}",
            call.body
        );
        call.reply(200, &reply);
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, policy_ctl::reconcile(Arc::new(obj), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

/// A VaultConnection with a token Secret: checked against the real OpenBao; status
/// Ready/Connected, version, sealed, token policies; a `Connected` Event the first time.
#[tokio::test]
async fn connection_check_reports_vault_health_and_login() {
    let (addr, _) = vault_env();
    let ns = "ctl-test";
    let conn: VaultConnection = serde_json::from_value(json!({
        "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultConnection",
        "metadata": {"name": "default", "namespace": ns, "uid": "conn-uid", "generation": 3},
        "spec": {"address": addr, "auth": {"token": {"secretRef": {"name": "vault-token", "key": "token"}}}}
    }))
    .unwrap();
    let (ctx, mut api) = mocked(vec![]);
    let reply = serde_json::to_value(&conn).unwrap();
    let scenario = tokio::spawn(async move {
        api.serve_token_secret(ns).await;
        let status = api
            .expect_status_apply(
                &format!("/apis/vault.certus.io/v1alpha1/namespaces/{ns}/vaultconnections/default"),
                &reply,
            )
            .await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("True"), Some("Connected")),
            "{status:#}"
        );
        assert_eq!(condition(&status, "Connected")["status"], "True");
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["sealed"], false);
        assert!(!status["vaultVersion"].as_str().unwrap().is_empty());
        assert_eq!(status["tokenPolicies"], json!(["root"]));
        assert!(status["lastChecked"].is_string());
        let (type_, reason, _) = api.expect_event(ns).await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Connected"));
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, connection::reconcile(Arc::new(conn), ctx.clone())).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(RunOptions::default().connection_check_interval)
    );
    assert_eq!(ctx.metrics.reconciles("VaultConnection"), 1);
}

/// A ClusterVaultConnection that does not admit the policy's namespace: NotAllowed.
#[tokio::test]
async fn cluster_connection_must_admit_the_namespace() {
    let ns = "ctl-test";
    let name = unique("cl");
    let obj = policy(ns, &name).with_finalizer().via_cluster("shared");
    let (ctx, mut api) = mocked(vec![obj.clone()]);
    let reply = serde_json::to_value(&obj).unwrap();
    let path = policy_path(ns, &name);
    let scenario = tokio::spawn(async move {
        let call = api.next("GET of the ClusterVaultConnection").await;
        call.expect(
            Method::GET,
            "/apis/vault.certus.io/v1alpha1/clustervaultconnections/shared",
        );
        call.reply(200, &json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "ClusterVaultConnection",
            "metadata": {"name": "shared", "uid": "c"},
            "spec": {"address": "http://127.0.0.1:1", "allowedNamespaces": ["team-a"],
                     "auth": {"token": {"secretRef": {"name": "t", "key": "k", "namespace": "vault"}}}}
        }));
        let status = api.expect_status_apply(&path, &reply).await;
        let ready = condition(&status, "Ready");
        assert_eq!(ready["reason"], "NamespaceNotAllowed");
        assert!(ready["message"]
            .as_str()
            .unwrap()
            .contains("allowedNamespaces"));
        api.expect_event(ns).await;
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, policy_ctl::reconcile(Arc::new(obj), ctx)).await;
    assert_eq!(result.unwrap_err().category(), "not_allowed");
}

/// The deserialize guard end to end through kube's watcher: a LIST with a malformed
/// object, then a watch with another malformed one; the good objects reach the store and
/// the controller stream, the bad ones are counted and skipped.
#[tokio::test]
async fn watch_guard_skips_malformed_objects() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut api = ApiServerVerifier(handle);
    let metrics = Arc::new(certus_controller::Metrics::default());
    let (store, stream) = certus_controller::watch::reflected::<VaultPolicy>(
        "VaultPolicy",
        &client,
        vec![None],
        watcher::Config::default(),
        metrics.clone(),
    );
    let item = |name: &str, rules: Value| {
        json!({"apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultPolicy",
               "metadata": {"name": name, "namespace": "ns", "uid": name, "resourceVersion": "5"},
               "spec": {"rules": rules}})
    };
    let rules = json!("path \"a\" { capabilities = [\"read\"] }");
    let scenario = {
        let (good1, bad1, good2, bad2, good3) = (
            item("good1", rules.clone()),
            item("bad1", json!(42)),
            item("good2", rules.clone()),
            item("bad2", json!(["not", "a", "string"])),
            item("good3", rules.clone()),
        );
        tokio::spawn(async move {
            let call = api.next("the initial LIST").await;
            call.expect(Method::GET, "/apis/vault.certus.io/v1alpha1/vaultpolicies");
            assert!(!call.query.contains("watch=true"), "{}", call.query);
            call.reply(
                200,
                &json!({
                    "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultPolicyList",
                    "metadata": {"resourceVersion": "10"},
                    "items": [good1, bad1]
                }),
            );
            let call = api.next("the WATCH").await;
            call.expect(Method::GET, "/apis/vault.certus.io/v1alpha1/vaultpolicies");
            assert!(call.query.contains("watch=true"), "{}", call.query);
            let lines = [
                json!({"type": "ADDED", "object": good2}),
                json!({"type": "MODIFIED", "object": bad2}),
                json!({"type": "ADDED", "object": good3}),
            ]
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>();
            call.respond.send_response(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(lines.into_bytes()))
                    .unwrap(),
            );
            api
        })
    };
    use futures::StreamExt;
    let names: Vec<String> = tokio::time::timeout(
        RECONCILE_TIMEOUT,
        stream
            .take(3)
            .map(|r| r.expect("no watch error").name_any())
            .collect::<Vec<_>>(),
    )
    .await
    .expect("three good objects flow through within the timeout");
    let _api = scenario.await.unwrap();
    assert_eq!(names, ["good1", "good2", "good3"]);
    let mut in_store: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
    in_store.sort();
    assert_eq!(in_store, ["good1", "good2", "good3"]);
    assert_eq!(metrics.decode_errors("VaultPolicy"), 2);
}

/// `KubeResolver`: Secret keys through GET (missing Secret or key → `None`), and
/// ServiceAccount JWTs through the TokenRequest API with the requested audiences and a
/// 600s lifetime.
#[tokio::test]
async fn kube_resolver_reads_secrets_and_requests_service_account_tokens() {
    use certus_reconcile::Resolver;
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let resolver = certus_controller::KubeResolver::new(Client::new(service, "default"));
    let mut api = ApiServerVerifier(handle);
    let scenario = tokio::spawn(async move {
        let call = api.next("GET of a missing Secret").await;
        call.expect(Method::GET, "/api/v1/namespaces/apps/secrets/nope");
        call.not_found("secrets", "nope");

        let call = api.next("GET of a Secret").await;
        call.expect(Method::GET, "/api/v1/namespaces/apps/secrets/creds");
        let mut secret = Secret::default();
        secret.metadata.name = Some("creds".into());
        secret.data = Some([("secret-id".to_string(), ByteString(b"s3cr3t".to_vec()))].into());
        let mut body = serde_json::to_value(&secret).unwrap();
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Secret");
        call.reply(200, &body.clone());
        let call = api.next("GET of the same Secret").await;
        call.reply(200, &body);

        let call = api.next("the TokenRequest").await;
        call.expect(
            Method::POST,
            "/api/v1/namespaces/vault-auth/serviceaccounts/operator/token",
        );
        assert_eq!(call.body["spec"]["audiences"], json!(["vault", "other"]));
        assert_eq!(call.body["spec"]["expirationSeconds"], 600);
        let mut response = call.body.clone();
        response["status"] =
            json!({"token": "eyJhbGciOi.jwt", "expirationTimestamp": "2030-01-01T00:00:00Z"});
        call.reply(201, &response);

        let call = api.next("a refused TokenRequest").await;
        call.expect(
            Method::POST,
            "/api/v1/namespaces/vault-auth/serviceaccounts/operator/token",
        );
        call.reply(403, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden", "message": "cannot create resource serviceaccounts/token"}));
        api
    });
    let work = async {
        assert!(resolver
            .secret_value("apps", "nope", "k")
            .await
            .unwrap()
            .is_none());
        let v = resolver
            .secret_value("apps", "creds", "secret-id")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.expose(), "s3cr3t");
        assert_eq!(format!("{v:?}"), "[redacted]");
        assert!(resolver
            .secret_value("apps", "creds", "other-key")
            .await
            .unwrap()
            .is_none());
        let jwt = resolver
            .service_account_jwt(
                "vault-auth",
                "operator",
                vec!["vault".into(), "other".into()],
            )
            .unwrap();
        assert_eq!(jwt().await.unwrap().expose(), "eyJhbGciOi.jwt");
        let err = jwt().await.unwrap_err();
        assert_eq!(err.class, certus_vault_client::ErrorClass::PermissionDenied);
        assert!(err.to_string().contains("serviceaccounts/token"), "{err}");
    };
    let _ = drive(scenario, work).await;
}
