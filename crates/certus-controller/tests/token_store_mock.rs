//! `KubeTokenStore` against a mocked Kubernetes API: every request's method, path and
//! body asserted in order. Load of a missing Secret is `None`; save is one server-side
//! apply of an `Opaque` Secret with `token` and `accessor`; load reads it back; a Secret
//! without a token is `None`; remove tolerates 404; errors name the Secret and never
//! carry the token.

use std::time::Duration;

use certus_controller::token_store::{KubeTokenStore, COMPONENT, SECRET_PREFIX};
use certus_vault_client::{PersistedToken, SecretString, TokenStore};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// The next request as (method, path, query, content type, body) and its responder.
async fn next(
    api: &mut ApiHandle,
) -> (
    Method,
    String,
    String,
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .expect("a request within 5 s")
        .expect("the client is alive");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let ct = parts
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        parts.method,
        parts.uri.path().to_string(),
        parts.uri.query().unwrap_or("").to_string(),
        ct,
        body,
        respond,
    )
}

fn reply(respond: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: &Value) {
    respond.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (mock)"), "reason": reason, "code": code})
}

#[tokio::test]
async fn token_secrets_load_missing_save_load_back_and_remove() {
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let store = KubeTokenStore::new(Client::new(service, "default"), "certus-system");
    let key = "0123456789abcdef0123";
    let name = format!("{SECRET_PREFIX}{key}");
    assert_eq!(KubeTokenStore::secret_name(key), name);
    let path = format!("/api/v1/namespaces/certus-system/secrets/{name}");
    let token = PersistedToken {
        token: SecretString::new("hvs.the-token-value"),
        accessor: "acc-123".into(),
    };

    let scenario = {
        let path = path.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let (m, p, _, _, _, r) = next(&mut api).await;
            assert_eq!((m, p.as_str()), (Method::GET, path.as_str()));
            reply(r, 404, &status(404, "NotFound"));

            let (m, p, q, ct, body, r) = next(&mut api).await;
            assert_eq!((m, p.as_str()), (Method::PATCH, path.as_str()));
            assert_eq!(ct, "application/apply-patch+yaml");
            assert!(
                q.contains("fieldManager=certus-vault-operator") && q.contains("force=true"),
                "{q}"
            );
            assert_eq!(body["apiVersion"], "v1");
            assert_eq!(body["kind"], "Secret");
            assert_eq!(body["type"], "Opaque");
            assert_eq!(body["metadata"]["name"], name);
            assert_eq!(body["metadata"]["namespace"], "certus-system");
            assert_eq!(
                body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "certus-vault-operator"
            );
            assert_eq!(
                body["metadata"]["labels"]["app.kubernetes.io/component"],
                COMPONENT
            );
            // base64 of the values, exactly two keys.
            assert_eq!(body["data"]["token"], "aHZzLnRoZS10b2tlbi12YWx1ZQ==");
            assert_eq!(body["data"]["accessor"], "YWNjLTEyMw==");
            assert_eq!(body["data"].as_object().unwrap().len(), 2);
            reply(r, 200, &body);
            let saved = body;

            let (m, p, _, _, _, r) = next(&mut api).await;
            assert_eq!((m, p.as_str()), (Method::GET, path.as_str()));
            reply(r, 200, &saved);

            // A Secret someone emptied: nothing to adopt.
            let (m, _, _, _, _, r) = next(&mut api).await;
            assert_eq!(m, Method::GET);
            let mut empty = saved.clone();
            empty["data"] = json!({"accessor": "YWNjLTEyMw=="});
            reply(r, 200, &empty);

            // The API refuses: an error naming the Secret.
            let (m, _, _, _, _, r) = next(&mut api).await;
            assert_eq!(m, Method::GET);
            reply(r, 403, &status(403, "Forbidden"));

            let (m, p, _, _, _, r) = next(&mut api).await;
            assert_eq!((m, p.as_str()), (Method::DELETE, path.as_str()));
            reply(r, 200, &saved);
            let (m, _, _, _, _, r) = next(&mut api).await;
            assert_eq!(m, Method::DELETE);
            reply(r, 404, &status(404, "NotFound"));
            assert!(
                tokio::time::timeout(Duration::from_millis(300), api.next_request())
                    .await
                    .map_or(true, |r| r.is_none()),
                "no further request"
            );
        })
    };

    assert!(store.load(key).await.unwrap().is_none());
    store.save(key, &token).await.unwrap();
    let loaded = store.load(key).await.unwrap().expect("saved token");
    assert_eq!(loaded.token.expose(), "hvs.the-token-value");
    assert_eq!(loaded.accessor, "acc-123");
    assert!(
        store.load(key).await.unwrap().is_none(),
        "no token key: None"
    );
    let err = store.load(key).await.unwrap_err();
    assert!(
        err.contains(&format!("certus-system/{name}")) && err.contains("403"),
        "{err}"
    );
    assert!(!err.contains("hvs."), "{err}");
    store.remove(key).await.unwrap();
    store.remove(key).await.unwrap();
    scenario.await.unwrap();
}
