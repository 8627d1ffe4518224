//! VaultPolicy: validate HCL, render structured paths, and plan against the live policy.

use certus_api::{Capability, PolicyPath, VaultPolicySpec};
use hcl::edit::expr::Expression;
use hcl::edit::structure::{BlockLabel, Structure};
use hcl::edit::Span;

use crate::change::{text_diff, Action, Change, ResourceId};
use crate::hash::short_hash;

/// The marker the operator writes as the first line of every policy it owns.
pub const OWNER_MARKER: &str = "# managed-by: certus-vault-operator owner=";

/// Attributes Vault accepts inside a `path` block.
const PATH_ATTRIBUTES: &[&str] = &[
    "capabilities",
    "allowed_parameters",
    "denied_parameters",
    "required_parameters",
    "min_wrapping_ttl",
    "max_wrapping_ttl",
    "control_group",
    "mfa_methods",
    "subscribe_event_types",
    "pagination_limit",
    "list_scan_response_keys_filter_path",
];

/// Why a policy spec cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("spec.rules: HCL parse error at line {line}, column {column}: {message}")]
    Parse {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("spec.rules line {line}: {message}")]
    Structure { line: usize, message: String },
    #[error("spec: set exactly one of spec.rules (HCL) and spec.paths")]
    RulesXorPaths,
    #[error("spec.name: {0}")]
    Name(String),
    #[error("spec.paths[{index}].{field}: {message}")]
    Path {
        index: usize,
        field: &'static str,
        message: String,
    },
}

/// What the operator wants Vault to hold for one `VaultPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPolicy {
    /// Policy name in Vault.
    pub name: String,
    /// `namespace/name` of the owning resource, written into the owner marker.
    pub owner: String,
    /// The full policy text to write, owner marker included.
    pub text: String,
    /// `short_hash(text)`.
    pub hash: String,
}

/// Validates a Vault policy name (the CRD pattern, repeated for manifests read by the CLI).
pub fn validate_name(name: &str) -> Result<(), PolicyError> {
    if name == "root" || name == "default" {
        return Err(PolicyError::Name(format!(
            "{name:?} is a built-in Vault policy and cannot be managed; pick another name"
        )));
    }
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !ok {
        return Err(PolicyError::Name(format!(
            "{name:?} is not a valid policy name: use 1-128 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parses HCL policy text and checks it has the shape Vault accepts: only `path "<p>" { … }`
/// blocks, known attributes, and known capabilities. Errors name the line.
pub fn validate_hcl(text: &str) -> Result<(), PolicyError> {
    let body = hcl::edit::parser::parse_body(text).map_err(|e| PolicyError::Parse {
        line: e.location().line(),
        column: e.location().column(),
        message: e.message().to_string(),
    })?;
    let line =
        |span: Option<std::ops::Range<usize>>| span.map(|r| line_of(text, r.start)).unwrap_or(0);
    let mut paths = 0;
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                // Vault ignores a top-level `name`; anything else is a mistake.
                if attr.key.as_str() != "name" {
                    return Err(PolicyError::Structure {
                        line: line(attr.span()),
                        message: format!("unexpected top-level attribute {:?}: a policy holds only path \"<path>\" {{ … }} blocks", attr.key.as_str()),
                    });
                }
            }
            Structure::Block(block) => {
                let l = line(block.span());
                if block.ident.as_str() != "path" {
                    return Err(PolicyError::Structure {
                        line: l,
                        message: format!("unknown block {:?}: a policy holds only path \"<path>\" {{ … }} blocks", block.ident.as_str()),
                    });
                }
                let label = match block.labels.as_slice() {
                    [BlockLabel::String(s)] => s.as_str().to_string(),
                    _ => {
                        return Err(PolicyError::Structure {
                            line: l,
                            message: "a path block takes exactly one quoted label: path \"secret/data/app/*\" { … }".into(),
                        })
                    }
                };
                let mut has_caps = false;
                for inner in block.body.iter() {
                    let attr = match inner {
                        Structure::Attribute(a) => a,
                        Structure::Block(b) => {
                            if matches!(
                                b.ident.as_str(),
                                "allowed_parameters" | "denied_parameters"
                            ) {
                                continue;
                            }
                            return Err(PolicyError::Structure {
                                line: line(b.span()),
                                message: format!(
                                    "path {label:?}: unexpected block {:?}",
                                    b.ident.as_str()
                                ),
                            });
                        }
                    };
                    let al = line(attr.span());
                    let key = attr.key.as_str();
                    if !PATH_ATTRIBUTES.contains(&key) {
                        return Err(PolicyError::Structure {
                            line: al,
                            message: format!(
                                "path {label:?}: unknown attribute {key:?} (known: {})",
                                PATH_ATTRIBUTES.join(", ")
                            ),
                        });
                    }
                    if key == "capabilities" {
                        has_caps = true;
                        let Expression::Array(items) = &attr.value else {
                            return Err(PolicyError::Structure {
                                line: al,
                                message: format!("path {label:?}: capabilities must be a list of strings, e.g. [\"read\", \"list\"]"),
                            });
                        };
                        for item in items.iter() {
                            let Expression::String(s) = item else {
                                return Err(PolicyError::Structure {
                                    line: al,
                                    message: format!(
                                        "path {label:?}: capabilities must be a list of strings"
                                    ),
                                });
                            };
                            if !Capability::ALL.iter().any(|c| c.as_str() == s.as_str()) {
                                let known: Vec<_> =
                                    Capability::ALL.iter().map(|c| c.as_str()).collect();
                                return Err(PolicyError::Structure {
                                    line: al,
                                    message: format!(
                                        "path {label:?}: unknown capability {:?} (known: {})",
                                        s.as_str(),
                                        known.join(", ")
                                    ),
                                });
                            }
                        }
                    }
                }
                if !has_caps {
                    return Err(PolicyError::Structure {
                        line: l,
                        message: format!("path {label:?} has no capabilities attribute"),
                    });
                }
                paths += 1;
            }
        }
    }
    if paths == 0 {
        return Err(PolicyError::Structure {
            line: 1,
            message: "the policy has no path blocks".into(),
        });
    }
    Ok(())
}

fn hcl_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders structured paths to HCL (capabilities de-duplicated, in Vault's order).
pub fn render_paths(paths: &[PolicyPath]) -> Result<String, PolicyError> {
    let mut out = String::new();
    for (index, p) in paths.iter().enumerate() {
        if p.path.trim().is_empty() {
            return Err(PolicyError::Path {
                index,
                field: "path",
                message: "must not be empty".into(),
            });
        }
        if p.capabilities.is_empty() {
            return Err(PolicyError::Path {
                index,
                field: "capabilities",
                message: "list at least one capability".into(),
            });
        }
        let mut caps = p.capabilities.clone();
        caps.sort();
        caps.dedup();
        if let Some(d) = &p.description {
            for l in d.lines() {
                out.push_str("# ");
                out.push_str(l);
                out.push('\n');
            }
        }
        let caps: Vec<String> = caps.iter().map(|c| hcl_string(c.as_str())).collect();
        out.push_str(&format!(
            "path {} {{\n  capabilities = [{}]\n}}\n",
            hcl_string(&p.path),
            caps.join(", ")
        ));
        if index + 1 < paths.len() {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Computes the desired policy for a spec. `namespace`/`name` identify the resource and
/// `vault_name` is the effective Vault policy name.
pub fn desired(
    namespace: &str,
    name: &str,
    vault_name: &str,
    spec: &VaultPolicySpec,
) -> Result<DesiredPolicy, PolicyError> {
    validate_name(vault_name)?;
    let body = match (&spec.rules, &spec.paths) {
        (Some(rules), None) => {
            validate_hcl(rules)?;
            rules.trim_end().to_string() + "\n"
        }
        (None, Some(paths)) => {
            let text = render_paths(paths)?;
            // Our own rendering must always be valid; check it anyway.
            validate_hcl(&text)?;
            text
        }
        _ => return Err(PolicyError::RulesXorPaths),
    };
    let owner = format!("{namespace}/{name}");
    let text = format!("{OWNER_MARKER}{owner}\n{body}");
    let hash = short_hash(text.as_bytes());
    Ok(DesiredPolicy {
        name: vault_name.to_string(),
        owner,
        text,
        hash,
    })
}

/// The owner named by a policy's marker line, if it has one.
pub fn owner_of(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    first.strip_prefix(OWNER_MARKER).map(str::trim)
}

fn normalize(text: &str) -> &str {
    text.trim_end()
}

/// Plans one policy: compares the desired text with the live one.
///
/// `last_applied_hash` is the hash recorded in status after the last successful write; when
/// the spec still renders to that hash but Vault differs, the difference is drift.
/// `adopt` lets the resource take over a policy whose marker names another owner.
pub fn plan(
    resource: &ResourceId,
    desired: &DesiredPolicy,
    live: Option<&str>,
    last_applied_hash: Option<&str>,
    adopt: bool,
) -> Change {
    let target = format!("sys/policies/acl/{}", desired.name);
    let mk = |action, drift, detail| Change {
        resource: resource.clone(),
        action,
        target: target.clone(),
        drift,
        detail,
    };
    let Some(live) = live else {
        return mk(
            Action::Create,
            false,
            Some(text_diff("", &desired.text, "vault (absent)", "spec")),
        );
    };
    if let Some(other) = owner_of(live) {
        if other != desired.owner && !adopt {
            return mk(
                Action::Conflict,
                false,
                Some(format!(
                    "Vault policy {:?} is owned by {other}; nothing was written. Give this resource another spec.name, or annotate it with vault.certus.io/adopt=\"true\" to take the policy over",
                    desired.name
                )),
            );
        }
    }
    if normalize(live) == normalize(&desired.text) {
        return mk(Action::NoChange, false, None);
    }
    let drift = last_applied_hash == Some(desired.hash.as_str());
    mk(
        Action::Update,
        drift,
        Some(text_diff(live, &desired.text, "vault", "spec")),
    )
}

/// Plans the deletion of a policy that exists (or not) in Vault.
pub fn plan_delete(
    resource: &ResourceId,
    vault_name: &str,
    owner: &str,
    live: Option<&str>,
) -> Change {
    let target = format!("sys/policies/acl/{vault_name}");
    let (action, detail) = match live {
        None => (Action::NoChange, Some("already absent".to_string())),
        Some(text) => match owner_of(text) {
            Some(o) if o != owner => (
                Action::Conflict,
                Some(format!("owned by {o}; left in place")),
            ),
            _ => (Action::Delete, None),
        },
    };
    Change {
        resource: resource.clone(),
        action,
        target,
        drift: false,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::{DeletionPolicy, DriftPolicy};

    fn spec() -> VaultPolicySpec {
        VaultPolicySpec {
            connection_ref: None,
            name: None,
            rules: None,
            paths: None,
            deletion_policy: DeletionPolicy::Delete,
            drift_policy: DriftPolicy::Correct,
        }
    }
    fn with_rules(rules: &str) -> VaultPolicySpec {
        VaultPolicySpec {
            rules: Some(rules.into()),
            ..spec()
        }
    }
    fn with_paths(paths: Vec<PolicyPath>) -> VaultPolicySpec {
        VaultPolicySpec {
            paths: Some(paths),
            ..spec()
        }
    }
    fn path(p: &str, caps: &[Capability]) -> PolicyPath {
        PolicyPath {
            path: p.into(),
            capabilities: caps.to_vec(),
            description: None,
        }
    }
    fn rid() -> ResourceId {
        ResourceId::new("VaultPolicy", Some("ns"), "app")
    }

    #[test]
    fn valid_hcl_passes() {
        validate_hcl("path \"secret/data/app/*\" {\n  capabilities = [\"read\", \"list\"]\n}\n")
            .unwrap();
        validate_hcl("# comment\npath \"a\" { capabilities = [\"deny\"] }\npath \"b/+/c\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"*\" = [] }\n}").unwrap();
    }

    #[test]
    fn parse_error_names_the_line() {
        let err = validate_hcl("path \"a\" {\n  capabilities = [\"read\"\n}\n").unwrap_err();
        match err {
            PolicyError::Parse { line, .. } => assert!(line >= 2, "line {line}"),
            e => panic!("unexpected {e:?}"),
        }
        assert!(err
            .to_string()
            .starts_with("spec.rules: HCL parse error at line"));
    }

    #[test]
    fn unknown_capability_names_line_and_value() {
        let err = validate_hcl("path \"a\" {\n  capabilities = [\"read\"]\n}\n\npath \"b\" {\n  capabilities = [\"raed\"]\n}\n").unwrap_err();
        assert_eq!(
            err,
            PolicyError::Structure {
                line: 6,
                message: err_msg(&err)
            }
        );
        assert!(err.to_string().contains("line 6"));
        assert!(err.to_string().contains("\"raed\""));
    }

    fn err_msg(e: &PolicyError) -> String {
        match e {
            PolicyError::Structure { message, .. } => message.clone(),
            _ => String::new(),
        }
    }

    #[test]
    fn structural_errors() {
        assert!(validate_hcl("foo \"a\" { capabilities = [\"read\"] }")
            .unwrap_err()
            .to_string()
            .contains("unknown block"));
        assert!(validate_hcl("path \"a\" { }")
            .unwrap_err()
            .to_string()
            .contains("no capabilities"));
        assert!(validate_hcl("path \"a\" { capabilities = \"read\" }")
            .unwrap_err()
            .to_string()
            .contains("list of strings"));
        assert!(validate_hcl("path \"a\" { capabilitys = [\"read\"] }")
            .unwrap_err()
            .to_string()
            .contains("unknown attribute"));
        assert!(validate_hcl("# only a comment\n")
            .unwrap_err()
            .to_string()
            .contains("no path blocks"));
        assert!(validate_hcl("path a { capabilities = [\"read\"] }").is_err());
    }

    #[test]
    fn renders_structured_paths_deterministically() {
        let text = render_paths(&[
            path(
                "secret/data/app/*",
                &[Capability::List, Capability::Read, Capability::Read],
            ),
            PolicyPath {
                description: Some("db creds".into()),
                ..path("database/creds/app", &[Capability::Read])
            },
        ])
        .unwrap();
        assert_eq!(
            text,
            "path \"secret/data/app/*\" {\n  capabilities = [\"read\", \"list\"]\n}\n\n# db creds\npath \"database/creds/app\" {\n  capabilities = [\"read\"]\n}\n"
        );
        validate_hcl(&text).unwrap();
    }

    #[test]
    fn path_with_quotes_is_escaped() {
        let text = render_paths(&[path("a\"b${x}", &[Capability::Read])]).unwrap();
        validate_hcl(&text).unwrap();
        assert!(text.contains(r#""a\"b$${x}""#));
    }

    #[test]
    fn desired_prepends_owner_marker() {
        let d = desired(
            "ns",
            "app",
            "ns.app",
            &with_rules("path \"a\" { capabilities = [\"read\"] }\n\n"),
        )
        .unwrap();
        assert_eq!(d.text, "# managed-by: certus-vault-operator owner=ns/app\npath \"a\" { capabilities = [\"read\"] }\n");
        assert_eq!(owner_of(&d.text), Some("ns/app"));
        assert_eq!(d.hash.len(), 16);
    }

    #[test]
    fn desired_rejects_bad_specs() {
        assert_eq!(
            desired("ns", "a", "ns.a", &spec()).unwrap_err(),
            PolicyError::RulesXorPaths
        );
        assert!(matches!(
            desired(
                "ns",
                "a",
                "root",
                &with_rules("path \"a\" { capabilities = [\"read\"] }")
            ),
            Err(PolicyError::Name(_))
        ));
        assert!(matches!(
            desired(
                "ns",
                "a",
                "Bad Name",
                &with_rules("path \"a\" { capabilities = [\"read\"] }")
            ),
            Err(PolicyError::Name(_))
        ));
        let e = desired("ns", "a", "ns.a", &with_paths(vec![path("x", &[])])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.paths[0].capabilities: list at least one capability"
        );
    }

    #[test]
    fn plan_create_update_nochange_drift_conflict() {
        let d = desired(
            "ns",
            "app",
            "ns.app",
            &with_paths(vec![path("a", &[Capability::Read])]),
        )
        .unwrap();
        assert_eq!(plan(&rid(), &d, None, None, false).action, Action::Create);
        let same = plan(
            &rid(),
            &d,
            Some(&format!("{}\n\n", d.text)),
            Some(&d.hash),
            false,
        );
        assert_eq!(same.action, Action::NoChange);
        let edited = d.text.replace("read", "list");
        let drift = plan(&rid(), &d, Some(&edited), Some(&d.hash), false);
        assert_eq!((drift.action, drift.drift), (Action::Update, true));
        assert!(drift
            .detail
            .unwrap()
            .contains("-  capabilities = [\"list\"]"));
        let update = plan(&rid(), &d, Some(&edited), Some("0000000000000000"), false);
        assert_eq!((update.action, update.drift), (Action::Update, false));
        let foreign =
            format!("{OWNER_MARKER}other/x\npath \"a\" {{ capabilities = [\"read\"] }}\n");
        let c = plan(&rid(), &d, Some(&foreign), None, false);
        assert_eq!(c.action, Action::Conflict);
        assert!(c.detail.unwrap().contains("owned by other/x"));
        assert_eq!(
            plan(&rid(), &d, Some(&foreign), None, true).action,
            Action::Update
        );
        // A hand-written policy without a marker is taken over (it is what the spec names).
        assert_eq!(
            plan(
                &rid(),
                &d,
                Some("path \"a\" { capabilities = [\"read\"] }"),
                None,
                false
            )
            .action,
            Action::Update
        );
    }

    #[test]
    fn plan_delete_respects_owner() {
        assert_eq!(
            plan_delete(&rid(), "p", "ns/app", None).action,
            Action::NoChange
        );
        assert_eq!(
            plan_delete(
                &rid(),
                "p",
                "ns/app",
                Some(&format!("{OWNER_MARKER}ns/app\n"))
            )
            .action,
            Action::Delete
        );
        assert_eq!(
            plan_delete(&rid(), "p", "ns/app", Some(&format!("{OWNER_MARKER}x/y\n"))).action,
            Action::Conflict
        );
        assert_eq!(
            plan_delete(&rid(), "p", "ns/app", Some("path \"a\" {}")).action,
            Action::Delete
        );
    }
}
