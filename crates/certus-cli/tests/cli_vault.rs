//! The `certus-vault` binary against the real OpenBao started by `hack/services-up.sh`:
//! apply → plan shows no changes → an edit made in Vault makes plan exit 2 with a diff →
//! apply corrects it; bad input changes nothing; conflicts; connections from manifests.

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
    fn policy(&self, name: &str) -> Option<String> {
        let (s, v) = self.req("GET", &format!("sys/policies/acl/{name}"), None);
        (s == 200).then(|| v["data"]["policy"].as_str().unwrap().to_string())
    }
    fn put_policy(&self, name: &str, text: &str) {
        let (s, _) = self.req(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": text })),
        );
        assert_eq!(s, 204);
    }
    fn delete_policy(&self, name: &str) {
        self.req("DELETE", &format!("sys/policies/acl/{name}"), None);
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn certus(args: &[&str], dir: &Path, with_env: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certus-vault"));
    cmd.args(args)
        .arg("-f")
        .arg(dir)
        .arg("--state")
        .arg(dir.join(".state.json"));
    if !with_env {
        for v in ["VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"] {
            cmd.env_remove(v);
        }
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

fn policy_manifest(name: &str, vault_name: &str, rules: &str) -> String {
    let rules = rules
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata:\n  name: {name}\n  namespace: cli\nspec:\n  name: {vault_name}\n  rules: |\n{rules}\n")
}

#[test]
fn apply_then_plan_is_clean_and_drift_is_shown_and_corrected() {
    let v = vault();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("cli-drift");
    write(
        dir.path(),
        "p.yaml",
        &policy_manifest(
            "p",
            &name,
            "path \"secret/data/x/*\" {\n  capabilities = [\"read\"]\n}",
        ),
    );

    let plan = certus(&["plan"], dir.path(), true);
    assert_eq!(plan.status.code(), Some(2), "{}", stdout(&plan));
    assert!(v.policy(&name).is_none(), "plan must not write");

    let apply = certus(&["apply"], dir.path(), true);
    assert_eq!(apply.status.code(), Some(0), "{}", stdout(&apply));
    let text = v.policy(&name).expect("apply created the policy");
    assert!(
        text.starts_with("# managed-by: certus-vault-operator owner=cli/p\n"),
        "{text}"
    );
    assert!(text.contains("secret/data/x/*"));

    let again = certus(&["plan"], dir.path(), true);
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
    assert!(stdout(&again).contains("no changes"), "{}", stdout(&again));
    assert!(stdout(&again).contains("0 writes"), "{}", stdout(&again));

    v.put_policy(&name, "path \"secret/*\" { capabilities = [\"sudo\"] }");
    let drift = certus(&["plan"], dir.path(), true);
    let out = stdout(&drift);
    assert_eq!(drift.status.code(), Some(2), "{out}");
    assert!(
        out.contains("-path \"secret/*\" { capabilities = [\"sudo\"] }"),
        "{out}"
    );
    assert!(out.contains("+path \"secret/data/x/*\" {"), "{out}");

    let fix = certus(&["apply"], dir.path(), true);
    assert_eq!(fix.status.code(), Some(0), "{}", stdout(&fix));
    assert_eq!(v.policy(&name).unwrap(), text);
    v.delete_policy(&name);
}

#[test]
fn bad_hcl_is_reported_with_its_line_and_nothing_is_written() {
    let v = vault();
    let dir = tempfile::tempdir().unwrap();
    let bad = unique("cli-bad");
    let good = unique("cli-good");
    write(dir.path(), "bad.yaml", &policy_manifest("bad", &bad, "path \"a\" {\n  capabilities = [\"read\"]\n}\npath \"b\" {\n  capabilities = [\"raed\"]\n}"));
    write(
        dir.path(),
        "good.yaml",
        &policy_manifest("good", &good, "path \"a\" { capabilities = [\"read\"] }"),
    );
    let out = certus(&["apply"], dir.path(), true);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("spec.rules line 5"), "{text}");
    assert!(text.contains("unknown capability \"raed\""), "{text}");
    assert!(text.contains("InvalidSpec"), "{text}");
    assert!(
        v.policy(&bad).is_none(),
        "an invalid policy must not be written"
    );
    // The other resource is still served.
    assert!(v.policy(&good).is_some(), "{text}");
    v.delete_policy(&good);
}

#[test]
fn second_claim_of_a_policy_name_is_a_conflict() {
    let v = vault();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("cli-conflict");
    write(
        dir.path(),
        "a.yaml",
        &policy_manifest(
            "first",
            &name,
            "path \"first\" { capabilities = [\"read\"] }",
        ),
    );
    write(
        dir.path(),
        "b.yaml",
        &policy_manifest(
            "second",
            &name,
            "path \"second\" { capabilities = [\"read\"] }",
        ),
    );
    let out = certus(&["apply"], dir.path(), true);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("! VaultPolicy/cli/second (Conflict)"),
        "{text}"
    );
    let live = v.policy(&name).unwrap();
    assert!(
        live.contains("\"first\"") && !live.contains("\"second\""),
        "{live}"
    );

    // A policy owned by another resource (marker) is not overwritten either.
    let dir2 = tempfile::tempdir().unwrap();
    write(
        dir2.path(),
        "c.yaml",
        &policy_manifest(
            "third",
            &name,
            "path \"third\" { capabilities = [\"read\"] }",
        ),
    );
    let out = certus(&["apply"], dir2.path(), true);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("owned by cli/first"),
        "{}",
        stdout(&out)
    );
    assert!(v.policy(&name).unwrap().contains("\"first\""));
    v.delete_policy(&name);
}

#[test]
fn connection_from_manifests_with_token_and_approle() {
    let v = vault();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("cli-approle");
    // An AppRole the CLI logs in with (made with the root token).
    let mount = unique("approle").replace('-', "");
    assert_eq!(
        v.req(
            "POST",
            &format!("sys/auth/{mount}"),
            Some(json!({"type": "approle"}))
        )
        .0,
        204
    );
    v.put_policy(&format!("{name}-writer"), "path \"sys/policies/acl/*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\"] }\npath \"auth/token/lookup-self\" { capabilities = [\"read\"] }");
    assert_eq!(
        v.req(
            "POST",
            &format!("auth/{mount}/role/cli"),
            Some(json!({"token_policies": [format!("{name}-writer")], "token_ttl": "10m"}))
        )
        .0,
        204
    );
    let role_id = v
        .req("GET", &format!("auth/{mount}/role/cli/role-id"), None)
        .1["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = v
        .req(
            "POST",
            &format!("auth/{mount}/role/cli/secret-id"),
            Some(json!({})),
        )
        .1["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    write(
        dir.path(),
        "conn.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: approle, namespace: cli}}\nstringData: {{secret-id: {secret_id}}}\n---\n\
             apiVersion: vault.certus.io/v1alpha1\nkind: VaultConnection\nmetadata: {{name: default, namespace: cli}}\nspec:\n  address: {}\n  auth:\n    appRole:\n      mount: {mount}\n      roleId: {role_id}\n      secretIdRef: {{name: approle, key: secret-id}}\n",
            v.addr
        ),
    );
    write(
        dir.path(),
        "p.yaml",
        &policy_manifest("p", &name, "path \"a\" { capabilities = [\"read\"] }"),
    );
    let out = certus(&["apply"], dir.path(), false);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("✓ VaultConnection/cli/default"), "{text}");
    assert!(
        text.contains("1 logins"),
        "one login for the whole run: {text}"
    );
    assert!(
        !text.contains(&secret_id),
        "the SecretID must never be printed"
    );
    assert!(v.policy(&name).is_some());

    // A token from a Secret manifest.
    let dir2 = tempfile::tempdir().unwrap();
    write(
        dir2.path(),
        "conn.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: tok, namespace: cli}}\nstringData: {{token: {}}}\n---\n\
             apiVersion: vault.certus.io/v1alpha1\nkind: VaultConnection\nmetadata: {{name: default, namespace: cli}}\nspec:\n  address: {}\n  auth:\n    token: {{secretRef: {{name: tok, key: token}}}}\n",
            v.token, v.addr
        ),
    );
    write(
        dir2.path(),
        "p.yaml",
        &policy_manifest("p", &name, "path \"a\" { capabilities = [\"read\"] }"),
    );
    let out = certus(&["plan"], dir2.path(), false);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        !stdout(&out).contains(&v.token),
        "the token must never be printed"
    );

    // A wrong SecretID fails the login clearly, and nothing is written.
    let dir3 = tempfile::tempdir().unwrap();
    let conn = std::fs::read_to_string(dir.path().join("conn.yaml"))
        .unwrap()
        .replace(&secret_id, "00000000-0000-0000-0000-000000000000");
    write(dir3.path(), "conn.yaml", &conn);
    let other = unique("cli-nologin");
    write(
        dir3.path(),
        "p.yaml",
        &policy_manifest("p", &other, "path \"a\" { capabilities = [\"read\"] }"),
    );
    let out = certus(&["apply"], dir3.path(), false);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("login (approle)"), "{}", stdout(&out));
    assert!(v.policy(&other).is_none());

    v.delete_policy(&name);
    v.delete_policy(&format!("{name}-writer"));
    v.req("DELETE", &format!("sys/auth/{mount}"), None);
}

#[test]
fn no_connection_anywhere_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        &policy_manifest(
            "p",
            "cli-noconn",
            "path \"a\" { capabilities = [\"read\"] }",
        ),
    );
    let out = certus(&["plan"], dir.path(), false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("VAULT_ADDR is not set"),
        "{}",
        stdout(&out)
    );
}

/// Two SecretEngines on one mount path in one apply: the first in manifest order owns
/// it, the second is a Conflict before any Vault request; the mount gets the first's
/// settings only.
#[test]
fn second_claim_of_a_mount_is_a_conflict() {
    let v = vault();
    let dir = tempfile::tempdir().unwrap();
    let path = unique("cli-mount");
    let engine = |name: &str, description: &str| {
        format!(
            "apiVersion: vault.certus.io/v1alpha1\nkind: SecretEngine\nmetadata:\n  name: {name}\n  namespace: cli\nspec:\n  path: {path}\n  type: kv-v2\n  description: {description}\n"
        )
    };
    write(dir.path(), "a.yaml", &engine("first", "the-first"));
    write(dir.path(), "b.yaml", &engine("second", "the-second"));
    let out = certus(&["apply"], dir.path(), true);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("! SecretEngine/cli/second (Conflict)"),
        "{text}"
    );
    assert!(
        text.contains("also claimed by SecretEngine/cli/first"),
        "{text}"
    );
    let (_, mounts) = v.req("GET", "sys/mounts", None);
    assert_eq!(
        mounts["data"][format!("{path}/")]["description"],
        "the-first",
        "{mounts}"
    );
    v.req("DELETE", &format!("sys/mounts/{path}"), None);
}
