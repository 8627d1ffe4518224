//! The controllers' error type.

use certus_reconcile::ReconcileError;
use kube::runtime::finalizer;

/// Why a reconcile failed. The reconcile pipelines' own errors are
/// [`ReconcileError`]s (already reported in status); the other variants are failures to
/// talk to Kubernetes about the result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pipeline step failed (reported as `Ready=False`).
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// Writing the status subresource failed.
    #[error("writing the status of {object} failed: {source}")]
    Status {
        object: String,
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A static metrics label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Reconcile(e) => e.category(),
            Error::Status { .. } => "kubernetes_status",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.category()
                }
                _ => "kubernetes_finalizer",
            },
        }
    }

    /// Whether retrying without a change can help.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Reconcile(e) => e.retryable(),
            Error::Status { .. } => true,
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.retryable()
                }
                _ => true,
            },
        }
    }

    /// Unwraps the finalizer helper's error: the apply/cleanup errors are ours.
    pub(crate) fn from_finalizer(e: finalizer::Error<Error>) -> Error {
        match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

/// A Kubernetes API error as a [`ReconcileError::Kubernetes`], without response bodies
/// (a Secret that fails to decode must not end up in a message).
pub(crate) fn kube_error(what: &str, e: &kube::Error) -> ReconcileError {
    ReconcileError::Kubernetes(format!("{what} failed: {}", kube_detail(e)))
}

/// A one-line description of a Kubernetes API error, without response bodies.
pub(crate) fn kube_detail(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {}: {}", s.code, s.message),
        kube::Error::SerdeError(_) => "the response could not be decoded".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_come_from_the_pipeline_error() {
        let e = Error::Reconcile(ReconcileError::Conflict("x".into()));
        assert_eq!((e.category(), e.retryable()), ("conflict", false));
        let e = Error::from_finalizer(finalizer::Error::CleanupFailed(Error::Reconcile(
            ReconcileError::Dependency("x".into()),
        )));
        assert!(matches!(e, Error::Reconcile(ReconcileError::Dependency(_))));
        let e = Error::from_finalizer(finalizer::Error::UnnamedObject);
        assert_eq!(
            (e.category(), e.retryable()),
            ("kubernetes_finalizer", true)
        );
    }

    #[test]
    fn serde_errors_do_not_leak_bodies() {
        let serde = serde_json::from_str::<u8>("\"s3cr3t\"").unwrap_err();
        assert!(serde.to_string().contains("s3cr3t"));
        let e = kube_error("reading Secret ns/x", &kube::Error::SerdeError(serde));
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
}
