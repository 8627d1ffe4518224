//! Tiny templates for projected Secret keys: `{{ field }}` and `{{ field | filter }}`.
//!
//! Fields come from the Vault response (`username`, `password`, `certificate`, …).
//! Filters: `urlquery` (percent-encode for URLs), `base64`, `json` (JSON-encode), `trim`.
//! Errors name the template and the missing field, never a value.

use std::collections::BTreeMap;

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed {{{{ at byte {0}")]
    Unclosed(usize),
    #[error("unknown field {field:?} (available: {available})")]
    UnknownField { field: String, available: String },
    #[error("unknown filter {0:?} (use urlquery, base64, json or trim)")]
    UnknownFilter(String),
    #[error("empty {{{{ }}}}")]
    Empty,
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Renders `template` with `fields`.
pub fn render(template: &str, fields: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(offset + start))?;
        let expr = after[..end].trim();
        if expr.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = expr.split('|').map(str::trim);
        let field = parts.next().unwrap_or_default().trim_start_matches('.');
        let mut value = fields
            .get(field)
            .ok_or_else(|| TemplateError::UnknownField {
                field: field.to_string(),
                available: fields.keys().cloned().collect::<Vec<_>>().join(", "),
            })?
            .clone();
        for filter in parts {
            value = match filter {
                "urlquery" => percent_encode(&value),
                "base64" => base64(value.as_bytes()),
                "json" => serde_json::to_string(&value).unwrap_or_default(),
                "trim" => value.trim().to_string(),
                other => return Err(TemplateError::UnknownFilter(other.to_string())),
            };
        }
        out.push_str(&value);
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template's syntax and filters without values (fields are checked at render).
pub fn check(template: &str) -> Result<(), TemplateError> {
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(offset + start))?;
        let expr = after[..end].trim();
        if expr.is_empty() {
            return Err(TemplateError::Empty);
        }
        for filter in expr.split('|').skip(1).map(str::trim) {
            if !matches!(filter, "urlquery" | "base64" | "json" | "trim") {
                return Err(TemplateError::UnknownFilter(filter.to_string()));
            }
        }
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    Ok(())
}

/// Flattens a Vault response's `data` object into template fields: strings as they are,
/// other values as JSON.
pub fn fields_of(data: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(obj) = data.as_object() {
        for (k, v) in obj {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            out.insert(k.clone(), s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> BTreeMap<String, String> {
        [("username", "v-app-x"), ("password", "p@ss:w/rd")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_fields_and_filters() {
        assert_eq!(render("{{ username }}", &fields()).unwrap(), "v-app-x");
        assert_eq!(
            render(
                "postgresql://{{ username | urlquery }}:{{ .password | urlquery }}@db:5432/app",
                &fields()
            )
            .unwrap(),
            "postgresql://v-app-x:p%40ss%3Aw%2Frd@db:5432/app"
        );
        assert_eq!(
            render("{{username|base64}}", &fields()).unwrap(),
            "di1hcHAteA=="
        );
        assert_eq!(
            render("{{ password | json }}", &fields()).unwrap(),
            "\"p@ss:w/rd\""
        );
        assert_eq!(render("plain", &fields()).unwrap(), "plain");
    }

    #[test]
    fn errors_name_the_problem_without_values() {
        let e = render("{{ user }}", &fields()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown field \"user\" (available: password, username)"
        );
        assert!(!e.to_string().contains("p@ss"));
        assert_eq!(
            render("{{ username | upper }}", &fields()).unwrap_err(),
            TemplateError::UnknownFilter("upper".into())
        );
        assert_eq!(
            render("a {{ username", &fields()).unwrap_err(),
            TemplateError::Unclosed(2)
        );
        assert!(check("{{ x | urlquery }}").is_ok());
        assert!(check("{{ x | nope }}").is_err());
        assert!(check("{{ }}").is_err());
    }

    #[test]
    fn base64_matches_reference_vectors() {
        for (input, expect) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expect);
        }
    }

    #[test]
    fn fields_of_flattens() {
        let f = fields_of(&serde_json::json!({"a": "x", "n": 3, "l": ["p", "q"], "z": null}));
        assert_eq!(f["a"], "x");
        assert_eq!(f["n"], "3");
        assert_eq!(f["l"], "[\"p\",\"q\"]");
        assert!(!f.contains_key("z"));
    }
}
