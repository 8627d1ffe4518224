//! What every reconcile gets: clients, the shared Vault session cache, the Event
//! recorder, the VaultPolicy store, options and metrics.

use std::sync::Arc;

use std::sync::OnceLock;

use certus_api::{AuthMethod, SecretEngine, VaultPolicy, VaultRole, FIELD_MANAGER};
use certus_vault_client::SessionCache;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;

use crate::backoff::FailureCounter;
use crate::metrics::Metrics;
use crate::options::RunOptions;
use crate::resolve::KubeResolver;

/// Shared state of the controllers of one process.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// One Vault session per identity, shared by all controllers.
    pub sessions: Arc<SessionCache>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Every watched `VaultPolicy` (conflict detection, connection → policy mapping).
    pub policies: Store<VaultPolicy>,
    /// Process settings.
    pub options: RunOptions,
    /// Counters (shared with `options.metrics`).
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for backoff.
    pub failures: FailureCounter,
    pub(crate) resolver: KubeResolver,
    policy_trigger: Option<UnboundedSender<ObjectRef<VaultPolicy>>>,
    /// The stores and reconcile triggers of the Vault configuration kinds, for the claim
    /// check (two resources on one Vault path), set when their controllers start.
    pub(crate) config_claims: ConfigClaims,
}

/// Per configuration kind: the reflector store of every watched object and a sender
/// that requests a reconcile of one (see [`crate::config::ConfigKind::claims`]).
pub type Claims<K> = (Store<K>, UnboundedSender<ObjectRef<K>>);

/// [`Claims`] of `SecretEngine`, `AuthMethod` and `VaultRole`.
#[derive(Default)]
pub struct ConfigClaims {
    pub(crate) engines: OnceLock<Claims<SecretEngine>>,
    pub(crate) auths: OnceLock<Claims<AuthMethod>>,
    pub(crate) roles: OnceLock<Claims<VaultRole>>,
}

impl Context {
    /// A context over `client`. `policies` is the store of the VaultPolicy reflector
    /// (tests fill one by hand with `reflector::store()`).
    pub fn new(client: Client, options: RunOptions, policies: Store<VaultPolicy>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: options.instance.clone(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            resolver: KubeResolver::new(client.clone()),
            sessions: options.sessions.0.clone(),
            metrics: options.metrics.clone(),
            failures: FailureCounter::default(),
            policies,
            options,
            client,
            policy_trigger: None,
            config_claims: ConfigClaims::default(),
        }
    }

    /// Enables the claim check of configuration kind `K` over `store` (the reflector
    /// store of every watched `K`); `trigger` requests reconciles (the next claimant
    /// once an owner is deleted). Set once per context; later calls are ignored.
    pub fn enable_claims<K: crate::config::ConfigKind>(
        &self,
        store: Store<K>,
        trigger: UnboundedSender<ObjectRef<K>>,
    ) {
        K::claims_cell(self).get_or_init(|| (store, trigger));
    }

    /// Lets reconciles request reconciles of other VaultPolicies (e.g. the next claimant
    /// of a Vault policy name once its owner is gone).
    pub fn with_policy_trigger(mut self, tx: UnboundedSender<ObjectRef<VaultPolicy>>) -> Self {
        self.policy_trigger = Some(tx);
        self
    }

    /// Shares an existing session cache (e.g. with another component of the process).
    pub fn with_sessions(mut self, sessions: Arc<SessionCache>) -> Self {
        self.sessions = sessions;
        self
    }

    pub(crate) fn trigger_policies(&self, refs: impl IntoIterator<Item = ObjectRef<VaultPolicy>>) {
        if let Some(tx) = &self.policy_trigger {
            for r in refs {
                let _ = tx.unbounded_send(r);
            }
        }
    }

    /// Publishes an Event; a failure is logged, never fails the reconcile.
    pub(crate) async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note, 1000)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(reason, error = %crate::error::kube_detail(&e), "publishing an Event failed");
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(super::truncate("abc".into(), 10), "abc");
        assert_eq!(super::truncate("abcdefgh".into(), 6), "abc...");
        let t = super::truncate("ééééé".into(), 6);
        assert!(t.len() <= 6 && t.ends_with("..."), "{t}");
    }
}
