//! The audit settings of the packaging: the Helm chart's `audit.*` values map to the
//! `run` flags (`--audit-file`, `--audit-socket`, `--audit-checkpoint-configmap`), the
//! socket gets a container port and a Service, the audit log volume is mounted read-only,
//! the checkpoint ConfigMap is the only ConfigMap the operator may read or update, and the
//! kustomize component `config/components/audit-socket` does the same for `config/`.
//! Needs helm and kubectl from `hack/install-kubectl.sh` (fails and says so without them).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

const CHART: &str = "charts/certus-vault-operator";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn tool(name: &str) -> PathBuf {
    let var = format!("CERTUS_{}", name.to_ascii_uppercase());
    if let Some(p) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let local = root().join(".hack/bin").join(name);
    if local.is_file() {
        return local;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    panic!("{name} is not installed: run hack/install-kubectl.sh (it puts kubectl and helm into .hack/bin), or set {var}");
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.current_dir(root()).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn helm(sets: &[&str]) -> Result<Vec<Value>, String> {
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", "certus", CHART, "--namespace", "certus-system"])
        .args(["--kube-version", "1.30.0"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    for (var, sub) in [
        ("HELM_CACHE_HOME", "c"),
        ("HELM_CONFIG_HOME", "f"),
        ("HELM_DATA_HOME", "d"),
    ] {
        cmd.env(var, scratch.path().join(sub));
    }
    run(&mut cmd).map(|y| docs(&y))
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn container(objs: &[Value], deploy: &str) -> Value {
    find(objs, "Deployment", deploy).expect("the Deployment")["spec"]["template"]["spec"]
        ["containers"][0]
        .clone()
}

fn port(c: &Value, name: &str) -> Option<i64> {
    c["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64())
}

const DEPLOY: &str = "certus-certus-vault-operator";

#[test]
fn chart_without_audit_values_passes_no_audit_flags_and_no_port() {
    let objs = helm(&[]).unwrap();
    let c = container(&objs, DEPLOY);
    let args = strs(&c["args"]);
    assert!(
        !args.iter().any(|a| a.starts_with("--audit")),
        "no audit source by default: {args:?}"
    );
    assert_eq!(port(&c, "audit"), None);
    assert!(find(&objs, "Service", "certus-certus-vault-operator-audit").is_none());
}

#[test]
fn chart_audit_values_map_to_flags_port_service_and_a_read_only_volume() {
    let objs = helm(&[
        "audit.file.path=/vault/audit/audit.log",
        "audit.file.volume.persistentVolumeClaim.claimName=vault-audit",
        "audit.socket.enabled=true",
        "audit.socket.port=9443",
        "audit.checkpointConfigMap=audit-cp",
    ])
    .unwrap();
    let c = container(&objs, DEPLOY);
    let args = strs(&c["args"]);
    for a in [
        "--audit-file=/vault/audit/audit.log",
        "--audit-socket=0.0.0.0:9443",
        "--audit-checkpoint-configmap=audit-cp",
    ] {
        assert!(args.contains(&a), "{a} missing from {args:?}");
    }
    assert_eq!(port(&c, "audit"), Some(9443));
    assert_eq!(port(&c, "metrics"), Some(8080));

    let svc = find(&objs, "Service", "certus-certus-vault-operator-audit").expect("audit Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "audit");
    assert_eq!(
        svc["spec"]["selector"]["app.kubernetes.io/name"],
        "certus-vault-operator"
    );

    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "vault-audit")
        .expect("the audit log mount");
    assert_eq!(mount["mountPath"], "/vault/audit");
    assert_eq!(mount["readOnly"], true);
    let pod = &find(&objs, "Deployment", DEPLOY).unwrap()["spec"]["template"]["spec"];
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vault-audit")
        .expect("the audit log volume");
    assert_eq!(vol["persistentVolumeClaim"]["claimName"], "vault-audit");

    // The checkpoint ConfigMap is the only one the operator may read or update.
    let role = find(&objs, "Role", "certus-certus-vault-operator-self").unwrap();
    let cm_rules: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| strs(&r["resources"]).contains(&"configmaps"))
        .collect();
    assert_eq!(cm_rules.len(), 2, "{cm_rules:#?}");
    for r in &cm_rules {
        let verbs = strs(&r["verbs"]);
        if verbs.iter().any(|v| *v != "create") {
            assert_eq!(strs(&r["resourceNames"]), ["audit-cp"], "{r}");
            assert_eq!(verbs, ["get", "update", "patch"]);
        } else {
            assert!(
                r["resourceNames"].is_null(),
                "create cannot be limited by name"
            );
        }
    }
}

#[test]
fn chart_refuses_a_relative_audit_path_and_a_port_clash() {
    let e = helm(&["audit.file.path=audit.log"]).unwrap_err();
    assert!(
        e.contains("audit.file.path must be an absolute path"),
        "{e}"
    );
    let e = helm(&["audit.socket.enabled=true", "audit.socket.port=8080"]).unwrap_err();
    assert!(
        e.contains("audit.socket.port must differ from metrics.port"),
        "{e}"
    );
}

fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..from.len() {
        p.push("..");
    }
    for c in &to[common..] {
        p.push(c);
    }
    p
}

#[test]
fn kustomize_audit_socket_component_adds_the_flag_port_and_service() {
    let overlay = tempfile::tempdir().unwrap();
    let dir = overlay.path().canonicalize().unwrap();
    let rel = |p: &str| relative(&dir, &root().join(p)).display().to_string();
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: certus-system\nresources: [{}]\ncomponents: [{}]\n",
            rel("config/default"),
            rel("config/components/audit-socket")
        ),
    )
    .unwrap();
    let out = run(Command::new(tool("kubectl")).arg("kustomize").arg(&dir))
        .unwrap_or_else(|e| panic!("{e}"));
    let objs = docs(&out);
    let c = container(&objs, "certus-vault-operator");
    assert!(
        strs(&c["args"]).contains(&"--audit-socket=0.0.0.0:9090"),
        "{}",
        c["args"]
    );
    assert_eq!(port(&c, "audit"), Some(9090));
    let svc = find(&objs, "Service", "certus-vault-operator-audit").expect("audit Service");
    assert_eq!(svc["metadata"]["namespace"], "certus-system");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "audit");
    // config/rbac limits ConfigMap reads and updates to the default checkpoint name.
    let role = find(&objs, "Role", "certus-vault-operator-self").unwrap();
    assert!(role["rules"].as_array().unwrap().iter().any(|r| {
        strs(&r["resources"]) == ["configmaps"]
            && strs(&r["resourceNames"]) == ["certus-vault-audit-checkpoint"]
    }));
}
