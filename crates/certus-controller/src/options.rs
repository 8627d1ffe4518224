//! Settings of the controller process.

use std::sync::Arc;
use std::time::Duration;

use certus_vault_client::SessionCache;

use crate::metrics::Metrics;

/// How [`run`](crate::run) behaves. `RunOptions::default()` is a sensible production setup.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Namespaces whose namespaced resources (`VaultConnection`, `VaultPolicy`) are
    /// watched. Empty means every namespace. `ClusterVaultConnection` is always watched
    /// cluster-wide.
    pub namespaces: Vec<String>,
    /// Reconciles that may run at the same time, per controller. `0` means unbounded.
    pub concurrency: u16,
    /// How often a reconciled resource is checked against Vault again (drift detection).
    pub resync_interval: Duration,
    /// How often a connection is checked (reachability, seal state, login).
    pub connection_check_interval: Duration,
    /// How long after `metadata.deletionTimestamp` the cleanup of a resource keeps
    /// retrying before the finalizer is released anyway (with a Warning Event), so a lost
    /// Vault or connection cannot block a namespace deletion forever.
    pub deletion_timeout: Duration,
    /// First retry delay after a transient error; doubles per consecutive failure.
    pub retry_base: Duration,
    /// Upper bound of the retry delay.
    pub retry_max: Duration,
    /// Requeue after an error that retrying cannot fix (invalid spec, conflict, namespace
    /// not allowed). A change of the resource triggers a reconcile immediately anyway;
    /// this is the safety net for changes elsewhere.
    pub await_change_requeue: Duration,
    /// How often the CustomResourceDefinitions are polled while waiting for them.
    pub crd_poll_interval: Duration,
    /// Debounce of the controllers' queues (bursts of events for one object become one
    /// reconcile).
    pub debounce: Duration,
    /// `reportingInstance` of Events, usually the Pod name.
    pub instance: Option<String>,
    /// Counters and histograms; register them on a `prometheus_client` registry with
    /// [`Metrics::register`] to serve `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The Vault sessions (one login per identity) the controllers use. Shared with the
    /// caller, which keeps the tokens renewed, exposes the request counters and revokes
    /// the login tokens on exit; it outlives one leadership term.
    pub sessions: SharedSessions,
    /// Where Vault's audit stream is read (file and/or socket audit device) and the
    /// checkpoint ConfigMap. Without a source, `AuditAlertRule`s are validated but not
    /// evaluated. See [`crate::audit`].
    pub audit: crate::audit::AuditConfig,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            namespaces: Vec::new(),
            concurrency: 8,
            resync_interval: Duration::from_secs(5 * 60),
            connection_check_interval: Duration::from_secs(60),
            deletion_timeout: Duration::from_secs(10 * 60),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(5 * 60),
            await_change_requeue: Duration::from_secs(30 * 60),
            crd_poll_interval: Duration::from_secs(2),
            debounce: Duration::from_millis(500),
            instance: std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()),
            metrics: Arc::new(Metrics::default()),
            sessions: SharedSessions::default(),
            audit: crate::audit::AuditConfig::default(),
        }
    }
}

/// A [`SessionCache`] shared between [`run`](crate::run) and its caller.
#[derive(Clone, Default)]
pub struct SharedSessions(pub Arc<SessionCache>);

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSessions")
    }
}

impl RunOptions {
    /// The watch scopes of a namespaced kind: `None` is "all namespaces".
    pub(crate) fn namespaced_scopes(&self) -> Vec<Option<String>> {
        if self.namespaces.is_empty() {
            vec![None]
        } else {
            let mut ns = self.namespaces.clone();
            ns.sort();
            ns.dedup();
            ns.into_iter().map(Some).collect()
        }
    }

    /// Whether resources of `namespace` are handled by this process.
    pub fn watches_namespace(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}
