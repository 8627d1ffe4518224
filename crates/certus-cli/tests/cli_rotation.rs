//! `certus-vault plan/apply` with StaticSecret and RotationPolicy manifests against the
//! real OpenBao started by `hack/services-up.sh`: a first apply initializes a fresh KV
//! path and writes the Secret files, plan is then quiet, `rotate-now` rotates exactly
//! once, a manual policy is reported, bad manifests are refused. Also checks that the
//! rotation samples are valid.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

struct Vault {
    addr: String,
    token: String,
    http: reqwest::blocking::Client,
}

fn vault() -> Vault {
    let addr = std::env::var("VAULT_ADDR").expect("VAULT_ADDR is not set: run `hack/services-up.sh && . .hack/env` (the test tiers need a real OpenBao)");
    let token = std::env::var("VAULT_TOKEN")
        .expect("VAULT_TOKEN is not set: run `hack/services-up.sh && . .hack/env`");
    Vault {
        addr,
        token,
        http: reqwest::blocking::Client::new(),
    }
}

impl Vault {
    fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(m, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.req(method, path, body);
        assert!((200..300).contains(&s), "{method} {path}: HTTP {s} {v}");
        v
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn certus(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certus-vault"))
        .args(args)
        .arg("-f")
        .arg(dir)
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn secret_file(path: &Path) -> k8s_openapi::api::core::v1::Secret {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn data(s: &k8s_openapi::api::core::v1::Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn manifests(mount: &str, rotate_now: Option<&str>) -> String {
    let annotations = rotate_now
        .map(|v| format!("  annotations:\n    vault.certus.io/rotate-now: \"{v}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: vault.certus.io/v1alpha1
kind: StaticSecret
metadata:
  name: openai
  namespace: cli
spec:
  mount: {mount}
  path: prod/openai
  secret:
    name: openai-key
    data:
      OPENAI_API_KEY: \"{{{{ api_key }}}}\"
  rolloutRestartTargets:
    - kind: Deployment
      name: certus-ask
---
apiVersion: vault.certus.io/v1alpha1
kind: RotationPolicy
metadata:
  name: mcp
  namespace: cli
{annotations}spec:
  interval: 7d
  gracePeriod: 24h
  kv:
    mount: {mount}
    path: mcp/assurance
    keepPrevious: ValidTokens
    keys:
      - key: server_token
        token: {{}}
    secret:
      name: mcp-token
---
apiVersion: vault.certus.io/v1alpha1
kind: RotationPolicy
metadata:
  name: openai-manual
  namespace: cli
spec:
  interval: 90d
  manual:
    mount: {mount}
    path: prod/openai
"
    )
}

#[test]
fn apply_initializes_and_syncs_then_plan_is_quiet_and_rotate_now_rotates_once() {
    let v = vault();
    let mount = unique("cli-rot");
    v.ok(
        "POST",
        &format!("sys/mounts/{mount}"),
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    );
    v.ok(
        "POST",
        &format!("{mount}/data/prod/openai"),
        Some(json!({"data": {"api_key": "sk-cli-1"}})),
    );
    let dir = tempfile::tempdir().unwrap();
    let outdir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), manifests(&mount, None)).unwrap();
    let o_arg = outdir.path().to_str().unwrap();

    // Plan: the Secret would be created and the fresh KV path initialized; nothing written.
    let plan = certus(&["plan", "-o", o_arg], dir.path());
    let text = out(&plan);
    assert_eq!(plan.status.code(), Some(2), "{text}");
    assert!(text.contains("+ StaticSecret/cli/openai"), "{text}");
    assert!(
        text.contains(&format!(
            "+ RotationPolicy/cli/mcp {mount}/data/mcp/assurance"
        )),
        "{text}"
    );
    assert_eq!(
        v.req("GET", &format!("{mount}/data/mcp/assurance"), None).0,
        404
    );
    assert!(!outdir.path().join("cli").exists());

    // Apply: KV initialized, both Secret files written (0600), restarts only reported.
    let apply = certus(&["apply", "-o", o_arg], dir.path());
    let text = out(&apply);
    assert_eq!(apply.status.code(), Some(0), "{text}");
    let kv = v.ok("GET", &format!("{mount}/data/mcp/assurance"), None);
    let token = kv["data"]["data"]["server_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(kv["data"]["data"]["valid_tokens"], json!([token]));
    let mcp = secret_file(&outdir.path().join("cli/mcp-token.yaml"));
    assert_eq!(data(&mcp, "server_token"), token);
    let openai = secret_file(&outdir.path().join("cli/openai-key.yaml"));
    assert_eq!(data(&openai, "OPENAI_API_KEY"), "sk-cli-1");
    assert!(
        !text.contains("sk-cli-1") && !text.contains(&token),
        "values never printed: {text}"
    );

    // Plan again: nothing to do.
    let plan = certus(&["plan", "-o", o_arg], dir.path());
    assert_eq!(plan.status.code(), Some(0), "{}", out(&plan));
    // A new KV version of the OpenAI key: apply updates the file and reports the restart
    // a cluster would make.
    v.ok(
        "POST",
        &format!("{mount}/data/prod/openai"),
        Some(json!({"data": {"api_key": "sk-cli-2"}})),
    );
    let apply = certus(&["apply", "-o", o_arg], dir.path());
    let text = out(&apply);
    assert_eq!(apply.status.code(), Some(0), "{text}");
    assert!(
        text.contains("would restart Deployment/certus-ask"),
        "{text}"
    );
    let openai = secret_file(&outdir.path().join("cli/openai-key.yaml"));
    assert_eq!(data(&openai, "OPENAI_API_KEY"), "sk-cli-2");

    // rotate-now: one rotation (new token first, the previous one still valid), and
    // only one however often apply runs.
    std::fs::write(dir.path().join("m.yaml"), manifests(&mount, Some("cli-1"))).unwrap();
    for _ in 0..2 {
        let apply = certus(&["apply", "-o", o_arg], dir.path());
        assert_eq!(apply.status.code(), Some(0), "{}", out(&apply));
    }
    let kv = v.ok("GET", &format!("{mount}/data/mcp/assurance"), None);
    assert_eq!(kv["data"]["metadata"]["version"], 2);
    let new = kv["data"]["data"]["server_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new, token);
    assert_eq!(kv["data"]["data"]["valid_tokens"], json!([new, token]));
    let mcp = secret_file(&outdir.path().join("cli/mcp-token.yaml"));
    assert_eq!(data(&mcp, "server_token"), new);

    v.req("DELETE", &format!("sys/mounts/{mount}"), None);
}

#[test]
fn manual_due_is_reported_and_bad_manifests_are_refused() {
    let v = vault();
    let mount = unique("cli-rot-bad");
    v.ok(
        "POST",
        &format!("sys/mounts/{mount}"),
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    );
    v.ok(
        "POST",
        &format!("{mount}/data/vendor"),
        Some(json!({"data": {"key": "x"}})),
    );
    let dir = tempfile::tempdir().unwrap();
    // An interval of 1s: the secret written above is due a second later.
    std::fs::write(
        dir.path().join("m.yaml"),
        format!("apiVersion: vault.certus.io/v1alpha1\nkind: RotationPolicy\nmetadata: {{name: vendor, namespace: cli}}\nspec:\n  interval: 1s\n  manual: {{mount: {mount}, path: vendor}}\n"),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let apply = certus(&["apply"], dir.path());
    let text = out(&apply);
    assert_eq!(apply.status.code(), Some(0), "{text}");
    assert!(text.contains("RotationDue"), "{text}");
    let kv = v.ok("GET", &format!("{mount}/data/vendor"), None);
    assert_eq!(
        kv["data"]["metadata"]["version"], 1,
        "a manual secret is never touched"
    );

    // Both interval and schedule: refused by the CRD's CEL rule, nothing written.
    std::fs::write(
        dir.path().join("m.yaml"),
        format!("apiVersion: vault.certus.io/v1alpha1\nkind: RotationPolicy\nmetadata: {{name: both, namespace: cli}}\nspec:\n  interval: 1d\n  schedule: '0 2 * * *'\n  kv: {{mount: {mount}, path: both, keys: [{{key: k, token: {{}}}}]}}\n"),
    )
    .unwrap();
    let apply = certus(&["apply"], dir.path());
    let text = out(&apply);
    assert_eq!(apply.status.code(), Some(1), "{text}");
    assert!(
        text.contains("exactly one of interval and schedule"),
        "{text}"
    );
    assert_eq!(v.req("GET", &format!("{mount}/data/both"), None).0, 404);
    // A bad cron schedule is refused before Vault is asked.
    std::fs::write(
        dir.path().join("m.yaml"),
        format!("apiVersion: vault.certus.io/v1alpha1\nkind: RotationPolicy\nmetadata: {{name: cron, namespace: cli}}\nspec:\n  schedule: '0 25 * * *'\n  kv: {{mount: {mount}, path: cron, keys: [{{key: k, token: {{}}}}]}}\n"),
    )
    .unwrap();
    let apply = certus(&["apply"], dir.path());
    let text = out(&apply);
    assert_eq!(apply.status.code(), Some(1), "{text}");
    assert!(
        text.contains("InvalidSpec") && text.contains("spec.schedule"),
        "{text}"
    );
    v.req("DELETE", &format!("sys/mounts/{mount}"), None);
}

#[test]
fn rotation_samples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/samples/rotation");
    let set = certus_cli::manifests::ManifestSet::load(&dir, false).unwrap();
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    assert_eq!(set.rotation_policies.len(), 4);
    assert_eq!(set.static_secrets.len(), 1);
    for p in &set.rotation_policies {
        certus_reconcile::rotation::validate(&p.object.spec)
            .unwrap_or_else(|e| panic!("{:?}: {e}", p.origin));
    }
    for s in &set.static_secrets {
        certus_reconcile::static_secret::validate(&s.object.spec).unwrap();
    }
    let labels: Vec<String> = set
        .rotation_policies
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.object.spec.target_label(),
                p.object.spec.when_label()
            )
        })
        .collect();
    for want in [
        "manual:certus/prod/openai 90d",
        "kv:certus/prod/aws 30d",
        "kv:certus/mcp/assurance 7d",
    ] {
        assert!(labels.iter().any(|l| l == want), "{labels:?}");
    }
    // The StaticSecret's rollout target is the Deployment shipped next to it.
    let target = &set.static_secrets[0].object.spec.rollout_restart_targets[0];
    assert_eq!(target.name.as_deref(), Some("certus-ask"));
    let deployment = std::fs::read_to_string(dir.join("deployment-certus-ask.yaml")).unwrap();
    assert!(deployment.contains("name: certus-ask") && deployment.contains("name: openai-api-key"));
}
