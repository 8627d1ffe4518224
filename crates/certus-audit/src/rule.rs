//! A compiled `AuditAlertRule`: the pure predicate "is this entry a hit at this time".
//! Thresholds (state over time) live in [`crate::engine`].

use std::time::Duration;

use certus_api::{
    AuditAlertRuleSpec, AuditAlertSeverity, AuditEntryType, AuditGroupBy, AuditIdentitySelector,
    AuditResult, AuditTimeWindow, AuditWeekday, AuditWindowMode,
};
use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

use crate::entry::{AuditEntry, EntryKind, Outcome};
use crate::glob::Glob;

/// The longest threshold window accepted (state is kept in memory for that long).
pub const MAX_THRESHOLD_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A rule ready for evaluation.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// Name of the `AuditAlertRule`.
    pub name: String,
    /// Severity of its alerts.
    pub severity: AuditAlertSeverity,
    /// The rule's description.
    pub description: Option<String>,
    /// Whether `spec.suspend` is set.
    pub suspended: bool,
    paths: Vec<Glob>,
    exclude_paths: Vec<Glob>,
    operations: Vec<String>,
    mount_types: Vec<String>,
    identities: Vec<IdentityMatcher>,
    result: AuditResult,
    entry_type: AuditEntryType,
    allowed: Option<Vec<IdentityMatcher>>,
    window: Option<TimeOfDay>,
    /// The threshold, when the rule has one.
    pub threshold: Option<Threshold>,
}

/// A compiled threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    /// Hits within `window` that raise an alert.
    pub count: u32,
    /// Sliding window (also the minimum time between two alerts of a group).
    pub window: chrono::Duration,
    /// How hits are grouped.
    pub group_by: AuditGroupBy,
}

#[derive(Debug, Clone)]
struct IdentityMatcher {
    display_name: Option<Glob>,
    entity_id: Option<Glob>,
    policy: Option<Glob>,
    sa_name: Option<Glob>,
    sa_namespace: Option<Glob>,
}

impl IdentityMatcher {
    fn new(s: &AuditIdentitySelector) -> Self {
        let g = |v: &Option<String>| v.as_deref().map(Glob::value);
        IdentityMatcher {
            display_name: g(&s.display_name),
            entity_id: g(&s.entity_id),
            policy: g(&s.policy),
            sa_name: g(&s.service_account_name),
            sa_namespace: g(&s.service_account_namespace),
        }
    }

    fn is_empty(&self) -> bool {
        self.display_name.is_none()
            && self.entity_id.is_none()
            && self.policy.is_none()
            && self.sa_name.is_none()
            && self.sa_namespace.is_none()
    }

    /// Every set field must match. Absent values never match (an anonymous request does
    /// not match `displayName: "*"`).
    fn matches(&self, e: &AuditEntry<'_>) -> bool {
        fn field(g: &Option<Glob>, v: Option<&str>) -> bool {
            match g {
                None => true,
                Some(g) => v.is_some_and(|v| g.matches(v)),
            }
        }
        let (sa_ns, sa_name) = e.service_account();
        field(&self.display_name, e.display_name())
            && field(&self.entity_id, e.entity_id())
            && field(&self.sa_name, sa_name)
            && field(&self.sa_namespace, sa_ns)
            && match &self.policy {
                None => true,
                Some(g) => e.policies().iter().any(|p| g.matches(p)),
            }
    }
}

/// A compiled time-of-day window.
#[derive(Debug, Clone)]
pub struct TimeOfDay {
    start: u32,
    end: u32,
    tz: Tz,
    days: u8,
    outside: bool,
}

impl TimeOfDay {
    /// Compiles a window; errors name the offending field.
    pub fn compile(w: &AuditTimeWindow) -> Result<Self, String> {
        let start = parse_hhmm(&w.start).map_err(|e| format!("timeWindow.start: {e}"))?;
        let end = parse_hhmm(&w.end).map_err(|e| format!("timeWindow.end: {e}"))?;
        if start == end {
            return Err("timeWindow.start and timeWindow.end must differ".into());
        }
        let tz: Tz = w.time_zone.parse().map_err(|_| {
            format!(
                "timeWindow.timeZone: {:?} is not an IANA time zone (e.g. Europe/Berlin, UTC)",
                w.time_zone
            )
        })?;
        let days = w.days.iter().fold(0u8, |m, d| m | (1 << weekday_index(*d)));
        Ok(TimeOfDay {
            start,
            end,
            tz,
            days: if days == 0 { 0x7f } else { days },
            outside: w.when == AuditWindowMode::Outside,
        })
    }

    /// Whether `at` is selected (inside the window, or outside it for `when: Outside`).
    pub fn selects(&self, at: DateTime<Utc>) -> bool {
        self.inside(at) != self.outside
    }

    fn inside(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.tz);
        let secs = local.num_seconds_from_midnight();
        let today = local.weekday().num_days_from_monday() as u8;
        let day_on = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            day_on(today) && secs >= self.start && secs < self.end
        } else {
            // Spans midnight: the evening part belongs to today, the morning part to the
            // window that started yesterday.
            let yesterday = (today + 6) % 7;
            (secs >= self.start && day_on(today)) || (secs < self.end && day_on(yesterday))
        }
    }
}

fn weekday_index(d: AuditWeekday) -> u8 {
    match d {
        AuditWeekday::Mon => 0,
        AuditWeekday::Tue => 1,
        AuditWeekday::Wed => 2,
        AuditWeekday::Thu => 3,
        AuditWeekday::Fri => 4,
        AuditWeekday::Sat => 5,
        AuditWeekday::Sun => 6,
    }
}

fn parse_hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let h: u32 = h.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
    let m: u32 = m.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
    if h > 23 || m > 59 {
        return Err(format!("{s:?} is not a time of day (00:00-23:59)"));
    }
    Ok(h * 3600 + m * 60)
}

impl CompiledRule {
    /// Compiles a rule. Every problem is reported (one message each), so the status can
    /// list them all.
    pub fn compile(name: &str, spec: &AuditAlertRuleSpec) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let m = &spec.match_;
        for (field, list) in [("paths", &m.paths), ("excludePaths", &m.exclude_paths)] {
            for p in list {
                if p.is_empty() || p.starts_with('/') {
                    errors.push(format!(
                        "match.{field}: {p:?} must be non-empty and must not start with '/'"
                    ));
                }
            }
        }
        let identities: Vec<IdentityMatcher> =
            m.identities.iter().map(IdentityMatcher::new).collect();
        if identities.iter().any(IdentityMatcher::is_empty) {
            errors.push("match.identities: every selector needs at least one field".into());
        }
        let allowed = spec.unexpected_identity.as_ref().map(|u| {
            u.allowed
                .iter()
                .map(IdentityMatcher::new)
                .collect::<Vec<_>>()
        });
        if let Some(a) = &allowed {
            if a.is_empty() {
                errors.push("unexpectedIdentity.allowed: list at least one identity".into());
            }
            if a.iter().any(IdentityMatcher::is_empty) {
                errors.push(
                    "unexpectedIdentity.allowed: every selector needs at least one field".into(),
                );
            }
        }
        let window = match spec.time_window.as_ref().map(TimeOfDay::compile) {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(e)) => {
                errors.push(e);
                None
            }
        };
        let threshold = match &spec.threshold {
            None => None,
            Some(t) => {
                let window = certus_api::parse_duration(&t.window);
                match window {
                    Err(e) => {
                        errors.push(format!("threshold.window: {e}"));
                        None
                    }
                    Ok(d) if d.is_zero() || d > MAX_THRESHOLD_WINDOW => {
                        errors.push(format!(
                            "threshold.window: {:?} must be more than 0 and at most 24h",
                            t.window
                        ));
                        None
                    }
                    Ok(_) if t.count == 0 => {
                        errors.push("threshold.count must be at least 1".into());
                        None
                    }
                    Ok(d) => Some(Threshold {
                        count: t.count,
                        window: chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
                        group_by: t.group_by,
                    }),
                }
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CompiledRule {
            name: name.to_string(),
            severity: spec.severity,
            description: spec.description.clone(),
            suspended: spec.suspend,
            paths: m.paths.iter().map(|p| Glob::path(p)).collect(),
            exclude_paths: m.exclude_paths.iter().map(|p| Glob::path(p)).collect(),
            operations: m.operations.clone(),
            mount_types: m.mount_types.clone(),
            identities,
            result: m.result,
            entry_type: m.entry_type,
            allowed,
            window,
            threshold,
        })
    }

    /// Whether the entry is a hit at time `at` (everything but the threshold).
    pub fn hits(&self, e: &AuditEntry<'_>, at: DateTime<Utc>) -> bool {
        let kind_ok = matches!(
            (self.entry_type, e.kind()),
            (AuditEntryType::Any, _)
                | (AuditEntryType::Response, EntryKind::Response)
                | (AuditEntryType::Request, EntryKind::Request)
        );
        if !kind_ok {
            return false;
        }
        let path = e.path();
        if !self.paths.is_empty() && !self.paths.iter().any(|g| g.matches(path)) {
            return false;
        }
        if self.exclude_paths.iter().any(|g| g.matches(path)) {
            return false;
        }
        if !self.operations.is_empty() && !self.operations.iter().any(|o| o == e.operation()) {
            return false;
        }
        if !self.mount_types.is_empty() && !self.mount_types.iter().any(|m| m == e.mount_type()) {
            return false;
        }
        let outcome = e.outcome();
        let result_ok = match self.result {
            AuditResult::Any => true,
            AuditResult::Success => outcome == Outcome::Success,
            AuditResult::Error => outcome != Outcome::Success,
            AuditResult::PermissionDenied => outcome == Outcome::PermissionDenied,
        };
        if !result_ok {
            return false;
        }
        if !self.identities.is_empty() && !self.identities.iter().any(|i| i.matches(e)) {
            return false;
        }
        if let Some(allowed) = &self.allowed {
            if allowed.iter().any(|i| i.matches(e)) {
                return false;
            }
        }
        if let Some(w) = &self.window {
            if !w.selects(at) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::entry::parse_line;
    use chrono::TimeZone;

    /// Builds a spec from YAML (the way users write it).
    pub(crate) fn spec(yaml: &str) -> AuditAlertRuleSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// A small entry builder.
    pub(crate) struct E {
        kind: &'static str,
        op: String,
        path: String,
        mount_type: String,
        display: Option<String>,
        entity: Option<String>,
        policies: Vec<String>,
        sa: Option<(String, String)>,
        error: Option<String>,
        denied: bool,
        remote: String,
        time: String,
    }

    pub(crate) fn entry() -> E {
        E {
            kind: "response",
            op: "read".into(),
            path: "secret/data/prod/db".into(),
            mount_type: "kv".into(),
            display: Some("userpass-alice".into()),
            entity: Some("ent-alice".into()),
            policies: vec!["default".into()],
            sa: None,
            error: None,
            denied: false,
            remote: "10.0.0.7".into(),
            time: "2026-06-01T10:00:00Z".into(),
        }
    }

    impl E {
        pub(crate) fn op(mut self, o: &str) -> Self {
            self.op = o.into();
            self
        }
        pub(crate) fn path(mut self, p: &str) -> Self {
            self.path = p.into();
            self
        }
        pub(crate) fn mount_type(mut self, m: &str) -> Self {
            self.mount_type = m.into();
            self
        }
        pub(crate) fn request(mut self) -> Self {
            self.kind = "request";
            self
        }
        pub(crate) fn display(mut self, d: &str) -> Self {
            self.display = Some(d.into());
            self
        }
        pub(crate) fn entity(mut self, d: &str) -> Self {
            self.entity = Some(d.into());
            self
        }
        pub(crate) fn anonymous(mut self) -> Self {
            self.display = None;
            self.entity = None;
            self.policies.clear();
            self
        }
        pub(crate) fn policies(mut self, p: &[&str]) -> Self {
            self.policies = p.iter().map(|s| s.to_string()).collect();
            self
        }
        pub(crate) fn sa(mut self, ns: &str, name: &str) -> Self {
            self.sa = Some((ns.into(), name.into()));
            self
        }
        pub(crate) fn error(mut self, e: &str) -> Self {
            self.error = Some(e.into());
            self
        }
        pub(crate) fn denied(mut self) -> Self {
            self.denied = true;
            self.error = Some("1 error occurred:\n\t* permission denied\n\n".into());
            self
        }
        pub(crate) fn remote(mut self, r: &str) -> Self {
            self.remote = r.into();
            self
        }
        pub(crate) fn at(mut self, t: &str) -> Self {
            self.time = t.into();
            self
        }
        pub(crate) fn line(&self) -> String {
            let mut auth = serde_json::Map::new();
            if let Some(d) = &self.display {
                auth.insert("display_name".into(), d.clone().into());
                auth.insert("client_token".into(), "hmac-sha256:0011".into());
            }
            if let Some(e) = &self.entity {
                auth.insert("entity_id".into(), e.clone().into());
            }
            auth.insert("policies".into(), self.policies.clone().into());
            if let Some((ns, n)) = &self.sa {
                auth.insert(
                    "metadata".into(),
                    serde_json::json!({"service_account_name": n, "service_account_namespace": ns, "role": "r"}),
                );
            }
            auth.insert(
                "policy_results".into(),
                serde_json::json!({"allowed": !self.denied}),
            );
            let mut v = serde_json::json!({
                "time": self.time,
                "type": self.kind,
                "auth": auth,
                "request": {
                    "operation": self.op, "path": self.path, "mount_type": self.mount_type,
                    "remote_address": self.remote, "data": {"password": "hmac-sha256:ffff"}
                },
            });
            if let Some(e) = &self.error {
                v["error"] = e.clone().into();
            }
            serde_json::to_string(&v).unwrap()
        }
    }

    pub(crate) fn hits(rule: &CompiledRule, e: &E) -> bool {
        let line = e.line();
        let entry = parse_line(line.as_bytes()).unwrap().unwrap();
        rule.hits(&entry, entry.time.unwrap())
    }

    fn rule(yaml: &str) -> CompiledRule {
        CompiledRule::compile("r", &spec(yaml)).unwrap()
    }

    #[test]
    fn paths_operations_and_mount_types() {
        let r = rule("match: {paths: ['secret/data/prod/**', 'certus/data/prod/*'], excludePaths: ['secret/data/prod/public/**'], operations: [read, list], mountTypes: [kv]}");
        assert!(hits(&r, &entry()));
        assert!(hits(&r, &entry().path("certus/data/prod/openai")));
        assert!(!hits(&r, &entry().path("certus/data/prod/team/openai")));
        assert!(!hits(&r, &entry().path("secret/data/prod/public/motd")));
        assert!(!hits(&r, &entry().path("secret/data/staging/db")));
        assert!(!hits(&r, &entry().op("update")));
        assert!(!hits(&r, &entry().mount_type("database")));
        assert!(hits(&r, &entry().op("list")));
    }

    #[test]
    fn entry_type_defaults_to_response() {
        let r = rule("match: {paths: ['secret/**']}");
        assert!(hits(&r, &entry()));
        assert!(!hits(&r, &entry().request()));
        let r = rule("match: {paths: ['secret/**'], entryType: Any}");
        assert!(hits(&r, &entry().request()));
        let r = rule("match: {entryType: Request}");
        assert!(!hits(&r, &entry()));
    }

    #[test]
    fn results_error_and_denial() {
        let denied = rule("match: {result: PermissionDenied}");
        let errors = rule("match: {result: Error}");
        let ok = rule("match: {result: Success}");
        let failed_login = entry()
            .anonymous()
            .op("update")
            .path("auth/userpass/login/bob")
            .error("invalid credentials");
        assert!(hits(&denied, &entry().denied()));
        assert!(!hits(&denied, &failed_login));
        assert!(hits(&errors, &failed_login));
        assert!(hits(&errors, &entry().denied()));
        assert!(!hits(&errors, &entry()));
        assert!(hits(&ok, &entry()));
        assert!(!hits(&ok, &failed_login));
    }

    #[test]
    fn identity_selectors() {
        let r = rule("match: {identities: [{displayName: 'kubernetes-*', policy: certus-ask}, {serviceAccountNamespace: certus-tap, serviceAccountName: certus-ask}, {entityId: ent-bob}]}");
        assert!(!hits(&r, &entry()));
        assert!(hits(
            &r,
            &entry()
                .display("kubernetes-x")
                .policies(&["default", "certus-ask"])
        ));
        assert!(
            !hits(&r, &entry().display("kubernetes-x")),
            "policy missing"
        );
        assert!(hits(&r, &entry().sa("certus-tap", "certus-ask")));
        assert!(!hits(&r, &entry().sa("certus-tap", "other")));
        assert!(hits(&r, &entry().entity("ent-bob")));
        let any_named = rule("match: {identities: [{displayName: '*'}]}");
        assert!(
            !hits(&any_named, &entry().anonymous()),
            "anonymous has no name"
        );
    }

    #[test]
    fn unexpected_identity_matches_everyone_but_the_allowed() {
        let r = rule(
            "match: {paths: ['certus/data/prod/openai'], operations: [read]}\nunexpectedIdentity: {allowed: [{serviceAccountNamespace: certus-tap, serviceAccountName: certus-ask}, {displayName: 'break-glass-*'}]}",
        );
        let e = entry().path("certus/data/prod/openai");
        assert!(hits(&r, &e), "alice is not allowed");
        assert!(!hits(
            &r,
            &e.clone_with(|e| e.sa("certus-tap", "certus-ask"))
        ));
        assert!(!hits(&r, &e.clone_with(|e| e.display("break-glass-ops"))));
        assert!(
            hits(&r, &e.clone_with(|e| e.anonymous().denied())),
            "anonymous attempts count"
        );
        assert!(!hits(
            &r,
            &e.clone_with(|e| e.path("certus/data/prod/other"))
        ));
        assert!(!hits(&r, &e.clone_with(|e| e.op("update"))));
    }

    impl E {
        fn clone_with(&self, f: impl FnOnce(E) -> E) -> E {
            f(E {
                kind: self.kind,
                op: self.op.clone(),
                path: self.path.clone(),
                mount_type: self.mount_type.clone(),
                display: self.display.clone(),
                entity: self.entity.clone(),
                policies: self.policies.clone(),
                sa: self.sa.clone(),
                error: self.error.clone(),
                denied: self.denied,
                remote: self.remote.clone(),
                time: self.time.clone(),
            })
        }
    }

    #[test]
    fn time_window_outside_business_hours_in_berlin() {
        let r = rule("match: {paths: ['secret/data/prod/**']}\ntimeWindow: {start: '06:00', end: '18:00', timeZone: Europe/Berlin, when: Outside}");
        // Summer (CEST, UTC+2): 03:00 Berlin = 01:00Z, 12:00 Berlin = 10:00Z,
        // 18:00 Berlin = 16:00Z (end is exclusive → outside), 05:59 Berlin = 03:59Z.
        assert!(hits(&r, &entry().at("2026-06-01T01:00:00Z")));
        assert!(!hits(&r, &entry().at("2026-06-01T10:00:00Z")));
        assert!(hits(&r, &entry().at("2026-06-01T16:00:00Z")));
        assert!(!hits(&r, &entry().at("2026-06-01T15:59:59Z")));
        assert!(hits(&r, &entry().at("2026-06-01T03:59:00Z")));
        assert!(!hits(&r, &entry().at("2026-06-01T04:00:00Z")));
        // Winter (CET, UTC+1): 05:30Z = 06:30 Berlin → inside business hours.
        assert!(!hits(&r, &entry().at("2026-01-15T05:30:00Z")));
        assert!(hits(&r, &entry().at("2026-01-15T04:30:00Z")));
    }

    #[test]
    fn time_window_days_and_midnight_span() {
        // Business hours Mon-Fri; outside = nights and weekends.
        let r = rule("timeWindow: {start: '06:00', end: '18:00', timeZone: UTC, days: [Mon, Tue, Wed, Thu, Fri], when: Outside}");
        assert!(
            !hits(&r, &entry().at("2026-06-05T10:00:00Z")),
            "Friday noon"
        );
        assert!(
            hits(&r, &entry().at("2026-06-06T10:00:00Z")),
            "Saturday noon"
        );
        // A night window 22:00-06:00 starting Fridays only.
        let r = rule("timeWindow: {start: '22:00', end: '06:00', days: [Fri]}");
        assert!(hits(&r, &entry().at("2026-06-05T23:00:00Z")), "Fri 23:00");
        assert!(
            hits(&r, &entry().at("2026-06-06T05:00:00Z")),
            "Sat 05:00 belongs to Fri"
        );
        assert!(!hits(&r, &entry().at("2026-06-06T23:00:00Z")), "Sat 23:00");
        assert!(
            !hits(&r, &entry().at("2026-06-05T05:00:00Z")),
            "Fri 05:00 belongs to Thu"
        );
        assert!(!hits(&r, &entry().at("2026-06-05T12:00:00Z")));
    }

    #[test]
    fn time_window_uses_the_time_passed_in() {
        let r = rule("timeWindow: {start: '09:00', end: '10:00', timeZone: Asia/Tokyo}");
        let line = entry().line();
        let e = parse_line(line.as_bytes()).unwrap().unwrap();
        let inside = Utc.with_ymd_and_hms(2026, 6, 1, 0, 30, 0).unwrap(); // 09:30 JST
        let outside = Utc.with_ymd_and_hms(2026, 6, 1, 1, 30, 0).unwrap(); // 10:30 JST
        assert!(r.hits(&e, inside));
        assert!(!r.hits(&e, outside));
    }

    #[test]
    fn compile_reports_every_problem() {
        let errs = CompiledRule::compile(
            "r",
            &spec("match: {paths: ['/abs']}\ntimeWindow: {start: '06:00', end: '18:00', timeZone: Mars/Olympus}\nthreshold: {count: 5, window: 48h}"),
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("must not start with '/'"));
        assert!(errs[1].contains("Mars/Olympus"));
        assert!(errs[2].contains("at most 24h"));
        let errs =
            CompiledRule::compile("r", &spec("unexpectedIdentity: {allowed: [{}]}")).unwrap_err();
        assert!(errs[0].contains("at least one field"));
    }
}
