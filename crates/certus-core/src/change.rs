//! The change list `plan` prints and `apply` executes.

use std::fmt;

/// Identifies the resource a change comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ResourceId {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ResourceId {
            kind: kind.into(),
            namespace: namespace.map(Into::into),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// What a change does in Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The object does not exist in Vault and will be created.
    Create,
    /// The object exists and differs from the spec.
    Update,
    /// The object will be removed from Vault.
    Delete,
    /// Vault already matches the spec.
    NoChange,
    /// The object is owned by another resource; nothing will be written.
    Conflict,
    /// The spec is invalid; nothing will be written.
    Invalid,
    /// A dependency (mount, policy, connection) is missing; nothing will be written yet.
    Blocked,
}

impl Action {
    /// Whether executing the change writes to Vault.
    pub fn writes(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }
    /// Symbol used in plan output.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Delete => "-",
            Action::NoChange => "=",
            Action::Conflict => "!",
            Action::Invalid => "x",
            Action::Blocked => "…",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::NoChange => "no change",
            Action::Conflict => "conflict",
            Action::Invalid => "invalid",
            Action::Blocked => "blocked",
        };
        f.write_str(s)
    }
}

/// One planned change.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub resource: ResourceId,
    pub action: Action,
    /// The Vault API path the change touches, e.g. `sys/policies/acl/app`.
    pub target: String,
    /// Whether the difference came from an out-of-band edit in Vault rather than a spec change.
    pub drift: bool,
    /// A human-readable explanation or unified diff. Never holds secret values.
    pub detail: Option<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} ({})",
            self.action.symbol(),
            self.resource,
            self.target,
            self.action
        )?;
        if self.drift {
            write!(f, " [drift]")?;
        }
        if let Some(d) = &self.detail {
            for line in d.lines() {
                write!(f, "\n    {line}")?;
            }
        }
        Ok(())
    }
}

/// A unified diff of two texts (for plan output), empty when equal.
pub fn text_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header(old_name, new_name)
        .to_string()
}
