//! `VaultRole` in the generic Vault configuration controller ([`crate::config`]):
//! `policyRefs` resolved from the VaultPolicy store, the AppRole role id published to a
//! Secret, deletion of a role whose spec became invalid, and which roles depend on a
//! mount or a VaultPolicy (re-trigger mappings).

use std::sync::Arc;

use certus_api::{
    ConnectionRef, DeletionPolicy, SecretKeyRef, VaultObjectStatus, VaultPolicy, VaultRole,
    API_VERSION, FIELD_MANAGER,
};
use certus_core::mount::MountTable;
use certus_core::{Action as ChangeAction, Change};
use certus_reconcile::role as pipeline;
use certus_reconcile::{ConfigOutcome, LastApplied, Mode, ReconcileError, RoleIdOutput};
use certus_vault_client::VaultSession;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::info;

use crate::config::{namespace_of, ConfigKind};
use crate::context::Context;
use crate::error::kube_error;

/// The kind label used in metrics and logs.
pub const KIND: &str = "VaultRole";

/// Label on every Secret the operator writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "certus-vault-operator");

/// Key of the role id in the published Secret.
pub const ROLE_ID_KEY: &str = "role_id";

/// `policyRefs` lookup: VaultPolicy name in `namespace` → its Vault policy name, from
/// the reflector store (`None` when no such VaultPolicy is watched: the pipeline then
/// reports `WaitingForDependency`).
pub fn policy_lookup(
    policies: &Store<VaultPolicy>,
    namespace: &str,
) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let state: Vec<Arc<VaultPolicy>> = policies.state();
    let namespace = namespace.to_string();
    move |name: &str| {
        state
            .iter()
            .find(|p| p.namespace().as_deref() == Some(namespace.as_str()) && p.name_any() == name)
            .map(|p| p.vault_name())
    }
}

/// The role's desired object, ignoring `policyRefs` (they do not change the path).
fn desired_ignoring_refs(r: &VaultRole) -> Result<certus_core::role::DesiredRole, ReconcileError> {
    pipeline::desired(r, &|_| Some(String::new()))
}

/// The Secret the spec asks the role id to be published to.
fn wanted_role_id_secret(r: &VaultRole) -> Option<&str> {
    r.spec
        .app_role
        .as_ref()
        .and_then(|a| a.role_id_secret.as_ref())
        .map(|s| s.name.as_str())
}

impl ConfigKind for VaultRole {
    const KIND: &'static str = KIND;

    fn status(&self) -> Option<&VaultObjectStatus> {
        self.status.as_ref()
    }
    fn connection_ref(&self) -> Option<&ConnectionRef> {
        self.spec.connection_ref.as_ref()
    }
    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }
    fn describe(&self) -> String {
        match desired_ignoring_refs(self) {
            Ok(d) => format!("role {:?}", d.object.path),
            Err(_) => format!("role {:?}", self.vault_name()),
        }
    }
    fn check_spec(&self) -> Result<(), ReconcileError> {
        desired_ignoring_refs(self).map(|_| ())
    }
    fn claim_target(&self) -> Option<String> {
        desired_ignoring_refs(self).ok().map(|d| d.object.path)
    }
    fn may_share_target(&self, other: &Self) -> bool {
        // The role's path ends with its Vault name (compared without allocating: this
        // runs over every cached role).
        fn name(r: &VaultRole) -> Option<&str> {
            r.spec.name.as_deref().or(r.metadata.name.as_deref())
        }
        name(self) == name(other)
    }
    fn claims_cell(ctx: &Context) -> &std::sync::OnceLock<crate::context::Claims<Self>> {
        &ctx.config_claims.roles
    }
    fn precheck(&self, ctx: &Context) -> Result<(), ReconcileError> {
        let lookup = policy_lookup(&ctx.policies, &namespace_of(self));
        pipeline::desired(self, &lookup).map(|_| ())
    }
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        vec![]
    }
    async fn reconcile_vault(
        &self,
        vault: &VaultSession,
        ctx: &Context,
        last: &LastApplied,
    ) -> Result<ConfigOutcome, ReconcileError> {
        let lookup = policy_lookup(&ctx.policies, &namespace_of(self));
        pipeline::reconcile(vault, self, &lookup, last, Mode::Apply).await
    }
    async fn delete_vault(&self, vault: &VaultSession) -> Result<Change, ReconcileError> {
        match pipeline::delete(vault, self, Mode::Apply).await {
            Err(ReconcileError::Invalid(why)) => delete_recorded(vault, self, &why).await,
            other => other,
        }
    }
    async fn publish_outputs(
        &self,
        outcome: &ConfigOutcome,
        status: &mut VaultObjectStatus,
        ctx: &Context,
    ) -> Result<(), ReconcileError> {
        publish_role_id(self, outcome, status, ctx).await
    }
}

/// The pipeline cannot compute the path of a role whose spec is invalid; the role last
/// written in sync is in `status.vaultPath` (the generic cleanup only calls this when it
/// is recorded).
async fn delete_recorded(
    vault: &VaultSession,
    r: &VaultRole,
    why: &str,
) -> Result<Change, ReconcileError> {
    let Some(path) = r.status.as_ref().and_then(|s| s.vault_path.clone()) else {
        return Err(ReconcileError::Invalid(why.to_string()));
    };
    vault.delete(&path).await?;
    Ok(Change {
        resource: pipeline::resource_id(r),
        action: ChangeAction::Delete,
        target: path,
        drift: false,
        detail: Some(format!(
            "the spec is invalid ({why}); deleted the role recorded in status.vaultPath"
        )),
    })
}

// ---------------------------------------------------------------------------------------
// The AppRole role id Secret
// ---------------------------------------------------------------------------------------

/// Whether `secret` has a controller owner reference to `role`.
pub fn controlled_by(secret: &ObjectMeta, role: &VaultRole) -> bool {
    let Some(uid) = role.uid() else {
        return false;
    };
    secret
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// The server-side apply body of the role id Secret: key `role_id`, the operator's
/// managed-by label, and a controller owner reference to the VaultRole (so it is garbage
/// collected with it).
pub fn role_id_secret_body(role: &VaultRole, out: &RoleIdOutput) -> Value {
    let mut metadata = json!({
        "name": out.secret_name,
        "namespace": namespace_of(role),
        "labels": { MANAGED_BY.0: MANAGED_BY.1 },
    });
    if let Some(mut owner) = role.controller_owner_ref(&()) {
        // As for the other Secrets the operator owns (RBAC grants vaultroles/finalizers).
        owner.block_owner_deletion = Some(true);
        metadata["ownerReferences"] = json!([owner]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": { ROLE_ID_KEY: certus_core::rotation::base64_std(out.role_id.as_bytes()) },
    })
}

/// Whether the live Secret already is what [`role_id_secret_body`] would write.
fn up_to_date(live: &Secret, role: &VaultRole, out: &RoleIdOutput) -> bool {
    let data_ok = live
        .data
        .as_ref()
        .and_then(|d| d.get(ROLE_ID_KEY))
        .is_some_and(|v| v.0 == out.role_id.as_bytes());
    let label_ok = live
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1);
    data_ok && label_ok && controlled_by(&live.metadata, role)
}

/// Publishes the AppRole role id (when the pipeline read one) into the Secret the spec
/// names, and records it in `status.roleIdSecret`. A Secret published under another name
/// before is deleted when this VaultRole controls it. A Secret of that name that this
/// VaultRole does not control is a `Conflict` (never overwritten).
async fn publish_role_id(
    role: &VaultRole,
    outcome: &ConfigOutcome,
    status: &mut VaultObjectStatus,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let ns = namespace_of(role);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let wanted = wanted_role_id_secret(role);
    if let Some(old) = status
        .role_id_secret
        .clone()
        .filter(|o| Some(o.as_str()) != wanted)
    {
        let live = api
            .get_opt(&old)
            .await
            .map_err(|e| kube_error(&format!("reading Secret {ns}/{old}"), &e))?;
        if live.is_some_and(|s| controlled_by(&s.metadata, role)) {
            match api.delete(&old, &Default::default()).await {
                Ok(_) => {
                    info!(secret = %old, "deleted the role id Secret the spec no longer names")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_error(&format!("deleting Secret {ns}/{old}"), &e)),
            }
        }
        status.role_id_secret = None;
    }
    let Some(out) = &outcome.role_id else {
        return Ok(());
    };
    let name = &out.secret_name;
    let live = api
        .get_opt(name)
        .await
        .map_err(|e| kube_error(&format!("reading Secret {ns}/{name}"), &e))?;
    match &live {
        Some(s) if !controlled_by(&s.metadata, role) => {
            return Err(ReconcileError::Conflict(format!(
                "spec.appRole.roleIdSecret.name: Secret {ns}/{name} exists and is not controlled by this VaultRole; the role id was not written. Name another Secret, or delete that one"
            )));
        }
        Some(s) if up_to_date(s, role, out) => {}
        _ => {
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&role_id_secret_body(role, out)),
            )
            .await
            .map_err(|e| kube_error(&format!("applying Secret {ns}/{name}"), &e))?;
            info!(secret = %name, "published the AppRole role id");
        }
    }
    status.role_id_secret = Some(name.clone());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Re-trigger mappings
// ---------------------------------------------------------------------------------------

/// The VaultRoles in `store` whose mount is `mount` in `table` (re-reconciled when that
/// SecretEngine or AuthMethod changes or becomes Ready). Matched by path only, whatever
/// connection each uses: an extra reconcile costs reads, a missed one a backoff delay.
pub fn roles_on_mount(
    store: &Store<VaultRole>,
    table: MountTable,
    mount: &str,
) -> Vec<ObjectRef<VaultRole>> {
    let mount = mount.trim_matches('/');
    store
        .state()
        .iter()
        .filter(|r| {
            desired_ignoring_refs(r).is_ok_and(|d| d.kind.table() == table && d.mount == mount)
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The VaultRoles in `store` whose `policyRefs` name `policy` (same namespace).
pub fn roles_referencing(
    store: &Store<VaultRole>,
    policy: &VaultPolicy,
) -> Vec<ObjectRef<VaultRole>> {
    let ns = policy.namespace();
    let name = policy.name_any();
    store
        .state()
        .iter()
        .filter(|r| r.namespace() == ns && certus_core::role::policy_refs(&r.spec).contains(&name))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The VaultRole controlling a Secret (its role id Secret), from the Secret's metadata.
pub fn owner_of(secret: &ObjectMeta) -> Option<ObjectRef<VaultRole>> {
    let ns = secret.namespace.as_deref()?;
    secret
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == KIND && o.api_version == API_VERSION)
        .map(|o| ObjectRef::new(&o.name).within(ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

    fn role(ns: &str, name: &str, spec: Value) -> VaultRole {
        let mut r = VaultRole::new(name, serde_json::from_value(spec).unwrap());
        r.metadata.namespace = Some(ns.into());
        r.metadata.uid = Some(format!("uid-{name}"));
        r
    }

    fn store(roles: Vec<VaultRole>) -> Store<VaultRole> {
        let (reader, mut writer) = reflector::store::<VaultRole>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for r in roles {
            writer.apply_watcher_event(&watcher::Event::InitApply(r));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        reader
    }

    fn names(refs: Vec<ObjectRef<VaultRole>>) -> Vec<String> {
        let mut n: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    fn policy(ns: &str, name: &str) -> VaultPolicy {
        crate::testing::policy(ns, name)
    }

    #[test]
    fn roles_are_mapped_to_their_mount_and_policies() {
        let k8s = role(
            "a",
            "k8s",
            json!({"kubernetes": {"mount": "kube", "boundServiceAccountNames": ["x"],
                   "boundServiceAccountNamespaces": ["y"], "policyRefs": ["reader"]}}),
        );
        let app = role(
            "a",
            "app",
            json!({"appRole": {"mount": "approle", "policyRefs": ["reader", "writer"]}}),
        );
        let db = role(
            "b",
            "db",
            json!({"database": {"mount": "kube", "dbName": "pg", "creationStatements": ["x"]}}),
        );
        let invalid = role("a", "bad", json!({}));
        let s = store(vec![k8s, app, db, invalid]);
        // Same path in the two tables are different mounts.
        assert_eq!(names(roles_on_mount(&s, MountTable::Auth, "kube")), ["k8s"]);
        assert_eq!(
            names(roles_on_mount(&s, MountTable::Secrets, "kube/")),
            ["db"]
        );
        assert_eq!(
            names(roles_on_mount(&s, MountTable::Auth, "approle")),
            ["app"]
        );
        assert!(roles_on_mount(&s, MountTable::Secrets, "approle").is_empty());

        assert_eq!(
            names(roles_referencing(&s, &policy("a", "reader"))),
            ["app", "k8s"]
        );
        assert_eq!(
            names(roles_referencing(&s, &policy("a", "writer"))),
            ["app"]
        );
        assert!(roles_referencing(&s, &policy("b", "reader")).is_empty());
    }

    #[test]
    fn policy_refs_resolve_to_vault_names_in_the_same_namespace() {
        let (reader, mut writer) = reflector::store::<VaultPolicy>();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(policy("a", "reader")));
        let mut named = policy("a", "named");
        named.spec.name = Some("custom".into());
        writer.apply_watcher_event(&watcher::Event::InitApply(named));
        writer.apply_watcher_event(&watcher::Event::InitApply(policy("b", "other")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let lookup = policy_lookup(&reader, "a");
        assert_eq!(lookup("reader").as_deref(), Some("a.reader"));
        assert_eq!(lookup("named").as_deref(), Some("custom"));
        assert_eq!(lookup("other"), None);
    }

    #[test]
    fn role_id_secret_is_owned_labelled_and_base64() {
        let r = role(
            "apps",
            "svc",
            json!({"appRole": {"roleIdSecret": {"name": "svc-role-id"}}}),
        );
        let out = RoleIdOutput {
            secret_name: "svc-role-id".into(),
            role_id: "0f1e2d3c".into(),
        };
        let b = role_id_secret_body(&r, &out);
        assert_eq!(b["metadata"]["namespace"], "apps");
        assert_eq!(
            b["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "certus-vault-operator"
        );
        let owner = &b["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["uid"].as_str(),
                owner["controller"].as_bool()
            ),
            (Some("VaultRole"), Some("uid-svc"), Some(true))
        );
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert_eq!(b["data"]["role_id"], "MGYxZTJkM2M=");

        // Round trip: the applied Secret is recognised as up to date and owned.
        let live: Secret = serde_json::from_value(b).unwrap();
        assert!(up_to_date(&live, &r, &out));
        assert_eq!(
            owner_of(&live.metadata),
            Some(ObjectRef::new("svc").within("apps"))
        );
        let other = role("apps", "svc", json!({"appRole": {}}));
        let mut other = other;
        other.metadata.uid = Some("another-uid".into());
        assert!(!controlled_by(&live.metadata, &other));
        let changed = RoleIdOutput {
            secret_name: "svc-role-id".into(),
            role_id: "new".into(),
        };
        assert!(!up_to_date(&live, &r, &changed));
        assert_eq!(wanted_role_id_secret(&r), Some("svc-role-id"));
    }

    #[test]
    fn invalid_spec_is_detected_without_lookup() {
        let bad = role(
            "a",
            "bad",
            json!({"kubernetes": {"boundServiceAccountNames": ["x"],
                   "boundServiceAccountNamespaces": ["y"], "tokenTTL": "soon"}}),
        );
        let err = bad.check_spec().unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(
            err.to_string().contains("spec.kubernetes.tokenTTL"),
            "{err}"
        );
        assert!(bad.describe().contains("bad"));
        let good = role(
            "a",
            "good",
            json!({"kubernetes": {"boundServiceAccountNames": ["x"],
                   "boundServiceAccountNamespaces": ["y"], "policyRefs": ["missing"]}}),
        );
        assert!(good.check_spec().is_ok(), "policyRefs do not matter here");
        assert_eq!(good.describe(), "role \"auth/kubernetes/role/good\"");
    }
}
