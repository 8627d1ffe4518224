//! The Kubernetes side of projected Secrets: [`KubeSecretStore`] writes them with
//! server-side apply (owned by the resource that projects them) and [`KubeRestarter`]
//! rolls out workloads by bumping a pod template annotation, like
//! `kubectl rollout restart`. Shared by the StaticSecret, RotationPolicy (and
//! DynamicCredential) controllers.

use std::collections::BTreeMap;

use certus_api::{annotations, RolloutTarget, WorkloadKind, FIELD_MANAGER};
use certus_reconcile::sink::{LiveSecret, Restarter, SecretDraft, SecretStore};
use certus_reconcile::ReconcileError;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::error::kube_error;

/// Projected Secrets in the cluster.
#[derive(Clone)]
pub struct KubeSecretStore {
    client: Client,
}

impl KubeSecretStore {
    pub fn new(client: Client) -> Self {
        KubeSecretStore { client }
    }
}

/// The server-side apply body of a draft (pure).
pub fn secret_body(d: &SecretDraft) -> serde_json::Value {
    let data: BTreeMap<&String, String> = d
        .data
        .iter()
        .map(|(k, v)| (k, certus_core::rotation::base64_std(v)))
        .collect();
    let mut metadata = json!({
        "name": d.name,
        "namespace": d.namespace,
        "labels": d.labels,
        "annotations": d.annotations,
    });
    if let Some(o) = d.owner.as_ref().filter(|o| !o.uid.is_empty()) {
        metadata["ownerReferences"] = json!([{
            "apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid,
            "controller": true, "blockOwnerDeletion": true,
        }]);
    }
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": d.type_, "data": data})
}

impl SecretStore for KubeSecretStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<LiveSecret>, ReconcileError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let s = api
            .get_opt(name)
            .await
            .map_err(|e| kube_error(&format!("reading Secret {namespace}/{name}"), &e))?;
        Ok(s.map(|s| LiveSecret {
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
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &d.namespace);
        api.patch(
            &d.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret_body(d)),
        )
        .await
        .map(|_| ())
        .map_err(|e| kube_error(&format!("writing Secret {}/{}", d.namespace, d.name), &e))
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), ReconcileError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_error(
                &format!("deleting Secret {namespace}/{name}"),
                &e,
            )),
        }
    }
}

/// A label selector as the `labelSelector` query string (pure).
pub fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.clone().unwrap_or_default() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    parts.join(",")
}

/// Rolls out workloads by setting `vault.certus.io/restartedAt` on their pod template.
#[derive(Clone)]
pub struct KubeRestarter {
    client: Client,
}

impl KubeRestarter {
    pub fn new(client: Client) -> Self {
        KubeRestarter { client }
    }

    async fn restart_kind<K>(
        &self,
        namespace: &str,
        kind: &str,
        t: &RolloutTarget,
        patch: &serde_json::Value,
    ) -> Result<Vec<String>, ReconcileError>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let names: Vec<String> = match (&t.name, &t.selector) {
            (Some(n), _) => vec![n.clone()],
            (None, Some(sel)) => api
                .list_metadata(&ListParams::default().labels(&selector_string(sel)))
                .await
                .map_err(|e| kube_error(&format!("listing {kind}s in {namespace}"), &e))?
                .items
                .into_iter()
                .filter_map(|m| m.metadata.name)
                .collect(),
            (None, None) => vec![],
        };
        let mut out = vec![];
        for n in names {
            match api
                .patch(&n, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => out.push(format!("{kind}/{n}")),
                // A workload that does not exist (yet) has nothing to restart.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    tracing::debug!(kind, name = %n, "rollout target does not exist; skipped")
                }
                Err(e) => {
                    return Err(kube_error(
                        &format!("restarting {kind} {namespace}/{n}"),
                        &e,
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// The merge patch that rolls out a workload (pure).
pub fn restart_patch(stamp: &str) -> serde_json::Value {
    json!({"spec": {"template": {"metadata": {"annotations": {annotations::RESTARTED_AT: stamp}}}}})
}

impl Restarter for KubeRestarter {
    async fn restart(
        &self,
        namespace: &str,
        targets: &[RolloutTarget],
        stamp: &str,
    ) -> Result<Vec<String>, ReconcileError> {
        let patch = restart_patch(stamp);
        let mut out = vec![];
        for t in targets {
            let done = match t.kind {
                WorkloadKind::Deployment => {
                    self.restart_kind::<Deployment>(namespace, "Deployment", t, &patch)
                        .await?
                }
                WorkloadKind::StatefulSet => {
                    self.restart_kind::<StatefulSet>(namespace, "StatefulSet", t, &patch)
                        .await?
                }
                WorkloadKind::DaemonSet => {
                    self.restart_kind::<DaemonSet>(namespace, "DaemonSet", t, &patch)
                        .await?
                }
            };
            out.extend(done);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_reconcile::sink::Owner;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn secret_body_is_owned_and_base64() {
        let d = SecretDraft {
            namespace: "ns".into(),
            name: "s".into(),
            type_: "Opaque".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            annotations: [("x".to_string(), "y".to_string())].into(),
            data: [("k".to_string(), b"foo".to_vec())].into(),
            owner: Some(Owner {
                api_version: "vault.certus.io/v1alpha1".into(),
                kind: "StaticSecret".into(),
                name: "o".into(),
                uid: "u-1".into(),
            }),
        };
        let b = secret_body(&d);
        assert_eq!(b["data"]["k"], "Zm9v");
        assert_eq!(b["type"], "Opaque");
        assert_eq!(b["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let mut no_uid = d.clone();
        no_uid.owner.as_mut().unwrap().uid.clear();
        assert!(secret_body(&no_uid)["metadata"]
            .get("ownerReferences")
            .is_none());
    }

    #[test]
    fn selectors_and_restart_patch() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "x".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(selector_string(&sel), "app=x,tier in (a,b),!canary");
        assert_eq!(
            restart_patch("t")["spec"]["template"]["metadata"]["annotations"]
                ["vault.certus.io/restartedAt"],
            "t"
        );
    }
}
