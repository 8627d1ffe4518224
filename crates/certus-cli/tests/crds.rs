//! The checked-in `crds/` must equal the generator's output, and the CRDs must have the
//! shape a real API server accepts (structural schemas, list-map conditions, categories).

use std::path::PathBuf;

use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn checked_in_crds_are_up_to_date() {
    let dir = repo_root().join("crds");
    let generated = certus_cli::crds::render_all();
    let mut stale = vec![];
    for (file, yaml) in &generated {
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if &on_disk != yaml {
            stale.push(file.clone());
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    let mut expected: Vec<String> = generated.iter().map(|(f, _)| f.clone()).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "crds/ holds other files than the generator writes"
    );
    assert!(
        stale.is_empty(),
        "stale CRDs {stale:?}: run `cargo run -p certus-cli -- crds --out-dir crds`"
    );
}

fn walk(v: &Value, path: &str, problems: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for bad in [
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "definitions",
            "$defs",
        ] {
            if m.contains_key(bad) {
                problems.push(format!("{path}: has {bad}"));
            }
        }
        let is_schema =
            m.contains_key("type") || m.contains_key("properties") || m.contains_key("description");
        if is_schema
            && !m.contains_key("type")
            && !m.contains_key("x-kubernetes-int-or-string")
            && !m.contains_key("x-kubernetes-preserve-unknown-fields")
        {
            problems.push(format!("{path}: schema without a type"));
        }
        if m.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
            let keys = m
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let required = v
                .pointer("/items/required")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for k in &keys {
                if !required.contains(k) {
                    problems.push(format!("{path}: list-map key {k} is not required in items"));
                }
            }
        }
        if let Some(props) = m.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                walk(p, &format!("{path}.{k}"), problems);
            }
        }
        if let Some(items) = m.get("items") {
            walk(items, &format!("{path}[]"), problems);
        }
        if let Some(ap) = m.get("additionalProperties") {
            if ap.is_object() {
                walk(ap, &format!("{path}{{}}"), problems);
            }
        }
    }
}

#[test]
fn crds_are_structural_and_complete() {
    for crd in certus_api::all_crds() {
        let v = serde_json::to_value(&crd).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(
            v.pointer("/spec/group").and_then(Value::as_str),
            Some("vault.certus.io"),
            "{name}"
        );
        let categories = v
            .pointer("/spec/names/categories")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        assert!(
            categories.contains(&Value::String("vault".into())),
            "{name} is not in the vault category"
        );
        let versions = v
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .unwrap();
        assert_eq!(versions.len(), 1);
        let ver = &versions[0];
        assert_eq!(ver["name"], "v1alpha1");
        assert_eq!(
            ver.pointer("/subresources/status"),
            Some(&serde_json::json!({})),
            "{name} needs the status subresource"
        );
        let columns: Vec<&str> = ver["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Age"),
            "{name} columns {columns:?}"
        );
        let schema = ver.pointer("/schema/openAPIV3Schema").unwrap();
        let mut problems = vec![];
        walk(schema, &name, &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        let conditions = schema
            .pointer("/properties/status/properties/conditions")
            .unwrap_or_else(|| panic!("{name} has no status.conditions"));
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{name}");
        assert!(
            schema
                .pointer("/properties/status/properties/observedGeneration")
                .is_some(),
            "{name}"
        );
        // Every spec field documents itself (kubectl explain).
        let mut undocumented = vec![];
        fn docs(v: &Value, path: &str, out: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    if p.get("description")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        out.push(format!("{path}.{k}"));
                    }
                    docs(p, &format!("{path}.{k}"), out);
                    if let Some(items) = p.get("items") {
                        docs(items, &format!("{path}.{k}[]"), out);
                    }
                }
            }
        }
        docs(
            schema.pointer("/properties/spec").unwrap(),
            &format!("{name}.spec"),
            &mut undocumented,
        );
        assert!(
            undocumented.is_empty(),
            "fields without a description: {undocumented:#?}"
        );
    }
}

#[test]
fn vault_policy_cel_rules_behave() {
    use certus_api::VaultPolicy;
    let parse = |y: &str| -> VaultPolicy { serde_yaml::from_str(y).unwrap() };
    let both = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules: x\n  paths: [{path: p, capabilities: [read]}]\n");
    let err = kube::core::cel::validate_cel(&both)
        .unwrap_err()
        .to_string();
    assert!(err.contains("set exactly one of spec.rules"), "{err}");
    let neither = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {name: a, namespace: n}\nspec: {}\n");
    assert!(kube::core::cel::validate_cel(&neither).is_err());
    let root = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {name: a, namespace: n}\nspec: {name: root, rules: x}\n");
    assert!(kube::core::cel::validate_cel(&root)
        .unwrap_err()
        .to_string()
        .contains("built-in"));
    let ok = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {name: a, namespace: n}\nspec: {name: app, rules: x}\n");
    kube::core::cel::validate_cel(&ok).unwrap();
    // spec.name is immutable.
    let renamed = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultPolicy\nmetadata: {name: a, namespace: n}\nspec: {name: app2, rules: x}\n");
    assert!(kube::core::cel::validate_cel_update(&renamed, &ok)
        .unwrap_err()
        .to_string()
        .contains("immutable"));
    kube::core::cel::validate_cel_update(&ok, &ok).unwrap();
}

#[test]
fn connection_cel_rules_behave() {
    use certus_api::VaultConnection;
    let parse = |y: &str| -> VaultConnection { serde_yaml::from_str(y).unwrap() };
    let two = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultConnection\nmetadata: {name: a, namespace: n}\nspec:\n  address: http://v:8200\n  auth:\n    token: {secretRef: {name: s, key: t}}\n    appRole: {roleId: r, secretIdRef: {name: s, key: t}}\n");
    assert!(kube::core::cel::validate_cel(&two)
        .unwrap_err()
        .to_string()
        .contains("exactly one of auth"));
    let none = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultConnection\nmetadata: {name: a, namespace: n}\nspec:\n  address: http://v:8200\n  auth: {}\n");
    assert!(kube::core::cel::validate_cel(&none).is_err());
    let ok = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultConnection\nmetadata: {name: a, namespace: n}\nspec:\n  address: http://v:8200\n  auth:\n    token: {secretRef: {name: s, key: t}}\n");
    kube::core::cel::validate_cel(&ok).unwrap();
    let ca = parse("apiVersion: vault.certus.io/v1alpha1\nkind: VaultConnection\nmetadata: {name: a, namespace: n}\nspec:\n  address: https://v:8200\n  tls: {caBundle: x, caSecretRef: {name: s, key: ca.crt}}\n  auth:\n    token: {secretRef: {name: s, key: t}}\n");
    assert!(kube::core::cel::validate_cel(&ca)
        .unwrap_err()
        .to_string()
        .contains("at most one of caBundle"));
}
