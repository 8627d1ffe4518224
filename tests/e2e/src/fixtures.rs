//! Small builders for the objects scenarios apply.

use certus_api::{
    Capability, DeletionPolicy, DriftPolicy, PolicyPath, VaultPolicy, VaultPolicySpec,
};

/// A `VaultPolicy` named `name` (namespace filled in when applied). Without further calls
/// it has neither rules nor paths.
pub fn vault_policy(name: &str) -> PolicyBuilder {
    PolicyBuilder {
        name: name.to_string(),
        spec: VaultPolicySpec {
            connection_ref: None,
            name: None,
            rules: None,
            paths: None,
            deletion_policy: DeletionPolicy::Delete,
            drift_policy: DriftPolicy::Correct,
        },
    }
}

/// Builder returned by [`vault_policy`].
#[derive(Clone, Debug)]
pub struct PolicyBuilder {
    name: String,
    spec: VaultPolicySpec,
}

impl PolicyBuilder {
    /// HCL rules.
    pub fn rules(mut self, hcl: &str) -> Self {
        self.spec.rules = Some(hcl.to_string());
        self
    }

    /// Structured paths.
    pub fn paths(mut self, paths: &[(&str, &[Capability])]) -> Self {
        self.spec.paths = Some(
            paths
                .iter()
                .map(|(p, caps)| PolicyPath {
                    path: p.to_string(),
                    capabilities: caps.to_vec(),
                    description: None,
                })
                .collect(),
        );
        self
    }

    /// An explicit Vault policy name (`spec.name`).
    pub fn vault_name(mut self, name: &str) -> Self {
        self.spec.name = Some(name.to_string());
        self
    }

    /// `deletionPolicy: Retain`.
    pub fn retain(mut self) -> Self {
        self.spec.deletion_policy = DeletionPolicy::Retain;
        self
    }

    /// The object.
    pub fn build(self) -> VaultPolicy {
        VaultPolicy::new(&self.name, self.spec)
    }
}

/// One HCL `path` block granting `capabilities` on `path`.
pub fn hcl_path(path: &str, capabilities: &[&str]) -> String {
    let caps: Vec<String> = capabilities.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "path \"{path}\" {{\n  capabilities = [{}]\n}}\n",
        caps.join(", ")
    )
}
