//! Where projected Secrets go and how workloads are restarted: the Kubernetes API for
//! the operator, an output directory for the CLI, memory for tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use certus_api::RolloutTarget;

use crate::error::ReconcileError;

/// The resource that owns a projected Secret (becomes a controller owner reference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// Empty when unknown (the CLI has no uid).
    pub uid: String,
}

/// A Secret the operator wants to exist, exactly as described (server-side apply).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDraft {
    pub namespace: String,
    pub name: String,
    pub type_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub data: BTreeMap<String, Vec<u8>>,
    pub owner: Option<Owner>,
}

impl std::fmt::Debug for SecretDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretDraft")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("type", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("annotations", &self.annotations)
            .finish()
    }
}

/// A Secret as it exists now.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LiveSecret {
    pub type_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for LiveSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSecret")
            .field("type", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("annotations", &self.annotations)
            .finish()
    }
}

/// Reads and writes projected Secrets.
pub trait SecretStore: Send + Sync {
    /// The Secret, or `None` when it does not exist.
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<LiveSecret>, ReconcileError>> + Send;
    /// Creates or replaces the Secret with exactly this content.
    fn apply(&self, draft: &SecretDraft)
        -> impl Future<Output = Result<(), ReconcileError>> + Send;
    /// Deletes the Secret; absent is success.
    fn delete(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send;
}

/// Rolls out workloads whose configuration changed.
pub trait Restarter: Send + Sync {
    /// Restarts the targets in `namespace`, stamping `stamp` into the pod template, and
    /// returns `Kind/name` of each workload restarted.
    fn restart(
        &self,
        namespace: &str,
        targets: &[RolloutTarget],
        stamp: &str,
    ) -> impl Future<Output = Result<Vec<String>, ReconcileError>> + Send;
}

/// Secrets kept in memory (tests, benchmarks).
#[derive(Default)]
pub struct MemorySecretStore {
    secrets: Mutex<BTreeMap<(String, String), LiveSecret>>,
    writes: Mutex<u64>,
}

impl MemorySecretStore {
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of `apply` calls so far.
    pub fn writes(&self) -> u64 {
        *self.writes.lock().unwrap()
    }
    /// Direct access for tests (e.g. to tamper with a Secret).
    pub fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<(String, String), LiveSecret>) -> T) -> T {
        f(&mut self.secrets.lock().unwrap())
    }
}

impl SecretStore for MemorySecretStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<LiveSecret>, ReconcileError> {
        Ok(self
            .secrets
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
    async fn apply(&self, d: &SecretDraft) -> Result<(), ReconcileError> {
        *self.writes.lock().unwrap() += 1;
        let live = LiveSecret {
            type_: d.type_.clone(),
            labels: d.labels.clone(),
            annotations: d.annotations.clone(),
            data: d.data.clone(),
        };
        self.secrets
            .lock()
            .unwrap()
            .insert((d.namespace.clone(), d.name.clone()), live);
        Ok(())
    }
    async fn delete(&self, namespace: &str, name: &str) -> Result<(), ReconcileError> {
        self.secrets
            .lock()
            .unwrap()
            .remove(&(namespace.to_string(), name.to_string()));
        Ok(())
    }
}

/// Records restarts instead of making them (tests; the CLI, which has no cluster).
#[derive(Default)]
pub struct RecordingRestarter {
    pub restarts: Mutex<Vec<(String, String, String)>>,
}

impl Restarter for RecordingRestarter {
    async fn restart(
        &self,
        namespace: &str,
        targets: &[RolloutTarget],
        stamp: &str,
    ) -> Result<Vec<String>, ReconcileError> {
        let mut out = vec![];
        for t in targets {
            let what = match (&t.name, &t.selector) {
                (Some(n), _) => format!("{:?}/{n}", t.kind),
                (None, Some(sel)) => format!(
                    "{:?} with labels {:?}",
                    t.kind,
                    sel.match_labels.clone().unwrap_or_default()
                ),
                (None, None) => continue,
            };
            self.restarts.lock().unwrap().push((
                namespace.to_string(),
                what.clone(),
                stamp.to_string(),
            ));
            out.push(what);
        }
        Ok(out)
    }
}

/// Hash of Secret data (keys and values), for the data-hash annotation that detects
/// edits. A SHA-256 prefix of credential material is not reversible for the
/// high-entropy values Vault issues.
pub fn data_hash(data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut buf = Vec::new();
    for (k, v) in data {
        buf.extend_from_slice(&(k.len() as u64).to_be_bytes());
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(&(v.len() as u64).to_be_bytes());
        buf.extend_from_slice(v);
    }
    certus_core::hash::short_hash(&buf)
}
