//! TTL normalization: specs say `1h`, `15m`; Vault answers with integer seconds (or, for a
//! few fields, Go duration strings such as `1h0m0s`). Everything is compared as seconds.

use serde_json::Value;

use crate::object::ConfigError;

/// Parses a spec duration into whole seconds; the error names the field.
pub fn spec_seconds(field: &str, s: &str) -> Result<u64, ConfigError> {
    let d = certus_api::parse_duration(s).map_err(|e| ConfigError::new(field, e))?;
    if d.subsec_millis() != 0 {
        return Err(ConfigError::new(
            field,
            format!("{s:?}: Vault TTLs are whole seconds"),
        ));
    }
    Ok(d.as_secs())
}

/// Parses an optional spec duration.
pub fn opt_seconds(field: &str, s: Option<&String>) -> Result<Option<u64>, ConfigError> {
    s.map(|s| spec_seconds(field, s)).transpose()
}

/// Reads a TTL as Vault returns it: an integer, a numeric string, or a Go duration string
/// (`1h0m0s`, `90s`, `0s`). `null`/absent counts as 0.
pub fn live_seconds(v: Option<&Value>) -> Option<u64> {
    match v {
        None | Some(Value::Null) => Some(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                return Some(0);
            }
            if let Ok(n) = s.parse::<u64>() {
                return Some(n);
            }
            certus_api::parse_duration(s).ok().map(|d| d.as_secs())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_and_live_forms_agree() {
        assert_eq!(spec_seconds("f", "1h").unwrap(), 3600);
        assert_eq!(spec_seconds("f", "15m").unwrap(), 900);
        assert_eq!(spec_seconds("f", "24h").unwrap(), 86400);
        assert_eq!(live_seconds(Some(&json!(3600))), Some(3600));
        assert_eq!(live_seconds(Some(&json!("3600"))), Some(3600));
        assert_eq!(live_seconds(Some(&json!("1h0m0s"))), Some(3600));
        assert_eq!(live_seconds(Some(&json!("0s"))), Some(0));
        assert_eq!(live_seconds(None), Some(0));
        assert_eq!(live_seconds(Some(&json!([1]))), None);
    }

    #[test]
    fn errors_name_the_field() {
        let e = spec_seconds("spec.kubernetes.tokenTTL", "15x").unwrap_err();
        assert!(
            e.to_string().starts_with("spec.kubernetes.tokenTTL: "),
            "{e}"
        );
        assert!(spec_seconds("f", "1500ms").is_err());
    }
}
