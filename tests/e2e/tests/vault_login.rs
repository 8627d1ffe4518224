//! The operator's Vault login across a restart, end to end: a real API server, the real
//! `certus-vault run` binary, a real Vault/OpenBao. Skipped (with one line on stderr)
//! unless `CERTUS_E2E_KUBECONFIG` is set; see tests/e2e/README.md.
//!
//! An operator logs in with AppRole through a `VaultConnection` and issues a
//! `DynamicCredential` (a child token, `auth/token/create`), which Vault ties to the
//! operator's login token. It saves that login token in a Secret
//! `certus-vault-token-<hash>` (here in the test namespace, `--vault-token-namespace`).
//! After SIGTERM (the token issued a credential, so it is kept) a new operator process
//! adopts the saved token: `certus_vault_token_adoptions_total` 1, no login, and the
//! credential is neither re-issued nor changed.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use certus_api::{DynamicCredential, VaultConnection};
use certus_e2e::{Check, E2e, Operator, READY_TIMEOUT};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams};
use serde_json::json;

fn start(e2e: &E2e, label: &str) -> Result<Operator> {
    let ns = format!("--vault-token-namespace={}", e2e.ns());
    e2e.start_operator(label, &[ns.as_str()], None)
}

async fn token_secrets(e2e: &E2e) -> Result<Vec<Secret>> {
    let api: Api<Secret> = Api::namespaced(e2e.client(), e2e.ns());
    Ok(api
        .list(&ListParams::default().labels("app.kubernetes.io/component=vault-token"))
        .await
        .context("listing the saved-token Secrets")?
        .items)
}

#[tokio::test]
async fn a_restarted_operator_adopts_its_approle_token_and_reissues_nothing() -> Result<()> {
    let Some(mut e2e) = E2e::start_without_operator(
        "a_restarted_operator_adopts_its_approle_token_and_reissues_nothing",
    )
    .await
    else {
        return Ok(());
    };
    let ns = e2e.ns().to_string();
    let mount = format!("{ns}-login");
    let policy = format!("{ns}-operator");
    e2e.cleanup_vault_path(format!("sys/auth/{mount}"));
    e2e.cleanup_vault_path(format!("sys/policies/acl/{policy}"));

    // An AppRole for the operator, allowed to issue and manage child tokens.
    let vault = e2e.vault();
    vault
        .put_policy(
            &policy,
            "path \"auth/token/create\" { capabilities = [\"update\"] }\n\
             path \"auth/token/renew-accessor\" { capabilities = [\"update\"] }\n\
             path \"auth/token/revoke-accessor\" { capabilities = [\"update\"] }\n\
             path \"auth/token/lookup-accessor\" { capabilities = [\"update\"] }\n",
        )
        .await?;
    vault
        .write(&format!("sys/auth/{mount}"), &json!({"type": "approle"}))
        .await?;
    vault
        .write(
            &format!("auth/{mount}/role/operator"),
            &json!({"token_policies": [policy], "token_ttl": "1h", "token_max_ttl": "24h"}),
        )
        .await?;
    let role_id = vault
        .read(&format!("auth/{mount}/role/operator/role-id"))
        .await?
        .and_then(|v| v["data"]["role_id"].as_str().map(str::to_string))
        .context("the AppRole role id")?;
    let secret_id = vault
        .write(&format!("auth/{mount}/role/operator/secret-id"), &json!({}))
        .await?["data"]["secret_id"]
        .as_str()
        .map(str::to_string)
        .context("a SecretID")?;

    let mut secret = Secret::default();
    secret.metadata.name = Some("operator-secret-id".into());
    secret.data = Some([("secretId".to_string(), ByteString(secret_id.into_bytes()))].into());
    e2e.apply(&secret).await?;
    let env = vault.env().clone();
    let mut spec = json!({
        "address": env.addr,
        "timeout": "10s",
        "auth": {"appRole": {"mount": mount, "roleId": role_id,
                             "secretIdRef": {"name": "operator-secret-id", "key": "secretId"}}},
    });
    if let Some(ca) = &env.ca_pem {
        spec["tls"] = json!({ "caBundle": ca });
    }

    let first = start(&e2e, "operator-1")?;
    e2e.set_operator(first);
    e2e.apply_value(json!({
        "apiVersion": certus_api::API_VERSION, "kind": "VaultConnection",
        "metadata": {"name": "approle"}, "spec": spec,
    }))
    .await?;
    e2e.wait_ready::<VaultConnection>("approle", READY_TIMEOUT)
        .await?;
    e2e.apply_value(json!({
        "apiVersion": certus_api::API_VERSION, "kind": "DynamicCredential",
        "metadata": {"name": "agent-token"},
        "spec": {"path": "auth/token/create", "connectionRef": {"name": "approle"},
                 "parameters": {"policies": ["default"], "ttl": "10m"},
                 "secret": {"name": "agent-token"}},
    }))
    .await?;
    let issued = e2e
        .wait_ready::<DynamicCredential>("agent-token", READY_TIMEOUT)
        .await?;
    let issued_status = issued.status.clone().unwrap_or_default();
    let hash = issued_status
        .lease_id_hash
        .clone()
        .context("status.leaseIdHash after the first issue")?;
    let secrets: Api<Secret> = Api::namespaced(e2e.client(), &ns);
    let credential = secrets.get("agent-token").await?.data;

    // The login token is saved: one Secret, with the token and its accessor.
    let saved = e2e
        .eventually(
            "the login token to be saved",
            Duration::from_secs(30),
            async || {
                let list = token_secrets(&e2e).await?;
                Ok(match list.as_slice() {
                    [one] => Check::Done(one.clone()),
                    other => Check::Pending(format!("{} token Secrets", other.len())),
                })
            },
        )
        .await?;
    let keys: Vec<&String> = saved
        .data
        .as_ref()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    ensure!(keys == ["accessor", "token"], "saved keys: {keys:?}");
    let op = e2e.operator().context("the operator")?;
    ensure!(op.metric("certus_vault_logins_total")? == 1.0, "one login");

    // Restart: SIGTERM (the token issued a credential: kept, not revoked), new process.
    let old = e2e.take_operator().context("the first operator")?;
    old.stop();
    ensure!(
        token_secrets(&e2e).await?.len() == 1,
        "the saved token outlives a clean shutdown when it issued a credential"
    );
    let second = start(&e2e, "operator-2")?;
    e2e.set_operator(second);
    e2e.trigger_reconcile::<DynamicCredential>("agent-token")
        .await?;
    let op = e2e.operator().context("the second operator")?;
    e2e.eventually(
        "the new operator to adopt the saved login token",
        Duration::from_secs(60),
        async || {
            op.ensure_running()?;
            let adopted = op.metric("certus_vault_token_adoptions_total")?;
            Ok(if adopted == 1.0 {
                Check::Done(())
            } else {
                Check::Pending(format!("adoptions {adopted}"))
            })
        },
    )
    .await?;
    ensure!(
        op.metric("certus_vault_logins_total")? == 0.0,
        "the restarted operator did not log in"
    );
    let after = e2e
        .wait_ready::<DynamicCredential>("agent-token", READY_TIMEOUT)
        .await?
        .status
        .unwrap_or_default();
    ensure!(
        after.lease_id_hash.as_deref() == Some(hash.as_str()) && after.reissues == 0,
        "the credential was not re-issued: {:?} reissues {}",
        after.lease_id_hash,
        after.reissues
    );
    ensure!(
        secrets.get("agent-token").await?.data == credential,
        "the Secret still holds the same credential"
    );
    Ok(())
}
