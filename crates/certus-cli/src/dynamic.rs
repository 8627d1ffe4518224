//! `plan`/`apply` of `DynamicCredential` manifests without a cluster, and
//! `apply --watch`: a small foreground agent for machines outside Kubernetes.
//!
//! The Secrets go to the output directory as Secret manifests
//! (`<dir>/<namespace>/<name>.yaml`, mode 0600, see [`crate::rotation::SecretDir`]),
//! lease state included in their annotations: a second `apply` resumes the lease from
//! the file (renewing it when due) instead of issuing again. Without `--output-dir` the
//! credentials go to `./certus-out`: a credential that is not written anywhere could
//! neither be used nor renewed nor revoked.
//!
//! `--watch` keeps renewing (and re-issuing before the maximum TTL) until SIGINT or
//! SIGTERM, sleeping until the earliest next step; it also keeps the Vault tokens it
//! uses alive, because every lease dies with the token that issued it.
//! `--revoke-on-exit` revokes every credential (and deletes its file) when it stops.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use certus_api::DynamicCredential;
use certus_core::{Change, ResourceId};
use certus_reconcile::dynamic::{self, LeaseMemory};
use certus_reconcile::sink::RecordingRestarter;
use certus_reconcile::{Mode, ReconcileError};
use certus_vault_client::VaultSession;
use chrono::Utc;
use tokio::time::Instant;

use crate::rotation::SecretDir;

/// Where DynamicCredential Secrets go when `--output-dir` is not given.
pub const DEFAULT_OUTPUT: &str = "certus-out";

/// The DynamicCredentials of a manifest set, each with the session it issues through
/// (or why it has none).
pub struct DynamicSet {
    items: Vec<(DynamicCredential, Result<Arc<VaultSession>, ReconcileError>)>,
    store: SecretDir,
    dir: PathBuf,
    memory: LeaseMemory,
}

/// One line of output: a change, or an error.
pub type Line = Result<Change, (ResourceId, ReconcileError)>;

/// Exponential backoff with jitter after a failed reconcile: 5s, 10s, … up to 5 minutes.
fn backoff(failures: u32) -> Duration {
    let base = 5u64.saturating_mul(1 << failures.min(6)).min(300);
    let jitter = rand::random::<f64>() * 0.4 + 0.8;
    Duration::from_secs_f64(base as f64 * jitter)
}

impl DynamicSet {
    /// `output_dir`: `--output-dir`, or [`DEFAULT_OUTPUT`].
    pub fn new(
        items: Vec<(DynamicCredential, Result<Arc<VaultSession>, ReconcileError>)>,
        output_dir: Option<&Path>,
    ) -> Self {
        let dir = output_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT));
        DynamicSet {
            items,
            store: SecretDir::new(Some(&dir)),
            dir,
            memory: LeaseMemory::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The directory the Secrets are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn step(&self, i: usize, mode: Mode) -> (Line, Option<Duration>) {
        let (obj, session) = &self.items[i];
        let id = dynamic::resource_id(obj);
        let session = match session {
            Ok(s) => s,
            Err(e) => return (Err((id, e.clone())), None),
        };
        let now = Utc::now();
        match mode {
            Mode::Plan => match dynamic::plan(session, obj, &self.store, &self.memory, now).await {
                Ok(p) => (Ok(p.change(obj)), None),
                Err(e) => (Err((id, e)), None),
            },
            Mode::Apply => {
                let restarter = RecordingRestarter::default();
                match dynamic::reconcile(session, obj, &self.store, &restarter, &self.memory, now)
                    .await
                {
                    Ok(out) => {
                        let mut c = out.change(obj);
                        for e in out.events.iter().filter(|e| e.warning) {
                            c.detail = Some(format!(
                                "{}\nwarning: {}",
                                c.detail.unwrap_or_default(),
                                e.message
                            ));
                        }
                        if !out.restarted.is_empty() {
                            c.detail = Some(format!(
                                "{}\nwould restart {} (no cluster: restart them yourself)",
                                c.detail.unwrap_or_default(),
                                out.restarted.join(", ")
                            ));
                        }
                        (Ok(c), out.requeue_after)
                    }
                    Err(e) => (Err((id, e)), None),
                }
            }
        }
    }

    /// Reconciles (or plans) every credential once.
    pub async fn once(&self, mode: Mode) -> Vec<Line> {
        let mut out = vec![];
        for i in 0..self.items.len() {
            out.push(self.step(i, mode).await.0);
        }
        out
    }

    /// Keeps the credentials fresh until SIGINT/SIGTERM; with `revoke_on_exit`, revokes
    /// them all (and deletes their files) before returning.
    pub async fn watch(
        &self,
        revoke_on_exit: bool,
        print: impl Fn(&Line),
    ) -> anyhow::Result<ExitCode> {
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let n = self.items.len();
        let mut due: Vec<Option<Instant>> = vec![Some(Instant::now()); n];
        let mut failures = vec![0u32; n];
        let mut sessions: Vec<Arc<VaultSession>> = vec![];
        for s in self.items.iter().filter_map(|(_, s)| s.as_ref().ok()) {
            if !sessions.iter().any(|x| Arc::ptr_eq(x, s)) {
                sessions.push(s.clone());
            }
        }
        let mut token_due = Instant::now();
        println!(
            "watching {n} DynamicCredential(s), Secrets in {}; stop with Ctrl-C{}",
            self.dir.display(),
            if revoke_on_exit {
                " (credentials are revoked on exit)"
            } else {
                ""
            }
        );
        loop {
            let next = due
                .iter()
                .flatten()
                .copied()
                .chain([token_due])
                .min()
                .unwrap_or(token_due);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            let now = Instant::now();
            if token_due <= now {
                // Every lease dies with the token that issued it: keep the tokens alive.
                let mut wait = Duration::from_secs(30);
                for s in &sessions {
                    match s.refresh_if_due().await {
                        Ok(Some(d)) => wait = wait.min(d.max(Duration::from_millis(200))),
                        Ok(None) => {}
                        Err(e) => {
                            eprintln!(
                                "warning: keeping the Vault token alive failed, retrying: {e}"
                            );
                            wait = wait.min(Duration::from_secs(5));
                        }
                    }
                }
                token_due = now + wait;
            }
            for i in 0..n {
                if due[i].is_none_or(|d| d > now) {
                    continue;
                }
                let (line, requeue) = self.step(i, Mode::Apply).await;
                match &line {
                    Ok(c) => {
                        failures[i] = 0;
                        if c.action != certus_core::Action::NoChange {
                            print(&line);
                        }
                        due[i] = requeue.map(|d| Instant::now() + d);
                    }
                    Err((_, e)) => {
                        print(&line);
                        due[i] = if e.retryable() {
                            failures[i] += 1;
                            Some(Instant::now() + backoff(failures[i]))
                        } else {
                            None
                        };
                    }
                }
            }
        }
        println!("stopping");
        let mut code = ExitCode::SUCCESS;
        if revoke_on_exit {
            for (obj, session) in &self.items {
                let Ok(session) = session else { continue };
                let id = dynamic::resource_id(obj);
                match dynamic::revoke_everything(session, obj, &self.store, &self.memory).await {
                    Ok(c) => println!(
                        "- {id}: revoked {} credential(s) and removed its Secret file",
                        c.revoked
                    ),
                    Err(e) => {
                        println!("x {id}: revoking failed: {e}");
                        code = ExitCode::from(1);
                    }
                }
            }
        }
        Ok(code)
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let b1 = backoff(1);
        assert!(
            b1 >= Duration::from_secs(8) && b1 <= Duration::from_secs(12),
            "{b1:?}"
        );
        let b = backoff(30);
        assert!(
            b <= Duration::from_secs(360) && b >= Duration::from_secs(240),
            "{b:?}"
        );
    }

    #[test]
    fn defaults_to_certus_out() {
        let s = DynamicSet::new(vec![], None);
        assert_eq!(s.dir(), Path::new("certus-out"));
        assert!(s.is_empty());
    }
}
