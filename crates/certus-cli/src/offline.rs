//! `plan` and `apply` without a cluster: the operator's reconcile pipelines run against
//! manifests read from a directory. Secret references resolve from `Secret` manifests in
//! the same directory; the connection comes from a `VaultConnection` manifest or from
//! `VAULT_ADDR`/`VAULT_TOKEN` (`BAO_ADDR`/`BAO_TOKEN`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use certus_api::{ConnectionKind, ConnectionRef, VaultConnectionSpec};
use certus_core::{Action, Change, ResourceId};
use certus_reconcile::{
    connection_check, policy, resolve_connection, Mode, ReconcileError, Resolver,
};
use certus_vault_client::{
    ConnectionConfig, Credentials, JwtSource, SecretString, SessionCache, VaultSession,
};

use crate::manifests::ManifestSet;

/// Arguments shared by `plan` and `apply`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A manifest file or a directory of `.yaml`/`.yml`/`.json` manifests.
    #[arg(short = 'f', long = "filename")]
    pub path: PathBuf,
    /// Also read subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Print diffs for every change (default: only for updates).
    #[arg(long)]
    pub show_diffs: bool,
}

/// Resolves secret references from the `Secret` manifests of the directory.
pub struct ManifestResolver {
    secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
}

impl Resolver for ManifestResolver {
    async fn secret_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<SecretString>, ReconcileError> {
        let Some(data) = self.secrets.get(&(namespace.to_string(), name.to_string())) else {
            return Ok(None);
        };
        match data.get(key) {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes.clone())
                .map(|s| Some(SecretString::new(s)))
                .map_err(|_| {
                    ReconcileError::Invalid(format!(
                        "key {key:?} of Secret {namespace}/{name} is not UTF-8 text"
                    ))
                }),
        }
    }

    fn service_account_jwt(
        &self,
        namespace: &str,
        name: &str,
        _audiences: Vec<String>,
    ) -> Result<JwtSource, ReconcileError> {
        Err(ReconcileError::Invalid(format!(
            "Kubernetes auth (ServiceAccount {namespace}/{name}) needs a cluster to issue tokens; set VAULT_ADDR and VAULT_TOKEN to run plan/apply without one"
        )))
    }
}

/// The connection from the environment, if `VAULT_ADDR`/`BAO_ADDR` is set.
fn env_connection() -> anyhow::Result<Option<(ConnectionConfig, Credentials)>> {
    let var = |a: &str, b: &str| {
        std::env::var(a)
            .ok()
            .or_else(|| std::env::var(b).ok())
            .filter(|v| !v.is_empty())
    };
    let Some(addr) = var("VAULT_ADDR", "BAO_ADDR") else {
        return Ok(None);
    };
    let token = var("VAULT_TOKEN", "BAO_TOKEN")
        .context("VAULT_ADDR is set but VAULT_TOKEN (or BAO_TOKEN) is not")?;
    let mut config = ConnectionConfig::new(addr.trim_end_matches('/'));
    config.namespace = var("VAULT_NAMESPACE", "BAO_NAMESPACE");
    if let Some(path) = var("VAULT_CACERT", "BAO_CACERT") {
        config.ca_pem = Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading VAULT_CACERT {path}"))?,
        );
    }
    config.server_name = var("VAULT_TLS_SERVER_NAME", "BAO_TLS_SERVER_NAME");
    config.insecure_skip_verify =
        var("VAULT_SKIP_VERIFY", "BAO_SKIP_VERIFY").is_some_and(|v| v == "1" || v == "true");
    Ok(Some((config, Credentials::Token(SecretString::new(token)))))
}

/// Picks the session for each resource and remembers which connection it came from.
struct Connections {
    cache: SessionCache,
    resolver: ManifestResolver,
    env: Option<(ConnectionConfig, Credentials)>,
    specs: HashMap<(ConnectionKind, Option<String>, String), (VaultConnectionSpec, Option<String>)>,
    notes: Vec<String>,
}

impl Connections {
    fn new(set: &ManifestSet, env: Option<(ConnectionConfig, Credentials)>) -> Self {
        let mut specs = HashMap::new();
        for c in &set.connections {
            let ns = c.object.metadata.namespace.clone();
            specs.insert(
                (
                    ConnectionKind::VaultConnection,
                    ns.clone(),
                    c.object.metadata.name.clone().unwrap_or_default(),
                ),
                (c.object.spec.clone(), ns),
            );
        }
        for c in &set.cluster_connections {
            specs.insert(
                (
                    ConnectionKind::ClusterVaultConnection,
                    None,
                    c.object.metadata.name.clone().unwrap_or_default(),
                ),
                (c.object.spec.as_connection_spec(), None),
            );
        }
        Connections {
            cache: SessionCache::new(),
            resolver: ManifestResolver {
                secrets: set.secrets.clone(),
            },
            env,
            specs,
            notes: vec![],
        }
    }

    /// Returns the session and a key naming the connection (for conflict grouping).
    async fn session(
        &mut self,
        namespace: &str,
        r: Option<&ConnectionRef>,
    ) -> Result<(Arc<VaultSession>, String), ReconcileError> {
        let kind = r.map(|r| r.kind).unwrap_or_default();
        let name = r
            .map(|r| r.name.clone())
            .unwrap_or_else(|| "default".into());
        let key = match kind {
            ConnectionKind::VaultConnection => (kind, Some(namespace.to_string()), name.clone()),
            ConnectionKind::ClusterVaultConnection => (kind, None, name.clone()),
        };
        let label = match &key.1 {
            Some(ns) => format!("VaultConnection/{ns}/{name}"),
            None => format!("ClusterVaultConnection/{name}"),
        };
        if let Some((spec, own_ns)) = self.specs.get(&key).cloned() {
            if spec.auth.kubernetes.is_none() {
                let (config, creds) =
                    resolve_connection(&spec, own_ns.as_deref(), &self.resolver).await?;
                let s = self.cache.get(config, creds).await?;
                return Ok((s, label));
            }
            if self.env.is_some() {
                let note = format!("{label} logs in with Kubernetes auth, which needs a cluster: using VAULT_ADDR/VAULT_TOKEN instead");
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
            }
        }
        match &self.env {
            Some((config, creds)) => {
                let s = self.cache.get(config.clone(), creds.clone()).await?;
                Ok((s, "env".into()))
            }
            None => Err(ReconcileError::Dependency(format!(
                "no usable {label} manifest in the directory and VAULT_ADDR is not set: add the connection manifest (token or AppRole auth, with its Secret) or export VAULT_ADDR and VAULT_TOKEN"
            ))),
        }
    }
}

/// What happened to one resource.
struct Line {
    change: Option<Change>,
    error: Option<(ResourceId, ReconcileError)>,
}

#[derive(Default)]
struct Summary {
    create: usize,
    update: usize,
    delete: usize,
    unchanged: usize,
    errors: usize,
}

fn print_change(c: &Change, show_diffs: bool) {
    let mut c = c.clone();
    if !(show_diffs || c.action == Action::Update) {
        c.detail = None;
    }
    println!("{c}");
}

async fn run(args: Args, mode: Mode) -> anyhow::Result<ExitCode> {
    let set = ManifestSet::load(&args.path, args.recursive)?;
    let env = env_connection()?;
    let mut conns = Connections::new(&set, env);
    let mut summary = Summary::default();

    for (origin, msg) in &set.errors {
        println!("x {origin}: {msg}");
        summary.errors += 1;
    }
    for (origin, what) in &set.ignored {
        tracing::info!("ignoring {what} at {origin}");
    }

    // Connections declared in the directory: check them first.
    let mut checked: Vec<(String, Result<String, ReconcileError>)> = vec![];
    for c in &set.connections {
        let ns = c.object.metadata.namespace.clone().unwrap_or_default();
        let name = c.object.metadata.name.clone().unwrap_or_default();
        let r = ConnectionRef {
            name: name.clone(),
            kind: ConnectionKind::VaultConnection,
        };
        let res = match conns.session(&ns, Some(&r)).await {
            Ok((s, _)) => connection_check(&s).await.map(|c| {
                format!(
                    "Vault {} at {}, {}, token policies [{}]",
                    c.health.version,
                    s.config().address,
                    if c.health.sealed {
                        "sealed"
                    } else {
                        "unsealed"
                    },
                    c.token.policies.join(", ")
                )
            }),
            Err(e) => Err(e),
        };
        checked.push((format!("VaultConnection/{ns}/{name}"), res));
    }
    for (label, res) in &checked {
        match res {
            Ok(msg) => println!("✓ {label}: {msg}"),
            Err(e) => {
                println!("x {label}: {e}");
                summary.errors += 1;
            }
        }
    }

    // VaultPolicies: the first claimant (in manifest order) of a Vault policy name owns it.
    let mut claims: HashMap<(String, String), ResourceId> = HashMap::new();
    let mut lines: Vec<Line> = vec![];
    for item in &set.policies {
        let p = &item.object;
        let id = policy::resource_id(p);
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let outcome = async {
            // Validate before any Vault request.
            policy::desired(p)?;
            let (session, conn_key) = conns.session(&ns, p.spec.connection_ref.as_ref()).await?;
            let owner = claims.entry((conn_key, p.vault_name())).or_insert_with(|| id.clone()).clone();
            if let Some(other) = policy::claimed_by_other(&id, [&owner]) {
                return Err(ReconcileError::Conflict(format!("Vault policy {:?} is also claimed by {other}, which comes first; nothing was written", p.vault_name())));
            }
            policy::reconcile(&session, p, None, mode).await
        }
        .await;
        lines.push(match outcome {
            Ok(o) => Line {
                change: Some(o.change),
                error: None,
            },
            Err(e) => Line {
                change: None,
                error: Some((id, e)),
            },
        });
    }

    for note in &conns.notes {
        println!("note: {note}");
    }
    for line in &lines {
        if let Some(c) = &line.change {
            print_change(c, args.show_diffs);
            match c.action {
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Delete => summary.delete += 1,
                _ => summary.unchanged += 1,
            }
        }
        if let Some((id, e)) = &line.error {
            let sym = if matches!(e, ReconcileError::Conflict(_)) {
                "!"
            } else {
                "x"
            };
            println!("{sym} {id} ({}): {e}", e.reason());
            summary.errors += 1;
        }
    }

    let stats = conns.cache.stats().snapshot();
    let verb = if mode == Mode::Plan {
        "Plan"
    } else {
        "Applied"
    };
    let changes = summary.create + summary.update + summary.delete;
    if changes == 0 && summary.errors == 0 {
        println!("{verb}: no changes ({} unchanged).", summary.unchanged);
    } else {
        println!(
            "{verb}: {} to create, {} to update, {} to delete, {} unchanged, {} errors.",
            summary.create, summary.update, summary.delete, summary.unchanged, summary.errors
        );
    }
    println!(
        "Vault requests: {} reads, {} writes, {} logins.",
        stats.reads, stats.writes, stats.logins
    );

    Ok(match (mode, summary.errors, changes) {
        (_, e, _) if e > 0 => ExitCode::from(1),
        (Mode::Plan, _, c) if c > 0 => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

/// `certus-vault plan`.
pub async fn plan(args: Args) -> anyhow::Result<ExitCode> {
    run(args, Mode::Plan).await
}

/// `certus-vault apply`.
pub async fn apply(args: Args) -> anyhow::Result<ExitCode> {
    run(args, Mode::Apply).await
}
