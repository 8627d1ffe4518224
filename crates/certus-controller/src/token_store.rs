//! [`KubeTokenStore`]: the operator's Vault login tokens in Secrets of its own namespace,
//! so a restarted operator or a new leader adopts the token that issued the leases
//! instead of logging in anew (see [`certus_vault_client::TokenStore`]).
//!
//! One Secret per Vault role, `certus-vault-token-<hash>` (the hash of the address,
//! namespace, login method and role, not of the SecretID or JWT: a rotated SecretID
//! replaces the saved token), type `Opaque`, keys `token` and
//! `accessor`, labelled `app.kubernetes.io/managed-by: certus-vault-operator` and
//! `app.kubernetes.io/component: vault-token`. Written with server-side apply; removed
//! when the operator revokes the token on shutdown (it keeps tokens that issued leases).
//! Who can read Secrets in the operator's namespace can use the token: the same people
//! who can read the AppRole SecretIDs or request the operator's ServiceAccount tokens
//! there. `--persist-vault-tokens=false` turns it off.

use std::collections::BTreeMap;

use certus_api::FIELD_MANAGER;
use certus_vault_client::{PersistedToken, SecretString, TokenStore};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Client;

use crate::error::kube_detail;

/// Prefix of the Secrets' names.
pub const SECRET_PREFIX: &str = "certus-vault-token-";
/// `app.kubernetes.io/component` of the Secrets.
pub const COMPONENT: &str = "vault-token";

/// Saves Vault login tokens in Secrets of one namespace (the operator's).
#[derive(Clone)]
pub struct KubeTokenStore {
    api: Api<Secret>,
    namespace: String,
}

impl KubeTokenStore {
    pub fn new(client: Client, namespace: &str) -> Self {
        KubeTokenStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    /// The Secret that holds the token saved under `key`.
    pub fn secret_name(key: &str) -> String {
        format!("{SECRET_PREFIX}{key}")
    }

    fn what(&self, key: &str) -> String {
        format!("Secret {}/{}", self.namespace, Self::secret_name(key))
    }
}

fn text(data: &BTreeMap<String, k8s_openapi::ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.is_empty())
}

impl TokenStore for KubeTokenStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<PersistedToken>, String>> {
        Box::pin(async move {
            let secret = self
                .api
                .get_opt(&Self::secret_name(key))
                .await
                .map_err(|e| format!("reading {}: {}", self.what(key), kube_detail(&e)))?;
            let Some(data) = secret.and_then(|s| s.data) else {
                return Ok(None);
            };
            Ok(match (text(&data, "token"), text(&data, "accessor")) {
                (Some(token), Some(accessor)) => Some(PersistedToken {
                    token: SecretString::new(token),
                    accessor,
                }),
                _ => None,
            })
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        token: &'a PersistedToken,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let bytes = |s: &str| k8s_openapi::ByteString(s.as_bytes().to_vec());
            let body = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(Self::secret_name(key)),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(BTreeMap::from([
                        ("app.kubernetes.io/managed-by".to_string(), FIELD_MANAGER.to_string()),
                        ("app.kubernetes.io/component".to_string(), COMPONENT.to_string()),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        "vault.certus.io/description".to_string(),
                        "The operator's Vault login token, kept so a restarted operator renews it instead of logging in anew (the leases it issued stay valid). Deleting it is safe: the operator then logs in anew.".to_string(),
                    )])),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(BTreeMap::from([
                    ("token".to_string(), bytes(token.token.expose())),
                    ("accessor".to_string(), bytes(&token.accessor)),
                ])),
                ..Default::default()
            };
            self.api
                .patch(
                    &Self::secret_name(key),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map(|_| ())
                .map_err(|e| format!("writing {}: {}", self.what(key), kube_detail(&e)))
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match self
                .api
                .delete(&Self::secret_name(key), &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(format!("deleting {}: {}", self.what(key), kube_detail(&e))),
            }
        })
    }
}
