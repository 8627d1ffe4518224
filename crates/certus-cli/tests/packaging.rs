//! How the operator is packaged: the Helm chart, the kustomize layout under `config/`, the
//! Argo CD health check, the Dockerfile and the generated parts of `docs/kinds/`.
//!
//! - The CRD copies (chart `crds/`, `config/crd/bases/`) equal `crds/` byte for byte.
//! - `config/argocd/health.lua` runs in a real Lua 5.1 (Argo CD's gopher-lua dialect)
//!   over Healthy / Progressing / Degraded objects, and the argocd-cm snippet embeds it.
//! - `kubectl kustomize config/default` and `helm template` render, and what they render
//!   holds the RBAC, hardening, probes and CRDs the operator needs. kubectl and helm come
//!   from `hack/install-kubectl.sh` (CI runs it through `hack/test.sh`); without them these
//!   tests fail and say so.
//! - `docs/kinds/*.md` carry field tables generated from the CRDs; `make crds` (which sets
//!   `CERTUS_BLESS=1`) rewrites them.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};

const CHART: &str = "charts/certus-vault-operator";

/// Every kind the operator serves (RBAC, Argo CD health, docs), including kinds whose
/// CRDs are still being written; the tests also pick up any CRD in `crds/` not listed.
const KINDS: [&str; 10] = [
    "VaultConnection",
    "ClusterVaultConnection",
    "VaultPolicy",
    "SecretEngine",
    "AuthMethod",
    "VaultRole",
    "DynamicCredential",
    "StaticSecret",
    "RotationPolicy",
    "AuditAlertRule",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `*.yaml` file names in a directory, sorted.
fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

/// Every non-empty document of a multi-document YAML stream.
fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// A CRD of `crds/`, reduced to what the tests need.
struct Crd {
    file: String,
    doc: Value,
}

impl Crd {
    fn kind(&self) -> &str {
        self.doc["spec"]["names"]["kind"].as_str().unwrap()
    }
    fn plural(&self) -> &str {
        self.doc["spec"]["names"]["plural"].as_str().unwrap()
    }
    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap()
    }
    fn namespaced(&self) -> bool {
        self.doc["spec"]["scope"] == "Namespaced"
    }
    fn version(&self) -> &Value {
        &self.doc["spec"]["versions"][0]
    }
}

fn crds() -> Vec<Crd> {
    yaml_files(&root().join("crds"))
        .into_iter()
        .map(|file| {
            let mut d = docs(&read(&format!("crds/{file}")));
            assert_eq!(d.len(), 1, "crds/{file} holds one CRD");
            Crd {
                file,
                doc: d.remove(0),
            }
        })
        .collect()
}

/// Every kind to cover: [`KINDS`] plus any other kind in `crds/`.
fn all_kinds() -> BTreeSet<String> {
    let mut kinds: BTreeSet<String> = KINDS.iter().map(|k| k.to_string()).collect();
    kinds.extend(crds().iter().map(|c| c.kind().to_string()));
    kinds
}

// ---------------------------------------------------------------------------------------
// CRD copies
// ---------------------------------------------------------------------------------------

fn assert_same_files(copy_dir: &str) {
    let top = yaml_files(&root().join("crds"));
    let copy = yaml_files(&root().join(copy_dir));
    assert_eq!(
        copy, top,
        "{copy_dir} must hold exactly the files of crds/: run `make crds`"
    );
    for f in &top {
        let a = std::fs::read(root().join("crds").join(f)).unwrap();
        let b = std::fs::read(root().join(copy_dir).join(f)).unwrap();
        assert!(
            a == b,
            "{copy_dir}/{f} differs from crds/{f}: run `make crds`"
        );
    }
}

#[test]
fn chart_crds_equal_the_generated_crds() {
    assert!(!yaml_files(&root().join("crds")).is_empty());
    assert_same_files(&format!("{CHART}/crds"));
}

#[test]
fn kustomize_crds_equal_the_generated_crds() {
    assert_same_files("config/crd/bases");
    let k = docs(&read("config/crd/kustomization.yaml")).remove(0);
    let listed: Vec<String> = k["resources"]
        .as_array()
        .expect("config/crd/kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = yaml_files(&root().join("crds"))
        .into_iter()
        .map(|f| format!("bases/{f}"))
        .collect();
    assert_eq!(
        listed, expected,
        "config/crd/kustomization.yaml: run `make crds`"
    );
}

// ---------------------------------------------------------------------------------------
// Argo CD health check
// ---------------------------------------------------------------------------------------

const HEALTH_LUA: &str = "config/argocd/health.lua";

/// Runs the health script the way Argo CD does: `obj` is the live object as a Lua table,
/// the script returns `{status, message}`. Only the libraries Argo CD opens are loaded.
fn argo_health(obj: &Value) -> (String, String) {
    use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib, Table};
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::default(),
    )
    .expect("a Lua 5.1 state");
    let value = lua.to_value(obj).expect("the object converts to Lua");
    lua.globals().set("obj", value).unwrap();
    let hs: Table = lua
        .load(read(HEALTH_LUA))
        .set_name("health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("health.lua failed on {obj}: {e}"));
    let status: String = hs.get("status").expect("hs.status is a string");
    let message: Option<String> = hs.get("message").unwrap();
    (status, message.unwrap_or_default())
}

/// A resource at `generation` with an optional status.
fn object(generation: i64, status: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "vault.certus.io/v1alpha1",
        "kind": "VaultPolicy",
        "metadata": {"name": "app-read", "namespace": "team-a", "generation": generation},
        "spec": {"rules": "path \"x\" { capabilities = [\"read\"] }"},
    });
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

fn ready(status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": "Ready", "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation,
    })
}

fn status_with(observed: Option<i64>, conditions: Vec<Value>) -> Value {
    let mut s = json!({ "conditions": conditions });
    if let Some(g) = observed {
        s["observedGeneration"] = json!(g);
    }
    s
}

#[test]
fn argo_health_ready_true_for_the_current_generation_is_healthy() {
    let o = object(
        3,
        Some(status_with(
            Some(3),
            vec![ready(
                "True",
                "Reconciled",
                "policy default.app-read is in Vault",
                3,
            )],
        )),
    );
    let (status, message) = argo_health(&o);
    assert_eq!(status, "Healthy");
    assert_eq!(message, "Reconciled: policy default.app-read is in Vault");
}

#[test]
fn argo_health_without_status_is_progressing() {
    assert_eq!(argo_health(&object(1, None)).0, "Progressing");
    assert_eq!(argo_health(&object(1, Some(json!({})))).0, "Progressing");
    let (s, m) = argo_health(&object(1, Some(status_with(Some(1), vec![]))));
    assert_eq!(
        (s.as_str(), m.as_str()),
        ("Progressing", "Waiting for the Ready condition")
    );
}

#[test]
fn argo_health_stale_generation_is_progressing() {
    // The spec changed (generation 4) and the operator has not reconciled it yet: the old
    // Ready=True must not count.
    let o = object(
        4,
        Some(status_with(
            Some(3),
            vec![ready("True", "Reconciled", "", 3)],
        )),
    );
    let (s, m) = argo_health(&o);
    assert_eq!(s, "Progressing");
    assert!(m.contains("generation 4"), "{m}");
    // Also when only the condition carries observedGeneration.
    let o = object(
        4,
        Some(status_with(None, vec![ready("True", "Reconciled", "", 3)])),
    );
    assert_eq!(argo_health(&o).0, "Progressing");
    // Even a Ready=False of an old generation says nothing about the new spec.
    let o = object(
        4,
        Some(status_with(
            Some(3),
            vec![ready("False", "InvalidSpec", "bad", 3)],
        )),
    );
    assert_eq!(argo_health(&o).0, "Progressing");
}

#[test]
fn argo_health_progressing_reasons_are_progressing() {
    for reason in ["Progressing", "WaitingForDependency"] {
        let o = object(
            2,
            Some(status_with(
                Some(2),
                vec![ready(
                    "False",
                    reason,
                    "mount database/ is not Ready yet",
                    2,
                )],
            )),
        );
        let (s, m) = argo_health(&o);
        assert_eq!(s, "Progressing", "{reason}");
        assert_eq!(m, format!("{reason}: mount database/ is not Ready yet"));
    }
    let o = object(
        2,
        Some(status_with(
            Some(2),
            vec![ready("Unknown", "Reconciling", "", 2)],
        )),
    );
    assert_eq!(argo_health(&o).0, "Progressing");
}

#[test]
fn argo_health_other_failures_are_degraded() {
    for reason in [
        "InvalidSpec",
        "Conflict",
        "VaultUnavailable",
        "PermissionDenied",
        "ConnectionNotReady",
        "SecretNotFound",
    ] {
        let o = object(
            5,
            Some(status_with(
                Some(5),
                vec![ready("False", reason, "details", 5)],
            )),
        );
        assert_eq!(
            argo_health(&o),
            ("Degraded".to_string(), format!("{reason}: details")),
            "{reason}"
        );
    }
    // A reason without a message still says something.
    let o = object(
        5,
        Some(status_with(
            Some(5),
            vec![ready("False", "Conflict", "", 5)],
        )),
    );
    assert_eq!(argo_health(&o).1, "Conflict");
}

#[test]
fn argo_health_reads_other_conditions_and_missing_generations() {
    // Ready among other conditions, in any order.
    let drifted = json!({"type": "Drifted", "status": "True", "reason": "DriftCorrected", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    let o = object(
        2,
        Some(status_with(
            Some(2),
            vec![drifted.clone(), ready("True", "Reconciled", "", 2)],
        )),
    );
    assert_eq!(argo_health(&o).0, "Healthy");
    let o = object(2, Some(status_with(Some(2), vec![drifted])));
    assert_eq!(argo_health(&o).0, "Progressing");
    // Like kstatus, a status without observedGeneration is taken at its word.
    let mut o = object(
        1,
        Some(json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled"}]})),
    );
    assert_eq!(argo_health(&o).0, "Healthy");
    o["metadata"].as_object_mut().unwrap().remove("generation");
    assert_eq!(argo_health(&o).0, "Healthy");
}

#[test]
fn argo_health_understands_the_status_the_api_types_serialize() {
    // The real types, not hand-written JSON: field names and the `True`/`False` spelling
    // come from certus-api.
    use certus_api::{
        set_condition, Condition, ConditionStatus, VaultPolicy, VaultPolicySpec, VaultPolicyStatus,
    };
    let now = chrono::Utc::now();
    let mut p = VaultPolicy::new(
        "app-read",
        serde_json::from_value::<VaultPolicySpec>(
            json!({"rules": "path \"x\" { capabilities = [\"read\"] }"}),
        )
        .unwrap(),
    );
    p.metadata.namespace = Some("team-a".into());
    p.metadata.generation = Some(7);
    let mut st = VaultPolicyStatus {
        observed_generation: Some(7),
        ..Default::default()
    };
    set_condition(
        &mut st.conditions,
        Condition::new(
            "Ready",
            ConditionStatus::True,
            "Reconciled",
            "ok",
            Some(7),
            now,
        ),
    );
    p.status = Some(st.clone());
    assert_eq!(argo_health(&serde_json::to_value(&p).unwrap()).0, "Healthy");
    set_condition(
        &mut st.conditions,
        Condition::new(
            "Ready",
            ConditionStatus::False,
            "Conflict",
            "owned by team-b/app",
            Some(7),
            now,
        ),
    );
    p.status = Some(st.clone());
    assert_eq!(
        argo_health(&serde_json::to_value(&p).unwrap()).0,
        "Degraded"
    );
    p.metadata.generation = Some(8);
    assert_eq!(
        argo_health(&serde_json::to_value(&p).unwrap()).0,
        "Progressing"
    );
}

#[test]
fn argocd_configmap_embeds_the_health_script_for_every_kind() {
    let script = read(HEALTH_LUA);
    let cm = docs(&read("config/argocd/argocd-cm.yaml")).remove(0);
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let data = cm["data"].as_object().expect("argocd-cm has data");
    let keys: BTreeSet<String> = data.keys().cloned().collect();
    let expected: BTreeSet<String> = all_kinds()
        .iter()
        .map(|k| format!("resource.customizations.health.vault.certus.io_{k}"))
        .collect();
    assert_eq!(
        keys, expected,
        "config/argocd/argocd-cm.yaml needs one key per kind"
    );
    for (k, v) in data {
        assert_eq!(
            v.as_str(),
            Some(script.as_str()),
            "{k} must embed config/argocd/health.lua verbatim"
        );
    }
    // The docs show the same script.
    let doc = read("docs/argocd-flux.md");
    assert!(
        doc.contains(&format!("```lua\n{script}```")),
        "docs/argocd-flux.md must show config/argocd/health.lua verbatim"
    );
}

// ---------------------------------------------------------------------------------------
// Rendering tools
// ---------------------------------------------------------------------------------------

/// kubectl or helm: `$CERTUS_KUBECTL`/`$CERTUS_HELM`, then `.hack/bin` (where
/// `hack/install-kubectl.sh` puts them), then `PATH`.
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
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("{name} is not installed: run hack/install-kubectl.sh (it puts kubectl and helm into .hack/bin; CI runs it from hack/test.sh), or set {var}");
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn kustomize(dir: &str) -> String {
    run(Command::new(tool("kubectl")).args(["kustomize", dir])).unwrap_or_else(|e| panic!("{e}"))
}

fn helm_template(sets: &[&str]) -> Result<String, String> {
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(tool("helm"));
    cmd.args([
        "template",
        "certus",
        CHART,
        "--namespace",
        "certus-system",
        "--kube-version",
        "1.30.0",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    // Keep helm's cache and config out of $HOME.
    for (var, sub) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, scratch.path().join(sub));
    }
    run(&mut cmd)
}

fn helm(sets: &[&str]) -> String {
    helm_template(sets).unwrap_or_else(|e| panic!("{e}"))
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} in {:?}",
                objs.iter()
                    .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                    .collect::<Vec<_>>()
            )
        })
}

fn all_of<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether `rules` allow `verb` on `group`/`resource` (optionally for one name).
fn grants(rules: &Value, group: &str, resource: &str, verb: &str) -> bool {
    rules.as_array().into_iter().flatten().any(|r| {
        strs(&r["apiGroups"]).contains(&group)
            && strs(&r["resources"]).contains(&resource)
            && strs(&r["verbs"]).contains(&verb)
    })
}

/// Whether any rule grants anything on `group`/`resource`.
fn mentions(rules: &Value, group: &str, resource: &str) -> bool {
    rules.as_array().into_iter().flatten().any(|r| {
        strs(&r["apiGroups"]).contains(&group) && strs(&r["resources"]).contains(&resource)
    })
}

fn assert_kind_rules(rules: &Value, plural: &str, what: &str) {
    for verb in ["get", "list", "watch", "patch", "update"] {
        assert!(
            grants(rules, "vault.certus.io", plural, verb),
            "{what}: {verb} {plural}"
        );
    }
    assert!(
        grants(
            rules,
            "vault.certus.io",
            &format!("{plural}/status"),
            "patch"
        ),
        "{what}: patch {plural}/status"
    );
    assert!(
        grants(
            rules,
            "vault.certus.io",
            &format!("{plural}/finalizers"),
            "update"
        ),
        "{what}: update {plural}/finalizers"
    );
}

fn assert_secret_rules(rules: &Value, what: &str) {
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        assert!(grants(rules, "", "secrets", verb), "{what}: {verb} secrets");
    }
}

fn assert_namespaced_rules(rules: &Value, what: &str) {
    assert!(
        grants(rules, "", "serviceaccounts/token", "create"),
        "{what}: TokenRequest"
    );
    assert!(
        !mentions(rules, "", "serviceaccounts"),
        "{what}: no access to ServiceAccounts themselves"
    );
    for group in ["events.k8s.io", ""] {
        assert!(
            grants(rules, group, "events", "create") && grants(rules, group, "events", "patch"),
            "{what}: events in {group:?}"
        );
    }
    for r in ["deployments", "statefulsets", "daemonsets"] {
        assert!(
            grants(rules, "apps", r, "patch") && grants(rules, "apps", r, "list"),
            "{what}: rollout restart of {r}"
        );
    }
}

/// Every rule of an RBAC manifest text is preceded by a comment saying why.
fn assert_every_rule_commented(text: &str, what: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let mut count = 0;
    for (i, l) in lines.iter().enumerate() {
        if l.trim_start().starts_with("- apiGroups:") {
            count += 1;
            let prev = lines[..i]
                .iter()
                .rev()
                .find(|p| !p.trim().is_empty())
                .map(|p| p.trim_start());
            assert!(
                prev.is_some_and(|p| p.starts_with('#')),
                "{what}: rule at line {} has no comment saying why:\n{}",
                i + 1,
                l
            );
        }
    }
    assert!(count > 0, "{what}: no rules found");
}

fn container(deploy: &Value) -> &Value {
    let cs = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 1);
    &cs[0]
}

/// The Pod the chart and config/manager both must produce: hardened, probed, with the
/// downward-API env and the runtime's flags.
fn assert_operator_pod(deploy: &Value, lease_name: &str, what: &str) {
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(deploy["spec"]["replicas"], 2, "{what}: two replicas");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{what}"
    );
    assert!(pod["serviceAccountName"].is_string(), "{what}");
    let c = container(deploy);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{what}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string(),
        "{what}: resources"
    );
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a metrics port");
    assert_eq!(port["containerPort"], 8080, "{what}");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez", "{what}");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics", "{what}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{what}");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics", "{what}");
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        env.get("POD_NAMESPACE"),
        Some(&"metadata.namespace"),
        "{what}"
    );
    assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"), "{what}");
    let args = strs(&c["args"]);
    assert_eq!(args.first(), Some(&"run"), "{what}: {args:?}");
    for a in [
        "--log-format=json",
        "--metrics-addr=0.0.0.0:8080",
        "--leader-election",
        &format!("--lease-name={lease_name}"),
    ] {
        assert!(args.contains(&a), "{what}: {a} missing from {args:?}");
    }
    assert!(
        args.iter().any(|a| a.starts_with("--lease-namespace=")),
        "{what}: {args:?}"
    );
}

// ---------------------------------------------------------------------------------------
// kustomize
// ---------------------------------------------------------------------------------------

/// The value with every number as a float, so `10000` and `10000.0` compare equal.
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn kustomize_config_default_renders_what_the_operator_needs() {
    let objs = docs(&kustomize("config/default"));
    let ns = find(&objs, "Namespace", "certus-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    for o in &objs {
        let kind = o["kind"].as_str().unwrap();
        let cluster_scoped = [
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ]
        .contains(&kind);
        if !cluster_scoped {
            assert_eq!(
                o["metadata"]["namespace"], "certus-system",
                "{kind} {}",
                o["metadata"]["name"]
            );
        }
        for s in o["subjects"].as_array().into_iter().flatten() {
            assert_eq!(s["namespace"], "certus-system", "{kind} subject {s}");
        }
    }
    find(&objs, "ServiceAccount", "certus-vault-operator");
    // RBAC: the operator's kinds, Secrets, TokenRequest; Lease and ConfigMaps only in its
    // own namespace.
    let cr = find(&objs, "ClusterRole", "certus-vault-operator");
    for crd in crds() {
        assert_kind_rules(&cr["rules"], crd.plural(), "config/rbac ClusterRole");
    }
    assert_secret_rules(&cr["rules"], "config/rbac ClusterRole");
    assert_namespaced_rules(&cr["rules"], "config/rbac ClusterRole");
    assert!(grants(
        &cr["rules"],
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "watch"
    ));
    assert!(
        !mentions(&cr["rules"], "coordination.k8s.io", "leases"),
        "leases only through the namespaced Role"
    );
    assert!(
        !mentions(&cr["rules"], "", "configmaps"),
        "configmaps only through the namespaced Role"
    );
    let crb = find(&objs, "ClusterRoleBinding", "certus-vault-operator");
    assert_eq!(crb["roleRef"]["name"], "certus-vault-operator");
    assert_eq!(crb["subjects"][0]["name"], "certus-vault-operator");
    let role = find(&objs, "Role", "certus-vault-operator-self");
    assert!(grants(
        &role["rules"],
        "coordination.k8s.io",
        "leases",
        "create"
    ));
    assert!(grants(
        &role["rules"],
        "coordination.k8s.io",
        "leases",
        "update"
    ));
    assert!(grants(&role["rules"], "", "configmaps", "create"));
    find(&objs, "RoleBinding", "certus-vault-operator-self");
    // The operator Pod.
    let deploy = find(&objs, "Deployment", "certus-vault-operator");
    assert_operator_pod(deploy, "certus-vault-operator-leader", "config/manager");
    let svc = find(&objs, "Service", "certus-vault-operator-metrics");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    // Every CRD, with the generated spec.
    for crd in crds() {
        let rendered = find(&objs, "CustomResourceDefinition", crd.name());
        // kustomize re-serializes numbers (`10000.0` becomes `10000`): compare values.
        assert!(
            numbers_as_f64(&rendered["spec"]) == numbers_as_f64(&crd.doc["spec"]),
            "config/default renders {} with another spec than crds/{}",
            crd.name(),
            crd.file
        );
    }
    assert_eq!(
        all_of(&objs, "CustomResourceDefinition").len(),
        crds().len()
    );
}

#[test]
fn kustomize_rbac_has_a_comment_on_every_rule() {
    for f in [
        "config/rbac/cluster_role.yaml",
        "config/rbac/self_role.yaml",
    ] {
        assert_every_rule_commented(&read(f), f);
    }
}

/// One RBAC rule as (apiGroups, resources, resourceNames, verbs), each list sorted.
type RuleKey = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// Rules as a comparable set: (groups, resources, names, verbs) with each list sorted.
fn rule_set(rules: &Value) -> BTreeSet<RuleKey> {
    let sorted = |v: &Value| {
        let mut s: Vec<String> = strs(v).into_iter().map(String::from).collect();
        s.sort();
        s
    };
    rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                sorted(&r["apiGroups"]),
                sorted(&r["resources"]),
                sorted(&r["resourceNames"]),
                sorted(&r["verbs"]),
            )
        })
        .collect()
}

#[test]
fn kustomize_rbac_equals_the_charts_cluster_wide_rbac() {
    let k = docs(&kustomize("config/default"));
    let h = docs(&helm(&["fullnameOverride=certus-vault-operator"]));
    for (kind, name) in [
        ("ClusterRole", "certus-vault-operator"),
        ("Role", "certus-vault-operator-self"),
    ] {
        assert_eq!(
            rule_set(&find(&k, kind, name)["rules"]),
            rule_set(&find(&h, kind, name)["rules"]),
            "{kind} {name}: config/rbac and the chart's cluster-wide mode must grant the same"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Helm chart
// ---------------------------------------------------------------------------------------

#[test]
fn helm_chart_lints() {
    let scratch = tempfile::tempdir().unwrap();
    let out = run(Command::new(tool("helm"))
        .args(["lint", CHART, "--strict", "--kube-version", "1.30.0"])
        .env("HELM_CACHE_HOME", scratch.path().join("c"))
        .env("HELM_CONFIG_HOME", scratch.path().join("f"))
        .env("HELM_DATA_HOME", scratch.path().join("d")));
    assert!(out.is_ok(), "{}", out.unwrap_err());
    let chart = docs(&read(&format!("{CHART}/Chart.yaml"))).remove(0);
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["kubeVersion"], ">=1.30.0-0");
}

#[test]
fn helm_cluster_wide_install_renders_what_the_operator_needs() {
    let text = helm(&[]);
    assert_every_rule_commented(&text, "helm template (cluster-wide)");
    let objs = docs(&text);
    let fullname = "certus-certus-vault-operator";
    let sa = find(&objs, "ServiceAccount", fullname);
    assert_eq!(sa["metadata"]["namespace"], "certus-system");
    let cr = find(&objs, "ClusterRole", fullname);
    for crd in crds() {
        assert_kind_rules(&cr["rules"], crd.plural(), "chart ClusterRole");
    }
    for kind in KINDS {
        let plural = kube_plural(kind);
        assert_kind_rules(
            &cr["rules"],
            &plural,
            "chart ClusterRole (kinds still to come)",
        );
    }
    assert_secret_rules(&cr["rules"], "chart ClusterRole");
    assert_namespaced_rules(&cr["rules"], "chart ClusterRole");
    assert!(grants(
        &cr["rules"],
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "get"
    ));
    let crb = find(&objs, "ClusterRoleBinding", fullname);
    assert_eq!(
        crb["subjects"][0],
        json!({"kind": "ServiceAccount", "name": fullname, "namespace": "certus-system"})
    );
    let role = find(&objs, "Role", &format!("{fullname}-self"));
    assert_eq!(role["metadata"]["namespace"], "certus-system");
    assert!(grants(
        &role["rules"],
        "coordination.k8s.io",
        "leases",
        "create"
    ));
    let renew = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| strs(&r["verbs"]).contains(&"update") && strs(&r["resources"]) == ["leases"])
        .unwrap();
    assert_eq!(
        strs(&renew["resourceNames"]),
        [format!("{fullname}-leader")],
        "renewal only of its own Lease"
    );
    assert!(grants(&role["rules"], "", "configmaps", "update"));
    assert!(all_of(&objs, "RoleBinding").len() == 1);
    // The Pod.
    let deploy = find(&objs, "Deployment", fullname);
    assert_operator_pod(deploy, &format!("{fullname}-leader"), "chart");
    let args = strs(&container(deploy)["args"]);
    assert!(
        args.contains(&"--lease-namespace=certus-system"),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--namespaces")),
        "cluster-wide: no --namespaces: {args:?}"
    );
    let svc = find(&objs, "Service", &format!("{fullname}-metrics"));
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    // Optional monitoring objects are off by default.
    assert!(
        all_of(&objs, "ServiceMonitor").is_empty() && all_of(&objs, "PrometheusRule").is_empty()
    );
}

#[test]
fn helm_watch_namespaces_uses_roles_and_a_small_cluster_role() {
    let text = helm(&["watchNamespaces={team-a,team-b}"]);
    assert_every_rule_commented(&text, "helm template (namespaced)");
    let objs = docs(&text);
    let fullname = "certus-certus-vault-operator";
    let cr = find(&objs, "ClusterRole", &format!("{fullname}-cluster"));
    assert_eq!(
        all_of(&objs, "ClusterRole").len(),
        1,
        "only the small ClusterRole"
    );
    assert!(
        !mentions(&cr["rules"], "", "secrets"),
        "no cluster-wide Secret access when namespaces are listed"
    );
    assert!(!mentions(&cr["rules"], "", "serviceaccounts/token"));
    assert!(grants(
        &cr["rules"],
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "watch"
    ));
    for crd in crds().iter().filter(|c| !c.namespaced()) {
        assert_kind_rules(&cr["rules"], crd.plural(), "chart small ClusterRole");
    }
    let roles: Vec<&Value> = all_of(&objs, "Role")
        .into_iter()
        .filter(|r| r["metadata"]["name"] == fullname)
        .collect();
    let namespaces: BTreeSet<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["certus-system", "team-a", "team-b"])
    );
    for r in &roles {
        for crd in crds().iter().filter(|c| c.namespaced()) {
            assert_kind_rules(&r["rules"], crd.plural(), "chart per-namespace Role");
            assert!(
                !mentions(&cr["rules"], "vault.certus.io", crd.plural()),
                "{} belongs in the Roles",
                crd.plural()
            );
        }
        assert_secret_rules(&r["rules"], "chart per-namespace Role");
        assert_namespaced_rules(&r["rules"], "chart per-namespace Role");
    }
    for ns in ["certus-system", "team-a", "team-b"] {
        let rb = objs
            .iter()
            .find(|o| {
                o["kind"] == "RoleBinding"
                    && o["metadata"]["name"] == fullname
                    && o["metadata"]["namespace"] == ns
            })
            .expect("a RoleBinding per namespace");
        assert_eq!(rb["roleRef"]["kind"], "Role");
        assert_eq!(rb["subjects"][0]["namespace"], "certus-system");
    }
    // Events about cluster-scoped resources land in `default`.
    let ev = find(&objs, "Role", &format!("{fullname}-cluster-events"));
    assert_eq!(ev["metadata"]["namespace"], "default");
    let args = strs(&container(find(&objs, "Deployment", fullname))["args"]);
    assert!(args.contains(&"--namespaces=team-a,team-b"), "{args:?}");
}

#[test]
fn helm_secret_namespaces_move_secret_access_into_roles() {
    let objs = docs(&helm(&["rbac.secretNamespaces={apps,payments}"]));
    let fullname = "certus-certus-vault-operator";
    let cr = find(&objs, "ClusterRole", fullname);
    assert!(
        !mentions(&cr["rules"], "", "secrets"),
        "Secrets are no longer cluster-wide"
    );
    assert_namespaced_rules(&cr["rules"], "chart ClusterRole");
    for ns in ["apps", "payments"] {
        let r = objs
            .iter()
            .find(|o| {
                o["kind"] == "Role"
                    && o["metadata"]["name"] == format!("{fullname}-secrets")
                    && o["metadata"]["namespace"] == ns
            })
            .expect("a Secrets Role");
        assert_secret_rules(&r["rules"], ns);
        assert_eq!(r["rules"].as_array().unwrap().len(), 1);
    }
    // Combined with watchNamespaces, the per-namespace Roles carry no Secret access either.
    let objs = docs(&helm(&[
        "watchNamespaces={team-a}",
        "rbac.secretNamespaces={team-a}",
    ]));
    let main = objs
        .iter()
        .find(|o| {
            o["kind"] == "Role"
                && o["metadata"]["name"] == fullname
                && o["metadata"]["namespace"] == "team-a"
        })
        .unwrap();
    assert!(!mentions(&main["rules"], "", "secrets"));
    find(&objs, "Role", &format!("{fullname}-secrets"));
}

#[test]
fn helm_values_reach_the_deployment() {
    let objs = docs(&helm(&[
        "image.tag=1.2.3",
        "logFormat=plain",
        "concurrency=4",
        "resyncInterval=10m",
        "replicas=1",
        "leaderElection.enabled=false",
        "extraArgs={--foo=bar}",
        "logLevel=debug",
        "metrics.port=9090",
    ]));
    let deploy = find(&objs, "Deployment", "certus-certus-vault-operator");
    let c = container(deploy);
    assert_eq!(c["image"], "ghcr.io/certus/certus-vault-operator:1.2.3");
    let args = strs(&c["args"]);
    for a in [
        "--log-format=plain",
        "--concurrency=4",
        "--resync-interval=10m",
        "--foo=bar",
        "--metrics-addr=0.0.0.0:9090",
    ] {
        assert!(args.contains(&a), "{a} missing: {args:?}");
    }
    assert!(
        !args
            .iter()
            .any(|a| a.contains("lease") || a.contains("leader")),
        "{args:?}"
    );
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert!(c["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "RUST_LOG" && e["value"] == "debug"));
    let role = find(&objs, "Role", "certus-certus-vault-operator-self");
    assert!(
        !mentions(&role["rules"], "coordination.k8s.io", "leases"),
        "no Lease access without leader election"
    );
    // Defaults pass neither, leaving the runtime's defaults.
    let args = strs(
        &container(find(
            &docs(&helm(&[])),
            "Deployment",
            "certus-certus-vault-operator",
        ))["args"],
    )
    .join(" ");
    assert!(
        !args.contains("--concurrency") && !args.contains("--resync-interval"),
        "{args}"
    );
    let digest = docs(&helm(&["image.digest=sha256:abc"]));
    assert_eq!(
        container(find(&digest, "Deployment", "certus-certus-vault-operator"))["image"],
        "ghcr.io/certus/certus-vault-operator@sha256:abc"
    );
}

#[test]
fn helm_refuses_unsafe_or_impossible_values() {
    let e = helm_template(&["leaderElection.enabled=false"]).unwrap_err();
    assert!(
        e.contains("replicas > 1 needs leaderElection.enabled"),
        "{e}"
    );
    let e = helm_template(&["logFormat=xml"]).unwrap_err();
    assert!(e.contains("logFormat must be json or plain"), "{e}");
    let e = helm_template(&[
        "serviceMonitor.enabled=true",
        "metrics.service.enabled=false",
    ])
    .unwrap_err();
    assert!(e.contains("needs metrics.service.enabled"), "{e}");
    // The chart's kubeVersion constraint.
    let scratch = tempfile::tempdir().unwrap();
    let old = run(Command::new(tool("helm"))
        .args(["template", "certus", CHART, "--kube-version", "1.29.0"])
        .env("HELM_CACHE_HOME", scratch.path().join("c"))
        .env("HELM_CONFIG_HOME", scratch.path().join("f"))
        .env("HELM_DATA_HOME", scratch.path().join("d")));
    assert!(
        old.unwrap_err().contains("1.29"),
        "kubeVersion >=1.30 is enforced"
    );
}

#[test]
fn helm_monitoring_objects() {
    let objs = docs(&helm(&[
        "serviceMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "serviceMonitor.labels.release=prom",
    ]));
    let sm = find(&objs, "ServiceMonitor", "certus-certus-vault-operator");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let svc = find(&objs, "Service", "certus-certus-vault-operator-metrics");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the metrics Service"
        );
    }
    let pr = find(&objs, "PrometheusRule", "certus-certus-vault-operator");
    let file = docs(&read(&format!("{CHART}/files/prometheus-rules.yaml"))).remove(0);
    assert_eq!(
        pr["spec"], file,
        "the PrometheusRule is files/prometheus-rules.yaml verbatim"
    );
    let exprs: Vec<&str> = pr["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["expr"].as_str().unwrap())
        .collect();
    for metric in [
        "certus_dynamic_credential_expiry_seconds",
        "certus_dynamic_credential_renewal_overdue_seconds",
        "certus_rotation_due",
        "certus_controller_reconcile_failures_total",
        "certus_audit_rule_matches_total",
        "certus_audit_malformed_lines_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no alert on {metric}"
        );
    }
    // The sample PrometheusRule's groups ship in the chart unchanged.
    let sample = docs(&read("config/samples/audit/prometheusrule.yaml")).remove(0);
    for group in sample["spec"]["groups"].as_array().unwrap() {
        let name = &group["name"];
        let ours = pr["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| &g["name"] == name)
            .unwrap_or_else(|| panic!("the chart lacks the sample's rule group {name}"));
        assert_eq!(
            ours, group,
            "rule group {name} differs from config/samples/audit/prometheusrule.yaml"
        );
    }
    // Prometheus' own templates survive Helm untouched.
    let text = helm(&["prometheusRule.enabled=true"]);
    assert!(text.contains("{{ $labels.namespace }}/{{ $labels.name }}"));
    // Every alert is documented.
    let ops = read("docs/operations.md");
    for r in pr["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        let alert = r["alert"].as_str().unwrap();
        assert!(
            ops.contains(alert),
            "docs/operations.md does not explain {alert}"
        );
    }
}

/// Every `.Values.a.b` a template reads exists in values.yaml (Helm renders a typo as an
/// empty value instead of failing).
#[test]
fn helm_templates_read_only_values_that_exist() {
    let values = docs(&read(&format!("{CHART}/values.yaml"))).remove(0);
    let dir = root().join(CHART).join("templates");
    let mut missing = vec![];
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".Values.") {
            rest = &rest[i + ".Values.".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(rest.len());
            let reference = rest[..end].trim_end_matches('.');
            let mut v = &values;
            for part in reference.split('.') {
                match v.get(part) {
                    Some(next) => v = next,
                    None => {
                        missing.push(format!(
                            "{}: .Values.{reference}",
                            path.file_name().unwrap().to_string_lossy()
                        ));
                        break;
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "templates read values that values.yaml does not define: {missing:#?}"
    );
}

/// kube-derive's plural: lower-case kind, `y` -> `ies`, else `s`.
fn kube_plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    }
}

#[test]
fn chart_kind_lists_match_the_crds() {
    // The chart and config/rbac name every CRD's plural with the right scope.
    let helpers = read(&format!("{CHART}/templates/_helpers.tpl"));
    let section = |name: &str| -> BTreeSet<String> {
        let start = helpers.find(&format!("define \"{name}\"")).unwrap();
        let body = &helpers[start..];
        let body = &body[..body.find("{{- end }}").unwrap()];
        body.lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(String::from)
            .collect()
    };
    let namespaced = section("certus.namespacedKinds");
    let cluster = section("certus.clusterKinds");
    for crd in crds() {
        let list = if crd.namespaced() {
            &namespaced
        } else {
            &cluster
        };
        assert!(
            list.contains(crd.plural()),
            "{} ({}) is missing from the chart's kind list",
            crd.plural(),
            if crd.namespaced() {
                "namespaced"
            } else {
                "cluster"
            }
        );
        assert_eq!(kube_plural(crd.kind()), crd.plural());
    }
    let all: BTreeSet<String> = KINDS.iter().map(|k| kube_plural(k)).collect();
    assert_eq!(&namespaced | &cluster, all);
}

// ---------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------

#[test]
fn dockerfile_builds_the_certus_vault_binary_as_non_root() {
    let d = read("Dockerfile");
    let cargo = read("crates/certus-cli/Cargo.toml");
    assert!(
        cargo.contains("name = \"certus-vault\""),
        "the binary is certus-vault"
    );
    assert!(d.contains("cargo build --release --locked -p certus-cli"));
    assert!(d.contains("target/release/certus-vault "));
    assert!(d.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    assert!(d.contains("USER 65532:65532"));
    assert!(d.contains("ENTRYPOINT [\"/certus-vault\"]") && d.contains("CMD [\"run\"]"));
    let ignore = read(".dockerignore");
    for p in ["target/", ".hack/", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore lacks {p}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// docs/kinds: field tables generated from the CRDs
// ---------------------------------------------------------------------------------------

const BEGIN: &str = "<!-- BEGIN GENERATED by `make crds` from crds/";
const END: &str = "<!-- END GENERATED -->";

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn type_of(p: &Value) -> String {
    if p.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return "int or string".into();
    }
    let t = p["type"].as_str().unwrap_or("object");
    match t {
        "array" => format!("[]{}", type_of(&p["items"])),
        "object" if p.get("additionalProperties").is_some_and(Value::is_object) => {
            format!("map[string]{}", type_of(&p["additionalProperties"]))
        }
        "string" => match p["format"].as_str() {
            Some(f) => format!("string ({f})"),
            None => "string".into(),
        },
        other => other.into(),
    }
}

fn constraints(p: &Value) -> String {
    let mut out = vec![];
    if let Some(e) = p["enum"].as_array() {
        out.push(format!(
            "one of {}",
            e.iter()
                .map(|v| format!(
                    "`{}`",
                    v.as_str().map(String::from).unwrap_or(v.to_string())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(d) = p.get("default") {
        out.push(match d.as_str() {
            Some("") => "default `\"\"`".to_string(),
            Some(s) => format!("default `{s}`"),
            None => format!("default `{d}`"),
        });
    }
    if let Some(pat) = p["pattern"].as_str() {
        out.push(format!("pattern `{pat}`"));
    }
    for (k, label) in [
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minimum", "minimum"),
        ("maximum", "maximum"),
    ] {
        if let Some(v) = p.get(k) {
            out.push(format!("{label} {v}"));
        }
    }
    out.join("; ").replace('|', "\\|")
}

fn field_rows(
    schema: &Value,
    root: &str,
    prefix: &str,
    rows: &mut Vec<String>,
    rules: &mut Vec<String>,
) {
    for r in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let at = if prefix.is_empty() {
            format!("`{root}`")
        } else {
            format!("`{}`", prefix.trim_end_matches('.'))
        };
        rules.push(format!(
            "| {at} | {} | `{}` |",
            one_line(r["message"].as_str().unwrap_or("")),
            one_line(r["rule"].as_str().unwrap_or(""))
        ));
    }
    let required: Vec<&str> = strs(&schema["required"]);
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    for (name, p) in props {
        let path = format!("{prefix}{name}");
        rows.push(format!(
            "| `{path}` | {} | {} | {} | {} |",
            type_of(p),
            if required.contains(&name.as_str()) {
                "yes"
            } else {
                ""
            },
            one_line(p["description"].as_str().unwrap_or("")),
            constraints(p),
        ));
        if p.get("properties").is_some() {
            field_rows(p, root, &format!("{path}."), rows, rules);
        } else if p["items"].get("properties").is_some() {
            field_rows(&p["items"], root, &format!("{path}[]."), rows, rules);
        } else if p["additionalProperties"].get("properties").is_some() {
            field_rows(
                &p["additionalProperties"],
                root,
                &format!("{path}.*."),
                rows,
                rules,
            );
        }
        if p.get("properties").is_none() {
            for r in p["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                rules.push(format!(
                    "| `{path}` | {} | `{}` |",
                    one_line(r["message"].as_str().unwrap_or("")),
                    one_line(r["rule"].as_str().unwrap_or(""))
                ));
            }
        }
    }
}

fn table(title: &str, root: &str, schema: &Value) -> String {
    let mut rows = vec![];
    let mut rules = vec![];
    field_rows(schema, root, "", &mut rows, &mut rules);
    let mut s = format!("### {title}\n\n");
    if let Some(d) = schema["description"].as_str() {
        s += &format!("{}\n\n", one_line(d));
    }
    s += "| Field | Type | Required | Description | Constraints |\n|---|---|---|---|---|\n";
    s += &rows.join("\n");
    s += "\n";
    if !rules.is_empty() {
        s += &format!("\nValidation rules (checked at admission by the API server):\n\n| Where | Message | Rule |\n|---|---|---|\n{}\n", rules.join("\n"));
    }
    s
}

/// The generated block of a kind's page.
fn generated_block(crd: &Crd) -> String {
    let names = &crd.doc["spec"]["names"];
    let v = crd.version();
    let schema = &v["schema"]["openAPIV3Schema"];
    let mut s = format!("{BEGIN}{} -->\n", crd.file);
    s += &format!(
        "## Reference\n\n| | |\n|---|---|\n| API version | `{}/{}` |\n| Kind | `{}` |\n| Scope | {} |\n| Plural | `{}` |\n| Short names | {} |\n| Categories | {} |\n\n",
        crd.doc["spec"]["group"].as_str().unwrap(),
        v["name"].as_str().unwrap(),
        crd.kind(),
        crd.doc["spec"]["scope"].as_str().unwrap(),
        crd.plural(),
        strs(&names["shortNames"]).iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
        strs(&names["categories"]).iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
    );
    s += &table("Spec fields", "spec", &schema["properties"]["spec"]);
    s += "\n";
    s += &table("Status fields", "status", &schema["properties"]["status"]);
    s += "\n### Printer columns\n\n`kubectl get` shows these columns (`-o wide` adds those with priority 1).\n\n| Column | Type | JSON path | Priority |\n|---|---|---|---|\n";
    for c in v["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
    {
        s += &format!(
            "| {} | {} | `{}` | {} |\n",
            c["name"].as_str().unwrap(),
            c["type"].as_str().unwrap(),
            c["jsonPath"].as_str().unwrap().replace('|', "\\|"),
            c["priority"].as_i64().unwrap_or(0)
        );
    }
    s += END;
    s
}

fn kind_page(kind: &str) -> String {
    format!("docs/kinds/{}.md", kind.to_ascii_lowercase())
}

/// `CERTUS_BLESS=1` (set by `make crds`) rewrites the generated blocks and creates a stub
/// page for a new kind; otherwise stale or missing pages fail.
#[test]
fn kind_docs_are_generated_from_the_crds() {
    let bless = std::env::var_os("CERTUS_BLESS").is_some_and(|v| v == "1");
    let mut problems = vec![];
    for crd in crds() {
        let rel = kind_page(crd.kind());
        let path = root().join(&rel);
        let block = generated_block(&crd);
        let current = std::fs::read_to_string(&path).ok();
        let updated = match &current {
            None => format!(
                "# {kind}\n\n> This page was created by `make crds` from the CRD. Say what a {kind} does, show an\n> example and explain its status, above the generated reference.\n\n{block}\n",
                kind = crd.kind()
            ),
            Some(text) => match (text.find(BEGIN), text.find(END)) {
                (Some(b), Some(e)) if e > b => format!("{}{block}{}", &text[..b], &text[e + END.len()..]),
                _ => {
                    problems.push(format!("{rel} has no generated block ({BEGIN}... {END})"));
                    continue;
                }
            },
        };
        if current.as_deref() != Some(updated.as_str()) {
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &updated).unwrap();
                eprintln!("updated {rel}");
            } else if current.is_none() {
                problems.push(format!(
                    "{rel} is missing: run `make crds` to create it, then describe the kind"
                ));
            } else {
                problems.push(format!("{rel} is stale: run `make crds`"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn docs_link_every_kind_page() {
    let index = read("docs/README.md");
    for crd in crds() {
        let page = format!("kinds/{}.md", crd.kind().to_ascii_lowercase());
        assert!(index.contains(&page), "docs/README.md does not link {page}");
    }
}

// ---------------------------------------------------------------------------------------
// Examples in docs/ are valid manifests
// ---------------------------------------------------------------------------------------

/// Checks a value against a structural schema: unknown fields, missing required fields,
/// wrong types and values outside an enum.
fn check_schema(v: &Value, schema: &Value, path: &str, errs: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errs.push(format!("{path}: expected an integer or a string"));
        }
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let ok = match (ty, v) {
        ("object", Value::Object(_))
        | ("array", Value::Array(_))
        | ("string", Value::String(_))
        | ("boolean", Value::Bool(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("number", Value::Number(_)) => true,
        (_, Value::Null) => schema.get("nullable") == Some(&Value::Bool(true)),
        ("", _) => true,
        _ => false,
    };
    if !ok {
        errs.push(format!("{path}: expected {ty}, got {v}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errs.push(format!("{path}: {v} is not one of {allowed:?}"));
        }
    }
    match v {
        Value::Object(m) => {
            for r in strs(&schema["required"]) {
                if !m.contains_key(r) {
                    errs.push(format!("{path}.{r}: required"));
                }
            }
            let props = schema["properties"].as_object();
            for (k, child) in m {
                match (
                    props.and_then(|p| p.get(k)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(s), _) => check_schema(child, s, &format!("{path}.{k}"), errs),
                    (None, Some(ap)) if ap.is_object() => {
                        check_schema(child, ap, &format!("{path}.{k}"), errs)
                    }
                    (None, Some(Value::Bool(true))) => {}
                    _ => errs.push(format!("{path}.{k}: unknown field")),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_schema(item, &schema["items"], &format!("{path}[{i}]"), errs);
            }
        }
        _ => {}
    }
}

/// ```yaml blocks of a markdown text.
fn yaml_blocks(md: &str) -> Vec<String> {
    let mut blocks = vec![];
    let mut current: Option<String> = None;
    for line in md.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```yaml") => current = Some(String::new()),
            Some(b) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    blocks
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            markdown_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
}

#[test]
fn docs_examples_match_the_crds() {
    let schemas: BTreeMap<String, Value> = certus_api::all_crds()
        .into_iter()
        .map(|c| {
            let v = serde_json::to_value(&c).unwrap();
            (
                v["spec"]["names"]["kind"].as_str().unwrap().to_string(),
                v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone(),
            )
        })
        .collect();
    let mut files = vec![];
    markdown_files(&root().join("docs"), &mut files);
    files.push(root().join("README.md"));
    let (mut checked, mut unknown_kinds) = (0, BTreeSet::new());
    let mut errs = vec![];
    for f in files {
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        for block in yaml_blocks(&std::fs::read_to_string(&f).unwrap()) {
            let Ok(parsed) = serde_yaml::Deserializer::from_str(&block)
                .map(Value::deserialize)
                .collect::<Result<Vec<_>, _>>()
            else {
                if block.contains("vault.certus.io/v1alpha1") {
                    errs.push(format!(
                        "{rel}: a vault.certus.io example is not valid YAML:\n{block}"
                    ));
                }
                continue;
            };
            for doc in parsed
                .iter()
                .filter(|d| d["apiVersion"] == "vault.certus.io/v1alpha1")
            {
                let kind = doc["kind"].as_str().unwrap_or_default();
                let Some(schema) = schemas.get(kind) else {
                    unknown_kinds.insert(kind.to_string());
                    continue;
                };
                checked += 1;
                let name = doc["metadata"]["name"].as_str().unwrap_or("?");
                check_schema(
                    &doc["spec"],
                    &schema["properties"]["spec"],
                    &format!("{rel}: {kind} {name}: spec"),
                    &mut errs,
                );
            }
        }
    }
    eprintln!("checked {checked} examples; kinds without a CRD in certus_api::all_crds() yet (not checked): {unknown_kinds:?}");
    assert!(checked >= 10, "only {checked} examples found");
    for k in &unknown_kinds {
        assert!(KINDS.contains(&k.as_str()), "docs use an unknown kind {k}");
    }
    assert!(errs.is_empty(), "{errs:#?}");
}

/// `persistVaultTokens` (default on): the operator's Role may keep the token Secrets in
/// the release namespace (also when `rbac.secretNamespaces` narrows the ClusterRole), and
/// the flag is left at its default; off: `--persist-vault-tokens=false` and no Secret
/// access through the Role.
#[test]
fn helm_persist_vault_tokens_grants_secrets_in_the_release_namespace_only_when_on() {
    let on = docs(&helm(&[]));
    let role = find(&on, "Role", "certus-certus-vault-operator-self");
    for verb in ["create", "get", "patch", "delete"] {
        assert!(grants(&role["rules"], "", "secrets", verb), "{verb}");
    }
    let args =
        strs(&container(find(&on, "Deployment", "certus-certus-vault-operator"))["args"]).join(" ");
    assert!(!args.contains("persist-vault-tokens"), "{args}");

    let narrowed = docs(&helm(&["rbac.secretNamespaces={apps}"]));
    let role = find(&narrowed, "Role", "certus-certus-vault-operator-self");
    assert!(grants(&role["rules"], "", "secrets", "patch"));

    let off = docs(&helm(&["persistVaultTokens=false"]));
    let role = find(&off, "Role", "certus-certus-vault-operator-self");
    assert!(!mentions(&role["rules"], "", "secrets"));
    let args = strs(&container(find(&off, "Deployment", "certus-certus-vault-operator"))["args"])
        .join(" ");
    assert!(args.contains("--persist-vault-tokens=false"), "{args}");
}
