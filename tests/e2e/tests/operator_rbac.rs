//! The operator with exactly the permissions the project ships (`config/rbac`: the
//! ClusterRole of the cluster-wide mode and the Role for its Lease), bound to a
//! ServiceAccount the operator impersonates. Skipped (with one line on stderr) unless
//! `CERTUS_E2E_KUBECONFIG` is set; see tests/e2e/README.md.
//!
//! Without the ClusterRoleBinding the operator still holds its Lease (the Role is bound)
//! but fails clearly: its log says the CustomResourceDefinitions are forbidden (HTTP
//! 403) and nothing becomes Ready. Once the binding exists it connects to Vault and
//! reconciles a VaultPolicy to Ready, writes Events, and releases the finalizer on
//! deletion — with nothing more than those rules.

use std::time::Duration;

use anyhow::{Context, Result};
use certus_api::{find_condition, ConditionStatus, VaultConnection, VaultPolicy};
use certus_e2e::fixtures::{hcl_path, vault_policy};
use certus_e2e::{
    parse_yaml_documents, workspace_root, Check, E2e, CONNECTION_NAME, READY_TIMEOUT,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{json, Value};

const SERVICE_ACCOUNT: &str = "certus-vault-operator";
/// The Lease name config/rbac/self_role.yaml grants (and config/manager passes).
const LEASE_NAME: &str = "certus-vault-operator-leader";

/// The one document of `config/rbac/<file>`.
fn rbac_document(file: &str) -> Result<Value> {
    let path = workspace_root().join("config/rbac").join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = parse_yaml_documents(&text)?;
    anyhow::ensure!(
        docs.len() == 1,
        "{} holds {} documents",
        path.display(),
        docs.len()
    );
    Ok(docs.remove(0))
}

fn ready(conds: Option<&Vec<certus_api::Condition>>) -> bool {
    conds
        .and_then(|c| find_condition(c, "Ready"))
        .is_some_and(|c| c.status == ConditionStatus::True)
}

#[tokio::test]
async fn operator_works_with_exactly_the_shipped_rbac() -> Result<()> {
    let Some(mut e2e) = E2e::start_without_operator("operator_rbac").await else {
        return Ok(());
    };
    let ns = e2e.ns().to_string();
    let cluster_role = format!("{ns}-certus-vault-operator");

    // The ServiceAccount, the ClusterRole (renamed per test: it is cluster-scoped) and the
    // operator's own Role and RoleBinding in the test namespace, exactly as shipped.
    e2e.apply_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": SERVICE_ACCOUNT },
    }))
    .await?;
    let mut role = rbac_document("cluster_role.yaml")?;
    anyhow::ensure!(role["kind"] == "ClusterRole", "cluster_role.yaml: {role}");
    role["metadata"]["name"] = json!(cluster_role);
    e2e.apply_value(role).await?;
    let self_role = rbac_document("self_role.yaml")?;
    anyhow::ensure!(
        serde_json::to_string(&self_role)?.contains(LEASE_NAME),
        "self_role.yaml grants the Lease {LEASE_NAME}"
    );
    e2e.apply_value(self_role).await?;
    let mut self_binding = rbac_document("self_role_binding.yaml")?;
    self_binding["subjects"][0]["namespace"] = json!(ns);
    e2e.apply_value(self_binding).await?;

    // The operator as the ServiceAccount, with leader election like the chart.
    let kubeconfig = e2e.impersonating_kubeconfig(&ns, SERVICE_ACCOUNT)?;
    let lease_ns = format!("--lease-namespace={ns}");
    let lease_name = format!("--lease-name={LEASE_NAME}");
    let op = e2e.start_operator(
        "operator",
        &["--leader-election", &lease_ns, &lease_name],
        Some(&kubeconfig),
    )?;
    e2e.set_operator(op);
    e2e.apply_vault_connection().await?;

    // 1. No ClusterRoleBinding: the Lease works, the CRDs are forbidden, nothing Ready.
    let identity_suffix = format!("-{}", e2e.operator().context("operator")?.pid());
    let leases: Api<Lease> = Api::namespaced(e2e.client(), &ns);
    e2e.eventually(
        "the operator to hold its Lease (Role self_role.yaml)",
        Duration::from_secs(60),
        async || {
            let holder = leases
                .get_opt(LEASE_NAME)
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity);
            match holder {
                Some(h) if h.ends_with(&identity_suffix) => Ok(Check::Done(())),
                other => Ok(Check::Pending(format!("holderIdentity {other:?}"))),
            }
        },
    )
    .await?;
    e2e.eventually(
        "the operator log to say the CRDs are forbidden",
        Duration::from_secs(60),
        async || {
            let op = e2e.operator().context("operator")?;
            if op.log_contains("HTTP 403") && op.log_contains("forbidden") {
                Ok(Check::Done(()))
            } else {
                Ok(Check::Pending(op.log_excerpt(5)))
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let conn = e2e
        .get_opt::<VaultConnection>(CONNECTION_NAME)
        .await?
        .context("the VaultConnection")?;
    assert!(
        !ready(conn.status.as_ref().map(|s| &s.conditions)),
        "nothing is reconciled without the ClusterRoleBinding: {:?}",
        conn.status
    );
    let op = e2e.operator().context("operator")?;
    assert!(
        !op.log_contains("controllers started"),
        "the controllers did not start:\n{}",
        op.log_excerpt(20)
    );
    let (code, body) = op.http_get("/readyz")?;
    assert_eq!(code, 503, "not ready while the CRDs cannot be read: {body}");

    // 2. Bind the ClusterRole: everything works with exactly these permissions.
    let mut binding = rbac_document("cluster_role_binding.yaml")?;
    binding["metadata"]["name"] = json!(cluster_role);
    binding["roleRef"]["name"] = json!(cluster_role);
    binding["subjects"][0]["namespace"] = json!(ns);
    e2e.apply_value(binding).await?;
    e2e.wait_ready::<VaultConnection>(CONNECTION_NAME, READY_TIMEOUT)
        .await
        .context("the VaultConnection with the ClusterRole bound")?;
    let policy = vault_policy("rbac")
        .rules(&hcl_path("secret/data/rbac/*", &["read"]))
        .build();
    e2e.apply(&policy).await?;
    let policy = e2e.wait_ready::<VaultPolicy>("rbac", READY_TIMEOUT).await?;
    let vault_name = policy
        .status
        .as_ref()
        .and_then(|s| s.vault_name.clone())
        .context("status.vaultName")?;
    assert!(
        e2e.vault().policy(&vault_name).await?.is_some(),
        "the policy is in Vault"
    );
    let events = e2e.events_for(&policy).await?;
    assert!(
        !events.is_empty(),
        "the operator recorded Events with the shipped RBAC"
    );
    let op = e2e.operator().context("operator")?;
    let (code, body) = op.http_get("/readyz")?;
    assert_eq!(code, 200, "{body}");

    // Deletion: the finalizer is released with these permissions too.
    e2e.delete::<VaultPolicy>("rbac").await?;
    e2e.wait_gone::<VaultPolicy>("rbac", Duration::from_secs(60))
        .await?;
    e2e.eventually(
        "the Vault policy to be deleted",
        Duration::from_secs(30),
        async || match e2e.vault().policy(&vault_name).await? {
            None => Ok(Check::Done(())),
            Some(_) => Ok(Check::Pending("still in Vault".into())),
        },
    )
    .await?;
    Ok(())
}
