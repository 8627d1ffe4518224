//! Where the file reader resumes after a restart.
//!
//! A [`Checkpoint`] is the position right after the last line that was fully processed
//! (parsed, evaluated, alerts handed to the sinks), plus what identifies the file: its
//! device and inode, and a SHA-256 of its first line (or first
//! [`PREFIX_MAX`] bytes), so a file replaced under the same name — even one that reuses
//! the inode — is recognised. It is saved through a [`CheckpointStore`] after processing,
//! so a clean restart neither repeats nor skips a line; after a crash, at most the lines
//! processed since the last save are processed again (at-least-once).

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Most bytes of the file's beginning that the identity hash covers.
pub const PREFIX_MAX: usize = 1024;

/// A resume position in an audit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The path the reader follows (informational).
    pub path: String,
    /// Device of the file the offset belongs to.
    pub dev: u64,
    /// Inode of the file the offset belongs to.
    pub inode: u64,
    /// Byte offset right after the last fully processed line.
    pub offset: u64,
    /// How many bytes of the file's start `prefix_hash` covers (0: not known yet).
    pub prefix_len: u64,
    /// Hex SHA-256 of the first `prefix_len` bytes.
    pub prefix_hash: String,
}

impl Checkpoint {
    /// JSON form (what [`FileCheckpointStore`] writes; a ConfigMap value works too).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON form.
    pub fn from_json(s: &str) -> Result<Self, CheckpointError> {
        serde_json::from_str(s).map_err(|e| CheckpointError(format!("invalid checkpoint: {e}")))
    }
}

/// A checkpoint store failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CheckpointError(pub String);

/// Persists the reader's checkpoint. The operator implements it over a ConfigMap (the
/// JSON from [`Checkpoint::to_json`] under one key); [`FileCheckpointStore`] keeps it in
/// a local file.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The last saved checkpoint, `None` when there is none yet.
    fn load(&self) -> BoxFuture<'_, Result<Option<Checkpoint>, CheckpointError>>;
    /// Saves a checkpoint (replacing the previous one).
    fn save<'a>(&'a self, cp: &'a Checkpoint) -> BoxFuture<'a, Result<(), CheckpointError>>;
}

/// A checkpoint in a local JSON file, replaced atomically (write + rename).
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    path: PathBuf,
}

impl FileCheckpointStore {
    /// A store at `path` (its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileCheckpointStore { path: path.into() }
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Checkpoint>, CheckpointError>> {
        Box::pin(async move {
            match tokio::fs::read_to_string(&self.path).await {
                Ok(s) => Checkpoint::from_json(&s).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(CheckpointError(format!(
                    "cannot read checkpoint {}: {e}",
                    self.path.display()
                ))),
            }
        })
    }

    fn save<'a>(&'a self, cp: &'a Checkpoint) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(async move {
            let tmp = self.path.with_extension("tmp");
            let err = |e: std::io::Error| {
                CheckpointError(format!(
                    "cannot write checkpoint {}: {e}",
                    self.path.display()
                ))
            };
            tokio::fs::write(&tmp, cp.to_json()).await.map_err(err)?;
            tokio::fs::rename(&tmp, &self.path).await.map_err(err)
        })
    }
}

/// A checkpoint kept in memory (tests; or a reader that should always start fresh).
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore(std::sync::Mutex<Option<Checkpoint>>);

impl MemoryCheckpointStore {
    /// The current checkpoint.
    pub fn get(&self) -> Option<Checkpoint> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl CheckpointStore for MemoryCheckpointStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Checkpoint>, CheckpointError>> {
        let cp = self.get();
        Box::pin(async move { Ok(cp) })
    }

    fn save<'a>(&'a self, cp: &'a Checkpoint) -> BoxFuture<'a, Result<(), CheckpointError>> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(cp.clone());
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path().join("cp.json"));
        assert_eq!(store.load().await.unwrap(), None);
        let cp = Checkpoint {
            path: "/var/log/vault/audit.log".into(),
            dev: 1,
            inode: 42,
            offset: 1234,
            prefix_len: 100,
            prefix_hash: "ab".into(),
        };
        store.save(&cp).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(cp.clone()));
        assert!(cp.to_json().contains("\"prefixHash\":\"ab\""));
        std::fs::write(store.path(), "garbage").unwrap();
        assert!(store.load().await.is_err());
    }
}
