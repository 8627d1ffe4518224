//! Helpers for the integration tests: the real OpenBao and PostgreSQL started by
//! `hack/services-up.sh`, unique path prefixes so tests run in parallel on one Vault,
//! an in-memory Secret resolver, raw Vault access for out-of-band edits, `psql` logins,
//! and loading a manifest directory.
//!
//! The tests never skip: without a Vault they fail and say how to start one.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use certus_reconcile::{ReconcileError, Resolver, Resource};
use certus_vault_client::{
    ConnectionConfig, Credentials, JwtSource, SecretString, StatsSnapshot, VaultSession,
};
use serde_json::Value;

/// Where the services are.
#[derive(Clone, Debug)]
pub struct Env {
    pub vault_addr: String,
    pub vault_token: String,
    pub pg_host: String,
    pub pg_port: String,
    pub pg_user: String,
    pub pg_password: String,
    pub pg_db: String,
    pub pg_bin_dir: Option<String>,
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn env_files() -> BTreeMap<String, String> {
    // `.hack/openbao.env` and `.hack/postgres.env` hold `export NAME='value'` lines.
    let mut out = BTreeMap::new();
    for f in ["openbao.env", "postgres.env"] {
        let Ok(text) = std::fs::read_to_string(repo_root().join(".hack").join(f)) else {
            continue;
        };
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("export ") {
                if let Some((k, v)) = rest.split_once('=') {
                    out.insert(k.to_string(), v.trim_matches('\'').to_string());
                }
            }
        }
    }
    out
}

/// Reads the service locations from the environment, falling back to the files
/// `hack/services-up.sh` writes. Panics with instructions when there is no Vault.
pub fn env() -> Env {
    let files = env_files();
    let get = |k: &str| std::env::var(k).ok().or_else(|| files.get(k).cloned());
    let vault_addr = get("VAULT_ADDR").unwrap_or_else(|| {
        panic!(
            "VAULT_ADDR is not set and .hack/openbao.env does not exist: these integration tests need the real OpenBao and PostgreSQL. Start them with `hack/services-up.sh` and load them with `. .hack/env`"
        )
    });
    Env {
        vault_addr,
        vault_token: get("VAULT_TOKEN").expect("VAULT_TOKEN (see hack/services-up.sh)"),
        pg_host: get("CERTUS_PG_HOST").unwrap_or_else(|| "127.0.0.1".into()),
        pg_port: get("CERTUS_PG_PORT").unwrap_or_else(|| "15432".into()),
        pg_user: get("CERTUS_PG_USER").unwrap_or_else(|| "certus".into()),
        pg_password: get("CERTUS_PG_PASSWORD")
            .expect("CERTUS_PG_PASSWORD (run hack/services-up.sh)"),
        pg_db: get("CERTUS_PG_DB").unwrap_or_else(|| "certus".into()),
        pg_bin_dir: get("CERTUS_PG_BIN_DIR"),
    }
}

impl Env {
    /// The connection URL template of the local PostgreSQL, for a database connection.
    pub fn pg_url_template(&self) -> String {
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}/{}?sslmode=disable",
            self.pg_host, self.pg_port, self.pg_db
        )
    }
}

/// A fresh session with the root token and its own request counters.
pub async fn session() -> Arc<VaultSession> {
    let e = env();
    VaultSession::connect(
        ConnectionConfig::new(e.vault_addr),
        Credentials::Token(SecretString::new(e.vault_token)),
    )
    .await
    .expect("vault session")
}

/// A unique prefix for mount paths and names: `t<8 hex>`.
pub fn prefix() -> String {
    format!("t{:08x}", rand::random::<u32>())
}

/// The write/read counters now.
pub fn stats(v: &VaultSession) -> StatsSnapshot {
    v.stats().snapshot()
}

/// Raw Vault access for assertions and out-of-band edits (a separate session, so the
/// tested session's counters stay exact).
pub struct Raw(pub Arc<VaultSession>);

impl Raw {
    pub async fn new() -> Raw {
        Raw(session().await)
    }
    /// `data` of a path, `None` when absent.
    pub async fn data(&self, path: &str) -> Option<Value> {
        self.0
            .read(path)
            .await
            .unwrap_or_else(|e| panic!("read {path}: {e}"))
            .map(|v| v["data"].clone())
    }
    /// Writes a path, panicking on error.
    pub async fn write(&self, path: &str, body: Value) -> Option<Value> {
        self.0
            .write(path, &body)
            .await
            .unwrap_or_else(|e| panic!("write {path}: {e}"))
    }
    /// The `sys/mounts` entry of a secrets engine.
    pub async fn mount(&self, path: &str) -> Option<Value> {
        let t = self.0.read("sys/mounts").await.unwrap().unwrap();
        certus_core::mount::find_entry(&t, path).cloned()
    }
    /// The `sys/auth` entry of an auth method.
    pub async fn auth(&self, path: &str) -> Option<Value> {
        let t = self.0.read("sys/auth").await.unwrap().unwrap();
        certus_core::mount::find_entry(&t, path).cloned()
    }
    /// Unmounts a secrets engine (cleanup; absent is fine).
    pub async fn unmount(&self, path: &str) {
        let _ = self.0.delete(&format!("sys/mounts/{path}")).await;
    }
    /// Disables an auth method (cleanup).
    pub async fn disable_auth(&self, path: &str) {
        let _ = self.0.delete(&format!("sys/auth/{path}")).await;
    }
}

/// Secrets kept in memory, keyed by (namespace, name, key).
#[derive(Clone, Default)]
pub struct MapResolver(Arc<Mutex<SecretMap>>);

/// (namespace, name, key) → value.
type SecretMap = BTreeMap<(String, String, String), String>;

impl MapResolver {
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets one key of a Secret.
    pub fn set(&self, ns: &str, name: &str, key: &str, value: &str) -> &Self {
        self.0
            .lock()
            .unwrap()
            .insert((ns.into(), name.into(), key.into()), value.into());
        self
    }
}

impl Resolver for MapResolver {
    async fn secret_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<SecretString>, ReconcileError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(&(namespace.into(), name.into(), key.into()))
            .cloned()
            .map(SecretString::new))
    }

    fn service_account_jwt(
        &self,
        _namespace: &str,
        _name: &str,
        _audiences: Vec<String>,
    ) -> Result<JwtSource, ReconcileError> {
        Err(ReconcileError::Kubernetes(
            "no ServiceAccount tokens in integration tests".into(),
        ))
    }
}

/// Runs `sql` with `psql` as `user`/`password` against the local PostgreSQL; returns
/// stdout, or stderr as the error.
pub async fn psql(user: &str, password: &str, sql: &str) -> Result<String, String> {
    let e = env();
    let bin = e
        .pg_bin_dir
        .as_deref()
        .map(|d| format!("{d}/psql"))
        .filter(|p| Path::new(p).exists())
        .unwrap_or_else(|| "psql".into());
    let out = tokio::process::Command::new(bin)
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &e.pg_host,
            "-p",
            &e.pg_port,
            "-U",
            user,
            "-d",
            &e.pg_db,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs SQL as the admin user of the local PostgreSQL.
pub async fn psql_admin(sql: &str) -> String {
    let e = env();
    psql(&e.pg_user, &e.pg_password, sql)
        .await
        .unwrap_or_else(|err| panic!("psql as admin: {err}"))
}

/// A resource built from YAML, with its namespace defaulted.
pub fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{text}"))
}

/// The resources and Secrets of a manifest directory (every `*.yaml`, multi-document).
pub fn load_dir(dir: &Path) -> (Vec<Resource>, MapResolver) {
    let resolver = MapResolver::new();
    let mut resources = vec![];
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let mut v = v;
            v["metadata"]["namespace"] = Value::String(ns.clone());
            let parse = |v: Value| -> Value { v };
            match kind.as_str() {
                "Secret" => {
                    let s: k8s_openapi::api::core::v1::Secret =
                        serde_json::from_value(parse(v)).expect("Secret manifest");
                    let name = s.metadata.name.clone().unwrap_or_default();
                    for (k, val) in s.string_data.unwrap_or_default() {
                        resolver.set(&ns, &name, &k, &val);
                    }
                    for (k, val) in s.data.unwrap_or_default() {
                        resolver.set(&ns, &name, &k, &String::from_utf8(val.0).unwrap());
                    }
                }
                "VaultPolicy" => resources.push(Resource::Policy(Box::new(
                    serde_json::from_value(v).expect("VaultPolicy"),
                ))),
                "SecretEngine" => resources.push(Resource::Engine(Box::new(
                    serde_json::from_value(v).expect("SecretEngine"),
                ))),
                "AuthMethod" => resources.push(Resource::Auth(Box::new(
                    serde_json::from_value(v).expect("AuthMethod"),
                ))),
                "VaultRole" => resources.push(Resource::Role(Box::new(
                    serde_json::from_value(v).expect("VaultRole"),
                ))),
                _ => {}
            }
        }
    }
    (resources, resolver)
}

/// Updates what a status would remember after a reconcile.
pub fn remember(last: &mut certus_reconcile::LastApplied, out: &certus_reconcile::ConfigOutcome) {
    let mut status = certus_api::VaultObjectStatus {
        applied_hash: last.applied_hash.clone(),
        secret_hashes: last.secret_hashes.clone(),
        ..Default::default()
    };
    out.record(&mut status, Some(1), chrono_now());
    *last = certus_reconcile::LastApplied::from_status(Some(&status));
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Sets a resource's namespace (tests build resources with `Kind::new(name, spec)`).
pub fn in_ns<K: kube_like::HasMeta>(mut k: K, ns: &str) -> K {
    k.meta_mut().namespace = Some(ns.to_string());
    k
}

/// Access to `metadata` without depending on kube here.
pub mod kube_like {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    pub trait HasMeta {
        fn meta_mut(&mut self) -> &mut ObjectMeta;
    }
    macro_rules! has_meta {
        ($($t:ty),*) => {$(impl HasMeta for $t { fn meta_mut(&mut self) -> &mut ObjectMeta { &mut self.metadata } })*};
    }
    has_meta!(
        certus_api::SecretEngine,
        certus_api::AuthMethod,
        certus_api::VaultRole,
        certus_api::VaultPolicy
    );
}

/// A throwaway self-signed CA certificate (CN=test-k8s-ca), used as a Kubernetes API CA.
pub const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDDTCCAfWgAwIBAgIUcdGyTedGBIA2JmD8DrMrlNK+d90wDQYJKoZIhvcNAQEL\n\
BQAwFjEUMBIGA1UEAwwLdGVzdC1rOHMtY2EwHhcNMjYxMjA0MjAyMDEyWhcNMzYx\n\
MjAxMjAyMDEyWjAWMRQwEgYDVQQDDAt0ZXN0LWs4cy1jYTCCASIwDQYJKoZIhvcN\n\
AQEBBQADggEPADCCAQoCggEBAOLKuSAjv70kSCoOFNSAmFxrgL+0hjP17pske7Zq\n\
b258ZD8EQue09hchv2++Ng7OaZ+kwA7gKrnGUd9nvC6wwPC8yFNiw/dJk6M5MdwB\n\
73009fHrBlTBrd8R3fb8R7RbQqYIKwTaoZSPmRdIFLktcyMmXwpbMz1bpwnnpzQC\n\
bEgZ9/509YEFNfKtZzo4rRFdG1PXHceYBRRQ+2jCmkod69L/S3zVfQdx89TKv8op\n\
xV0kmavUmehTgHyY5WlEO2rIJKNjXJKtYwuvSdY8qb80kx0E2UWuYXs9+jG7VTsZ\n\
ihrK4nUm0s2Sl93DybqehW6m8YrLp+78qz3mxeU8XbXq6VECAwEAAaNTMFEwHQYD\n\
VR0OBBYEFP7GJNGVifbQ+8HWZjwqFkq8eA+EMB8GA1UdIwQYMBaAFP7GJNGVifbQ\n\
+8HWZjwqFkq8eA+EMA8GA1UdEwEB/wQFMAMBAf8wDQYJKoZIhvcNAQELBQADggEB\n\
AIywuMkBqez3LRcR6tRntWJ9cWfVT4UEFvvC2jA8R2bDjIinc5QxQb1Hug57vIpw\n\
7ETlyUoQ8hN7P2DD7cm3upYY0YTO/YfrgWGF5nKTaaFkpDVngbQLnnlVe3kbm1Pf\n\
0SzUyAa8weiogfWMu5IzZA8ddOd9C75mkR2VrLYdGur7kcDfjQtd/K8+T6/3i9SZ\n\
1PAFp6Gv8b6mdbE+kCQQJ8N0YynM9gF2l0SAqMDHFx2EzCOzacRkaXZS+SiOs2T3\n\
IBlF5rR2yiX89RtfDtWeWrJqyr3ps2oMS/ovQvSc78WnI7a6/8m4dUeCHfA0xUp0\n\
XtMON/3bfadMA+kl7M6Gu2M=\n\
-----END CERTIFICATE-----\n\
";

/// A throwaway RSA public key that verifies JWTs in the JWT/OIDC tests (its private key
/// was discarded).
pub const TEST_JWT_PUBKEY: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuf8C/t+RxtRyKhqW6J8x\n\
teecBz+HI30AhelzsLnOK7JSXi0ApZSVqcAqiJwPhVMC9oPDYe8amPyX6/drIdyv\n\
+PKLESL6JgTgliJI8pSdqp1g9tzFwoK3hMWuzBI8ToTGjLGboLoiDEIqmIixBq/G\n\
1l/PHqCe6F44ROh4tMxBDPEm0+YSwFqK/zMrUXbKjzK3HPia0rhU8+pc9U0y48Ge\n\
SMDQDNKp8IjSIWUpmIuLKnI4wXEHNH8IVazmyx8coKMBPos0t+ajb6YcbqNW3PcG\n\
Icb8u4zU96jBRi923SvFybejc3nm04yj0nLAYOkM8khJT6mawB3/MQ7CD3AHYzHF\n\
dwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
