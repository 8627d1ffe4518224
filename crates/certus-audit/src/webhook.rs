//! Webhook delivery of alerts: JSON POST, retries with exponential backoff.
//!
//! The URL and headers come from a Kubernetes Secret (read by the operator) and are
//! treated as secrets: the URL is never logged (only its host), headers are never
//! logged, and `Debug` redacts both.

use std::collections::BTreeMap;
use std::time::Duration;

use certus_api::AuditWebhook;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};

use crate::alert::Alert;

/// Secret key holding the webhook URL.
pub const URL_KEY: &str = "url";
/// Prefix of Secret keys that become HTTP headers (`header.Authorization`).
pub const HEADER_KEY_PREFIX: &str = "header.";
/// Default timeout of one attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default attempts per alert.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A resolved webhook: where to POST and with which headers.
#[derive(Clone)]
pub struct WebhookTarget {
    url: Url,
    headers: HeaderMap,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Attempts per alert (at least 1).
    pub max_attempts: u32,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("host", &self.host())
            .field("headers", &self.headers.len())
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl WebhookTarget {
    /// A target from a URL and headers.
    pub fn new(url: &str, headers: &[(&str, &str)]) -> Result<Self, String> {
        let url = Url::parse(url).map_err(|e| format!("webhook url is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("webhook url must start with https:// (or http://)".into());
        }
        if url.host_str().is_none() {
            return Err("webhook url has no host".into());
        }
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{k:?} is not a valid HTTP header name"))?;
            let mut value = HeaderValue::from_str(v)
                .map_err(|_| format!("the value of header {k:?} is not a valid header value"))?;
            value.set_sensitive(true);
            map.append(name, value);
        }
        Ok(WebhookTarget {
            url,
            headers: map,
            timeout: DEFAULT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        })
    }

    /// Builds the target from a Secret's `data` (key `url`, keys `header.<Name>`) and the
    /// rule's `spec.webhook` (timeout, attempts). Errors never contain the values.
    pub fn from_secret_data(
        data: &BTreeMap<String, Vec<u8>>,
        spec: &AuditWebhook,
    ) -> Result<Self, String> {
        let text = |k: &str, v: &[u8]| -> Result<String, String> {
            std::str::from_utf8(v)
                .map(|s| s.trim().to_string())
                .map_err(|_| format!("Secret key {k:?} is not UTF-8"))
        };
        let url = data
            .get(URL_KEY)
            .ok_or_else(|| format!("the Secret has no key {URL_KEY:?}"))?;
        let url = text(URL_KEY, url)?;
        let mut headers = Vec::new();
        for (k, v) in data {
            if let Some(name) = k.strip_prefix(HEADER_KEY_PREFIX) {
                headers.push((name.to_string(), text(k, v)?));
            }
        }
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut t = WebhookTarget::new(&url, &refs)?;
        if let Some(d) = &spec.timeout {
            t.timeout =
                certus_api::parse_duration(d).map_err(|e| format!("webhook.timeout: {e}"))?;
        }
        if let Some(n) = spec.max_attempts {
            t.max_attempts = n.max(1);
        }
        Ok(t)
    }

    /// The URL's host (safe to log).
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("")
    }
}

/// What the operator resolved for a rule's `spec.webhook`.
#[derive(Debug, Clone, Default)]
pub enum WebhookResolution {
    /// The rule has no webhook.
    #[default]
    None,
    /// The webhook is ready.
    Target(std::sync::Arc<WebhookTarget>),
    /// The webhook is configured but unusable (e.g. the Secret is missing). The rule
    /// still raises Events and metrics; `Ready=False` with this reason and message.
    Unavailable {
        /// CamelCase reason, e.g. `SecretNotFound`, `InvalidSpec`.
        reason: String,
        /// Human message, without secret values.
        message: String,
    },
}

/// Backoff schedule between attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Wait after the first failed attempt.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1-based): `initial × 2^(attempt-1)`,
    /// capped at `max`, with ±20 % jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20));
        let base = exp.min(self.max);
        let jitter: f64 = rand::random_range(0.8..1.2);
        base.mul_f64(jitter)
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx answer, after this many attempts.
    Delivered {
        /// Attempts used.
        attempts: u32,
    },
    /// Gave up.
    Failed {
        /// Attempts used.
        attempts: u32,
        /// Last error, without URL or headers.
        last_error: String,
    },
}

/// Builds the HTTP client used for webhooks (rustls with the ring provider and the
/// platform's root certificates).
pub fn default_client() -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        .tls_backend_rustls()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the webhook HTTP client: {}", e.without_url()))
}

fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// POSTs `alert` as JSON to `target`, retrying server errors, 429/408 and connection
/// errors with `backoff`. Returns after success or the last attempt.
pub async fn deliver(
    client: &reqwest::Client,
    target: &WebhookTarget,
    alert: &Alert,
    backoff: Backoff,
) -> Delivery {
    let body = match serde_json::to_vec(alert) {
        Ok(b) => b,
        Err(e) => {
            return Delivery::Failed {
                attempts: 0,
                last_error: format!("cannot encode the alert: {e}"),
            }
        }
    };
    let max = target.max_attempts.max(1);
    let mut last_error = String::new();
    for attempt in 1..=max {
        let res = client
            .post(target.url.clone())
            .headers(target.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(target.timeout)
            .body(body.clone())
            .send()
            .await;
        let retry = match res {
            Ok(resp) if resp.status().is_success() => {
                return Delivery::Delivered { attempts: attempt }
            }
            Ok(resp) => {
                last_error = format!("HTTP {}", resp.status());
                retryable(resp.status())
            }
            Err(e) => {
                // Without the URL: it may carry a token (e.g. chat webhooks).
                last_error = e.without_url().to_string();
                true
            }
        };
        if !retry {
            return Delivery::Failed {
                attempts: attempt,
                last_error,
            };
        }
        if attempt < max {
            tracing::debug!(rule = %alert.rule, host = target.host(), attempt, error = %last_error, "webhook attempt failed; retrying");
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
    }
    Delivery::Failed {
        attempts: max,
        last_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn spec() -> AuditWebhook {
        serde_yaml::from_str(
            "{secretRef: {name: hook, namespace: ops}, timeout: 3s, maxAttempts: 2}",
        )
        .unwrap()
    }

    #[test]
    fn target_from_secret() {
        let t = WebhookTarget::from_secret_data(
            &data(&[
                ("url", "https://hooks.example.com/T0/B0/secret-token\n"),
                ("header.Authorization", "Bearer s3cr3t"),
                ("header.X-Team", "security"),
                ("unrelated", "x"),
            ]),
            &spec(),
        )
        .unwrap();
        assert_eq!(t.host(), "hooks.example.com");
        assert_eq!(t.headers.len(), 2);
        assert_eq!(t.timeout, Duration::from_secs(3));
        assert_eq!(t.max_attempts, 2);
        let dbg = format!("{t:?}");
        assert!(
            !dbg.contains("secret-token") && !dbg.contains("s3cr3t"),
            "{dbg}"
        );
    }

    #[test]
    fn target_errors_do_not_leak_values() {
        let e = WebhookTarget::from_secret_data(&data(&[("uri", "x")]), &spec()).unwrap_err();
        assert!(e.contains("no key \"url\""), "{e}");
        let e = WebhookTarget::from_secret_data(&data(&[("url", "ftp://h/s3cr3t")]), &spec())
            .unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = WebhookTarget::from_secret_data(
            &data(&[("url", "https://h/"), ("header.Bad Name", "v")]),
            &spec(),
        )
        .unwrap_err();
        assert!(e.contains("header name"), "{e}");
    }

    #[test]
    fn backoff_grows_exponentially_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let d1 = b.delay(1).as_millis();
        let d3 = b.delay(3).as_millis();
        let d10 = b.delay(10).as_millis();
        assert!((80..=120).contains(&d1), "{d1}");
        assert!((320..=480).contains(&d3), "{d3}");
        assert!((800..=1200).contains(&d10), "{d10}");
    }
}
