//! Tier 2: `certus_controller::run` end to end against a fake Kubernetes API server (a
//! router over the mocked HTTP service) and the REAL OpenBao: waits for the CRDs, lists
//! and watches through the deserialize guard, reconciles a VaultConnection and a
//! VaultPolicy (the policy lands in Vault), and shuts down gracefully on request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use certus_api::VaultPolicy;
use certus_controller::testing::{policy, PolicyExt};
use certus_controller::RunOptions;
use certus_vault_client::{ConnectionConfig, Credentials, SecretString, VaultSession};
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::client::Body;
use kube::{Client, CustomResourceExt};
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

fn vault_env() -> (String, String) {
    let addr = std::env::var("VAULT_ADDR").unwrap_or_else(|_| {
        panic!("VAULT_ADDR is not set: these tests need the real OpenBao. Run `hack/services-up.sh && . .hack/env` first")
    });
    let token = std::env::var("VAULT_TOKEN").unwrap_or_else(|_| {
        panic!("VAULT_TOKEN is not set: run `hack/services-up.sh && . .hack/env` first")
    });
    (addr, token)
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

fn reply(respond: SendResponse<Response<Body>>, status: u16, body: &Value) {
    respond.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn established<K: CustomResourceExt>(established: bool) -> Value {
    let mut crd = serde_json::to_value(K::crd()).unwrap();
    crd["status"] = json!({"conditions": [{"type": "Established", "status": if established { "True" } else { "False" }}]});
    crd
}

#[derive(Default)]
struct Seen {
    crd_polls: usize,
    policy_status: Vec<Value>,
    connection_status: Vec<Value>,
    events: Vec<(String, String)>,
    unexpected: Vec<String>,
    watches: usize,
    other_watches: usize,
}

/// Serves the fake API until the client goes away. Watches are held open (their
/// responders kept) so the watchers idle like against a real server.
async fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    ns: String,
    pol: VaultPolicy,
    seen: Arc<Mutex<Seen>>,
) {
    let (addr, token) = vault_env();
    let mut open_watches = vec![];
    let conn = json!({
        "apiVersion": "vault.certus.io/v1alpha1", "kind": "VaultConnection",
        "metadata": {"name": "default", "namespace": ns, "uid": "conn-uid", "generation": 1, "resourceVersion": "7"},
        "spec": {"address": addr, "auth": {"token": {"secretRef": {"name": "vault-token", "key": "token"}}}}
    });
    let pol = serde_json::to_value(&pol).unwrap();
    let g = "/apis/vault.certus.io/v1alpha1";
    while let Some((req, respond)) = handle.next_request().await {
        let (method, path, query) = (
            req.method().clone(),
            req.uri().path().to_string(),
            req.uri().query().unwrap_or("").to_string(),
        );
        let body = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let watch = query.contains("watch=true");
        let list = |kind: &str, items: Vec<Value>| json!({"apiVersion": "vault.certus.io/v1alpha1", "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items});
        let mut s = seen.lock().unwrap();
        match (method.clone(), path.as_str()) {
            (Method::GET, p)
                if p.starts_with("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/") =>
            {
                s.crd_polls += 1;
                // The first round of polls sees VaultPolicy not yet established.
                let ready = s.crd_polls > 3;
                let name = p.rsplit('/').next().unwrap();
                let crd = match name {
                    "vaultpolicies.vault.certus.io" => established::<VaultPolicy>(ready),
                    other => match certus_api::all_crds()
                        .into_iter()
                        .find(|c| c.metadata.name.as_deref() == Some(other))
                    {
                        Some(c) => {
                            let mut v = serde_json::to_value(&c).unwrap();
                            v["status"] =
                                json!({"conditions": [{"type": "Established", "status": "True"}]});
                            v
                        }
                        None => {
                            s.unexpected.push(format!("CRD {other}"));
                            json!({})
                        }
                    },
                };
                reply(respond, 200, &crd);
            }
            (Method::GET, p)
                if watch
                    && (p.ends_with("/vaultpolicies")
                        || p.ends_with("/vaultconnections")
                        || p.ends_with("/clustervaultconnections")) =>
            {
                s.watches += 1;
                open_watches.push(respond);
            }
            (Method::GET, p) if p == format!("{g}/namespaces/{ns}/vaultpolicies") => {
                reply(respond, 200, &list("VaultPolicyList", vec![pol.clone()]))
            }
            (Method::GET, p) if p == format!("{g}/namespaces/{ns}/vaultconnections") => reply(
                respond,
                200,
                &list("VaultConnectionList", vec![conn.clone()]),
            ),
            (Method::GET, p) if p == format!("{g}/clustervaultconnections") => {
                reply(respond, 200, &list("ClusterVaultConnectionList", vec![]))
            }
            (Method::GET, p) if p == format!("{g}/namespaces/{ns}/vaultconnections/default") => {
                reply(respond, 200, &conn)
            }
            (Method::GET, p) if p == format!("/api/v1/namespaces/{ns}/secrets/vault-token") => {
                let mut secret = Secret::default();
                secret.metadata.name = Some("vault-token".into());
                secret.data =
                    Some([("token".to_string(), ByteString(token.clone().into_bytes()))].into());
                let mut v = serde_json::to_value(&secret).unwrap();
                v["apiVersion"] = json!("v1");
                v["kind"] = json!("Secret");
                reply(respond, 200, &v);
            }
            (Method::PATCH, p)
                if p.starts_with(&format!("{g}/namespaces/{ns}/vaultpolicies/"))
                    && p.ends_with("/status") =>
            {
                s.policy_status.push(body["status"].clone());
                let mut out = pol.clone();
                out["status"] = body["status"].clone();
                reply(respond, 200, &out);
            }
            (Method::PATCH, p)
                if p == format!("{g}/namespaces/{ns}/vaultconnections/default/status") =>
            {
                s.connection_status.push(body["status"].clone());
                let mut out = conn.clone();
                out["status"] = body["status"].clone();
                reply(respond, 200, &out);
            }
            (Method::POST, p) if p == format!("/apis/events.k8s.io/v1/namespaces/{ns}/events") => {
                s.events.push((
                    body["reason"].as_str().unwrap_or("").to_string(),
                    body["regarding"]["kind"].as_str().unwrap_or("").to_string(),
                ));
                reply(respond, 201, &body);
            }
            // Every other kind the operator watches (the other vault.certus.io kinds,
            // metadata-only Secret watches, owned Secrets): empty lists, idle watches.
            (Method::GET, p) if watch && (p.starts_with(g) || p.starts_with("/api/v1/")) => {
                s.other_watches += 1;
                open_watches.push(respond);
            }
            (Method::GET, p)
                if (p.starts_with(g) || p.starts_with("/api/v1/"))
                    && !p.contains("/secrets/")
                    && !p.ends_with("/default") =>
            {
                reply(
                    respond,
                    200,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "10"}, "items": []}),
                )
            }
            _ => {
                s.unexpected.push(format!("{method} {path}?{query}"));
                reply(
                    respond,
                    404,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not served by the fake"}),
                );
            }
        }
    }
}

fn ready_is_true(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[tokio::test]
async fn run_waits_for_crds_reconciles_and_shuts_down_gracefully() {
    // `RUST_LOG=certus_controller=debug cargo test -- --nocapture` shows the operator's logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (addr, token) = vault_env();
    let vault = VaultSession::connect(
        ConnectionConfig::new(addr),
        Credentials::Token(SecretString::new(token)),
    )
    .await
    .unwrap();
    let ns = "ctl-run".to_string();
    let pol = policy(&ns, &unique("p")).with_finalizer();
    let vault_name = pol.vault_name();

    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(serve(handle, ns.clone(), pol.clone(), seen.clone()));

    let opts = RunOptions {
        namespaces: vec![ns.clone()],
        crd_poll_interval: Duration::from_millis(50),
        debounce: Duration::from_millis(10),
        ..RunOptions::default()
    };
    let metrics = opts.metrics.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(certus_controller::run(client, opts, async move {
        let _ = stop_rx.await;
    }));

    // Wait until both controllers reported Ready=True.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        {
            let s = seen.lock().unwrap();
            if s.policy_status.iter().any(ready_is_true)
                && s.connection_status.iter().any(ready_is_true)
            {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "controllers did not report Ready within 20s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.is_ready());

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run returns soon after shutdown is requested")
        .unwrap()
        .expect("run ends without error");
    assert!(!metrics.is_ready());

    {
        let s = seen.lock().unwrap();
        assert!(
            s.crd_polls > 3,
            "run polled the CRDs until all were established"
        );
        assert_eq!(
            s.unexpected,
            Vec::<String>::new(),
            "requests the fake does not serve"
        );
        // At least: 3 kinds for their controllers + 2 connection kinds re-triggering
        // policies (the other controllers add their own connection watches).
        assert!(
            s.watches >= 5,
            "watches on policies/connections: {}",
            s.watches
        );
        // Every other kind's controller started its watches too.
        assert!(
            s.other_watches >= 7,
            "watches on the other kinds: {}",
            s.other_watches
        );
        assert!(
            s.events
                .contains(&("Created".to_string(), "VaultPolicy".to_string())),
            "{:?}",
            s.events
        );
        assert!(
            s.events
                .contains(&("Connected".to_string(), "VaultConnection".to_string())),
            "{:?}",
            s.events
        );
        let status = s
            .policy_status
            .iter()
            .rfind(|st| ready_is_true(st))
            .unwrap();
        assert_eq!(status["vaultName"], vault_name);
        assert!(metrics.reconciles("VaultPolicy") >= 1);
        assert!(metrics.reconciles("VaultConnection") >= 1);
    }

    let text = vault
        .policy_read(&vault_name)
        .await
        .unwrap()
        .expect("the policy is in Vault");
    assert!(text.contains("secret/data/app/*"));
    vault.policy_delete(&vault_name).await.unwrap();
}

/// Shutdown while still waiting for CRDs that never become established: `run` returns.
#[tokio::test]
async fn run_returns_when_shut_down_while_waiting_for_crds() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            assert!(
                req.uri()
                    .path()
                    .starts_with("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"),
                "{}",
                req.uri()
            );
            reply(
                respond,
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
            );
        }
    });
    let opts = RunOptions {
        crd_poll_interval: Duration::from_millis(20),
        ..RunOptions::default()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        certus_controller::run(client, opts, tokio::time::sleep(Duration::from_millis(200))),
    )
    .await
    .expect("run returns after shutdown");
    assert!(result.is_ok());
}
