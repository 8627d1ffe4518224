//! `SecretEngine`, `AuthMethod` and `VaultRole` end to end: a real API server, the real
//! `certus-vault run` binary, a real Vault/OpenBao. Skipped (with one line on stderr)
//! unless `CERTUS_E2E_KUBECONFIG` is set; see tests/e2e/README.md.
//!
//! Mount paths are named after the test namespace (`<namespace>-kv`, `<namespace>-k8s`,
//! `<namespace>-approle`) and registered for the harness cleanup, which deletes them from
//! Vault after the test whatever happened (the operator's default `deletionPolicy:
//! Retain` for mounts leaves them in Vault on purpose).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use certus_api::{
    find_condition, AuthMethod, SecretEngine, VaultObjectStatus, VaultPolicy, VaultRole,
};
use certus_e2e::fixtures::hcl_path;
use certus_e2e::{format_events, Check, E2e, READY_TIMEOUT};
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

/// Time for a deleted object's finalizer to be released.
const GONE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for an out-of-band edit to be corrected after the reconcile was triggered.
const DRIFT_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a role whose dependencies appeared to become Ready. The operator
/// re-triggers it when a mount or policy it needs becomes Ready, and retries it with
/// backoff (5s, 10s, 20s, …) anyway.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// A throwaway self-signed CA (CN=test-k8s-ca): the Kubernetes API CA written into the
/// auth method when the kubeconfig has no CA data (e.g. a CA file or a public CA).
const FALLBACK_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDDTCCAfWgAwIBAgIUcdGyTedGBIA2JmD8DrMrlNK+d90wDQYJKoZIhvcNAQEL\n\
BQAwFjEUMBIGA1UEAwwLdGVzdC1rOHMtY2EwHhcNMjYxMjA0MjAyMDEyWhcNMzYx\n\
MjAxMjAyMDEyWjAWMRQwEgYDVQQDDAt0ZXN0LWs4cy1jYTCCASIwDQYJKoZIhvcN\n\
AQEBBQADggEPADCCAQoCggEBAOLKuSAjv70kSCoOFNSAmFxrgL+0hjP17pske7Zq\n\
b258ZD8EQue09hchv2++Ng7OaZ+kwA7gKrnGUd9nvC6wwPC8yFNiw/dJk6M5MdwB\n\
73009fHrBlTBrd8R3fb8R7RbQqYIKwTaoZSPmRdIFLktcyMmXwpbMz1bpwnnpzQC\n\
bEgZ9/509YEFNfKtZzo4rRFdG1PXHceYBRRQ+2jCmkod69L/S3zVfQdx89TKv8op\n\
xV0kmavUmehTgHyY5WlEO2rIJKNjXJKtYwuvSdY8qb80kx0E2UWuYXs9+jG7VTsZ\n\
ihrK4nUm0s2Sl93DybqehW6m8YrLp+78qz3mxeU8XbXq6VECAwEAAaNTMFEwHQYD\n\
VR0OBBYEFP7GJNGVifbQ+8HWZjwqFkq8eA+EMB8GA1UdIwQYMBaAFP7GJNGVifbQ\n\
+8HWZjwqFkq8eA+EMA8GA1UdEwEB/wQFMAMBAf8wDQYJKoZIhvcNAQELBQADggEB\n\
AIywuMkBqez3LRcR6tRntWJ9cWfVT4UEFvvC2jA8R2bDjIinc5QxQb1Hug57vIpw\n\
7ETlyUoQ8hN7P2DD7cm3upYY0YTO/YfrgWGF5nKTaaFkpDVngbQLnnlVe3kbm1Pf\n\
0SzUyAa8weiogfWMu5IzZA8ddOd9C75mkR2VrLYdGur7kcDfjQtd/K8+T6/3i9SZ\n\
1PAFp6Gv8b6mdbE+kCQQJ8N0YynM9gF2l0SAqMDHFx2EzCOzacRkaXZS+SiOs2T3\n\
IBlF5rR2yiX89RtfDtWeWrJqyr3ps2oMS/ovQvSc78WnI7a6/8m4dUeCHfA0xUp0\n\
XtMON/3bfadMA+kl7M6Gu2M=\n\
-----END CERTIFICATE-----\n\
";

/// The API server URL and its CA (PEM) from the kubeconfig: the Kubernetes auth method
/// is configured for the test cluster itself (Vault runs outside it, so it needs both).
fn kubernetes_api(e2e: &E2e) -> (String, String) {
    let config = e2e.kube_config();
    let host = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let pem = config
        .root_cert
        .as_ref()
        .filter(|certs| !certs.is_empty())
        .map(|certs| {
            certs
                .iter()
                .map(|der| pem_certificate(der))
                .collect::<String>()
        })
        .unwrap_or_else(|| FALLBACK_CA_PEM.to_string());
    (host, pem)
}

/// One DER certificate as PEM (base64 through `ByteString`'s serialization).
fn pem_certificate(der: &[u8]) -> String {
    let b64 = serde_json::to_value(ByteString(der.to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn status_of<K>(obj: &K) -> VaultObjectStatus
where
    K: serde::Serialize,
{
    serde_json::to_value(obj)
        .ok()
        .and_then(|v| serde_json::from_value(v["status"].clone()).ok())
        .unwrap_or_default()
}

fn ready_message(status: &VaultObjectStatus) -> String {
    find_condition(&status.conditions, "Ready")
        .map(|c| format!("{:?} {}: {}", c.status, c.reason, c.message))
        .unwrap_or_else(|| "(no Ready condition)".into())
}

/// The `data` of a Vault read (`None` when the path does not exist).
async fn vault_data(e2e: &E2e, path: &str) -> Result<Option<Value>> {
    Ok(e2e.vault().read(path).await?.map(|v| v["data"].clone()))
}

/// The entry of `mount` in `sys/mounts` or `sys/auth`.
async fn mount_entry(e2e: &E2e, table: &str, mount: &str) -> Result<Option<Value>> {
    let all = e2e
        .vault()
        .read(table)
        .await?
        .with_context(|| format!("{table} is not readable"))?;
    let entry = &all["data"][format!("{mount}/")];
    Ok((!entry.is_null()).then(|| entry.clone()))
}

/// A Warning `Drifted` Event about `obj`, if one was published.
fn drifted_event(events: &[Event]) -> Option<String> {
    events
        .iter()
        .find(|e| e.reason.as_deref() == Some("Drifted"))
        .map(|e| e.message.clone().unwrap_or_default())
}

/// Waits for a Warning `Drifted` Event and `status.lastDrift` on an object.
async fn wait_drift_reported<K>(e2e: &E2e, name: &str) -> Result<String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    e2e.eventually(
        &format!(
            "{} {name}: a Drifted Event and status.lastDrift",
            K::kind(&())
        ),
        Duration::from_secs(30),
        async || {
            let obj = e2e
                .get_opt::<K>(name)
                .await?
                .with_context(|| format!("{name} disappeared"))?;
            let events = e2e.events_for(&obj).await?;
            let status = status_of(&obj);
            Ok(match (drifted_event(&events), status.last_drift) {
                (Some(note), Some(_)) => Check::Done(note),
                _ => Check::Pending(format!(
                    "status: {}\nevents:\n{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                    format_events(&events)
                )),
            })
        },
    )
    .await
}

/// The proposal's pattern at small scale, applied in reverse dependency order: a
/// Kubernetes-auth `VaultRole` granting a `VaultPolicy` (by `policyRefs`) first — it
/// waits with `WaitingForDependency` and nothing is written —, then the `AuthMethod` it
/// lives in, a kv-v2 `SecretEngine`, and last the `VaultPolicy`: everything becomes
/// Ready and Vault holds what the specs say. Out-of-band edits of the engine and the role
/// are corrected after the `vault.certus.io/reconcile-at` annotation, with a Warning
/// `Drifted` Event. Deleting the role removes it from Vault (`deletionPolicy: Delete`);
/// deleting the engine and the auth method keeps both mounts and the engine's data
/// (default `deletionPolicy: Retain`).
#[tokio::test]
async fn vault_config_in_reverse_order_then_drift_and_deletion() -> Result<()> {
    let Some(e2e) = E2e::start("vault_config_in_reverse_order_then_drift_and_deletion").await
    else {
        return Ok(());
    };
    let ns = e2e.ns().to_string();
    let vault = e2e.vault();
    let kv = format!("{ns}-kv");
    let k8s = format!("{ns}-k8s");
    let policy_vault_name = format!("{ns}.reader");
    let role_path = format!("auth/{k8s}/role/app");
    // Registered first, deleted last (the harness deletes in reverse order).
    e2e.cleanup_vault_path(format!("sys/mounts/{kv}"));
    e2e.cleanup_vault_path(format!("sys/auth/{k8s}"));
    let (host, ca) = kubernetes_api(&e2e);

    // ---- 1. the role alone: it waits, nothing is written ---------------------------------
    e2e.apply_value(json!({
        "apiVersion": certus_api::API_VERSION, "kind": "VaultRole",
        "metadata": {"name": "app"},
        "spec": {"kubernetes": {
            "mount": k8s,
            "boundServiceAccountNames": ["app"],
            "boundServiceAccountNamespaces": [ns],
            "audience": "vault",
            "policyRefs": ["reader"],
            "tokenTTL": "15m",
        }},
    }))
    .await?;
    let waiting = e2e
        .wait_condition::<VaultRole>(
            "app",
            "Ready",
            "False",
            Some("WaitingForDependency"),
            READY_TIMEOUT,
        )
        .await?;
    let message = ready_message(&status_of(&waiting));
    ensure!(
        message.contains(&format!("VaultPolicy {ns}/reader")),
        "the waiting role names the missing VaultPolicy: {message}"
    );
    ensure!(
        mount_entry(&e2e, "sys/auth", &k8s).await?.is_none()
            && vault_data(&e2e, &role_path).await?.is_none(),
        "nothing may be written while the role waits"
    );

    // ---- 2. its dependencies, in reverse order: mount, engine, policy last ---------------
    e2e.apply_value(json!({
        "apiVersion": certus_api::API_VERSION, "kind": "AuthMethod",
        "metadata": {"name": "k8s"},
        "spec": {"path": k8s, "type": "kubernetes", "description": "e2e cluster",
                 "kubernetes": {"kubernetesHost": host, "kubernetesCACert": ca}},
    }))
    .await?;
    e2e.apply_value(json!({
        "apiVersion": certus_api::API_VERSION, "kind": "SecretEngine",
        "metadata": {"name": "kv"},
        "spec": {"path": kv, "type": "kv-v2", "description": "e2e kv",
                 "tune": {"maxLeaseTTL": "4h"}, "kv": {"maxVersions": 5}},
    }))
    .await?;
    e2e.apply_value(json!({
        "apiVersion": certus_api::API_VERSION, "kind": "VaultPolicy",
        "metadata": {"name": "reader"},
        "spec": {"rules": hcl_path(&format!("{kv}/data/app/*"), &["read"])},
    }))
    .await?;
    let auth = e2e.wait_ready::<AuthMethod>("k8s", READY_TIMEOUT).await?;
    let engine = e2e.wait_ready::<SecretEngine>("kv", READY_TIMEOUT).await?;
    e2e.wait_ready::<VaultPolicy>("reader", READY_TIMEOUT)
        .await?;
    let role = e2e.wait_ready::<VaultRole>("app", CONVERGE_TIMEOUT).await?;

    // ---- 3. status and Vault match the specs ---------------------------------------------
    let st = status_of(&engine);
    ensure!(
        st.vault_path.as_deref() == Some(format!("sys/mounts/{kv}").as_str())
            && st.applied_hash.is_some(),
        "SecretEngine status: {st:?}"
    );
    let st = status_of(&auth);
    ensure!(
        st.vault_path.as_deref() == Some(format!("sys/auth/{k8s}").as_str())
            && st
                .accessor
                .as_deref()
                .is_some_and(|a| a.starts_with("auth_kubernetes_")),
        "AuthMethod status (vaultPath, accessor): {st:?}"
    );
    let st = status_of(&role);
    ensure!(
        st.vault_path.as_deref() == Some(role_path.as_str())
            && st.policies == [policy_vault_name.clone()],
        "VaultRole status (vaultPath, resolved policies): {st:?}"
    );

    let m = mount_entry(&e2e, "sys/mounts", &kv)
        .await?
        .context("the kv-v2 mount is missing")?;
    ensure!(
        m["type"] == "kv" && m["options"]["version"] == "2" && m["description"] == "e2e kv",
        "sys/mounts/{kv}: {m}"
    );
    ensure!(m["config"]["max_lease_ttl"] == 14400, "tune: {m}");
    let cfg = vault_data(&e2e, &format!("{kv}/config"))
        .await?
        .context("kv config")?;
    ensure!(cfg["max_versions"] == 5, "{kv}/config: {cfg}");
    let a = mount_entry(&e2e, "sys/auth", &k8s)
        .await?
        .context("the auth method is missing")?;
    ensure!(a["type"] == "kubernetes", "sys/auth/{k8s}: {a}");
    let cfg = vault_data(&e2e, &format!("auth/{k8s}/config"))
        .await?
        .context("auth config")?;
    ensure!(
        cfg["kubernetes_host"] == host.as_str(),
        "auth config: {cfg}"
    );
    let r = vault_data(&e2e, &role_path)
        .await?
        .context("the role is missing")?;
    ensure!(
        r["bound_service_account_names"] == json!(["app"])
            && r["bound_service_account_namespaces"] == json!([ns])
            && r["token_policies"] == json!([policy_vault_name])
            && r["token_ttl"] == 900
            && r["audience"] == "vault",
        "{role_path}: {r}"
    );
    ensure!(
        vault.policy(&policy_vault_name).await?.is_some(),
        "the referenced Vault policy exists"
    );

    // ---- 4. drift: edited in Vault, corrected after the annotation -----------------------
    vault
        .write(&format!("{kv}/config"), &json!({"max_versions": 1}))
        .await?;
    vault
        .write(
            &role_path,
            &json!({"bound_service_account_names": ["app"],
                    "bound_service_account_namespaces": [ns], "token_ttl": 7200}),
        )
        .await?;
    e2e.trigger_reconcile::<SecretEngine>("kv").await?;
    e2e.trigger_reconcile::<VaultRole>("app").await?;
    e2e.eventually(
        &format!("{kv}/config max_versions written back to 5"),
        DRIFT_TIMEOUT,
        async || {
            let cfg = vault_data(&e2e, &format!("{kv}/config")).await?;
            Ok(match cfg {
                Some(c) if c["max_versions"] == 5 => Check::Done(()),
                other => Check::Pending(format!("{other:?}")),
            })
        },
    )
    .await?;
    e2e.eventually(
        &format!("{role_path} token_ttl written back to 900"),
        DRIFT_TIMEOUT,
        async || {
            let r = vault_data(&e2e, &role_path).await?;
            Ok(match r {
                Some(r) if r["token_ttl"] == 900 => Check::Done(()),
                other => Check::Pending(format!("{other:?}")),
            })
        },
    )
    .await?;
    let note = wait_drift_reported::<SecretEngine>(&e2e, "kv").await?;
    ensure!(
        note.contains(&format!("{kv}/config")),
        "Drifted Event: {note}"
    );
    let note = wait_drift_reported::<VaultRole>(&e2e, "app").await?;
    ensure!(note.contains(&role_path), "Drifted Event: {note}");
    e2e.wait_ready::<SecretEngine>("kv", READY_TIMEOUT).await?;
    e2e.wait_ready::<VaultRole>("app", READY_TIMEOUT).await?;

    // ---- 5. deletion ----------------------------------------------------------------------
    // Some data in the engine, to show that Retain keeps it.
    vault
        .write(
            &format!("{kv}/data/app/config"),
            &json!({"data": {"greeting": "hello"}}),
        )
        .await?;
    e2e.delete::<VaultRole>("app").await?;
    e2e.wait_gone::<VaultRole>("app", GONE_TIMEOUT).await?;
    ensure!(
        vault_data(&e2e, &role_path).await?.is_none(),
        "deletionPolicy Delete (the VaultRole default): {role_path} must be gone once the VaultRole is"
    );
    e2e.delete::<SecretEngine>("kv").await?;
    e2e.delete::<AuthMethod>("k8s").await?;
    e2e.wait_gone::<SecretEngine>("kv", GONE_TIMEOUT).await?;
    e2e.wait_gone::<AuthMethod>("k8s", GONE_TIMEOUT).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        mount_entry(&e2e, "sys/mounts", &kv).await?.is_some(),
        "deletionPolicy Retain (the SecretEngine default): the mount {kv}/ must survive"
    );
    let data = vault_data(&e2e, &format!("{kv}/data/app/config")).await?;
    ensure!(
        data.as_ref()
            .is_some_and(|d| d["data"]["greeting"] == "hello"),
        "the engine's data must survive: {data:?}"
    );
    ensure!(
        mount_entry(&e2e, "sys/auth", &k8s).await?.is_some(),
        "deletionPolicy Retain (the AuthMethod default): {k8s}/ must stay enabled"
    );
    // The mounts go with the harness cleanup (registered above).
    Ok(())
}

/// An AppRole `VaultRole` with `roleIdSecret`: the role id lands in a Secret controlled
/// by the VaultRole (key `role_id`, equal to Vault's); a deleted Secret is restored
/// (the operator watches the Secrets it owns); deleting the VaultRole removes the role
/// from Vault and the API server garbage-collects the Secret.
#[tokio::test]
async fn approle_role_id_secret_follows_its_role() -> Result<()> {
    let Some(e2e) = E2e::start("approle_role_id_secret_follows_its_role").await else {
        return Ok(());
    };
    let ns = e2e.ns().to_string();
    let approle = format!("{ns}-approle");
    let role_path = format!("auth/{approle}/role/service");
    e2e.cleanup_vault_path(format!("sys/auth/{approle}"));

    e2e.apply_value(json!({
        "apiVersion": certus_api::API_VERSION, "kind": "VaultRole",
        "metadata": {"name": "service"},
        "spec": {"appRole": {"mount": approle, "policies": ["default"], "tokenTTL": "1h",
                             "secretIdTTL": "24h", "roleIdSecret": {"name": "service-role-id"}}},
    }))
    .await?;
    e2e.apply_value(json!({
        "apiVersion": certus_api::API_VERSION, "kind": "AuthMethod",
        "metadata": {"name": "approle"},
        "spec": {"path": approle, "type": "approle"},
    }))
    .await?;
    e2e.wait_ready::<AuthMethod>("approle", READY_TIMEOUT)
        .await?;
    let role = e2e
        .wait_ready::<VaultRole>("service", CONVERGE_TIMEOUT)
        .await?;
    ensure!(
        status_of(&role).role_id_secret.as_deref() == Some("service-role-id"),
        "status.roleIdSecret: {:?}",
        status_of(&role)
    );
    let role_id = vault_data(&e2e, &format!("{role_path}/role-id"))
        .await?
        .and_then(|d| d["role_id"].as_str().map(str::to_string))
        .context("Vault has no role id for the AppRole")?;

    let secrets: Api<Secret> = Api::namespaced(e2e.client(), &ns);
    let published = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("role_id"))
            .is_some_and(|v| v.0 == role_id.as_bytes())
    };
    let secret = secrets
        .get("service-role-id")
        .await
        .context("the role id Secret")?;
    ensure!(published(&secret), "the Secret holds Vault's role id");
    let owner = secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .context("the Secret has no controller owner")?;
    ensure!(
        owner.kind == "VaultRole" && Some(owner.uid.as_str()) == role.uid().as_deref(),
        "controller owner: {owner:?}"
    );
    ensure!(
        secret
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("certus-vault-operator"),
        "labels: {:?}",
        secret.labels()
    );

    // Deleted by hand: restored.
    secrets
        .delete("service-role-id", &DeleteParams::default())
        .await?;
    e2e.eventually(
        "the deleted role id Secret to be restored",
        Duration::from_secs(60),
        async || {
            Ok(match secrets.get_opt("service-role-id").await? {
                Some(s) if s.metadata.deletion_timestamp.is_none() && published(&s) => {
                    Check::Done(())
                }
                Some(_) => Check::Pending("present, not (yet) restored".into()),
                None => Check::Pending("absent".into()),
            })
        },
    )
    .await?;

    // The VaultRole deleted: the role leaves Vault, the Secret is garbage-collected.
    e2e.delete::<VaultRole>("service").await?;
    e2e.wait_gone::<VaultRole>("service", GONE_TIMEOUT).await?;
    ensure!(
        vault_data(&e2e, &role_path).await?.is_none(),
        "{role_path} must be gone with its VaultRole"
    );
    e2e.eventually(
        "the role id Secret to be garbage-collected with its VaultRole",
        Duration::from_secs(60),
        async || {
            Ok(match secrets.get_opt("service-role-id").await? {
                None => Check::Done(()),
                Some(_) => Check::Pending("still present".into()),
            })
        },
    )
    .await?;
    Ok(())
}

/// Two SecretEngines on one mount (same connection): the one created first manages it;
/// the other is `Ready=False/Conflict` and writes nothing; deleting the later one
/// (`deletionPolicy: Delete`) leaves the mount in Vault; deleting the owner hands the
/// mount over to the other, which then writes its own settings.
#[tokio::test]
async fn a_second_engine_on_one_mount_conflicts_until_the_owner_is_gone() -> Result<()> {
    let Some(e2e) =
        E2e::start("a_second_engine_on_one_mount_conflicts_until_the_owner_is_gone").await
    else {
        return Ok(());
    };
    let ns = e2e.ns().to_string();
    let kv = format!("{ns}-shared");
    e2e.cleanup_vault_path(format!("sys/mounts/{kv}"));
    let engine = |name: &str| {
        json!({
            "apiVersion": certus_api::API_VERSION, "kind": "SecretEngine",
            "metadata": {"name": name},
            "spec": {"path": kv, "type": "kv-v2", "description": format!("managed by {name}"),
                     "deletionPolicy": "Delete"},
        })
    };
    let description = async || -> Result<Option<String>> {
        Ok(mount_entry(&e2e, "sys/mounts", &kv)
            .await?
            .and_then(|m| m["description"].as_str().map(str::to_string)))
    };

    e2e.apply_value(engine("owner")).await?;
    e2e.wait_ready::<SecretEngine>("owner", READY_TIMEOUT)
        .await?;
    // creationTimestamp has a resolution of one second: make the order unambiguous.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    e2e.apply_value(engine("second")).await?;
    let second = e2e
        .wait_condition::<SecretEngine>("second", "Ready", "False", Some("Conflict"), READY_TIMEOUT)
        .await?;
    let message = ready_message(&status_of(&second));
    ensure!(
        message.contains(&format!("SecretEngine {ns}/owner"))
            && message.contains("nothing was written"),
        "{message}"
    );
    ensure!(
        description().await?.as_deref() == Some("managed by owner"),
        "the mount keeps the owner's settings: {:?}",
        description().await?
    );

    // Deleting the later one (Delete policy) must not unmount the owner's engine.
    e2e.delete::<SecretEngine>("second").await?;
    e2e.wait_gone::<SecretEngine>("second", GONE_TIMEOUT)
        .await?;
    ensure!(
        description().await?.as_deref() == Some("managed by owner"),
        "the owner's mount survives the deletion of the other resource"
    );

    // Back again, then the owner goes: the mount is handed over.
    e2e.apply_value(engine("second")).await?;
    e2e.wait_condition::<SecretEngine>("second", "Ready", "False", Some("Conflict"), READY_TIMEOUT)
        .await?;
    e2e.delete::<SecretEngine>("owner").await?;
    e2e.wait_gone::<SecretEngine>("owner", GONE_TIMEOUT).await?;
    e2e.wait_ready::<SecretEngine>("second", CONVERGE_TIMEOUT)
        .await?;
    ensure!(
        description().await?.as_deref() == Some("managed by second"),
        "the new owner wrote its settings: {:?}",
        description().await?
    );
    Ok(())
}
