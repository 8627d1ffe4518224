//! The pure reconcile core: spec + live Vault state → list of changes.
//!
//! Nothing here performs I/O. The pipelines in `certus-reconcile` read live state, call
//! these functions and execute the resulting changes; the CLI prints them for `plan`.
#![forbid(unsafe_code)]

pub mod auth_method;
pub mod change;
pub mod engine;
pub mod hash;
pub mod lease;
pub mod mount;
pub mod object;
pub mod policy;
pub mod role;
pub mod rotation;
pub mod template;
pub mod ttl;

pub use change::{Action, Change, ResourceId};
