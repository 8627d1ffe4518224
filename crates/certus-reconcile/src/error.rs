use certus_api::reasons;
use certus_vault_client::{ErrorClass, VaultError};

/// Why a reconcile did not complete. Messages name the field and the fix, and never
/// carry secret values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReconcileError {
    /// The spec cannot be reconciled as written; retrying will not help until it changes.
    #[error("{0}")]
    Invalid(String),
    /// Another resource owns the Vault object; nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// A referenced connection, Secret, mount or policy does not exist (yet).
    #[error("{0}")]
    Dependency(String),
    /// The referenced connection exists but may not be used by this resource.
    #[error("{0}")]
    NotAllowed(String),
    /// A Vault request failed.
    #[error("{0}")]
    Vault(#[from] VaultError),
    /// A Kubernetes request failed (resolving Secrets, tokens).
    #[error("{0}")]
    Kubernetes(String),
}

impl ReconcileError {
    /// A static label for metrics (`category`), bounded cardinality.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Invalid(_) => "invalid_spec",
            ReconcileError::Conflict(_) => "conflict",
            ReconcileError::Dependency(_) => "dependency",
            ReconcileError::NotAllowed(_) => "not_allowed",
            ReconcileError::Vault(e) => match e.class {
                ErrorClass::NotFound => "vault_not_found",
                ErrorClass::PermissionDenied => "vault_permission_denied",
                ErrorClass::InvalidRequest => "vault_invalid_request",
                ErrorClass::Transient => "vault_transient",
                ErrorClass::Config => "vault_config",
            },
            ReconcileError::Kubernetes(_) => "kubernetes",
        }
    }

    /// The `Ready=False` condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Invalid(_) => reasons::INVALID_SPEC,
            ReconcileError::Conflict(_) => reasons::CONFLICT,
            ReconcileError::Dependency(_) => reasons::WAITING_FOR_DEPENDENCY,
            ReconcileError::NotAllowed(_) => reasons::NAMESPACE_NOT_ALLOWED,
            ReconcileError::Vault(e) => match e.class {
                ErrorClass::PermissionDenied => reasons::PERMISSION_DENIED,
                ErrorClass::InvalidRequest | ErrorClass::NotFound => reasons::VAULT_REJECTED,
                ErrorClass::Config => reasons::INVALID_SPEC,
                ErrorClass::Transient => reasons::VAULT_UNAVAILABLE,
            },
            ReconcileError::Kubernetes(_) => reasons::PROGRESSING,
        }
    }

    /// Whether retrying without a spec change can help (transient and dependency errors).
    /// Invalid specs and conflicts wait for a change instead of a retry loop.
    pub fn retryable(&self) -> bool {
        match self {
            ReconcileError::Invalid(_)
            | ReconcileError::Conflict(_)
            | ReconcileError::NotAllowed(_) => false,
            ReconcileError::Vault(e) => !matches!(e.class, ErrorClass::Config),
            ReconcileError::Dependency(_) | ReconcileError::Kubernetes(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_reasons_and_retry() {
        let t = ReconcileError::Vault(VaultError::new(
            ErrorClass::Transient,
            "GET x",
            Some(503),
            "sealed",
        ));
        assert_eq!(
            (t.reason(), t.retryable(), t.category()),
            ("VaultUnavailable", true, "vault_transient")
        );
        let i = ReconcileError::Invalid("spec.rules: bad".into());
        assert_eq!((i.reason(), i.retryable()), ("InvalidSpec", false));
        let c = ReconcileError::Conflict("x".into());
        assert_eq!((c.reason(), c.retryable()), ("Conflict", false));
        let d = ReconcileError::Dependency("x".into());
        assert_eq!((d.reason(), d.retryable()), ("WaitingForDependency", true));
    }
}
