//! Reconcile pipelines shared by the operator and the CLI.
//!
//! Each pipeline runs the same steps: resolve references → validate (pure) → compute
//! desired state (pure, `certus-core`) → read live Vault state → diff → write (only in
//! [`Mode::Apply`], only when something differs) → report an outcome the caller turns
//! into status, Events or plan output. Validation happens before any Vault request, so a
//! bad spec never changes Vault.
#![forbid(unsafe_code)]

pub mod auth_method;
pub mod config;
pub mod connection;
pub mod dynamic;
pub mod engine;
pub mod error;
pub mod order;
pub mod policy;
pub mod role;
pub mod rotation;
pub mod sink;
pub mod static_secret;

pub use config::{ConfigOutcome, LastApplied, RoleIdOutput};
pub use connection::{connection_check, resolve_connection, ConnectionCheck, Resolver};
pub use error::ReconcileError;
pub use order::{apply_all, apply_all_concurrent, Applied, Outcome, Resource};

/// Whether a pipeline may write to Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read live state and compute changes; write nothing.
    Plan,
    /// Make the changes.
    Apply,
}
