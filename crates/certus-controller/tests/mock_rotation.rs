//! Tier 2: the StaticSecret and RotationPolicy reconcile functions against a mocked
//! Kubernetes API (every request's method, path and body asserted, in order, with short
//! timeouts) and the REAL OpenBao started by `hack/services-up.sh` (VAULT_ADDR /
//! VAULT_TOKEN).

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use certus_api::{RotationPolicy, StaticSecret, VaultPolicy};
use certus_controller::{rotation, static_secret, Context, RunOptions};
use certus_vault_client::VaultSession;
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self};

async fn kv2(v: &VaultSession, mount: &str) {
    v.write(
        &format!("sys/mounts/{mount}"),
        &json!({"type": "kv", "options": {"version": "2"}}),
    )
    .await
    .unwrap();
}

const NS: &str = "ctl-rot";
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(20);

impl Call {
    fn not_found(self) {
        self.reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "not found", "reason": "NotFound", "code": 404}),
        );
    }
    fn assert_server_side_apply(&self) {
        assert_eq!(self.content_type, "application/apply-patch+yaml");
        assert!(
            self.query.contains("fieldManager=certus-vault-operator")
                && self.query.contains("force=true"),
            "query: {}",
            self.query
        );
    }
}

impl ApiServerVerifier {
    /// The `default` VaultConnection and its token Secret (resolved on every reconcile).
    async fn serve_connection(&mut self) {
        let (addr, token) = vault_env();
        let call = self.next("GET of the VaultConnection").await;
        call.expect(
            Method::GET,
            &format!("/apis/vault.certus.io/v1alpha1/namespaces/{NS}/vaultconnections/default"),
        );
        call.reply(
            200,
            &json!({
                "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultConnection",
                "metadata": {"name": "default", "namespace": NS, "uid": "conn-uid", "generation": 1},
                "spec": {"address": addr, "auth": {"token": {"secretRef": {"name": "vault-token", "key": "token"}}}}
            }),
        );
        let call = self.next("GET of the token Secret").await;
        call.expect(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/secrets/vault-token"),
        );
        let mut secret = Secret::default();
        secret.metadata.name = Some("vault-token".into());
        secret.metadata.namespace = Some(NS.into());
        secret.data = Some([("token".to_string(), ByteString(token.into_bytes()))].into());
        let mut body = serde_json::to_value(&secret).unwrap();
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Secret");
        call.reply(200, &body);
    }

    async fn expect_status_apply(&mut self, path: &str, obj: &Value) -> Value {
        let call = self.next("the status PATCH").await;
        call.expect(Method::PATCH, &format!("{path}/status"));
        call.assert_server_side_apply();
        let status = call.body["status"].clone();
        let mut reply = obj.clone();
        reply["status"] = status.clone();
        call.reply(200, &reply);
        status
    }

    async fn expect_event(&mut self) -> (String, String, String) {
        let call = self.next("an Event POST").await;
        call.expect(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
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

fn mocked() -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (reader, mut writer) = reflector::store::<VaultPolicy>();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Context::new(client, RunOptions::default(), reader);
    (Arc::new(ctx), ApiServerVerifier(handle))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
}

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

fn with_meta<K: kube::Resource>(mut k: K, name: &str) -> K {
    let m = k.meta_mut();
    m.namespace = Some(NS.into());
    m.uid = Some(format!("uid-{name}"));
    m.generation = Some(1);
    m.resource_version = Some("1".into());
    k
}

fn b64(s: &str) -> String {
    certus_core::rotation::base64_std(s.as_bytes())
}

/// A StaticSecret's first reconcile writes an owned Secret (server-side apply), Ready
/// status and a `Created` Event, and requeues at the refresh interval; the next one finds
/// the Secret current: no Secret write, no Event.
#[tokio::test]
async fn static_secret_writes_an_owned_secret_then_refreshes_quietly() {
    let vault = root_session().await;
    let mount = unique("ctlkv");
    kv2(&vault, &mount).await;
    vault
        .write(
            &format!("{mount}/data/prod/openai"),
            &json!({"data": {"api_key": "sk-1"}}),
        )
        .await
        .unwrap();
    let name = "openai";
    let obj: StaticSecret = with_meta(
        StaticSecret::new(
            name,
            serde_json::from_value(
                json!({"mount": mount, "path": "prod/openai", "refreshInterval": "30s",
                "secret": {"name": "openai-key", "data": {"OPENAI_API_KEY": "{{ api_key }}"}}}),
            )
            .unwrap(),
        ),
        name,
    );
    let path = format!("/apis/vault.certus.io/v1alpha1/namespaces/{NS}/staticsecrets/{name}");
    let secret_path = format!("/api/v1/namespaces/{NS}/secrets/openai-key");

    let (ctx, mut api) = mocked();
    let reply = serde_json::to_value(&obj).unwrap();
    let (p, sp) = (path.clone(), secret_path.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        api.next("GET of the projected Secret").await.not_found();
        let call = api.next("the Secret PATCH").await;
        call.expect(Method::PATCH, &sp);
        call.assert_server_side_apply();
        let b = call.body.clone();
        assert_eq!(b["kind"], "Secret");
        assert_eq!(b["data"]["OPENAI_API_KEY"], b64("sk-1"));
        let owner = &b["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["uid"].as_str(),
                owner["controller"].as_bool()
            ),
            (Some("StaticSecret"), Some("uid-openai"), Some(true))
        );
        assert_eq!(
            b["metadata"]["annotations"]["vault.certus.io/synced-version"],
            "1"
        );
        assert_eq!(
            b["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "certus-vault-operator"
        );
        call.reply(200, &b);
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(condition(&status, "Ready")["status"], "True", "{status:#}");
        assert_eq!(status["syncedVersion"], 1);
        assert_eq!(status["secretName"], "openai-key");
        assert!(status["dataHash"].as_str().is_some_and(|h| h.len() == 16));
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Normal", "Created"),
            "{note}"
        );
        assert!(!note.contains("sk-1"), "Events never carry values: {note}");
        api.expect_no_more(Duration::from_millis(300)).await;
        (api, b, status)
    });
    let (result, verifier) = tokio::join!(
        tokio::time::timeout(
            RECONCILE_TIMEOUT,
            static_secret::reconcile(Arc::new(obj.clone()), ctx.clone())
        ),
        scenario
    );
    let (_, written, status) = verifier.unwrap();
    assert_eq!(
        result.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(30))
    );

    // The refresh: the Secret is current, so only the status (lastSyncTime) is written.
    let mut synced = obj.clone();
    synced.status = Some(serde_json::from_value(status).unwrap());
    let (ctx, mut api) = mocked();
    let reply = serde_json::to_value(&synced).unwrap();
    let (p, sp) = (path.clone(), secret_path.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let call = api.next("GET of the projected Secret").await;
        call.expect(Method::GET, &sp);
        let mut live = written.clone();
        live["apiVersion"] = json!("v1");
        call.reply(200, &live);
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(condition(&status, "Ready")["status"], "True");
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, static_secret::reconcile(Arc::new(synced), ctx)).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
    let _ = vault.delete(&format!("sys/mounts/{mount}")).await;
}

/// A manual policy older than its interval: `RotationDue=True` (Overdue), a Warning
/// Event, `certus_rotation_due` = 1, nothing written to Vault or to Secrets.
#[tokio::test]
async fn manual_rotation_due_raises_condition_event_and_metric() {
    let vault = root_session().await;
    let mount = unique("ctlkv");
    kv2(&vault, &mount).await;
    vault
        .write(
            &format!("{mount}/data/vendor"),
            &json!({"data": {"key": "from-the-vendor"}}),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let name = "vendor";
    let obj: RotationPolicy = with_meta(
        RotationPolicy::new(
            name,
            serde_json::from_value(
                json!({"interval": "1s", "manual": {"mount": mount, "path": "vendor"}}),
            )
            .unwrap(),
        ),
        name,
    );
    let path = format!("/apis/vault.certus.io/v1alpha1/namespaces/{NS}/rotationpolicies/{name}");
    let target = format!("manual:{mount}/vendor");
    let (ctx, mut api) = mocked();
    let reply = serde_json::to_value(&obj).unwrap();
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let status = api.expect_status_apply(&path, &reply).await;
        let due = condition(&status, "RotationDue");
        assert_eq!(
            (due["status"].as_str(), due["reason"].as_str()),
            (Some("True"), Some("Overdue")),
            "{status:#}"
        );
        assert_eq!(condition(&status, "Ready")["status"], "True");
        assert_eq!(status["target"], target);
        assert_eq!(status["when"], "1s");
        assert_eq!(status["currentVersion"], 1);
        let (type_, reason, _) = api.expect_event().await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "RotationDue")
        );
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, rotation::reconcile(Arc::new(obj), ctx.clone())).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    assert_eq!(ctx.metrics.rotation.due(NS, name), Some(1));
    let kv = vault
        .read(&format!("{mount}/data/vendor"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv["data"]["metadata"]["version"], 1);
    let _ = vault.delete(&format!("sys/mounts/{mount}")).await;
}

/// A KV rotation on a fresh path initializes it, writes the owned Secret, records the
/// rotation in status (history, currentVersion, nextRotation) and publishes `Rotated`.
#[tokio::test]
async fn kv_rotation_initializes_and_records_history() {
    let vault = root_session().await;
    let mount = unique("ctlkv");
    kv2(&vault, &mount).await;
    let name = "mcp";
    let obj: RotationPolicy = with_meta(
        RotationPolicy::new(
            name,
            serde_json::from_value(json!({"interval": "7d", "gracePeriod": "24h",
                "kv": {"mount": mount, "path": "mcp/assurance", "keepPrevious": "ValidTokens",
                       "keys": [{"key": "server_token", "token": {}}], "secret": {"name": "mcp-token"}}}))
            .unwrap(),
        ),
        name,
    );
    let path = format!("/apis/vault.certus.io/v1alpha1/namespaces/{NS}/rotationpolicies/{name}");
    let (ctx, mut api) = mocked();
    let reply = serde_json::to_value(&obj).unwrap();
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let call = api.next("the Secret PATCH").await;
        call.expect(
            Method::PATCH,
            &format!("/api/v1/namespaces/{NS}/secrets/mcp-token"),
        );
        call.assert_server_side_apply();
        let b = call.body.clone();
        assert_eq!(
            b["metadata"]["ownerReferences"][0]["kind"],
            "RotationPolicy"
        );
        assert!(b["data"]["server_token"].is_string() && b["data"]["valid_tokens"].is_string());
        call.reply(200, &b);
        let status = api.expect_status_apply(&path, &reply).await;
        assert_eq!(
            condition(&status, "Ready")["reason"],
            "Rotated",
            "{status:#}"
        );
        assert_eq!(status["currentVersion"], 1);
        assert_eq!(status["history"][0]["outcome"], "Succeeded");
        assert_eq!(status["history"][0]["version"], 1);
        assert!(status["nextRotation"].is_string() && status["lastRotated"].is_string());
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Normal", "Rotated"),
            "{note}"
        );
        api.expect_no_more(Duration::from_millis(300)).await;
        api
    });
    let (result, _) = drive(scenario, rotation::reconcile(Arc::new(obj), ctx.clone())).await;
    // Requeued at most MAX_REQUEUE (the next rotation is a week away).
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    assert_eq!(ctx.metrics.rotation.due(NS, name), Some(0));
    let kv = vault
        .read(&format!("{mount}/data/mcp/assurance"))
        .await
        .unwrap()
        .unwrap();
    let token = kv["data"]["data"]["server_token"].as_str().unwrap();
    assert_eq!(kv["data"]["data"]["valid_tokens"], json!([token]));
    let _ = vault.delete(&format!("sys/mounts/{mount}")).await;
}
