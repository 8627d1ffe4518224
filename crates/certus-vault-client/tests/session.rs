//! `VaultSession` against the real OpenBao started by `hack/services-up.sh`: one login per
//! identity, renewal before expiry, one re-login (not a loop) on permission errors,
//! revocation on shutdown, error classes.

use std::sync::Arc;
use std::time::Duration;

use certus_vault_client::{
    ConnectionConfig, Credentials, ErrorClass, SecretString, SessionCache, VaultSession,
};
use serde_json::json;

fn env() -> (String, String) {
    let addr = std::env::var("VAULT_ADDR").expect("VAULT_ADDR is not set: run `hack/services-up.sh && . .hack/env` (these tests need a real OpenBao)");
    let token = std::env::var("VAULT_TOKEN")
        .expect("VAULT_TOKEN is not set: run `hack/services-up.sh && . .hack/env`");
    (addr, token)
}

async fn root() -> Arc<VaultSession> {
    let (addr, token) = env();
    VaultSession::connect(
        ConnectionConfig::new(addr),
        Credentials::Token(SecretString::new(token)),
    )
    .await
    .unwrap()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// Creates an AppRole mount + role with the given token settings and returns credentials.
async fn approle(
    root: &VaultSession,
    policies: &[&str],
    token_ttl: &str,
    token_max_ttl: &str,
) -> (String, Credentials) {
    let mount = unique("ar");
    root.write(&format!("sys/auth/{mount}"), &json!({"type": "approle"}))
        .await
        .unwrap();
    root.write(&format!("auth/{mount}/role/r"), &json!({"token_policies": policies, "token_ttl": token_ttl, "token_max_ttl": token_max_ttl})).await.unwrap();
    let role_id = root
        .read(&format!("auth/{mount}/role/r/role-id"))
        .await
        .unwrap()
        .unwrap()["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = root
        .write(&format!("auth/{mount}/role/r/secret-id"), &json!({}))
        .await
        .unwrap()
        .unwrap()["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    (
        mount.clone(),
        Credentials::AppRole {
            mount,
            role_id,
            secret_id: SecretString::new(secret_id),
        },
    )
}

async fn reader_policy(root: &VaultSession) -> String {
    let name = unique("reader");
    root.policy_write(&name, "path \"sys/policies/acl/*\" { capabilities = [\"read\"] }\npath \"auth/token/revoke-self\" { capabilities = [\"update\"] }").await.unwrap();
    name
}

#[tokio::test]
async fn many_concurrent_requests_share_one_login() {
    let root = root().await;
    let policy = reader_policy(&root).await;
    let (mount, creds) = approle(&root, &[&policy], "10m", "1h").await;
    let cache = SessionCache::new();
    let (addr, _) = env();
    let s = cache
        .get(ConnectionConfig::new(&addr), creds.clone())
        .await
        .unwrap();
    let again = cache
        .get(ConnectionConfig::new(&addr), creds)
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&s, &again), "one session per identity");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = s.clone();
            let p = policy.clone();
            tokio::spawn(async move { s.policy_read(&p).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    let stats = cache.stats().snapshot();
    assert_eq!(stats.logins, 1, "{stats:?}");
    assert_eq!(stats.reads, 50);
    root.write(&format!("sys/auth/{mount}"), &json!({}))
        .await
        .ok();
    root.request(reqwest::Method::DELETE, &format!("sys/auth/{mount}"), None)
        .await
        .unwrap();
    root.policy_delete(&policy).await.unwrap();
}

#[tokio::test]
async fn token_is_renewed_before_it_expires() {
    let root = root().await;
    let policy = reader_policy(&root).await;
    let (mount, creds) = approle(&root, &[&policy], "6s", "10m").await;
    let (addr, _) = env();
    let s = VaultSession::connect(ConnectionConfig::new(addr), creds)
        .await
        .unwrap();
    assert!(s.policy_read(&policy).await.unwrap().is_some());
    // Past two thirds of the 6s TTL but before expiry: the next request renews first.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(s.policy_read(&policy).await.unwrap().is_some());
    let st = s.stats().snapshot();
    assert_eq!((st.logins, st.renewals), (1, 1), "{st:?}");
    // Renewed token lives on: after the original 6s it still works without a new login.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(s.policy_read(&policy).await.unwrap().is_some());
    assert_eq!(s.stats().snapshot().logins, 1);
    root.request(reqwest::Method::DELETE, &format!("sys/auth/{mount}"), None)
        .await
        .unwrap();
    root.policy_delete(&policy).await.unwrap();
}

#[tokio::test]
async fn revoked_token_is_replaced_once_and_denied_paths_do_not_loop() {
    let root = root().await;
    let policy = reader_policy(&root).await;
    let (mount, creds) = approle(&root, &[&policy], "10m", "1h").await;
    let (addr, _) = env();
    let s = VaultSession::connect(ConnectionConfig::new(addr), creds)
        .await
        .unwrap();
    assert!(s.policy_read(&policy).await.unwrap().is_some());
    // Someone revokes our token: the next request gets 403, logs in again once, succeeds.
    s.write("auth/token/revoke-self", &json!({})).await.unwrap();
    assert!(s.policy_read(&policy).await.unwrap().is_some());
    assert_eq!(s.stats().snapshot().logins, 2);
    // A path the role may not read: one re-login, one retry, then a permission error.
    let err = s.read("sys/mounts").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::PermissionDenied, "{err}");
    assert_eq!(
        s.stats().snapshot().logins,
        3,
        "exactly one extra login, not a loop"
    );
    root.request(reqwest::Method::DELETE, &format!("sys/auth/{mount}"), None)
        .await
        .unwrap();
    root.policy_delete(&policy).await.unwrap();
}

#[tokio::test]
async fn revoke_on_shutdown_invalidates_the_login_token() {
    let root = root().await;
    let policy = reader_policy(&root).await;
    let (mount, creds) = approle(&root, &[&policy], "10m", "1h").await;
    let (addr, _) = env();
    let s = VaultSession::connect(ConnectionConfig::new(addr), creds)
        .await
        .unwrap();
    root.policy_write(&policy, "path \"sys/policies/acl/*\" { capabilities = [\"read\"] }\npath \"auth/token/lookup-self\" { capabilities = [\"read\"] }").await.unwrap();
    let info = s.token_info().await.unwrap();
    assert!(info.policies.contains(&policy), "{info:?}");
    let lookup = root
        .write(
            "auth/token/lookup-accessor",
            &json!({"accessor": info.accessor}),
        )
        .await;
    assert!(lookup.is_ok());
    s.revoke().await.unwrap();
    let gone = root
        .write(
            "auth/token/lookup-accessor",
            &json!({"accessor": info.accessor}),
        )
        .await;
    assert!(gone.is_err(), "token still alive after revoke: {gone:?}");
    root.request(reqwest::Method::DELETE, &format!("sys/auth/{mount}"), None)
        .await
        .unwrap();
    root.policy_delete(&policy).await.unwrap();
}

#[tokio::test]
async fn static_token_is_never_revoked_and_errors_are_classified() {
    let s = root().await;
    assert!(s
        .read("secret/data/does-not-exist-certus")
        .await
        .unwrap()
        .is_none());
    let invalid = s
        .write(
            "sys/mounts/certus-bad-mount",
            &json!({"type": "no-such-engine-type"}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            invalid.class,
            ErrorClass::InvalidRequest | ErrorClass::Transient
        ),
        "{invalid}"
    );
    s.revoke().await.unwrap();
    // Still usable: a token given by the user is not ours to revoke.
    assert!(s
        .token_info()
        .await
        .unwrap()
        .policies
        .contains(&"root".to_string()));
    let h = s.health().await.unwrap();
    assert!(h.initialized && !h.sealed && !h.version.is_empty(), "{h:?}");

    let mut cfg = ConnectionConfig::new("http://127.0.0.1:1");
    cfg.timeout = Duration::from_secs(2);
    let dead = VaultSession::connect(cfg, Credentials::Token(SecretString::new("x")))
        .await
        .unwrap();
    let e = dead.read("sys/mounts").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(!e.to_string().contains("X-Vault-Token"));

    let bad = VaultSession::connect(
        ConnectionConfig::new(std::env::var("VAULT_ADDR").unwrap()),
        Credentials::Token(SecretString::new("not-a-token")),
    )
    .await
    .unwrap();
    let e = bad.read("sys/mounts").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::PermissionDenied, "{e}");
    assert!(!e.to_string().contains("not-a-token"), "{e}");
}

/// Restart / leader change: a new process with the same token store adopts the saved
/// login token (0 logins, same accessor) instead of logging in, so leases the token
/// issued stay renewable. A revoked saved token, or one whose accessor does not match,
/// is not adopted: one normal login, and the new token is saved.
#[tokio::test]
async fn a_saved_login_token_is_adopted_by_a_new_process_instead_of_logging_in() {
    use certus_vault_client::{MemoryTokenStore, PersistedToken};
    let root = root().await;
    let policy = reader_policy(&root).await;
    let (mount, creds) = approle(&root, &[&policy], "10m", "1h").await;
    let (addr, root_token) = env();
    let cfg = || ConnectionConfig::new(&addr);
    let key = SessionCache::token_key(&cfg(), &creds);
    let store = Arc::new(MemoryTokenStore::new());

    let first = SessionCache::with_token_store(store.clone());
    let s1 = first.get(cfg(), creds.clone()).await.unwrap();
    assert!(s1.policy_read(&policy).await.unwrap().is_some());
    let accessor = s1.token_info().await.unwrap().accessor;
    assert_eq!(first.stats().snapshot().logins, 1);
    assert_eq!(
        store.accessors().get(&key),
        Some(&accessor),
        "saved after login"
    );

    // A new process: same store, new cache. No login; the same token.
    let second = SessionCache::with_token_store(store.clone());
    let s2 = second.get(cfg(), creds.clone()).await.unwrap();
    assert!(s2.policy_read(&policy).await.unwrap().is_some());
    assert_eq!(s2.token_info().await.unwrap().accessor, accessor);
    let st = second.stats().snapshot();
    assert_eq!((st.logins, st.adoptions), (0, 1), "{st:?}");
    // An adopted token may be the parent of leases: shutdown leaves it alive.
    s2.revoke().await.unwrap();
    assert!(root
        .write("auth/token/lookup-accessor", &json!({"accessor": accessor}))
        .await
        .is_ok());

    // Revoked behind our back: the next process logs in once and saves the new token.
    root.write("auth/token/revoke-accessor", &json!({"accessor": accessor}))
        .await
        .unwrap();
    let third = SessionCache::with_token_store(store.clone());
    let s3 = third.get(cfg(), creds.clone()).await.unwrap();
    assert!(s3.policy_read(&policy).await.unwrap().is_some());
    let st = third.stats().snapshot();
    assert_eq!((st.logins, st.adoptions), (1, 0), "{st:?}");
    let new_accessor = s3.token_info().await.unwrap().accessor;
    assert_ne!(new_accessor, accessor);
    assert_eq!(store.accessors().get(&key), Some(&new_accessor));

    // A valid token saved with another accessor is not adopted.
    store.put(
        &key,
        PersistedToken {
            token: SecretString::new(root_token),
            accessor: "not-its-accessor".into(),
        },
    );
    let fourth = SessionCache::with_token_store(store.clone());
    let s4 = fourth.get(cfg(), creds.clone()).await.unwrap();
    assert!(s4.policy_read(&policy).await.unwrap().is_some());
    let st = fourth.stats().snapshot();
    assert_eq!((st.logins, st.adoptions), (1, 0), "{st:?}");
    assert!(s4.token_info().await.unwrap().policies.contains(&policy));

    // A rotated SecretID logs in as the same role: the same key, so a new process with
    // the new SecretID adopts the saved token instead of piling up another one.
    let rotated = match &creds {
        Credentials::AppRole { mount, role_id, .. } => {
            let new_id = root
                .write(&format!("auth/{mount}/role/r/secret-id"), &json!({}))
                .await
                .unwrap()
                .unwrap()["data"]["secret_id"]
                .as_str()
                .unwrap()
                .to_string();
            Credentials::AppRole {
                mount: mount.clone(),
                role_id: role_id.clone(),
                secret_id: SecretString::new(new_id),
            }
        }
        other => panic!("AppRole credentials expected, got {other:?}"),
    };
    assert_eq!(SessionCache::token_key(&cfg(), &rotated), key);
    let after_rotation = SessionCache::with_token_store(store.clone());
    let s_rot = after_rotation.get(cfg(), rotated).await.unwrap();
    assert!(s_rot.policy_read(&policy).await.unwrap().is_some());
    let st = after_rotation.stats().snapshot();
    assert_eq!((st.logins, st.adoptions), (0, 1), "{st:?}");
    assert_eq!(store.accessors().len(), 1, "one saved token per role");

    // A token given by the user is never saved.
    let (_, token) = env();
    let fifth = SessionCache::with_token_store(store.clone());
    let given = Credentials::Token(SecretString::new(token));
    let s5 = fifth.get(cfg(), given.clone()).await.unwrap();
    s5.policy_read(&policy).await.unwrap();
    assert!(!store
        .accessors()
        .contains_key(&SessionCache::token_key(&cfg(), &given)));

    // Shutdown of a session that issued nothing revokes its token and forgets it.
    s4.revoke().await.unwrap();
    assert!(!store.accessors().contains_key(&key));
    root.request(reqwest::Method::DELETE, &format!("sys/auth/{mount}"), None)
        .await
        .unwrap();
    root.policy_delete(&policy).await.unwrap();
}

/// A given token is validated with one lookup-self at login; the connection check's
/// `token_info` right after reuses that answer (one request, not two), and a later call
/// looks it up again.
#[tokio::test]
async fn token_info_right_after_a_token_login_makes_no_second_lookup() {
    let (addr, token) = env();
    let s = VaultSession::connect(
        ConnectionConfig::new(&addr),
        Credentials::Token(SecretString::new(token)),
    )
    .await
    .unwrap();
    let info = s.token_info().await.unwrap();
    assert!(info.policies.contains(&"root".to_string()), "{info:?}");
    assert_eq!(s.stats().snapshot().reads, 1, "login lookup-self only");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let again = s.token_info().await.unwrap();
    assert_eq!(again.accessor, info.accessor);
    assert_eq!(
        s.stats().snapshot().reads,
        2,
        "a stale answer is looked up again"
    );
}
