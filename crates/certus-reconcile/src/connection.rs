//! Turning a `VaultConnection` spec into a session configuration and credentials.

use std::future::Future;
use std::time::Duration;

use certus_api::{parse_duration, SecretKeyRef, VaultConnectionSpec};
use certus_vault_client::{
    ConnectionConfig, Credentials, Health, JwtSource, SecretString, TokenInfo, VaultSession,
};

use crate::error::ReconcileError;

/// Where secret material comes from: the Kubernetes API for the operator, the manifest
/// directory for the CLI.
pub trait Resolver: Send + Sync {
    /// The value of one key of a Secret; `Ok(None)` when the Secret or key is missing.
    fn secret_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<SecretString>, ReconcileError>> + Send;

    /// A source of ServiceAccount tokens (TokenRequest API) for Kubernetes auth.
    fn service_account_jwt(
        &self,
        namespace: &str,
        name: &str,
        audiences: Vec<String>,
    ) -> Result<JwtSource, ReconcileError>;
}

/// Default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

async fn secret<R: Resolver>(
    resolver: &R,
    r: &SecretKeyRef,
    own_namespace: Option<&str>,
    field: &str,
) -> Result<SecretString, ReconcileError> {
    let ns = match (own_namespace, r.namespace.as_deref()) {
        (Some(own), None) => own.to_string(),
        (Some(own), Some(ns)) if ns == own => own.to_string(),
        (Some(own), Some(ns)) => {
            return Err(ReconcileError::Invalid(format!(
                "{field}.namespace: {ns:?} differs from the resource's namespace {own:?}; a namespaced resource may only read Secrets in its own namespace (remove the field, or use a ClusterVaultConnection)"
            )))
        }
        (None, Some(ns)) => ns.to_string(),
        (None, None) => return Err(ReconcileError::Invalid(format!("{field}.namespace is required on a cluster-scoped connection"))),
    };
    match resolver.secret_value(&ns, &r.name, &r.key).await? {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(ReconcileError::Dependency(format!(
            "{field}: key {:?} of Secret {ns}/{} is empty",
            r.key, r.name
        ))),
        None => Err(ReconcileError::Dependency(format!(
            "{field}: Secret {ns}/{} or its key {:?} does not exist yet",
            r.name, r.key
        ))),
    }
}

/// Builds the connection config and credentials of a connection spec.
/// `own_namespace` is the connection's namespace (`None` for `ClusterVaultConnection`).
pub async fn resolve_connection<R: Resolver>(
    spec: &VaultConnectionSpec,
    own_namespace: Option<&str>,
    resolver: &R,
) -> Result<(ConnectionConfig, Credentials), ReconcileError> {
    let mut config = ConnectionConfig::new(spec.address.trim_end_matches('/'));
    if !(config.address.starts_with("http://") || config.address.starts_with("https://")) {
        return Err(ReconcileError::Invalid(format!(
            "spec.address {:?} must start with http:// or https://",
            spec.address
        )));
    }
    config.namespace = spec.vault_namespace.clone().filter(|n| !n.is_empty());
    config.timeout = match &spec.timeout {
        Some(t) => {
            parse_duration(t).map_err(|e| ReconcileError::Invalid(format!("spec.timeout: {e}")))?
        }
        None => DEFAULT_TIMEOUT,
    };
    if let Some(tls) = &spec.tls {
        config.server_name = tls.server_name.clone().filter(|n| !n.is_empty());
        config.insecure_skip_verify = tls.insecure_skip_verify;
        config.ca_pem = match (&tls.ca_bundle, &tls.ca_secret_ref) {
            (Some(_), Some(_)) => {
                return Err(ReconcileError::Invalid(
                    "spec.tls: set at most one of caBundle and caSecretRef".into(),
                ))
            }
            (Some(pem), None) => Some(pem.clone()),
            (None, Some(r)) => Some(
                secret(resolver, r, own_namespace, "spec.tls.caSecretRef")
                    .await?
                    .expose()
                    .to_string(),
            ),
            (None, None) => None,
        };
    }
    let auth = &spec.auth;
    let set = [
        auth.kubernetes.is_some(),
        auth.app_role.is_some(),
        auth.jwt.is_some(),
        auth.token.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(ReconcileError::Invalid(
            "spec.auth: set exactly one of kubernetes, appRole, jwt, token".into(),
        ));
    }
    let credentials = if let Some(k) = &auth.kubernetes {
        let ns = service_account_namespace(
            own_namespace,
            k.service_account_namespace.as_deref(),
            "spec.auth.kubernetes",
        )?;
        let audiences = audiences_or_vault(&k.audiences);
        let jwt = resolver.service_account_jwt(&ns, &k.service_account_name, audiences)?;
        Credentials::Kubernetes {
            mount: k.mount.trim_matches('/').to_string(),
            role: k.role.clone(),
            identity: format!("{ns}/{}", k.service_account_name),
            jwt,
        }
    } else if let Some(a) = &auth.app_role {
        let secret_id = secret(
            resolver,
            &a.secret_id_ref,
            own_namespace,
            "spec.auth.appRole.secretIdRef",
        )
        .await?;
        Credentials::AppRole {
            mount: a.mount.trim_matches('/').to_string(),
            role_id: a.role_id.clone(),
            secret_id,
        }
    } else if let Some(j) = &auth.jwt {
        let mount = j.mount.trim_matches('/').to_string();
        match (&j.service_account_name, &j.secret_ref) {
            (Some(sa), None) => {
                let ns = service_account_namespace(
                    own_namespace,
                    j.service_account_namespace.as_deref(),
                    "spec.auth.jwt",
                )?;
                let jwt =
                    resolver.service_account_jwt(&ns, sa, audiences_or_vault(&j.audiences))?;
                Credentials::Jwt {
                    mount,
                    role: j.role.clone(),
                    identity: format!("serviceaccount:{ns}/{sa}"),
                    jwt,
                }
            }
            (None, Some(r)) => {
                let value = secret(resolver, r, own_namespace, "spec.auth.jwt.secretRef").await?;
                // A new JWT in the Secret is a new identity (a new session logs in with
                // it), as for a new AppRole SecretID; only a hash names it.
                let hash = certus_core::hash::short_hash(value.expose().as_bytes());
                let ns = r
                    .namespace
                    .clone()
                    .or_else(|| own_namespace.map(str::to_string))
                    .unwrap_or_default();
                let jwt: JwtSource = std::sync::Arc::new(move || {
                    let value = value.clone();
                    Box::pin(async move { Ok(value) })
                });
                Credentials::Jwt {
                    mount,
                    role: j.role.clone(),
                    identity: format!("secret:{ns}/{}/{}#{hash}", r.name, r.key),
                    jwt,
                }
            }
            _ => {
                return Err(ReconcileError::Invalid(
                    "spec.auth.jwt: set exactly one of serviceAccountName and secretRef".into(),
                ))
            }
        }
    } else if let Some(t) = &auth.token {
        Credentials::Token(
            secret(
                resolver,
                &t.secret_ref,
                own_namespace,
                "spec.auth.token.secretRef",
            )
            .await?,
        )
    } else {
        unreachable!("exactly one auth method checked above")
    };
    Ok((config, credentials))
}

/// The namespace of the ServiceAccount a login presents: the connection's own for a
/// `VaultConnection` (the field must be empty or equal), the field for a
/// `ClusterVaultConnection` (required there).
fn service_account_namespace(
    own_namespace: Option<&str>,
    field: Option<&str>,
    at: &str,
) -> Result<String, ReconcileError> {
    match (own_namespace, field) {
        (Some(own), None) => Ok(own.to_string()),
        (Some(own), Some(ns)) if ns == own => Ok(own.to_string()),
        (Some(_), Some(_)) => Err(ReconcileError::Invalid(format!("{at}.serviceAccountNamespace must be empty on a VaultConnection (the connection's namespace is used)"))),
        (None, Some(ns)) => Ok(ns.to_string()),
        (None, None) => Err(ReconcileError::Invalid(format!("{at}.serviceAccountNamespace is required on a ClusterVaultConnection"))),
    }
}

fn audiences_or_vault(audiences: &[String]) -> Vec<String> {
    if audiences.is_empty() {
        vec!["vault".to_string()]
    } else {
        audiences.to_vec()
    }
}

/// What a connection check found.
#[derive(Clone, Debug)]
pub struct ConnectionCheck {
    pub health: Health,
    pub token: TokenInfo,
}

/// Checks a session: Vault reachable, initialized, unsealed, login works.
pub async fn connection_check(session: &VaultSession) -> Result<ConnectionCheck, ReconcileError> {
    let health = session.health().await?;
    if !health.initialized {
        return Err(ReconcileError::Vault(certus_vault_client::VaultError::new(
            certus_vault_client::ErrorClass::Transient,
            "GET sys/health",
            None,
            "Vault is not initialized",
        )));
    }
    if health.sealed {
        return Err(ReconcileError::Vault(certus_vault_client::VaultError::new(
            certus_vault_client::ErrorClass::Transient,
            "GET sys/health",
            None,
            "Vault is sealed",
        )));
    }
    let token = session.token_info().await?;
    Ok(ConnectionCheck { health, token })
}
