//! `certus-vault apply` with a DynamicCredential against the real OpenBao: the credential
//! is issued once into a 0600 Secret manifest, a second `apply` resumes it from the file
//! instead of issuing again, `plan` writes nothing, and `apply --watch` keeps renewing
//! until SIGTERM and revokes on exit when asked.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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
        (
            status,
            serde_json::from_str(&resp.text().unwrap()).unwrap_or(Value::Null),
        )
    }
    /// `data` of `auth/token/lookup` for a token, `None` once it is revoked.
    fn lookup(&self, token: &str) -> Option<Value> {
        let (s, v) = self.req("POST", "auth/token/lookup", Some(json!({ "token": token })));
        (s == 200).then(|| v["data"].clone())
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn certus(args: &[&str], manifests: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certus-vault"));
    cmd.args(args)
        .arg("-f")
        .arg(manifests)
        .arg("--output-dir")
        .arg(out)
        .arg("--state")
        .arg(out.join("state.json"));
    cmd
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn manifest(name: &str, policy: &str, ttl: &str) -> String {
    format!(
        "apiVersion: vault.certus.io/v1alpha1\nkind: DynamicCredential\nmetadata:\n  name: {name}\n  namespace: agents\nspec:\n  path: auth/token/create\n  parameters:\n    policies: [{policy}]\n    ttl: {ttl}\n    no_default_policy: true\n  secret:\n    data:\n      VAULT_TOKEN: \"{{{{ token }}}}\"\n"
    )
}

/// The Secret manifest the CLI wrote: (decoded VAULT_TOKEN, lease-state annotation).
fn read_secret(file: &Path) -> (String, String) {
    let v: Value = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let b64 = v["data"]["VAULT_TOKEN"].as_str().expect("data.VAULT_TOKEN");
    let token = String::from_utf8(decode_b64(b64)).unwrap();
    let state = v["metadata"]["annotations"]["vault.certus.io/lease-state"]
        .as_str()
        .expect("lease state annotation")
        .to_string();
    (token, state)
}

fn decode_b64(s: &str) -> Vec<u8> {
    let out = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        });
    out.expect("base64 -d").stdout
}

#[test]
fn apply_writes_a_0600_secret_and_a_second_apply_resumes_instead_of_issuing() {
    let v = vault();
    let policy = unique("cli-dyn");
    v.req(
        "PUT",
        &format!("sys/policies/acl/{policy}"),
        Some(json!({"policy": "path \"secret/data/agents/*\" { capabilities = [\"read\"] }"})),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dc.yaml"), manifest("agent", &policy, "1h")).unwrap();

    let plan = certus(&["plan"], dir.path(), out.path()).output().unwrap();
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    assert!(
        text(&plan).contains("issue a credential: first issue"),
        "{}",
        text(&plan)
    );
    assert!(
        text(&plan).contains("0 writes"),
        "plan never writes: {}",
        text(&plan)
    );

    let first = certus(&["apply"], dir.path(), out.path()).output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let file = out.path().join("agents").join("agent.yaml");
    let mode = std::fs::metadata(&file)
        .expect("Secret file written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the Secret file is private");
    let (token, state) = read_secret(&file);
    assert!(!text(&first).contains(&token), "the token is never printed");
    let info = v.lookup(&token).expect("the issued token is valid");
    assert_eq!(info["policies"], json!([policy]));
    assert!(state.contains("\"kind\":\"token\""), "{state}");

    // A second apply resumes from the file: no new token, no Vault write.
    let second = certus(&["apply"], dir.path(), out.path()).output().unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        text(&second).contains("credential current"),
        "{}",
        text(&second)
    );
    assert!(text(&second).contains("0 writes"), "{}", text(&second));
    assert_eq!(read_secret(&file).0, token, "the same credential");
    let again = certus(&["plan"], dir.path(), out.path()).output().unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("nothing to do until"),
        "{}",
        text(&again)
    );

    v.req("POST", "auth/token/revoke", Some(json!({ "token": token })));
    v.req("DELETE", &format!("sys/policies/acl/{policy}"), None);
}

#[test]
fn apply_watch_renews_in_the_foreground_and_revokes_on_exit() {
    let v = vault();
    let policy = unique("cli-watch");
    v.req(
        "PUT",
        &format!("sys/policies/acl/{policy}"),
        Some(json!({"policy": "path \"secret/data/agents/*\" { capabilities = [\"read\"] }"})),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // A 6s token: without renewals it would be dead long before the watch stops.
    std::fs::write(
        dir.path().join("dc.yaml"),
        manifest("watched", &policy, "6s"),
    )
    .unwrap();
    let child = certus(
        &["apply", "--watch", "--revoke-on-exit"],
        dir.path(),
        out.path(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let file = out.path().join("agents").join("watched.yaml");
    let start = std::time::Instant::now();
    while !file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "apply --watch wrote no Secret"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (token, _) = read_secret(&file);
    std::thread::sleep(Duration::from_secs(14));
    let info = v
        .lookup(&token)
        .expect("renewed by the watch: still valid after twice its TTL");
    assert!(info["ttl"].as_i64().unwrap() > 0, "{info}");
    assert_eq!(read_secret(&file).0, token, "renewals keep the same token");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let done = child.wait_with_output().unwrap();
    let log = text(&done);
    assert_eq!(done.status.code(), Some(0), "{log}");
    assert!(log.contains("renewed the lease"), "{log}");
    assert!(log.contains("revoked 1 credential(s)"), "{log}");
    assert!(v.lookup(&token).is_none(), "revoked on exit");
    assert!(
        !file.exists(),
        "the Secret file goes with the revoked credential"
    );
    assert!(!log.contains(&token), "the token is never printed");
    v.req("DELETE", &format!("sys/policies/acl/{policy}"), None);
}

#[test]
fn dynamic_samples_load_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/samples/dynamic");
    let set = certus_cli::manifests::ManifestSet::load(&dir, false).unwrap();
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    assert!(set.ignored.is_empty(), "{:?}", set.ignored);
    let mut paths: Vec<String> = set
        .dynamic_credentials
        .iter()
        .map(|i| {
            let v = certus_reconcile::dynamic::validate(&i.object)
                .unwrap_or_else(|e| panic!("{}: {e}", i.origin));
            format!("{} {} {}", v.path, v.method.as_str(), v.secret_type)
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "auth/token/create POST Opaque",
            "database/creds/certus-ask GET Opaque",
            "pki/issue/certus-mtls POST kubernetes.io/tls",
        ]
    );
    assert_eq!((set.engines.len(), set.roles.len()), (1, 1));
}
