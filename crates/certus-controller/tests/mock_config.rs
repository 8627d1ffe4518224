//! Tier 2 for the SecretEngine, AuthMethod and VaultRole controllers (`config`, `role`):
//! the generic reconcile against a mocked Kubernetes API (every request's method, URI
//! and body asserted, in order, with short timeouts) and the REAL OpenBao started by
//! `hack/services-up.sh` (VAULT_ADDR / VAULT_TOKEN). Without VAULT_ADDR the Vault-backed
//! tests fail with a message saying how to start it; they are never skipped.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use certus_api::{AuthMethod, SecretEngine, VaultObjectStatus, VaultPolicy, VaultRole, FINALIZER};
use certus_controller::config::{self as config_ctl, ConfigKind};
use certus_controller::{Context, RunOptions};
use certus_vault_client::VaultSession;
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::{reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self};

const NS: &str = "ctl-config";

/// A throwaway self-signed CA certificate (CN=test-k8s-ca) used as the Kubernetes API CA
/// of Kubernetes auth methods (OpenBao outside a pod refuses a config without one).
const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDDTCCAfWgAwIBAgIUcdGyTedGBIA2JmD8DrMrlNK+d90wDQYJKoZIhvcNAQEL\n\
BQAwFjEUMBIGA1UEAwwLdGVzdC1rOHMtY2EwHhcNMjYxMjA0MjAyMDEyWhcNMzYx\n\
MjAxMjAyMDEyWjAWMRQwEgYDVQQDDAt0ZXN0LWs4cy1jYTCCASIwDQYJKoZIhvcN\n\
AQEBBQADggEPADCCAQoCggEBAOLKuSAjv70kSCoOFNSAmFxrgL+0hjP17pske7Zq\n\
b258ZD8EQue09hchv2++Ng7OaZ+kwA7gKrnGUd9nvC6wwPC8yFNiw/dJk6M5MdwB\n\
73009fHrBlTBrd8R3fb8R7RbQqYIKwTaoZSPmRdIFLktcyMmXwpbMz1bpwnnpzQC\n\
bEgZ9/509YEFNfKtZzo4rRFdG1PXHceYBRRQ+2jCmkod69L/S3zVfQdx89TKv8op\n\
xV0kmavUmehTgHyY5WlEO2rIJKNjXJKtYwuvSdY8qb80kx0E2UWuYXs9+jG7VTsZ\n\
ihrK4nUm0s2Sl93DybqehW6m8YrLp+78qz3mxeU8XbXq6VECAwEAAaNTMFEwHQYD\n\
VR0OBBYEFP7GJNGVifbQ+8HWZjwqFkq8eA+EMB8GA1UdIwQYMBaAFP7GJNGVifbQ\n\
+8HWZjwqFkq8eA+EMA8GA1UdEwEB/wQFMAMBAf8wDQYJKoZIhvcNAQELBQADggEB\n\
AIywuMkBqez3LRcR6tRntWJ9cWfVT4UEFvvC2jA8R2bDjIinc5QxQb1Hug57vIpw\n\
7ETlyUoQ8hN7P2DD7cm3upYY0YTO/YfrgWGF5nKTaaFkpDVngbQLnnlVe3kbm1Pf\n\
0SzUyAa8weiogfWMu5IzZA8ddOd9C75mkR2VrLYdGur7kcDfjQtd/K8+T6/3i9SZ\n\
1PAFp6Gv8b6mdbE+kCQQJ8N0YynM9gF2l0SAqMDHFx2EzCOzacRkaXZS+SiOs2T3\n\
IBlF5rR2yiX89RtfDtWeWrJqyr3ps2oMS/ovQvSc78WnI7a6/8m4dUeCHfA0xUp0\n\
XtMON/3bfadMA+kl7M6Gu2M=\n\
-----END CERTIFICATE-----\n\
";

// ---------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// ApiServerVerifier: a scripted fake API server (as in mock_api.rs)
// ---------------------------------------------------------------------------------------

const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(300);

impl Call {
    fn not_found(self, kind: &str, name: &str) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{kind} {name:?} not found"), "reason": "NotFound", "code": 404
        });
        self.reply(404, &body);
    }
}

fn secret_json(name: &str, data: &[(&str, &str)]) -> Value {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(NS.into());
    secret.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    let mut body = serde_json::to_value(&secret).unwrap();
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Secret");
    body
}

impl ApiServerVerifier {
    /// The `default` VaultConnection (token auth against the real OpenBao) and its token
    /// Secret: the two reads every reconcile that talks to Vault starts with.
    async fn serve_connection(&mut self) {
        let (addr, token) = vault_env();
        let call = self.next("GET of the VaultConnection").await;
        call.expect(
            Method::GET,
            &format!("/apis/vault.certus.io/v1alpha1/namespaces/{NS}/vaultconnections/default"),
        );
        call.reply(200, &json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultConnection",
            "metadata": {"name": "default", "namespace": NS, "uid": "conn-uid", "generation": 1},
            "spec": {"address": addr, "auth": {"token": {"secretRef": {"name": "vault-token", "key": "token"}}}}
        }));
        let call = self.next("GET of the token Secret").await;
        call.expect(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/secrets/vault-token"),
        );
        call.reply(200, &secret_json("vault-token", &[("token", &token)]));
    }

    /// Asserts the finalizer-adding JSON patch of a new object.
    async fn expect_finalizer_added(&mut self, path: &str, reply: &Value) {
        let call = self.next("the finalizer PATCH").await;
        call.expect(Method::PATCH, path);
        assert_eq!(call.content_type, "application/json-patch+json");
        let ops = call.body.as_array().expect("a JSON patch").clone();
        assert!(
            ops.contains(
                &json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
            ),
            "finalizer patch: {ops:?}"
        );
        call.reply(200, reply);
    }

    /// Asserts the finalizer-removing JSON patch of a deleted object.
    async fn expect_finalizer_removed(&mut self, path: &str, reply: &Value) {
        let call = self.next("the finalizer-removal PATCH").await;
        call.expect(Method::PATCH, path);
        assert_eq!(call.content_type, "application/json-patch+json");
        assert_eq!(
            call.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"}
            ])
        );
        let mut released = reply.clone();
        released["metadata"]["finalizers"] = json!([]);
        call.reply(200, &released);
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
        assert_eq!(call.body["kind"], obj["kind"]);
        let status = call.body["status"].clone();
        let mut reply = obj.clone();
        reply["status"] = status.clone();
        call.reply(200, &reply);
        status
    }

    /// Asserts an Event was created; returns (type, reason, note).
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

/// A context whose client talks to a fresh `ApiServerVerifier`; `policies` fill the
/// VaultPolicy store `policyRefs` are resolved from.
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

/// Runs `reconcile` against the scripted server; the scenario's panics surface first.
async fn drive<T: Send + 'static, R>(
    scenario: JoinHandle<(ApiServerVerifier, R)>,
    reconcile: impl std::future::Future<Output = T>,
) -> (T, R) {
    let (result, scenario) =
        tokio::join!(tokio::time::timeout(RECONCILE_TIMEOUT, reconcile), scenario);
    let (_, out) = match scenario {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("scenario failed: {e}"),
    };
    let result = result.unwrap_or_else(|_| {
        panic!("reconcile did not finish within {RECONCILE_TIMEOUT:?} (a request went unanswered?)")
    });
    (result, out)
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
}

fn ready_of(status: &Value) -> (String, String, String) {
    let r = condition(status, "Ready");
    (
        r["status"].as_str().unwrap_or_default().into(),
        r["reason"].as_str().unwrap_or_default().into(),
        r["message"].as_str().unwrap_or_default().into(),
    )
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// An object of kind `K` in [`NS`] from a spec, with a uid, generation 1 and timestamps.
fn object<K>(name: &str, spec: Value) -> K
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    serde_json::from_value(json!({
        "apiVersion": "vault.certus.io/v1alpha1",
        "kind": K::kind(&()),
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "generation": 1, "resourceVersion": "1",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }))
    .unwrap()
}

fn with_finalizer<K: Resource>(mut o: K) -> K {
    o.meta_mut()
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(FINALIZER.to_string());
    o
}

fn deleting<K: Resource>(mut o: K, secs_ago: i64) -> K {
    let now = Timestamp::now().as_second();
    o.meta_mut().deletion_timestamp = Some(Time(Timestamp::from_second(now - secs_ago).unwrap()));
    o
}

fn with_status<K: ConfigKind>(o: &K, status: &Value) -> K {
    let mut v = serde_json::to_value(o).unwrap();
    v["status"] = status.clone();
    serde_json::from_value(v).unwrap()
}

fn to_json<K: Serialize>(o: &K) -> Value {
    serde_json::to_value(o).unwrap()
}

fn path_of<K: Resource<DynamicType = ()>>(name: &str) -> String {
    format!(
        "/apis/vault.certus.io/v1alpha1/namespaces/{NS}/{}/{name}",
        K::plural(&())
    )
}

fn kubernetes_auth(name: &str, path: &str) -> AuthMethod {
    object(
        name,
        json!({"path": path, "type": "kubernetes",
               "kubernetes": {"kubernetesHost": "https://kubernetes.default.svc:443",
                              "kubernetesCACert": TEST_CA_PEM}}),
    )
}

/// The `data` of a Vault read, or `None` when absent.
async fn vault_data(vault: &VaultSession, path: &str) -> Option<Value> {
    vault
        .read(path)
        .await
        .unwrap()
        .map(|v| v.get("data").cloned().unwrap_or(Value::Null))
}

async fn mounts(vault: &VaultSession, table: &str) -> Value {
    vault.read(table).await.unwrap().unwrap()["data"].clone()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// SecretEngine (kv-v2): the first reconcile only adds the finalizer; the next resolves
/// the connection, mounts and configures the engine in OpenBao, applies Ready status
/// (vaultPath, appliedHash) and publishes `Created`; a resync writes nothing; an
/// out-of-band edit is written back with a Warning `Drifted`; deleting it (default
/// `deletionPolicy: Retain`) only removes the finalizer and keeps the mount.
#[tokio::test]
async fn secret_engine_lifecycle_with_drift_and_retain() {
    let vault = root_session().await;
    let name = unique("kv");
    let mount = name.clone();
    let path = path_of::<SecretEngine>(&name);
    let obj: SecretEngine = object(
        &name,
        json!({"path": mount, "type": "kv-v2", "description": "controller test",
               "kv": {"maxVersions": 5}}),
    );

    // 1. No finalizer yet: only the finalizer is added, nothing reaches Vault.
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&with_finalizer(obj.clone()));
    let p = path.clone();
    let scenario = tokio::spawn(async move {
        api.expect_finalizer_added(&p, &reply).await;
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(obj.clone()), ctx.clone()),
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        mounts(&vault, "sys/mounts").await[format!("{mount}/")].is_null(),
        "nothing mounted before the finalizer is in place"
    );

    // 2. With the finalizer: mounted and configured, status applied, `Created`.
    let obj = with_finalizer(obj);
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&obj);
    let (p, m) = (path.clone(), mount.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(
            ready_of(&status),
            (
                "True".into(),
                "Reconciled".into(),
                format!("sys/mounts/{m} matches the spec")
            )
        );
        assert_eq!(condition(&status, "Ready")["observedGeneration"], 1);
        let drifted = condition(&status, "Drifted");
        assert_eq!(
            (drifted["status"].as_str(), drifted["reason"].as_str()),
            (Some("False"), Some("InSync"))
        );
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["vaultPath"], format!("sys/mounts/{m}"));
        assert_eq!(
            status["appliedHash"].as_str().map(str::len),
            Some(16),
            "{status:#}"
        );
        assert!(status["lastSynced"].is_string());
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Created"));
        assert!(
            note.contains(&format!("create sys/mounts/{m}"))
                && note.contains(&format!("{m}/config")),
            "{note}"
        );
        api.expect_no_more(QUIET).await;
        (api, status)
    });
    let (result, status) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(obj.clone()), ctx.clone()),
    )
    .await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(RunOptions::default().resync_interval)
    );
    assert_eq!(ctx.metrics.reconciles("SecretEngine"), 1);
    let entry = mounts(&vault, "sys/mounts").await[format!("{mount}/")].clone();
    assert_eq!(entry["type"], "kv", "{entry:#}");
    assert_eq!(entry["options"]["version"], "2", "{entry:#}");
    assert_eq!(entry["description"], "controller test");
    let cfg = vault_data(&vault, &format!("{mount}/config"))
        .await
        .unwrap();
    assert_eq!(cfg["max_versions"], 5);

    // 3. Resync with the recorded status and Vault unchanged: zero writes, no Event.
    let synced = with_status(&obj, &status);
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&synced);
    let p = path.clone();
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(ready_of(&status).1, "Reconciled");
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(synced.clone()), ctx.clone()),
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(
        ctx.sessions.stats().snapshot().writes,
        0,
        "an unchanged engine is not rewritten"
    );

    // 4. Out-of-band edit: corrected, Drifted=True, a Warning `Drifted` Event.
    vault
        .write(&format!("{mount}/config"), &json!({"max_versions": 1}))
        .await
        .unwrap();
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&synced);
    let (p, m) = (path.clone(), mount.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(
            ready_of(&status).0,
            "True",
            "corrected drift is in sync: {status:#}"
        );
        assert_eq!(ready_of(&status).1, "DriftCorrected");
        let drifted = condition(&status, "Drifted");
        assert_eq!(drifted["status"], "True");
        assert!(
            drifted["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{m}/config")),
            "{drifted}"
        );
        assert!(status["lastDrift"].is_string());
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "Drifted"));
        assert!(note.contains("written back"), "{note}");
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(synced.clone()), ctx.clone()),
    )
    .await;
    assert!(result.is_ok());
    let cfg = vault_data(&vault, &format!("{mount}/config"))
        .await
        .unwrap();
    assert_eq!(cfg["max_versions"], 5, "the drift was written back");

    // 5. Deleted with the default deletionPolicy Retain: the finalizer is released at
    //    once, without resolving the connection, and the mount stays.
    let gone = deleting(synced, 2);
    assert_eq!(
        gone.spec.deletion_policy,
        certus_api::DeletionPolicy::Retain
    );
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&gone);
    let p = path.clone();
    let scenario = tokio::spawn(async move {
        api.expect_finalizer_removed(&p, &reply).await;
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(scenario, config_ctl::reconcile(Arc::new(gone), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        !mounts(&vault, "sys/mounts").await[format!("{mount}/")].is_null(),
        "deletionPolicy Retain keeps the mount"
    );

    vault.delete(&format!("sys/mounts/{mount}")).await.unwrap();
}

/// AuthMethod (kubernetes) with a token reviewer JWT from a Secret: the Secret is read
/// through the Kubernetes API after the connection, the method is enabled and
/// configured, and status carries the accessor and the request hash (never the JWT).
#[tokio::test]
async fn auth_method_reads_its_secret_and_records_accessor() {
    let vault = root_session().await;
    let name = unique("k8s");
    let mount = name.clone();
    let path = path_of::<AuthMethod>(&name);
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXZpZXdlciJ9.c2ln";
    let obj: AuthMethod = with_finalizer(object(
        &name,
        json!({"path": mount, "type": "kubernetes",
               "kubernetes": {"kubernetesHost": "https://kubernetes.default.svc:443",
                              "kubernetesCACert": TEST_CA_PEM,
                              "tokenReviewerJWTSecretRef": {"name": "reviewer", "key": "token"}}}),
    ));

    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&obj);
    let (p, m) = (path.clone(), mount.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let call = api.next("GET of the reviewer JWT Secret").await;
        call.expect(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/secrets/reviewer"),
        );
        call.reply(200, &secret_json("reviewer", &[("token", jwt)]));
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(ready_of(&status).0, "True", "{status:#}");
        assert_eq!(status["vaultPath"], format!("sys/auth/{m}"));
        assert!(
            status["accessor"]
                .as_str()
                .is_some_and(|a| a.starts_with("auth_kubernetes_")),
            "{status:#}"
        );
        let hash = &status["secretHashes"][format!("auth/{m}/config")];
        assert_eq!(hash.as_str().map(str::len), Some(16), "{status:#}");
        assert!(
            !status.to_string().contains(jwt),
            "the JWT must not reach status"
        );
        let (type_, reason, _) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Created"));
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(scenario, config_ctl::reconcile(Arc::new(obj), ctx.clone())).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.metrics.reconciles("AuthMethod"), 1);
    assert_eq!(
        mounts(&vault, "sys/auth").await[format!("{mount}/")]["type"],
        "kubernetes"
    );
    let cfg = vault_data(&vault, &format!("auth/{mount}/config"))
        .await
        .unwrap();
    assert_eq!(cfg["kubernetes_host"], "https://kubernetes.default.svc:443");
    assert_eq!(cfg["token_reviewer_jwt_set"], true);

    vault.delete(&format!("sys/auth/{mount}")).await.unwrap();
}

/// VaultRole (kubernetes auth) applied before what it depends on: without its
/// VaultPolicy it waits without a single request; with the policy but without the auth
/// mount it waits too (nothing written, retried with backoff); once the AuthMethod
/// controller enabled the mount the role is written with the resolved Vault policy and
/// becomes Ready; deleting it (default `deletionPolicy: Delete`) removes it from Vault.
#[tokio::test]
async fn vault_role_waits_for_its_mount_then_is_ready_then_deleted() {
    let vault = root_session().await;
    let u = unique("r");
    let mount = format!("{u}-k8s");
    let policy = certus_controller::testing::policy(NS, &format!("{u}-reader"));
    let vault_policy = policy.vault_name();
    vault
        .policy_write(
            &vault_policy,
            "path \"secret/data/app/*\" { capabilities = [\"read\"] }",
        )
        .await
        .unwrap();
    let role_name = format!("{u}-app");
    let path = path_of::<VaultRole>(&role_name);
    let role: VaultRole = with_finalizer(object(
        &role_name,
        json!({"kubernetes": {"mount": mount, "boundServiceAccountNames": ["app"],
               "boundServiceAccountNamespaces": ["apps"], "policyRefs": [policy.name_any()],
               "tokenTTL": "15m", "audience": "vault"}}),
    ));

    // 0. The referenced VaultPolicy is not watched: WaitingForDependency, decided from
    //    the store alone (no request for the connection), Warning Event.
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&role);
    let (p, pn) = (path.clone(), policy.name_any());
    let scenario = tokio::spawn(async move {
        let status = api.expect_status_apply(&p, &reply).await;
        let (ready, reason, message) = ready_of(&status);
        assert_eq!(
            (ready.as_str(), reason.as_str()),
            ("False", "WaitingForDependency")
        );
        assert!(
            message.contains(&format!("VaultPolicy {NS}/{pn} does not exist")),
            "{message}"
        );
        let (type_, reason, _) = api.expect_event().await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "WaitingForDependency")
        );
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(role.clone()), ctx.clone()),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.category(), "dependency");
    let delay = certus_controller::backoff::error_requeue(&role, &err, &ctx, None);
    assert!(
        delay >= Duration::from_millis(2500) && delay <= Duration::from_secs(5),
        "a dependency is retried with backoff (first retry 2.5s..5s): {delay:?}"
    );
    config_ctl::error_policy(Arc::new(role.clone()), &err, ctx.clone());
    assert_eq!(ctx.metrics.failures("VaultRole", "dependency"), 1);

    // 1. The policy is known but the auth mount does not exist: WaitingForDependency
    //    naming the mount, and not a single Vault write.
    let (ctx, mut api) = mocked(vec![policy.clone()]);
    let reply = to_json(&role);
    let (p, m) = (path.clone(), mount.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let status = api.expect_status_apply(&p, &reply).await;
        let (ready, reason, message) = ready_of(&status);
        assert_eq!(
            (ready.as_str(), reason.as_str()),
            ("False", "WaitingForDependency")
        );
        assert!(
            message.contains(&format!("sys/auth/{m}/ does not exist yet")),
            "{message}"
        );
        assert!(status["vaultPath"].is_null());
        let (type_, reason, _) = api.expect_event().await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "WaitingForDependency")
        );
        api.expect_no_more(QUIET).await;
        (api, status)
    });
    let (result, waiting) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(role.clone()), ctx.clone()),
    )
    .await;
    assert_eq!(result.unwrap_err().category(), "dependency");
    assert_eq!(ctx.sessions.stats().snapshot().writes, 0, "nothing written");
    assert_eq!(
        vault_data(&vault, &format!("auth/{mount}/role/{role_name}")).await,
        None
    );

    // 2. The AuthMethod controller enables the mount.
    let auth = with_finalizer(kubernetes_auth(&format!("{u}-auth"), &mount));
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&auth);
    let p = path_of::<AuthMethod>(&auth.name_any());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(ready_of(&status).0, "True", "{status:#}");
        api.expect_event().await;
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(scenario, config_ctl::reconcile(Arc::new(auth), ctx)).await;
    assert!(result.is_ok(), "{result:?}");

    // 3. The role again (its waiting status recorded): written, Ready, `Created`.
    let waiting_role = with_status(&role, &waiting);
    let (ctx, mut api) = mocked(vec![policy.clone()]);
    let reply = to_json(&waiting_role);
    let (p, m, rn, vp) = (
        path.clone(),
        mount.clone(),
        role_name.clone(),
        vault_policy.clone(),
    );
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(
            (ready_of(&status).0.as_str(), ready_of(&status).1.as_str()),
            ("True", "Reconciled"),
            "{status:#}"
        );
        assert_eq!(status["vaultPath"], format!("auth/{m}/role/{rn}"));
        assert_eq!(status["policies"], json!([vp]));
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Created"));
        assert!(note.contains(&format!("auth/{m}/role/{rn}")), "{note}");
        api.expect_no_more(QUIET).await;
        (api, status)
    });
    let (result, ready) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(waiting_role.clone()), ctx.clone()),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    let live = vault_data(&vault, &format!("auth/{mount}/role/{role_name}"))
        .await
        .expect("the role exists in Vault");
    assert_eq!(live["token_policies"], json!([vault_policy]));
    assert_eq!(live["token_ttl"], 900);
    assert_eq!(live["bound_service_account_names"], json!(["app"]));

    // 4. Deleted (deletionPolicy Delete, the default): the role is removed from Vault,
    //    a `Deleted` Event, then the finalizer is removed.
    let gone = deleting(with_status(&role, &ready), 3);
    let (ctx, mut api) = mocked(vec![policy.clone()]);
    let reply = to_json(&gone);
    let (p, m, rn) = (path.clone(), mount.clone(), role_name.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Deleted"));
        assert!(note.contains(&format!("auth/{m}/role/{rn}")), "{note}");
        api.expect_finalizer_removed(&p, &reply).await;
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(scenario, config_ctl::reconcile(Arc::new(gone), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(
        vault_data(&vault, &format!("auth/{mount}/role/{role_name}")).await,
        None,
        "the role is gone from Vault"
    );
    assert!(
        !mounts(&vault, "sys/auth").await[format!("{mount}/")].is_null(),
        "the auth method is untouched"
    );

    vault.delete(&format!("sys/auth/{mount}")).await.unwrap();
    vault.policy_delete(&vault_policy).await.unwrap();
}

/// An AppRole with `roleIdSecret`: the role id is read from Vault and server-side applied
/// into a Secret owned by the VaultRole (key `role_id`, managed-by label); status names
/// the Secret. A resync with the Secret up to date writes nothing (Kubernetes or Vault).
#[tokio::test]
async fn approle_role_id_is_published_to_an_owned_secret() {
    let vault = root_session().await;
    let u = unique("ar");
    let mount = format!("{u}-approle");
    vault
        .write(&format!("sys/auth/{mount}"), &json!({"type": "approle"}))
        .await
        .unwrap();
    let role_name = format!("{u}-svc");
    let secret_name = format!("{u}-role-id");
    let path = path_of::<VaultRole>(&role_name);
    let role: VaultRole = with_finalizer(object(
        &role_name,
        json!({"appRole": {"mount": mount, "policies": ["default"], "tokenTTL": "1h",
               "secretIdTTL": "24h", "roleIdSecret": {"name": secret_name}}}),
    ));

    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&role);
    let (p, sn, rn, m) = (
        path.clone(),
        secret_name.clone(),
        role_name.clone(),
        mount.clone(),
    );
    let root = vault.clone();
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let secret_path = format!("/api/v1/namespaces/{NS}/secrets/{sn}");
        let call = api.next("GET of the role id Secret").await;
        call.expect(Method::GET, &secret_path);
        call.not_found("secrets", &sn);

        let call = api.next("the role id Secret apply").await;
        call.expect(Method::PATCH, &secret_path);
        assert_eq!(call.content_type, "application/apply-patch+yaml");
        assert!(
            call.query.contains("fieldManager=certus-vault-operator")
                && call.query.contains("force=true"),
            "query: {}",
            call.query
        );
        // The role exists in Vault by now: compare with its actual role id.
        let role_id = vault_data(&root, &format!("auth/{m}/role/{rn}/role-id"))
            .await
            .expect("the AppRole was written before its role id is published")["role_id"]
            .as_str()
            .unwrap()
            .to_string();
        let b64 = serde_json::to_value(ByteString(role_id.into_bytes())).unwrap();
        assert_eq!(
            call.body,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {
                    "name": sn, "namespace": NS,
                    "labels": {"app.kubernetes.io/managed-by": "certus-vault-operator"},
                    "ownerReferences": [{
                        "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultRole",
                        "name": rn, "uid": format!("uid-{rn}"),
                        "controller": true, "blockOwnerDeletion": true,
                    }],
                },
                "type": "Opaque",
                "data": {"role_id": b64},
            })
        );
        let secret = call.body.clone();
        call.reply(200, &secret);

        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(ready_of(&status).0, "True", "{status:#}");
        assert_eq!(status["roleIdSecret"], sn);
        assert_eq!(status["policies"], json!(["default"]));
        let (type_, reason, _) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Created"));
        api.expect_no_more(QUIET).await;
        (api, (status, secret))
    });
    let (result, (status, secret)) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(role.clone()), ctx.clone()),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        !status
            .to_string()
            .contains(secret["data"]["role_id"].as_str().unwrap()),
        "the role id is only in the Secret"
    );

    // Resync: Secret up to date → no apply; Vault unchanged → no write; no Event.
    let synced = with_status(&role, &status);
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&synced);
    let (p, sn) = (path.clone(), secret_name.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let call = api.next("GET of the role id Secret").await;
        call.expect(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/secrets/{sn}"),
        );
        call.reply(200, &secret);
        let status = api.expect_status_apply(&p, &reply).await;
        assert_eq!(status["roleIdSecret"], sn);
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(synced), ctx.clone()),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.sessions.stats().snapshot().writes, 0);

    vault.delete(&format!("sys/auth/{mount}")).await.unwrap();
}

/// Deleting a VaultRole whose spec is invalid: with nothing in `status.vaultPath` the
/// finalizer is released without a single request (nothing of it can be in Vault); with
/// a recorded path the role there is deleted (the pipeline cannot compute the path).
#[tokio::test]
async fn invalid_role_deletion_removes_only_what_status_recorded() {
    let vault = root_session().await;
    let u = unique("inv");
    let mount = format!("{u}-approle");
    let role_name = format!("{u}-bad");
    let path = path_of::<VaultRole>(&role_name);
    let bad: VaultRole = deleting(
        with_finalizer(object(
            &role_name,
            json!({"appRole": {"mount": mount, "tokenTTL": "soon"}}),
        )),
        1,
    );
    assert_eq!(bad.check_spec().unwrap_err().reason(), "InvalidSpec");

    // Nothing recorded: released at once.
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&bad);
    let p = path.clone();
    let scenario = tokio::spawn(async move {
        api.expect_finalizer_removed(&p, &reply).await;
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(scenario, config_ctl::reconcile(Arc::new(bad.clone()), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());

    // Recorded (an earlier, valid generation wrote the role): that role is deleted.
    vault
        .write(&format!("sys/auth/{mount}"), &json!({"type": "approle"}))
        .await
        .unwrap();
    let recorded = format!("auth/{mount}/role/{role_name}");
    vault
        .write(&recorded, &json!({"token_ttl": 60}))
        .await
        .unwrap();
    let bad = with_status(&bad, &json!({"vaultPath": recorded}));
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&bad);
    let (p, r) = (path.clone(), recorded.clone());
    let scenario = tokio::spawn(async move {
        api.serve_connection().await;
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Deleted"));
        assert!(note.contains(&r), "{note}");
        api.expect_finalizer_removed(&p, &reply).await;
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(scenario, config_ctl::reconcile(Arc::new(bad), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(vault_data(&vault, &recorded).await, None);

    vault.delete(&format!("sys/auth/{mount}")).await.unwrap();
}

/// `deletionPolicy: Delete` while the connection is gone: within the deletion timeout
/// Ready=False/Deleting and a retry; past it a Warning `FinalizerReleased` and the
/// finalizer is removed anyway. (No Vault needed.)
#[tokio::test]
async fn engine_cleanup_is_bounded_by_the_deletion_timeout() {
    let name = unique("lost");
    let path = path_of::<SecretEngine>(&name);
    let spec = json!({"path": name, "type": "kv-v2", "deletionPolicy": "Delete"});
    let not_found_connection = |call: Call| {
        call.expect(
            Method::GET,
            &format!("/apis/vault.certus.io/v1alpha1/namespaces/{NS}/vaultconnections/default"),
        );
        call.not_found("vaultconnections", "default");
    };

    // Within the timeout (deleted 60s ago, 10 minutes allowed).
    let obj: SecretEngine = deleting(with_finalizer(object(&name, spec.clone())), 60);
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&obj);
    let p = path.clone();
    let scenario = tokio::spawn(async move {
        not_found_connection(api.next("GET of the VaultConnection").await);
        let status = api.expect_status_apply(&p, &reply).await;
        let (ready, reason, message) = ready_of(&status);
        assert_eq!((ready.as_str(), reason.as_str()), ("False", "Deleting"));
        assert!(message.contains("does not exist"), "{message}");
        let (type_, reason, _) = api.expect_event().await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "WaitingForDependency")
        );
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(obj.clone()), ctx.clone()),
    )
    .await;
    let err = result.unwrap_err();
    let delay = certus_controller::backoff::error_requeue(&obj, &err, &ctx, None);
    assert!(delay <= Duration::from_secs(5), "{delay:?}");

    // Past the timeout.
    let obj: SecretEngine = deleting(with_finalizer(object(&name, spec)), 11 * 60);
    let (ctx, mut api) = mocked(vec![]);
    let reply = to_json(&obj);
    let (p, n) = (path.clone(), name.clone());
    let scenario = tokio::spawn(async move {
        not_found_connection(api.next("GET of the VaultConnection").await);
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "FinalizerReleased")
        );
        assert!(
            note.contains(&format!("{n}/")) && note.contains("may remain"),
            "{note}"
        );
        api.expect_finalizer_removed(&p, &reply).await;
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(scenario, config_ctl::reconcile(Arc::new(obj), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

/// The status the controllers write decodes as the API type (the CRD schema's shape).
#[test]
fn recorded_status_round_trips() {
    let s: VaultObjectStatus = serde_json::from_value(json!({
        "vaultPath": "auth/k/role/r", "appliedHash": "0123456789abcdef",
        "roleIdSecret": "r-role-id", "policies": ["a"],
    }))
    .unwrap();
    assert_eq!(s.role_id_secret.as_deref(), Some("r-role-id"));
}

/// Two SecretEngines on one mount through one connection: the later one is
/// `Ready=False/Conflict` before any Vault request (no connection lookup, nothing
/// written), and deleting it with `deletionPolicy: Delete` leaves the owner's mount in
/// Vault (Event `Retained`) and re-triggers nobody's data loss.
#[tokio::test]
async fn a_second_engine_on_the_same_mount_conflicts_and_its_deletion_keeps_the_mount() {
    let vault = root_session().await;
    let mount = unique("claim");
    vault
        .write(
            &format!("sys/mounts/{mount}"),
            &json!({"type": "kv", "options": {"version": "2"}}),
        )
        .await
        .unwrap();
    let owner: SecretEngine = with_finalizer(object(
        "owner",
        json!({"path": mount, "type": "kv-v2", "deletionPolicy": "Delete"}),
    ));
    let mut second: SecretEngine = with_finalizer(object(
        "second",
        json!({"path": mount, "type": "kv-v2", "deletionPolicy": "Delete"}),
    ));
    // Created a minute after the owner.
    second.metadata.creation_timestamp =
        Some(serde_json::from_value(json!("2026-01-01T00:01:00Z")).unwrap());

    let claims = |objs: Vec<SecretEngine>| {
        let (reader, mut writer) = reflector::store::<SecretEngine>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objs {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (reader, tx, rx)
    };

    // Reconcile of the second: Conflict, no Vault request, no connection lookup.
    let (ctx, mut api) = mocked(vec![]);
    let (store, tx, _rx) = claims(vec![owner.clone(), second.clone()]);
    ctx.enable_claims(store, tx);
    let before = ctx.sessions.stats().snapshot();
    let reply = to_json(&second);
    let p = path_of::<SecretEngine>("second");
    let scenario = tokio::spawn(async move {
        let status = api.expect_status_apply(&p, &reply).await;
        let (ready, reason, message) = ready_of(&status);
        assert_eq!((ready.as_str(), reason.as_str()), ("False", "Conflict"));
        assert!(
            message.contains("SecretEngine ctl-config/owner")
                && message.contains("nothing was written"),
            "{message}"
        );
        let (type_, reason, _) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "Conflict"));
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(
        scenario,
        config_ctl::reconcile(Arc::new(second.clone()), ctx.clone()),
    )
    .await;
    assert!(result.is_err());
    assert_eq!(ctx.sessions.stats().snapshot(), before, "no Vault request");

    // Deleting the second (deletionPolicy Delete): the owner's mount stays.
    let gone = deleting(second.clone(), 1);
    let (ctx, mut api) = mocked(vec![]);
    let (store, tx, mut rx) = claims(vec![owner.clone(), gone.clone()]);
    ctx.enable_claims(store, tx);
    let reply = to_json(&gone);
    let p = path_of::<SecretEngine>("second");
    let scenario = tokio::spawn(async move {
        let (type_, reason, note) = api.expect_event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Retained"));
        assert!(note.contains("SecretEngine ctl-config/owner"), "{note}");
        api.expect_finalizer_removed(&p, &reply).await;
        api.expect_no_more(QUIET).await;
        (api, ())
    });
    let (result, ()) = drive(scenario, config_ctl::reconcile(Arc::new(gone), ctx)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        mounts(&vault, "sys/mounts").await[format!("{mount}/")].is_object(),
        "the owner's mount is still there"
    );
    let sent = rx.try_recv();
    assert!(
        sent.is_err(),
        "nothing to hand over: the owner stays: {sent:?}"
    );

    vault.delete(&format!("sys/mounts/{mount}")).await.unwrap();
}
