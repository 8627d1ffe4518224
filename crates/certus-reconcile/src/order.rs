//! Ordering without a scheduler: reconcile a set of resources in any order, retrying
//! those that wait for a dependency (a mount, a policy, a database connection, a Secret)
//! until a round makes no progress. Used by `certus-vault apply -f DIR`; the operator
//! gets the same effect from per-resource retries with backoff.

use std::collections::{BTreeMap, HashSet};

use certus_api::{AuthMethod, SecretEngine, VaultPolicy, VaultRole};
use certus_core::ResourceId;
use certus_vault_client::VaultSession;

use crate::config::{ConfigOutcome, LastApplied};
use crate::connection::Resolver;
use crate::error::ReconcileError;
use crate::policy::PolicyOutcome;
use crate::Mode;

/// One resource of a set applied together (boxed: the specs differ a lot in size).
#[derive(Clone, Debug)]
pub enum Resource {
    Policy(Box<VaultPolicy>),
    Engine(Box<SecretEngine>),
    Auth(Box<AuthMethod>),
    Role(Box<VaultRole>),
}

impl Resource {
    /// The resource id used in plan output and as the state key.
    pub fn id(&self) -> ResourceId {
        match self {
            Resource::Policy(p) => crate::policy::resource_id(p),
            Resource::Engine(e) => crate::engine::resource_id(e),
            Resource::Auth(a) => crate::auth_method::resource_id(a),
            Resource::Role(r) => crate::role::resource_id(r),
        }
    }
}

/// What reconciling one resource produced.
#[derive(Clone, Debug)]
pub enum Outcome {
    Policy(PolicyOutcome),
    Config(ConfigOutcome),
}

impl Outcome {
    /// The planned changes.
    pub fn changes(&self) -> Vec<certus_core::Change> {
        match self {
            Outcome::Policy(p) => vec![p.change.clone()],
            Outcome::Config(c) => c.changes.clone(),
        }
    }
    /// Whether Vault was written.
    pub fn written(&self) -> bool {
        match self {
            Outcome::Policy(p) => p.written,
            Outcome::Config(c) => c.written,
        }
    }
    /// What to remember for the next run (the CLI's state, the operator's status).
    pub fn last_applied(&self) -> LastApplied {
        match self {
            Outcome::Policy(p) => LastApplied {
                applied_hash: Some(p.hash.clone()),
                secret_hashes: Default::default(),
                vault_path: Some(format!("sys/policies/acl/{}", p.vault_name)),
                managed: Default::default(),
            },
            Outcome::Config(c) => LastApplied {
                applied_hash: c.in_sync.then(|| c.applied_hash.clone()),
                secret_hashes: c.secret_hashes.clone(),
                vault_path: c.in_sync.then(|| c.vault_path.clone()),
                managed: if c.in_sync {
                    c.managed.clone()
                } else {
                    Default::default()
                },
            },
        }
    }
}

/// The result for one resource of [`apply_all`].
#[derive(Debug)]
pub struct Applied {
    pub id: ResourceId,
    /// Index of the resource in the input.
    pub index: usize,
    pub result: Result<Outcome, ReconcileError>,
    /// The round (1-based) in which the resource settled.
    pub round: usize,
}

/// Reconciles one resource. `policy_names` maps `(namespace, VaultPolicy name)` to the
/// Vault policy name, for `policyRefs`.
pub async fn reconcile_one<R: Resolver>(
    vault: &VaultSession,
    resource: &Resource,
    resolver: &R,
    policy_names: &BTreeMap<(String, String), String>,
    last: &LastApplied,
    mode: Mode,
) -> Result<Outcome, ReconcileError> {
    match resource {
        Resource::Policy(p) => {
            crate::policy::reconcile(vault, p, last.applied_hash.as_deref(), mode)
                .await
                .map(Outcome::Policy)
        }
        Resource::Engine(e) => crate::engine::reconcile(vault, e, resolver, last, mode)
            .await
            .map(Outcome::Config),
        Resource::Auth(a) => crate::auth_method::reconcile(vault, a, resolver, last, mode)
            .await
            .map(Outcome::Config),
        Resource::Role(r) => {
            let ns = r
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let lookup = |name: &str| policy_names.get(&(ns.clone(), name.to_string())).cloned();
            crate::role::reconcile(vault, r, &lookup, last, mode)
                .await
                .map(Outcome::Config)
        }
    }
}

/// The `(namespace, name) → Vault policy name` map of the policies in a set.
pub fn policy_names(resources: &[Resource]) -> BTreeMap<(String, String), String> {
    resources
        .iter()
        .filter_map(|r| match r {
            Resource::Policy(p) => Some((
                (
                    p.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    p.metadata.name.clone().unwrap_or_default(),
                ),
                p.vault_name(),
            )),
            _ => None,
        })
        .collect()
}

/// Reconciles every resource, in the given order, in rounds: a resource that fails with
/// [`ReconcileError::Dependency`] is retried in the next round, as long as the previous
/// round settled at least one resource. Converges for any input order when every
/// dependency is in the set (or already in Vault). `state` holds what was remembered for
/// each resource (missing entries mean `LastApplied::default()`). Results come back in
/// input order; resources still waiting carry their last Dependency error.
pub async fn apply_all<R: Resolver>(
    vault: &VaultSession,
    resources: &[Resource],
    resolver: &R,
    state: &BTreeMap<ResourceId, LastApplied>,
    mode: Mode,
) -> Vec<Applied> {
    apply_all_concurrent(vault, resources, resolver, state, mode, 1).await
}

/// Names listed under `dir` (lower-cased), or `None` when the list is not allowed or
/// fails (the pipelines then read each object, as without the list). A token without
/// `list` there does not log in again for it (one login per identity).
async fn list_names(vault: &VaultSession, dir: &str) -> Option<HashSet<String>> {
    match vault.list_if_allowed(dir).await {
        Ok(Some(keys)) => Some(keys.into_iter().map(|k| k.to_ascii_lowercase()).collect()),
        Ok(None) => {
            tracing::debug!(dir, "not allowed to list; reading objects one by one");
            None
        }
        Err(e) => {
            tracing::debug!(dir, error = %e, "listing failed; reading objects one by one");
            None
        }
    }
}

/// Bulk reads for the policies of a round: one `LIST sys/policies/acl` instead of one
/// read per absent policy (worth it from two policies on).
async fn policy_listing(
    vault: &VaultSession,
    resources: &[Resource],
    idx: &[usize],
) -> Option<HashSet<String>> {
    let n = idx
        .iter()
        .filter(|&&i| matches!(resources[i], Resource::Policy(_)))
        .count();
    if n < 2 {
        return None;
    }
    list_names(vault, "sys/policies/acl").await
}

/// Bulk reads for the roles of a round: each mount table once, each role directory
/// listed once (from two roles on), and the Vault policies this run already saw in Vault.
async fn role_hints(
    vault: &VaultSession,
    resources: &[Resource],
    idx: &[usize],
    names: &BTreeMap<(String, String), String>,
    present: HashSet<String>,
) -> crate::role::Hints {
    let mut hints = crate::role::Hints {
        policies_present: present,
        ..Default::default()
    };
    let mut tables: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut dirs: BTreeMap<String, usize> = BTreeMap::new();
    for &i in idx {
        let Resource::Role(r) = &resources[i] else {
            continue;
        };
        let ns = r
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        // Unresolved references do not change the path; the pipeline reports them.
        let lookup = |name: &str| {
            Some(
                names
                    .get(&(ns.clone(), name.to_string()))
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        if let Ok(d) = crate::role::desired(r, &lookup) {
            *tables.entry(d.kind.table().sys_path()).or_default() += 1;
            if let Some(dir) = crate::role::role_dir(&d) {
                *dirs.entry(dir.to_string()).or_default() += 1;
            }
        }
    }
    for (sys_path, _) in tables {
        if let Ok(Some(t)) = vault.read(sys_path).await {
            hints.tables.insert(sys_path, t);
        }
    }
    for (dir, n) in dirs {
        if n >= 2 {
            if let Some(keys) = list_names(vault, &dir).await {
                hints.listed_dirs.insert(dir, keys);
            }
        }
    }
    hints
}

/// [`apply_all`] with up to `concurrency` resources of a round in flight at once (the
/// CLI uses this: Vault round trips, not CPU, bound a large apply).
///
/// Each round runs in two phases: policies, engines and auth methods first, then roles
/// (which depend on them). Before each phase a few bulk reads replace per-object reads
/// whose answer they give (`LIST sys/policies/acl`, the mount tables, `LIST` of each role
/// directory), and roles skip reading the Vault policies this run already wrote or found
/// in sync. The facts are only used within the phase that read them; nothing is cached
/// across calls.
pub async fn apply_all_concurrent<R: Resolver>(
    vault: &VaultSession,
    resources: &[Resource],
    resolver: &R,
    state: &BTreeMap<ResourceId, LastApplied>,
    mode: Mode,
    concurrency: usize,
) -> Vec<Applied> {
    use futures::StreamExt;
    let names = policy_names(resources);
    let mut results: Vec<Option<Applied>> = (0..resources.len()).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..resources.len()).collect();
    // Vault policies known to exist: written or found in sync by this run.
    let mut present: HashSet<String> = HashSet::new();
    let mut round = 0;
    while !pending.is_empty() {
        round += 1;
        let names = &names;
        let (roles, others): (Vec<usize>, Vec<usize>) = pending
            .iter()
            .partition(|&&i| matches!(resources[i], Resource::Role(_)));
        let mut done: Vec<(usize, ResourceId, Result<Outcome, ReconcileError>)> =
            Vec::with_capacity(pending.len());
        let listed = policy_listing(vault, resources, &others).await;
        let listed = &listed;
        done.extend(
            futures::stream::iter(others.iter().copied())
                .map(|i| async move {
                    let res = &resources[i];
                    let id = res.id();
                    let last = state.get(&id).cloned().unwrap_or_default();
                    let result = match res {
                        Resource::Policy(p) => crate::policy::reconcile_listed(
                            vault,
                            p,
                            last.applied_hash.as_deref(),
                            mode,
                            listed.as_ref(),
                        )
                        .await
                        .map(Outcome::Policy),
                        _ => reconcile_one(vault, res, resolver, names, &last, mode).await,
                    };
                    (i, id, result)
                })
                .buffered(concurrency.max(1))
                .collect::<Vec<_>>()
                .await,
        );
        if mode == Mode::Apply {
            for (_, _, r) in &done {
                if let Ok(Outcome::Policy(p)) = r {
                    if p.written || p.change.action == certus_core::Action::NoChange {
                        present.insert(p.vault_name.clone());
                    }
                }
            }
        }
        if !roles.is_empty() {
            let hints = role_hints(vault, resources, &roles, names, present.clone()).await;
            let hints = &hints;
            done.extend(
                futures::stream::iter(roles.iter().copied())
                    .map(|i| async move {
                        let res = &resources[i];
                        let id = res.id();
                        let last = state.get(&id).cloned().unwrap_or_default();
                        let Resource::Role(r) = res else {
                            unreachable!("partitioned")
                        };
                        let ns = r
                            .metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into());
                        let lookup =
                            |name: &str| names.get(&(ns.clone(), name.to_string())).cloned();
                        let result =
                            crate::role::reconcile_with(vault, r, &lookup, &last, mode, hints)
                                .await
                                .map(Outcome::Config);
                        (i, id, result)
                    })
                    .buffered(concurrency.max(1))
                    .collect::<Vec<_>>()
                    .await,
            );
        }
        let mut waiting = vec![];
        let mut settled = 0;
        for (i, id, result) in done {
            if matches!(result, Err(ReconcileError::Dependency(_))) {
                waiting.push(i);
            } else {
                settled += 1;
            }
            results[i] = Some(Applied {
                id,
                index: i,
                result,
                round,
            });
        }
        pending = waiting;
        if settled == 0 || mode == Mode::Plan {
            // No progress is possible: nothing new exists in Vault (or plan mode, which
            // never creates what the waiting resources need).
            break;
        }
    }
    results.into_iter().flatten().collect()
}
