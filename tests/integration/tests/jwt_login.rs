//! `VaultConnection` JWT login against the real OpenBao: a `jwt` auth method trusting an
//! ES256 key (standing in for the cluster's service account issuer or an external
//! identity provider), a role bound to audience and subject. Both JWT sources are
//! resolved through `resolve_connection` as the operator does: `serviceAccountName` (a
//! token the resolver requests, here signed in-process with the audiences asked for)
//! and `secretRef` (a JWT in a Secret; a new value is a new identity, so a new login).

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use certus_api::VaultConnectionSpec;
use certus_integration_tests::*;
use certus_reconcile::connection::{resolve_connection, Resolver};
use certus_reconcile::ReconcileError;
use certus_vault_client::{ErrorClass, JwtSource, SecretString, SessionCache};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// An ES256 signer and its public key as PEM (SubjectPublicKeyInfo).
struct Issuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Issuer {
    fn new() -> Issuer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Issuer { key, rng }
    }

    fn public_pem(&self) -> String {
        // SPKI header of an uncompressed P-256 point (id-ecPublicKey, prime256v1).
        let mut der = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        der.extend_from_slice(self.key.public_key().as_ref());
        let b64 = STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    fn jwt(&self, sub: &str, aud: &[String]) -> String {
        let now = chrono::Utc::now().timestamp();
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let header = enc(&json!({"alg": "ES256", "typ": "JWT"}));
        let claims = enc(&json!({"iss": "certus-test", "sub": sub, "aud": aud,
                                 "iat": now, "nbf": now - 5, "exp": now + 600}));
        let input = format!("{header}.{claims}");
        let sig = self.key.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A ServiceAccount token request: (namespace, name, audiences).
type TokenRequest = (String, String, Vec<String>);

/// Secrets from a map; ServiceAccount tokens signed by the test issuer for
/// `system:serviceaccount:<ns>:<name>` with the requested audiences.
#[derive(Clone)]
struct TestResolver {
    secrets: MapResolver,
    issuer: Arc<Issuer>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

impl Resolver for TestResolver {
    async fn secret_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<SecretString>, ReconcileError> {
        self.secrets.secret_value(namespace, name, key).await
    }

    fn service_account_jwt(
        &self,
        namespace: &str,
        name: &str,
        audiences: Vec<String>,
    ) -> Result<JwtSource, ReconcileError> {
        let (issuer, requests) = (self.issuer.clone(), self.requests.clone());
        let sub = format!("system:serviceaccount:{namespace}:{name}");
        let (ns, n) = (namespace.to_string(), name.to_string());
        Ok(Arc::new(move || {
            requests
                .lock()
                .unwrap()
                .push((ns.clone(), n.clone(), audiences.clone()));
            let token = SecretString::new(issuer.jwt(&sub, &audiences));
            Box::pin(async move { Ok(token) })
        }))
    }
}

fn spec(auth: Value) -> VaultConnectionSpec {
    serde_json::from_value(json!({"address": env().vault_addr, "auth": auth})).unwrap()
}

#[tokio::test]
async fn jwt_login_from_a_service_account_token_and_from_a_secret() {
    let raw = Raw::new().await;
    let p = prefix();
    let mount = format!("{p}-jwt");
    let issuer = Arc::new(Issuer::new());
    let policy = format!("{p}-jwt-reader");
    raw.write(
        &format!("sys/policies/acl/{policy}"),
        json!({"policy": "path \"sys/mounts\" { capabilities = [\"read\"] }"}),
    )
    .await;
    raw.write(&format!("sys/auth/{mount}"), json!({"type": "jwt"}))
        .await;
    raw.write(
        &format!("auth/{mount}/config"),
        json!({"jwt_validation_pubkeys": [issuer.public_pem()], "bound_issuer": "certus-test"}),
    )
    .await;
    // The operator's role: its ServiceAccount, audience vault.
    raw.write(
        &format!("auth/{mount}/role/operator"),
        json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
               "bound_subject": "system:serviceaccount:team-a:certus-vault",
               "token_policies": [policy], "token_ttl": "10m"}),
    )
    .await;
    // An external identity: subject ci, audience ci-vault.
    raw.write(
        &format!("auth/{mount}/role/ci"),
        json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["ci-vault"],
               "bound_subject": "ci", "token_policies": [policy], "token_ttl": "10m"}),
    )
    .await;
    let resolver = TestResolver {
        secrets: MapResolver::new(),
        issuer: issuer.clone(),
        requests: Arc::default(),
    };
    let cache = SessionCache::new();

    // 1. serviceAccountName: the token is requested for the connection's namespace with
    //    the default audience, and the login works (one login for many requests).
    let sa = spec(json!({"jwt": {"mount": mount, "role": "operator",
                                 "serviceAccountName": "certus-vault"}}));
    let (config, creds) = resolve_connection(&sa, Some("team-a"), &resolver)
        .await
        .unwrap();
    assert!(format!("{creds:?}").starts_with("Jwt {"), "{creds:?}");
    let s = cache.get(config, creds).await.unwrap();
    for _ in 0..3 {
        assert!(s.read("sys/mounts").await.unwrap().is_some());
    }
    assert_eq!(s.auth_method(), "jwt");
    let info = s.token_info().await.unwrap();
    assert!(info.policies.contains(&policy), "{info:?}");
    assert_eq!(cache.stats().snapshot().logins, 1);
    assert_eq!(
        resolver.requests.lock().unwrap().clone(),
        [(
            "team-a".to_string(),
            "certus-vault".to_string(),
            vec!["vault".to_string()]
        )]
    );

    // The same ServiceAccount from another namespace is another subject: refused,
    // classified as a permission error (not retried as transient).
    let other = spec(json!({"jwt": {"mount": mount, "role": "operator",
                                    "serviceAccountName": "certus-vault"}}));
    let (config, creds) = resolve_connection(&other, Some("team-b"), &resolver)
        .await
        .unwrap();
    let denied = cache.get(config, creds).await.unwrap();
    let err = denied.read("sys/mounts").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::PermissionDenied, "{err}");

    // 2. secretRef: a JWT kept in a Secret.
    let ci_jwt = issuer.jwt("ci", &["ci-vault".to_string()]);
    resolver.secrets.set("team-a", "ci-jwt", "token", &ci_jwt);
    let from_secret = spec(json!({"jwt": {"mount": mount, "role": "ci",
                                          "secretRef": {"name": "ci-jwt", "key": "token"}}}));
    let (config, creds) = resolve_connection(&from_secret, Some("team-a"), &resolver)
        .await
        .unwrap();
    let debug = format!("{creds:?}");
    assert!(
        !debug.contains(&ci_jwt),
        "the JWT never appears in Debug: {debug}"
    );
    let s1 = cache.get(config.clone(), creds).await.unwrap();
    assert!(s1.read("sys/mounts").await.unwrap().is_some());
    // Same JWT: the same session. A rotated JWT: a new identity, a new login with it.
    let (_, again) = resolve_connection(&from_secret, Some("team-a"), &resolver)
        .await
        .unwrap();
    assert!(Arc::ptr_eq(
        &s1,
        &cache.get(config.clone(), again).await.unwrap()
    ));
    resolver.secrets.set(
        "team-a",
        "ci-jwt",
        "token",
        &issuer.jwt("ci", &["ci-vault".to_string()]),
    );
    let (_, rotated) = resolve_connection(&from_secret, Some("team-a"), &resolver)
        .await
        .unwrap();
    let s2 = cache.get(config, rotated).await.unwrap();
    assert!(!Arc::ptr_eq(&s1, &s2));
    assert!(s2.read("sys/mounts").await.unwrap().is_some());

    // Bad input names the field, before any request.
    for (auth, field) in [
        (json!({"jwt": {"role": "ci"}}), "spec.auth.jwt"),
        (
            json!({"jwt": {"role": "ci", "serviceAccountName": "x",
                           "secretRef": {"name": "ci-jwt", "key": "token"}}}),
            "spec.auth.jwt",
        ),
        (
            json!({"jwt": {"role": "ci", "secretRef": {"name": "missing", "key": "token"}}}),
            "spec.auth.jwt.secretRef",
        ),
    ] {
        let err = resolve_connection(&spec(auth), Some("team-a"), &resolver)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(field), "{err}");
    }
    // A ClusterVaultConnection must name the ServiceAccount's namespace.
    let err = resolve_connection(&sa, None, &resolver)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("spec.auth.jwt.serviceAccountNamespace is required"),
        "{err}"
    );

    raw.disable_auth(&mount).await;
    let _ = raw.0.delete(&format!("sys/policies/acl/{policy}")).await;
}
