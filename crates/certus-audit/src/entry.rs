//! The audit entry model: one JSON line of Vault's / OpenBao's audit log.
//!
//! Parsing borrows from the line wherever the JSON string has no escapes, and reads only
//! the fields the operator uses: request and response bodies (`request.data`,
//! `response.data`, `response.auth`, ...) are skipped by the deserializer and never
//! materialized, so they cannot be logged or exported by accident. Unknown fields are
//! ignored, so newer Vault versions parse.
//!
//! Values Vault HMACs (`auth.client_token`, `auth.accessor`, most of `data`) stay HMACs:
//! this crate never tries to reverse them, never exports them as metric labels and never
//! puts them in alerts.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// Whether the entry was written before Vault handled the request or with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// `"type": "request"`.
    Request,
    /// `"type": "response"`.
    Response,
    /// Any other `type` (kept so a future Vault does not make lines malformed).
    Other,
}

/// One audit entry, borrowing from the line it was parsed from.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditEntry<'a> {
    /// `request`, `response`, ...
    #[serde(rename = "type", borrow, default)]
    pub entry_type: Cow<'a, str>,
    /// When Vault wrote the entry (RFC 3339).
    #[serde(default)]
    pub time: Option<DateTime<Utc>>,
    /// The token that made the request. Absent or mostly empty for unauthenticated
    /// requests such as logins.
    #[serde(borrow, default)]
    pub auth: Option<Auth<'a>>,
    /// The request, without its body.
    #[serde(borrow, default)]
    pub request: Option<Request<'a>>,
    /// The error Vault returned, e.g. `permission denied`, `invalid credentials`. Only
    /// used to classify the outcome; never copied into alerts.
    #[serde(borrow, default)]
    pub error: Option<Cow<'a, str>>,
    /// The response, without its body (response entries only).
    #[serde(borrow, default)]
    pub response: Option<Response<'a>>,
}

/// The `auth` object of an entry.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Auth<'a> {
    /// HMAC of the client token (`hmac-sha256:...`). Never reversed, never exported.
    #[serde(borrow, default)]
    pub client_token: Option<Cow<'a, str>>,
    /// HMAC of the token accessor. Never reversed, never exported.
    #[serde(borrow, default)]
    pub accessor: Option<Cow<'a, str>>,
    /// The token's display name, e.g. `token`, `userpass-alice`,
    /// `kubernetes-certus-tap-certus-ask`.
    #[serde(borrow, default)]
    pub display_name: Option<Cow<'a, str>>,
    /// Identity entity id (absent for the root token and unauthenticated requests).
    #[serde(borrow, default)]
    pub entity_id: Option<Cow<'a, str>>,
    /// All policies of the token (token and identity policies).
    #[serde(borrow, default)]
    pub policies: Vec<Cow<'a, str>>,
    /// Auth metadata; Kubernetes auth records the ServiceAccount here.
    #[serde(borrow, default)]
    pub metadata: Option<AuthMetadata<'a>>,
    /// The ACL decision, when Vault evaluated policies.
    #[serde(default)]
    pub policy_results: Option<PolicyResults>,
    /// `service`, `batch`, `default`, ...
    #[serde(borrow, default)]
    pub token_type: Option<Cow<'a, str>>,
}

/// The fields of `auth.metadata` the operator uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthMetadata<'a> {
    /// Kubernetes auth: ServiceAccount name.
    #[serde(borrow, default)]
    pub service_account_name: Option<Cow<'a, str>>,
    /// Kubernetes auth: ServiceAccount namespace.
    #[serde(borrow, default)]
    pub service_account_namespace: Option<Cow<'a, str>>,
    /// Kubernetes / JWT / AppRole auth: the role logged in with.
    #[serde(borrow, default)]
    pub role: Option<Cow<'a, str>>,
    /// Userpass / LDAP auth: the user name.
    #[serde(borrow, default)]
    pub username: Option<Cow<'a, str>>,
}

/// `auth.policy_results`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct PolicyResults {
    /// Whether the ACL allowed the request.
    #[serde(default)]
    pub allowed: Option<bool>,
}

/// The `request` object of an entry (the body `data` is skipped).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Request<'a> {
    /// Request id, shared by the request and the response entry.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// `read`, `list`, `create`, `update`, `patch`, `delete`, ...
    #[serde(borrow, default)]
    pub operation: Cow<'a, str>,
    /// The API path without `/v1/`, e.g. `secret/data/prod/db`.
    #[serde(borrow, default)]
    pub path: Cow<'a, str>,
    /// Type of the mount that served the request, e.g. `kv`, `userpass`, `system`.
    #[serde(borrow, default)]
    pub mount_type: Option<Cow<'a, str>>,
    /// Mount path with a trailing slash, e.g. `secret/`, `auth/userpass/`.
    #[serde(borrow, default)]
    pub mount_point: Option<Cow<'a, str>>,
    /// Client address as Vault saw it (or from `X-Forwarded-For` when configured).
    #[serde(borrow, default)]
    pub remote_address: Option<Cow<'a, str>>,
    /// Vault Enterprise / OpenBao namespace of the request.
    #[serde(borrow, default)]
    pub namespace: Option<Namespace<'a>>,
    /// HMAC of the token the request carried. Never reversed, never exported.
    #[serde(borrow, default)]
    pub client_token: Option<Cow<'a, str>>,
}

/// `request.namespace`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Namespace<'a> {
    /// Namespace id (`root` for the root namespace).
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// Namespace path (empty for the root namespace).
    #[serde(borrow, default)]
    pub path: Option<Cow<'a, str>>,
}

/// The `response` object of an entry (the body is skipped).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Response<'a> {
    /// Type of the mount that answered.
    #[serde(borrow, default)]
    pub mount_type: Option<Cow<'a, str>>,
    /// Mount path that answered.
    #[serde(borrow, default)]
    pub mount_point: Option<Cow<'a, str>>,
}

/// Why a line is not an audit entry.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The line holds no JSON object.
    #[error("line holds no JSON object")]
    NotJson,
    /// The JSON does not have the shape of an audit entry. The message names the
    /// position, never the content.
    #[error("invalid audit entry: {0}")]
    Invalid(String),
}

/// Parses one audit line (with or without its trailing newline).
///
/// Returns `Ok(None)` for a blank line. A device `prefix` (text before the JSON object)
/// is tolerated. Errors never contain the line's content.
pub fn parse_line(line: &[u8]) -> Result<Option<AuditEntry<'_>>, ParseError> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let json = if line[0] == b'{' {
        line
    } else {
        match line.iter().position(|&b| b == b'{') {
            Some(i) => &line[i..],
            None => return Err(ParseError::NotJson),
        }
    };
    serde_json::from_slice::<AuditEntry<'_>>(json)
        .map(Some)
        .map_err(|e| {
            ParseError::Invalid(format!(
                "{} at line {} column {}",
                classify(&e),
                e.line(),
                e.column()
            ))
        })
}

fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected field type",
        Category::Eof => "truncated JSON",
    }
}

/// The outcome of a request, as far as the audit entry tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No error.
    Success,
    /// Refused by policy or because the token was invalid.
    PermissionDenied,
    /// Any other error (failed login, invalid request, backend error).
    Error,
}

impl Outcome {
    /// Lower-case name used in alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::PermissionDenied => "permission denied",
            Outcome::Error => "error",
        }
    }
}

/// Display name used for entries without an authenticated identity.
pub const ANONYMOUS: &str = "anonymous";

impl<'a> AuditEntry<'a> {
    /// Request or response.
    pub fn kind(&self) -> EntryKind {
        match &*self.entry_type {
            "request" => EntryKind::Request,
            "response" => EntryKind::Response,
            _ => EntryKind::Other,
        }
    }

    /// The request path (empty when absent).
    pub fn path(&self) -> &str {
        self.request.as_ref().map_or("", |r| &r.path)
    }

    /// The operation (empty when absent).
    pub fn operation(&self) -> &str {
        self.request.as_ref().map_or("", |r| &r.operation)
    }

    /// The mount type of the request (falls back to the response's).
    pub fn mount_type(&self) -> &str {
        self.request
            .as_ref()
            .and_then(|r| r.mount_type.as_deref())
            .or_else(|| self.response.as_ref().and_then(|r| r.mount_type.as_deref()))
            .unwrap_or("")
    }

    /// The mount point of the request (falls back to the response's), e.g. `secret/`.
    pub fn mount_point(&self) -> &str {
        self.request
            .as_ref()
            .and_then(|r| r.mount_point.as_deref())
            .or_else(|| {
                self.response
                    .as_ref()
                    .and_then(|r| r.mount_point.as_deref())
            })
            .unwrap_or("")
    }

    /// The client address (empty when absent).
    pub fn remote_address(&self) -> &str {
        self.request
            .as_ref()
            .and_then(|r| r.remote_address.as_deref())
            .unwrap_or("")
    }

    /// The token's display name, or `None` for unauthenticated requests.
    pub fn display_name(&self) -> Option<&str> {
        self.auth
            .as_ref()
            .and_then(|a| a.display_name.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// The display name, or [`ANONYMOUS`].
    pub fn display_name_or_anonymous(&self) -> &str {
        self.display_name().unwrap_or(ANONYMOUS)
    }

    /// The identity entity id, when the token has one.
    pub fn entity_id(&self) -> Option<&str> {
        self.auth
            .as_ref()
            .and_then(|a| a.entity_id.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// A stable identity key: the entity id, else the display name, else [`ANONYMOUS`].
    pub fn identity_key(&self) -> &str {
        self.entity_id()
            .or_else(|| self.display_name())
            .unwrap_or(ANONYMOUS)
    }

    /// The token's policies.
    pub fn policies(&self) -> &[Cow<'a, str>] {
        self.auth.as_ref().map_or(&[], |a| a.policies.as_slice())
    }

    /// Kubernetes auth: `(namespace, name)` of the ServiceAccount that logged in.
    pub fn service_account(&self) -> (Option<&str>, Option<&str>) {
        let md = self.auth.as_ref().and_then(|a| a.metadata.as_ref());
        (
            md.and_then(|m| m.service_account_namespace.as_deref()),
            md.and_then(|m| m.service_account_name.as_deref()),
        )
    }

    /// Whether Vault recorded an error.
    pub fn has_error(&self) -> bool {
        self.error.as_deref().is_some_and(|e| !e.is_empty())
    }

    /// Whether the request was refused by policy (ACL said no) or for an invalid token.
    pub fn is_permission_denied(&self) -> bool {
        let acl_denied = self
            .auth
            .as_ref()
            .and_then(|a| a.policy_results)
            .and_then(|p| p.allowed)
            == Some(false);
        acl_denied
            || self
                .error
                .as_deref()
                .is_some_and(|e| e.contains("permission denied"))
    }

    /// The outcome of the request.
    pub fn outcome(&self) -> Outcome {
        if self.is_permission_denied() {
            Outcome::PermissionDenied
        } else if self.has_error() {
            Outcome::Error
        } else {
            Outcome::Success
        }
    }

    /// Whether the request is a login (`auth/<mount>/login` or below).
    pub fn is_login(&self) -> bool {
        let p = self.path();
        p.starts_with("auth/")
            && p.split('/')
                .skip(2)
                .any(|seg| seg == "login" || seg.starts_with("login"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real response line from OpenBao 2.7 (failed userpass login), abridged only by
    /// re-indentation.
    const FAILED_LOGIN: &str = r#"{"time":"2026-12-04T20:27:14.019896653Z","type":"response","auth":{"token_type":"default"},"request":{"id":"74b22274-bca9-1a78-a022-c43354229e22","operation":"update","mount_point":"auth/upexp4653/","mount_type":"userpass","mount_accessor":"auth_userpass_27f929d2","mount_running_version":"v2.7.2+builtin.bao","mount_class":"auth","namespace":{"id":"root"},"path":"auth/upexp4653/login/alice","data":{"password":"hmac-sha256:c6c4d48936a72bd26a6154fed7bf747027d6d181bf8ee54f6fae55a08a5ebf60"},"remote_address":"127.0.0.1","remote_port":56584},"response":{"mount_point":"auth/upexp4653/","mount_type":"userpass","mount_accessor":"auth_userpass_27f929d2","mount_running_plugin_version":"v2.7.2+builtin.bao","mount_class":"auth","data":{"error":"hmac-sha256:f6fbbdf0323a7ebe8ef776ac267bf29f28124d6a8e79014c760bd19df2af4981"}},"error":"invalid credentials"}"#;

    /// A real permission-denied KV read by a userpass token (OpenBao 2.7).
    const DENIED_READ: &str = r#"{"time":"2026-12-04T20:28:01.5Z","type":"response","auth":{"client_token":"hmac-sha256:4afb","accessor":"hmac-sha256:44f4","display_name":"upexp4653-alice","policies":["default"],"token_policies":["default"],"policy_results":{"allowed":false},"metadata":{"username":"alice"},"entity_id":"d550bf40-e7c9-6128-ddd8-8d42f5e2ba56","token_type":"service","token_ttl":2764800,"token_issue_time":"2026-12-04T20:27:14Z"},"request":{"id":"x","operation":"read","mount_point":"secret/","mount_type":"kv","namespace":{"id":"root"},"path":"secret/data/prod/x","remote_address":"127.0.0.1","remote_port":56600},"response":{"mount_point":"secret/","mount_type":"kv","data":{"error":"hmac-sha256:8a7b"}},"error":"1 error occurred:\n\t* permission denied\n\n"}"#;

    #[test]
    fn parses_a_real_failed_login_and_borrows() {
        let e = parse_line(FAILED_LOGIN.as_bytes()).unwrap().unwrap();
        assert_eq!(e.kind(), EntryKind::Response);
        assert_eq!(e.operation(), "update");
        assert_eq!(e.path(), "auth/upexp4653/login/alice");
        assert_eq!(e.mount_type(), "userpass");
        assert_eq!(e.mount_point(), "auth/upexp4653/");
        assert_eq!(e.remote_address(), "127.0.0.1");
        assert_eq!(e.display_name(), None);
        assert_eq!(e.display_name_or_anonymous(), ANONYMOUS);
        assert!(e.is_login());
        assert_eq!(e.outcome(), Outcome::Error);
        assert!(matches!(e.request.as_ref().unwrap().path, Cow::Borrowed(_)));
        assert_eq!(
            e.time.unwrap().to_rfc3339(),
            "2026-12-04T20:27:14.019896653+00:00"
        );
    }

    #[test]
    fn parses_a_denied_read_with_identity_and_escaped_error() {
        let e = parse_line(DENIED_READ.as_bytes()).unwrap().unwrap();
        assert_eq!(e.display_name(), Some("upexp4653-alice"));
        assert_eq!(e.entity_id(), Some("d550bf40-e7c9-6128-ddd8-8d42f5e2ba56"));
        assert_eq!(e.identity_key(), "d550bf40-e7c9-6128-ddd8-8d42f5e2ba56");
        assert_eq!(e.policies(), ["default"]);
        assert!(e.is_permission_denied());
        assert_eq!(e.outcome(), Outcome::PermissionDenied);
        assert!(!e.is_login());
        // The escaped error string is owned, the rest still borrowed.
        assert!(matches!(e.error, Some(Cow::Owned(_))));
    }

    #[test]
    fn kubernetes_metadata_gives_the_service_account() {
        let line = r#"{"type":"response","time":"2026-01-01T03:00:00Z","auth":{"display_name":"kubernetes-certus-tap-certus-ask","policies":["default","certus-ask"],"metadata":{"role":"certus-ask","service_account_name":"certus-ask","service_account_namespace":"certus-tap","service_account_uid":"u"}},"request":{"operation":"read","path":"certus/data/prod/openai","mount_type":"kv"}}"#;
        let e = parse_line(line.as_bytes()).unwrap().unwrap();
        assert_eq!(
            e.service_account(),
            (Some("certus-tap"), Some("certus-ask"))
        );
        assert_eq!(e.outcome(), Outcome::Success);
        assert_eq!(e.remote_address(), "");
    }

    #[test]
    fn tolerates_unknown_fields_prefixes_and_crlf() {
        let line = b"certus-prefix {\"type\":\"request\",\"new_field\":{\"x\":[1,2]},\"request\":{\"operation\":\"list\",\"path\":\"a/b\"}}\r\n";
        let e = parse_line(line).unwrap().unwrap();
        assert_eq!(e.kind(), EntryKind::Request);
        assert_eq!(e.operation(), "list");
        let e = parse_line(br#"{"type":"future-kind"}"#).unwrap().unwrap();
        assert_eq!(e.kind(), EntryKind::Other);
        assert_eq!(e.path(), "");
    }

    #[test]
    fn blank_and_malformed_lines() {
        assert!(parse_line(b"   \n").unwrap().is_none());
        assert!(matches!(parse_line(b"not json"), Err(ParseError::NotJson)));
        let truncated = &FAILED_LOGIN.as_bytes()[..100];
        let err = parse_line(truncated).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        // The error never echoes content.
        assert!(!err.contains("upexp"), "{err}");
        let wrong_type = br#"{"type":"response","auth":{"policies":"root"}}"#;
        assert!(matches!(
            parse_line(wrong_type),
            Err(ParseError::Invalid(_))
        ));
    }

    #[test]
    fn bodies_are_not_materialized() {
        // `request.data` / `response.data` have no field in the model: a Debug dump of
        // the parsed entry cannot contain them.
        let e = parse_line(FAILED_LOGIN.as_bytes()).unwrap().unwrap();
        let dump = format!("{e:?}");
        assert!(!dump.contains("c6c4d48936"), "{dump}");
        assert!(!dump.contains("f6fbbdf0323a"), "{dump}");
    }
}
