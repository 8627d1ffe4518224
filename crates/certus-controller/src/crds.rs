//! Waiting for the CustomResourceDefinitions before the controllers start.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::error::kube_detail;

/// The state of one CRD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrdState {
    Established,
    NotInstalled,
    NotEstablished,
    /// Reading it failed (e.g. RBAC); the text says why.
    Unreadable(String),
}

/// Whether a CRD has the condition `Established=True`.
pub fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Reads the state of each named CRD.
pub async fn crd_states(client: &Client, names: &[String]) -> Vec<(String, CrdState)> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let state = match api.get_opt(name).await {
            Ok(Some(crd)) if is_established(&crd) => CrdState::Established,
            Ok(Some(_)) => CrdState::NotEstablished,
            Ok(None) => CrdState::NotInstalled,
            Err(e) => CrdState::Unreadable(kube_detail(&e)),
        };
        out.push((name.clone(), state));
    }
    out
}

/// Polls until every named CRD is established. Logs one clear line when waiting starts,
/// whenever what is missing changes, and every minute while nothing changes.
pub async fn wait_for_crds(client: &Client, names: &[String], poll: Duration) {
    let mut last_report: Option<(String, Instant)> = None;
    loop {
        let states = crd_states(client, names).await;
        let missing: Vec<String> = states
            .iter()
            .filter_map(|(n, s)| match s {
                CrdState::Established => None,
                CrdState::NotInstalled => Some(format!("{n} (not installed)")),
                CrdState::NotEstablished => Some(format!("{n} (not established yet)")),
                CrdState::Unreadable(e) => Some(format!("{n} (cannot be read: {e})")),
            })
            .collect();
        if missing.is_empty() {
            if last_report.is_some() {
                info!("CustomResourceDefinitions are established");
            }
            return;
        }
        let summary = missing.join(", ");
        let due = match &last_report {
            None => true,
            Some((prev, at)) => *prev != summary || at.elapsed() >= Duration::from_secs(60),
        };
        if due {
            let unreadable = states
                .iter()
                .any(|(_, s)| matches!(s, CrdState::Unreadable(_)));
            if unreadable {
                warn!(
                    "waiting for CustomResourceDefinitions: {summary}. The operator needs `get` on customresourcedefinitions.apiextensions.k8s.io (see the chart's RBAC)"
                );
            } else {
                info!(
                    "waiting for CustomResourceDefinitions to be established: {summary}. Install them with `certus-vault crds | kubectl apply --server-side -f -` (or the Helm chart)"
                );
            }
            last_report = Some((summary, Instant::now()));
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn established_condition() {
        let mut crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": "vaultpolicies.vault.certus.io"},
            "spec": {"group": "vault.certus.io", "names": {"kind": "VaultPolicy", "plural": "vaultpolicies"}, "scope": "Namespaced", "versions": []},
        }))
        .unwrap();
        assert!(!is_established(&crd));
        crd.status = serde_json::from_value(json!({
            "conditions": [
                {"type": "NamesAccepted", "status": "True"},
                {"type": "Established", "status": "False"}
            ]
        }))
        .unwrap();
        assert!(!is_established(&crd));
        crd.status = serde_json::from_value(json!({
            "conditions": [{"type": "Established", "status": "True"}]
        }))
        .unwrap();
        assert!(is_established(&crd));
    }
}
