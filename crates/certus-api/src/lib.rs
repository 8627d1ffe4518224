//! Custom resource types of certus-vault-operator, API group `vault.certus.io/v1alpha1`.
//!
//! This crate performs no I/O: it holds the serde/schemars types that become the CRDs,
//! plus small pure helpers about them (condition handling, defaults).
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth_method;
pub mod common;
pub mod config_status;
pub mod connection;
pub mod dynamic;
pub mod engine;
pub mod policy;
pub mod projection;
pub mod role;
pub mod rotation;
pub mod static_secret;

pub use audit::*;
pub use auth_method::*;
pub use common::*;
pub use config_status::*;
pub use connection::*;
pub use dynamic::*;
pub use engine::*;
pub use policy::*;
pub use projection::*;
pub use role::*;
pub use rotation::*;
pub use static_secret::*;

/// The API group of every kind.
pub const GROUP: &str = "vault.certus.io";
/// The API version of every kind.
pub const VERSION: &str = "v1alpha1";
/// `group/version`.
pub const API_VERSION: &str = "vault.certus.io/v1alpha1";
/// The finalizer the operator puts on resources whose deletion must clean up Vault.
pub const FINALIZER: &str = "vault.certus.io/finalizer";
/// Field manager used for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "certus-vault-operator";
/// Annotation that lets a resource take over an object that already exists in Vault
/// and carries another owner's marker.
pub const ADOPT_ANNOTATION: &str = "vault.certus.io/adopt";

/// All CustomResourceDefinitions, in a stable order (used by `certus-vault crds`).
pub fn all_crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        VaultConnection::crd(),
        ClusterVaultConnection::crd(),
        VaultPolicy::crd(),
        SecretEngine::crd(),
        AuthMethod::crd(),
        VaultRole::crd(),
        AuditAlertRule::crd(),
        DynamicCredential::crd(),
        StaticSecret::crd(),
        RotationPolicy::crd(),
    ]
}
