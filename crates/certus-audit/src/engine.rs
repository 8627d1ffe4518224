//! The rule engine: the set of active rules, their threshold state and their statistics.
//!
//! [`RuleSet`] is a cheap, cloneable handle shared between the `AuditAlertRule`
//! controller (which calls [`RuleSet::apply`] / [`RuleSet::remove`] and writes
//! [`RuleSet::status`]) and the audit processor (which calls [`RuleSet::evaluate_at`]).
//! Evaluation is pure apart from the in-memory threshold state: the time is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use certus_api::{
    set_condition, AuditAlertRule, AuditAlertRuleSpec, AuditAlertRuleStatus, AuditGroupBy,
    Condition, ConditionStatus,
};
use chrono::{DateTime, Utc};
use kube_name::name_of;

use crate::alert::{Alert, Firing};
use crate::clock::Clock;
use crate::entry::AuditEntry;
use crate::rule::{CompiledRule, Threshold};
use crate::webhook::{WebhookResolution, WebhookTarget};

/// Most threshold groups (identities or addresses) tracked per rule. When full, expired
/// groups are dropped first, then the least recently seen one.
pub const MAX_GROUPS_PER_RULE: usize = 10_000;

/// Condition reasons used in `AuditAlertRule` status.
pub mod reasons {
    /// The rule is evaluated.
    pub const ACTIVE: &str = "Active";
    /// `spec.suspend` is set.
    pub const SUSPENDED: &str = "Suspended";
    /// The spec cannot be compiled.
    pub const INVALID_SPEC: &str = certus_api::reasons::INVALID_SPEC;
}

/// Counters of one rule, shown in its status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleStats {
    /// Alerts raised.
    pub matches_total: u64,
    /// Time of the last alert.
    pub last_match_time: Option<DateTime<Utc>>,
    /// Summary of the last alert.
    pub last_match_summary: Option<String>,
}

/// An alert together with where its webhook goes.
#[derive(Debug, Clone)]
pub struct FiredAlert {
    /// The alert.
    pub alert: Alert,
    /// The rule's webhook, when it has a resolved one.
    pub webhook: Option<Arc<WebhookTarget>>,
}

#[derive(Debug)]
struct GroupState {
    /// Times of the most recent hits (at most `count`), oldest first.
    hits: VecDeque<DateTime<Utc>>,
    /// No alert for this group before this time.
    quiet_until: Option<DateTime<Utc>>,
    last_seen: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Groups {
    map: HashMap<String, GroupState>,
    since_sweep: u32,
}

impl Groups {
    /// Records a hit; returns the number of hits in the window when the rule fires.
    fn hit(&mut self, key: &str, at: DateTime<Utc>, t: &Threshold) -> Option<u32> {
        self.since_sweep += 1;
        if self.since_sweep >= 1024 {
            self.since_sweep = 0;
            self.sweep(at, t);
        }
        if !self.map.contains_key(key) && self.map.len() >= MAX_GROUPS_PER_RULE {
            self.sweep(at, t);
            if self.map.len() >= MAX_GROUPS_PER_RULE {
                if let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, g)| g.last_seen)
                    .map(|(k, _)| k.clone())
                {
                    self.map.remove(&oldest);
                }
            }
        }
        let g = self
            .map
            .entry(key.to_string())
            .or_insert_with(|| GroupState {
                hits: VecDeque::new(),
                quiet_until: None,
                last_seen: at,
            });
        g.last_seen = g.last_seen.max(at);
        // Entries are nearly ordered; keep the deque sorted anyway.
        let pos = g.hits.partition_point(|h| *h <= at);
        g.hits.insert(pos, at);
        let count = t.count as usize;
        while g.hits.len() > count {
            g.hits.pop_front();
        }
        // The window is (at - window, at].
        let from = at - t.window;
        while g.hits.front().is_some_and(|h| *h <= from) {
            g.hits.pop_front();
        }
        let quiet = g.quiet_until.is_some_and(|q| at < q);
        if g.hits.len() >= count && !quiet {
            g.quiet_until = Some(at + t.window);
            Some(g.hits.len() as u32)
        } else {
            None
        }
    }

    fn sweep(&mut self, at: DateTime<Utc>, t: &Threshold) {
        let from = at - t.window;
        self.map
            .retain(|_, g| g.last_seen > from || g.quiet_until.is_some_and(|q| q > at));
    }
}

#[derive(Debug)]
struct Slot {
    spec: AuditAlertRuleSpec,
    generation: Option<i64>,
    compiled: Result<CompiledRule, Vec<String>>,
    window_text: Option<String>,
    groups: Groups,
    stats: RuleStats,
    webhook: WebhookResolution,
}

#[derive(Debug, Default)]
struct Inner {
    rules: BTreeMap<String, Slot>,
    dirty: BTreeSet<String>,
}

/// The active rules. Clone it freely: clones share the rules.
#[derive(Clone)]
pub struct RuleSet {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.names())
            .finish()
    }
}

mod kube_name {
    use certus_api::AuditAlertRule;
    /// The rule's name (cluster-scoped: the name is the key).
    pub fn name_of(rule: &AuditAlertRule) -> String {
        rule.metadata.name.clone().unwrap_or_default()
    }
}

impl RuleSet {
    /// An empty rule set. `clock` stamps status conditions.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        RuleSet {
            inner: Arc::new(Mutex::new(Inner::default())),
            changed: Arc::new(tokio::sync::Notify::new()),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or updates a rule from its resource and returns the status to write.
    ///
    /// A changed spec is recompiled and its threshold state reset; an unchanged spec
    /// keeps it. The first time a rule is seen its counters continue from
    /// `rule.status` (so `matchesTotal` survives an operator restart). `webhook` is what
    /// the caller resolved from `spec.webhook.secretRef` (see
    /// [`WebhookTarget::from_secret_data`]).
    pub fn apply(&self, rule: &AuditAlertRule, webhook: WebhookResolution) -> AuditAlertRuleStatus {
        let name = name_of(rule);
        {
            let mut inner = self.lock();
            let generation = rule.metadata.generation;
            match inner.rules.get_mut(&name) {
                Some(slot) if slot.spec == rule.spec => {
                    slot.generation = generation;
                    slot.webhook = webhook;
                }
                existing => {
                    let stats = match existing {
                        Some(slot) => slot.stats.clone(),
                        None => seed_stats(rule.status.as_ref()),
                    };
                    let slot = Slot {
                        spec: rule.spec.clone(),
                        generation,
                        compiled: CompiledRule::compile(&name, &rule.spec),
                        window_text: rule.spec.threshold.as_ref().map(|t| t.window.clone()),
                        groups: Groups::default(),
                        stats,
                        webhook,
                    };
                    inner.rules.insert(name.clone(), slot);
                }
            }
        }
        self.status(rule)
    }

    /// Removes a rule (its resource was deleted).
    pub fn remove(&self, name: &str) {
        let mut inner = self.lock();
        inner.rules.remove(name);
        inner.dirty.remove(name);
    }

    /// Keeps only the named rules (for a controller that lists the live resources).
    pub fn retain(&self, names: &BTreeSet<String>) {
        let mut inner = self.lock();
        inner.rules.retain(|n, _| names.contains(n));
        inner.dirty.retain(|n| names.contains(n));
    }

    /// Names of the rules known.
    pub fn names(&self) -> Vec<String> {
        self.lock().rules.keys().cloned().collect()
    }

    /// Counters of a rule.
    pub fn stats(&self, name: &str) -> Option<RuleStats> {
        self.lock().rules.get(name).map(|s| s.stats.clone())
    }

    /// Names of the rules whose counters changed since the last call (their status
    /// needs writing), and clears the set.
    pub fn take_dirty(&self) -> Vec<String> {
        let mut inner = self.lock();
        std::mem::take(&mut inner.dirty).into_iter().collect()
    }

    /// Resolves when some rule's counters changed (then call [`take_dirty`](Self::take_dirty)).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The status for a rule resource: conditions (`Ready`), `observedGeneration` and the
    /// counters. Conditions keep their transition times from `rule.status`.
    pub fn status(&self, rule: &AuditAlertRule) -> AuditAlertRuleStatus {
        let name = name_of(rule);
        let now = self.clock.now();
        let inner = self.lock();
        let mut status = rule.status.clone().unwrap_or_default();
        let generation = rule.metadata.generation;
        status.observed_generation = generation;
        let ready = match inner.rules.get(&name) {
            None => Condition::new(
                certus_api::condition_types::READY,
                ConditionStatus::Unknown,
                certus_api::reasons::PROGRESSING,
                "the rule is not loaded yet",
                generation,
                now,
            ),
            Some(slot) => {
                status.matches_total = i64::try_from(slot.stats.matches_total).unwrap_or(i64::MAX);
                status.last_match_time = slot.stats.last_match_time;
                status.last_match_summary = slot.stats.last_match_summary.clone();
                let (st, reason, msg) = match (&slot.compiled, &slot.webhook) {
                    (Err(errs), _) => (
                        ConditionStatus::False,
                        reasons::INVALID_SPEC.to_string(),
                        errs.join("; "),
                    ),
                    (Ok(c), _) if c.suspended => (
                        ConditionStatus::False,
                        reasons::SUSPENDED.to_string(),
                        "spec.suspend is set: the rule is not evaluated".to_string(),
                    ),
                    (Ok(_), WebhookResolution::Unavailable { reason, message }) => (
                        ConditionStatus::False,
                        reason.clone(),
                        format!("webhook unavailable ({message}); Events and metrics still work"),
                    ),
                    (Ok(_), _) => (
                        ConditionStatus::True,
                        reasons::ACTIVE.to_string(),
                        "evaluating audit entries".to_string(),
                    ),
                };
                Condition::new(
                    certus_api::condition_types::READY,
                    st,
                    &reason,
                    msg,
                    generation,
                    now,
                )
            }
        };
        set_condition(&mut status.conditions, ready);
        status
    }

    /// Evaluates one entry at time `at` against every active rule and returns the alerts
    /// raised (updating threshold state and counters).
    pub fn evaluate_at(&self, entry: &AuditEntry<'_>, at: DateTime<Utc>) -> Vec<FiredAlert> {
        let mut out = Vec::new();
        let mut inner = self.lock();
        let Inner { rules, dirty } = &mut *inner;
        for (name, slot) in rules.iter_mut() {
            let Ok(rule) = &slot.compiled else { continue };
            if rule.suspended || !rule.hits(entry, at) {
                continue;
            }
            let (count, group) = match &rule.threshold {
                None => (1, None),
                Some(t) => {
                    let (key, label) = match t.group_by {
                        AuditGroupBy::None => ("", None),
                        AuditGroupBy::Identity => (
                            entry.identity_key(),
                            Some(entry.display_name_or_anonymous().to_string()),
                        ),
                        AuditGroupBy::RemoteAddress => {
                            let r = entry.remote_address();
                            let r = if r.is_empty() { "unknown" } else { r };
                            (r, Some(r.to_string()))
                        }
                    };
                    match slot.groups.hit(key, at, t) {
                        Some(n) => (n, label),
                        None => continue,
                    }
                }
            };
            let alert = Alert::new(
                Firing {
                    rule: name,
                    severity: rule.severity.as_str(),
                    description: rule.description.as_deref(),
                    time: at,
                    count,
                    window: slot.window_text.as_deref(),
                    group,
                },
                entry,
            );
            slot.stats.matches_total += 1;
            slot.stats.last_match_time = Some(at);
            slot.stats.last_match_summary = Some(alert.summary.clone());
            dirty.insert(name.clone());
            let webhook = match &slot.webhook {
                WebhookResolution::Target(t) => Some(t.clone()),
                _ => None,
            };
            out.push(FiredAlert { alert, webhook });
        }
        drop(inner);
        if !out.is_empty() {
            self.changed.notify_waiters();
        }
        out
    }
}

fn seed_stats(status: Option<&AuditAlertRuleStatus>) -> RuleStats {
    match status {
        None => RuleStats::default(),
        Some(s) => RuleStats {
            matches_total: u64::try_from(s.matches_total).unwrap_or(0),
            last_match_time: s.last_match_time,
            last_match_summary: s.last_match_summary.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::entry::parse_line;
    use crate::rule::tests::{entry, E};
    use chrono::{Duration, TimeZone};

    fn rule(name: &str, yaml: &str) -> AuditAlertRule {
        let spec: AuditAlertRuleSpec = serde_yaml::from_str(yaml).unwrap();
        let mut r = AuditAlertRule::new(name, spec);
        r.metadata.generation = Some(1);
        r
    }

    fn set(rules: &[AuditAlertRule]) -> RuleSet {
        let t0 = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let s = RuleSet::new(Arc::new(ManualClock::new(t0)));
        for r in rules {
            s.apply(r, WebhookResolution::None);
        }
        s
    }

    fn eval(s: &RuleSet, e: &E, at: DateTime<Utc>) -> Vec<FiredAlert> {
        let line = e.line();
        let entry = parse_line(line.as_bytes()).unwrap().unwrap();
        s.evaluate_at(&entry, at)
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 10, 0, 0).unwrap() + Duration::seconds(secs)
    }

    fn failed_login(remote: &str) -> E {
        entry()
            .anonymous()
            .op("update")
            .mount_type("userpass")
            .path("auth/userpass/login/bob")
            .error("invalid credentials")
            .remote(remote)
    }

    const FAILED_LOGINS: &str = "match: {paths: ['auth/*/login/**', 'auth/*/login'], result: Error}\nthreshold: {count: 5, window: 5m, groupBy: RemoteAddress}";

    #[test]
    fn threshold_fires_exactly_once_per_window() {
        let s = set(&[rule("failed-logins", FAILED_LOGINS)]);
        let mut fired = vec![];
        for i in 0..12 {
            // 12 failures, 10 s apart: all within one 5-minute window.
            fired.extend(eval(&s, &failed_login("10.0.0.9"), t(i * 10)));
        }
        assert_eq!(fired.len(), 1, "{fired:#?}");
        let a = &fired[0].alert;
        assert_eq!(a.time, t(40), "fires on the 5th hit");
        assert_eq!(a.count, 5);
        assert_eq!(a.group.as_deref(), Some("10.0.0.9"));
        assert_eq!(
            a.summary,
            "5 hits in 5m for 10.0.0.9; last: update auth/userpass/login/bob by anonymous from 10.0.0.9 (error)"
        );
        // The burst goes on: the next alert comes once the window after the first has
        // passed (t(40) + 5m), not on every further failure.
        let mut later = vec![];
        for i in 12..40 {
            later.extend(eval(&s, &failed_login("10.0.0.9"), t(i * 10)));
        }
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].alert.time, t(340));
        assert_eq!(s.stats("failed-logins").unwrap().matches_total, 2);
    }

    #[test]
    fn threshold_needs_count_hits_within_the_sliding_window() {
        let s = set(&[rule("failed-logins", FAILED_LOGINS)]);
        // 4 failures, then a gap longer than the window, then 4 more: never 5 in 5m.
        for i in 0..4 {
            assert!(eval(&s, &failed_login("10.0.0.9"), t(i)).is_empty());
        }
        for i in 0..4 {
            assert!(eval(&s, &failed_login("10.0.0.9"), t(301 + i)).is_empty());
        }
        // The window is (at - 5m, at]: at t(303) the hit at t(3) is exactly 5m old → out.
        // A 5th hit at t(305) has t(301)..t(305) in its window.
        assert_eq!(eval(&s, &failed_login("10.0.0.9"), t(305)).len(), 1);
    }

    #[test]
    fn threshold_groups_are_independent() {
        let s = set(&[rule("failed-logins", FAILED_LOGINS)]);
        let mut fired = vec![];
        for i in 0..5 {
            fired.extend(eval(&s, &failed_login("10.0.0.1"), t(i)));
            fired.extend(eval(&s, &failed_login("10.0.0.2"), t(i)));
            if i < 4 {
                fired.extend(eval(&s, &failed_login("10.0.0.3"), t(i)));
            }
        }
        let groups: Vec<_> = fired
            .iter()
            .map(|f| f.alert.group.clone().unwrap())
            .collect();
        assert_eq!(groups, ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn group_by_identity_uses_entity_or_display_name() {
        let s = set(&[rule(
            "denials",
            "match: {result: PermissionDenied}\nthreshold: {count: 2, window: 1m, groupBy: Identity}",
        )]);
        assert!(eval(&s, &entry().denied(), t(0)).is_empty());
        assert!(eval(&s, &entry().denied().entity("ent-bob").display("bob"), t(1)).is_empty());
        let f = eval(&s, &entry().denied(), t(2));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].alert.group.as_deref(), Some("userpass-alice"));
    }

    #[test]
    fn count_one_deduplicates() {
        let s = set(&[rule(
            "dedup",
            "match: {paths: ['secret/**']}\nthreshold: {count: 1, window: 1h, groupBy: Identity}",
        )]);
        let n: usize = (0..100).map(|i| eval(&s, &entry(), t(i * 30)).len()).sum();
        assert_eq!(n, 1, "one alert for 100 hits over 50 minutes");
        assert_eq!(eval(&s, &entry(), t(3600)).len(), 1, "next hour");
    }

    #[test]
    fn without_threshold_every_hit_alerts_and_stats_follow() {
        let s = set(&[
            rule(
                "prod-reads",
                "match: {paths: ['secret/data/prod/**'], operations: [read]}",
            ),
            rule("other", "match: {paths: ['pki/**']}"),
        ]);
        for i in 0..3 {
            let f = eval(&s, &entry(), t(i));
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].alert.rule, "prod-reads");
            assert_eq!(f[0].alert.count, 1);
        }
        let st = s.stats("prod-reads").unwrap();
        assert_eq!(st.matches_total, 3);
        assert_eq!(st.last_match_time, Some(t(2)));
        assert_eq!(
            st.last_match_summary.as_deref(),
            Some("read secret/data/prod/db by userpass-alice from 10.0.0.7 (success)")
        );
        assert_eq!(s.take_dirty(), ["prod-reads"]);
        assert!(s.take_dirty().is_empty());
    }

    #[test]
    fn status_reports_ready_invalid_and_suspended_and_keeps_counts() {
        let s = set(&[]);
        let mut good = rule("good", "match: {paths: ['secret/**']}");
        good.status = Some(AuditAlertRuleStatus {
            matches_total: 41,
            ..Default::default()
        });
        let st = s.apply(&good, WebhookResolution::None);
        assert_eq!(st.matches_total, 41, "continues from the stored status");
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(st.conditions[0].status, ConditionStatus::True);
        eval(&s, &entry(), t(0));
        assert_eq!(s.status(&good).matches_total, 42);

        let bad = rule(
            "bad",
            "timeWindow: {start: '06:00', end: '18:00', timeZone: Nowhere/City}",
        );
        let st = s.apply(&bad, WebhookResolution::None);
        assert_eq!(st.conditions[0].status, ConditionStatus::False);
        assert_eq!(st.conditions[0].reason, "InvalidSpec");
        assert!(st.conditions[0].message.contains("Nowhere/City"));

        let off = rule("off", "suspend: true\nmatch: {paths: ['secret/**']}");
        let st = s.apply(&off, WebhookResolution::None);
        assert_eq!(st.conditions[0].reason, "Suspended");
        assert!(eval(&s, &entry(), t(1))
            .iter()
            .all(|f| f.alert.rule == "good"));

        let st = s.apply(
            &good,
            WebhookResolution::Unavailable {
                reason: "SecretNotFound".into(),
                message: "Secret ops/hook not found".into(),
            },
        );
        assert_eq!(st.conditions[0].reason, "SecretNotFound");
        s.remove("good");
        assert!(eval(&s, &entry(), t(2)).is_empty());
    }

    #[test]
    fn changed_spec_resets_threshold_state_but_not_counters() {
        let s = set(&[rule("r", FAILED_LOGINS)]);
        for i in 0..4 {
            eval(&s, &failed_login("10.0.0.9"), t(i));
        }
        // Same spec again (a resync): state kept, the 5th hit fires.
        s.apply(&rule("r", FAILED_LOGINS), WebhookResolution::None);
        assert_eq!(eval(&s, &failed_login("10.0.0.9"), t(5)).len(), 1);
        let changed = FAILED_LOGINS.replace("count: 5", "count: 3");
        s.apply(&rule("r", &changed), WebhookResolution::None);
        assert!(eval(&s, &failed_login("10.0.0.9"), t(6)).is_empty());
        assert!(eval(&s, &failed_login("10.0.0.9"), t(7)).is_empty());
        assert_eq!(eval(&s, &failed_login("10.0.0.9"), t(8)).len(), 1);
        assert_eq!(s.stats("r").unwrap().matches_total, 2);
    }

    #[test]
    fn group_count_is_bounded() {
        let s = set(&[rule(
            "r",
            "threshold: {count: 2, window: 1h, groupBy: RemoteAddress}",
        )]);
        for i in 0..(MAX_GROUPS_PER_RULE as i64 + 500) {
            let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
            eval(&s, &entry().remote(&ip), t(i));
        }
        let inner = s.lock();
        assert!(inner.rules["r"].groups.map.len() <= MAX_GROUPS_PER_RULE);
    }
}
