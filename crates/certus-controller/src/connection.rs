//! The `VaultConnection` and `ClusterVaultConnection` controllers: resolve credentials,
//! get the shared session, check Vault (reachable, initialized, unsealed, login works) and
//! report it in status. Checked again every `connection_check_interval`.

use std::fmt::Debug;
use std::sync::Arc;

use certus_api::{
    condition_types, reasons, set_condition, ClusterVaultConnection, Condition, ConditionStatus,
    VaultConnection, VaultConnectionSpec, VaultConnectionStatus,
};
use certus_reconcile::{connection_check, resolve_connection, ConnectionCheck, ReconcileError};
use certus_vault_client::{ErrorClass, Health, VaultSession};
use chrono::{DateTime, Utc};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, instrument, warn};

use crate::backoff::error_action;
use crate::context::Context;
use crate::error::Error;
use crate::status::{self, apply_status, ready, ready_changed};

/// What the connection controllers need from a connection kind.
pub trait ConnectionResource:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// The kind, for metrics and logs.
    const KIND: &'static str;
    /// The connection settings.
    fn connection_spec(&self) -> VaultConnectionSpec;
    /// The namespace Secret and ServiceAccount references default to (`None` for the
    /// cluster-scoped kind, whose references must name their namespace).
    fn own_namespace(&self) -> Option<String>;
    /// The current status.
    fn connection_status(&self) -> Option<&VaultConnectionStatus>;
    /// An API handle for writing this object's status.
    fn api_for(client: kube::Client, obj: &Self) -> Api<Self>;
}

impl ConnectionResource for VaultConnection {
    const KIND: &'static str = "VaultConnection";
    fn connection_spec(&self) -> VaultConnectionSpec {
        self.spec.clone()
    }
    fn own_namespace(&self) -> Option<String> {
        Some(self.namespace().unwrap_or_else(|| "default".into()))
    }
    fn connection_status(&self) -> Option<&VaultConnectionStatus> {
        self.status.as_ref()
    }
    fn api_for(client: kube::Client, obj: &Self) -> Api<Self> {
        Api::namespaced(client, &obj.namespace().unwrap_or_else(|| "default".into()))
    }
}

impl ConnectionResource for ClusterVaultConnection {
    const KIND: &'static str = "ClusterVaultConnection";
    fn connection_spec(&self) -> VaultConnectionSpec {
        self.spec.as_connection_spec()
    }
    fn own_namespace(&self) -> Option<String> {
        None
    }
    fn connection_status(&self) -> Option<&VaultConnectionStatus> {
        self.status.as_ref()
    }
    fn api_for(client: kube::Client, _obj: &Self) -> Api<Self> {
        Api::all(client)
    }
}

/// The reason of a failed connection check: a refused token or login is `LoginFailed`.
pub fn failure_reason(err: &ReconcileError) -> &'static str {
    match err {
        ReconcileError::Vault(e) if e.class == ErrorClass::PermissionDenied => {
            reasons::LOGIN_FAILED
        }
        other => other.reason(),
    }
}

/// Status after a check. `health` is what `sys/health` answered, when it answered.
pub fn connection_status(
    old: &VaultConnectionStatus,
    generation: Option<i64>,
    result: &Result<ConnectionCheck, ReconcileError>,
    health: Option<&Health>,
    now: DateTime<Utc>,
) -> VaultConnectionStatus {
    let mut s = old.clone();
    s.observed_generation = generation;
    s.last_checked = Some(now);
    let health = match result {
        Ok(check) => Some(&check.health),
        Err(_) => health,
    };
    if let Some(h) = health {
        s.vault_version = Some(h.version.clone()).filter(|v| !v.is_empty());
        s.sealed = Some(h.sealed);
    }
    let connected = match health {
        Some(h) if h.initialized && !h.sealed => Condition::new(
            condition_types::CONNECTED,
            ConditionStatus::True,
            reasons::CONNECTED,
            format!("Vault {} is reachable and unsealed", h.version),
            generation,
            now,
        ),
        Some(h) => Condition::new(
            condition_types::CONNECTED,
            ConditionStatus::False,
            reasons::VAULT_UNAVAILABLE,
            if h.sealed {
                "Vault is sealed"
            } else {
                "Vault is not initialized"
            },
            generation,
            now,
        ),
        None => {
            let (reason, message) = match result {
                Err(e) => (failure_reason(e), e.to_string()),
                Ok(_) => (reasons::VAULT_UNAVAILABLE, String::new()),
            };
            let reason = match result {
                // The connection could not even be tried (bad spec, missing Secret).
                Err(ReconcileError::Invalid(_) | ReconcileError::Dependency(_)) => reason,
                _ => reasons::VAULT_UNAVAILABLE,
            };
            Condition::new(
                condition_types::CONNECTED,
                ConditionStatus::False,
                reason,
                message,
                generation,
                now,
            )
        }
    };
    set_condition(&mut s.conditions, connected);
    match result {
        Ok(check) => {
            s.token_policies = check.token.policies.clone();
            set_condition(
                &mut s.conditions,
                ready(
                    true,
                    reasons::CONNECTED,
                    format!(
                        "logged in to Vault {} as {:?}",
                        check.health.version, check.token.display_name
                    ),
                    generation,
                    now,
                ),
            );
        }
        Err(err) => {
            set_condition(
                &mut s.conditions,
                ready(false, failure_reason(err), err.to_string(), generation, now),
            );
        }
    }
    s
}

async fn check<K: ConnectionResource>(
    obj: &K,
    ctx: &Context,
) -> (
    Result<ConnectionCheck, ReconcileError>,
    Option<Arc<VaultSession>>,
) {
    let spec = obj.connection_spec();
    let resolved = resolve_connection(&spec, obj.own_namespace().as_deref(), &ctx.resolver).await;
    let (config, credentials) = match resolved {
        Ok(r) => r,
        Err(e) => return (Err(e), None),
    };
    let session = match ctx.sessions.get(config, credentials).await {
        Ok(s) => s,
        Err(e) => return (Err(e.into()), None),
    };
    (connection_check(&session).await, Some(session))
}

/// Reconciles one connection (entry point of both connection controllers).
#[instrument(skip_all, fields(kind = K::KIND, namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any()))]
pub async fn reconcile<K: ConnectionResource>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(K::KIND);
    let now = status::now();
    let (result, session) = check(obj.as_ref(), &ctx).await;
    // On failure, ask sys/health separately: "reachable but login refused" and
    // "unreachable" are different problems for whoever reads the status.
    let health = match (&result, &session) {
        (Err(_), Some(s)) => s.health().await.ok(),
        _ => None,
    };
    let old = obj.connection_status().cloned().unwrap_or_default();
    let new = connection_status(&old, obj.meta().generation, &result, health.as_ref(), now);
    let api = K::api_for(ctx.client.clone(), &obj);
    apply_status(&api, &obj.name_any(), &new).await?;
    let regarding = obj.object_ref(&());
    match result {
        Ok(check) => {
            if ready_changed(&old.conditions, &new.conditions)
                && certus_api::find_condition(&old.conditions, condition_types::READY)
                    .is_none_or(|c| c.status != ConditionStatus::True)
            {
                info!(version = %check.health.version, "connected to Vault");
                ctx.publish(
                    &regarding,
                    EventType::Normal,
                    "Connected",
                    "CheckConnection",
                    format!(
                        "Logged in to Vault {} at {} ({} auth)",
                        check.health.version,
                        obj.connection_spec().address,
                        session.as_ref().map(|s| s.auth_method()).unwrap_or("token")
                    ),
                )
                .await;
            } else {
                debug!("connection checked");
            }
            ctx.failures
                .reset(&ObjectRef::from_obj(obj.as_ref()).erase());
            Ok(Action::requeue(ctx.options.connection_check_interval))
        }
        Err(err) => {
            if ready_changed(&old.conditions, &new.conditions) {
                warn!(reason = failure_reason(&err), error = %err, "connection check failed");
                ctx.publish(
                    &regarding,
                    EventType::Warning,
                    failure_reason(&err),
                    "CheckConnection",
                    err.to_string(),
                )
                .await;
            }
            Err(err.into())
        }
    }
}

/// Requeue policy: backoff by error class, never less often than the check interval.
pub fn error_policy<K: ConnectionResource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(K::KIND, err.category());
    let cap = ctx.options.connection_check_interval;
    error_action(obj.as_ref(), err, &ctx, Some(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::find_condition;
    use certus_vault_client::{TokenInfo, VaultError};

    fn health(sealed: bool) -> Health {
        Health {
            initialized: true,
            sealed,
            standby: false,
            version: "2.7.2".into(),
        }
    }

    #[test]
    fn healthy_connection_status() {
        let now = DateTime::from_timestamp(100, 0).unwrap();
        let ok = Ok(ConnectionCheck {
            health: health(false),
            token: TokenInfo {
                display_name: "token".into(),
                policies: vec!["operator".into()],
                ..Default::default()
            },
        });
        let s = connection_status(&VaultConnectionStatus::default(), Some(2), &ok, None, now);
        let r = find_condition(&s.conditions, "Ready").unwrap();
        let c = find_condition(&s.conditions, "Connected").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str()),
            (ConditionStatus::True, "Connected")
        );
        assert_eq!(c.status, ConditionStatus::True);
        assert_eq!(s.vault_version.as_deref(), Some("2.7.2"));
        assert_eq!(s.sealed, Some(false));
        assert_eq!(s.token_policies, ["operator"]);
        assert_eq!(
            (s.last_checked, s.observed_generation),
            (Some(now), Some(2))
        );
        assert_eq!(r.observed_generation, Some(2));
    }

    #[test]
    fn login_refused_but_reachable() {
        let now = DateTime::from_timestamp(100, 0).unwrap();
        let err = Err(ReconcileError::Vault(VaultError::new(
            ErrorClass::PermissionDenied,
            "GET auth/token/lookup-self",
            Some(403),
            "permission denied",
        )));
        let s = connection_status(
            &VaultConnectionStatus::default(),
            Some(1),
            &err,
            Some(&health(false)),
            now,
        );
        let r = find_condition(&s.conditions, "Ready").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str()),
            (ConditionStatus::False, "LoginFailed")
        );
        assert!(r.message.contains("permission denied"));
        assert_eq!(
            find_condition(&s.conditions, "Connected").unwrap().status,
            ConditionStatus::True
        );
    }

    #[test]
    fn sealed_and_unreachable() {
        let now = DateTime::from_timestamp(100, 0).unwrap();
        let sealed = Err(ReconcileError::Vault(VaultError::new(
            ErrorClass::Transient,
            "GET sys/health",
            None,
            "Vault is sealed",
        )));
        let s = connection_status(
            &VaultConnectionStatus::default(),
            None,
            &sealed,
            Some(&health(true)),
            now,
        );
        assert_eq!(s.sealed, Some(true));
        let c = find_condition(&s.conditions, "Connected").unwrap();
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, "VaultUnavailable")
        );
        assert_eq!(
            find_condition(&s.conditions, "Ready").unwrap().reason,
            "VaultUnavailable"
        );

        let missing = Err(ReconcileError::Dependency(
            "spec.auth.token.secretRef: Secret ns/t does not exist yet".into(),
        ));
        let s = connection_status(&VaultConnectionStatus::default(), None, &missing, None, now);
        let c = find_condition(&s.conditions, "Connected").unwrap();
        assert_eq!(c.reason, "WaitingForDependency");
        assert_eq!(s.sealed, None);
    }
}
