//! Reading a directory of manifests: multi-document YAML (or JSON), Kubernetes `Secret`s
//! for secret references, and the `vault.certus.io` kinds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use certus_api::{
    AuthMethod, ClusterVaultConnection, SecretEngine, VaultConnection, VaultPolicy, VaultRole,
};
use k8s_openapi::api::core::v1::Secret;
use kube::core::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where a document came from, for error messages and stable ordering.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document index within the file.
    pub doc: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.doc)
    }
}

/// One resource and where it was read from.
#[derive(Clone, Debug)]
pub struct Item<T> {
    pub origin: Origin,
    pub object: T,
}

/// Everything read from a manifest directory.
#[derive(Default, Debug)]
pub struct ManifestSet {
    pub connections: Vec<Item<VaultConnection>>,
    pub cluster_connections: Vec<Item<ClusterVaultConnection>>,
    pub policies: Vec<Item<VaultPolicy>>,
    pub static_secrets: Vec<Item<certus_api::StaticSecret>>,
    pub rotation_policies: Vec<Item<certus_api::RotationPolicy>>,
    pub engines: Vec<Item<SecretEngine>>,
    pub auth_methods: Vec<Item<AuthMethod>>,
    pub roles: Vec<Item<VaultRole>>,
    pub dynamic_credentials: Vec<Item<certus_api::DynamicCredential>>,
    /// Secret data by (namespace, name), values decoded.
    pub secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    /// Documents of kinds this tool does not reconcile (reported, not an error).
    pub ignored: Vec<(Origin, String)>,
    /// Documents that could not be read: (origin, message naming the field and fix).
    pub errors: Vec<(Origin, String)>,
}

/// The files a directory (or a single file) yields, sorted.
pub fn manifest_files(path: &Path, recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("{} is neither a file nor a directory", path.display());
    }
    let mut out = vec![];
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let p = entry?.path();
            // Hidden files and directories (editor leftovers, .certus state) are not manifests.
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if p.is_dir() {
                if recursive {
                    stack.push(p);
                }
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        format!("field {path}: {}", e.into_inner())
    })
}

fn default_namespace(v: &mut Value) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if !meta.contains_key("namespace") {
            meta.insert("namespace".into(), Value::String("default".into()));
        }
    }
}

/// Checks a resource against its CRD's CEL rules, as the API server would
/// (`kube::core::cel::validate_cel` semantics). The CRD schema is generated and its rules
/// compiled once per kind, not per document: per document that took ~2 ms of CPU, most of
/// the time of a 2,000-resource `apply` (hack/bench, scenario 1).
fn cel_check<K: CustomResourceExt + serde::Serialize>(obj: &K) -> Result<(), String> {
    use kube::core::cel::{compile_schema, CompiledSchema, Validator};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;
    thread_local! {
        static COMPILED: RefCell<HashMap<&'static str, Rc<(CompiledSchema, Validator)>>> =
            RefCell::new(HashMap::new());
    }
    let compiled = COMPILED.with(|c| {
        c.borrow_mut()
            .entry(K::crd_name())
            .or_insert_with(|| {
                let crd = K::crd();
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .map(|s| serde_json::to_value(s).expect("CRD schema serializes to JSON"))
                    .unwrap_or(Value::Null);
                Rc::new((compile_schema(&schema), Validator::new()))
            })
            .clone()
    });
    let object = serde_json::to_value(obj).map_err(|e| format!("cannot serialize: {e}"))?;
    compiled
        .1
        .validate_compiled(&compiled.0, &object, None)
        .map_err(|e| {
            format!("rejected by the CRD's validation rules (as the API server would): {e}")
        })
}

impl ManifestSet {
    /// Reads every document of every manifest file under `path`.
    pub fn load(path: &Path, recursive: bool) -> anyhow::Result<Self> {
        let mut set = ManifestSet::default();
        for file in manifest_files(path, recursive)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            set.add_text(&file, &text);
        }
        Ok(set)
    }

    /// Adds the documents of one file's text.
    pub fn add_text(&mut self, file: &Path, text: &str) {
        use serde::Deserialize;
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let origin = Origin {
                file: file.to_path_buf(),
                doc: i + 1,
            };
            let value = match Value::deserialize(doc) {
                Ok(Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    self.errors.push((origin, format!("not valid YAML: {e}")));
                    continue;
                }
            };
            self.add_value(origin, value);
        }
    }

    fn add_value(&mut self, origin: Origin, mut value: Value) {
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if kind == "List" {
            if let Some(items) = value.get("items").and_then(Value::as_array).cloned() {
                for item in items {
                    self.add_value(origin.clone(), item);
                }
            }
            return;
        }
        if kind.is_empty() || api_version.is_empty() {
            self.errors
                .push((origin, "apiVersion and kind are required".into()));
            return;
        }
        if value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            self.errors
                .push((origin, format!("{kind}: metadata.name is required")));
            return;
        }
        macro_rules! custom {
            ($list:ident, $ty:ty, $namespaced:expr) => {{
                if $namespaced {
                    default_namespace(&mut value);
                }
                match typed::<$ty>(value) {
                    Ok(obj) => match cel_check(&obj) {
                        Ok(()) => self.$list.push(Item {
                            origin,
                            object: obj,
                        }),
                        Err(e) => self.errors.push((origin, format!("{kind}: {e}"))),
                    },
                    Err(e) => self.errors.push((origin, format!("{kind}: {e}"))),
                }
            }};
        }
        match (api_version.as_str(), kind.as_str()) {
            (certus_api::API_VERSION, "VaultConnection") => {
                custom!(connections, VaultConnection, true)
            }
            (certus_api::API_VERSION, "ClusterVaultConnection") => {
                custom!(cluster_connections, ClusterVaultConnection, false)
            }
            (certus_api::API_VERSION, "VaultPolicy") => custom!(policies, VaultPolicy, true),
            (certus_api::API_VERSION, "StaticSecret") => {
                custom!(static_secrets, certus_api::StaticSecret, true)
            }
            (certus_api::API_VERSION, "RotationPolicy") => {
                custom!(rotation_policies, certus_api::RotationPolicy, true)
            }
            (certus_api::API_VERSION, "SecretEngine") => custom!(engines, SecretEngine, true),
            (certus_api::API_VERSION, "AuthMethod") => custom!(auth_methods, AuthMethod, true),
            (certus_api::API_VERSION, "VaultRole") => custom!(roles, VaultRole, true),
            (certus_api::API_VERSION, "DynamicCredential") => {
                custom!(dynamic_credentials, certus_api::DynamicCredential, true)
            }
            ("v1", "Secret") => {
                default_namespace(&mut value);
                match typed::<Secret>(value) {
                    Ok(s) => {
                        let ns = s
                            .metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into());
                        let name = s.metadata.name.clone().unwrap_or_default();
                        let mut data: BTreeMap<String, Vec<u8>> = s
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect();
                        for (k, v) in s.string_data.unwrap_or_default() {
                            data.insert(k, v.into_bytes());
                        }
                        self.secrets.insert((ns, name), data);
                    }
                    // serde errors on a Secret could quote its data: report only the path.
                    Err(e) => self.errors.push((
                        origin,
                        format!("Secret: {}", e.split(':').next().unwrap_or("invalid")),
                    )),
                }
            }
            (group, k) if group.starts_with("vault.certus.io/") => {
                self.ignored.push((
                    origin,
                    format!("{group} {k} is not reconciled by this version of certus-vault"),
                ));
            }
            (group, k) => self.ignored.push((origin, format!("{group} {k}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> ManifestSet {
        let mut s = ManifestSet::default();
        s.add_text(Path::new("m.yaml"), text);
        s
    }

    #[test]
    fn reads_multi_document_yaml_with_defaults() {
        let s = load(
            "apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {name: a}\nspec:\n  rules: 'path \"x\" { capabilities = [\"read\"] }'\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: tok, namespace: ns}\nstringData: {token: abc}\ndata: {other: aGk=}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        );
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.policies.len(), 1);
        assert_eq!(
            s.policies[0].object.metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(
            s.policies[0].object.spec.deletion_policy,
            certus_api::DeletionPolicy::Delete
        );
        let sec = &s.secrets[&("ns".to_string(), "tok".to_string())];
        assert_eq!(sec["token"], b"abc");
        assert_eq!(sec["other"], b"hi");
        assert_eq!(s.ignored.len(), 1);
    }

    #[test]
    fn type_errors_name_the_field() {
        let s = load("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {name: a}\nspec:\n  paths:\n  - path: x\n    capabilities: [reed]\n");
        assert_eq!(s.errors.len(), 1);
        let msg = &s.errors[0].1;
        assert!(msg.contains("spec.paths[0].capabilities[0]"), "{msg}");
        assert!(msg.contains("reed"), "{msg}");
    }

    #[test]
    fn cel_rules_apply_to_manifests() {
        let s = load("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {name: a}\nspec:\n  rules: 'path \"x\" { capabilities = [\"read\"] }'\n  paths: [{path: y, capabilities: [read]}]\n");
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(
            s.errors[0].1.contains("exactly one of spec.rules"),
            "{}",
            s.errors[0].1
        );
    }

    #[test]
    fn secret_errors_do_not_echo_values() {
        let s = load("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: 'not-base64-SUPERSECRET!'}\n");
        assert_eq!(s.errors.len(), 1);
        assert!(!s.errors[0].1.contains("SUPERSECRET"), "{}", s.errors[0].1);
    }

    #[test]
    fn missing_name_is_an_error() {
        let s = load("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {}\nspec: {rules: x}\n");
        assert!(s.errors[0].1.contains("metadata.name is required"));
    }
}
