//! `KubeTokenStore` against a mocked Kubernetes API: every request's method, path and
//! body asserted in order. Load of a missing Secret is `None`; save is one server-side
//! apply of an `Opaque` Secret with `token` and `accessor`; load reads it back; a Secret
//! without a token is `None`; remove tolerates 404; errors name the Secret and never
//! carry the token.

mod common;

use std::time::Duration;

use certus_controller::token_store::{KubeTokenStore, COMPONENT, SECRET_PREFIX};
use certus_vault_client::{PersistedToken, SecretString, TokenStore};
use common::mocked_client;
use http::Method;
use serde_json::{json, Value};

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (mock)"), "reason": reason, "code": code})
}

#[tokio::test]
async fn token_secrets_load_missing_save_load_back_and_remove() {
    let (client, mut api) = mocked_client();
    let store = KubeTokenStore::new(client, "certus-system");
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
            let c = api.next("a GET").await;
            c.expect(Method::GET, &path);
            c.reply(404, &status(404, "NotFound"));

            let c = api.next("the apply PATCH").await;
            c.expect(Method::PATCH, &path);
            assert_eq!(c.content_type, "application/apply-patch+yaml");
            let q = &c.query;
            assert!(
                q.contains("fieldManager=certus-vault-operator") && q.contains("force=true"),
                "{q}"
            );
            let body = c.body.clone();
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
            c.reply(200, &body);
            let saved = body;

            let c = api.next("a GET").await;
            c.expect(Method::GET, &path);
            c.reply(200, &saved);

            // A Secret someone emptied: nothing to adopt.
            let c = api.next("a GET").await;
            c.expect(Method::GET, &path);
            let mut empty = saved.clone();
            empty["data"] = json!({"accessor": "YWNjLTEyMw=="});
            c.reply(200, &empty);

            // The API refuses: an error naming the Secret.
            let c = api.next("a GET").await;
            c.expect(Method::GET, &path);
            c.reply(403, &status(403, "Forbidden"));

            let c = api.next("a DELETE").await;
            c.expect(Method::DELETE, &path);
            c.reply(200, &saved);
            let c = api.next("a DELETE").await;
            c.expect(Method::DELETE, &path);
            c.reply(404, &status(404, "NotFound"));
            api.expect_no_more(Duration::from_millis(300)).await;
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
