use std::fmt;

/// How a Vault error should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The object does not exist (HTTP 404).
    NotFound,
    /// The token lacks a capability, or login failed (HTTP 401/403).
    PermissionDenied,
    /// Vault rejected the request as invalid (HTTP 400, 405, 409, 422): fix the spec.
    InvalidRequest,
    /// Vault is unreachable, sealed, overloaded or failed internally: retry with backoff.
    Transient,
    /// Our own configuration is unusable (bad address, CA, missing credentials).
    Config,
}

impl ErrorClass {
    /// A static label for metrics and condition reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::NotFound => "not_found",
            ErrorClass::PermissionDenied => "permission_denied",
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::Transient => "transient",
            ErrorClass::Config => "config",
        }
    }

    /// Classifies an HTTP status code returned by Vault.
    pub fn from_status(code: u16) -> ErrorClass {
        match code {
            404 => ErrorClass::NotFound,
            401 | 403 => ErrorClass::PermissionDenied,
            400 | 405 | 409 | 413 | 422 => ErrorClass::InvalidRequest,
            _ => ErrorClass::Transient,
        }
    }
}

/// An error from Vault or from reaching it. The message holds Vault's own error text and
/// the operation (method + path), never request bodies or secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultError {
    pub class: ErrorClass,
    /// E.g. `PUT sys/policies/acl/app`.
    pub operation: String,
    /// HTTP status, when Vault answered.
    pub status: Option<u16>,
    pub message: String,
}

impl VaultError {
    pub fn new(
        class: ErrorClass,
        operation: impl Into<String>,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> Self {
        VaultError {
            class,
            operation: operation.into(),
            status,
            message: tidy(&message.into()),
        }
    }
    pub fn config(message: impl Into<String>) -> Self {
        VaultError::new(ErrorClass::Config, "configure", None, message)
    }
    pub fn is_not_found(&self) -> bool {
        self.class == ErrorClass::NotFound
    }
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    pub(crate) fn from_vaultrs(operation: &str, e: vaultrs::error::ClientError) -> Self {
        use vaultrs::error::ClientError as C;
        match e {
            C::APIError { code, errors } => {
                let msg = if errors.is_empty() {
                    format!("HTTP {code}")
                } else {
                    errors.join("; ")
                };
                VaultError::new(ErrorClass::from_status(code), operation, Some(code), msg)
            }
            C::RestClientError { source } => from_rustify(operation, source),
            other => VaultError::new(
                ErrorClass::Transient,
                operation,
                None,
                sanitize(&other.to_string()),
            ),
        }
    }

    pub(crate) fn from_reqwest(operation: &str, e: reqwest::Error) -> Self {
        // reqwest's Display includes the URL, which carries no secrets (tokens travel in
        // headers), but strip any query string to be safe.
        let class = if e.is_builder() {
            ErrorClass::Config
        } else {
            ErrorClass::Transient
        };
        let status = e.status().map(|s| s.as_u16());
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        VaultError::new(class, operation, status, sanitize(&msg))
    }
}

fn from_rustify(operation: &str, e: rustify_error::ClientError) -> VaultError {
    use rustify_error::ClientError as R;
    match e {
        R::ServerResponseError { code, content } => {
            let msg = content
                .as_deref()
                .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
                .and_then(|v| v.get("errors").cloned())
                .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                .map(|v| v.join("; "))
                .unwrap_or_else(|| format!("HTTP {code}"));
            VaultError::new(ErrorClass::from_status(code), operation, Some(code), msg)
        }
        other => VaultError::new(
            ErrorClass::Transient,
            operation,
            None,
            sanitize(&other.to_string()),
        ),
    }
}

mod rustify_error {
    pub use rustify::errors::ClientError;
}

/// Vault wraps errors as "1 error occurred:\n\t* permission denied\n\n": keep one line.
fn tidy(msg: &str) -> String {
    let mut parts: Vec<&str> = vec![];
    for line in msg.lines() {
        let line = line.trim().trim_start_matches("* ").trim();
        if line.is_empty() || (line.ends_with("occurred:") && line.contains("error")) {
            continue;
        }
        parts.push(line);
    }
    if parts.is_empty() {
        msg.trim().to_string()
    } else {
        parts.join("; ")
    }
}

fn sanitize(s: &str) -> String {
    // Drop query strings from any URL in the text.
    s.split_whitespace()
        .map(|w| {
            if w.contains("://") {
                w.split('?').next().unwrap_or(w)
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for VaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(code) => write!(
                f,
                "{} failed (HTTP {code}, {}): {}",
                self.operation,
                self.class.as_str(),
                self.message
            ),
            None => write!(
                f,
                "{} failed ({}): {}",
                self.operation,
                self.class.as_str(),
                self.message
            ),
        }
    }
}

impl std::error::Error for VaultError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_codes() {
        assert_eq!(ErrorClass::from_status(404), ErrorClass::NotFound);
        assert_eq!(ErrorClass::from_status(403), ErrorClass::PermissionDenied);
        assert_eq!(ErrorClass::from_status(400), ErrorClass::InvalidRequest);
        assert_eq!(ErrorClass::from_status(503), ErrorClass::Transient);
        assert_eq!(ErrorClass::from_status(500), ErrorClass::Transient);
        assert_eq!(ErrorClass::from_status(429), ErrorClass::Transient);
    }

    #[test]
    fn api_errors_keep_vault_message() {
        let e = VaultError::from_vaultrs(
            "GET sys/x",
            vaultrs::error::ClientError::APIError {
                code: 403,
                errors: vec!["permission denied".into()],
            },
        );
        assert_eq!(e.class, ErrorClass::PermissionDenied);
        assert_eq!(
            e.to_string(),
            "GET sys/x failed (HTTP 403, permission_denied): permission denied"
        );
    }

    #[test]
    fn vault_multi_error_text_becomes_one_line() {
        assert_eq!(
            tidy("1 error occurred:\n\t* permission denied\n\n"),
            "permission denied"
        );
        assert_eq!(tidy("2 errors occurred:\n\t* a\n\t* b\n"), "a; b");
        assert_eq!(tidy("plain"), "plain");
    }

    #[test]
    fn sanitize_strips_queries() {
        assert_eq!(
            sanitize("error for url http://h/v1/x?token=abc here"),
            "error for url http://h/v1/x here"
        );
    }
}
