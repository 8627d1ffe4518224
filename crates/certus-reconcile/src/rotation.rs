//! The RotationPolicy pipeline.
//!
//! Each reconcile: validate (pure) → read the target's last change from Vault (KV
//! metadata, a static role's `last_vault_rotation`, the AppRole Secret's annotation; the
//! status only for a database root credential, whose rotation time Vault does not
//! expose) → decide (pure, `certus_core::rotation`) → rotate, or end a grace period, or
//! nothing → report what happened and when to look again.
//!
//! KV writes use check-and-set with the version the decision was based on, so two
//! rotations (two operator replicas, the operator and `certus-vault apply`, a person)
//! can never both win: the loser writes nothing and reports a conflict. Any failure
//! leaves the previous value in force.
//!
//! Consumers: a `secret` on the target is rewritten in the same reconcile as the
//! rotation; StaticSecrets reading the same KV path pick the new version up on their
//! next refresh (the operator also triggers them at once, see the controller).

use std::collections::BTreeMap;
use std::time::Duration;

use certus_api::{
    parse_duration, rotation_annotations as rann, rotation_kv_metadata as kvmeta, KeepPrevious,
    RotationOutcome as Outcome, RotationPolicy, RotationPolicySpec, RotationRecord,
};
use certus_core::rotation::{self as core, Clock, DueReason, KvMetadata, When};
use certus_core::{Action, Change, ResourceId};
use certus_vault_client::{ErrorClass, VaultSession};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{json, Map, Value};

use crate::error::ReconcileError;
use crate::sink::{Owner, Restarter, SecretStore};
use crate::static_secret::{check_target, draft, ns_of, render_target, untouched};
use crate::Mode;

/// The longest wait between two checks (a metadata read each).
pub const MAX_REQUEUE: Duration = Duration::from_secs(300);

/// What the previous reconcile remembered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RotationLast {
    /// When the operator last rotated (only used for `databaseRoot`).
    pub last_rotated: Option<DateTime<Utc>>,
    /// The `rotate-now` value already handled.
    pub handled_rotate_now: Option<String>,
    /// No status exists (the CLI): a `databaseRoot` target is then rotated only on
    /// `rotate-now`, never on an unknown schedule.
    pub stateless: bool,
}

impl From<&certus_api::RotationPolicyStatus> for RotationLast {
    fn from(s: &certus_api::RotationPolicyStatus) -> Self {
        RotationLast {
            last_rotated: s.last_rotated,
            handled_rotate_now: s.handled_rotate_now.clone(),
            stateless: false,
        }
    }
}

/// Why a reconcile failed, and whether it failed while rotating (the previous value is
/// still in force either way).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct RotationError {
    pub error: ReconcileError,
    /// The failure happened during a rotation (reason `RotationFailed`).
    pub rotating: bool,
    /// Another writer changed the KV secret first (check-and-set).
    pub conflict: bool,
    /// The rotate-now value this attempt was for. When `rotating` is false it was
    /// handled (the rotation happened, a later step failed): record it as handled.
    pub rotate_now: Option<String>,
}

impl From<ReconcileError> for RotationError {
    fn from(error: ReconcileError) -> Self {
        RotationError {
            error,
            rotating: false,
            conflict: false,
            rotate_now: None,
        }
    }
}

impl From<certus_vault_client::VaultError> for RotationError {
    fn from(e: certus_vault_client::VaultError) -> Self {
        ReconcileError::from(e).into()
    }
}

impl RotationError {
    /// The `Ready=False` reason.
    pub fn reason(&self) -> &'static str {
        if self.rotating {
            certus_api::rotation_conditions::ROTATION_FAILED
        } else {
            self.error.reason()
        }
    }
    /// The history entry for a failed rotation.
    pub fn record(&self, now: DateTime<Utc>) -> Option<RotationRecord> {
        self.rotating.then(|| RotationRecord {
            time: now,
            version: None,
            outcome: if self.conflict {
                Outcome::Conflict
            } else {
                Outcome::Failed
            },
            message: Some(self.error.to_string()),
        })
    }
    fn rotating(error: impl Into<ReconcileError>, rotate_now: Option<&str>) -> Self {
        RotationError {
            error: error.into(),
            rotating: true,
            conflict: false,
            rotate_now: rotate_now.map(str::to_string),
        }
    }
}

/// What one reconcile found and did.
#[derive(Clone, Debug)]
pub struct RotationResult {
    pub change: Change,
    /// A rotation happened (apply mode) or would happen (plan mode).
    pub rotated: bool,
    /// Why it was due.
    pub reason: DueReason,
    /// The previous values were removed at the end of the grace period.
    pub grace_ended: bool,
    /// History entries to add (newest last).
    pub records: Vec<RotationRecord>,
    /// When the secret last changed.
    pub last_change: Option<DateTime<Utc>>,
    pub next_rotation: Option<DateTime<Utc>>,
    pub grace_ends: Option<DateTime<Utc>>,
    /// KV version now current.
    pub current_version: Option<u64>,
    /// `manual`: whether the secret is older than the interval.
    pub rotation_due: Option<bool>,
    /// The rotate-now value handled in this reconcile (or before).
    pub handled_rotate_now: Option<String>,
    pub secret_name: Option<String>,
    pub restarted: Vec<String>,
    pub target: String,
    pub when: String,
    pub requeue: Duration,
}

/// The resource id used in plan output.
pub fn resource_id(p: &RotationPolicy) -> ResourceId {
    ResourceId::new(
        "RotationPolicy",
        Some(&ns_of(&p.metadata.namespace)),
        &p.metadata.name.clone().unwrap_or_default(),
    )
}

/// Pure validation: the schedule, the grace period, generators and templates.
pub fn validate(spec: &RotationPolicySpec) -> Result<(When, Duration), ReconcileError> {
    let n = [
        spec.kv.is_some(),
        spec.database_static_role.is_some(),
        spec.database_root.is_some(),
        spec.app_role_secret_id.is_some(),
        spec.manual.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if n != 1 {
        return Err(ReconcileError::Invalid("set exactly one of spec.kv, spec.databaseStaticRole, spec.databaseRoot, spec.appRoleSecretId, spec.manual".into()));
    }
    let when = core::parse_when(
        spec.interval.as_deref(),
        spec.schedule.as_deref(),
        spec.time_zone.as_deref(),
    )
    .map_err(ReconcileError::Invalid)?;
    if spec.manual.is_some() && spec.interval.is_none() {
        return Err(ReconcileError::Invalid(
            "spec.manual needs spec.interval".into(),
        ));
    }
    let grace = match &spec.grace_period {
        None => Duration::ZERO,
        Some(g) => parse_duration(g)
            .map_err(|e| ReconcileError::Invalid(format!("spec.gracePeriod: {e}")))?,
    };
    if !grace.is_zero() && spec.kv.is_none() && spec.app_role_secret_id.is_none() {
        return Err(ReconcileError::Invalid(
            "spec.gracePeriod applies to kv and appRoleSecretId targets only".into(),
        ));
    }
    if let (When::Interval(i), false) = (&when, grace.is_zero()) {
        if grace >= *i {
            return Err(ReconcileError::Invalid(format!(
                "spec.gracePeriod ({}) must be shorter than spec.interval ({}): otherwise two previous values would be valid at once",
                spec.grace_period.as_deref().unwrap_or_default(),
                spec.interval.as_deref().unwrap_or_default()
            )));
        }
    }
    if let Some(kv) = &spec.kv {
        core::check_keys(&kv.keys, kv.keep_previous, &kv.valid_tokens_key)
            .map_err(|e| ReconcileError::Invalid(e.to_string()))?;
        if let Some(t) = &kv.secret {
            check_target(t, "spec.kv.secret")?;
        }
    }
    if let Some(t) = spec
        .database_static_role
        .as_ref()
        .and_then(|d| d.secret.as_ref())
    {
        check_target(t, "spec.databaseStaticRole.secret")?;
    }
    if let Some(a) = &spec.app_role_secret_id {
        check_target(&a.secret, "spec.appRoleSecretId.secret")?;
    }
    Ok((when, grace))
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn add(t: DateTime<Utc>, d: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
}

fn is_cas_conflict(e: &ReconcileError) -> bool {
    matches!(e, ReconcileError::Vault(v) if v.class == ErrorClass::InvalidRequest && v.message.contains("check-and-set"))
}

struct Ctx<'a, S, R> {
    vault: &'a VaultSession,
    p: &'a RotationPolicy,
    store: &'a S,
    restarter: &'a R,
    mode: Mode,
    now: DateTime<Utc>,
    ns: String,
    name: String,
    rotate_now: Option<String>,
    id: ResourceId,
}

impl<S: SecretStore, R: Restarter> Ctx<'_, S, R> {
    fn owner(&self) -> Owner {
        Owner {
            api_version: certus_api::API_VERSION.into(),
            kind: "RotationPolicy".into(),
            name: self.name.clone(),
            uid: self.p.metadata.uid.clone().unwrap_or_default(),
        }
    }
    fn change(&self, action: Action, target: String, detail: String) -> Change {
        Change {
            resource: self.id.clone(),
            action,
            target,
            drift: false,
            detail: Some(detail),
        }
    }
    async fn restart(&self) -> Result<Vec<String>, ReconcileError> {
        if self.mode != Mode::Apply || self.p.spec.rollout_restart_targets.is_empty() {
            return Ok(vec![]);
        }
        self.restarter
            .restart(
                &self.ns,
                &self.p.spec.rollout_restart_targets,
                &rfc(self.now),
            )
            .await
    }
}

/// Reconciles one RotationPolicy. `rng` generates the new values (use a CSPRNG seeded
/// from the OS, e.g. `StdRng::from_os_rng()`); `clock` says what time it is.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile<S: SecretStore, R: Restarter, G: Rng + Send>(
    vault: &VaultSession,
    p: &RotationPolicy,
    last: &RotationLast,
    store: &S,
    restarter: &R,
    clock: &dyn Clock,
    rng: &mut G,
    mode: Mode,
) -> Result<RotationResult, RotationError> {
    let (when, grace) = validate(&p.spec)?;
    let ctx = Ctx {
        vault,
        p,
        store,
        restarter,
        mode,
        now: clock.now(),
        ns: ns_of(&p.metadata.namespace),
        name: p.metadata.name.clone().unwrap_or_default(),
        rotate_now: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(certus_api::annotations::ROTATE_NOW))
            .cloned()
            .filter(|v| !v.is_empty()),
        id: resource_id(p),
    };
    let mut res = if p.spec.kv.is_some() {
        kv(&ctx, &when, grace, last, rng).await?
    } else if p.spec.manual.is_some() {
        manual(&ctx, &when).await?
    } else if p.spec.database_static_role.is_some() {
        static_role(&ctx, &when, last).await?
    } else if p.spec.database_root.is_some() {
        root(&ctx, &when, last).await?
    } else {
        app_role(&ctx, &when, grace, last).await?
    };
    res.requeue = if res.rotation_due == Some(true) {
        // Overdue manual secret: look again now and then (it may be rotated by hand).
        MAX_REQUEUE
    } else {
        core::requeue_after(ctx.now, res.next_rotation, res.grace_ends, MAX_REQUEUE)
    };
    Ok(res)
}

fn base(ctx_target: String, when: String, change: Change) -> RotationResult {
    RotationResult {
        change,
        rotated: false,
        reason: DueReason::NotDue,
        grace_ended: false,
        records: vec![],
        last_change: None,
        next_rotation: None,
        grace_ends: None,
        current_version: None,
        rotation_due: None,
        handled_rotate_now: None,
        secret_name: None,
        restarted: vec![],
        target: ctx_target,
        when,
        requeue: MAX_REQUEUE,
    }
}

fn describe(reason: DueReason, next: Option<DateTime<Utc>>) -> String {
    match reason {
        DueReason::Initialize => "does not exist yet: initialize".into(),
        DueReason::Due => format!("due since {}", next.map(rfc).unwrap_or_default()),
        DueReason::RotateNow => "rotate-now annotation".into(),
        DueReason::NotDue => format!(
            "next rotation {}",
            next.map(rfc).unwrap_or_else(|| "unknown".into())
        ),
    }
}

async fn kv<S: SecretStore, R: Restarter, G: Rng + Send>(
    ctx: &Ctx<'_, S, R>,
    when: &When,
    grace: Duration,
    last: &RotationLast,
    rng: &mut G,
) -> Result<RotationResult, RotationError> {
    let spec = ctx.p.spec.kv.as_ref().expect("kv target");
    let mount = spec.mount.trim_matches('/');
    let path = spec.path.trim_matches('/');
    let source = format!("{mount}/{path}");
    let keep = spec.keep_previous;
    let keeps_previous = keep != KeepPrevious::None && !grace.is_zero();
    let meta_path = format!("{mount}/metadata/{path}");
    let data_path = format!("{mount}/data/{path}");
    let meta = ctx
        .vault
        .read(&meta_path)
        .await?
        .and_then(|m| m.get("data").cloned());
    let m = meta.as_ref().map(KvMetadata::from_json).unwrap_or_default();
    let last_change = m.last_change();
    // The rotate-now value is handled when the status or the KV metadata (a rotation by
    // `certus-vault apply`, or another replica) says so.
    let kv_handled = m.handled_rotate_now().map(str::to_string);
    let handled = match &ctx.rotate_now {
        Some(v) if kv_handled.as_deref() == Some(v.as_str()) => Some(v.clone()),
        _ => last.handled_rotate_now.clone().or(kv_handled),
    };
    let decision = core::decide(
        when,
        last_change,
        ctx.rotate_now.as_deref(),
        handled.as_deref(),
        ctx.now,
    );
    let grace_ends = if keeps_previous {
        m.grace_ends(grace)
    } else {
        None
    };
    let mut res = base(
        ctx.p.spec.target_label(),
        ctx.p.spec.when_label(),
        ctx.change(
            Action::NoChange,
            data_path.clone(),
            describe(decision.reason, decision.next),
        ),
    );
    res.reason = decision.reason;
    res.last_change = last_change;
    res.next_rotation = decision.next;
    res.grace_ends = grace_ends.filter(|t| *t > ctx.now);
    res.current_version = (m.current_version > 0).then_some(m.current_version);
    res.handled_rotate_now = handled.clone();
    res.secret_name = spec
        .secret
        .as_ref()
        .map(|t| t.name.clone().unwrap_or_else(|| ctx.name.clone()));
    let key_names: Vec<String> = spec.keys.iter().map(|k| k.key.clone()).collect();

    if decision.rotate() {
        let action = if m.exists() {
            Action::Update
        } else {
            Action::Create
        };
        res.change = ctx.change(
            action,
            data_path.clone(),
            format!(
                "rotate {} ({})",
                key_names.join(", "),
                describe(decision.reason, decision.next)
            ),
        );
        res.rotated = true;
        if ctx.mode == Mode::Plan {
            return Ok(res);
        }
        let rn = ctx.rotate_now.as_deref();
        let fail = |e: ReconcileError| {
            let conflict = is_cas_conflict(&e);
            let mut err = RotationError::rotating(
                if conflict {
                    ReconcileError::Conflict(format!("KV secret {source} changed while rotating (check-and-set on version {} failed): another rotation or a person wrote it first; nothing was written", m.current_version))
                } else {
                    e
                },
                rn,
            );
            err.conflict = conflict;
            err
        };
        // The current values (the previous ones after this rotation).
        let current: Map<String, Value> = if m.exists() {
            ctx.vault
                .read(&format!("{data_path}?version={}", m.current_version))
                .await
                .map_err(|e| fail(e.into()))?
                .and_then(|r| r.pointer("/data/data").and_then(Value::as_object).cloned())
                .unwrap_or_default()
        } else {
            Map::new()
        };
        let mut new_values = BTreeMap::new();
        for k in &spec.keys {
            let v = match core::generate_local(k, rng)
                .map_err(|e| fail(ReconcileError::Invalid(e.to_string())))?
            {
                Some(v) => v,
                None => {
                    let name = &k.vault_password_policy.as_ref().expect("checked").name;
                    let r = ctx
                        .vault
                        .read(&format!("sys/policies/password/{name}/generate"))
                        .await
                        .map_err(|e| fail(e.into()))?;
                    r.and_then(|r| {
                        r.pointer("/data/password")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .ok_or_else(|| {
                        fail(ReconcileError::Dependency(format!(
                            "Vault password policy {name:?} does not exist"
                        )))
                    })?
                }
            };
            new_values.insert(k.key.clone(), v);
        }
        let data = core::rotated_data(
            &current,
            &new_values,
            keep,
            &spec.valid_tokens_key,
            keeps_previous,
        );
        let written = ctx
            .vault
            .write(
                &data_path,
                &json!({"options": {"cas": m.current_version}, "data": data}),
            )
            .await
            .map_err(|e| fail(e.into()))?;
        let version = written
            .and_then(|w| w.pointer("/data/version").and_then(Value::as_u64))
            .unwrap_or(m.current_version + 1);
        // From here on the new value is in force; a failure below is reported but the
        // rotation stands.
        let had_previous = keeps_previous && key_names.iter().any(|k| current.contains_key(k));
        let mut custom = core::custom_after_rotation(
            &m.custom,
            version,
            ctx.now,
            rn,
            &format!("{}/{}", ctx.ns, ctx.name),
        );
        if !had_previous {
            // Nothing previous is kept (first value, or no grace): no grace period to end.
            custom.insert(kvmeta::CLEANUP_VERSION.into(), version.to_string());
        }
        // The new value is in force from here on: later failures are reported (and
        // retried) without claiming the rotation failed.
        let after = |e: ReconcileError| RotationError {
            error: ReconcileError::Dependency(format!(
                "rotated {source} to version {version}, but then: {e}"
            )),
            rotating: false,
            conflict: false,
            rotate_now: rn.map(str::to_string),
        };
        ctx.vault
            .write(&meta_path, &json!({"custom_metadata": custom}))
            .await
            .map_err(|e| after(e.into()))?;
        res.current_version = Some(version);
        res.last_change = Some(ctx.now);
        res.next_rotation = when.next_after(ctx.now);
        res.grace_ends = if had_previous {
            add(ctx.now, grace)
        } else {
            None
        };
        if let Some(v) = rn {
            res.handled_rotate_now = Some(v.to_string());
        }
        res.records.push(RotationRecord {
            time: ctx.now,
            version: Some(version),
            outcome: Outcome::Succeeded,
            message: Some(describe(decision.reason, decision.next)),
        });
        project_kv(ctx, &Value::Object(data), version)
            .await
            .map_err(after)?;
        res.restarted = ctx.restart().await.map_err(after)?;
        return Ok(res);
    }

    // The end of a grace period: remove the previous values (a new version, with CAS).
    if let Some(end) = grace_ends.filter(|t| *t <= ctx.now) {
        res.change = ctx.change(
            Action::Update,
            data_path.clone(),
            format!(
                "grace period ended {}: remove the previous values",
                rfc(end)
            ),
        );
        res.grace_ended = true;
        if ctx.mode == Mode::Plan {
            return Ok(res);
        }
        let current: Map<String, Value> = ctx
            .vault
            .read(&format!("{data_path}?version={}", m.current_version))
            .await?
            .and_then(|r| r.pointer("/data/data").and_then(Value::as_object).cloned())
            .unwrap_or_default();
        let mut version = m.current_version;
        let cleaned = core::grace_ended_data(&current, &key_names, keep, &spec.valid_tokens_key);
        if cleaned.is_none() {
            // Nothing previous left (e.g. removed by hand): only mark the grace as ended.
            let mut custom = m.custom.clone();
            custom.insert(kvmeta::CLEANUP_VERSION.into(), version.to_string());
            ctx.vault
                .write(&meta_path, &json!({"custom_metadata": custom}))
                .await?;
            res.change = ctx.change(
                Action::NoChange,
                data_path.clone(),
                "grace period ended; no previous values left".into(),
            );
            res.grace_ended = false;
            res.grace_ends = None;
            return Ok(res);
        }
        if let Some(cleaned) = cleaned {
            let w = ctx.vault.write(&data_path, &json!({"options": {"cas": m.current_version}, "data": cleaned})).await.map_err(|e| {
                let e: ReconcileError = e.into();
                if is_cas_conflict(&e) {
                    ReconcileError::Conflict(format!("KV secret {source} changed while ending the grace period; will look again"))
                } else {
                    e
                }
            })?;
            version = w
                .and_then(|w| w.pointer("/data/version").and_then(Value::as_u64))
                .unwrap_or(m.current_version + 1);
            let mut custom = m.custom.clone();
            custom.insert(kvmeta::CLEANUP_VERSION.into(), version.to_string());
            ctx.vault
                .write(&meta_path, &json!({"custom_metadata": custom}))
                .await?;
            project_kv(ctx, &Value::Object(cleaned), version).await?;
            res.restarted = ctx.restart().await?;
        }
        res.current_version = Some(version);
        res.grace_ends = None;
        res.records.push(RotationRecord {
            time: ctx.now,
            version: Some(version),
            outcome: Outcome::GraceEnded,
            message: Some("previous values removed".into()),
        });
        return Ok(res);
    }

    // Nothing due: make sure the projected Secret holds the current version.
    if let (Some(t), true) = (&spec.secret, m.exists()) {
        let name = t.name.clone().unwrap_or_else(|| ctx.name.clone());
        let live = ctx.store.get(&ctx.ns, &name).await?;
        let current = live.as_ref().is_some_and(|l| {
            untouched(l)
                && l.annotations
                    .get(certus_api::static_secret_annotations::SYNCED_VERSION)
                    == Some(&m.current_version.to_string())
        });
        if !current {
            res.change = ctx.change(
                if live.is_some() {
                    Action::Update
                } else {
                    Action::Create
                },
                format!("Secret {}/{name}", ctx.ns),
                format!("project {source} version {}", m.current_version),
            );
            if ctx.mode == Mode::Apply {
                let data = ctx
                    .vault
                    .read(&format!("{data_path}?version={}", m.current_version))
                    .await?
                    .and_then(|r| r.pointer("/data/data").cloned())
                    .unwrap_or(Value::Object(Map::new()));
                project_kv(ctx, &data, m.current_version).await?;
            }
        }
    }
    Ok(res)
}

async fn project_kv<S: SecretStore, R: Restarter>(
    ctx: &Ctx<'_, S, R>,
    data: &Value,
    version: u64,
) -> Result<(), ReconcileError> {
    let Some(t) = ctx.p.spec.kv.as_ref().and_then(|k| k.secret.as_ref()) else {
        return Ok(());
    };
    let rendered = render_target(t, data, "spec.kv.secret")?;
    let kv = ctx.p.spec.kv.as_ref().expect("kv");
    let extra = BTreeMap::from([
        (
            certus_api::static_secret_annotations::SYNCED_VERSION.to_string(),
            version.to_string(),
        ),
        (
            certus_api::static_secret_annotations::SOURCE.to_string(),
            format!("{}/{}", kv.mount, kv.path),
        ),
        (rann::ROTATED_AT.to_string(), rfc(ctx.now)),
    ]);
    let d = draft(t, &ctx.ns, &ctx.name, rendered, extra, Some(ctx.owner()));
    ctx.store.apply(&d).await
}

async fn manual<S: SecretStore, R: Restarter>(
    ctx: &Ctx<'_, S, R>,
    when: &When,
) -> Result<RotationResult, RotationError> {
    let spec = ctx.p.spec.manual.as_ref().expect("manual target");
    let mount = spec.mount.trim_matches('/');
    let path = spec.path.trim_matches('/');
    let meta = ctx
        .vault
        .read(&format!("{mount}/metadata/{path}"))
        .await?
        .and_then(|m| m.get("data").cloned());
    let Some(meta) = meta else {
        return Err(ReconcileError::Dependency(format!(
            "KV secret {mount}/{path} does not exist: store the vendor-issued value there first"
        ))
        .into());
    };
    let m = KvMetadata::from_json(&meta);
    let Some(last_change) = m.last_change() else {
        return Err(ReconcileError::Dependency(format!(
            "KV secret {mount}/{path}: the current version {} is deleted",
            m.current_version
        ))
        .into());
    };
    let next = when.next_after(last_change);
    let due = next.is_some_and(|n| n <= ctx.now);
    let detail = if due {
        format!(
            "rotation due since {} (last change {}): rotate it by hand",
            next.map(rfc).unwrap_or_default(),
            rfc(last_change)
        )
    } else {
        format!("not due before {}", next.map(rfc).unwrap_or_default())
    };
    let mut res = base(
        ctx.p.spec.target_label(),
        ctx.p.spec.when_label(),
        ctx.change(Action::NoChange, format!("{mount}/data/{path}"), detail),
    );
    res.last_change = Some(last_change);
    res.next_rotation = next;
    res.current_version = Some(m.current_version);
    res.rotation_due = Some(due);
    // Look again when it becomes due; once overdue, every MAX_REQUEUE (it may be
    // rotated by hand at any time).
    Ok(res)
}

async fn static_role<S: SecretStore, R: Restarter>(
    ctx: &Ctx<'_, S, R>,
    when: &When,
    last: &RotationLast,
) -> Result<RotationResult, RotationError> {
    let spec = ctx
        .p
        .spec
        .database_static_role
        .as_ref()
        .expect("static role target");
    let mount = spec.mount.trim_matches('/');
    let role_path = format!("{mount}/static-roles/{}", spec.role);
    let role = ctx
        .vault
        .read(&role_path)
        .await?
        .and_then(|r| r.get("data").cloned());
    let Some(role) = role else {
        return Err(ReconcileError::Dependency(format!(
            "database static role {mount}/{} does not exist (yet)",
            spec.role
        ))
        .into());
    };
    let last_change = role
        .get("last_vault_rotation")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let decision = core::decide(
        when,
        last_change,
        ctx.rotate_now.as_deref(),
        last.handled_rotate_now.as_deref(),
        ctx.now,
    );
    let rotate_path = format!("{mount}/rotate-role/{}", spec.role);
    let mut res = base(
        ctx.p.spec.target_label(),
        ctx.p.spec.when_label(),
        ctx.change(
            Action::NoChange,
            rotate_path.clone(),
            describe(decision.reason, decision.next),
        ),
    );
    res.reason = decision.reason;
    res.last_change = last_change;
    res.next_rotation = decision.next;
    res.handled_rotate_now = last.handled_rotate_now.clone();
    res.secret_name = spec
        .secret
        .as_ref()
        .map(|t| t.name.clone().unwrap_or_else(|| ctx.name.clone()));
    let mut last_rotation = last_change;
    if decision.rotate() {
        res.change = ctx.change(
            Action::Update,
            rotate_path.clone(),
            format!(
                "rotate the password ({})",
                describe(decision.reason, decision.next)
            ),
        );
        res.rotated = true;
        if ctx.mode == Mode::Plan {
            return Ok(res);
        }
        let rn = ctx.rotate_now.as_deref();
        ctx.vault
            .write(&rotate_path, &json!({}))
            .await
            .map_err(|e| RotationError::rotating(e, rn))?;
        let after = ctx
            .vault
            .read(&role_path)
            .await
            .map_err(|e| RotationError::rotating(e, rn))?;
        last_rotation = after
            .and_then(|r| {
                r.pointer("/data/last_vault_rotation")
                    .and_then(Value::as_str)
                    .and_then(parse_time)
            })
            .or(Some(ctx.now));
        res.last_change = last_rotation;
        res.next_rotation = last_rotation.and_then(|t| when.next_after(t));
        if let Some(v) = rn {
            res.handled_rotate_now = Some(v.to_string());
        }
        res.records.push(RotationRecord {
            time: ctx.now,
            version: None,
            outcome: Outcome::Succeeded,
            message: Some(describe(decision.reason, decision.next)),
        });
    }
    // Project the credentials when the Secret is missing, edited or older than Vault's
    // last rotation (Vault also rotates static roles on its own rotation_period).
    if let Some(t) = &spec.secret {
        let name = t.name.clone().unwrap_or_else(|| ctx.name.clone());
        let live = ctx.store.get(&ctx.ns, &name).await?;
        let stamp = last_rotation.map(rfc).unwrap_or_default();
        let current = live
            .as_ref()
            .is_some_and(|l| untouched(l) && l.annotations.get(rann::ROTATED_AT) == Some(&stamp));
        if !current && ctx.mode == Mode::Apply {
            let creds = ctx
                .vault
                .read(&format!("{mount}/static-creds/{}", spec.role))
                .await
                .map_err(|e| RotationError {
                    rotating: res.rotated,
                    ..RotationError::from(e)
                })?;
            let data = creds
                .and_then(|c| c.get("data").cloned())
                .unwrap_or(Value::Object(Map::new()));
            let rendered = render_target(t, &data, "spec.databaseStaticRole.secret")?;
            let d = draft(
                t,
                &ctx.ns,
                &ctx.name,
                rendered,
                BTreeMap::from([(rann::ROTATED_AT.to_string(), stamp)]),
                Some(ctx.owner()),
            );
            ctx.store.apply(&d).await?;
            res.restarted = ctx.restart().await?;
        } else if !current && !res.rotated {
            res.change = ctx.change(
                if live.is_some() {
                    Action::Update
                } else {
                    Action::Create
                },
                format!("Secret {}/{name}", ctx.ns),
                "project the static role's credentials".into(),
            );
        }
    }
    Ok(res)
}

async fn root<S: SecretStore, R: Restarter>(
    ctx: &Ctx<'_, S, R>,
    when: &When,
    last: &RotationLast,
) -> Result<RotationResult, RotationError> {
    let spec = ctx.p.spec.database_root.as_ref().expect("root target");
    let mount = spec.mount.trim_matches('/');
    let config = ctx
        .vault
        .read(&format!("{mount}/config/{}", spec.connection))
        .await?;
    if config.is_none() {
        return Err(ReconcileError::Dependency(format!(
            "database connection {mount}/config/{} does not exist (yet)",
            spec.connection
        ))
        .into());
    }
    let mut decision = core::decide(
        when,
        last.last_rotated,
        ctx.rotate_now.as_deref(),
        last.handled_rotate_now.as_deref(),
        ctx.now,
    );
    // Vault does not tell when a root credential was last rotated: without a status
    // (the CLI) only an explicit rotate-now rotates it.
    let unknown = last.stateless && decision.reason != DueReason::RotateNow;
    if unknown {
        decision.reason = DueReason::NotDue;
    }
    let rotate_path = format!("{mount}/rotate-root/{}", spec.connection);
    let detail = if unknown {
        "the last root rotation is only known to the operator's status: annotate with vault.certus.io/rotate-now to rotate from the command line".to_string()
    } else {
        describe(decision.reason, decision.next)
    };
    let mut res = base(
        ctx.p.spec.target_label(),
        ctx.p.spec.when_label(),
        ctx.change(Action::NoChange, rotate_path.clone(), detail),
    );
    res.reason = decision.reason;
    res.last_change = last.last_rotated;
    res.next_rotation = decision.next;
    res.handled_rotate_now = last.handled_rotate_now.clone();
    if decision.rotate() {
        res.change = ctx.change(
            Action::Update,
            rotate_path.clone(),
            format!(
                "rotate the root credential ({})",
                describe(decision.reason, decision.next)
            ),
        );
        res.rotated = true;
        if ctx.mode == Mode::Plan {
            return Ok(res);
        }
        let rn = ctx.rotate_now.as_deref();
        ctx.vault
            .write(&rotate_path, &json!({}))
            .await
            .map_err(|e| RotationError::rotating(e, rn))?;
        res.last_change = Some(ctx.now);
        res.next_rotation = when.next_after(ctx.now);
        if let Some(v) = rn {
            res.handled_rotate_now = Some(v.to_string());
        }
        res.records.push(RotationRecord {
            time: ctx.now,
            version: None,
            outcome: Outcome::Succeeded,
            message: Some(describe(decision.reason, decision.next)),
        });
    }
    Ok(res)
}

async fn destroy_secret_id(
    vault: &VaultSession,
    role_base: &str,
    accessor: &str,
) -> Result<(), certus_vault_client::VaultError> {
    match vault
        .write(
            &format!("{role_base}/secret-id-accessor/destroy"),
            &json!({"secret_id_accessor": accessor}),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone (expired or destroyed by hand): nothing to do.
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

async fn app_role<S: SecretStore, R: Restarter>(
    ctx: &Ctx<'_, S, R>,
    when: &When,
    grace: Duration,
    last: &RotationLast,
) -> Result<RotationResult, RotationError> {
    let spec = ctx
        .p
        .spec
        .app_role_secret_id
        .as_ref()
        .expect("approle target");
    let mount = spec.mount.trim_matches('/');
    let role_base = format!("auth/{mount}/role/{}", spec.role);
    let name = spec.secret.name.clone().unwrap_or_else(|| ctx.name.clone());
    let live = ctx.store.get(&ctx.ns, &name).await?;
    let ann = |k: &str| live.as_ref().and_then(|l| l.annotations.get(k).cloned());
    // The Secret is the record of the SecretID it holds; an edited Secret is re-issued.
    let last_change = live
        .as_ref()
        .filter(|l| untouched(l))
        .and_then(|_| ann(rann::ROTATED_AT))
        .and_then(|s| parse_time(&s));
    let decision = core::decide(
        when,
        last_change,
        ctx.rotate_now.as_deref(),
        last.handled_rotate_now.as_deref(),
        ctx.now,
    );
    let mut res = base(
        ctx.p.spec.target_label(),
        ctx.p.spec.when_label(),
        ctx.change(
            Action::NoChange,
            format!("{role_base}/secret-id"),
            describe(decision.reason, decision.next),
        ),
    );
    res.reason = decision.reason;
    res.last_change = last_change;
    res.next_rotation = decision.next;
    res.handled_rotate_now = last.handled_rotate_now.clone();
    res.secret_name = Some(name.clone());
    let destroy_after = ann(rann::DESTROY_PREVIOUS_AFTER).and_then(|s| parse_time(&s));
    let previous = ann(rann::PREVIOUS_SECRET_ID_ACCESSOR);
    res.grace_ends = destroy_after.filter(|t| *t > ctx.now && previous.is_some());
    if decision.rotate() {
        res.change = ctx.change(
            if live.is_some() {
                Action::Update
            } else {
                Action::Create
            },
            format!("{role_base}/secret-id"),
            format!(
                "issue a new SecretID into Secret {}/{name} ({})",
                ctx.ns,
                describe(decision.reason, decision.next)
            ),
        );
        res.rotated = true;
        if ctx.mode == Mode::Plan {
            return Ok(res);
        }
        let rn = ctx.rotate_now.as_deref();
        let role_id = ctx
            .vault
            .read(&format!("{role_base}/role-id"))
            .await
            .map_err(|e| RotationError::rotating(e, rn))?;
        let Some(role_id) = role_id.and_then(|r| {
            r.pointer("/data/role_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        }) else {
            return Err(ReconcileError::Dependency(format!(
                "AppRole {mount}/{} does not exist (yet)",
                spec.role
            ))
            .into());
        };
        let meta = serde_json::to_string(&spec.metadata).unwrap_or_else(|_| "{}".into());
        let issued = ctx
            .vault
            .write(
                &format!("{role_base}/secret-id"),
                &json!({"metadata": meta}),
            )
            .await
            .map_err(|e| RotationError::rotating(e, rn))?;
        let data = issued
            .and_then(|r| r.get("data").cloned())
            .unwrap_or(Value::Null);
        let (Some(secret_id), Some(accessor)) = (
            data.get("secret_id").and_then(Value::as_str),
            data.get("secret_id_accessor").and_then(Value::as_str),
        ) else {
            return Err(RotationError::rotating(
                ReconcileError::Vault(certus_vault_client::VaultError::new(
                    ErrorClass::Transient,
                    format!("POST {role_base}/secret-id"),
                    None,
                    "response has no secret_id",
                )),
                rn,
            ));
        };
        let fields =
            json!({"role_id": role_id, "secret_id": secret_id, "secret_id_accessor": accessor});
        let rendered = if spec.secret.data.is_empty() {
            BTreeMap::from([
                ("role_id".to_string(), role_id.clone().into_bytes()),
                ("secret_id".to_string(), secret_id.as_bytes().to_vec()),
            ])
        } else {
            render_target(&spec.secret, &fields, "spec.appRoleSecretId.secret")
                .map_err(|e| RotationError::rotating(e, rn))?
        };
        let old = ann(rann::SECRET_ID_ACCESSOR).filter(|_| live.as_ref().is_some_and(untouched));
        let mut extra = BTreeMap::from([
            (rann::ROTATED_AT.to_string(), rfc(ctx.now)),
            (rann::SECRET_ID_ACCESSOR.to_string(), accessor.to_string()),
        ]);
        // A still-pending previous SecretID (rotation inside the grace period) goes now.
        let mut to_destroy: Vec<String> = previous.clone().into_iter().collect();
        match old {
            Some(o) if !grace.is_zero() => {
                extra.insert(rann::PREVIOUS_SECRET_ID_ACCESSOR.into(), o);
                let end = add(ctx.now, grace).unwrap_or(ctx.now);
                extra.insert(rann::DESTROY_PREVIOUS_AFTER.into(), rfc(end));
                res.grace_ends = Some(end);
            }
            Some(o) => to_destroy.push(o),
            None => res.grace_ends = None,
        }
        let d = draft(
            &spec.secret,
            &ctx.ns,
            &ctx.name,
            rendered,
            extra,
            Some(ctx.owner()),
        );
        ctx.store
            .apply(&d)
            .await
            .map_err(|e| RotationError::rotating(e, rn))?;
        for a in to_destroy {
            destroy_secret_id(ctx.vault, &role_base, &a).await?;
        }
        res.last_change = Some(ctx.now);
        res.next_rotation = when.next_after(ctx.now);
        if let Some(v) = rn {
            res.handled_rotate_now = Some(v.to_string());
        }
        res.records.push(RotationRecord {
            time: ctx.now,
            version: None,
            outcome: Outcome::Succeeded,
            message: Some(describe(decision.reason, decision.next)),
        });
        res.restarted = ctx.restart().await?;
        return Ok(res);
    }
    if let (Some(acc), Some(end)) = (previous, destroy_after) {
        if end <= ctx.now {
            res.change = ctx.change(
                Action::Delete,
                format!("{role_base}/secret-id-accessor/destroy"),
                format!(
                    "grace period ended {}: destroy the previous SecretID",
                    rfc(end)
                ),
            );
            res.grace_ended = true;
            if ctx.mode == Mode::Apply {
                destroy_secret_id(ctx.vault, &role_base, &acc).await?;
                let l = live.clone().expect("annotations came from it");
                let mut annotations = l.annotations.clone();
                annotations.remove(rann::PREVIOUS_SECRET_ID_ACCESSOR);
                annotations.remove(rann::DESTROY_PREVIOUS_AFTER);
                let d = crate::sink::SecretDraft {
                    namespace: ctx.ns.clone(),
                    name: name.clone(),
                    type_: l.type_,
                    labels: l.labels,
                    annotations,
                    data: l.data,
                    owner: Some(ctx.owner()),
                };
                ctx.store.apply(&d).await?;
                res.records.push(RotationRecord {
                    time: ctx.now,
                    version: None,
                    outcome: Outcome::GraceEnded,
                    message: Some("previous SecretID destroyed".into()),
                });
            }
            res.grace_ends = None;
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> RotationPolicySpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_explains_bad_specs() {
        let ok = spec(
            json!({"interval": "10s", "gracePeriod": "4s", "kv": {"mount": "s", "path": "p", "keys": [{"key": "t", "token": {}}]}}),
        );
        assert!(validate(&ok).is_ok());
        let long_grace = spec(
            json!({"interval": "10s", "gracePeriod": "10s", "kv": {"mount": "s", "path": "p", "keys": [{"key": "t", "token": {}}]}}),
        );
        assert!(validate(&long_grace)
            .unwrap_err()
            .to_string()
            .contains("shorter than spec.interval"));
        let two = spec(
            json!({"interval": "1d", "manual": {"mount": "s", "path": "p"}, "databaseRoot": {"connection": "pg"}}),
        );
        assert!(validate(&two).is_err());
        let cron = spec(json!({"schedule": "0 2 * *", "databaseRoot": {"connection": "pg"}}));
        assert!(validate(&cron)
            .unwrap_err()
            .to_string()
            .contains("spec.schedule"));
        let grace_db = spec(
            json!({"interval": "1d", "gracePeriod": "1h", "databaseStaticRole": {"role": "r"}}),
        );
        assert!(validate(&grace_db).is_err());
        let bad_tpl = spec(
            json!({"interval": "1d", "appRoleSecretId": {"role": "r", "secret": {"data": {"x": "{{ a | nope }}"}}}}),
        );
        assert!(validate(&bad_tpl).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn errors_map_to_reasons_and_history() {
        let now = Utc::now();
        let plain: RotationError = ReconcileError::Dependency("x".into()).into();
        assert_eq!(plain.reason(), "WaitingForDependency");
        assert!(plain.record(now).is_none());
        let mut failed = RotationError::rotating(ReconcileError::Conflict("cas".into()), None);
        failed.conflict = true;
        assert_eq!(failed.reason(), "RotationFailed");
        assert_eq!(failed.record(now).unwrap().outcome, Outcome::Conflict);
        let cas = ReconcileError::Vault(certus_vault_client::VaultError::new(
            ErrorClass::InvalidRequest,
            "POST s/data/p",
            Some(400),
            "check-and-set parameter did not match the current version",
        ));
        assert!(is_cas_conflict(&cas));
    }
}
