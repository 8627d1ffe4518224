//! The lease lifecycle of a `DynamicCredential`, as pure functions of the persisted
//! lease state and an injected clock: what backs a credential ([`LeaseRef`]), how it is
//! renewed and revoked ([`VaultCall`]), when to renew or issue again ([`decide`]), and
//! when superseded credentials are revoked ([`supersede`], [`split_due`]).
//!
//! Deadlines. A lease ends at the earliest of
//! - its own expiry, once it can no longer be extended (not renewable, or the last
//!   renewal was capped by the maximum TTL, or a certificate's `notAfter`), and
//! - the expiry of the Vault token that issued it when nobody will extend that token
//!   any more: Vault revokes a token's leases and child tokens with it.
//!
//! A new credential is issued when that hard deadline is within the margin
//! `(100 − renewAtPercent)%` of the lease's issued duration (at least
//! [`MIN_MARGIN_SECS`]). Renewals happen at `renewAtPercent ± jitter` of the current
//! duration. A stale (too early) expiry only ever causes an early renewal, never an
//! issue: an unknown maximum is discovered by renewing.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::hash::short_hash;

/// The re-issue margin is never shorter than this, so there is time to issue, write the
/// Secret and let consumers pick it up before the old credential dies.
pub const MIN_MARGIN_SECS: i64 = 5;

/// What backs a credential, with everything needed to renew and revoke it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LeaseRef {
    /// A secret lease: renewed with `sys/leases/renew`, revoked with `sys/leases/revoke`.
    Lease { id: String },
    /// A token from `auth/token/create`: renewed and revoked by accessor.
    Token { accessor: String },
    /// A PKI certificate without a lease: not renewable; revoked by serial at `<mount>/revoke`.
    Certificate { mount: String, serial: String },
    /// A result without a lease or expiry.
    None,
}

/// A Vault request the lifecycle needs (method, path, JSON body).
#[derive(Clone, Debug, PartialEq)]
pub struct VaultCall {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
}

impl LeaseRef {
    /// `lease`, `token`, `certificate` or `none` (as in `status.leaseKind`).
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseRef::Lease { .. } => "lease",
            LeaseRef::Token { .. } => "token",
            LeaseRef::Certificate { .. } => "certificate",
            LeaseRef::None => "none",
        }
    }

    /// The lease id, accessor or serial.
    pub fn handle(&self) -> Option<&str> {
        match self {
            LeaseRef::Lease { id } => Some(id),
            LeaseRef::Token { accessor } => Some(accessor),
            LeaseRef::Certificate { serial, .. } => Some(serial),
            LeaseRef::None => None,
        }
    }

    /// Short hash of the handle, for status (never the handle itself).
    pub fn id_hash(&self) -> Option<String> {
        self.handle().map(|h| short_hash(h.as_bytes()))
    }

    /// Whether this kind of lease can be renewed at all.
    pub fn renewable_kind(&self) -> bool {
        matches!(self, LeaseRef::Lease { .. } | LeaseRef::Token { .. })
    }

    /// The renewal request asking for `increment_secs` more.
    pub fn renew_call(&self, increment_secs: u64) -> Option<VaultCall> {
        match self {
            LeaseRef::Lease { id } => Some(VaultCall {
                method: "POST",
                path: "sys/leases/renew".into(),
                body: json!({ "lease_id": id, "increment": increment_secs }),
            }),
            LeaseRef::Token { accessor } => Some(VaultCall {
                method: "POST",
                path: "auth/token/renew-accessor".into(),
                body: json!({ "accessor": accessor, "increment": increment_secs }),
            }),
            _ => None,
        }
    }

    /// The revocation request.
    pub fn revoke_call(&self) -> Option<VaultCall> {
        match self {
            LeaseRef::Lease { id } => Some(VaultCall {
                method: "POST",
                path: "sys/leases/revoke".into(),
                body: json!({ "lease_id": id }),
            }),
            LeaseRef::Token { accessor } => Some(VaultCall {
                method: "POST",
                path: "auth/token/revoke-accessor".into(),
                body: json!({ "accessor": accessor }),
            }),
            LeaseRef::Certificate { mount, serial } => Some(VaultCall {
                method: "POST",
                path: format!("{mount}/revoke"),
                body: json!({ "serial_number": serial }),
            }),
            LeaseRef::None => None,
        }
    }

    /// The renewed duration and renewability from a renewal response.
    pub fn parse_renewal(&self, resp: &Value) -> Option<(u64, bool)> {
        let base = match self {
            LeaseRef::Token { .. } => resp.get("auth")?,
            _ => resp,
        };
        Some((
            base.get("lease_duration")?.as_u64()?,
            base.get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        ))
    }
}

/// The Vault token a lease depends on (its leases and child tokens die with it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuingToken {
    /// Hash of the token's accessor (the accessor itself is not written to the Secret).
    pub accessor_hash: String,
    /// The token's expiry when last observed; `None` when it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The session token as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentToken {
    pub accessor_hash: String,
    /// `None` when the token never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether the session will keep extending it (renewable and not capped by its
    /// maximum TTL, or re-obtainable in place). When false, `expires_at` is final.
    pub extendable: bool,
}

impl CurrentToken {
    /// The expiry a lease issued with this token now inherits: `None` while the session
    /// keeps the token alive or when it never expires.
    pub fn hard_deadline(&self) -> Option<DateTime<Utc>> {
        if self.extendable {
            None
        } else {
            self.expires_at
        }
    }

    /// The record to keep with a lease issued with this token.
    pub fn issuing(&self) -> Option<IssuingToken> {
        self.expires_at.map(|t| IssuingToken {
            accessor_hash: self.accessor_hash.clone(),
            expires_at: Some(t),
        })
    }
}

/// The hard deadline the issuing token imposes on a lease: none when it never expires or
/// when it is still the session's token and the session keeps extending it; otherwise
/// its last known expiry (nobody renews a token the operator no longer holds).
pub fn token_deadline(
    issuing: Option<&IssuingToken>,
    current: Option<&CurrentToken>,
) -> Option<DateTime<Utc>> {
    let issuing = issuing?;
    match current {
        Some(c) if c.accessor_hash == issuing.accessor_hash => c.hard_deadline(),
        _ => issuing.expires_at,
    }
}

/// Everything the lifecycle remembers about the current credential. Persisted as JSON
/// in the Secret's annotations (the source of truth across operator restarts).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseState {
    pub lease: LeaseRef,
    pub issued_at: DateTime<Utc>,
    /// `None` for results without expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Duration granted by the last issue or renewal.
    pub duration_secs: u64,
    /// Duration granted at issue: the increment asked for on renewal and the base of
    /// the re-issue margin.
    pub issued_duration_secs: u64,
    pub renewable: bool,
    /// A renewal returned less than asked: the lease's maximum TTL is reached and
    /// `expires_at` is final.
    #[serde(default)]
    pub max_reached: bool,
    /// The Vault token the lease depends on, if it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<IssuingToken>,
    pub spec_hash: String,
    /// Hash of the Secret data written for this credential (detects edits).
    pub data_hash: String,
    #[serde(default)]
    pub renewals: u64,
    /// Credentials issued for this resource before this one.
    #[serde(default)]
    pub reissues: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renewal_at: Option<DateTime<Utc>>,
    /// The `vault.certus.io/rotate-now` value this credential was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_marker: Option<String>,
}

/// A credential replaced by a newer one, revoked at `revoke_at`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Superseded {
    pub lease: LeaseRef,
    pub revoke_at: DateTime<Utc>,
}

/// The complete persisted lifecycle state of one resource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Persisted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<LeaseState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<Superseded>,
}

impl Persisted {
    /// Compact JSON for an annotation.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("lease state serializes")
    }
    /// Parses the annotation; `None` when absent or unreadable.
    pub fn from_annotation(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}

/// Renewal timing from the spec plus a jitter draw in `[-1, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub renew_at_percent: u8,
    pub jitter_percent: u8,
    pub jitter: f64,
}

impl Timing {
    /// The fraction of a duration after which to act, jitter applied, within [0.01, 0.99].
    pub fn fraction(&self) -> f64 {
        let j = self.jitter.clamp(-1.0, 1.0) * f64::from(self.jitter_percent);
        ((f64::from(self.renew_at_percent) + j) / 100.0).clamp(0.01, 0.99)
    }
}

/// A jitter in `[-1, 1]` derived from `seed` (e.g. the lease handle and renewal count):
/// different per credential, stable across reconciles and restarts, so an unrelated
/// reconcile never moves a planned renewal.
pub fn stable_jitter(seed: &str) -> f64 {
    let digest = short_hash(seed.as_bytes());
    let n = u32::from_str_radix(&digest[..8], 16).unwrap_or(0);
    f64::from(n) / f64::from(u32::MAX) * 2.0 - 1.0
}

fn secs(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

fn frac_of(d: u64, f: f64) -> Duration {
    Duration::milliseconds((d as f64 * f * 1000.0).round() as i64)
}

/// When the current credential is renewed and when it is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Schedule {
    pub renew_at: Option<DateTime<Utc>>,
    pub reissue_at: Option<DateTime<Utc>>,
    /// The instant the credential stops working for sure (`None` while it can still be
    /// renewed and its maximum is unknown).
    pub hard_deadline: Option<DateTime<Utc>>,
    /// Whether the hard deadline comes from the issuing token.
    pub token_bound: bool,
}

/// Computes the schedule. `token_deadline` comes from [`token_deadline`];
/// `new_token_deadline` is the deadline a credential issued now would inherit
/// ([`CurrentToken::hard_deadline`]).
pub fn schedule(
    state: &LeaseState,
    timing: Timing,
    token_deadline: Option<DateTime<Utc>>,
    new_token_deadline: Option<DateTime<Utc>>,
) -> Schedule {
    let Some(expires) = state.expires_at else {
        return Schedule::default();
    };
    if state.lease == LeaseRef::None {
        return Schedule::default();
    }
    let f = timing.fraction();
    let can_renew = state.lease.renewable_kind() && state.renewable && !state.max_reached;
    let lease_hard = (!can_renew).then_some(expires);
    let (hard, token_bound) = match (lease_hard, token_deadline) {
        (Some(l), Some(t)) if t < l => (Some(t), true),
        (None, Some(t)) if t < expires => (Some(t), true),
        (Some(l), _) => (Some(l), false),
        (None, _) => (None, false),
    };
    let margin = frac_of(state.issued_duration_secs.max(state.duration_secs), 1.0 - f)
        .max(Duration::seconds(MIN_MARGIN_SECS));
    let reissue_at = hard.map(|h| {
        // A new credential from a token that dies no later than the current one would not
        // live longer: wait for the session's next token, issuing at the last moment.
        let pointless = token_bound && new_token_deadline.is_some_and(|n| n <= h);
        if pointless {
            h - Duration::seconds(MIN_MARGIN_SECS)
        } else {
            h - margin
        }
    });
    let renew_at = can_renew.then(|| expires - frac_of(state.duration_secs, 1.0 - f));
    Schedule {
        renew_at,
        reissue_at,
        hard_deadline: hard,
        token_bound,
    }
}

/// Why a new credential is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// No credential yet.
    Initial,
    /// The spec changed since the credential was issued.
    SpecChanged,
    /// The Secret was deleted, or its data or type edited.
    SecretMissingOrTampered,
    /// The lease reached its maximum TTL (or the certificate nears its end).
    MaxTtlNear,
    /// The token that issued the lease expires and nobody will extend it.
    IssuingTokenExpiring,
    /// Vault refused the renewal (expired, revoked, not renewable).
    RenewalRefused,
    /// `vault.certus.io/rotate-now` was set to a new value.
    Forced,
}

impl IssueReason {
    /// CamelCase reason for Events and conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueReason::Initial => "Initial",
            IssueReason::SpecChanged => "SpecChanged",
            IssueReason::SecretMissingOrTampered => "SecretMissingOrTampered",
            IssueReason::MaxTtlNear => "MaxTtlNear",
            IssueReason::IssuingTokenExpiring => "IssuingTokenExpiring",
            IssueReason::RenewalRefused => "RenewalRefused",
            IssueReason::Forced => "Forced",
        }
    }
    /// A phrase for messages.
    pub fn describe(self) -> &'static str {
        match self {
            IssueReason::Initial => "first issue",
            IssueReason::SpecChanged => "the spec changed",
            IssueReason::SecretMissingOrTampered => "the Secret was deleted or edited",
            IssueReason::MaxTtlNear => "the lease reaches its maximum TTL",
            IssueReason::IssuingTokenExpiring => "the Vault token that issued the lease expires",
            IssueReason::RenewalRefused => "Vault refused to renew the lease",
            IssueReason::Forced => "rotation was requested (vault.certus.io/rotate-now)",
        }
    }
}

/// The next step of the lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Issue(IssueReason),
    Renew,
    /// Nothing to do until `until` (`None`: until something changes).
    Wait {
        until: Option<DateTime<Utc>>,
    },
}

/// What [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub now: DateTime<Utc>,
    pub spec_hash: &'a str,
    pub state: Option<&'a LeaseState>,
    /// The Secret exists with the data and type written for `state`.
    pub secret_ok: bool,
    /// A new `rotate-now` value asks for a fresh credential.
    pub rotate_now: bool,
    pub timing: Timing,
    pub token_deadline: Option<DateTime<Utc>>,
    pub new_token_deadline: Option<DateTime<Utc>>,
}

/// Decides what to do now.
pub fn decide(i: Inputs<'_>) -> Step {
    let Some(state) = i.state else {
        return Step::Issue(IssueReason::Initial);
    };
    if state.spec_hash != i.spec_hash {
        return Step::Issue(IssueReason::SpecChanged);
    }
    if !i.secret_ok {
        return Step::Issue(IssueReason::SecretMissingOrTampered);
    }
    if i.rotate_now {
        return Step::Issue(IssueReason::Forced);
    }
    let s = schedule(state, i.timing, i.token_deadline, i.new_token_deadline);
    if s.reissue_at.is_some_and(|r| r <= i.now) {
        return Step::Issue(if s.token_bound {
            IssueReason::IssuingTokenExpiring
        } else {
            IssueReason::MaxTtlNear
        });
    }
    if s.renew_at.is_some_and(|r| r <= i.now) {
        return Step::Renew;
    }
    Step::Wait {
        until: [s.renew_at, s.reissue_at].into_iter().flatten().min(),
    }
}

/// The state after a successful renewal that granted `granted_secs` (asked:
/// `issued_duration_secs`). Granting less than asked means the maximum TTL is reached.
pub fn renewed(
    state: &LeaseState,
    now: DateTime<Utc>,
    granted_secs: u64,
    renewable: bool,
) -> LeaseState {
    let mut s = state.clone();
    s.expires_at = Some(now + secs(granted_secs));
    s.duration_secs = granted_secs;
    s.max_reached = granted_secs < state.issued_duration_secs;
    s.renewable = renewable && granted_secs > 0;
    s.renewals += 1;
    s.last_renewal_at = Some(now);
    s
}

/// The superseded entry for a replaced credential: revoked after `grace`, or at its own
/// expiry when that comes first. `None` for results without a lease.
pub fn supersede(
    old: &LeaseState,
    now: DateTime<Utc>,
    grace: std::time::Duration,
) -> Option<Superseded> {
    if old.lease == LeaseRef::None {
        return None;
    }
    let grace = Duration::from_std(grace).unwrap_or(Duration::MAX);
    let mut at = now
        .checked_add_signed(grace)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if let Some(exp) = old.expires_at {
        at = at.min(exp.max(now));
    }
    Some(Superseded {
        lease: old.lease.clone(),
        revoke_at: at,
    })
}

/// Splits superseded credentials into those due for revocation and those still in
/// their grace period.
pub fn split_due(list: &[Superseded], now: DateTime<Utc>) -> (Vec<Superseded>, Vec<Superseded>) {
    list.iter().cloned().partition(|s| s.revoke_at <= now)
}

/// The earliest instant anything is due: renewal, re-issue, or a revocation.
pub fn next_wake(
    step_until: Option<DateTime<Utc>>,
    superseded: &[Superseded],
) -> Option<DateTime<Utc>> {
    step_until
        .into_iter()
        .chain(superseded.iter().map(|s| s.revoke_at))
        .min()
}

/// A freshly issued credential, read from Vault's response.
#[derive(Clone, PartialEq)]
pub struct Issued {
    pub lease: LeaseRef,
    pub duration_secs: u64,
    pub renewable: bool,
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether the lease dies with the token that issued it (secret leases and non-orphan
    /// child tokens).
    pub token_bound: bool,
    /// Template fields (credential values: never log them).
    pub fields: BTreeMap<String, String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("kind", &self.lease.kind())
            .field("duration_secs", &self.duration_secs)
            .field("renewable", &self.renewable)
            .field("expires_at", &self.expires_at)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The PKI mount of an issuing path: the part before `/issue/` or `/sign/`.
pub fn pki_mount(path: &str) -> String {
    let p = path.trim_matches('/');
    for marker in ["/issue/", "/sign/", "/sign-verbatim"] {
        if let Some(i) = p.rfind(marker) {
            return p[..i].to_string();
        }
    }
    p.split('/').next().unwrap_or(p).to_string()
}

/// Reads an issuing response: the lease it carries and the fields templates see.
///
/// - `auth` present (token endpoints): [`LeaseRef::Token`]; fields `token`, `accessor`,
///   `policies` (JSON list), `ttl` (seconds), plus `data` fields if any.
/// - a non-empty `lease_id`: [`LeaseRef::Lease`].
/// - `data.serial_number` and `data.expiration` without a lease (PKI):
///   [`LeaseRef::Certificate`], expiring at `expiration`.
/// - otherwise [`LeaseRef::None`].
///
/// `ca_chain` (a list of PEM blocks) becomes one PEM text.
pub fn read_issued(path: &str, resp: &Value, now: DateTime<Utc>) -> Issued {
    let data = resp.get("data").cloned().unwrap_or(Value::Null);
    let mut fields = crate::template::fields_of(&data);
    if let Some(chain) = data.get("ca_chain").and_then(Value::as_array) {
        let pems: Vec<&str> = chain
            .iter()
            .filter_map(Value::as_str)
            .map(str::trim_end)
            .collect();
        fields.insert("ca_chain".into(), pems.join("\n") + "\n");
    }
    let lease_id = resp
        .get("lease_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let lease_duration = resp
        .get("lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let renewable = resp
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(auth) = resp.get("auth").filter(|a| a.is_object()) {
        let ttl = auth
            .get("lease_duration")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let accessor = auth
            .get("accessor")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(t) = auth.get("client_token").and_then(Value::as_str) {
            fields.insert("token".into(), t.to_string());
        }
        fields.insert("accessor".into(), accessor.clone());
        fields.insert(
            "policies".into(),
            auth.get("policies")
                .cloned()
                .unwrap_or_else(|| json!([]))
                .to_string(),
        );
        fields.insert("ttl".into(), ttl.to_string());
        let orphan = auth.get("orphan").and_then(Value::as_bool).unwrap_or(false);
        return Issued {
            lease: if accessor.is_empty() {
                LeaseRef::None
            } else {
                LeaseRef::Token { accessor }
            },
            duration_secs: ttl,
            renewable: auth
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            expires_at: (ttl > 0).then(|| now + secs(ttl)),
            token_bound: !orphan,
            fields,
        };
    }
    if !lease_id.is_empty() {
        return Issued {
            lease: LeaseRef::Lease {
                id: lease_id.to_string(),
            },
            duration_secs: lease_duration,
            renewable,
            expires_at: Some(now + secs(lease_duration)),
            token_bound: true,
            fields,
        };
    }
    let serial = data.get("serial_number").and_then(Value::as_str);
    let expiration = data.get("expiration").and_then(Value::as_i64);
    if let (Some(serial), Some(exp)) = (serial, expiration) {
        let expires = DateTime::<Utc>::from_timestamp(exp, 0).unwrap_or(now);
        let lifetime = (expires - now).num_seconds().max(0) as u64;
        return Issued {
            lease: LeaseRef::Certificate {
                mount: pki_mount(path),
                serial: serial.to_string(),
            },
            duration_secs: lifetime,
            renewable: false,
            expires_at: Some(expires),
            token_bound: false,
            fields,
        };
    }
    Issued {
        lease: LeaseRef::None,
        duration_secs: 0,
        renewable: false,
        expires_at: None,
        token_bound: false,
        fields,
    }
}

/// The state of a credential issued now.
pub fn issued_state(
    issued: &Issued,
    now: DateTime<Utc>,
    spec_hash: &str,
    data_hash: &str,
    token: Option<&CurrentToken>,
    previous: Option<&LeaseState>,
    rotate_marker: Option<String>,
) -> LeaseState {
    LeaseState {
        lease: issued.lease.clone(),
        issued_at: now,
        expires_at: issued.expires_at,
        duration_secs: issued.duration_secs,
        issued_duration_secs: issued.duration_secs,
        renewable: issued.renewable && issued.lease.renewable_kind(),
        max_reached: false,
        token: if issued.token_bound {
            token.and_then(CurrentToken::issuing)
        } else {
            None
        },
        spec_hash: spec_hash.to_string(),
        data_hash: data_hash.to_string(),
        renewals: 0,
        reissues: previous.map(|p| p.reissues + 1).unwrap_or(0),
        last_renewal_at: None,
        rotate_marker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn timing() -> Timing {
        Timing {
            renew_at_percent: 50,
            jitter_percent: 10,
            jitter: 0.0,
        }
    }

    /// A renewable 20s secret lease issued at t(0).
    fn lease() -> LeaseState {
        LeaseState {
            lease: LeaseRef::Lease {
                id: "db/creds/r/abc".into(),
            },
            issued_at: t(0),
            expires_at: Some(t(20)),
            duration_secs: 20,
            issued_duration_secs: 20,
            renewable: true,
            max_reached: false,
            token: None,
            spec_hash: "S".into(),
            data_hash: "D".into(),
            renewals: 0,
            reissues: 0,
            last_renewal_at: None,
            rotate_marker: None,
        }
    }

    fn inputs<'a>(now: i64, state: Option<&'a LeaseState>) -> Inputs<'a> {
        Inputs {
            now: t(now),
            spec_hash: "S",
            state,
            secret_ok: true,
            rotate_now: false,
            timing: timing(),
            token_deadline: None,
            new_token_deadline: None,
        }
    }

    #[test]
    fn issue_reasons_in_precedence_order() {
        let s = lease();
        assert_eq!(decide(inputs(0, None)), Step::Issue(IssueReason::Initial));
        let mut i = inputs(1, Some(&s));
        i.spec_hash = "other";
        i.secret_ok = false;
        assert_eq!(decide(i), Step::Issue(IssueReason::SpecChanged));
        let mut i = inputs(1, Some(&s));
        i.secret_ok = false;
        i.rotate_now = true;
        assert_eq!(decide(i), Step::Issue(IssueReason::SecretMissingOrTampered));
        let mut i = inputs(1, Some(&s));
        i.rotate_now = true;
        assert_eq!(decide(i), Step::Issue(IssueReason::Forced));
    }

    #[test]
    fn renews_at_the_percentage_and_waits_before() {
        let s = lease();
        assert_eq!(
            decide(inputs(3, Some(&s))),
            Step::Wait { until: Some(t(10)) }
        );
        assert_eq!(decide(inputs(10, Some(&s))), Step::Renew);
        // Jitter moves the point by up to jitterPercent of the duration.
        let mut i = inputs(0, Some(&s));
        i.timing.jitter = 1.0;
        assert_eq!(decide(i), Step::Wait { until: Some(t(12)) });
        i.timing.jitter = -1.0;
        assert_eq!(decide(i), Step::Wait { until: Some(t(8)) });
    }

    #[test]
    fn stale_expiry_only_renews_early_never_issues() {
        // Persisted expiry long past (the operator was down, renewals were not written):
        // the lease may well be alive; renewing tells.
        let s = lease();
        assert_eq!(decide(inputs(500, Some(&s))), Step::Renew);
    }

    #[test]
    fn renewal_capped_by_max_ttl_leads_to_reissue_within_margin() {
        let s = renewed(&lease(), t(50), 8, true);
        assert!(s.max_reached);
        assert_eq!(s.expires_at, Some(t(58)));
        assert_eq!((s.renewals, s.last_renewal_at), (1, Some(t(50))));
        // Margin: 50% of the issued 20s = 10s → re-issue at 48 (already due).
        assert_eq!(
            decide(inputs(50, Some(&s))),
            Step::Issue(IssueReason::MaxTtlNear)
        );
        let s = renewed(&lease(), t(30), 19, true);
        assert_eq!(s.expires_at, Some(t(49)));
        assert_eq!(
            decide(inputs(31, Some(&s))),
            Step::Wait { until: Some(t(39)) }
        );
        assert_eq!(
            decide(inputs(39, Some(&s))),
            Step::Issue(IssueReason::MaxTtlNear)
        );
        // A full grant is not capped.
        assert!(!renewed(&lease(), t(10), 20, true).max_reached);
    }

    #[test]
    fn margin_has_a_floor() {
        let mut s = lease();
        s.duration_secs = 4;
        s.issued_duration_secs = 4;
        s.renewable = false;
        s.expires_at = Some(t(4));
        // 50% of 4s is 2s, but at least MIN_MARGIN_SECS.
        assert_eq!(
            decide(inputs(0, Some(&s))),
            Step::Issue(IssueReason::MaxTtlNear)
        );
    }

    #[test]
    fn certificates_are_reissued_at_the_percentage_of_their_lifetime() {
        let mut s = lease();
        s.lease = LeaseRef::Certificate {
            mount: "pki".into(),
            serial: "01:02".into(),
        };
        s.renewable = false;
        s.duration_secs = 100;
        s.issued_duration_secs = 100;
        s.expires_at = Some(t(100));
        assert_eq!(
            decide(inputs(10, Some(&s))),
            Step::Wait { until: Some(t(50)) }
        );
        assert_eq!(
            decide(inputs(50, Some(&s))),
            Step::Issue(IssueReason::MaxTtlNear)
        );
    }

    #[test]
    fn static_results_wait_forever() {
        let mut s = lease();
        s.lease = LeaseRef::None;
        s.expires_at = None;
        assert_eq!(
            decide(inputs(1_000_000, Some(&s))),
            Step::Wait { until: None }
        );
    }

    #[test]
    fn issuing_token_deadline_caps_the_lease() {
        let mut s = lease();
        s.duration_secs = 100;
        s.issued_duration_secs = 100;
        s.expires_at = Some(t(100));
        let mut i = inputs(0, Some(&s));
        i.token_deadline = Some(t(60));
        // Margin 50s → re-issue at 10, before the renewal at 50.
        assert_eq!(decide(i), Step::Wait { until: Some(t(10)) });
        i.now = t(10);
        assert_eq!(decide(i), Step::Issue(IssueReason::IssuingTokenExpiring));
        // A token deadline after the lease expiry does not matter.
        i.token_deadline = Some(t(500));
        assert_eq!(decide(i), Step::Wait { until: Some(t(50)) });
    }

    #[test]
    fn reissue_waits_when_a_new_credential_would_not_outlive_the_old() {
        let mut s = lease();
        s.duration_secs = 100;
        s.issued_duration_secs = 100;
        s.expires_at = Some(t(100));
        let mut i = inputs(10, Some(&s));
        i.token_deadline = Some(t(60));
        i.new_token_deadline = Some(t(60));
        assert_eq!(decide(i), Step::Wait { until: Some(t(50)) });
        i.now = t(55);
        assert_eq!(decide(i), Step::Issue(IssueReason::IssuingTokenExpiring));
        // Once the session holds a fresh token, re-issue right away.
        i.now = t(12);
        i.new_token_deadline = Some(t(400));
        assert_eq!(decide(i), Step::Issue(IssueReason::IssuingTokenExpiring));
    }

    #[test]
    fn token_deadline_depends_on_who_holds_the_token() {
        let issuing = IssuingToken {
            accessor_hash: "A".into(),
            expires_at: Some(t(100)),
        };
        let same_kept = CurrentToken {
            accessor_hash: "A".into(),
            expires_at: Some(t(150)),
            extendable: true,
        };
        let same_final = CurrentToken {
            extendable: false,
            ..same_kept.clone()
        };
        let other = CurrentToken {
            accessor_hash: "B".into(),
            expires_at: Some(t(900)),
            extendable: true,
        };
        assert_eq!(token_deadline(Some(&issuing), Some(&same_kept)), None);
        assert_eq!(
            token_deadline(Some(&issuing), Some(&same_final)),
            Some(t(150))
        );
        assert_eq!(token_deadline(Some(&issuing), Some(&other)), Some(t(100)));
        assert_eq!(token_deadline(Some(&issuing), None), Some(t(100)));
        assert_eq!(token_deadline(None, Some(&other)), None);
        assert_eq!(same_kept.hard_deadline(), None);
        assert_eq!(same_final.hard_deadline(), Some(t(150)));
        let never = CurrentToken {
            accessor_hash: "R".into(),
            expires_at: None,
            extendable: false,
        };
        assert_eq!(never.issuing(), None);
        assert_eq!(never.hard_deadline(), None);
    }

    #[test]
    fn superseded_are_revoked_after_grace_but_not_after_expiry() {
        let s = lease();
        let g = std::time::Duration::from_secs(5);
        assert_eq!(supersede(&s, t(2), g).unwrap().revoke_at, t(7));
        assert_eq!(supersede(&s, t(18), g).unwrap().revoke_at, t(20));
        assert_eq!(supersede(&s, t(30), g).unwrap().revoke_at, t(30));
        let mut none = lease();
        none.lease = LeaseRef::None;
        assert!(supersede(&none, t(2), g).is_none());
        let list = vec![
            supersede(&s, t(2), g).unwrap(),
            supersede(&s, t(18), g).unwrap(),
        ];
        let (due, pending) = split_due(&list, t(10));
        assert_eq!((due.len(), pending.len()), (1, 1));
        assert_eq!(next_wake(Some(t(30)), &pending), Some(t(20)));
        assert_eq!(next_wake(None, &[]), None);
    }

    #[test]
    fn renew_and_revoke_calls() {
        let l = LeaseRef::Lease {
            id: "db/creds/r/x".into(),
        };
        let c = l.renew_call(20).unwrap();
        assert_eq!((c.method, c.path.as_str()), ("POST", "sys/leases/renew"));
        assert_eq!(c.body, json!({"lease_id": "db/creds/r/x", "increment": 20}));
        assert_eq!(
            l.revoke_call().unwrap().body,
            json!({"lease_id": "db/creds/r/x"})
        );
        let tk = LeaseRef::Token {
            accessor: "acc".into(),
        };
        assert_eq!(tk.renew_call(60).unwrap().path, "auth/token/renew-accessor");
        assert_eq!(tk.revoke_call().unwrap().path, "auth/token/revoke-accessor");
        let cert = LeaseRef::Certificate {
            mount: "pki/int".into(),
            serial: "0a:0b".into(),
        };
        assert!(cert.renew_call(1).is_none());
        let r = cert.revoke_call().unwrap();
        assert_eq!(
            (r.path.as_str(), r.body["serial_number"].as_str()),
            ("pki/int/revoke", Some("0a:0b"))
        );
        assert!(LeaseRef::None.revoke_call().is_none());
        assert_eq!(l.id_hash().unwrap().len(), 16);
        assert_ne!(l.id_hash().unwrap(), "db/creds/r/x");
        assert_eq!(
            tk.parse_renewal(&json!({"auth": {"lease_duration": 60, "renewable": true}})),
            Some((60, true))
        );
        assert_eq!(
            l.parse_renewal(&json!({"lease_duration": 19, "renewable": true})),
            Some((19, true))
        );
        assert_eq!(l.parse_renewal(&json!({})), None);
    }

    #[test]
    fn reads_issue_responses() {
        let db = read_issued(
            "database/creds/r",
            &json!({"lease_id": "database/creds/r/abc", "lease_duration": 20, "renewable": true, "data": {"username": "u", "password": "p"}}),
            t(0),
        );
        assert_eq!(
            db.lease,
            LeaseRef::Lease {
                id: "database/creds/r/abc".into()
            }
        );
        assert_eq!(
            (
                db.duration_secs,
                db.renewable,
                db.expires_at,
                db.token_bound
            ),
            (20, true, Some(t(20)), true)
        );
        assert_eq!(db.fields["username"], "u");
        assert!(!format!("{db:?}").contains("\"p\""));

        let tok = read_issued(
            "auth/token/create",
            &json!({"lease_id": "", "data": null, "auth": {"client_token": "s.x", "accessor": "acc", "policies": ["a", "default"], "lease_duration": 900, "renewable": true, "orphan": false}}),
            t(0),
        );
        assert_eq!(
            tok.lease,
            LeaseRef::Token {
                accessor: "acc".into()
            }
        );
        assert_eq!(
            (tok.fields["token"].as_str(), tok.fields["ttl"].as_str()),
            ("s.x", "900")
        );
        assert_eq!(tok.fields["policies"], "[\"a\",\"default\"]");
        assert!(tok.token_bound);

        let cert = read_issued(
            "pki_int/issue/web",
            &json!({"lease_id": "", "lease_duration": 0, "data": {"serial_number": "1a:2b", "expiration": 1_800_000_060i64, "certificate": "C", "ca_chain": ["I\n", "R"], "issuing_ca": "I", "private_key": "K"}}),
            t(0),
        );
        assert_eq!(
            cert.lease,
            LeaseRef::Certificate {
                mount: "pki_int".into(),
                serial: "1a:2b".into()
            }
        );
        assert_eq!(
            (cert.duration_secs, cert.expires_at, cert.token_bound),
            (60, Some(t(60)), false)
        );
        assert_eq!(cert.fields["ca_chain"], "I\nR\n");

        let kv = read_issued("secret/data/x", &json!({"data": {"a": "b"}}), t(0));
        assert_eq!((kv.lease, kv.expires_at), (LeaseRef::None, None));
    }

    #[test]
    fn pki_mounts() {
        assert_eq!(pki_mount("pki/issue/web"), "pki");
        assert_eq!(pki_mount("teams/a/pki/issue/web"), "teams/a/pki");
        assert_eq!(pki_mount("pki/sign/web"), "pki");
        assert_eq!(pki_mount("other/path"), "other");
    }

    #[test]
    fn persisted_state_round_trips_compactly() {
        let p = Persisted {
            current: Some(lease()),
            superseded: vec![Superseded {
                lease: LeaseRef::Token {
                    accessor: "a".into(),
                },
                revoke_at: t(9),
            }],
        };
        let text = p.to_annotation();
        assert!(!text.contains('\n') && !text.contains(": "), "{text}");
        assert_eq!(Persisted::from_annotation(&text), Some(p));
        assert_eq!(Persisted::from_annotation("{broken"), None);
    }

    #[test]
    fn jitter_is_stable_and_spread() {
        assert_eq!(stable_jitter("a"), stable_jitter("a"));
        let draws: Vec<f64> = (0..200)
            .map(|i| stable_jitter(&format!("lease-{i}")))
            .collect();
        assert!(draws.iter().all(|d| (-1.0..=1.0).contains(d)));
        assert!(draws.iter().any(|d| *d < -0.5) && draws.iter().any(|d| *d > 0.5));
        let t = Timing {
            renew_at_percent: 95,
            jitter_percent: 50,
            jitter: 1.0,
        };
        assert_eq!(t.fraction(), 0.99);
    }

    #[test]
    fn issued_state_links_token_only_when_bound() {
        let tok = CurrentToken {
            accessor_hash: "A".into(),
            expires_at: Some(t(99)),
            extendable: true,
        };
        let db = read_issued(
            "database/creds/r",
            &json!({"lease_id": "x", "lease_duration": 20, "renewable": true}),
            t(0),
        );
        let prev = lease();
        let s = issued_state(
            &db,
            t(0),
            "S",
            "D",
            Some(&tok),
            Some(&prev),
            Some("m".into()),
        );
        assert_eq!(s.token.as_ref().unwrap().accessor_hash, "A");
        assert_eq!(
            (s.reissues, s.renewals, s.rotate_marker.as_deref()),
            (1, 0, Some("m"))
        );
        let cert = read_issued(
            "pki/issue/w",
            &json!({"data": {"serial_number": "1", "expiration": 1_800_000_060i64}}),
            t(0),
        );
        assert!(issued_state(&cert, t(0), "S", "D", Some(&tok), None, None)
            .token
            .is_none());
    }
}
