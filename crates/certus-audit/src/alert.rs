//! The alert value delivered to sinks (Kubernetes Event, webhook) and shown in status.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::entry::AuditEntry;

/// Longest request path copied into an alert.
pub const MAX_PATH_CHARS: usize = 160;
/// Longest summary.
pub const MAX_SUMMARY_CHARS: usize = 280;

/// One alert raised by an `AuditAlertRule`. Secret-free by construction: it holds the
/// operation, path, mount type, display name, client address, outcome category and
/// count; never request or response data, never an error text, never a token or
/// accessor HMAC.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Always `AuditAlert` (lets a webhook receiver tell payloads apart).
    pub kind: &'static str,
    /// Name of the `AuditAlertRule`.
    pub rule: String,
    /// `Critical`, `Warning` or `Info`.
    pub severity: &'static str,
    /// The rule's description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Time of the entry that raised the alert (the rule's evaluation time).
    pub time: DateTime<Utc>,
    /// Operation of that entry.
    pub operation: String,
    /// Request path of that entry (at most [`MAX_PATH_CHARS`] characters).
    pub path: String,
    /// Mount type of that entry.
    pub mount_type: String,
    /// Display name of the identity, or `anonymous`.
    pub identity: String,
    /// Client address as Vault recorded it.
    pub remote_address: String,
    /// `success`, `permission denied` or `error`.
    pub outcome: &'static str,
    /// Hits that raised the alert: 1 without a threshold, else the hits in the window.
    pub count: u32,
    /// The threshold window, e.g. `5m`, when the rule has a threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The threshold group (display name or client address) when grouped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// One line for humans (Events, status): see [`Alert::summary`].
    pub summary: String,
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// What the engine knows when a rule fires.
pub(crate) struct Firing<'r> {
    pub rule: &'r str,
    pub severity: &'static str,
    pub description: Option<&'r str>,
    pub time: DateTime<Utc>,
    pub count: u32,
    pub window: Option<&'r str>,
    pub group: Option<String>,
}

impl Alert {
    pub(crate) fn new(f: Firing<'_>, e: &AuditEntry<'_>) -> Alert {
        let path = truncate(e.path(), MAX_PATH_CHARS);
        let identity = truncate(e.display_name_or_anonymous(), 128);
        let remote = truncate(e.remote_address(), 64);
        let outcome = e.outcome().as_str();
        let op = truncate(e.operation(), 32);
        let from = if remote.is_empty() {
            String::new()
        } else {
            format!(" from {remote}")
        };
        let what = format!("{op} {path} by {identity}{from} ({outcome})");
        let summary = match (f.window, &f.group) {
            (Some(w), Some(g)) => format!("{} hits in {w} for {g}; last: {what}", f.count),
            (Some(w), None) => format!("{} hits in {w}; last: {what}", f.count),
            _ => what,
        };
        Alert {
            kind: "AuditAlert",
            rule: f.rule.to_string(),
            severity: f.severity,
            description: f.description.map(|d| truncate(d, 1024)),
            time: f.time,
            operation: op,
            path,
            mount_type: truncate(e.mount_type(), 64),
            identity,
            remote_address: remote,
            outcome,
            count: f.count,
            window: f.window.map(str::to_string),
            group: f.group.map(|g| truncate(&g, 128)),
            summary: truncate(&summary, MAX_SUMMARY_CHARS),
        }
    }

    /// The Kubernetes Event reason for alerts: `AuditAlert`.
    pub const EVENT_REASON: &'static str = "AuditAlert";

    /// The Event note: `[severity] summary`.
    pub fn event_note(&self) -> String {
        format!("[{}] {}", self.severity, self.summary)
    }
}
