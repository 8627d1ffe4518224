//! `StaticSecret` and `RotationPolicy` end to end: a real API server, the real
//! `certus-vault run` binary, a real Vault/OpenBao. Skipped (with one line on stderr)
//! unless `CERTUS_E2E_KUBECONFIG` is set; see tests/e2e/README.md.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use certus_api::{find_condition, ConditionStatus, RotationPolicy, StaticSecret};
use certus_e2e::{Check, E2e, READY_TIMEOUT};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{json, Value};

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

fn unique_mount(e2e: &E2e, what: &str) -> String {
    format!("{}-{what}", e2e.ns())
}

async fn kv2(e2e: &E2e, mount: &str) -> Result<()> {
    e2e.vault()
        .write(
            &format!("sys/mounts/{mount}"),
            &json!({"type": "kv", "options": {"version": "2"}}),
        )
        .await?;
    e2e.cleanup_vault_path(format!("sys/mounts/{mount}"));
    Ok(())
}

/// A StaticSecret follows a KV v2 secret through versions (each within refreshInterval
/// plus slack), restores a deleted Secret, and rolls out its Deployment only when the
/// data changed.
#[tokio::test]
async fn static_secret_follows_kv_versions() -> Result<()> {
    let Some(e2e) = E2e::start("static_secret_follows_kv_versions").await else {
        return Ok(());
    };
    let mount = unique_mount(&e2e, "kv");
    kv2(&e2e, &mount).await?;
    let vault = e2e.vault();
    vault
        .write(
            &format!("{mount}/data/prod/openai"),
            &json!({"data": {"api_key": "sk-1", "org": "certus"}}),
        )
        .await?;
    e2e.apply_yaml(
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: certus-ask}
spec:
  replicas: 0
  selector: {matchLabels: {app: certus-ask}}
  template:
    metadata: {labels: {app: certus-ask}}
    spec:
      containers: [{name: app, image: registry.k8s.io/pause:3.9}]
",
    )
    .await?;
    e2e.apply_yaml(&format!(
        "apiVersion: vault.certus.io/v1alpha1
kind: StaticSecret
metadata: {{name: openai}}
spec:
  mount: {mount}
  path: prod/openai
  refreshInterval: 2s
  secret:
    name: openai-api-key
    data: {{OPENAI_API_KEY: '{{{{ api_key }}}}'}}
  rolloutRestartTargets: [{{kind: Deployment, name: certus-ask}}]
"
    ))
    .await?;
    let s = e2e
        .wait_ready::<StaticSecret>("openai", READY_TIMEOUT)
        .await?;
    ensure!(
        s.status.as_ref().and_then(|s| s.synced_version) == Some(1),
        "status.syncedVersion: {:?}",
        s.status
    );
    let secrets = e2e.api::<Secret>();
    let deployments = e2e.api::<Deployment>();
    let restarted_at = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(certus_api::annotations::RESTARTED_AT).cloned())
    };
    let sec = secrets.get("openai-api-key").await?;
    ensure!(secret_value(&sec, "OPENAI_API_KEY").as_deref() == Some("sk-1"));
    ensure!(
        sec.metadata.owner_references.as_ref().is_some_and(|o| o
            .iter()
            .any(|o| o.kind == "StaticSecret" && o.controller == Some(true))),
        "the Secret is owned by its StaticSecret"
    );
    ensure!(restarted_at(&deployments.get("certus-ask").await?).is_none());

    // Version 2 changes the key: the Secret follows within the refresh interval (plus
    // slack for a real cluster) and the Deployment is rolled out.
    vault
        .write(
            &format!("{mount}/data/prod/openai"),
            &json!({"data": {"api_key": "sk-2", "org": "certus"}}),
        )
        .await?;
    let started = std::time::Instant::now();
    e2e.eventually(
        "the Secret holds version 2",
        Duration::from_secs(10),
        async || {
            let s = secrets.get("openai-api-key").await?;
            Ok(match secret_value(&s, "OPENAI_API_KEY").as_deref() {
                Some("sk-2") => Check::Done(()),
                other => Check::Pending(format!("{other:?}")),
            })
        },
    )
    .await?;
    eprintln!("version 2 projected after {:?}", started.elapsed());
    let first = e2e
        .eventually(
            "the Deployment is rolled out",
            Duration::from_secs(10),
            async || {
                let d = deployments.get("certus-ask").await?;
                Ok(match restarted_at(&d) {
                    Some(t) => Check::Done(t),
                    None => Check::Pending("no restartedAt".into()),
                })
            },
        )
        .await?;

    // Version 3 changes only a key the Secret does not use: no rollout.
    vault
        .write(
            &format!("{mount}/data/prod/openai"),
            &json!({"data": {"api_key": "sk-2", "org": "certus-eu"}}),
        )
        .await?;
    e2e.wait_for::<StaticSecret>("openai", "syncedVersion 3", Duration::from_secs(15), |s| {
        s.status.as_ref().and_then(|s| s.synced_version) == Some(3)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        restarted_at(&deployments.get("certus-ask").await?) == Some(first.clone()),
        "no rollout when the data did not change"
    );

    // A deleted Secret comes back (the Secret is watched through .owns()).
    secrets
        .delete("openai-api-key", &Default::default())
        .await?;
    e2e.eventually(
        "the deleted Secret is restored",
        Duration::from_secs(15),
        async || {
            Ok(match secrets.get_opt("openai-api-key").await? {
                Some(s) if secret_value(&s, "OPENAI_API_KEY").as_deref() == Some("sk-2") => {
                    Check::Done(())
                }
                other => Check::Pending(format!("{:?}", other.map(|s| s.metadata.name))),
            })
        },
    )
    .await?;
    Ok(())
}

/// The columns `kubectl get rotationpolicies` prints (the Table API kubectl uses).
async fn table(e2e: &E2e) -> Result<Value> {
    let url = format!(
        "/apis/vault.certus.io/v1alpha1/namespaces/{}/rotationpolicies",
        e2e.ns()
    );
    let req = http::Request::get(url)
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())?;
    let text = e2e.client().request_text(req).await?;
    serde_json::from_str(&text).context("the Table response")
}

/// A KV token rotated every 10s with a grace period (the previous token stays listed in
/// `valid_tokens` until the grace ends), a manual policy that reports `RotationDue`
/// without touching the value, and the `kubectl get rotationpolicies` columns.
#[tokio::test]
async fn rotation_policies_rotate_and_report() -> Result<()> {
    let Some(e2e) = E2e::start("rotation_policies_rotate_and_report").await else {
        return Ok(());
    };
    let mount = unique_mount(&e2e, "kv");
    kv2(&e2e, &mount).await?;
    let vault = e2e.vault();
    vault
        .write(
            &format!("{mount}/data/prod/openai"),
            &json!({"data": {"api_key": "sk-vendor"}}),
        )
        .await?;
    e2e.apply_yaml(&format!(
        "apiVersion: vault.certus.io/v1alpha1
kind: RotationPolicy
metadata: {{name: mcp}}
spec:
  interval: 10s
  gracePeriod: 4s
  kv:
    mount: {mount}
    path: mcp/assurance
    keepPrevious: ValidTokens
    keys: [{{key: server_token, token: {{}}}}]
    secret: {{name: mcp-token}}
---
apiVersion: vault.certus.io/v1alpha1
kind: RotationPolicy
metadata: {{name: openai}}
spec:
  interval: 1s
  manual: {{mount: {mount}, path: prod/openai}}
"
    ))
    .await?;

    // Three rotations after the initialization; each time the new token is in KV and in
    // the Secret, listed with the previous one until the grace period ends.
    let mut seen: Vec<String> = vec![];
    let kv_path = format!("{mount}/data/mcp/assurance");
    let secrets = e2e.api::<Secret>();
    while seen.len() < 4 {
        let want = seen.len();
        let (token, valid) = e2e
            .eventually(
                &format!("rotation {want}"),
                Duration::from_secs(30),
                async || {
                    let Some(kv) = vault.read(&kv_path).await? else {
                        return Ok(Check::Pending("no KV secret yet".into()));
                    };
                    let token = kv["data"]["data"]["server_token"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let valid: Vec<String> =
                        serde_json::from_value(kv["data"]["data"]["valid_tokens"].clone())
                            .unwrap_or_default();
                    if token.is_empty() || seen.contains(&token) {
                        return Ok(Check::Pending(format!("{} tokens so far", seen.len())));
                    }
                    Ok(Check::Done((token, valid)))
                },
            )
            .await?;
        match seen.last() {
            None => ensure!(valid == vec![token.clone()], "{valid:?}"),
            Some(prev) => ensure!(
                valid == vec![token.clone(), prev.clone()],
                "the previous token stays valid during the grace: {valid:?}"
            ),
        }
        e2e.eventually(
            "the Secret holds the new token",
            Duration::from_secs(10),
            async || {
                let s = secrets.get("mcp-token").await?;
                Ok(
                    if secret_value(&s, "server_token").as_deref() == Some(token.as_str()) {
                        Check::Done(())
                    } else {
                        Check::Pending("old token".into())
                    },
                )
            },
        )
        .await?;
        if !seen.is_empty() {
            e2e.eventually(
                "the grace period ends",
                Duration::from_secs(10),
                async || {
                    let kv = vault.read(&kv_path).await?.unwrap_or_default();
                    let valid: Vec<String> =
                        serde_json::from_value(kv["data"]["data"]["valid_tokens"].clone())
                            .unwrap_or_default();
                    Ok(if valid == vec![token.clone()] {
                        Check::Done(())
                    } else {
                        Check::Pending(format!("{} valid tokens", valid.len()))
                    })
                },
            )
            .await?;
        }
        seen.push(token);
    }
    let p = e2e.api::<RotationPolicy>().get("mcp").await?;
    let status = p.status.clone().unwrap_or_default();
    ensure!(status.history.len() >= 4, "history: {:?}", status.history);
    ensure!(status.next_rotation.is_some() && status.last_rotated.is_some());

    // The manual policy: due, reported, untouched.
    let m = e2e
        .wait_condition::<RotationPolicy>(
            "openai",
            "RotationDue",
            "True",
            Some("Overdue"),
            READY_TIMEOUT,
        )
        .await?;
    ensure!(m
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, "Ready"))
        .is_some_and(|c| c.status == ConditionStatus::True));
    let events = e2e.events_named("RotationPolicy", "openai").await?;
    ensure!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("RotationDue")
                && e.type_.as_deref() == Some("Warning")),
        "a Warning Event RotationDue: {}",
        certus_e2e::format_events(&events)
    );
    let kv = vault
        .read(&format!("{mount}/data/prod/openai"))
        .await?
        .context("the vendor key")?;
    ensure!(kv["data"]["metadata"]["version"] == 1 && kv["data"]["data"]["api_key"] == "sk-vendor");

    // `kubectl get rotationpolicies`: Target, Interval/Schedule, Last Rotated, Next
    // Rotation, Ready, Age.
    let t = table(&e2e).await?;
    let columns: Vec<String> = t["columnDefinitions"]
        .as_array()
        .context("columnDefinitions")?
        .iter()
        .filter(|c| c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(
        columns
            == [
                "Name",
                "Target",
                "Interval/Schedule",
                "Last Rotated",
                "Next Rotation",
                "Ready",
                "Age"
            ],
        "{columns:?}"
    );
    let rows = t["rows"].as_array().context("rows")?;
    let mcp = rows
        .iter()
        .find(|r| r["cells"][0] == "mcp")
        .context("a row for mcp")?;
    ensure!(
        mcp["cells"][1] == format!("kv:{mount}/mcp/assurance"),
        "{mcp}"
    );
    ensure!(
        mcp["cells"][2] == "10s" && mcp["cells"][5] == "True",
        "{mcp}"
    );
    ensure!(
        mcp["cells"][4].as_str().is_some_and(|s| !s.is_empty()),
        "{mcp}"
    );
    Ok(())
}
