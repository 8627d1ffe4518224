//! The DynamicCredential pipeline: validate (pure) → read the Secret and the lease state
//! persisted in its annotations → revoke superseded credentials whose grace period ended
//! → decide (pure, [`certus_core::lease`]) → issue / renew / wait → write the Secret →
//! restart workloads when the credential changed.
//!
//! Where the lease state lives. The Secret's `vault.certus.io/lease-state` annotation
//! (compact JSON: lease id / accessor / serial, issue and expiry times, the spec hash it
//! was issued for, the data hash, the issuing token's accessor hash and expiry, and the
//! superseded credentials still waiting for revocation) is the source of truth: a
//! restarted operator, or a second `certus-vault apply`, resumes renewing from it instead
//! of issuing again. A [`LeaseMemory`] mirrors it in the process, so a deleted Secret
//! (or one whose annotations were stripped) still lets the old lease be superseded and
//! revoked. Status only ever shows a hash of the lease id.
//!
//! Renewals are written back to the annotations. Not strictly needed (a stale expiry
//! only makes a restarted operator renew early — see `certus_core::lease`), but it keeps
//! the issuing token's expiry current, which spreads the re-issues a restart can require
//! (see [`certus_core::lease::token_deadline`]), and keeps the CLI's output files exact.
//! A failed write after a successful renewal is therefore only a warning.
//!
//! Failure handling. Vault errors while issuing or renewing leave the existing Secret as
//! it is and return the error (the caller backs off with jitter). A Secret write that
//! fails right after an issue revokes the just-issued credential at once, so it is never
//! orphaned. A failed revocation of a superseded credential is retried a minute later.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use certus_api::{
    annotations, condition_types, parse_duration, reasons, set_condition, Condition,
    ConditionStatus, DynamicCredential, DynamicCredentialStatus, IssueMethod, LeaseKind,
    DEFAULT_GRACE_PERIOD, VAULT_AVAILABLE,
};
use certus_core::hash::short_hash;
use certus_core::lease::{
    self, CurrentToken, IssueReason, Issued, LeaseRef, LeaseState, Persisted, Schedule, Step,
    Superseded, Timing,
};
use certus_core::{Action, Change, ResourceId};
use certus_vault_client::{ErrorClass, VaultError, VaultSession};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::ReconcileError;
use crate::sink::{data_hash, LiveSecret, Owner, Restarter, SecretDraft, SecretStore};

/// Annotation holding the persisted lease state (JSON) on the Secret.
pub const LEASE_STATE_ANNOTATION: &str = "vault.certus.io/lease-state";
/// Label put on the Secrets the operator writes.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "certus-vault-operator");
/// Kind name in events, plan output and owner references.
pub const KIND: &str = "DynamicCredential";
/// Retry delay of a failed revocation.
const REVOKE_RETRY: chrono::Duration = chrono::Duration::seconds(60);
/// `Ready` reason while the credential is valid but Vault requests fail.
pub const RENEWAL_DELAYED: &str = "RenewalDelayed";

/// A validated spec (pure; no Vault request made).
#[derive(Clone, Debug, PartialEq)]
pub struct Valid {
    pub namespace: String,
    pub name: String,
    pub secret_name: String,
    pub secret_type: String,
    pub path: String,
    pub method: IssueMethod,
    pub body: Option<Value>,
    pub grace: Duration,
    pub renew_at_percent: u8,
    pub jitter_percent: u8,
    /// Hash of everything that shapes the credential and the Secret's data.
    pub spec_hash: String,
}

fn invalid(msg: impl Into<String>) -> ReconcileError {
    ReconcileError::Invalid(msg.into())
}

/// Whether `k` may be a Secret data key.
fn valid_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// JSON with object keys sorted, so hashes do not depend on map ordering.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::to_value(sorted).unwrap_or(Value::Null)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Validates the spec (pure). Errors name the field and the fix.
pub fn validate(obj: &DynamicCredential) -> Result<Valid, ReconcileError> {
    let spec = &obj.spec;
    let namespace = obj
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = obj.metadata.name.clone().unwrap_or_default();
    let path = spec.path.trim().trim_matches('/').to_string();
    if path.split('/').count() < 2
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(invalid(format!(
            "spec.path {:?} is not a Vault API path such as database/creds/app or pki/issue/web",
            spec.path
        )));
    }
    if path.starts_with("sys/") {
        return Err(invalid("spec.path must not be a sys/ path"));
    }
    let params = spec.parameters.clone().filter(|p| !p.is_empty());
    let method = match (spec.method, &params) {
        (Some(IssueMethod::Get), Some(_)) => {
            return Err(invalid(
                "spec.method: GET sends no body; use POST or PUT with spec.parameters",
            ))
        }
        (Some(m), _) => m,
        (None, Some(_)) => IssueMethod::Post,
        (None, None) => IssueMethod::Get,
    };
    let grace_text = spec.grace_period.as_deref().unwrap_or(DEFAULT_GRACE_PERIOD);
    let grace =
        parse_duration(grace_text).map_err(|e| invalid(format!("spec.gracePeriod: {e}")))?;
    let r = &spec.renewal;
    if !(1..=95).contains(&r.renew_at_percent) {
        return Err(invalid(format!(
            "spec.renewal.renewAtPercent: {} is not between 1 and 95",
            r.renew_at_percent
        )));
    }
    if r.jitter_percent > 50
        || r.jitter_percent >= r.renew_at_percent
        || r.renew_at_percent + r.jitter_percent > 99
    {
        return Err(invalid(format!(
            "spec.renewal.jitterPercent: {} ± around renewAtPercent {} must stay between 1 and 99 (and at most 50)",
            r.jitter_percent, r.renew_at_percent
        )));
    }
    let target = &spec.secret;
    let secret_name = target.name.clone().unwrap_or_else(|| name.clone());
    if !valid_dns_subdomain(&secret_name) {
        return Err(invalid(format!("spec.secret.name: {secret_name:?} is not a valid Secret name (lower-case letters, digits, '-', '.')")));
    }
    for (k, tpl) in &target.data {
        if !valid_secret_key(k) {
            return Err(invalid(format!("spec.secret.data: {k:?} is not a valid Secret key (letters, digits, '-', '_', '.')")));
        }
        certus_core::template::check(tpl)
            .map_err(|e| invalid(format!("spec.secret.data[{k}]: {e}")))?;
    }
    for k in target.annotations.keys() {
        if [
            LEASE_STATE_ANNOTATION,
            annotations::SPEC_HASH,
            annotations::DATA_HASH,
        ]
        .contains(&k.as_str())
        {
            return Err(invalid(format!(
                "spec.secret.annotations: {k} is written by the operator"
            )));
        }
    }
    for (i, t) in spec.rollout_restart_targets.iter().enumerate() {
        if t.name.is_some() == t.selector.is_some() {
            return Err(invalid(format!(
                "spec.rolloutRestartTargets[{i}]: set exactly one of name and selector"
            )));
        }
    }
    let secret_type = target
        .type_
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "Opaque".into());
    let body = params.map(Value::Object);
    let shape = serde_json::json!({
        "connection": spec.connection_ref,
        "path": path,
        "method": method.as_str(),
        "parameters": body,
        "type": secret_type,
        "data": target.data,
    });
    let spec_hash = short_hash(canonical(&shape).to_string().as_bytes());
    Ok(Valid {
        namespace,
        name,
        secret_name,
        secret_type,
        path,
        method,
        body,
        grace,
        renew_at_percent: r.renew_at_percent,
        jitter_percent: r.jitter_percent,
        spec_hash,
    })
}

/// Renders the Secret data from the response fields: the templates of
/// `spec.secret.data`; without templates, `tls.crt`/`tls.key`/`ca.crt` for
/// `kubernetes.io/tls`, otherwise every field.
pub fn render_data(
    obj: &DynamicCredential,
    secret_type: &str,
    fields: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<u8>>, ReconcileError> {
    let mapping = &obj.spec.secret.data;
    let mut out = BTreeMap::new();
    if !mapping.is_empty() {
        for (k, tpl) in mapping {
            let v = certus_core::template::render(tpl, fields)
                .map_err(|e| invalid(format!("spec.secret.data[{k}]: {e}")))?;
            out.insert(k.clone(), v.into_bytes());
        }
        return Ok(out);
    }
    if secret_type == "kubernetes.io/tls" {
        let get = |f: &str| {
            fields
                .get(f)
                .map(|s| s.trim_end().to_string())
                .filter(|s| !s.is_empty())
        };
        let (Some(cert), Some(key)) = (get("certificate"), get("private_key")) else {
            return Err(invalid(format!(
                "spec.secret.type kubernetes.io/tls: the response has no certificate and private_key (fields: {}); map the keys with spec.secret.data",
                fields.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let chain = get("ca_chain").or_else(|| get("issuing_ca"));
        let crt = match &chain {
            Some(c) => format!("{cert}\n{c}\n"),
            None => format!("{cert}\n"),
        };
        out.insert("tls.crt".into(), crt.into_bytes());
        out.insert("tls.key".into(), format!("{key}\n").into_bytes());
        if let Some(ca) = get("issuing_ca").or(chain) {
            out.insert("ca.crt".into(), format!("{ca}\n").into_bytes());
        }
        return Ok(out);
    }
    for (k, v) in fields {
        if !valid_secret_key(k) {
            return Err(invalid(format!(
                "the response has field {k:?}, which is not a valid Secret key: select and rename keys with spec.secret.data"
            )));
        }
        out.insert(k.clone(), v.clone().into_bytes());
    }
    Ok(out)
}

/// The lease state of the resources this process reconciled, mirroring the Secret
/// annotations (used when a Secret was deleted or its annotations removed).
#[derive(Default)]
pub struct LeaseMemory {
    states: Mutex<HashMap<String, Persisted>>,
}

impl LeaseMemory {
    pub fn new() -> Self {
        Self::default()
    }
    fn key(v: &Valid) -> String {
        format!("{}/{}/{}", v.namespace, v.name, v.secret_name)
    }
    fn get(&self, v: &Valid) -> Option<Persisted> {
        self.states.lock().unwrap().get(&Self::key(v)).cloned()
    }
    fn put(&self, v: &Valid, p: &Persisted) {
        self.states.lock().unwrap().insert(Self::key(v), p.clone());
    }
    fn forget(&self, v: &Valid) {
        self.states.lock().unwrap().remove(&Self::key(v));
    }
    /// Number of resources remembered.
    pub fn len(&self) -> usize {
        self.states.lock().unwrap().len()
    }
    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the state came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateSource {
    /// The Secret's annotation.
    Secret,
    /// The process memory (the Secret is gone or lost its annotation).
    Memory,
    /// Nothing known.
    None,
}

fn load_state(
    live: Option<&LiveSecret>,
    memory: &LeaseMemory,
    v: &Valid,
) -> (Persisted, StateSource) {
    if let Some(p) = live
        .and_then(|l| l.annotations.get(LEASE_STATE_ANNOTATION))
        .and_then(|a| Persisted::from_annotation(a))
    {
        return (p, StateSource::Secret);
    }
    match memory.get(v) {
        Some(p) => (p, StateSource::Memory),
        None => (Persisted::default(), StateSource::None),
    }
}

/// Whether the live Secret holds exactly the credential of `state`.
fn secret_matches(live: Option<&LiveSecret>, state: Option<&LeaseState>, v: &Valid) -> bool {
    match (live, state) {
        (Some(l), Some(s)) => l.type_ == v.secret_type && data_hash(&l.data) == s.data_hash,
        _ => false,
    }
}

/// An Event to emit (never holds secret values or lease ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynEvent {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// CamelCase reason, e.g. `Issued`, `Reissued`, `Revoked`, `RevocationFailed`.
    pub reason: &'static str,
    pub message: String,
}

impl DynEvent {
    fn normal(reason: &'static str, message: String) -> Self {
        DynEvent {
            warning: false,
            reason,
            message,
        }
    }
    fn warning(reason: &'static str, message: String) -> Self {
        DynEvent {
            warning: true,
            reason,
            message,
        }
    }
}

/// What the reconcile did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    Issued(IssueReason),
    Renewed,
    /// Renewed, then the renewal showed the maximum TTL was reached: issued at once.
    RenewedThenIssued(IssueReason),
    Unchanged,
}

/// The result of one reconcile.
#[derive(Clone, Debug)]
pub struct DynamicOutcome {
    pub taken: Taken,
    pub secret_name: String,
    /// The current credential's state (holds the lease id: never log or show it; use
    /// [`DynamicOutcome::record`] for status).
    pub state: Option<LeaseState>,
    pub schedule: Schedule,
    /// Superseded credentials still waiting for revocation.
    pub pending_revocations: usize,
    /// When to reconcile again (next renewal, re-issue or revocation); `None` when
    /// nothing is scheduled.
    pub requeue_after: Option<Duration>,
    pub events: Vec<DynEvent>,
    pub issued: u32,
    pub renewed: u32,
    pub revoked: u32,
    /// Vault failures that did not fail the reconcile (revocations, post-renewal writes),
    /// by error class label.
    pub failures: Vec<&'static str>,
    /// Whether the Secret was written.
    pub written: bool,
    /// Workloads restarted, `Kind/name`.
    pub restarted: Vec<String>,
    /// Where the state came from.
    pub source: StateSource,
    /// The instant the outcome was computed for.
    pub now: DateTime<Utc>,
}

fn lease_kind(l: &LeaseRef) -> LeaseKind {
    match l {
        LeaseRef::Lease { .. } => LeaseKind::Lease,
        LeaseRef::Token { .. } => LeaseKind::Token,
        LeaseRef::Certificate { .. } => LeaseKind::Certificate,
        LeaseRef::None => LeaseKind::None,
    }
}

impl DynamicOutcome {
    /// Seconds until the current credential expires (`None` without expiry).
    pub fn seconds_to_expiry(&self) -> Option<i64> {
        self.state
            .as_ref()?
            .expires_at
            .map(|e| (e - self.now).num_seconds())
    }

    /// Writes the outcome into a status: lease summary (hashed id), schedule, counters
    /// and the `Ready` and `VaultAvailable` conditions.
    pub fn record(
        &self,
        status: &mut DynamicCredentialStatus,
        generation: Option<i64>,
        now: DateTime<Utc>,
    ) {
        status.observed_generation = generation;
        status.secret_name = Some(self.secret_name.clone());
        status.pending_revocations = u32::try_from(self.pending_revocations).unwrap_or(u32::MAX);
        if let Some(s) = &self.state {
            status.lease_id_hash = s.lease.id_hash();
            status.lease_kind = Some(lease_kind(&s.lease));
            status.issued_at = Some(s.issued_at);
            status.expires_at = s.expires_at;
            status.lease_duration_seconds = i64::try_from(s.duration_secs)
                .ok()
                .filter(|_| s.expires_at.is_some());
            status.renewals = s.renewals;
            status.reissues = s.reissues;
            status.last_renewal_at = s.last_renewal_at;
            status.spec_hash = Some(s.spec_hash.clone());
        }
        status.next_renewal_at = self.schedule.renew_at;
        status.reissue_at = self.schedule.reissue_at;
        let msg = match self.state.as_ref().and_then(|s| s.expires_at) {
            Some(e) => format!(
                "Secret {} holds a credential valid until {}",
                self.secret_name,
                e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => format!("Secret {} holds the credential", self.secret_name),
        };
        set_condition(
            &mut status.conditions,
            Condition::new(
                condition_types::READY,
                ConditionStatus::True,
                reasons::RECONCILED,
                msg,
                generation,
                now,
            ),
        );
        let avail = if self.failures.is_empty() {
            Condition::new(
                VAULT_AVAILABLE,
                ConditionStatus::True,
                reasons::CONNECTED,
                "",
                generation,
                now,
            )
        } else {
            let warnings: Vec<&str> = self
                .events
                .iter()
                .filter(|e| e.warning)
                .map(|e| e.message.as_str())
                .collect();
            Condition::new(
                VAULT_AVAILABLE,
                ConditionStatus::False,
                reasons::VAULT_UNAVAILABLE,
                warnings.join("; "),
                generation,
                now,
            )
        };
        set_condition(&mut status.conditions, avail);
    }
}

/// Records a failed reconcile in a status. A credential that is still valid keeps
/// `Ready=True` (reason `RenewalDelayed`): the Secret was left as it is. `VaultAvailable`
/// turns `False` for Vault errors.
pub fn record_error(
    status: &mut DynamicCredentialStatus,
    err: &ReconcileError,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let still_valid = status.expires_at.is_some_and(|e| e > now)
        || (status.lease_kind == Some(LeaseKind::None) && status.issued_at.is_some());
    let ready = match err {
        ReconcileError::Vault(_)
        | ReconcileError::Kubernetes(_)
        | ReconcileError::Dependency(_)
            if still_valid =>
        {
            Condition::new(
                condition_types::READY,
                ConditionStatus::True,
                RENEWAL_DELAYED,
                format!(
                    "the Secret keeps its credential (valid until {}); retrying: {err}",
                    status
                        .expires_at
                        .map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| "revoked".into())
                ),
                generation,
                now,
            )
        }
        _ => Condition::new(
            condition_types::READY,
            ConditionStatus::False,
            err.reason(),
            err.to_string(),
            generation,
            now,
        ),
    };
    if matches!(err, ReconcileError::Invalid(_)) {
        status.observed_generation = generation;
    }
    set_condition(&mut status.conditions, ready);
    if let ReconcileError::Vault(e) = err {
        set_condition(
            &mut status.conditions,
            Condition::new(
                VAULT_AVAILABLE,
                ConditionStatus::False,
                err.reason(),
                format!("{} ({})", e, e.class.as_str()),
                generation,
                now,
            ),
        );
    }
}

/// The session token as the lifecycle sees it.
pub async fn current_token(
    vault: &VaultSession,
    now: DateTime<Utc>,
) -> Result<CurrentToken, ReconcileError> {
    let l = vault.token_lifetime().await?;
    Ok(CurrentToken {
        accessor_hash: short_hash(l.accessor.as_bytes()),
        expires_at: l
            .expires_in
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| now + d),
        extendable: l.extendable,
    })
}

fn timing(v: &Valid, state: Option<&LeaseState>) -> Timing {
    let seed = state
        .map(|s| format!("{}#{}", s.lease.handle().unwrap_or_default(), s.renewals))
        .unwrap_or_default();
    Timing {
        renew_at_percent: v.renew_at_percent,
        jitter_percent: v.jitter_percent,
        jitter: lease::stable_jitter(&seed),
    }
}

fn rotate_marker(obj: &DynamicCredential) -> Option<String> {
    obj.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::ROTATE_NOW))
        .filter(|v| !v.is_empty())
        .cloned()
}

/// Whether a Vault error means the lease cannot be renewed (gone, expired, not
/// renewable) rather than that Vault is unavailable or we lack permission.
fn refused(e: &VaultError) -> bool {
    matches!(e.class, ErrorClass::InvalidRequest | ErrorClass::NotFound)
}

async fn call(vault: &VaultSession, c: &lease::VaultCall) -> Result<Option<Value>, VaultError> {
    vault.write(&c.path, &c.body).await
}

/// Revokes one credential; absent, expired or already revoked counts as success.
///
/// What "absent" looks like differs by kind, and nothing else is taken as success:
/// OpenBao answers 204 for an unknown or expired lease and 200 (with a warning) for an
/// unknown token accessor or an expired certificate, but 400 for a lease whose
/// revocation failed (a database revocation statement that errors, say) — that lease
/// and its database user still exist, so it is an error the caller must retry, never
/// "already revoked". Only a 404 (the mount or path is gone) and a PKI "not found" for
/// the serial (the certificate was tidied away) count as gone.
pub async fn revoke(vault: &VaultSession, l: &LeaseRef) -> Result<(), VaultError> {
    let Some(c) = l.revoke_call() else {
        return Ok(());
    };
    match call(vault, &c).await {
        Ok(_) => Ok(()),
        Err(e) if revocation_target_gone(l, &e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a refused revocation means there is nothing left to revoke (see [`revoke`]).
fn revocation_target_gone(l: &LeaseRef, e: &VaultError) -> bool {
    match e.class {
        ErrorClass::NotFound => true,
        ErrorClass::InvalidRequest => {
            matches!(l, LeaseRef::Certificate { .. }) && e.message.contains("not found")
        }
        _ => false,
    }
}

/// Finds the credential `status.leaseIdHash` names among what Vault lists for the path
/// (leases under `sys/leases/lookup/<path>/`, token accessors, PKI serials). Best effort:
/// listing needs extra capabilities (`list` + `sudo` on `sys/leases/lookup/*`,
/// `auth/token/accessors`); without them, or when nothing matches, `None` (the old
/// credential is then no longer renewed and expires on its own).
pub async fn find_by_status_hash(
    vault: &VaultSession,
    obj: &DynamicCredential,
    v: &Valid,
) -> Option<LeaseRef> {
    let st = obj.status.as_ref()?;
    let hash = st.lease_id_hash.as_deref()?;
    let matches = |s: &str| short_hash(s.as_bytes()) == hash;
    match st.lease_kind? {
        LeaseKind::Lease => vault
            .list(&format!("sys/leases/lookup/{}/", v.path))
            .await
            .ok()?
            .into_iter()
            .map(|k| format!("{}/{k}", v.path))
            .find(|id| matches(id))
            .map(|id| LeaseRef::Lease { id }),
        LeaseKind::Token => vault
            .list("auth/token/accessors")
            .await
            .ok()?
            .into_iter()
            .find(|a| matches(a))
            .map(|accessor| LeaseRef::Token { accessor }),
        LeaseKind::Certificate => {
            let mount = lease::pki_mount(&v.path);
            vault
                .list(&format!("{mount}/certs"))
                .await
                .ok()?
                .into_iter()
                .map(|k| k.replace('-', ":"))
                .find(|serial| matches(serial))
                .map(|serial| LeaseRef::Certificate { mount, serial })
        }
        LeaseKind::None => None,
    }
}

/// Everything a step needs.
struct Run<'a, S, R> {
    vault: &'a VaultSession,
    obj: &'a DynamicCredential,
    store: &'a S,
    restarter: &'a R,
    memory: &'a LeaseMemory,
    v: Valid,
    now: DateTime<Utc>,
    live: Option<LiveSecret>,
    persisted: Persisted,
    token: CurrentToken,
    out: DynamicOutcome,
}

impl<S: SecretStore, R: Restarter> Run<'_, S, R> {
    fn draft(&self, data: BTreeMap<String, Vec<u8>>, p: &Persisted) -> SecretDraft {
        let t = &self.obj.spec.secret;
        let mut labels = t.labels.clone();
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let mut ann = t.annotations.clone();
        ann.insert(annotations::DATA_HASH.into(), data_hash(&data));
        if let Some(c) = &p.current {
            ann.insert(annotations::SPEC_HASH.into(), c.spec_hash.clone());
        }
        ann.insert(LEASE_STATE_ANNOTATION.into(), p.to_annotation());
        SecretDraft {
            namespace: self.v.namespace.clone(),
            name: self.v.secret_name.clone(),
            type_: self.v.secret_type.clone(),
            labels,
            annotations: ann,
            data,
            owner: Some(Owner {
                api_version: certus_api::API_VERSION.into(),
                kind: KIND.into(),
                name: self.v.name.clone(),
                uid: self.obj.metadata.uid.clone().unwrap_or_default(),
            }),
        }
    }

    /// Whether the Secret's labels/annotations lack what the spec asks for.
    fn metadata_differs(&self) -> bool {
        let Some(l) = &self.live else { return false };
        let t = &self.obj.spec.secret;
        t.labels.iter().any(|(k, v)| l.labels.get(k) != Some(v))
            || t.annotations
                .iter()
                .any(|(k, v)| l.annotations.get(k) != Some(v))
    }

    /// Revokes the superseded credentials whose time has come.
    async fn revoke_due(&mut self) -> bool {
        let (due, mut keep) = lease::split_due(&self.persisted.superseded, self.now);
        let changed = !due.is_empty();
        for s in due {
            match revoke(self.vault, &s.lease).await {
                Ok(()) => {
                    self.out.revoked += 1;
                    self.out.events.push(DynEvent::normal(
                        "Revoked",
                        format!(
                            "revoked the superseded {} {}",
                            s.lease.kind(),
                            s.lease.id_hash().unwrap_or_default()
                        ),
                    ));
                }
                Err(e) => {
                    self.out.failures.push(e.class.as_str());
                    self.out.events.push(DynEvent::warning(
                        "RevocationFailed",
                        format!(
                            "revoking the superseded {} {} failed, retrying in a minute: {e}",
                            s.lease.kind(),
                            s.lease.id_hash().unwrap_or_default()
                        ),
                    ));
                    keep.push(Superseded {
                        lease: s.lease,
                        revoke_at: self.now + REVOKE_RETRY,
                    });
                }
            }
        }
        self.persisted.superseded = keep;
        changed
    }

    async fn write(
        &mut self,
        data: BTreeMap<String, Vec<u8>>,
        p: Persisted,
    ) -> Result<(), ReconcileError> {
        let d = self.draft(data, &p);
        self.store.apply(&d).await?;
        self.memory.put(&self.v, &p);
        self.persisted = p;
        self.out.written = true;
        Ok(())
    }

    async fn issue(&mut self, reason: IssueReason) -> Result<(), ReconcileError> {
        let v = self.v.clone();
        let resp = match v.method {
            IssueMethod::Get => self.vault.read(&v.path).await?.ok_or_else(|| {
                ReconcileError::Dependency(format!(
                    "GET {} returned 404: does the mount and role exist?",
                    v.path
                ))
            })?,
            IssueMethod::Post | IssueMethod::Put => {
                let body = v
                    .body
                    .clone()
                    .unwrap_or_else(|| Value::Object(Default::default()));
                self.vault.write(&v.path, &body).await?.ok_or_else(|| {
                    ReconcileError::Vault(VaultError::new(
                        ErrorClass::InvalidRequest,
                        format!("{} {}", v.method.as_str(), v.path),
                        Some(204),
                        "Vault returned no credential (empty response)",
                    ))
                })?
            }
        };
        let issued: Issued = lease::read_issued(&v.path, &resp, self.now);
        if issued.token_bound {
            // The session's token now parents a lease: never revoke it on shutdown.
            self.vault.retain_token();
        }
        let fields = issued.fields.clone();
        let data = match render_data(self.obj, &v.secret_type, &fields) {
            Ok(d) => d,
            Err(e) => {
                self.revoke_fresh(&issued.lease, "its Secret could not be rendered")
                    .await;
                return Err(e);
            }
        };
        let previous = self.persisted.current.clone();
        let state = lease::issued_state(
            &issued,
            self.now,
            &v.spec_hash,
            &data_hash(&data),
            Some(&self.token),
            previous.as_ref(),
            rotate_marker(self.obj),
        );
        let mut superseded = self.persisted.superseded.clone();
        if let Some(s) = previous
            .as_ref()
            .and_then(|p| lease::supersede(p, self.now, v.grace))
        {
            superseded.push(s);
        }
        let before = self.live.as_ref().map(|l| l.data.clone());
        let next = Persisted {
            current: Some(state),
            superseded,
        };
        if let Err(e) = self.write(data.clone(), next).await {
            self.revoke_fresh(&issued.lease, "writing its Secret failed")
                .await;
            return Err(e);
        }
        self.out.issued += 1;
        let kind = issued.lease.kind();
        let hash = issued.lease.id_hash().unwrap_or_default();
        self.out.events.push(if reason == IssueReason::Initial {
            DynEvent::normal("Issued", format!("issued a {kind} {hash} from {} into Secret {}", v.path, v.secret_name))
        } else {
            DynEvent::normal(
                "Reissued",
                format!("issued a new {kind} {hash} from {} into Secret {} because {}; the previous one is revoked after {:?}", v.path, v.secret_name, reason.describe(), v.grace),
            )
        });
        // Workloads only restart when they may hold another credential than the new one.
        let changed =
            before.as_ref().is_some_and(|b| *b != data) || (before.is_none() && previous.is_some());
        if changed && !self.obj.spec.rollout_restart_targets.is_empty() {
            let stamp = self.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            match self
                .restarter
                .restart(&v.namespace, &self.obj.spec.rollout_restart_targets, &stamp)
                .await
            {
                Ok(done) => {
                    if !done.is_empty() {
                        self.out.events.push(DynEvent::normal(
                            "RolloutRestarted",
                            format!("restarted {} for the new credential", done.join(", ")),
                        ));
                    }
                    self.out.restarted = done;
                }
                Err(e) => self.out.events.push(DynEvent::warning(
                    "RolloutRestartFailed",
                    format!("restarting the rollout targets failed: {e}"),
                )),
            }
        }
        Ok(())
    }

    /// Revokes a credential issued in this reconcile that cannot be delivered.
    async fn revoke_fresh(&mut self, l: &LeaseRef, why: &str) {
        match revoke(self.vault, l).await {
            Ok(()) => tracing::info!(
                kind = l.kind(),
                id = l.id_hash().unwrap_or_default(),
                "revoked a just-issued credential because {why}"
            ),
            Err(e) => {
                // It expires on its own, but it is never renewed: report it.
                self.out.events.push(DynEvent::warning(
                    "RevocationFailed",
                    format!("a just-issued {} {} could not be revoked after {why}; it expires on its own: {e}", l.kind(), l.id_hash().unwrap_or_default()),
                ));
            }
        }
    }

    /// Renews the current lease. `Ok(false)` when Vault refused (the caller issues anew).
    async fn renew(&mut self) -> Result<bool, ReconcileError> {
        let state = self.persisted.current.clone().expect("renew needs a lease");
        let Some(c) = state.lease.renew_call(state.issued_duration_secs) else {
            return Ok(false);
        };
        let resp = match call(self.vault, &c).await {
            Ok(r) => r.unwrap_or(Value::Null),
            Err(e) if refused(&e) => {
                self.out.events.push(DynEvent::warning(
                    "RenewalRefused",
                    format!(
                        "Vault refused to renew {} {}: {}; issuing a new credential",
                        state.lease.kind(),
                        state.lease.id_hash().unwrap_or_default(),
                        e.message
                    ),
                ));
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let Some((granted, renewable)) = state.lease.parse_renewal(&resp) else {
            return Err(ReconcileError::Vault(VaultError::new(
                ErrorClass::Transient,
                format!("POST {}", c.path),
                None,
                "renewal response has no lease_duration",
            )));
        };
        let mut next = lease::renewed(&state, self.now, granted, renewable);
        if granted == 0 {
            return Ok(false);
        }
        refresh_token(&mut next, &self.token);
        self.out.renewed += 1;
        let p = Persisted {
            current: Some(next),
            superseded: self.persisted.superseded.clone(),
        };
        let data = self
            .live
            .as_ref()
            .map(|l| l.data.clone())
            .unwrap_or_default();
        if let Err(e) = self.write(data, p.clone()).await {
            // The renewal happened; a stale persisted expiry only makes the next
            // reconcile renew early.
            tracing::warn!(error = %e, "recording a renewal on the Secret failed");
            self.memory.put(&self.v, &p);
            self.persisted = p;
        }
        Ok(true)
    }
}

/// Keeps the issuing token's recorded expiry current while the session still holds it.
fn refresh_token(state: &mut LeaseState, current: &CurrentToken) {
    if let Some(t) = state.token.as_mut() {
        if t.accessor_hash == current.accessor_hash {
            if let Some(e) = current.expires_at {
                if t.expires_at.is_none_or(|old| e > old) {
                    t.expires_at = Some(e);
                }
            }
        }
    }
}

fn decide_inputs<'a>(
    v: &'a Valid,
    p: &'a Persisted,
    secret_ok: bool,
    rotate_now: bool,
    token: &CurrentToken,
    now: DateTime<Utc>,
) -> lease::Inputs<'a> {
    let state = p.current.as_ref();
    lease::Inputs {
        now,
        spec_hash: &v.spec_hash,
        state,
        secret_ok,
        rotate_now,
        timing: timing(v, state),
        token_deadline: lease::token_deadline(state.and_then(|s| s.token.as_ref()), Some(token)),
        new_token_deadline: token.hard_deadline(),
    }
}

fn finish(
    out: &mut DynamicOutcome,
    v: &Valid,
    p: &Persisted,
    token: &CurrentToken,
    now: DateTime<Utc>,
) {
    out.state = p.current.clone();
    out.pending_revocations = p.superseded.len();
    let schedule = match &p.current {
        Some(s) => {
            let i = decide_inputs(v, p, true, false, token, now);
            lease::schedule(s, i.timing, i.token_deadline, i.new_token_deadline)
        }
        None => Schedule::default(),
    };
    out.schedule = schedule;
    let wake = lease::next_wake(
        [schedule.renew_at, schedule.reissue_at]
            .into_iter()
            .flatten()
            .min(),
        &p.superseded,
    );
    out.requeue_after = wake.map(|w| {
        (w - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    });
}

/// Reconciles one DynamicCredential at `now` (see the module documentation).
pub async fn reconcile<S: SecretStore, R: Restarter>(
    vault: &VaultSession,
    obj: &DynamicCredential,
    store: &S,
    restarter: &R,
    memory: &LeaseMemory,
    now: DateTime<Utc>,
) -> Result<DynamicOutcome, ReconcileError> {
    let v = validate(obj)?;
    let live = store.get(&v.namespace, &v.secret_name).await?;
    let (mut persisted, source) = load_state(live.as_ref(), memory, &v);
    let token = current_token(vault, now).await?;
    let mut events = vec![];
    if source == StateSource::None {
        // The Secret (with the lease state) is gone and this process never saw it: find
        // the previous credential by the hash status recorded, so it is not orphaned.
        if let Some(old) = find_by_status_hash(vault, obj, &v).await {
            events.push(DynEvent::normal(
                "PreviousCredentialFound",
                format!(
                    "the Secret and its lease state were lost; found the previous {} {} by its hash in status: revoked after the grace period",
                    old.kind(),
                    old.id_hash().unwrap_or_default()
                ),
            ));
            persisted.superseded.push(Superseded {
                lease: old,
                revoke_at: now + chrono::Duration::from_std(v.grace).unwrap_or_default(),
            });
        }
    }
    let out = DynamicOutcome {
        taken: Taken::Unchanged,
        secret_name: v.secret_name.clone(),
        state: None,
        schedule: Schedule::default(),
        pending_revocations: 0,
        requeue_after: None,
        events,
        issued: 0,
        renewed: 0,
        revoked: 0,
        failures: vec![],
        written: false,
        restarted: vec![],
        source,
        now,
    };
    let mut run = Run {
        vault,
        obj,
        store,
        restarter,
        memory,
        v,
        now,
        live,
        persisted,
        token,
        out,
    };
    let superseded_changed = run.revoke_due().await;

    let secret_ok = secret_matches(run.live.as_ref(), run.persisted.current.as_ref(), &run.v);
    let marker = rotate_marker(obj);
    let rotate_now = marker.is_some()
        && run
            .persisted
            .current
            .as_ref()
            .is_some_and(|s| s.rotate_marker != marker);
    let step = lease::decide(decide_inputs(
        &run.v,
        &run.persisted,
        secret_ok,
        rotate_now,
        &run.token,
        now,
    ));
    run.out.taken = match step {
        Step::Issue(reason) => {
            run.issue(reason).await?;
            Taken::Issued(reason)
        }
        Step::Renew => {
            if run.renew().await? {
                // The renewal may show the maximum TTL was reached: issue right away.
                match lease::decide(decide_inputs(
                    &run.v,
                    &run.persisted,
                    true,
                    false,
                    &run.token,
                    now,
                )) {
                    Step::Issue(reason) => {
                        run.live = store.get(&run.v.namespace, &run.v.secret_name).await?;
                        run.issue(reason).await?;
                        Taken::RenewedThenIssued(reason)
                    }
                    _ => Taken::Renewed,
                }
            } else {
                run.issue(IssueReason::RenewalRefused).await?;
                Taken::Issued(IssueReason::RenewalRefused)
            }
        }
        Step::Wait { .. } => {
            let mut p = run.persisted.clone();
            let before = p.clone();
            if let Some(s) = p.current.as_mut() {
                refresh_token(s, &run.token);
            }
            let token_moved = token_moved_enough(before.current.as_ref(), p.current.as_ref());
            if superseded_changed
                || run.metadata_differs()
                || source == StateSource::Memory
                || token_moved
            {
                let data = run
                    .live
                    .as_ref()
                    .map(|l| l.data.clone())
                    .unwrap_or_default();
                if run.live.is_some() {
                    run.write(data, p).await?;
                } else {
                    run.memory.put(&run.v, &p);
                    run.persisted = p;
                }
            }
            Taken::Unchanged
        }
    };
    let Run {
        mut out,
        v,
        persisted,
        token,
        ..
    } = run;
    finish(&mut out, &v, &persisted, &token, now);
    Ok(out)
}

/// Whether the issuing token's expiry moved by more than a third of the lease duration
/// since it was recorded (worth writing, so a restart sees a recent value).
fn token_moved_enough(before: Option<&LeaseState>, after: Option<&LeaseState>) -> bool {
    let (Some(b), Some(a)) = (before, after) else {
        return false;
    };
    let (Some(bt), Some(at)) = (
        b.token.as_ref().and_then(|t| t.expires_at),
        a.token.as_ref().and_then(|t| t.expires_at),
    ) else {
        return false;
    };
    let third = i64::try_from(b.duration_secs / 3)
        .unwrap_or(i64::MAX)
        .max(60);
    (at - bt).num_seconds() > third
}

/// What `plan` would do for one DynamicCredential (no Vault writes).
#[derive(Clone, Debug)]
pub struct DynamicPlan {
    pub step: Step,
    pub secret_name: String,
    /// Superseded credentials due for revocation now.
    pub due_revocations: usize,
    pub schedule: Schedule,
    pub source: StateSource,
}

/// Decides without writing anything (reads: the Secret, and the session's token).
pub async fn plan<S: SecretStore>(
    vault: &VaultSession,
    obj: &DynamicCredential,
    store: &S,
    memory: &LeaseMemory,
    now: DateTime<Utc>,
) -> Result<DynamicPlan, ReconcileError> {
    let v = validate(obj)?;
    let live = store.get(&v.namespace, &v.secret_name).await?;
    let (p, source) = load_state(live.as_ref(), memory, &v);
    let token = current_token(vault, now).await?;
    let secret_ok = secret_matches(live.as_ref(), p.current.as_ref(), &v);
    let marker = rotate_marker(obj);
    let rotate_now = marker.is_some()
        && p.current
            .as_ref()
            .is_some_and(|s| s.rotate_marker != marker);
    let inputs = decide_inputs(&v, &p, secret_ok, rotate_now, &token, now);
    let step = lease::decide(inputs);
    let schedule = p
        .current
        .as_ref()
        .map(|s| {
            lease::schedule(
                s,
                inputs.timing,
                inputs.token_deadline,
                inputs.new_token_deadline,
            )
        })
        .unwrap_or_default();
    Ok(DynamicPlan {
        step,
        secret_name: v.secret_name,
        due_revocations: lease::split_due(&p.superseded, now).0.len(),
        schedule,
        source,
    })
}

impl DynamicPlan {
    /// The plan as a change line (`+` issue, `~` renew, `=` nothing).
    pub fn change(&self, obj: &DynamicCredential) -> Change {
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (action, mut detail) = match self.step {
            Step::Issue(r) => (
                Action::Create,
                format!("issue a credential: {}", r.describe()),
            ),
            Step::Renew => (Action::Update, "renew the lease".to_string()),
            Step::Wait { until: Some(t) } => {
                (Action::NoChange, format!("nothing to do until {}", fmt(t)))
            }
            Step::Wait { until: None } => (Action::NoChange, "nothing to do".to_string()),
        };
        if self.due_revocations > 0 {
            detail.push_str(&format!(
                "; revoke {} superseded credential(s)",
                self.due_revocations
            ));
        }
        Change {
            resource: resource_id(obj),
            action: if action == Action::NoChange && self.due_revocations > 0 {
                Action::Delete
            } else {
                action
            },
            target: format!(
                "{} → Secret {ns}/{}",
                obj.spec.path.trim_matches('/'),
                self.secret_name
            ),
            drift: false,
            detail: Some(detail),
        }
    }
}

impl DynamicOutcome {
    /// The outcome as a change line for `apply` output.
    pub fn change(&self, obj: &DynamicCredential) -> Change {
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let expiry = self
            .state
            .as_ref()
            .and_then(|s| s.expires_at)
            .map(|e| {
                format!(
                    "; expires {}",
                    e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .unwrap_or_default();
        let (action, what) = match self.taken {
            Taken::Issued(r) => (
                Action::Create,
                format!("issued a credential ({})", r.describe()),
            ),
            Taken::RenewedThenIssued(r) => (
                Action::Create,
                format!("renewed, then issued a credential ({})", r.describe()),
            ),
            Taken::Renewed => (Action::Update, "renewed the lease".to_string()),
            Taken::Unchanged => (Action::NoChange, "credential current".to_string()),
        };
        let revoked = if self.revoked > 0 {
            format!("; revoked {} superseded", self.revoked)
        } else {
            String::new()
        };
        Change {
            resource: resource_id(obj),
            action,
            target: format!(
                "{} → Secret {ns}/{}",
                obj.spec.path.trim_matches('/'),
                self.secret_name
            ),
            drift: false,
            detail: Some(format!("{what}{expiry}{revoked}")),
        }
    }
}

/// The resource id used in plan output.
pub fn resource_id(obj: &DynamicCredential) -> ResourceId {
    ResourceId::new(
        KIND,
        Some(obj.metadata.namespace.as_deref().unwrap_or("default")),
        obj.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// What [`cleanup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupOutcome {
    pub revoked: u32,
    /// Whether any lease state was found (in the Secret or in memory).
    pub found_state: bool,
}

/// Revokes the current and every superseded credential (absent = success) and deletes
/// the Secret. Used on resource deletion (when `revokeOnDelete`) and by
/// `certus-vault apply --watch --revoke-on-exit`.
pub async fn revoke_everything<S: SecretStore>(
    vault: &VaultSession,
    obj: &DynamicCredential,
    store: &S,
    memory: &LeaseMemory,
) -> Result<CleanupOutcome, ReconcileError> {
    let v = validate_identity(obj);
    let live = store.get(&v.namespace, &v.secret_name).await?;
    let (p, source) = load_state(live.as_ref(), memory, &v);
    let mut out = CleanupOutcome {
        revoked: 0,
        found_state: source != StateSource::None,
    };
    let mut leases: Vec<LeaseRef> = p.superseded.iter().map(|s| s.lease.clone()).collect();
    leases.extend(p.current.iter().map(|c| c.lease.clone()));
    if source == StateSource::None {
        if let Some(l) = find_by_status_hash(vault, obj, &v).await {
            out.found_state = true;
            leases.push(l);
        }
    }
    // Every credential is tried, so one failure does not keep the others alive; on
    // any failure the Secret (which holds the lease state) stays for the retry, and
    // revoking again what was revoked is a no-op.
    let mut first_error = None;
    for l in leases {
        match revoke(vault, &l).await {
            Ok(()) if l != LeaseRef::None => out.revoked += 1,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(
                    kind = l.kind(),
                    id = l.id_hash().unwrap_or_default(),
                    error = %e,
                    "revoking a credential failed"
                );
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    store.delete(&v.namespace, &v.secret_name).await?;
    memory.forget(&v);
    Ok(out)
}

/// Cleanup on deletion: with `revokeOnDelete` (default) every credential is revoked;
/// without, they are left to expire (nobody renews them any more).
pub async fn cleanup<S: SecretStore>(
    vault: &VaultSession,
    obj: &DynamicCredential,
    store: &S,
    memory: &LeaseMemory,
) -> Result<CleanupOutcome, ReconcileError> {
    if !obj.spec.revoke_on_delete {
        memory.forget(&validate_identity(obj));
        return Ok(CleanupOutcome::default());
    }
    revoke_everything(vault, obj, store, memory).await
}

/// Forgets what the process remembers about a resource (deletion without revocation).
pub fn forget(obj: &DynamicCredential, memory: &LeaseMemory) {
    memory.forget(&validate_identity(obj));
}

/// Names only (cleanup must work even when the spec became invalid).
fn validate_identity(obj: &DynamicCredential) -> Valid {
    validate(obj).unwrap_or_else(|_| {
        let name = obj.metadata.name.clone().unwrap_or_default();
        Valid {
            namespace: obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            secret_name: obj.spec.secret.name.clone().unwrap_or_else(|| name.clone()),
            name,
            secret_type: String::new(),
            path: obj.spec.path.clone(),
            method: IssueMethod::Get,
            body: None,
            grace: Duration::ZERO,
            renew_at_percent: 67,
            jitter_percent: 0,
            spec_hash: String::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(spec: Value) -> DynamicCredential {
        serde_json::from_value(json!({
            "apiVersion": "vault.certus.io/v1alpha1", "kind": "DynamicCredential",
            "metadata": {"name": "app-db", "namespace": "shop", "uid": "u-1"},
            "spec": spec
        }))
        .unwrap()
    }

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (json!({"path": "database"}), "spec.path"),
            (json!({"path": "sys/leases/lookup"}), "sys/"),
            (
                json!({"path": "pki/issue/web", "method": "GET", "parameters": {"common_name": "x"}}),
                "spec.method",
            ),
            (
                json!({"path": "database/creds/app", "gracePeriod": "10x"}),
                "spec.gracePeriod",
            ),
            (
                json!({"path": "database/creds/app", "renewal": {"renewAtPercent": 0}}),
                "renewAtPercent",
            ),
            (
                json!({"path": "database/creds/app", "renewal": {"renewAtPercent": 90, "jitterPercent": 20}}),
                "jitterPercent",
            ),
            (
                json!({"path": "database/creds/app", "secret": {"data": {"bad key": "{{ username }}"}}}),
                "spec.secret.data",
            ),
            (
                json!({"path": "database/creds/app", "secret": {"data": {"url": "{{ username | upper }}"}}}),
                "spec.secret.data[url]",
            ),
            (
                json!({"path": "database/creds/app", "secret": {"data": {"url": "{{ username "}}}),
                "spec.secret.data[url]",
            ),
            (
                json!({"path": "database/creds/app", "secret": {"name": "Bad_Name"}}),
                "spec.secret.name",
            ),
            (
                json!({"path": "database/creds/app", "secret": {"annotations": {"vault.certus.io/lease-state": "x"}}}),
                "spec.secret.annotations",
            ),
            (
                json!({"path": "database/creds/app", "rolloutRestartTargets": [{"kind": "Deployment"}]}),
                "rolloutRestartTargets[0]",
            ),
        ];
        for (spec, field) in cases {
            let e = validate(&obj(spec.clone())).unwrap_err();
            assert!(matches!(e, ReconcileError::Invalid(_)), "{spec}: {e:?}");
            assert!(e.to_string().contains(field), "{spec}: {e}");
        }
    }

    #[test]
    fn method_defaults_and_spec_hash_scope() {
        let a = validate(&obj(json!({"path": "/database/creds/app/"}))).unwrap();
        assert_eq!(
            (
                a.method,
                a.path.as_str(),
                a.secret_name.as_str(),
                a.secret_type.as_str()
            ),
            (IssueMethod::Get, "database/creds/app", "app-db", "Opaque")
        );
        assert_eq!(a.grace, Duration::from_secs(30));
        let p = validate(&obj(
            json!({"path": "pki/issue/web", "parameters": {"common_name": "a", "ttl": "1h"}}),
        ))
        .unwrap();
        assert_eq!(p.method, IssueMethod::Post);
        assert_eq!(p.body, Some(json!({"common_name": "a", "ttl": "1h"})));
        // Parameter order does not matter; values do.
        let q = validate(&obj(
            json!({"path": "pki/issue/web", "parameters": {"ttl": "1h", "common_name": "a"}}),
        ))
        .unwrap();
        assert_eq!(p.spec_hash, q.spec_hash);
        let r = validate(&obj(
            json!({"path": "pki/issue/web", "parameters": {"ttl": "2h", "common_name": "a"}}),
        ))
        .unwrap();
        assert_ne!(p.spec_hash, r.spec_hash);
        // Renewal timing, grace, labels and restart targets do not call for a new credential.
        let b = validate(&obj(json!({"path": "database/creds/app", "gracePeriod": "5m", "renewal": {"renewAtPercent": 50},
            "secret": {"labels": {"team": "a"}}, "rolloutRestartTargets": [{"kind": "Deployment", "name": "web"}]}))).unwrap();
        assert_eq!(a.spec_hash, b.spec_hash);
        let c = validate(&obj(
            json!({"path": "database/creds/app", "secret": {"data": {"u": "{{ username }}"}}}),
        ))
        .unwrap();
        assert_ne!(a.spec_hash, c.spec_hash);
    }

    #[test]
    fn renders_templates_tls_defaults_and_all_fields() {
        let db = obj(json!({"path": "database/creds/app", "secret": {"data": {
            "DATABASE_URL": "postgresql://{{ username | urlquery }}:{{ password | urlquery }}@db:5432/app"}}}));
        let out = render_data(
            &db,
            "Opaque",
            &fields(&[("username", "v-x"), ("password", "a/b")]),
        )
        .unwrap();
        assert_eq!(out["DATABASE_URL"], b"postgresql://v-x:a%2Fb@db:5432/app");
        assert_eq!(out.len(), 1);
        let e = render_data(
            &db,
            "Opaque",
            &fields(&[("user", "v-x"), ("password", "SECRET")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("spec.secret.data[DATABASE_URL]")
                && !e.to_string().contains("SECRET"),
            "{e}"
        );

        let tls = obj(json!({"path": "pki/issue/web"}));
        let f = fields(&[
            ("certificate", "CERT"),
            ("private_key", "KEY"),
            ("issuing_ca", "CA"),
            ("ca_chain", "CA\n"),
            ("serial_number", "1"),
        ]);
        let out = render_data(&tls, "kubernetes.io/tls", &f).unwrap();
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            ["ca.crt", "tls.crt", "tls.key"]
        );
        assert_eq!(out["tls.crt"], b"CERT\nCA\n");
        assert_eq!(out["tls.key"], b"KEY\n");
        assert_eq!(out["ca.crt"], b"CA\n");
        assert!(render_data(&tls, "kubernetes.io/tls", &fields(&[("username", "x")])).is_err());

        let all = render_data(
            &obj(json!({"path": "aws/creds/x"})),
            "Opaque",
            &fields(&[("access_key", "A"), ("secret_key", "S")]),
        )
        .unwrap();
        assert_eq!(all.len(), 2);
        assert!(render_data(
            &obj(json!({"path": "aws/creds/x"})),
            "Opaque",
            &fields(&[("a b", "x")])
        )
        .is_err());
    }

    fn status_with(expires: Option<DateTime<Utc>>) -> DynamicCredentialStatus {
        DynamicCredentialStatus {
            expires_at: expires,
            lease_kind: Some(LeaseKind::Lease),
            ..Default::default()
        }
    }

    #[test]
    fn errors_keep_ready_while_the_credential_is_valid() {
        let now = Utc::now();
        let transient = ReconcileError::Vault(VaultError::new(
            ErrorClass::Transient,
            "POST sys/leases/renew",
            None,
            "connection refused",
        ));
        let mut s = status_with(Some(now + chrono::Duration::seconds(30)));
        record_error(&mut s, &transient, Some(2), now);
        let ready = certus_api::find_condition(&s.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::True, RENEWAL_DELAYED)
        );
        let avail = certus_api::find_condition(&s.conditions, VAULT_AVAILABLE).unwrap();
        assert_eq!(
            (avail.status, avail.reason.as_str()),
            (ConditionStatus::False, "VaultUnavailable")
        );
        let mut s = status_with(Some(now - chrono::Duration::seconds(1)));
        record_error(&mut s, &transient, Some(2), now);
        assert_eq!(
            certus_api::find_condition(&s.conditions, "Ready")
                .unwrap()
                .status,
            ConditionStatus::False
        );
        let mut s = status_with(Some(now + chrono::Duration::seconds(30)));
        record_error(
            &mut s,
            &ReconcileError::Invalid("spec.path: x".into()),
            Some(3),
            now,
        );
        let ready = certus_api::find_condition(&s.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::False, "InvalidSpec")
        );
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn token_expiry_is_rewritten_only_when_it_moved() {
        let now = Utc::now();
        let mk = |t: i64| {
            let mut s = lease::issued_state(
                &lease::read_issued(
                    "db/creds/r",
                    &json!({"lease_id": "x", "lease_duration": 600, "renewable": true}),
                    now,
                ),
                now,
                "S",
                "D",
                Some(&CurrentToken {
                    accessor_hash: "A".into(),
                    expires_at: Some(now + chrono::Duration::seconds(t)),
                    extendable: true,
                }),
                None,
                None,
            );
            s.duration_secs = 600;
            s
        };
        assert!(!token_moved_enough(Some(&mk(100)), Some(&mk(250))));
        assert!(token_moved_enough(Some(&mk(100)), Some(&mk(301))));
        let mut s = mk(100);
        refresh_token(
            &mut s,
            &CurrentToken {
                accessor_hash: "A".into(),
                expires_at: Some(now + chrono::Duration::seconds(500)),
                extendable: true,
            },
        );
        assert_eq!(
            s.token.as_ref().unwrap().expires_at,
            Some(now + chrono::Duration::seconds(500))
        );
        refresh_token(
            &mut s,
            &CurrentToken {
                accessor_hash: "B".into(),
                expires_at: Some(now + chrono::Duration::seconds(900)),
                extendable: true,
            },
        );
        assert_eq!(
            s.token.as_ref().unwrap().expires_at,
            Some(now + chrono::Duration::seconds(500)),
            "another token says nothing about the issuing one"
        );
    }
}
