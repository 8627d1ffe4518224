//! AuthMethod: validate the spec and compute the desired auth mount and configuration.

use certus_api::AuthMethodSpec;

use crate::mount::{tune_fields, validate_path, validate_type, DesiredMount, MountTable};
use crate::object::{applied_hash, ConfigError, DesiredObject, SecretField, Want};

/// Everything an AuthMethod wants in Vault.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredAuth {
    pub mount: DesiredMount,
    /// `auth/<path>/config`, when the type has typed configuration in the spec.
    pub config: Option<DesiredObject>,
}

impl DesiredAuth {
    /// The resource's applied hash (call after the reconcile layer set secret hashes).
    pub fn hash(&self) -> String {
        let mut parts = vec![self.mount.fingerprint()];
        parts.extend(self.config.iter().map(DesiredObject::fingerprint));
        applied_hash(parts.iter().map(String::as_str))
    }
}

fn trimmed(v: &[String]) -> Vec<String> {
    v.iter().map(|s| s.trim().to_string()).collect()
}

/// Validates a spec and computes the desired state. Pure.
pub fn desired(spec: &AuthMethodSpec) -> Result<DesiredAuth, ConfigError> {
    let path = validate_path(MountTable::Auth, &spec.path)?;
    let t = spec.type_.trim();
    validate_type(t)?;
    if t == "token" {
        return Err(ConfigError::new(
            "spec.type",
            "the token auth method is built into Vault and cannot be managed",
        ));
    }
    if spec.kubernetes.is_some() && t != "kubernetes" {
        return Err(ConfigError::new(
            "spec.kubernetes",
            format!("only valid with spec.type kubernetes (spec.type is {t})"),
        ));
    }
    if spec.jwt.is_some() && !matches!(t, "jwt" | "oidc") {
        return Err(ConfigError::new(
            "spec.jwt",
            format!("only valid with spec.type jwt or oidc (spec.type is {t})"),
        ));
    }
    let mount = DesiredMount {
        table: MountTable::Auth,
        path: path.clone(),
        spec_type: t.to_string(),
        vault_type: t.to_string(),
        options: Default::default(),
        tune: tune_fields(spec.description.as_ref(), spec.tune.as_ref())?,
    };
    let target = format!("auth/{path}/config");
    let mut config = None;
    if let Some(k) = &spec.kubernetes {
        if k.kubernetes_host.trim().is_empty() {
            return Err(ConfigError::new(
                "spec.kubernetes.kubernetesHost",
                "must not be empty",
            ));
        }
        if k.disable_local_ca_jwt == Some(true) && k.kubernetes_ca_cert.is_none() {
            return Err(ConfigError::new(
                "spec.kubernetes.kubernetesCACert",
                "is required when disableLocalCAJWT is true",
            ));
        }
        let mut o = DesiredObject::new(target.clone())
            .field(
                "kubernetes_host",
                Want::Str(k.kubernetes_host.trim().to_string()),
            )
            .opt(
                "kubernetes_ca_cert",
                k.kubernetes_ca_cert.clone().map(Want::Text),
            )
            .opt("issuer", k.issuer.clone().map(Want::Str))
            .opt(
                "disable_local_ca_jwt",
                k.disable_local_ca_jwt.map(Want::Bool),
            )
            .set("pem_keys", &trimmed(&k.pem_keys));
        if let Some(r) = &k.token_reviewer_jwt_secret_ref {
            o.secrets.push(SecretField {
                key: "token_reviewer_jwt".into(),
                field: "spec.kubernetes.tokenReviewerJWTSecretRef".into(),
                secret_ref: r.clone(),
            });
        }
        config = Some(o);
    }
    if let Some(j) = &spec.jwt {
        let ways = [
            j.oidc_discovery_url.is_some(),
            j.jwks_url.is_some(),
            !j.jwt_validation_pubkeys.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if ways != 1 {
            return Err(ConfigError::new(
                "spec.jwt",
                "set exactly one of oidcDiscoveryURL, jwksURL and jwtValidationPubkeys",
            ));
        }
        if j.oidc_client_secret_ref.is_some() && j.oidc_client_id.is_none() {
            return Err(ConfigError::new(
                "spec.jwt.oidcClientSecretRef",
                "needs oidcClientID",
            ));
        }
        let mut o = DesiredObject::new(target)
            .opt(
                "oidc_discovery_url",
                j.oidc_discovery_url.clone().map(Want::Str),
            )
            .opt(
                "oidc_discovery_ca_pem",
                j.oidc_discovery_ca_pem.clone().map(Want::Text),
            )
            .opt("oidc_client_id", j.oidc_client_id.clone().map(Want::Str))
            .opt("jwks_url", j.jwks_url.clone().map(Want::Str))
            .set(
                "jwt_validation_pubkeys",
                &trimmed(&j.jwt_validation_pubkeys),
            )
            .opt("bound_issuer", j.bound_issuer.clone().map(Want::Str))
            .opt("default_role", j.default_role.clone().map(Want::Str))
            .set("jwt_supported_algs", &j.jwt_supported_algs);
        if let Some(r) = &j.oidc_client_secret_ref {
            o.secrets.push(SecretField {
                key: "oidc_client_secret".into(),
                field: "spec.jwt.oidcClientSecretRef".into(),
                secret_ref: r.clone(),
            });
        }
        config = Some(o);
    }
    Ok(DesiredAuth { mount, config })
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::{
        DeletionPolicy, DriftPolicy, JwtAuthConfig, KubernetesAuthConfig, SecretKeyRef,
    };
    use serde_json::Value;

    fn auth(path: &str, t: &str) -> AuthMethodSpec {
        AuthMethodSpec {
            connection_ref: None,
            path: path.into(),
            type_: t.into(),
            description: None,
            tune: None,
            kubernetes: None,
            jwt: None,
            deletion_policy: DeletionPolicy::Retain,
            drift_policy: DriftPolicy::Correct,
        }
    }

    #[test]
    fn kubernetes_config() {
        let d = desired(&AuthMethodSpec {
            kubernetes: Some(KubernetesAuthConfig {
                kubernetes_host: "https://kubernetes.default.svc:443".into(),
                kubernetes_ca_cert: Some(
                    "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n".into(),
                ),
                token_reviewer_jwt_secret_ref: Some(SecretKeyRef {
                    name: "reviewer".into(),
                    key: "token".into(),
                    namespace: None,
                }),
                issuer: None,
                disable_local_ca_jwt: Some(true),
                pem_keys: vec![],
            }),
            ..auth("kubernetes", "kubernetes")
        })
        .unwrap();
        assert_eq!(d.mount.target(), "sys/auth/kubernetes");
        let c = d.config.unwrap();
        assert_eq!(c.path, "auth/kubernetes/config");
        assert_eq!(c.secrets[0].key, "token_reviewer_jwt");
        // Vault returns PEM without the trailing newline and never the reviewer JWT.
        let live = serde_json::json!({"kubernetes_host": "https://kubernetes.default.svc:443",
            "kubernetes_ca_cert": "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----",
            "disable_local_ca_jwt": true, "token_reviewer_jwt_set": true, "pem_keys": []});
        assert!(c.diff(&live).is_empty());
    }

    #[test]
    fn jwt_config_and_errors() {
        let d = desired(&AuthMethodSpec {
            jwt: Some(JwtAuthConfig {
                jwt_validation_pubkeys: vec!["PEM\n".into()],
                default_role: Some("developer".into()),
                ..Default::default()
            }),
            ..auth("oidc", "oidc")
        })
        .unwrap();
        assert_eq!(
            Value::Object(d.config.unwrap().body()),
            serde_json::json!({"jwt_validation_pubkeys": ["PEM"], "default_role": "developer"})
        );
        let e = desired(&AuthMethodSpec {
            jwt: Some(JwtAuthConfig::default()),
            ..auth("oidc", "oidc")
        })
        .unwrap_err();
        assert_eq!(e.field, "spec.jwt");
        let e = desired(&AuthMethodSpec {
            jwt: Some(JwtAuthConfig::default()),
            ..auth("approle", "approle")
        })
        .unwrap_err();
        assert_eq!(e.field, "spec.jwt");
        assert_eq!(
            desired(&auth("token", "token")).unwrap_err().field,
            "spec.path"
        );
        let plain = desired(&auth("approle", "approle")).unwrap();
        assert!(plain.config.is_none());
        assert_eq!(
            plain.mount.create_body(),
            serde_json::json!({"type": "approle", "config": {}})
        );
    }
}
