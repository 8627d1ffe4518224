//! The pure reconcile core: spec + live Vault state → list of changes.
//!
//! Nothing here performs I/O. The pipelines in `certus-reconcile` read live state, call
//! these functions and execute the resulting changes; the CLI prints them for `plan`.
#![forbid(unsafe_code)]

pub mod change;
pub mod hash;
pub mod policy;

pub use change::{Action, Change, ResourceId};
