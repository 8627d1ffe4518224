//! Small fixture builders for tests (this crate's and its integration tests). Pure, no I/O.
#![doc(hidden)]

use certus_api::{
    ConnectionKind, ConnectionRef, DeletionPolicy, DriftPolicy, VaultPolicy, VaultPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A `VaultPolicy` with valid HCL rules, generation 1, a uid and a creation timestamp.
pub fn policy(namespace: &str, name: &str) -> VaultPolicy {
    let mut p = VaultPolicy::new(
        name,
        VaultPolicySpec {
            connection_ref: None,
            name: None,
            rules: Some(
                "path \"secret/data/app/*\" {\n  capabilities = [\"read\", \"list\"]\n}\n".into(),
            ),
            paths: None,
            deletion_policy: DeletionPolicy::Delete,
            drift_policy: DriftPolicy::Correct,
        },
    );
    p.metadata.namespace = Some(namespace.to_string());
    p.metadata.uid = Some(format!("uid-{namespace}-{name}"));
    p.metadata.generation = Some(1);
    p.metadata.resource_version = Some("1".into());
    p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_000).unwrap()));
    p
}

/// Builder methods on `VaultPolicy`.
pub trait PolicyExt: Sized {
    /// Sets `spec.name`.
    fn named(self, vault_name: &str) -> Self;
    /// Sets `creationTimestamp` to `1_700_000_000 + secs`.
    fn created(self, secs: i64) -> Self;
    /// Sets `deletionTimestamp` to `secs_ago` seconds before now.
    fn deleting(self, secs_ago: i64) -> Self;
    /// Uses the `ClusterVaultConnection` `name`.
    fn via_cluster(self, name: &str) -> Self;
    /// Uses the `VaultConnection` `name` of the namespace.
    fn via(self, name: &str) -> Self;
    /// Replaces the HCL rules.
    fn with_rules(self, rules: &str) -> Self;
    /// Adds the operator's finalizer.
    fn with_finalizer(self) -> Self;
    /// Sets `deletionPolicy`.
    fn deletion(self, policy: DeletionPolicy) -> Self;
}

impl PolicyExt for VaultPolicy {
    fn named(mut self, vault_name: &str) -> Self {
        self.spec.name = Some(vault_name.to_string());
        self
    }
    fn created(mut self, secs: i64) -> Self {
        self.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(1_700_000_000 + secs).unwrap()));
        self
    }
    fn deleting(mut self, secs_ago: i64) -> Self {
        let now = Timestamp::now().as_second();
        self.metadata.deletion_timestamp =
            Some(Time(Timestamp::from_second(now - secs_ago).unwrap()));
        self
    }
    fn via_cluster(mut self, name: &str) -> Self {
        self.spec.connection_ref = Some(ConnectionRef {
            name: name.to_string(),
            kind: ConnectionKind::ClusterVaultConnection,
        });
        self
    }
    fn via(mut self, name: &str) -> Self {
        self.spec.connection_ref = Some(ConnectionRef {
            name: name.to_string(),
            kind: ConnectionKind::VaultConnection,
        });
        self
    }
    fn with_rules(mut self, rules: &str) -> Self {
        self.spec.rules = Some(rules.to_string());
        self.spec.paths = None;
        self
    }
    fn with_finalizer(mut self) -> Self {
        self.metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(certus_api::FINALIZER.to_string());
        self
    }
    fn deletion(mut self, policy: DeletionPolicy) -> Self {
        self.spec.deletion_policy = policy;
        self
    }
}
