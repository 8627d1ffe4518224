//! What the mocked-API test suites share: the real OpenBao's address and root session,
//! unique names, and `ApiServerVerifier`, a scripted fake Kubernetes API server on
//! `tower-test` (every request's method, path, query, content type and body, in order,
//! with a timeout per step that also catches missing requests). Each suite adds its own
//! steps in an `impl ApiServerVerifier` / `impl Call` block of its own.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use certus_vault_client::{ConnectionConfig, Credentials, SecretString, VaultSession};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::Value;
use tower_test::mock::{self, Handle, SendResponse};

/// `VAULT_ADDR` and `VAULT_TOKEN` of the OpenBao started by `hack/services-up.sh`.
pub fn vault_env() -> (String, String) {
    let addr = std::env::var("VAULT_ADDR").unwrap_or_else(|_| {
        panic!("VAULT_ADDR is not set: these tests need the real OpenBao. Run `hack/services-up.sh && . .hack/env` first")
    });
    let token = std::env::var("VAULT_TOKEN").unwrap_or_else(|_| {
        panic!("VAULT_TOKEN is not set: run `hack/services-up.sh && . .hack/env` first")
    });
    (addr, token)
}

/// A session with the root token.
pub async fn root_session() -> Arc<VaultSession> {
    let (addr, token) = vault_env();
    VaultSession::connect(
        ConnectionConfig::new(addr),
        Credentials::Token(SecretString::new(token)),
    )
    .await
    .unwrap()
}

/// A name no other test run uses (lower case: mount paths and Kubernetes names).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// How long one expected request may take to arrive.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// The scripted side of the fake API server.
pub struct ApiServerVerifier(pub ApiHandle);

/// A client talking to a fresh fake API server, and its script handle.
pub fn mocked_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

/// One request the fake API server received.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub respond: SendResponse<Response<Body>>,
}

impl Call {
    pub fn expect(&self, method: Method, path: &str) {
        assert_eq!(
            (&self.method, self.path.as_str()),
            (&method, path),
            "unexpected request {} {}?{}",
            self.method,
            self.path,
            self.query
        );
    }

    pub fn reply(self, status: u16, body: &Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap();
        self.respond.send_response(response);
    }
}

impl ApiServerVerifier {
    /// The next request, or a panic naming what was expected.
    pub async fn next(&mut self, expected: &str) -> Call {
        let (request, respond) = tokio::time::timeout(STEP_TIMEOUT, self.0.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!("expected {expected}, but no request came within {STEP_TIMEOUT:?}")
            })
            .unwrap_or_else(|| panic!("expected {expected}, but the client was dropped"));
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            content_type: parts
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
            body,
            respond,
        }
    }

    /// Fails when one more request arrives within `wait`.
    pub async fn expect_no_more(&mut self, wait: Duration) {
        if let Ok(Some((req, _))) = tokio::time::timeout(wait, self.0.next_request()).await {
            panic!("unexpected extra request {} {}", req.method(), req.uri());
        }
    }
}
