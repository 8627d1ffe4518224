//! Tier 2: the DynamicCredential controller's reconcile against a mocked Kubernetes API
//! (method, URI and body of every request asserted, in order) and the REAL OpenBao
//! (VAULT_ADDR / VAULT_TOKEN from `hack/services-up.sh`): issue → Secret server-side
//! applied with an owner reference and the lease state → status with a hashed lease id →
//! Event; a resync writes nothing; deletion revokes the credential and removes the
//! Secret before the finalizer is released.

mod common;
use common::ApiServerVerifier as Api;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use certus_api::{DynamicCredential, VaultPolicy, FINALIZER};
use certus_controller::{dynamic as dyn_ctl, Context, RunOptions};
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::{reflector, watcher};
use kube::Client;
use serde_json::json;
use tokio::task::JoinHandle;
use tower_test::mock::{self};

const RECONCILE_TIMEOUT: Duration = Duration::from_secs(20);

impl Call {
    fn not_found(self) {
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404});
        self.reply(404, &body);
    }
}

impl Api {
    async fn serve_connection(&mut self, ns: &str) {
        let (addr, token) = vault_env();
        let call = self.next("GET of the VaultConnection").await;
        call.expect(
            Method::GET,
            &format!("/apis/vault.certus.io/v1alpha1/namespaces/{ns}/vaultconnections/default"),
        );
        call.reply(200, &json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultConnection",
            "metadata": {"name": "default", "namespace": ns, "uid": "conn-uid", "generation": 1},
            "spec": {"address": addr, "auth": {"token": {"secretRef": {"name": "vault-token", "key": "token"}}}}
        }));
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
    async fn expect_event(&mut self, ns: &str) -> (String, String, String) {
        let call = self.next("an Event POST").await;
        call.expect(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
        );
        let e = call.body.clone();
        call.reply(201, &e);
        (
            e["type"].as_str().unwrap_or_default().into(),
            e["reason"].as_str().unwrap_or_default().into(),
            e["note"].as_str().unwrap_or_default().into(),
        )
    }
}

fn mocked() -> (Arc<Context>, Api) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (reader, mut writer) = reflector::store::<VaultPolicy>();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (
        Arc::new(Context::new(client, RunOptions::default(), reader)),
        Api(handle),
    )
}

async fn drive<T: Send + 'static>(
    scenario: JoinHandle<Api>,
    reconcile: impl std::future::Future<Output = T>,
) -> (T, Api) {
    let (result, api) = tokio::join!(tokio::time::timeout(RECONCILE_TIMEOUT, reconcile), scenario);
    let api = match api {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("scenario failed: {e}"),
    };
    (
        result.unwrap_or_else(|_| panic!("reconcile did not finish within {RECONCILE_TIMEOUT:?}")),
        api,
    )
}

fn credential(ns: &str, name: &str, policy: &str) -> DynamicCredential {
    serde_json::from_value(json!({
        "apiVersion": "vault.certus.io/v1alpha1", "kind": "DynamicCredential",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": 1,
                     "resourceVersion": "1", "finalizers": [FINALIZER]},
        "spec": {"path": "auth/token/create", "parameters": {"policies": [policy], "ttl": "10m", "no_default_policy": true},
                 "secret": {"data": {"VAULT_TOKEN": "{{ token }}"}}}
    }))
    .unwrap()
}

fn b64_decode(s: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = vec![];
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        buf = (buf << 6) | T.iter().position(|x| *x == c).expect("base64") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn issues_into_an_owned_secret_then_resyncs_quietly_then_revokes_on_deletion() {
    let vault = root_session().await;
    let ns = "dyn-test";
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("agent-{}-{nanos}", std::process::id());
    let policy = format!("dyn-ctl-{nanos}");
    vault
        .policy_write(
            &policy,
            "path \"secret/data/agents/*\" { capabilities = [\"read\"] }",
        )
        .await
        .unwrap();
    let obj = credential(ns, &name, &policy);
    let obj_path =
        format!("/apis/vault.certus.io/v1alpha1/namespaces/{ns}/dynamiccredentials/{name}");
    let secret_path = format!("/api/v1/namespaces/{ns}/secrets/{name}");

    // 1. First reconcile: issue, write the owned Secret, status, Event.
    let (ctx, mut api) = mocked();
    let (reply, sp, op, n) = (
        serde_json::to_value(&obj).unwrap(),
        secret_path.clone(),
        obj_path.clone(),
        name.clone(),
    );
    let scenario = tokio::spawn(async move {
        api.serve_connection(ns).await;
        let call = api.next("GET of the projected Secret").await;
        call.expect(Method::GET, &sp);
        call.not_found();
        let call = api.next("the Secret apply").await;
        call.expect(Method::PATCH, &sp);
        assert_eq!(
            call.content_type, "application/apply-patch+yaml",
            "the Secret is server-side applied"
        );
        assert!(
            call.query.contains("fieldManager=certus-vault-operator")
                && call.query.contains("force=true"),
            "{}",
            call.query
        );
        let body = call.body.clone();
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["name"].as_str(),
                owner["controller"].as_bool()
            ),
            (Some("DynamicCredential"), Some(n.as_str()), Some(true))
        );
        assert_eq!(owner["uid"], format!("uid-{n}"));
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "certus-vault-operator"
        );
        let state = body["metadata"]["annotations"]["vault.certus.io/lease-state"]
            .as_str()
            .expect("lease state annotation")
            .to_string();
        assert!(state.contains("\"kind\":\"token\""), "{state}");
        let mut applied = body.clone();
        applied["metadata"]["resourceVersion"] = json!("7");
        call.reply(200, &applied);
        let call = api.next("the status PATCH").await;
        call.expect(Method::PATCH, &format!("{op}/status"));
        assert_eq!(call.content_type, "application/apply-patch+yaml");
        let status = call.body["status"].clone();
        let mut r = reply.clone();
        r["status"] = status.clone();
        call.reply(200, &r);
        let ready = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("True"), Some("Reconciled"))
        );
        assert_eq!(status["leaseKind"], "token");
        assert_eq!(status["leaseDurationSeconds"], 600);
        assert_eq!(status["leaseIdHash"].as_str().map(str::len), Some(16));
        assert!(
            status["nextRenewalAt"].is_string() && status["expiresAt"].is_string(),
            "{status:#}"
        );
        let (type_, reason, note) = api.expect_event(ns).await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Issued"));
        assert!(!note.contains(&state), "{note}");
        api.expect_no_more(Duration::from_millis(300)).await;
        (api, applied, status)
    });
    let (scenario_out, result) = {
        let (r, s) = tokio::join!(
            tokio::time::timeout(
                RECONCILE_TIMEOUT,
                dyn_ctl::reconcile(Arc::new(obj.clone()), ctx.clone())
            ),
            scenario
        );
        (
            s.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
            r.expect("reconcile finished"),
        )
    };
    let (_, applied, status) = scenario_out;
    let action = result.unwrap();
    assert_eq!(
        action,
        Action::requeue(RunOptions::default().resync_interval),
        "a 10m token is renewed after 5m+, so the resync comes first"
    );
    let token =
        String::from_utf8(b64_decode(applied["data"]["VAULT_TOKEN"].as_str().unwrap())).unwrap();
    let info = vault
        .write("auth/token/lookup", &json!({"token": token}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info["data"]["policies"], json!([policy]));
    assert!(ctx
        .metrics
        .dynamic
        .expiry_seconds(ns, &name)
        .is_some_and(|s| s > 500));

    // 2. A resync: the Secret holds the credential, nothing is written, no Event.
    let mut synced = obj.clone();
    synced.status = Some(serde_json::from_value(status).unwrap());
    let (ctx2, mut api) = mocked();
    let (sp, secret_body) = (secret_path.clone(), applied.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection(ns).await;
        let call = api.next("GET of the projected Secret").await;
        call.expect(Method::GET, &sp);
        call.reply(200, &secret_body);
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(
        scenario,
        dyn_ctl::reconcile(Arc::new(synced.clone()), ctx2.clone()),
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(
        ctx2.sessions.stats().snapshot().writes,
        0,
        "a current credential makes no Vault write"
    );

    // 3. Deletion: the credential is revoked, the Secret deleted, then the finalizer removed.
    let mut deleting = synced.clone();
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let (ctx3, mut api) = mocked();
    let (sp, op, secret_body) = (secret_path.clone(), obj_path.clone(), applied.clone());
    let mut released = serde_json::to_value(&deleting).unwrap();
    released["metadata"]["finalizers"] = json!([]);
    let scenario = tokio::spawn(async move {
        api.serve_connection(ns).await;
        let call = api.next("GET of the projected Secret").await;
        call.expect(Method::GET, &sp);
        call.reply(200, &secret_body);
        let call = api.next("DELETE of the projected Secret").await;
        call.expect(Method::DELETE, &sp);
        call.reply(
            200,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
        let (type_, reason, _) = api.expect_event(ns).await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Revoked"));
        let call = api.next("the finalizer-removal PATCH").await;
        call.expect(Method::PATCH, &op);
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
    let (result, _) = drive(
        scenario,
        dyn_ctl::reconcile(Arc::new(deleting), ctx3.clone()),
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        vault
            .write("auth/token/lookup", &json!({"token": token}))
            .await
            .is_err(),
        "the token is revoked"
    );
    assert_eq!(ctx3.metrics.dynamic.counts().2, 1, "one revocation counted");
    vault.policy_delete(&policy).await.unwrap();
}
