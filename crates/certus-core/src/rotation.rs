//! Pure rotation logic: when a secret is due, how new values are generated, and what a
//! KV secret looks like after a rotation and after its grace period.
//!
//! Time comes from a [`Clock`] and randomness from an [`rand::Rng`] passed in, so every
//! decision is reproducible in tests. Real values use `rand::rng()` (a CSPRNG seeded from
//! the operating system).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use certus_api::{
    rotation_kv_metadata as meta, ByteEncoding, GeneratedKey, KeepPrevious, PasswordGenerator,
};
use chrono::{DateTime, Utc};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{Map, Value};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that says what it is told (tests).
#[derive(Debug)]
pub struct FixedClock(Mutex<DateTime<Utc>>);

impl FixedClock {
    pub fn new(t: DateTime<Utc>) -> Self {
        FixedClock(Mutex::new(t))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
    pub fn advance(&self, d: Duration) {
        let mut g = self.0.lock().unwrap();
        *g += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// When rotations happen.
#[derive(Clone, Debug)]
pub enum When {
    /// `interval` after the last change.
    Interval(Duration),
    /// The first time of the cron schedule after the last change, in `tz`.
    Schedule {
        cron: Box<croner::Cron>,
        tz: chrono_tz::Tz,
    },
}

/// Parses `interval` or `schedule` + `timeZone` (exactly one of the first two).
pub fn parse_when(
    interval: Option<&str>,
    schedule: Option<&str>,
    time_zone: Option<&str>,
) -> Result<When, String> {
    match (interval, schedule) {
        (Some(i), None) => {
            if time_zone.is_some() {
                return Err("spec.timeZone applies to spec.schedule only".into());
            }
            let d = certus_api::parse_duration(i).map_err(|e| format!("spec.interval: {e}"))?;
            if d < Duration::from_secs(1) {
                return Err(format!("spec.interval: {i:?} is shorter than 1s"));
            }
            Ok(When::Interval(d))
        }
        (None, Some(s)) => {
            let fields = s.split_whitespace().count();
            if fields != 5 {
                return Err(format!(
                    "spec.schedule: {s:?} has {fields} fields; use 5 (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\""
                ));
            }
            let cron = croner::Cron::from_str(s)
                .map_err(|e| format!("spec.schedule: {s:?} is not a cron expression: {e}"))?;
            let tz_name = time_zone.unwrap_or("UTC");
            let tz = chrono_tz::Tz::from_str(tz_name).map_err(|_| {
                format!("spec.timeZone: {tz_name:?} is not an IANA time zone (e.g. UTC, Europe/Berlin, America/New_York)")
            })?;
            Ok(When::Schedule {
                cron: Box::new(cron),
                tz,
            })
        }
        (Some(_), Some(_)) => Err("set only one of spec.interval and spec.schedule".into()),
        (None, None) => Err("set one of spec.interval and spec.schedule".into()),
    }
}

impl When {
    /// When the next rotation is due after a change at `last_change`.
    pub fn next_after(&self, last_change: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            When::Interval(d) => chrono::Duration::from_std(*d)
                .ok()
                .and_then(|d| last_change.checked_add_signed(d)),
            When::Schedule { cron, tz } => cron
                .find_next_occurrence(&last_change.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// Why a rotation is (or is not) due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DueReason {
    /// The secret does not exist yet: the first rotation initializes it.
    Initialize,
    /// The interval passed or the schedule fired since the last change.
    Due,
    /// The `vault.certus.io/rotate-now` annotation carries a value not handled yet.
    RotateNow,
    /// Not due before `next`.
    NotDue,
}

/// The scheduling decision for one reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reason: DueReason,
    /// When the next rotation is due (after this one, if one happens now: the caller
    /// recomputes it from the new last change).
    pub next: Option<DateTime<Utc>>,
}

impl Decision {
    pub fn rotate(&self) -> bool {
        self.reason != DueReason::NotDue
    }
}

/// Decides whether to rotate now. `last_change` is `None` when the secret does not
/// exist; `rotate_now` is the annotation's value and `handled` the value already acted on.
pub fn decide(
    when: &When,
    last_change: Option<DateTime<Utc>>,
    rotate_now: Option<&str>,
    handled: Option<&str>,
    now: DateTime<Utc>,
) -> Decision {
    let next = last_change.and_then(|t| when.next_after(t));
    let reason = if rotate_now.is_some_and(|v| !v.is_empty() && Some(v) != handled) {
        DueReason::RotateNow
    } else {
        match (last_change, next) {
            (None, _) => DueReason::Initialize,
            (Some(_), Some(n)) if n <= now => DueReason::Due,
            (Some(_), None) => DueReason::NotDue,
            _ => DueReason::NotDue,
        }
    };
    Decision { reason, next }
}

/// How long to wait before the next reconcile, given the next rotation and the end of a
/// grace period (whichever comes first), capped at `max` so drift is noticed.
pub fn requeue_after(
    now: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
    grace_ends: Option<DateTime<Utc>>,
    max: Duration,
) -> Duration {
    let soonest = [next, grace_ends].into_iter().flatten().min();
    match soonest {
        None => max,
        Some(t) => {
            let d = (t - now).to_std().unwrap_or(Duration::ZERO);
            // Never spin: at least 1s; wake slightly after the instant so it has passed.
            (d + Duration::from_millis(250)).clamp(Duration::from_secs(1), max)
        }
    }
}

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Why a value could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("{0}")]
    Invalid(String),
}

/// Checks a password generator's settings (what the CEL rules also check).
pub fn check_password(g: &PasswordGenerator) -> Result<(), GenerateError> {
    let mins = u64::from(g.lowercase)
        + u64::from(g.uppercase)
        + u64::from(g.digits)
        + u64::from(g.symbols);
    if mins > u64::from(g.length) {
        return Err(GenerateError::Invalid(format!(
            "password: the class minimums add up to {mins}, more than length {}",
            g.length
        )));
    }
    if mins == 0 {
        return Err(GenerateError::Invalid(
            "password: at least one character class needs a minimum above 0".into(),
        ));
    }
    if g.symbols > 0 && (g.symbol_charset.is_empty() || !g.symbol_charset.is_ascii()) {
        return Err(GenerateError::Invalid(
            "password.symbolCharset must be non-empty printable ASCII".into(),
        ));
    }
    if g.symbol_charset
        .bytes()
        .any(|b| b.is_ascii_alphanumeric() || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(GenerateError::Invalid(
            "password.symbolCharset must hold symbols only (no letters, digits or spaces)".into(),
        ));
    }
    Ok(())
}

/// Generates a password: the class minimums first, the rest from every class whose
/// minimum is above 0, then shuffled.
pub fn generate_password<R: Rng + ?Sized>(
    g: &PasswordGenerator,
    rng: &mut R,
) -> Result<String, GenerateError> {
    check_password(g)?;
    let symbols = g.symbol_charset.as_bytes();
    let classes: [(&[u8], u32); 4] = [
        (LOWER, g.lowercase),
        (UPPER, g.uppercase),
        (DIGITS, g.digits),
        (symbols, g.symbols),
    ];
    let mut pool: Vec<u8> = vec![];
    let mut out: Vec<u8> = Vec::with_capacity(g.length as usize);
    for (set, min) in classes {
        if min > 0 {
            pool.extend_from_slice(set);
            for _ in 0..min {
                out.push(set[rng.random_range(0..set.len())]);
            }
        }
    }
    while out.len() < g.length as usize {
        out.push(pool[rng.random_range(0..pool.len())]);
    }
    out.shuffle(rng);
    Ok(String::from_utf8(out).expect("ASCII"))
}

/// A URL-safe token of `length` characters.
pub fn generate_token<R: Rng + ?Sized>(length: u32, rng: &mut R) -> String {
    (0..length)
        .map(|_| URL_SAFE[rng.random_range(0..URL_SAFE.len())] as char)
        .collect()
}

/// `length` random bytes, encoded.
pub fn generate_bytes<R: Rng + ?Sized>(length: u32, encoding: ByteEncoding, rng: &mut R) -> String {
    let mut buf = vec![0u8; length as usize];
    rng.fill(&mut buf[..]);
    match encoding {
        ByteEncoding::Hex => hex::encode(&buf),
        ByteEncoding::Base64 => base64_std(&buf),
    }
}

/// Standard base64 with padding.
pub fn base64_std(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Generates the value of a key locally; `Ok(None)` for `vaultPasswordPolicy`, which
/// Vault generates.
pub fn generate_local<R: Rng + ?Sized>(
    k: &GeneratedKey,
    rng: &mut R,
) -> Result<Option<String>, GenerateError> {
    if let Some(p) = &k.password {
        return generate_password(p, rng).map(Some);
    }
    if let Some(t) = &k.token {
        return Ok(Some(generate_token(t.length, rng)));
    }
    if let Some(b) = &k.random_bytes {
        return Ok(Some(generate_bytes(b.length, b.encoding, rng)));
    }
    if k.vault_password_policy.is_some() {
        return Ok(None);
    }
    Err(GenerateError::Invalid(format!(
        "keys[{}]: set exactly one of password, vaultPasswordPolicy, randomBytes, token",
        k.key
    )))
}

/// The key holding a key's previous value in `Suffix` mode.
pub fn previous_key(key: &str) -> String {
    format!("{key}_previous")
}

/// Validates the generated keys of a KV rotation (pure; before any Vault request).
pub fn check_keys(
    keys: &[GeneratedKey],
    keep: KeepPrevious,
    list_key: &str,
) -> Result<(), GenerateError> {
    if keys.is_empty() {
        return Err(GenerateError::Invalid(
            "spec.kv.keys: at least one key".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for k in keys {
        let n = [
            k.password.is_some(),
            k.vault_password_policy.is_some(),
            k.random_bytes.is_some(),
            k.token.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            return Err(GenerateError::Invalid(format!(
                "spec.kv.keys[{}]: set exactly one of password, vaultPasswordPolicy, randomBytes, token",
                k.key
            )));
        }
        if let Some(p) = &k.password {
            check_password(p)
                .map_err(|e| GenerateError::Invalid(format!("spec.kv.keys[{}].{e}", k.key)))?;
        }
        if !seen.insert(k.key.clone()) {
            return Err(GenerateError::Invalid(format!(
                "spec.kv.keys: {:?} appears twice",
                k.key
            )));
        }
    }
    match keep {
        KeepPrevious::ValidTokens if keys.len() != 1 => Err(GenerateError::Invalid(
            "spec.kv.keepPrevious: ValidTokens needs exactly one key".into(),
        )),
        KeepPrevious::ValidTokens if keys.iter().any(|k| k.key == list_key) => {
            Err(GenerateError::Invalid(format!(
                "spec.kv.validTokensKey {list_key:?} is also a generated key"
            )))
        }
        KeepPrevious::Suffix if keys.iter().any(|k| seen.contains(&previous_key(&k.key))) => {
            Err(GenerateError::Invalid(
                "spec.kv.keys: a key is named like another key's <key>_previous".into(),
            ))
        }
        _ => Ok(()),
    }
}

/// The KV data after a rotation: `current` with every generated key replaced by its new
/// value, and — when `keep_previous` is true (a grace period is set) — the old values
/// kept readable as `<key>_previous` (`Suffix`) or as `[new, old]` under `list_key`
/// (`ValidTokens`). Keys that are not generated are kept as they are.
pub fn rotated_data(
    current: &Map<String, Value>,
    new_values: &BTreeMap<String, String>,
    keep: KeepPrevious,
    list_key: &str,
    keep_previous: bool,
) -> Map<String, Value> {
    let mut out = current.clone();
    for (k, v) in new_values {
        let old = current.get(k).and_then(Value::as_str).map(str::to_string);
        out.insert(k.clone(), Value::String(v.clone()));
        match keep {
            KeepPrevious::Suffix => {
                match old.filter(|_| keep_previous) {
                    Some(o) => out.insert(previous_key(k), Value::String(o)),
                    None => out.remove(&previous_key(k)),
                };
            }
            KeepPrevious::ValidTokens => {
                let mut list = vec![Value::String(v.clone())];
                if let Some(o) = old.filter(|_| keep_previous) {
                    list.push(Value::String(o));
                }
                out.insert(list_key.to_string(), Value::Array(list));
            }
            KeepPrevious::None => {}
        }
    }
    out
}

/// The KV data at the end of the grace period: the previous values removed. `None` when
/// there is nothing to remove.
pub fn grace_ended_data(
    current: &Map<String, Value>,
    keys: &[String],
    keep: KeepPrevious,
    list_key: &str,
) -> Option<Map<String, Value>> {
    let mut out = current.clone();
    let mut changed = false;
    for k in keys {
        match keep {
            KeepPrevious::Suffix => changed |= out.remove(&previous_key(k)).is_some(),
            KeepPrevious::ValidTokens => {
                if let Some(Value::Array(list)) = out.get(list_key) {
                    if list.len() > 1 {
                        let cur = current.get(k).cloned().unwrap_or_else(|| list[0].clone());
                        out.insert(list_key.to_string(), Value::Array(vec![cur]));
                        changed = true;
                    }
                }
            }
            KeepPrevious::None => {}
        }
    }
    changed.then_some(out)
}

/// The facts of a KV v2 secret's metadata the rotation needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvMetadata {
    /// `current_version`; 0 when the secret does not exist (or was never written).
    pub current_version: u64,
    /// `created_time` of the current version.
    pub current_created: Option<DateTime<Utc>>,
    /// Whether the current version is deleted or destroyed.
    pub current_deleted: bool,
    /// `custom_metadata`.
    pub custom: BTreeMap<String, String>,
}

impl KvMetadata {
    /// Reads the fields from a `GET <mount>/metadata/<path>` response's `data`.
    pub fn from_json(data: &Value) -> KvMetadata {
        let current_version = data
            .get("current_version")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let version = data
            .get("versions")
            .and_then(|v| v.get(current_version.to_string()));
        let current_created = version
            .and_then(|v| v.get("created_time"))
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        let deletion = version
            .and_then(|v| v.get("deletion_time"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let destroyed = version
            .and_then(|v| v.get("destroyed"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let custom = data
            .get("custom_metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        KvMetadata {
            current_version,
            current_created,
            current_deleted: !deletion.is_empty() || destroyed,
            custom,
        }
    }

    fn custom_u64(&self, key: &str) -> Option<u64> {
        self.custom.get(key).and_then(|v| v.parse().ok())
    }

    fn custom_time(&self, key: &str) -> Option<DateTime<Utc>> {
        self.custom
            .get(key)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether there is a live value.
    pub fn exists(&self) -> bool {
        self.current_version > 0 && !self.current_deleted
    }

    /// When the secret's value last changed: the current version's creation time; for a
    /// version the operator wrote (a rotation, or the removal of the previous values at
    /// the end of a grace period, which is no change of the value) the rotation time it
    /// recorded. A version written by hand counts from its creation.
    pub fn last_change(&self) -> Option<DateTime<Utc>> {
        if !self.exists() {
            return None;
        }
        // Our own rotation (or the version that ended its grace period): the time we
        // recorded, so every time the decision uses comes from the same clock.
        if self.custom_u64(meta::CLEANUP_VERSION) == Some(self.current_version)
            || self.custom_u64(meta::ROTATED_VERSION) == Some(self.current_version)
        {
            if let Some(t) = self.custom_time(meta::ROTATED_AT) {
                return Some(t);
            }
        }
        self.current_created
    }

    /// When the grace period of the operator's last rotation ends, if the current version
    /// is that rotation (so it still holds previous values).
    pub fn grace_ends(&self, grace: Duration) -> Option<DateTime<Utc>> {
        if grace.is_zero()
            || self.custom_u64(meta::ROTATED_VERSION) != Some(self.current_version)
            || self.custom_u64(meta::CLEANUP_VERSION) == Some(self.current_version)
        {
            return None;
        }
        let at = self
            .custom_time(meta::ROTATED_AT)
            .or(self.current_created)?;
        at.checked_add_signed(chrono::Duration::from_std(grace).ok()?)
    }

    /// The `rotate-now` value the last rotation handled.
    pub fn handled_rotate_now(&self) -> Option<&str> {
        self.custom.get(meta::ROTATE_NOW).map(String::as_str)
    }
}

/// The custom metadata to write after a rotation to `version`: the existing entries
/// with the operator's markers updated.
pub fn custom_after_rotation(
    existing: &BTreeMap<String, String>,
    version: u64,
    at: DateTime<Utc>,
    rotate_now: Option<&str>,
    rotated_by: &str,
) -> BTreeMap<String, String> {
    let mut m = existing.clone();
    m.insert(meta::ROTATED_VERSION.into(), version.to_string());
    m.insert(
        meta::ROTATED_AT.into(),
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    m.insert(meta::ROTATED_BY.into(), rotated_by.into());
    m.remove(meta::CLEANUP_VERSION);
    if let Some(v) = rotate_now.filter(|v| !v.is_empty()) {
        m.insert(meta::ROTATE_NOW.into(), v.to_string());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn pw(length: u32, l: u32, u: u32, d: u32, s: u32) -> PasswordGenerator {
        PasswordGenerator {
            length,
            lowercase: l,
            uppercase: u,
            digits: d,
            symbols: s,
            symbol_charset: certus_api::DEFAULT_SYMBOLS.into(),
        }
    }

    #[test]
    fn interval_decisions() {
        let w = parse_when(Some("10s"), None, None).unwrap();
        let last = t("2026-01-01T00:00:00Z");
        let d = decide(&w, Some(last), None, None, t("2026-01-01T00:00:05Z"));
        assert_eq!(d.reason, DueReason::NotDue);
        assert_eq!(d.next, Some(t("2026-01-01T00:00:10Z")));
        assert!(decide(&w, Some(last), None, None, t("2026-01-01T00:00:10Z")).rotate());
        assert_eq!(
            decide(&w, None, None, None, last).reason,
            DueReason::Initialize
        );
        let w90 = parse_when(Some("90d"), None, None).unwrap();
        assert_eq!(w90.next_after(last), Some(t("2026-04-01T00:00:00Z")));
    }

    #[test]
    fn rotate_now_fires_once_per_value() {
        let w = parse_when(Some("90d"), None, None).unwrap();
        let last = Some(t("2026-01-01T00:00:00Z"));
        let now = t("2026-01-02T00:00:00Z");
        assert_eq!(
            decide(&w, last, Some("1"), None, now).reason,
            DueReason::RotateNow
        );
        assert_eq!(
            decide(&w, last, Some("1"), Some("1"), now).reason,
            DueReason::NotDue
        );
        assert_eq!(
            decide(&w, last, Some("2"), Some("1"), now).reason,
            DueReason::RotateNow
        );
        assert_eq!(
            decide(&w, last, Some(""), None, now).reason,
            DueReason::NotDue
        );
    }

    #[test]
    fn schedules_use_their_time_zone() {
        let w = parse_when(None, Some("0 2 * * *"), Some("Europe/Berlin")).unwrap();
        // 2026-01-10 is winter time (UTC+1): 02:00 Berlin = 01:00 UTC.
        let next = w.next_after(t("2026-01-09T12:00:00Z")).unwrap();
        assert_eq!(next, t("2026-01-10T01:00:00Z"));
        // Summer time (UTC+2).
        let next = w.next_after(t("2026-07-09T12:00:00Z")).unwrap();
        assert_eq!(next, t("2026-07-10T00:00:00Z"));
        let utc = parse_when(None, Some("30 4 1 * *"), None).unwrap();
        assert_eq!(
            utc.next_after(t("2026-03-15T00:00:00Z")).unwrap(),
            t("2026-04-01T04:30:00Z")
        );
        // A change by hand just after the schedule fired postpones to the next firing.
        let d = decide(
            &w,
            Some(t("2026-01-10T01:00:05Z")),
            None,
            None,
            t("2026-01-10T12:00:00Z"),
        );
        assert_eq!(d.reason, DueReason::NotDue);
        assert_eq!(d.next, Some(t("2026-01-11T01:00:00Z")));
    }

    #[test]
    fn bad_schedules_are_explained() {
        assert!(parse_when(None, Some("0 2 * *"), None)
            .unwrap_err()
            .contains("use 5"));
        assert!(parse_when(None, Some("0 25 * * *"), None)
            .unwrap_err()
            .contains("not a cron expression"));
        assert!(parse_when(None, Some("0 2 * * *"), Some("Mars/Olympus"))
            .unwrap_err()
            .contains("IANA"));
        assert!(parse_when(Some("1d"), Some("0 2 * * *"), None).is_err());
        assert!(parse_when(None, None, None).is_err());
        assert!(parse_when(Some("500ms"), None, None)
            .unwrap_err()
            .contains("shorter"));
        assert!(parse_when(Some("1d"), None, Some("UTC")).is_err());
    }

    #[test]
    fn requeue_is_bounded() {
        let now = t("2026-01-01T00:00:00Z");
        let max = Duration::from_secs(300);
        assert_eq!(requeue_after(now, None, None, max), max);
        assert_eq!(
            requeue_after(now, Some(t("2026-01-02T00:00:00Z")), None, max),
            max
        );
        assert_eq!(
            requeue_after(
                now,
                Some(t("2026-01-01T00:00:10Z")),
                Some(t("2026-01-01T00:00:04Z")),
                max
            ),
            Duration::from_millis(4250)
        );
        assert_eq!(
            requeue_after(now, Some(t("2025-01-01T00:00:00Z")), None, max),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn passwords_meet_minimums_examples() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = generate_password(&pw(12, 0, 0, 12, 0), &mut rng).unwrap();
        assert!(p.bytes().all(|b| b.is_ascii_digit()) && p.len() == 12);
        let p = generate_password(&pw(20, 2, 2, 2, 2), &mut rng).unwrap();
        assert_eq!(p.len(), 20);
        assert!(generate_password(&pw(8, 4, 4, 1, 0), &mut rng).is_err());
        assert!(generate_password(&pw(8, 0, 0, 0, 0), &mut rng).is_err());
        let mut bad = pw(8, 1, 0, 0, 1);
        bad.symbol_charset = "ab".into();
        assert!(generate_password(&bad, &mut rng).is_err());
    }

    #[test]
    fn tokens_and_bytes() {
        let mut rng = StdRng::seed_from_u64(1);
        let tok = generate_token(43, &mut rng);
        assert_eq!(tok.len(), 43);
        assert!(tok.bytes().all(|b| URL_SAFE.contains(&b)));
        assert_ne!(tok, generate_token(43, &mut rng));
        let h = generate_bytes(16, ByteEncoding::Hex, &mut rng);
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        let b = generate_bytes(32, ByteEncoding::Base64, &mut rng);
        assert_eq!(b.len(), 44);
        assert!(b.ends_with('='));
        // Same seed, same values: generation depends only on the injected RNG.
        let a = generate_token(20, &mut StdRng::seed_from_u64(9));
        assert_eq!(a, generate_token(20, &mut StdRng::seed_from_u64(9)));
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }
    fn nv(k: &str, v: &str) -> BTreeMap<String, String> {
        [(k.to_string(), v.to_string())].into()
    }

    #[test]
    fn suffix_mode_keeps_previous_then_drops_it() {
        let cur = map(serde_json::json!({"password": "old", "user": "app"}));
        let r = rotated_data(
            &cur,
            &nv("password", "new"),
            KeepPrevious::Suffix,
            "valid_tokens",
            true,
        );
        assert_eq!(
            Value::Object(r.clone()),
            serde_json::json!({"password": "new", "password_previous": "old", "user": "app"})
        );
        let g = grace_ended_data(
            &r,
            &["password".into()],
            KeepPrevious::Suffix,
            "valid_tokens",
        )
        .unwrap();
        assert_eq!(
            Value::Object(g.clone()),
            serde_json::json!({"password": "new", "user": "app"})
        );
        assert!(grace_ended_data(
            &g,
            &["password".into()],
            KeepPrevious::Suffix,
            "valid_tokens"
        )
        .is_none());
        // Without a grace period nothing stays behind, not even a stale `_previous`.
        let r = rotated_data(
            &r,
            &nv("password", "newer"),
            KeepPrevious::Suffix,
            "x",
            false,
        );
        assert_eq!(
            Value::Object(r),
            serde_json::json!({"password": "newer", "user": "app"})
        );
    }

    #[test]
    fn valid_tokens_mode_lists_current_and_previous() {
        let first = rotated_data(
            &Map::new(),
            &nv("server_token", "t1"),
            KeepPrevious::ValidTokens,
            "valid_tokens",
            true,
        );
        assert_eq!(
            Value::Object(first.clone()),
            serde_json::json!({"server_token": "t1", "valid_tokens": ["t1"]})
        );
        let second = rotated_data(
            &first,
            &nv("server_token", "t2"),
            KeepPrevious::ValidTokens,
            "valid_tokens",
            true,
        );
        assert_eq!(second["valid_tokens"], serde_json::json!(["t2", "t1"]));
        let ended = grace_ended_data(
            &second,
            &["server_token".into()],
            KeepPrevious::ValidTokens,
            "valid_tokens",
        )
        .unwrap();
        assert_eq!(ended["valid_tokens"], serde_json::json!(["t2"]));
        assert_eq!(ended["server_token"], "t2");
        assert!(grace_ended_data(
            &ended,
            &["server_token".into()],
            KeepPrevious::ValidTokens,
            "valid_tokens"
        )
        .is_none());
    }

    #[test]
    fn key_checks() {
        let k = |key: &str| GeneratedKey {
            key: key.into(),
            password: None,
            vault_password_policy: None,
            random_bytes: None,
            token: Some(certus_api::TokenGenerator { length: 20 }),
        };
        assert!(check_keys(&[k("a")], KeepPrevious::Suffix, "valid_tokens").is_ok());
        assert!(check_keys(&[k("a"), k("a")], KeepPrevious::Suffix, "v")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(check_keys(&[k("a"), k("b")], KeepPrevious::ValidTokens, "v").is_err());
        assert!(check_keys(&[k("v")], KeepPrevious::ValidTokens, "v").is_err());
        assert!(check_keys(&[k("a"), k("a_previous")], KeepPrevious::Suffix, "v").is_err());
        let mut none = k("a");
        none.token = None;
        assert!(check_keys(&[none], KeepPrevious::Suffix, "v").is_err());
    }

    #[test]
    fn metadata_last_change_and_grace() {
        let m = KvMetadata::from_json(&serde_json::json!({
            "current_version": 3,
            "custom_metadata": {"certus-rotated-version": "2", "certus-rotated-at": "2026-01-01T00:00:00Z", "certus-cleanup-version": "3", "owner": "team"},
            "versions": {
                "2": {"created_time": "2026-01-01T00:00:00.1Z", "deletion_time": "", "destroyed": false},
                "3": {"created_time": "2026-01-02T00:00:00.5Z", "deletion_time": "", "destroyed": false}
            }
        }));
        assert!(m.exists());
        // Version 3 only ended the grace period: the change was the rotation at version 2.
        assert_eq!(m.last_change(), Some(t("2026-01-01T00:00:00Z")));
        assert_eq!(m.grace_ends(Duration::from_secs(60)), None);
        let mut hand = m.clone();
        hand.current_version = 4;
        hand.current_created = Some(t("2026-02-01T00:00:00Z"));
        assert_eq!(
            hand.last_change(),
            Some(t("2026-02-01T00:00:00Z")),
            "a version written by hand counts"
        );
        let custom = custom_after_rotation(
            &m.custom,
            5,
            t("2026-03-01T00:00:00Z"),
            Some("now-1"),
            "ns/p",
        );
        assert_eq!(custom["owner"], "team", "foreign custom metadata is kept");
        assert!(!custom.contains_key(meta::CLEANUP_VERSION));
        let rotated = KvMetadata {
            current_version: 5,
            current_created: Some(t("2026-03-01T00:00:00.3Z")),
            current_deleted: false,
            custom,
        };
        assert_eq!(
            rotated.grace_ends(Duration::from_secs(3600)),
            Some(t("2026-03-01T01:00:00Z"))
        );
        assert_eq!(
            rotated.last_change(),
            Some(t("2026-03-01T00:00:00Z")),
            "our rotation counts from our clock"
        );
        assert_eq!(rotated.grace_ends(Duration::ZERO), None);
        assert_eq!(rotated.handled_rotate_now(), Some("now-1"));
        let gone = KvMetadata::from_json(
            &serde_json::json!({"current_version": 1, "versions": {"1": {"created_time": "2026-01-01T00:00:00Z", "deletion_time": "2026-01-02T00:00:00Z", "destroyed": false}}}),
        );
        assert!(!gone.exists());
        assert_eq!(gone.last_change(), None);
        assert_eq!(KvMetadata::from_json(&Value::Null).current_version, 0);
    }

    #[test]
    fn fixed_clock_moves_when_told() {
        let c = FixedClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now(), t("2026-01-01T00:01:30Z"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn generated_passwords_satisfy_the_class_minimums(
                seed in any::<u64>(),
                l in 0u32..6, u in 0u32..6, d in 0u32..6, s in 0u32..6,
                extra in 0u32..40,
                charset in prop::sample::select(vec![certus_api::DEFAULT_SYMBOLS, "!", "#$%&*"]),
            ) {
                prop_assume!(l + u + d + s > 0);
                let g = PasswordGenerator { length: (l + u + d + s + extra).max(8), lowercase: l, uppercase: u, digits: d, symbols: s, symbol_charset: charset.into() };
                let p = generate_password(&g, &mut StdRng::seed_from_u64(seed)).unwrap();
                prop_assert_eq!(p.len() as u32, g.length);
                let count = |f: &dyn Fn(u8) -> bool| p.bytes().filter(|b| f(*b)).count() as u32;
                let lower = count(&|b| b.is_ascii_lowercase());
                let upper = count(&|b| b.is_ascii_uppercase());
                let digits = count(&|b| b.is_ascii_digit());
                let symbols = count(&|b| charset.as_bytes().contains(&b));
                prop_assert!(lower >= l && upper >= u && digits >= d && symbols >= s, "{p}");
                // A class with minimum 0 is left out entirely; nothing outside the classes.
                prop_assert!(l > 0 || lower == 0);
                prop_assert!(u > 0 || upper == 0);
                prop_assert!(d > 0 || digits == 0);
                prop_assert!(s > 0 || symbols == 0);
                prop_assert_eq!(lower + upper + digits + symbols, g.length);
            }

            #[test]
            fn tokens_are_url_safe(seed in any::<u64>(), len in 16u32..200) {
                let tok = generate_token(len, &mut StdRng::seed_from_u64(seed));
                prop_assert_eq!(tok.len() as u32, len);
                prop_assert!(tok.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
        }
    }
}
