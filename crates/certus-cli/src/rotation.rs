//! `plan`/`apply` of `StaticSecret` and `RotationPolicy` manifests without a cluster.
//!
//! The same pipelines as the operator, with what a command line has: the projected
//! Secrets go to `--output-dir` (`<dir>/<namespace>/<name>.yaml`, Secret manifests),
//! restarts are only reported (there is no cluster), and there is no status. The state a
//! rotation needs lives in Vault (KV metadata: the last rotation, the handled
//! `rotate-now` value, grace periods) or in the written Secret (AppRole SecretIDs), so
//! running `apply` again, from any machine, continues where the last run stopped. A
//! `databaseRoot` target, whose last rotation Vault does not record, is rotated from the
//! command line only on `vault.certus.io/rotate-now`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use certus_api::{RotationPolicy, StaticSecret};
use certus_core::rotation::SystemClock;
use certus_core::Change;
use certus_reconcile::rotation::{self as rot, RotationLast};
use certus_reconcile::sink::{LiveSecret, RecordingRestarter, SecretDraft, SecretStore};
use certus_reconcile::static_secret::{self as ss, StaticLast};
use certus_reconcile::{Mode, ReconcileError};
use certus_vault_client::VaultSession;
use rand::SeedableRng;

/// Secret manifests in a directory: `<dir>/<namespace>/<name>.yaml`. Without a
/// directory nothing is kept (plan, or apply without `--output-dir`).
#[derive(Clone, Debug, Default)]
pub struct SecretDir {
    dir: Option<PathBuf>,
}

impl SecretDir {
    pub fn new(dir: Option<&Path>) -> Self {
        SecretDir {
            dir: dir.map(Path::to_path_buf),
        }
    }

    fn file(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(namespace).join(format!("{name}.yaml")))
    }
}

/// The Secret manifest of a draft (pure).
pub fn secret_manifest(d: &SecretDraft) -> String {
    let data: BTreeMap<&String, String> = d
        .data
        .iter()
        .map(|(k, v)| (k, certus_core::rotation::base64_std(v)))
        .collect();
    let v = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": d.name, "namespace": d.namespace, "labels": d.labels, "annotations": d.annotations},
        "type": d.type_, "data": data,
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

fn io_err(what: String, e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Kubernetes(format!("{what}: {e}"))
}

impl SecretStore for SecretDir {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<LiveSecret>, ReconcileError> {
        let Some(f) = self.file(namespace, name) else {
            return Ok(None);
        };
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("reading {}", f.display()), e)),
        };
        // Errors name the file only: the content is secret.
        let s: k8s_openapi::api::core::v1::Secret = serde_yaml::from_str(&text)
            .map_err(|_| io_err(format!("reading {}", f.display()), "not a Secret manifest"))?;
        Ok(Some(LiveSecret {
            type_: s.type_.unwrap_or_else(|| "Opaque".into()),
            labels: s.metadata.labels.unwrap_or_default(),
            annotations: s.metadata.annotations.unwrap_or_default(),
            data: s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        }))
    }

    async fn apply(&self, d: &SecretDraft) -> Result<(), ReconcileError> {
        let Some(f) = self.file(&d.namespace, &d.name) else {
            return Ok(());
        };
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_err(format!("creating {}", parent.display()), e))?;
        }
        let tmp = f.with_extension("yaml.tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut file = opts
                .open(&tmp)
                .map_err(|e| io_err(format!("writing {}", tmp.display()), e))?;
            file.write_all(secret_manifest(d).as_bytes())
                .map_err(|e| io_err(format!("writing {}", tmp.display()), e))?;
        }
        std::fs::rename(&tmp, &f).map_err(|e| io_err(format!("writing {}", f.display()), e))
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), ReconcileError> {
        match self.file(namespace, name).map(std::fs::remove_file) {
            Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(format!("deleting {namespace}/{name}"), e))
            }
            _ => Ok(()),
        }
    }
}

/// What one StaticSecret or RotationPolicy did.
#[derive(Debug)]
pub struct Done {
    pub change: Change,
    /// Extra lines for the output (restarts that a cluster would make).
    pub notes: Vec<String>,
}

fn restarts_note(restarted: &[String]) -> Vec<String> {
    if restarted.is_empty() {
        vec![]
    } else {
        vec![format!(
            "would restart {} (no cluster: not restarted)",
            restarted.join(", ")
        )]
    }
}

/// Plans or applies one StaticSecret.
pub async fn static_secret(
    vault: &VaultSession,
    s: &StaticSecret,
    store: &SecretDir,
    mode: Mode,
) -> Result<Done, ReconcileError> {
    let restarter = RecordingRestarter::default();
    let o = ss::reconcile(
        vault,
        s,
        &StaticLast::default(),
        store,
        &restarter,
        mode,
        chrono::Utc::now(),
    )
    .await?;
    let mut change = o.change;
    if mode == Mode::Apply && store.dir.is_none() && o.written {
        change.detail = Some(format!(
            "{} (not written: no --output-dir)",
            change.detail.unwrap_or_default()
        ));
    }
    Ok(Done {
        change,
        notes: restarts_note(&o.restarted),
    })
}

/// Plans or applies one RotationPolicy.
pub async fn rotation_policy(
    vault: &VaultSession,
    p: &RotationPolicy,
    store: &SecretDir,
    mode: Mode,
) -> Result<Done, ReconcileError> {
    if p.spec.app_role_secret_id.is_some() && store.dir.is_none() && mode == Mode::Apply {
        return Err(ReconcileError::Invalid(
            "an appRoleSecretId target keeps its SecretID in the Secret it writes: run apply with --output-dir".into(),
        ));
    }
    let restarter = RecordingRestarter::default();
    let last = RotationLast {
        stateless: true,
        ..Default::default()
    };
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let r = rot::reconcile(
        vault,
        p,
        &last,
        store,
        &restarter,
        &SystemClock,
        &mut rng,
        mode,
    )
    .await
    .map_err(|e| {
        if e.conflict {
            ReconcileError::Conflict(e.error.to_string())
        } else {
            e.error
        }
    })?;
    let mut notes = restarts_note(&r.restarted);
    if r.rotation_due == Some(true) {
        notes.push(format!(
            "RotationDue: {} is older than {} and must be rotated by hand",
            r.target, r.when
        ));
    }
    Ok(Done {
        change: r.change,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secret_dir_round_trips_and_keeps_files_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretDir::new(Some(dir.path()));
        assert!(store.get("ns", "s").await.unwrap().is_none());
        let d = SecretDraft {
            namespace: "ns".into(),
            name: "s".into(),
            type_: "Opaque".into(),
            labels: [("l".to_string(), "v".to_string())].into(),
            annotations: [("a".to_string(), "b".to_string())].into(),
            data: [("k".to_string(), b"v\x00\xff".to_vec())].into(),
            owner: None,
        };
        store.apply(&d).await.unwrap();
        let f = dir.path().join("ns/s.yaml");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let live = store.get("ns", "s").await.unwrap().unwrap();
        assert_eq!(live.data["k"], b"v\x00\xff");
        assert_eq!(live.annotations["a"], "b");
        assert_eq!(live.labels["l"], "v");
        store.delete("ns", "s").await.unwrap();
        store.delete("ns", "s").await.unwrap();
        assert!(!f.exists());
        std::fs::create_dir_all(dir.path().join("ns")).unwrap();
        std::fs::write(&f, "data: [not, a, secret] SUPERSECRET").unwrap();
        let err = store.get("ns", "s").await.unwrap_err().to_string();
        assert!(!err.contains("SUPERSECRET"), "{err}");
        // Without a directory nothing is kept.
        let none = SecretDir::new(None);
        none.apply(&d).await.unwrap();
        assert!(none.get("ns", "s").await.unwrap().is_none());
    }
}
