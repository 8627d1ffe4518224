//! Cleanup after each test, run from `Drop` (so it also runs after a failed assertion or
//! an error return). It uses its own thread, runtime and clients: the test's runtime may
//! be unwinding, and a client built on it would need that runtime to make progress.
//!
//! Order matters: the operator is still running while the custom resources are deleted,
//! so its finalizers clean Vault up; connections are deleted after the resources that
//! use them; whatever the operator did not release in time is unblocked by removing the
//! finalizers, and the Vault objects the test created are deleted directly; then the
//! namespace goes, and finally the operator is stopped.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use crate::operator::Operator;
use crate::vault::{Vault, VaultEnv};
use crate::CrdKind;

/// How long the operator gets to release finalizers before they are removed.
const FINALIZER_GRACE: Duration = Duration::from_secs(60);
/// How long to wait for the namespace to disappear (not an error if it takes longer).
const NAMESPACE_WAIT: Duration = Duration::from_secs(60);

pub(crate) struct Cleanup {
    pub test: String,
    pub ns: String,
    pub config: Config,
    pub vault: VaultEnv,
    pub kinds: Vec<CrdKind>,
    pub cluster_objects: Vec<(ApiResource, String)>,
    pub vault_paths: Vec<String>,
    pub operator: Option<Operator>,
}

impl Cleanup {
    /// Runs the cleanup on a fresh thread and runtime and waits for it. Never panics.
    pub fn run_blocking(self) {
        let test = self.test.clone();
        let ns = self.ns.clone();
        let handle = std::thread::Builder::new()
            .name(format!("{test}-cleanup"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(self.run()),
                    Err(e) => eprintln!("e2e cleanup: cannot start a runtime: {e}"),
                }
            });
        match handle {
            Ok(h) => {
                if h.join().is_err() {
                    eprintln!("e2e {test}: WARNING: cleanup of namespace {ns} panicked; remove it with: kubectl delete ns {ns}");
                }
            }
            Err(e) => eprintln!(
                "e2e {test}: WARNING: cannot start the cleanup thread ({e}); remove namespace {ns} by hand"
            ),
        }
    }

    fn warn(&self, what: impl std::fmt::Display) {
        eprintln!("e2e {} cleanup: WARNING: {what}", self.test);
    }

    fn operator_alive(&self) -> bool {
        self.operator.as_ref().is_some_and(|o| o.exited().is_none())
    }

    async fn run(mut self) {
        let started = Instant::now();
        eprintln!("e2e {}: cleaning up namespace {}", self.test, self.ns);
        crate::install_crypto_provider();
        match Client::try_from(self.config.clone()) {
            Ok(client) => {
                self.delete_custom_resources(&client).await;
                self.delete_cluster_objects(&client).await;
                self.clean_vault().await;
                self.delete_namespace(&client).await;
            }
            Err(e) => {
                self.warn(format!(
                    "cannot build a Kubernetes client ({e}); remove namespace {} by hand",
                    self.ns
                ));
                self.clean_vault().await;
            }
        }
        if let Some(op) = self.operator.take() {
            op.stop();
            eprintln!("{}", op.log_excerpt(40));
        }
        eprintln!(
            "e2e {}: cleanup done in {:.1}s",
            self.test,
            started.elapsed().as_secs_f64()
        );
    }

    /// Deletes the test's custom resources kind by kind, connections last (the others
    /// need them for their finalizers).
    async fn delete_custom_resources(&self, client: &Client) {
        let namespaced: Vec<&CrdKind> = self.kinds.iter().filter(|k| k.namespaced).collect();
        let (connections, others): (Vec<&CrdKind>, Vec<&CrdKind>) = namespaced
            .into_iter()
            .partition(|k| k.resource.kind.ends_with("Connection"));
        for batch in [others, connections] {
            let apis: Vec<(String, Api<DynamicObject>)> = batch
                .iter()
                .map(|k| {
                    (
                        k.resource.kind.clone(),
                        Api::namespaced_with(client.clone(), &self.ns, &k.resource),
                    )
                })
                .collect();
            self.delete_and_wait(&apis).await;
        }
    }

    async fn delete_cluster_objects(&self, client: &Client) {
        for (resource, name) in &self.cluster_objects {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => {
                    self.warn(format!("deleting {} {name}: {e}", resource.kind));
                    continue;
                }
            }
            let deadline = Instant::now() + crate::scaled(FINALIZER_GRACE);
            loop {
                match api.get_opt(name).await {
                    Ok(None) => break,
                    Ok(Some(_)) if Instant::now() < deadline && self.operator_alive() => {
                        tokio::time::sleep(Duration::from_millis(500)).await
                    }
                    Ok(Some(obj)) => {
                        self.strip_finalizers(&api, &resource.kind, &obj).await;
                        break;
                    }
                    Err(e) => {
                        self.warn(format!("reading {} {name}: {e}", resource.kind));
                        break;
                    }
                }
            }
        }
    }

    /// Deletes every object of the given kinds in the namespace, waits for the operator
    /// to release the finalizers, and removes the finalizers of what remains.
    async fn delete_and_wait(&self, apis: &[(String, Api<DynamicObject>)]) {
        let mut any = false;
        for (kind, api) in apis {
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    for obj in list.items {
                        any = true;
                        let name = obj.name_any();
                        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                                self.warn(format!("deleting {kind} {name}: {e}"));
                            }
                        }
                    }
                }
                Err(e) => self.warn(format!("listing {kind} in {}: {e}", self.ns)),
            }
        }
        if !any {
            return;
        }
        let deadline = Instant::now() + crate::scaled(FINALIZER_GRACE);
        loop {
            let mut remaining = Vec::new();
            for (kind, api) in apis {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    remaining.extend(list.items.into_iter().map(|o| (kind.clone(), api, o)));
                }
            }
            if remaining.is_empty() {
                return;
            }
            if Instant::now() >= deadline || !self.operator_alive() {
                for (kind, api, obj) in remaining {
                    self.strip_finalizers(api, &kind, &obj).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn strip_finalizers(&self, api: &Api<DynamicObject>, kind: &str, obj: &DynamicObject) {
        let name = obj.name_any();
        self.warn(format!(
            "{kind} {name} was not released by the operator (finalizers {:?}, operator {}); removing its finalizers",
            obj.finalizers(),
            if self.operator_alive() { "running" } else { "not running" }
        ));
        let patch = json!({ "metadata": { "finalizers": null } });
        if let Err(e) = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                self.warn(format!("removing the finalizers of {kind} {name}: {e}"));
            }
        }
    }

    /// Deletes the registered Vault paths and every ACL policy named after the namespace.
    async fn clean_vault(&self) {
        if let Err(e) = self.try_clean_vault().await {
            self.warn(format!("cleaning Vault at {}: {e:#}", self.vault.addr));
        }
    }

    async fn try_clean_vault(&self) -> Result<()> {
        let vault = Vault::new(&self.vault)?;
        for path in self.vault_paths.iter().rev() {
            if let Err(e) = vault.delete(path).await {
                self.warn(format!("DELETE {path}: {e:#}"));
            }
        }
        let dotted = format!("{}.", self.ns);
        let dashed = format!("{}-", self.ns);
        let policies = vault.policies().await.context("listing ACL policies")?;
        for name in policies
            .iter()
            .filter(|n| n.starts_with(&dotted) || n.starts_with(&dashed))
        {
            eprintln!("e2e {} cleanup: deleting Vault policy {name}", self.test);
            if let Err(e) = vault.delete_policy(name).await {
                self.warn(format!("deleting Vault policy {name}: {e:#}"));
            }
        }
        Ok(())
    }

    async fn delete_namespace(&self, client: &Client) {
        let api: Api<Namespace> = Api::all(client.clone());
        match api.delete(&self.ns, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return,
            Err(e) => {
                self.warn(format!(
                    "deleting namespace {}: {e}; remove it with: kubectl delete ns {}",
                    self.ns, self.ns
                ));
                return;
            }
        }
        let deadline = Instant::now() + crate::scaled(NAMESPACE_WAIT);
        loop {
            match api.get_opt(&self.ns).await {
                Ok(None) => {
                    eprintln!("e2e {}: namespace {} deleted", self.test, self.ns);
                    return;
                }
                Ok(Some(ns)) if Instant::now() >= deadline => {
                    let conds = ns
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.clone())
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| c.status == "True")
                        .map(|c| format!("{}: {}", c.type_, c.message.unwrap_or_default()))
                        .collect::<Vec<_>>();
                    self.warn(format!(
                        "namespace {} is still terminating after {}s ({}); it will go on its own, or see kubectl get ns {} -o yaml",
                        self.ns,
                        NAMESPACE_WAIT.as_secs(),
                        conds.join("; "),
                        self.ns
                    ));
                    return;
                }
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(e) => {
                    self.warn(format!("reading namespace {}: {e}", self.ns));
                    return;
                }
            }
        }
    }
}
