//! Building status (pure) and writing it (server-side apply on the status subresource).

use certus_api::{
    condition_types, find_condition, reasons, set_condition, Condition, ConditionStatus,
    API_VERSION, FIELD_MANAGER,
};
use chrono::{DateTime, SubsecRound, Utc};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// "Now", to the second (the precision of `metav1.Time`).
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

/// A `Ready` condition.
pub fn ready(
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let status = if ok {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    Condition::new(
        condition_types::READY,
        status,
        reason,
        message,
        generation,
        now,
    )
}

/// Whether the `Ready` condition differs (status, reason or message) between two
/// condition lists: Warning Events are published only on such a change, so a resource
/// that keeps failing the same way does not flood the namespace with Events.
pub fn ready_changed(old: &[Condition], new: &[Condition]) -> bool {
    let key = |c: Option<&Condition>| c.map(|c| (c.status, c.reason.clone(), c.message.clone()));
    key(find_condition(old, condition_types::READY))
        != key(find_condition(new, condition_types::READY))
}

/// Sets `Ready=False` with the error's reason and message.
pub(crate) fn set_failed(
    conditions: &mut Vec<Condition>,
    err: &certus_reconcile::ReconcileError,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    set_condition(
        conditions,
        ready(false, err.reason(), err.to_string(), generation, now),
    );
}

/// A `Drifted` condition from a reconcile outcome.
pub fn drifted(
    drift: bool,
    corrected: bool,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let (status, reason, message) = match (drift, corrected) {
        (true, true) => (
            ConditionStatus::True,
            reasons::DRIFT_CORRECTED,
            "Vault was changed outside the operator; the spec was written back",
        ),
        (true, false) => (
            ConditionStatus::True,
            reasons::DRIFT_DETECTED,
            "Vault was changed outside the operator; left as is (driftPolicy: Report)",
        ),
        (false, _) => (
            ConditionStatus::False,
            reasons::IN_SYNC,
            "Vault matches the spec",
        ),
    };
    Condition::new(
        condition_types::DRIFTED,
        status,
        reason,
        message,
        generation,
        now,
    )
}

/// Writes `status` through the status subresource with server-side apply
/// (field manager [`FIELD_MANAGER`], forced). The whole status is always sent, so fields
/// the operator no longer sets are removed.
pub(crate) async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Status {
        object: format!("{} {name}", K::kind(&())),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).unwrap()
    }

    #[test]
    fn ready_keeps_transition_time_and_carries_generation() {
        let mut cs = vec![];
        set_condition(&mut cs, ready(true, "Reconciled", "ok", Some(1), t(1)));
        set_condition(
            &mut cs,
            ready(true, "Reconciled", "ok again", Some(2), t(2)),
        );
        assert_eq!(cs[0].last_transition_time, t(1));
        assert_eq!(cs[0].observed_generation, Some(2));
        assert_eq!(cs[0].status, ConditionStatus::True);
        let err = certus_reconcile::ReconcileError::Invalid("spec.rules: bad".into());
        set_failed(&mut cs, &err, Some(3), t(3));
        assert_eq!(
            (cs[0].status, cs[0].reason.as_str(), cs[0].message.as_str()),
            (ConditionStatus::False, "InvalidSpec", "spec.rules: bad")
        );
        assert_eq!(cs[0].last_transition_time, t(3));
    }

    #[test]
    fn ready_changed_compares_status_reason_and_message_only() {
        let a = vec![ready(false, "Conflict", "m", Some(1), t(1))];
        let b = vec![ready(false, "Conflict", "m", Some(2), t(2))];
        let c = vec![ready(false, "Conflict", "other", Some(2), t(2))];
        assert!(!ready_changed(&a, &b));
        assert!(ready_changed(&a, &c));
        assert!(ready_changed(&[], &a));
    }

    #[test]
    fn drifted_reasons() {
        assert_eq!(drifted(true, true, None, t(1)).reason, "DriftCorrected");
        assert_eq!(drifted(true, false, None, t(1)).reason, "DriftDetected");
        let d = drifted(false, false, Some(4), t(1));
        assert_eq!(
            (d.status, d.reason.as_str()),
            (ConditionStatus::False, "InSync")
        );
        assert_eq!(d.observed_generation, Some(4));
    }
}
