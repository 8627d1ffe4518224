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
    apply_all_concurrent, connection_check, policy, resolve_connection, LastApplied, Mode, Outcome,
    ReconcileError, Resolver, Resource,
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
    /// Where `apply` writes projected Secrets as manifests (`<dir>/<namespace>/<name>.yaml`);
    /// `plan` compares against them.
    #[arg(short = 'o', long = "output-dir")]
    pub output_dir: Option<PathBuf>,
    /// Resources reconciled at once (Vault round trips bound a large apply, not CPU).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Where `apply` remembers hashes of what it applied (never values), so later runs
    /// tell drift from spec changes and notice a changed Secret behind a write-only field.
    #[arg(long, default_value = ".certus/state.json", env = "CERTUS_STATE")]
    pub state: PathBuf,
    /// `apply` only: keep renewing DynamicCredentials in the foreground until SIGINT or
    /// SIGTERM (a small agent for machines outside Kubernetes).
    #[arg(long)]
    pub watch: bool,
    /// With `--watch`: revoke the DynamicCredentials and delete their Secret files on exit.
    #[arg(long, requires = "watch")]
    pub revoke_on_exit: bool,
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

/// A connection's kind, namespace (None when cluster-scoped) and name.
type ConnKey = (ConnectionKind, Option<String>, String);

/// Picks the session for each resource and remembers which connection it came from.
struct Connections {
    cache: SessionCache,
    resolver: ManifestResolver,
    env: Option<(ConnectionConfig, Credentials)>,
    specs: HashMap<ConnKey, (VaultConnectionSpec, Option<String>)>,
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
            // Kubernetes auth and JWT from a ServiceAccount need the TokenRequest API.
            let needs_cluster = spec.auth.kubernetes.is_some()
                || spec
                    .auth
                    .jwt
                    .as_ref()
                    .is_some_and(|j| j.service_account_name.is_some());
            if !needs_cluster {
                let (config, creds) =
                    resolve_connection(&spec, own_ns.as_deref(), &self.resolver).await?;
                let s = self.cache.get(config, creds).await?;
                return Ok((s, label));
            }
            if self.env.is_some() {
                let note = format!("{label} logs in with a ServiceAccount token (Kubernetes or JWT auth), which needs a cluster: using VAULT_ADDR/VAULT_TOKEN instead");
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
                "no usable {label} manifest in the directory and VAULT_ADDR is not set: add the connection manifest (token, AppRole or JWT-from-a-Secret auth, with its Secret) or export VAULT_ADDR and VAULT_TOKEN"
            ))),
        }
    }
}

/// A configuration resource before its connection is resolved: id, connection
/// reference, namespace, resource.
type Pending = (ResourceId, Option<ConnectionRef>, String, Resource);

/// Counts of what a run did or would do.
#[derive(Default)]
struct Summary {
    create: usize,
    update: usize,
    delete: usize,
    unchanged: usize,
    errors: usize,
}

impl Summary {
    fn count(&mut self, c: &Change) {
        match c.action {
            Action::Create => self.create += 1,
            Action::Update => self.update += 1,
            Action::Delete => self.delete += 1,
            Action::Invalid | Action::Conflict | Action::Blocked => self.errors += 1,
            Action::NoChange => self.unchanged += 1,
        }
    }
    fn changes(&self) -> usize {
        self.create + self.update + self.delete
    }
}

fn print_change(c: &Change, show_diffs: bool) {
    let mut c = c.clone();
    if !(show_diffs || c.action == Action::Update) {
        c.detail = None;
    }
    println!("{c}");
}

fn print_error(id: &ResourceId, e: &ReconcileError, summary: &mut Summary) {
    let sym = if matches!(e, ReconcileError::Conflict(_)) {
        "!"
    } else {
        "x"
    };
    println!("{sym} {id} ({}): {e}", e.reason());
    summary.errors += 1;
}

/// What the CLI remembers between runs (the operator keeps the same facts in status):
/// per Vault address and resource, the hash of what was last applied and the hashes of
/// secret-bearing requests. Hashes only, never values.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct StateFile {
    #[serde(default)]
    resources: BTreeMap<String, StateEntry>,
}

#[derive(serde::Serialize, serde::Deserialize, Default, Clone)]
struct StateEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied_hash: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    secret_hashes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vault_path: Option<String>,
    /// Vault path → the fields the resource set there (removed ones are reset).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    managed: BTreeMap<String, Vec<String>>,
}

fn state_key(address: &str, id: &ResourceId) -> String {
    format!("{address} {id}")
}

impl StateFile {
    fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a certus state file; delete it to start afresh",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
    fn get(&self, address: &str, id: &ResourceId) -> LastApplied {
        self.resources
            .get(&state_key(address, id))
            .map(|e| LastApplied {
                applied_hash: e.applied_hash.clone(),
                secret_hashes: e.secret_hashes.clone(),
                vault_path: e.vault_path.clone(),
                managed: e.managed.clone(),
            })
            .unwrap_or_default()
    }
    fn set(&mut self, address: &str, id: &ResourceId, l: LastApplied) {
        self.resources.insert(
            state_key(address, id),
            StateEntry {
                applied_hash: l.applied_hash,
                secret_hashes: l.secret_hashes,
                vault_path: l.vault_path,
                managed: l.managed,
            },
        );
    }
}

async fn run(args: Args, mode: Mode) -> anyhow::Result<ExitCode> {
    let set = ManifestSet::load(&args.path, args.recursive)?;
    let env = env_connection()?;
    let mut conns = Connections::new(&set, env);
    let mut summary = Summary::default();
    let mut state = StateFile::load(&args.state)?;

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

    // Vault configuration kinds, grouped by the connection they reconcile through.
    // (id, connection reference, namespace, resource)
    let mut resources: Vec<Pending> = vec![];
    for i in &set.policies {
        let ns = i.object.metadata.namespace.clone().unwrap_or_default();
        resources.push((
            policy::resource_id(&i.object),
            i.object.spec.connection_ref.clone(),
            ns,
            Resource::Policy(Box::new(i.object.clone())),
        ));
    }
    for i in &set.engines {
        let ns = i.object.metadata.namespace.clone().unwrap_or_default();
        resources.push((
            certus_reconcile::engine::resource_id(&i.object),
            i.object.spec.connection_ref.clone(),
            ns,
            Resource::Engine(Box::new(i.object.clone())),
        ));
    }
    for i in &set.auth_methods {
        let ns = i.object.metadata.namespace.clone().unwrap_or_default();
        resources.push((
            certus_reconcile::auth_method::resource_id(&i.object),
            i.object.spec.connection_ref.clone(),
            ns,
            Resource::Auth(Box::new(i.object.clone())),
        ));
    }
    for i in &set.roles {
        let ns = i.object.metadata.namespace.clone().unwrap_or_default();
        resources.push((
            certus_reconcile::role::resource_id(&i.object),
            i.object.spec.connection_ref.clone(),
            ns,
            Resource::Role(Box::new(i.object.clone())),
        ));
    }

    // The first claimant (in manifest order) of a Vault policy name owns it.
    let mut claims: HashMap<(String, String), ResourceId> = HashMap::new();
    let mut groups: Vec<(String, Arc<VaultSession>, Vec<Resource>)> = vec![];
    let mut early_errors: Vec<(ResourceId, ReconcileError)> = vec![];
    for (id, cref, ns, res) in resources {
        if let Resource::Policy(p) = &res {
            // Validate before any Vault request.
            if let Err(e) = policy::desired(p) {
                early_errors.push((id, e));
                continue;
            }
        }
        let (session, conn_key) = match conns.session(&ns, cref.as_ref()).await {
            Ok(s) => s,
            Err(e) => {
                early_errors.push((id, e));
                continue;
            }
        };
        // The first claimant (in manifest order) of a Vault object owns it: two
        // resources writing one policy, mount or role would undo each other.
        use certus_controller::config::ConfigKind;
        let target = match &res {
            Resource::Policy(p) => Some(format!("sys/policies/acl/{}", p.vault_name())),
            Resource::Engine(e) => e.claim_target(),
            Resource::Auth(a) => a.claim_target(),
            Resource::Role(r) => r.claim_target(),
        };
        if let Some(target) = target {
            let owner = claims
                .entry((conn_key.clone(), target))
                .or_insert_with(|| id.clone())
                .clone();
            if let Some(other) = policy::claimed_by_other(&id, [&owner]) {
                // Described only here: for a role it means planning it once more.
                let what = match &res {
                    Resource::Policy(p) => format!("Vault policy {:?}", p.vault_name()),
                    Resource::Engine(e) => e.describe(),
                    Resource::Auth(a) => a.describe(),
                    Resource::Role(r) => r.describe(),
                };
                early_errors.push((
                    id,
                    ReconcileError::Conflict(format!(
                        "{what} is also claimed by {other}, which comes first; nothing was written"
                    )),
                ));
                continue;
            }
        }
        match groups.iter_mut().find(|(k, _, _)| *k == conn_key) {
            Some((_, _, list)) => list.push(res),
            None => groups.push((conn_key, session, vec![res])),
        }
    }

    for note in &conns.notes {
        println!("note: {note}");
    }
    for (id, e) in &early_errors {
        print_error(id, e, &mut summary);
    }
    for (_, session, list) in &groups {
        let address = session.config().address.clone();
        let last: BTreeMap<ResourceId, LastApplied> = list
            .iter()
            .map(|r| (r.id(), state.get(&address, &r.id())))
            .collect();
        let results = apply_all_concurrent(
            session,
            list,
            &conns.resolver,
            &last,
            mode,
            args.concurrency,
        )
        .await;
        for a in results {
            match a.result {
                Ok(outcome) => {
                    for c in outcome.changes() {
                        print_change(&c, args.show_diffs);
                        summary.count(&c);
                    }
                    if let Outcome::Config(c) = &outcome {
                        if let Some(r) = &c.role_id {
                            println!("  role id of {} belongs in Secret {:?} (key role_id); without a cluster it is not published", a.id, r.secret_name);
                        }
                    }
                    if mode == Mode::Apply {
                        state.set(&address, &a.id, outcome.last_applied());
                    }
                }
                Err(e) => print_error(&a.id, &e, &mut summary),
            }
        }
    }

    // -- Projected kinds (DynamicCredential, StaticSecret, RotationPolicy) run below. --

    // DynamicCredentials (dynamic.rs): issue once, or resume the lease from the output file.
    let mut dyn_items = vec![];
    for i in &set.dynamic_credentials {
        let ns = i.object.metadata.namespace.clone().unwrap_or_default();
        let session = conns
            .session(&ns, i.object.spec.connection_ref.as_ref())
            .await
            .map(|(s, _)| s);
        dyn_items.push((i.object.clone(), session));
    }
    let dynamic = crate::dynamic::DynamicSet::new(dyn_items, args.output_dir.as_deref());
    for line in dynamic.once(mode).await {
        match line {
            Ok(c) => {
                print_change(&c, true);
                summary.count(&c);
            }
            Err((id, e)) => print_error(&id, &e, &mut summary),
        }
    }

    // StaticSecrets and RotationPolicies (rotation.rs): their Secrets go to the same
    // directory as the DynamicCredentials'; their state lives in Vault and in those files.
    let secret_dir = crate::rotation::SecretDir::new(Some(dynamic.dir()));
    let mut projected = vec![];
    for i in &set.static_secrets {
        let ns = i.object.metadata.namespace.clone().unwrap_or_default();
        let done = match conns
            .session(&ns, i.object.spec.connection_ref.as_ref())
            .await
        {
            Ok((s, _)) => crate::rotation::static_secret(&s, &i.object, &secret_dir, mode).await,
            Err(e) => Err(e),
        };
        projected.push((
            certus_reconcile::static_secret::resource_id(&i.object),
            done,
        ));
    }
    for i in &set.rotation_policies {
        let ns = i.object.metadata.namespace.clone().unwrap_or_default();
        let done = match conns
            .session(&ns, i.object.spec.connection_ref.as_ref())
            .await
        {
            Ok((s, _)) => crate::rotation::rotation_policy(&s, &i.object, &secret_dir, mode).await,
            Err(e) => Err(e),
        };
        projected.push((certus_reconcile::rotation::resource_id(&i.object), done));
    }
    for (id, done) in projected {
        match done {
            Ok(d) => {
                print_change(&d.change, args.show_diffs);
                summary.count(&d.change);
                for n in d.notes {
                    println!("    note: {n}");
                }
            }
            Err(e) => print_error(&id, &e, &mut summary),
        }
    }

    if mode == Mode::Apply {
        state.save(&args.state)?;
    }
    let stats = conns.cache.stats().snapshot();
    let verb = if mode == Mode::Plan {
        "Plan"
    } else {
        "Applied"
    };
    let changes = summary.changes();
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

    if args.watch && mode == Mode::Apply && !dynamic.is_empty() {
        return dynamic
            .watch(args.revoke_on_exit, |line| match line {
                Ok(c) => print_change(c, true),
                Err((id, e)) => println!("x {id} ({}): {e}", e.reason()),
            })
            .await;
    }

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
