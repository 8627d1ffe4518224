//! Keeping a login token across restarts and leader changes.
//!
//! Vault ties every lease (and child token) to the token that created it: when that
//! token expires, its leases are revoked with it. An operator that logs in anew after a
//! restart cannot renew the old login token, so every credential issued before the
//! restart would have to be re-issued before the old token's deadline, and every
//! workload restarted on the new credential. With a [`TokenStore`], the session saves
//! its login token (and accessor) after each login and, on its first need for a token
//! in a new process, adopts the saved one when Vault still accepts it (`lookup-self`,
//! same accessor): the same token keeps being renewed and nothing is re-issued.
//!
//! Only tokens obtained by login (AppRole, Kubernetes) are saved; a token given by the
//! user is already where the user keeps it. The operator stores them in one Kubernetes
//! Secret per identity in its own namespace (see `certus-controller`); tests use
//! [`MemoryTokenStore`].

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::SecretString;

/// A saved login token. The accessor is compared with what Vault reports for the token
/// before it is adopted.
#[derive(Clone)]
pub struct PersistedToken {
    pub token: SecretString,
    pub accessor: String,
}

impl std::fmt::Debug for PersistedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistedToken")
            .field("token", &"[redacted]")
            .field("accessor", &self.accessor)
            .finish()
    }
}

/// Where sessions keep their login tokens, by a key derived from the identity (address,
/// namespace, auth method, role and a hash of any secret part; never a secret itself).
/// Errors are messages without secret values; a failing store never fails a request:
/// the session logs in as it would without one.
pub trait TokenStore: Send + Sync {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<PersistedToken>, String>>;
    fn save<'a>(
        &'a self,
        key: &'a str,
        token: &'a PersistedToken,
    ) -> BoxFuture<'a, Result<(), String>>;
    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// A [`TokenStore`] in memory (tests; a process that restarts loses it).
#[derive(Default)]
pub struct MemoryTokenStore {
    tokens: Mutex<HashMap<String, PersistedToken>>,
}

impl MemoryTokenStore {
    pub fn new() -> Self {
        Self::default()
    }
    /// The saved accessors by key.
    pub fn accessors(&self) -> HashMap<String, String> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.accessor.clone()))
            .collect()
    }
    /// Replaces a saved token (tests: a stale or foreign token).
    pub fn put(&self, key: &str, token: PersistedToken) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), token);
    }
}

impl TokenStore for MemoryTokenStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<PersistedToken>, String>> {
        let t = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        Box::pin(async move { Ok(t) })
    }
    fn save<'a>(
        &'a self,
        key: &'a str,
        token: &'a PersistedToken,
    ) -> BoxFuture<'a, Result<(), String>> {
        self.put(key, token.clone());
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), String>> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Box::pin(async { Ok(()) })
    }
}
