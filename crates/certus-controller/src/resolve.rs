//! Resolving references through the Kubernetes API: which connection a resource uses,
//! Secret values and ServiceAccount tokens.

use std::fmt;
use std::sync::Arc;

use certus_api::{ClusterVaultConnection, ConnectionKind, ConnectionRef, VaultConnection};
use certus_reconcile::{resolve_connection, ReconcileError, Resolver};
use certus_vault_client::{ErrorClass, JwtSource, SecretString, VaultError, VaultSession};
use futures::FutureExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::context::Context;
use crate::error::{kube_detail, kube_error};

/// Lifetime requested for ServiceAccount tokens used to log in to Vault.
pub const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 600;

/// The connection a resource is reconciled through.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionKey {
    /// A `VaultConnection` in `namespace`.
    Namespaced { namespace: String, name: String },
    /// A `ClusterVaultConnection`.
    Cluster { name: String },
}

/// The name of the connection used when `spec.connectionRef` is omitted.
pub const DEFAULT_CONNECTION: &str = "default";

impl ConnectionKey {
    /// The connection named by `connection_ref` for a resource in `namespace`; without a
    /// reference, the `VaultConnection` named `default` in that namespace.
    pub fn for_ref(namespace: &str, connection_ref: Option<&ConnectionRef>) -> Self {
        match connection_ref {
            None => ConnectionKey::Namespaced {
                namespace: namespace.to_string(),
                name: DEFAULT_CONNECTION.to_string(),
            },
            Some(r) => match r.kind {
                ConnectionKind::VaultConnection => ConnectionKey::Namespaced {
                    namespace: namespace.to_string(),
                    name: r.name.clone(),
                },
                ConnectionKind::ClusterVaultConnection => ConnectionKey::Cluster {
                    name: r.name.clone(),
                },
            },
        }
    }
}

impl fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionKey::Namespaced { namespace, name } => {
                write!(f, "VaultConnection {namespace}/{name}")
            }
            ConnectionKey::Cluster { name } => write!(f, "ClusterVaultConnection {name}"),
        }
    }
}

/// [`Resolver`] over the Kubernetes API: Secret keys via GET, ServiceAccount JWTs via the
/// TokenRequest API. Values are returned as [`SecretString`] and never logged.
#[derive(Clone)]
pub struct KubeResolver {
    client: Client,
}

impl KubeResolver {
    pub fn new(client: Client) -> Self {
        KubeResolver { client }
    }
}

impl Resolver for KubeResolver {
    async fn secret_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<SecretString>, ReconcileError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| kube_error(&format!("reading Secret {namespace}/{name}"), &e))?;
        let Some(secret) = secret else {
            return Ok(None);
        };
        if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) {
            let value = String::from_utf8(bytes.0.clone()).map_err(|_| {
                ReconcileError::Invalid(format!(
                    "key {key:?} of Secret {namespace}/{name} is not UTF-8 text"
                ))
            })?;
            return Ok(Some(SecretString::new(value)));
        }
        // `stringData` is write-only on a real API server, but fakes and tests may set it.
        Ok(secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| SecretString::new(v.clone())))
    }

    fn service_account_jwt(
        &self,
        namespace: &str,
        name: &str,
        audiences: Vec<String>,
    ) -> Result<JwtSource, ReconcileError> {
        let client = self.client.clone();
        let namespace = namespace.to_string();
        let name = name.to_string();
        Ok(Arc::new(move || {
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
            let (namespace, name, audiences) = (namespace.clone(), name.clone(), audiences.clone());
            async move {
                let request = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences,
                        expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                        bound_object_ref: None,
                    },
                    ..Default::default()
                };
                let op = format!("TokenRequest for ServiceAccount {namespace}/{name}");
                let response = api
                    .create_token_request(&name, &PostParams::default(), &request)
                    .await
                    .map_err(|e| {
                        let class = match &e {
                            kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
                                ErrorClass::PermissionDenied
                            }
                            kube::Error::Api(s) if s.code == 404 => ErrorClass::NotFound,
                            _ => ErrorClass::Transient,
                        };
                        VaultError::new(class, op.clone(), None, kube_detail(&e))
                    })?;
                let token = response
                    .status
                    .map(|s| s.token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        VaultError::new(
                            ErrorClass::Transient,
                            op,
                            None,
                            "the API server returned no token",
                        )
                    })?;
                Ok(SecretString::new(token))
            }
            .boxed()
        }))
    }
}

/// Finds the connection of a resource in `namespace`, checks it may be used, resolves its
/// credentials and returns the shared session for that identity.
pub async fn session_for(
    ctx: &Context,
    namespace: &str,
    connection_ref: Option<&ConnectionRef>,
) -> Result<Arc<VaultSession>, ReconcileError> {
    let key = ConnectionKey::for_ref(namespace, connection_ref);
    let (spec, own_namespace) = match &key {
        ConnectionKey::Namespaced {
            namespace: ns,
            name,
        } => {
            let api: Api<VaultConnection> = Api::namespaced(ctx.client.clone(), ns);
            let conn = api
                .get_opt(name)
                .await
                .map_err(|e| kube_error(&format!("reading {key}"), &e))?
                .ok_or_else(|| {
                    let hint = if connection_ref.is_none() {
                        " (spec.connectionRef is not set, so the VaultConnection named \"default\" in the resource's namespace is used)"
                    } else {
                        ""
                    };
                    ReconcileError::Dependency(format!("{key} does not exist{hint}"))
                })?;
            (conn.spec, Some(ns.clone()))
        }
        ConnectionKey::Cluster { name } => {
            let api: Api<ClusterVaultConnection> = Api::all(ctx.client.clone());
            let conn = api
                .get_opt(name)
                .await
                .map_err(|e| kube_error(&format!("reading {key}"), &e))?
                .ok_or_else(|| ReconcileError::Dependency(format!("{key} does not exist")))?;
            if !conn.spec.allows_namespace(namespace) {
                return Err(ReconcileError::NotAllowed(format!(
                    "{key} does not admit namespace {namespace:?}: add it (or \"*\") to its spec.allowedNamespaces"
                )));
            }
            (conn.spec.as_connection_spec(), None)
        }
    };
    let (config, credentials) =
        resolve_connection(&spec, own_namespace.as_deref(), &ctx.resolver).await?;
    Ok(ctx.sessions.get(config, credentials).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_connection_is_the_namespaces_default() {
        assert_eq!(
            ConnectionKey::for_ref("team-a", None),
            ConnectionKey::Namespaced {
                namespace: "team-a".into(),
                name: "default".into()
            }
        );
        let cluster = ConnectionRef {
            name: "shared".into(),
            kind: ConnectionKind::ClusterVaultConnection,
        };
        assert_eq!(
            ConnectionKey::for_ref("team-a", Some(&cluster)),
            ConnectionKey::for_ref("team-b", Some(&cluster))
        );
        let ns = ConnectionRef {
            name: "vault".into(),
            kind: ConnectionKind::VaultConnection,
        };
        assert_ne!(
            ConnectionKey::for_ref("team-a", Some(&ns)),
            ConnectionKey::for_ref("team-b", Some(&ns))
        );
        assert_eq!(
            ConnectionKey::for_ref("team-a", Some(&ns)).to_string(),
            "VaultConnection team-a/vault"
        );
    }
}
