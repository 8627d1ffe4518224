//! Retry delays: exponential backoff with jitter, per object.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::core::DynamicObject;
use kube::runtime::reflector::ObjectRef;
use rand::Rng;

/// The delay before retry number `failures` (1 = first retry): `base * 2^(failures-1)`,
/// capped at `max`, then "equal jitter": a uniformly random point in the upper half,
/// `[d/2, d]`. `random` is in `[0, 1)`. Never zero, never above `max`.
pub fn retry_delay(failures: u32, base: Duration, max: Duration, random: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let d = base.saturating_mul(1u32 << exp).min(max);
    let half = d / 2;
    let jitter = half.mul_f64(random.clamp(0.0, 1.0));
    (half + jitter).max(Duration::from_millis(100)).min(max)
}

/// Consecutive failures per object, reset on success.
#[derive(Default)]
pub struct FailureCounter {
    counts: Mutex<HashMap<ObjectRef<DynamicObject>, u32>>,
}

impl FailureCounter {
    /// Counts one more failure and returns the new count.
    pub fn record(&self, key: ObjectRef<DynamicObject>) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Forgets the failures of an object (after a success or its deletion).
    pub fn reset(&self, key: &ObjectRef<DynamicObject>) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// The current count.
    pub fn get(&self, key: &ObjectRef<DynamicObject>) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Records a failure and returns the jittered delay before the next attempt.
    pub fn next_delay(
        &self,
        key: ObjectRef<DynamicObject>,
        base: Duration,
        max: Duration,
    ) -> Duration {
        let n = self.record(key);
        retry_delay(n, base, max, rand::rng().random::<f64>())
    }
}

/// The delay before the next attempt after a failed reconcile of `obj`:
/// - while the object is being deleted: backoff, but never past the deletion deadline
///   (the attempt after it releases the finalizer), whatever the error class;
/// - errors that retrying cannot fix: `await_change_requeue` (a change of the object
///   triggers a reconcile right away anyway);
/// - otherwise exponential backoff with jitter per object, optionally capped at `cap`.
pub fn error_requeue<K>(
    obj: &K,
    err: &crate::error::Error,
    ctx: &crate::context::Context,
    cap: Option<Duration>,
) -> Duration
where
    K: kube::Resource<DynamicType = ()>,
{
    let opts = &ctx.options;
    let key = ObjectRef::from_obj(obj).erase();
    if let Some(deadline) = crate::policy::deletion_deadline(obj, ctx) {
        let remaining = (deadline - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        let delay = ctx
            .failures
            .next_delay(key, opts.retry_base, opts.retry_max);
        return delay.min(remaining);
    }
    if !err.retryable() {
        ctx.failures.reset(&key);
        return opts.await_change_requeue;
    }
    let delay = ctx
        .failures
        .next_delay(key, opts.retry_base, opts.retry_max);
    match cap {
        Some(cap) => delay.min(cap),
        None => delay,
    }
}

/// [`error_requeue`] as a controller [`Action`](kube::runtime::controller::Action).
pub(crate) fn error_action<K>(
    obj: &K,
    err: &crate::error::Error,
    ctx: &crate::context::Context,
    cap: Option<Duration>,
) -> kube::runtime::controller::Action
where
    K: kube::Resource<DynamicType = ()>,
{
    kube::runtime::controller::Action::requeue(error_requeue(obj, err, ctx, cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn doubles_from_base_and_caps_at_max() {
        // Without jitter (random = 1.0) the delay is the full exponential value.
        let full: Vec<u64> = (1..=9)
            .map(|n| retry_delay(n, BASE, MAX, 1.0).as_secs())
            .collect();
        assert_eq!(full, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        // random = 0 gives the lower half bound.
        assert_eq!(retry_delay(1, BASE, MAX, 0.0), Duration::from_millis(2500));
        assert_eq!(retry_delay(20, BASE, MAX, 0.0), Duration::from_secs(150));
        // Huge failure counts do not overflow.
        assert_eq!(retry_delay(u32::MAX, BASE, MAX, 1.0), MAX);
    }

    #[test]
    fn jitter_stays_within_upper_half() {
        for n in 1..12 {
            let full = retry_delay(n, BASE, MAX, 1.0);
            for r in [0.0, 0.1, 0.5, 0.99] {
                let d = retry_delay(n, BASE, MAX, r);
                assert!(d >= full / 2 && d <= full, "n={n} r={r} d={d:?}");
            }
        }
    }

    #[test]
    fn counter_resets_per_object() {
        let c = FailureCounter::default();
        let a = ObjectRef::<DynamicObject>::new_with(
            "a",
            kube::core::ApiResource::erase::<certus_api::VaultPolicy>(&()),
        )
        .within("ns");
        let b = ObjectRef::<DynamicObject>::new_with(
            "b",
            kube::core::ApiResource::erase::<certus_api::VaultPolicy>(&()),
        )
        .within("ns");
        assert_eq!(c.record(a.clone()), 1);
        assert_eq!(c.record(a.clone()), 2);
        assert_eq!(c.record(b.clone()), 1);
        let d = c.next_delay(a.clone(), BASE, MAX);
        assert_eq!(c.get(&a), 3);
        assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(20));
        c.reset(&a);
        assert_eq!(c.get(&a), 0);
        assert_eq!(c.get(&b), 1);
    }
}
