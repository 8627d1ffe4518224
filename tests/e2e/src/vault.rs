//! The Vault/OpenBao the suite checks against: where it is (environment or
//! `hack/openbao-start.sh`), and a small HTTP client that is independent of the
//! operator's own Vault code, so the suite checks Vault through a second pair of eyes.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where Vault is and the token the suite (and the operator, through a Secret) uses.
#[derive(Clone)]
pub struct VaultEnv {
    /// Base URL, e.g. `http://127.0.0.1:18200`.
    pub addr: String,
    /// A token allowed to manage ACL policies (the dev server's root token).
    pub token: String,
    /// PEM CA bundle for an `https` Vault (`VAULT_CACERT` / `BAO_CACERT`), if any.
    pub ca_pem: Option<String>,
    /// Where the values came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for VaultEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultEnv")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("source", &self.source)
            .finish()
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl VaultEnv {
    /// `VAULT_ADDR`/`VAULT_TOKEN`, else `BAO_ADDR`/`BAO_TOKEN`, else starts (or reuses) the
    /// project's OpenBao dev server through `hack/openbao-start.sh` and reads
    /// `.hack/openbao.env`.
    pub fn resolve(workspace_root: &Path) -> Result<VaultEnv> {
        for (addr_var, token_var, ca_var) in [
            ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT"),
            ("BAO_ADDR", "BAO_TOKEN", "BAO_CACERT"),
        ] {
            match (non_empty_env(addr_var), non_empty_env(token_var)) {
                (Some(addr), Some(token)) => {
                    let ca_pem = match non_empty_env(ca_var) {
                        Some(path) => Some(
                            std::fs::read_to_string(crate::user_path(Path::new(&path)))
                                .with_context(|| format!("reading {ca_var}={path}"))?,
                        ),
                        None => None,
                    };
                    return Ok(VaultEnv {
                        addr,
                        token,
                        ca_pem,
                        source: format!("{addr_var}/{token_var}"),
                    });
                }
                (Some(_), None) => bail!(
                    "{addr_var} is set but {token_var} is not: set both, or unset {addr_var} to let the suite start OpenBao through hack/openbao-start.sh"
                ),
                _ => {}
            }
        }
        Self::start_openbao(workspace_root)
    }

    fn start_openbao(root: &Path) -> Result<VaultEnv> {
        let script = root.join("hack/openbao-start.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .current_dir(root)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "{} failed ({}); set VAULT_ADDR/VAULT_TOKEN to use another Vault. Its output:\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                stderr
            );
        }
        eprintln!("{}", stderr.trim_end());
        let env_file = root.join(".hack/openbao.env");
        let text = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading {}", env_file.display()))?;
        let vars = parse_env_file(&text);
        let get = |k: &str| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
                .with_context(|| format!("{} has no {k}", env_file.display()))
        };
        Ok(VaultEnv {
            addr: get("VAULT_ADDR")?,
            token: get("VAULT_TOKEN")?,
            ca_pem: None,
            source: format!("hack/openbao-start.sh ({})", env_file.display()),
        })
    }
}

/// Parses the `export NAME='value'` lines of a POSIX shell env file (as written by
/// `hack/lib.sh`'s `write_env_file`). Comments and other lines are skipped.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("export ")?.trim_start();
            let (name, value) = rest.split_once('=')?;
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            Some((name.to_string(), shell_unquote(value)))
        })
        .collect()
}

/// Removes POSIX shell quoting from one word: `'…'` literal, `"…"` with `\"`/`\\`/`\$`
/// escapes, `\x` outside quotes. `'it'\''s'` becomes `it's`.
fn shell_unquote(word: &str) -> String {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    out.push(c);
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(n @ ('"' | '\\' | '$' | '`')) => out.push(n),
                            Some(n) => {
                                out.push('\\');
                                out.push(n);
                            }
                            None => out.push('\\'),
                        },
                        c => out.push(c),
                    }
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A minimal Vault HTTP client (`/v1/<path>` with `X-Vault-Token`).
#[derive(Clone)]
pub struct Vault {
    env: VaultEnv,
    http: reqwest::Client,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.env.addr)
            .finish()
    }
}

impl Vault {
    /// Builds a client. Needs no runtime; requests need a tokio runtime.
    pub fn new(env: &VaultEnv) -> Result<Vault> {
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(15));
        if let Some(pem) = &env.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .context("parsing the Vault CA bundle")?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Vault {
            env: env.clone(),
            http: builder.build().context("building the Vault HTTP client")?,
        })
    }

    /// The Vault address.
    pub fn addr(&self) -> &str {
        &self.env.addr
    }

    /// The environment this client was built from.
    pub fn env(&self) -> &VaultEnv {
        &self.env
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/{}",
            self.env.addr.trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }

    /// One request. Returns the status and the JSON body (`Null` when empty).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .header("X-Vault-Token", &self.env.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {} (is Vault reachable?)", self.url(path)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, json))
    }

    fn check(method: &Method, path: &str, status: StatusCode, body: &Value) -> Result<()> {
        if status.is_success() {
            Ok(())
        } else {
            bail!("Vault {method} {path}: HTTP {status}: {body}")
        }
    }

    /// `GET`: `None` on 404, else the whole JSON answer.
    pub async fn read(&self, path: &str) -> Result<Option<Value>> {
        let (status, body) = self.request(Method::GET, path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::check(&Method::GET, path, status, &body)?;
        Ok(Some(body))
    }

    /// `POST` with a JSON body.
    pub async fn write(&self, path: &str, body: &Value) -> Result<Value> {
        let (status, answer) = self.request(Method::POST, path, Some(body)).await?;
        Self::check(&Method::POST, path, status, &answer)?;
        Ok(answer)
    }

    /// `DELETE`; a 404 counts as success.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let (status, body) = self.request(Method::DELETE, path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(&Method::DELETE, path, status, &body)
    }

    /// `LIST`: the `data.keys`, empty on 404.
    pub async fn list(&self, path: &str) -> Result<Vec<String>> {
        let method = Method::from_bytes(b"LIST").expect("LIST is a valid method token");
        let (status, body) = self.request(method.clone(), path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(vec![]);
        }
        Self::check(&method, path, status, &body)?;
        Ok(body["data"]["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Fails unless Vault is initialized, unsealed and active, and the token is valid.
    pub async fn check_usable(&self) -> Result<()> {
        let (status, body) = self
            .request(Method::GET, "sys/health", None)
            .await
            .with_context(|| format!("Vault at {} ({})", self.env.addr, self.env.source))?;
        if status != StatusCode::OK {
            bail!(
                "Vault at {} is not usable: sys/health answered HTTP {status} (sealed, standby or uninitialized): {body}",
                self.env.addr
            );
        }
        let (status, body) = self
            .request(Method::GET, "auth/token/lookup-self", None)
            .await?;
        if status != StatusCode::OK {
            bail!(
                "Vault at {} rejected the token from {}: HTTP {status}: {body}",
                self.env.addr,
                self.env.source
            );
        }
        Ok(())
    }

    /// The text of ACL policy `name`, or `None` when it does not exist.
    pub async fn policy(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .read(&format!("sys/policies/acl/{name}"))
            .await?
            .and_then(|v| v["data"]["policy"].as_str().map(str::to_string)))
    }

    /// Writes ACL policy `name` (an out-of-band edit, as a person with a root token would).
    pub async fn put_policy(&self, name: &str, text: &str) -> Result<()> {
        self.write(
            &format!("sys/policies/acl/{name}"),
            &serde_json::json!({ "policy": text }),
        )
        .await
        .map(|_| ())
    }

    /// Deletes ACL policy `name` (absent is fine).
    pub async fn delete_policy(&self, name: &str) -> Result<()> {
        self.delete(&format!("sys/policies/acl/{name}")).await
    }

    /// Names of all ACL policies.
    pub async fn policies(&self) -> Result<Vec<String>> {
        self.list("sys/policies/acl").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_are_unquoted() {
        let text = "# Generated by hack/openbao-start.sh. Source it: . x\n\
                    export VAULT_ADDR='http://127.0.0.1:18200'\n\
                    export VAULT_TOKEN='it'\\''s'\n\
                    export PLAIN=abc\n\
                    export DQ=\"a \\\"b\\\" $c\"\n\
                    not an export line\n\
                    export BAD NAME='x'\n";
        let vars = parse_env_file(text);
        assert_eq!(
            vars,
            vec![
                ("VAULT_ADDR".into(), "http://127.0.0.1:18200".into()),
                ("VAULT_TOKEN".into(), "it's".into()),
                ("PLAIN".into(), "abc".into()),
                ("DQ".into(), "a \"b\" $c".into()),
            ]
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let env = VaultEnv {
            addr: "http://x".into(),
            token: "s.secret".into(),
            ca_pem: None,
            source: "test".into(),
        };
        assert!(!format!("{env:?}").contains("s.secret"));
    }
}
