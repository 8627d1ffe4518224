//! End-to-end test harness of certus-vault-operator against a REAL Kubernetes cluster.
//!
//! Selected by `CERTUS_E2E_KUBECONFIG` (a kubeconfig path). Without it every test prints
//! one `SKIPPED e2e <name>: …` line to stderr and passes. With it, [`E2e::start`]:
//!
//! 1. takes the binary-wide serial lock (tests run one at a time, see below);
//! 2. resolves Vault (`VAULT_ADDR`/`VAULT_TOKEN`, `BAO_ADDR`/`BAO_TOKEN`, or
//!    `hack/openbao-start.sh`) and checks it is unsealed and the token works;
//! 3. connects to the cluster and checks it is Kubernetes >= 1.30;
//! 4. builds (`cargo build -p certus-cli`, a no-op when up to date) and locates the
//!    `certus-vault` binary, unless `CERTUS_E2E_OPERATOR_BIN` names one;
//! 5. installs `crds/*.yaml` by server-side apply (field manager `certus-e2e`, forced) and
//!    waits until every CRD is `Established`;
//! 6. creates a fresh namespace `certus-e2e-<6 random chars>` labelled
//!    `certus.io/e2e=true`;
//! 7. starts `certus-vault run` as a child process (`KUBECONFIG`, `RUST_LOG=info`, output
//!    in `target/<profile>/certus-e2e-logs/<namespace>/operator.log`);
//! 8. creates the Vault token Secret and the `VaultConnection` `default` and waits for it
//!    to be `Ready=True`.
//!
//! Dropping the [`E2e`] (at the end of the test, on a failed assertion or on an error
//! return) deletes the test's custom resources (letting the operator run its finalizers,
//! then stripping finalizers it did not release), deletes the Vault objects the test
//! created, deletes the namespace, and stops the operator.
//!
//! ## One operator per test, tests serialized
//! The operator watches every namespace. Two operators against the same cluster would
//! both reconcile the same objects, so the tests of one binary take a global lock and
//! each test runs with exactly one operator of its own (its log holds only that test).
//! Cargo runs test binaries one after another, so the whole suite never runs two
//! operators at once. The suite expects NO other certus-vault operator to be running
//! against the cluster (an in-cluster deployment, or another developer's run).
#![forbid(unsafe_code)]

mod cleanup;
pub mod fixtures;
pub mod operator;
pub mod vault;

use std::fmt::Debug;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::ByteString;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, TypeMeta,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind, Status};
use kube::discovery::Scope;
use kube::{Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use operator::Operator;
pub use vault::{Vault, VaultEnv};

/// Path of the kubeconfig of the cluster to test against. Unset: every test is skipped.
pub const ENV_KUBECONFIG: &str = "CERTUS_E2E_KUBECONFIG";
/// Multiplies every timeout (e.g. `2` for a slow cluster).
pub const ENV_TIMEOUT_SCALE: &str = "CERTUS_E2E_TIMEOUT_SCALE";
/// Field manager of every server-side apply the suite makes.
pub const FIELD_MANAGER: &str = "certus-e2e";
/// Label on every namespace the suite creates (`true`).
pub const E2E_LABEL: &str = "certus.io/e2e";
/// Label naming the test that created the namespace.
pub const TEST_LABEL: &str = "certus.io/e2e-test";
/// Prefix of the test namespaces.
pub const NAMESPACE_PREFIX: &str = "certus-e2e-";
/// Annotation the suite changes to make the operator reconcile an object now.
pub const RECONCILE_ANNOTATION: &str = "vault.certus.io/reconcile-at";
/// The Secret holding the Vault token in each test namespace.
pub const TOKEN_SECRET: &str = "certus-e2e-vault-token";
/// The `VaultConnection` every test namespace gets (the default one resources use).
pub const CONNECTION_NAME: &str = "default";
/// In manifests given to [`E2e::apply_yaml`], replaced by the test namespace.
pub const NAMESPACE_VAR: &str = "${E2E_NAMESPACE}";
/// In manifests given to [`E2e::apply_yaml`], replaced by the Vault address.
pub const VAULT_ADDR_VAR: &str = "${VAULT_ADDR}";
/// Default time for an object to become Ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Minimum Kubernetes version (CEL validation rules in CRDs, with messages).
pub const MIN_KUBERNETES: (u32, u32) = (1, 30);

/// Tests of one binary run one at a time (one operator per test; see the crate docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The workspace root (`tests/e2e/../..`).
pub fn workspace_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// A path the user gave in an environment variable. Cargo runs the tests in the package
/// directory (`tests/e2e`), not where `cargo test` was typed, so a relative path is tried
/// against the current directory and then the workspace root. Absolute when it exists.
pub fn user_path(p: &Path) -> PathBuf {
    let found = if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        let at_root = workspace_root().join(p);
        if at_root.exists() {
            at_root
        } else {
            p.to_path_buf()
        }
    };
    found.canonicalize().unwrap_or(found)
}

/// Installs the process-wide rustls crypto provider (ring) once; reqwest is built
/// without a default provider in this workspace.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Multiplies a timeout by `CERTUS_E2E_TIMEOUT_SCALE` (default 1).
pub fn scaled(timeout: Duration) -> Duration {
    let scale = std::env::var(ENV_TIMEOUT_SCALE)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    timeout.mul_f64(scale)
}

/// Writes one line to the real stderr, bypassing libtest's output capture (so the skip
/// notice is visible without `--nocapture`).
fn notice(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// The line a test prints when it is skipped.
pub fn skip_message(test: &str) -> String {
    format!(
        "SKIPPED e2e {test}: {ENV_KUBECONFIG} is not set (path to a kubeconfig of a Kubernetes >= {}.{} cluster); see README \"End-to-end tests\" (tests/e2e/README.md)",
        MIN_KUBERNETES.0, MIN_KUBERNETES.1
    )
}

/// The result of one check of a condition that is polled.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; stop polling.
    Done(T),
    /// Not yet; the string describes what was observed (shown on timeout).
    Pending(String),
}

/// A condition of an object's `status.conditions`, read generically from JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionView {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// The condition of type `type_` in `obj.status.conditions`.
pub fn condition(obj: &Value, type_: &str) -> Option<ConditionView> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"].as_str() == Some(type_))
        .map(|c| ConditionView {
            type_: type_.to_string(),
            status: c["status"].as_str().unwrap_or_default().to_string(),
            reason: c["reason"].as_str().unwrap_or_default().to_string(),
            message: c["message"].as_str().unwrap_or_default().to_string(),
            observed_generation: c["observedGeneration"].as_i64(),
        })
}

/// Whether the status of `obj` was computed for its current `metadata.generation`:
/// `status.observedGeneration` and the condition's `observedGeneration`, where present,
/// equal it.
pub fn status_is_current(obj: &Value, cond: Option<&ConditionView>) -> bool {
    let Some(generation) = obj["metadata"]["generation"].as_i64() else {
        return true;
    };
    let status_ok = obj["status"]["observedGeneration"]
        .as_i64()
        .is_none_or(|g| g == generation);
    let cond_ok = cond
        .and_then(|c| c.observed_generation)
        .is_none_or(|g| g == generation);
    status_ok && cond_ok
}

/// Parses a multi-document YAML stream into JSON values (empty documents are skipped).
pub fn parse_yaml_documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("YAML document {}", i + 1))?;
        if v.is_null() {
            continue;
        }
        out.push(
            serde_json::to_value(v).with_context(|| format!("YAML document {} as JSON", i + 1))?,
        );
    }
    Ok(out)
}

/// A kind the suite knows from the CRDs it installed.
#[derive(Clone, Debug)]
pub struct CrdKind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

#[derive(Default)]
struct Tracked {
    /// Cluster-scoped objects the test applied (deleted during cleanup).
    cluster_objects: Vec<(ApiResource, String)>,
    /// Vault paths to `DELETE` during cleanup (e.g. `sys/mounts/<path>`).
    vault_paths: Vec<String>,
}

/// One end-to-end test's world: cluster client, namespace, operator process, Vault.
pub struct E2e {
    test: String,
    ns: String,
    client: Client,
    config: Config,
    kubeconfig: PathBuf,
    vault: Vault,
    kinds: Vec<CrdKind>,
    operator: Option<Operator>,
    tracked: Mutex<Tracked>,
    started: Instant,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Debug for E2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2e")
            .field("test", &self.test)
            .field("namespace", &self.ns)
            .field("vault", &self.vault)
            .field("operator", &self.operator)
            .finish()
    }
}

impl E2e {
    /// Sets up the world for test `test`, or returns `None` (after printing one
    /// `SKIPPED e2e <test>: …` line) when `CERTUS_E2E_KUBECONFIG` is not set. Panics with
    /// a clear message when the variable is set but the setup fails.
    pub async fn start(test: &str) -> Option<E2e> {
        Self::start_inner(test, true).await
    }

    /// Like [`E2e::start`] but starts no operator and creates no `VaultConnection`: the
    /// test starts its operators with [`E2e::start_operator`] (e.g. two with leader
    /// election, or one with restricted permissions), makes one of them the main one with
    /// [`E2e::set_operator`] (checked by [`E2e::eventually`], and running the finalizers
    /// during cleanup) and calls [`E2e::connect_vault`].
    pub async fn start_without_operator(test: &str) -> Option<E2e> {
        Self::start_inner(test, false).await
    }

    async fn start_inner(test: &str, operator: bool) -> Option<E2e> {
        let Some(kubeconfig) = std::env::var_os(ENV_KUBECONFIG).filter(|v| !v.is_empty()) else {
            notice(&skip_message(test));
            return None;
        };
        match Self::setup(test, user_path(Path::new(&kubeconfig)), operator).await {
            Ok(e2e) => Some(e2e),
            Err(e) => panic!("e2e {test}: setup failed: {e:#}"),
        }
    }

    async fn setup(test: &str, kubeconfig: PathBuf, start_operator: bool) -> Result<E2e> {
        let serial = match SERIAL.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                eprintln!("e2e {test}: waiting for the running e2e test to finish (one operator at a time)");
                SERIAL.lock().await
            }
        };
        let started = Instant::now();
        install_crypto_provider();
        if !kubeconfig.is_file() {
            bail!("{ENV_KUBECONFIG}={} is not a file", kubeconfig.display());
        }

        let venv = vault_env()?;
        let vault = Vault::new(&venv)?;
        vault.check_usable().await?;
        eprintln!("e2e {test}: Vault {} (from {})", venv.addr, venv.source);

        let kc = Kubeconfig::read_from(&kubeconfig)
            .with_context(|| format!("reading {ENV_KUBECONFIG}={}", kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading {ENV_KUBECONFIG}={}", kubeconfig.display()))?;
        let client = Client::try_from(config.clone()).context("building the Kubernetes client")?;
        let info = client.apiserver_version().await.with_context(|| {
            format!(
                "asking the API server at {} for its version (is the cluster up?)",
                config.cluster_url
            )
        })?;
        check_version(&info.major, &info.minor)?;
        eprintln!(
            "e2e {test}: cluster {} ({})",
            config.cluster_url, info.git_version
        );

        let bin = operator::binary()?;
        let kinds = install_crds(&client).await?;
        warn_leftover_namespaces(&client).await;

        let ns = create_namespace(&client, test).await?;
        let log = operator::profile_dir()?
            .join("certus-e2e-logs")
            .join(&ns)
            .join("operator.log");
        // From here on, Drop cleans up whatever happens.
        let mut e2e = E2e {
            test: test.to_string(),
            ns,
            client,
            config,
            kubeconfig,
            vault,
            kinds,
            operator: None,
            tracked: Mutex::new(Tracked::default()),
            started,
            _serial: serial,
        };
        if start_operator {
            e2e.operator = Some(Operator::start(&bin, &e2e.kubeconfig, &log)?);
            e2e.connect_vault().await?;
        }
        eprintln!(
            "e2e {test}: ready in {:.1}s: namespace {}, operator log {}",
            e2e.started.elapsed().as_secs_f64(),
            e2e.ns,
            log.display()
        );
        Ok(e2e)
    }

    /// Creates the token Secret and the `VaultConnection` `default`, and waits for it to
    /// be `Ready=True` (done by [`E2e::start`]).
    pub async fn connect_vault(&self) -> Result<()> {
        self.apply_vault_connection().await?;
        let env = self.vault.env();
        let waited = self
            .wait_ready::<certus_api::VaultConnection>(CONNECTION_NAME, READY_TIMEOUT)
            .await;
        match waited {
            Ok(_) => Ok(()),
            Err(e) if self.operator.as_ref().is_some_and(|o| o.exited().is_some()) => Err(e),
            Err(e) => Err(e.context(format!(
                "VaultConnection {}/{CONNECTION_NAME} (address {}, token from Secret {TOKEN_SECRET}) did not become Ready. The operator runs on this machine and must reach that address; is another certus operator (in-cluster or another run) holding the leader lease or reconciling this cluster?",
                self.ns, env.addr
            ))),
        }
    }

    /// Creates the token Secret and the `VaultConnection` `default` without waiting.
    pub async fn apply_vault_connection(&self) -> Result<()> {
        let env = self.vault.env();
        let mut secret = Secret::default();
        secret.metadata.name = Some(TOKEN_SECRET.into());
        secret.type_ = Some("Opaque".into());
        secret.data = Some(
            [(
                "token".to_string(),
                ByteString(env.token.clone().into_bytes()),
            )]
            .into_iter()
            .collect(),
        );
        self.apply(&secret).await?;
        let mut spec = json!({
            "address": env.addr,
            "timeout": "10s",
            "auth": { "token": { "secretRef": { "name": TOKEN_SECRET, "key": "token" } } },
        });
        if let Some(ca) = &env.ca_pem {
            spec["tls"] = json!({ "caBundle": ca });
        }
        self.apply_value(json!({
            "apiVersion": certus_api::API_VERSION,
            "kind": "VaultConnection",
            "metadata": { "name": CONNECTION_NAME },
            "spec": spec,
        }))
        .await?;
        Ok(())
    }

    // ---- accessors ------------------------------------------------------------------

    /// The test's name.
    pub fn test(&self) -> &str {
        &self.test
    }

    /// The test namespace (`certus-e2e-xxxxxx`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// A Kubernetes client for the cluster.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The client configuration of the cluster (API server URL, CA certificates), e.g.
    /// to configure a Vault Kubernetes auth method for this cluster.
    pub fn kube_config(&self) -> &Config {
        &self.config
    }

    /// The Vault the operator reconciles into, for direct checks.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The operator's log file.
    pub fn operator_log(&self) -> Option<&Path> {
        self.operator.as_ref().map(|o| o.log_path())
    }

    /// The main operator (the one [`E2e::eventually`] checks and cleanup relies on).
    pub fn operator(&self) -> Option<&Operator> {
        self.operator.as_ref()
    }

    /// Makes `op` the main operator; returns the previous one.
    pub fn set_operator(&mut self, op: Operator) -> Option<Operator> {
        self.operator.replace(op)
    }

    /// Takes the main operator away (e.g. to kill it on purpose).
    pub fn take_operator(&mut self) -> Option<Operator> {
        self.operator.take()
    }

    /// The kubeconfig of the cluster (`$CERTUS_E2E_KUBECONFIG`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Starts one more `certus-vault run` with `args` (after `$CERTUS_E2E_OPERATOR_ARGS`),
    /// logging to `<logs>/<namespace>/<label>.log`, with `kubeconfig` (default: the
    /// cluster's). The caller owns it (dropping it stops it); see [`E2e::set_operator`].
    pub fn start_operator(
        &self,
        label: &str,
        args: &[&str],
        kubeconfig: Option<&Path>,
    ) -> Result<Operator> {
        let log = operator::profile_dir()?
            .join("certus-e2e-logs")
            .join(&self.ns)
            .join(format!("{label}.log"));
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Operator::start_with(
            &operator::binary()?,
            kubeconfig.unwrap_or(&self.kubeconfig),
            &log,
            &args,
        )
    }

    /// Writes (mode 0600, next to the test's logs) a kubeconfig that is the cluster's
    /// with impersonation of ServiceAccount `namespace/name` (`as`, `as-groups`), so a
    /// process using it has exactly that ServiceAccount's permissions. The cluster's own
    /// user must be allowed to impersonate (cluster-admin is).
    pub fn impersonating_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let kc = impersonate_service_account(kc, namespace, name)?;
        let path = operator::profile_dir()?
            .join("certus-e2e-logs")
            .join(&self.ns)
            .join(format!("kubeconfig-as-{namespace}-{name}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_yaml::to_string(&kc).context("serializing the kubeconfig")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(path)
    }

    /// The kinds of the installed CRDs.
    pub fn crd_kinds(&self) -> &[CrdKind] {
        &self.kinds
    }

    /// A typed API for namespaced kind `K` in the test namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn dyn_api<K>(&self) -> Api<DynamicObject>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced_with(self.client.clone(), &self.ns, &ApiResource::erase::<K>(&()))
    }

    /// Registers a Vault path to `DELETE` during cleanup (mounts, auth methods, roles…
    /// that a scenario creates or expects the operator to create). ACL policies whose
    /// name starts with `<namespace>.` or `<namespace>-` are deleted anyway.
    pub fn cleanup_vault_path(&self, path: impl Into<String>) {
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .vault_paths
            .push(path.into());
    }

    fn operator_excerpt(&self, lines: usize) -> String {
        self.operator
            .as_ref()
            .map(|o| o.log_excerpt(lines))
            .unwrap_or_else(|| "(operator not started)".into())
    }

    // ---- writing objects ------------------------------------------------------------

    /// Applies every document of a YAML stream (server-side apply, field manager
    /// `certus-e2e`, forced) in order. `${E2E_NAMESPACE}` and `${VAULT_ADDR}` are
    /// substituted first. Namespaced objects without a namespace go into the test
    /// namespace; naming another namespace is an error. Cluster-scoped objects are
    /// deleted during cleanup.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<Vec<DynamicObject>> {
        let text = yaml
            .replace(NAMESPACE_VAR, &self.ns)
            .replace(VAULT_ADDR_VAR, self.vault.addr());
        let mut out = Vec::new();
        for doc in parse_yaml_documents(&text)? {
            out.push(self.apply_value(doc).await?);
        }
        Ok(out)
    }

    /// Applies one typed object (see [`E2e::apply_yaml`]) and returns the server's version.
    pub async fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        let applied = self
            .apply_value(serde_json::to_value(obj).context("serializing the object")?)
            .await?;
        applied
            .try_parse::<K>()
            .context("parsing the applied object")
    }

    /// Applies one object given as JSON (must carry `apiVersion`, `kind`, `metadata.name`).
    pub async fn apply_value(&self, value: Value) -> Result<DynamicObject> {
        let (api, obj, name) = self.prepare(value).await?;
        let what = describe(&obj, &name);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying {what}"))
    }

    /// Creates one object (`POST`) and returns the API server's rejection, if any, as
    /// the inner error: `Ok(Err(status))` for a 4xx/5xx answer with a Status body.
    pub async fn try_create<K>(&self, obj: &K) -> Result<std::result::Result<K, Box<Status>>>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        let (api, obj, _name) = self
            .prepare(serde_json::to_value(obj).context("serializing the object")?)
            .await?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(created) => Ok(Ok(created
                .try_parse::<K>()
                .context("parsing the created object")?)),
            Err(kube::Error::Api(status)) => Ok(Err(status)),
            Err(e) => Err(e).context("creating an object"),
        }
    }

    /// JSON-merge-patches object `name`, returning the API server's rejection as the
    /// inner error.
    pub async fn try_patch<K>(
        &self,
        name: &str,
        patch: &Value,
    ) -> Result<std::result::Result<K, Box<Status>>>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        match self
            .api::<K>()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(obj) => Ok(Ok(obj)),
            Err(kube::Error::Api(status)) => Ok(Err(status)),
            Err(e) => Err(e).with_context(|| format!("patching {} {name}", K::kind(&()))),
        }
    }

    async fn prepare(&self, value: Value) -> Result<(Api<DynamicObject>, DynamicObject, String)> {
        let types: TypeMeta = serde_json::from_value(json!({
            "apiVersion": value["apiVersion"],
            "kind": value["kind"],
        }))
        .context("the object needs apiVersion and kind")?;
        let gvk = GroupVersionKind::try_from(&types)
            .with_context(|| format!("apiVersion {:?}", types.api_version))?;
        let mut obj: DynamicObject =
            serde_json::from_value(value).context("the object is not a Kubernetes object")?;
        let name = obj
            .metadata
            .name
            .clone()
            .with_context(|| format!("a {} without metadata.name", gvk.kind))?;
        let (resource, namespaced) = self.resolve(&gvk).await?;
        let api = if namespaced {
            match obj.metadata.namespace.as_deref() {
                None => obj.metadata.namespace = Some(self.ns.clone()),
                Some(n) if n == self.ns => {}
                Some(other) => bail!(
                    "{} {name} names namespace {other}; e2e objects live in the test namespace {} (use {NAMESPACE_VAR} or leave it out)",
                    gvk.kind,
                    self.ns
                ),
            }
            Api::namespaced_with(self.client.clone(), &self.ns, &resource)
        } else {
            {
                let mut t = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
                if !t
                    .cluster_objects
                    .iter()
                    .any(|(r, n)| r == &resource && n == &name)
                {
                    t.cluster_objects.push((resource.clone(), name.clone()));
                }
            }
            Api::all_with(self.client.clone(), &resource)
        };
        Ok((api, obj, name))
    }

    /// The API resource and scope of a kind: from the installed CRDs, else discovery.
    async fn resolve(&self, gvk: &GroupVersionKind) -> Result<(ApiResource, bool)> {
        if let Some(k) = self.kinds.iter().find(|k| {
            k.resource.group == gvk.group
                && k.resource.version == gvk.version
                && k.resource.kind == gvk.kind
        }) {
            return Ok((k.resource.clone(), k.namespaced));
        }
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, gvk)
            .await
            .with_context(|| format!("discovering {}/{}", gvk.api_version(), gvk.kind))?;
        Ok((resource, caps.scope == Scope::Namespaced))
    }

    /// Deletes object `name` (absent is fine). Does not wait; see [`E2e::wait_gone`].
    pub async fn delete<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match self
            .dyn_api::<K>()
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {} {name}", K::kind(&()))),
        }
    }

    /// Sets the annotation `vault.certus.io/reconcile-at` to the current time. Any
    /// metadata change produces a watch event, so the operator reconciles the object now
    /// instead of at its next periodic resync.
    pub async fn trigger_reconcile<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        self.dyn_api::<K>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "metadata": { "annotations": { RECONCILE_ANNOTATION: now } } }),
                ),
            )
            .await
            .with_context(|| format!("annotating {} {name}", K::kind(&())))?;
        eprintln!(
            "e2e {}: annotated {} {name} with {RECONCILE_ANNOTATION}={now}",
            self.test,
            K::kind(&())
        );
        Ok(())
    }

    // ---- reading and waiting ----------------------------------------------------------

    /// Reads object `name`, `None` when it does not exist.
    pub async fn get_opt<K>(&self, name: &str) -> Result<Option<K>>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned,
    {
        match self
            .dyn_api::<K>()
            .get_opt(name)
            .await
            .with_context(|| format!("reading {} {name}", K::kind(&())))?
        {
            None => Ok(None),
            Some(obj) => Ok(Some(parse_typed::<K>(obj)?)),
        }
    }

    /// Polls `check` (about every 0.25–2 s) until it returns [`Check::Done`], failing
    /// after `timeout` (scaled by `CERTUS_E2E_TIMEOUT_SCALE`) with the last observation
    /// and the end of the operator's log. Errors from `check` count as "not yet" (the
    /// last one is shown). Fails at once when the operator process has exited.
    pub async fn eventually<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Result<Check<T>>,
    ) -> Result<T> {
        let timeout = scaled(timeout);
        let start = Instant::now();
        let mut last: String;
        let mut pause = Duration::from_millis(250);
        loop {
            if let Some(op) = &self.operator {
                op.ensure_running()
                    .with_context(|| format!("while waiting for {what}"))?;
            }
            match check().await {
                Ok(Check::Done(t)) => {
                    eprintln!(
                        "e2e {}: {what}: ok after {:.1}s",
                        self.test,
                        start.elapsed().as_secs_f64()
                    );
                    return Ok(t);
                }
                Ok(Check::Pending(seen)) => last = seen,
                Err(e) => last = format!("error: {e:#}"),
            }
            if start.elapsed() >= timeout {
                bail!(
                    "timed out after {}s waiting for {what}\nlast observed: {last}\n{}",
                    timeout.as_secs(),
                    self.operator_excerpt(40)
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn wait_json<K>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned,
    {
        let api = self.dyn_api::<K>();
        let what = format!("{} {}/{name}: {what}", K::kind(&()), self.ns);
        let result = self
            .eventually(&what, timeout, async || {
                let Some(obj) = api.get_opt(name).await? else {
                    return Ok(Check::Pending("the object does not exist".into()));
                };
                let v = serde_json::to_value(&obj)?;
                if pred(&v) {
                    Ok(Check::Done(obj))
                } else {
                    Ok(Check::Pending(summary(&v)))
                }
            })
            .await;
        match result {
            Ok(obj) => parse_typed::<K>(obj),
            Err(e) => Err(self.with_events(e, K::kind(&()).as_ref(), name).await),
        }
    }

    /// Waits until condition `type_` has `status` (and `reason`, when given) and the
    /// status was computed for the object's current generation.
    pub async fn wait_condition<K>(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned,
    {
        let what = match reason {
            Some(r) => format!("{type_}={status} reason {r} for the current generation"),
            None => format!("{type_}={status} for the current generation"),
        };
        self.wait_json::<K>(name, &what, timeout, |v| {
            let c = condition(v, type_);
            c.as_ref()
                .is_some_and(|c| c.status == status && reason.is_none_or(|r| c.reason == r))
                && status_is_current(v, c.as_ref())
        })
        .await
    }

    /// Waits until `Ready=True` for the current generation.
    pub async fn wait_ready<K>(&self, name: &str, timeout: Duration) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned,
    {
        self.wait_condition::<K>(name, "Ready", "True", None, timeout)
            .await
    }

    /// Waits until `pred` holds for the typed object.
    pub async fn wait_for<K>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&K) -> bool,
    ) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned,
    {
        self.wait_json::<K>(name, what, timeout, |v| {
            serde_json::from_value::<K>(v.clone()).is_ok_and(|k| pred(&k))
        })
        .await
    }

    /// Waits until object `name` no longer exists (finalizers released).
    pub async fn wait_gone<K>(&self, name: &str, timeout: Duration) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        let api = self.dyn_api::<K>();
        let what = format!(
            "{} {}/{name} to be gone (finalizers released)",
            K::kind(&()),
            self.ns
        );
        let result = self
            .eventually(&what, timeout, async || match api.get_opt(name).await? {
                None => Ok(Check::Done(())),
                Some(obj) => Ok(Check::Pending(summary(&serde_json::to_value(&obj)?))),
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.with_events(e, K::kind(&()).as_ref(), name).await),
        }
    }

    /// Appends the events of an object to an error.
    async fn with_events(&self, e: anyhow::Error, kind: &str, name: &str) -> anyhow::Error {
        let events = self
            .events_named(kind, name)
            .await
            .map(|evs| format_events(&evs))
            .unwrap_or_else(|e| format!("(cannot list events: {e:#})"));
        anyhow!("{e:#}\nevents of {kind} {name}:\n{events}")
    }

    /// Events (core/v1, which also shows events.k8s.io/v1 ones) about `obj`, matched by
    /// UID, oldest first.
    pub async fn events_for<K>(&self, obj: &K) -> Result<Vec<Event>>
    where
        K: Resource<DynamicType = ()>,
    {
        let uid = obj.meta().uid.clone();
        let kind = K::kind(&()).to_string();
        let name = obj.name_any();
        Ok(self
            .events()
            .await?
            .into_iter()
            .filter(|e| match &uid {
                Some(uid) => e.involved_object.uid.as_deref() == Some(uid.as_str()),
                None => {
                    e.involved_object.kind.as_deref() == Some(kind.as_str())
                        && e.involved_object.name.as_deref() == Some(name.as_str())
                }
            })
            .collect())
    }

    /// Events about the object of kind `kind` named `name` (any UID), oldest first.
    pub async fn events_named(&self, kind: &str, name: &str) -> Result<Vec<Event>> {
        Ok(self
            .events()
            .await?
            .into_iter()
            .filter(|e| {
                e.involved_object.kind.as_deref() == Some(kind)
                    && e.involved_object.name.as_deref() == Some(name)
            })
            .collect())
    }

    async fn events(&self) -> Result<Vec<Event>> {
        let mut events = Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .context("listing events")?
            .items;
        events.sort_by_key(event_time);
        Ok(events)
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        let tracked = std::mem::take(&mut *self.tracked.lock().unwrap_or_else(|p| p.into_inner()));
        cleanup::Cleanup {
            test: self.test.clone(),
            ns: self.ns.clone(),
            config: self.config.clone(),
            vault: self.vault.env().clone(),
            kinds: self.kinds.clone(),
            cluster_objects: tracked.cluster_objects,
            vault_paths: tracked.vault_paths,
            operator: self.operator.take(),
        }
        .run_blocking();
        eprintln!(
            "e2e {}: finished in {:.1}s",
            self.test,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// `kc` reduced to its current context, whose user impersonates ServiceAccount
/// `namespace/name` with the groups Kubernetes gives ServiceAccounts.
pub fn impersonate_service_account(
    mut kc: Kubeconfig,
    namespace: &str,
    name: &str,
) -> Result<Kubeconfig> {
    let context_name = kc
        .current_context
        .clone()
        .context("the kubeconfig has no current-context")?;
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .with_context(|| format!("the kubeconfig has no context {context_name}"))?;
    let user_name = context
        .user
        .clone()
        .context("the current context names no user")?;
    let mut user = kc
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .with_context(|| format!("the kubeconfig has no user {user_name}"))?
        .clone();
    let auth = user.auth_info.get_or_insert_with(Default::default);
    auth.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    auth.impersonate_groups = Some(vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_string(),
    ]);
    kc.auth_infos = vec![user];
    kc.contexts.retain(|c| c.name == context_name);
    kc.clusters.retain(|c| c.name == context.cluster);
    Ok(kc)
}

fn vault_env() -> Result<VaultEnv> {
    static ENV: OnceLock<std::result::Result<VaultEnv, String>> = OnceLock::new();
    ENV.get_or_init(|| VaultEnv::resolve(&workspace_root()).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn check_version(major: &str, minor: &str) -> Result<()> {
    let num = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (num(major), num(minor)) {
        (Some(ma), Some(mi)) if (ma, mi) >= MIN_KUBERNETES => Ok(()),
        (Some(ma), Some(mi)) => bail!(
            "the cluster runs Kubernetes {ma}.{mi}; the suite needs >= {}.{} (CRD validation rules with messages)",
            MIN_KUBERNETES.0,
            MIN_KUBERNETES.1
        ),
        _ => {
            eprintln!("e2e: cannot parse the Kubernetes version {major:?}.{minor:?}; going on");
            Ok(())
        }
    }
}

/// The CRDs to install: the checked-in `crds/*.yaml` (what users install), plus any CRD
/// `certus_api::all_crds()` generates that `crds/` lacks (with a note: `crds/` is stale,
/// regenerate it with `make crds`), so the operator finds every CRD it waits for.
fn crd_documents() -> Result<Vec<Value>> {
    let dir = workspace_root().join("crds");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect(),
        Err(_) => vec![],
    };
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        for d in parse_yaml_documents(&text).with_context(|| format!("parsing {}", f.display()))? {
            if d["kind"] == "CustomResourceDefinition" {
                docs.push(d);
            }
        }
    }
    let mut missing = Vec::new();
    for crd in certus_api::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        if !docs.iter().any(|d| d["metadata"]["name"] == name.as_str()) {
            docs.push(serde_json::to_value(crd).context("serializing a generated CRD")?);
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        eprintln!(
            "e2e: NOTE: {} lacks {} (stale? regenerate with `make crds`); installing the generated CRDs for them",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(docs)
}

/// Server-side applies the CRDs and waits until each is Established.
async fn install_crds(client: &Client) -> Result<Vec<CrdKind>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let docs = crd_documents()?;
    let mut names = Vec::new();
    for doc in &docs {
        let name = doc["metadata"]["name"]
            .as_str()
            .context("a CRD without metadata.name")?
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(doc),
        )
        .await
        .with_context(|| format!("installing CRD {name} (server-side apply)"))?;
        names.push(name);
    }
    let mut kinds = Vec::new();
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    for name in &names {
        loop {
            let crd = api
                .get(name)
                .await
                .with_context(|| format!("reading CRD {name}"))?;
            let conds = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if conds
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
            {
                kinds.extend(crd_kinds(&crd));
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "CRD {name} is not Established after 60s; conditions: {}",
                    serde_json::to_string(&conds).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!("e2e: CRDs installed and Established: {}", names.join(", "));
    Ok(kinds)
}

fn crd_kinds(crd: &CustomResourceDefinition) -> Vec<CrdKind> {
    let spec = &crd.spec;
    spec.versions
        .iter()
        .filter(|v| v.served)
        .map(|v| CrdKind {
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(&spec.group, &v.name, &spec.names.kind),
                &spec.names.plural,
            ),
            namespaced: spec.scope == "Namespaced",
        })
        .collect()
}

async fn warn_leftover_namespaces(client: &Client) {
    let api: Api<Namespace> = Api::all(client.clone());
    let Ok(list) = api
        .list(&ListParams::default().labels(&format!("{E2E_LABEL}=true")))
        .await
    else {
        return;
    };
    if list.items.is_empty() {
        return;
    }
    let names: Vec<String> = list
        .items
        .iter()
        .map(|n| {
            let phase = n
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            format!("{} ({phase})", n.name_any())
        })
        .collect();
    eprintln!(
        "e2e: NOTE: namespaces left by earlier or concurrent runs: {}. If no other run is in progress, remove them with: kubectl delete ns -l {E2E_LABEL}=true",
        names.join(", ")
    );
}

/// A label value made from a test name (`[A-Za-z0-9._-]`, at most 63, alphanumeric ends).
fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// `certus-e2e-` and six random lower-case letters or digits.
pub fn random_namespace_name() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..6)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{NAMESPACE_PREFIX}{suffix}")
}

async fn create_namespace(client: &Client, test: &str) -> Result<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    for _ in 0..5 {
        let name = random_namespace_name();
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": { E2E_LABEL: "true", TEST_LABEL: label_value(test) },
            }
        }))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {
                eprintln!("e2e {test}: created namespace {name}");
                return Ok(name);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
        }
    }
    bail!("could not find a free namespace name after 5 tries")
}

fn parse_typed<K: Resource + DeserializeOwned>(obj: DynamicObject) -> Result<K> {
    let v = serde_json::to_value(&obj)?;
    serde_json::from_value::<K>(v.clone()).with_context(|| {
        format!(
            "the {} does not match the Rust type (CRD and certus-api out of step?): {}",
            obj.types
                .as_ref()
                .map(|t| t.kind.as_str())
                .unwrap_or("object"),
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )
    })
}

/// `generation`, deletion state, finalizers and `status` of an object, for messages.
pub fn summary(v: &Value) -> String {
    let m = &v["metadata"];
    let mut s = format!("generation {}", m["generation"]);
    if !m["deletionTimestamp"].is_null() {
        s.push_str(&format!(", deleting since {}", m["deletionTimestamp"]));
    }
    if let Some(f) = m["finalizers"].as_array().filter(|f| !f.is_empty()) {
        s.push_str(&format!(", finalizers {}", Value::Array(f.clone())));
    }
    s.push_str(&format!(
        ", status: {}",
        serde_json::to_string_pretty(&v["status"]).unwrap_or_default()
    ));
    s
}

fn event_time(e: &Event) -> String {
    e.last_timestamp
        .as_ref()
        .map(|t| format!("{:?}", t.0))
        .or_else(|| e.event_time.as_ref().map(|t| format!("{:?}", t.0)))
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| format!("{:?}", t.0))
        })
        .unwrap_or_default()
}

/// One line per event: `Type Reason (xN): message`.
pub fn format_events(events: &[Event]) -> String {
    if events.is_empty() {
        return "  (none)".into();
    }
    events
        .iter()
        .map(|e| {
            format!(
                "  {} {} (x{}): {}",
                e.type_.as_deref().unwrap_or("?"),
                e.reason.as_deref().unwrap_or("?"),
                e.count
                    .or_else(|| e.series.as_ref().and_then(|s| s.count))
                    .unwrap_or(1),
                e.message.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe(obj: &DynamicObject, name: &str) -> String {
    let kind = obj
        .types
        .as_ref()
        .map(|t| t.kind.as_str())
        .unwrap_or("object");
    match &obj.metadata.namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_valid_and_random() {
        let a = random_namespace_name();
        let b = random_namespace_name();
        assert_eq!(a.len(), NAMESPACE_PREFIX.len() + 6);
        assert!(a.starts_with(NAMESPACE_PREFIX));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(a, b);
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(
            label_value("vault_policy_lifecycle"),
            "vault_policy_lifecycle"
        );
        assert_eq!(label_value("a::b c_"), "a--b-c");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn yaml_streams_skip_empty_documents() {
        let docs = parse_yaml_documents("---\n# only a comment\n---\na: 1\n---\nb: [x]\n").unwrap();
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": ["x"]})]);
    }

    #[test]
    fn conditions_and_generations_are_read_generically() {
        let v = json!({
            "metadata": { "generation": 3 },
            "status": {
                "observedGeneration": 3,
                "conditions": [
                    { "type": "Ready", "status": "False", "reason": "Conflict", "message": "m", "observedGeneration": 2 }
                ]
            }
        });
        let c = condition(&v, "Ready").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Conflict")
        );
        assert!(
            !status_is_current(&v, Some(&c)),
            "condition is for generation 2"
        );
        assert!(status_is_current(&v, None));
        assert!(condition(&v, "Drifted").is_none());
    }

    #[test]
    fn the_skip_message_says_what_to_set() {
        let m = skip_message("vault_policy_lifecycle");
        assert!(
            m.starts_with("SKIPPED e2e vault_policy_lifecycle: CERTUS_E2E_KUBECONFIG is not set")
        );
        assert!(m.contains(">= 1.30"));
        assert!(m.contains("End-to-end tests"));
    }

    #[test]
    fn impersonation_keeps_the_credentials_and_adds_as() {
        let kc = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\ncurrent-context: admin@kind\nclusters:\n- name: kind\n  cluster: {server: \"https://127.0.0.1:6443\", certificate-authority-data: Q0E=}\n- name: other\n  cluster: {server: \"https://10.0.0.1\"}\ncontexts:\n- name: admin@kind\n  context: {cluster: kind, user: admin}\n- name: other\n  context: {cluster: other, user: other}\nusers:\n- name: admin\n  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}\n- name: other\n  user: {token: t}\n",
        )
        .unwrap();
        let kc =
            impersonate_service_account(kc, "certus-e2e-abc123", "certus-vault-operator").unwrap();
        let text = serde_yaml::to_string(&kc).unwrap();
        let back = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(back.auth_infos.len(), 1);
        let auth = back.auth_infos[0].auth_info.clone().unwrap();
        assert_eq!(
            auth.impersonate.as_deref(),
            Some("system:serviceaccount:certus-e2e-abc123:certus-vault-operator")
        );
        assert_eq!(
            auth.impersonate_groups.unwrap(),
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:certus-e2e-abc123",
                "system:authenticated"
            ]
        );
        assert!(auth.client_key_data.is_some(), "the credentials are kept");
        assert!(text.contains("as: system:serviceaccount:"), "{text}");
        assert_eq!(back.clusters.len(), 1);
        assert_eq!(back.current_context.as_deref(), Some("admin@kind"));
    }

    #[test]
    fn metrics_are_read_from_the_text_format() {
        let text = "# TYPE certus_leader gauge\ncertus_leader 1\ncertus_controller_reconciles_total{kind=\"VaultPolicy\"} 3\n# EOF\n";
        assert_eq!(operator::metric_value(text, "certus_leader"), Some(1.0));
        assert_eq!(
            operator::metric_value(
                text,
                "certus_controller_reconciles_total{kind=\"VaultPolicy\"}"
            ),
            Some(3.0)
        );
        assert_eq!(operator::metric_value(text, "certus_lead"), None);
        let args: Vec<String> = ["--leader-election", "--metrics-addr", "127.0.0.1:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            operator::metrics_addr_arg(&args).as_deref(),
            Some("127.0.0.1:1")
        );
        assert_eq!(
            operator::metrics_addr_arg(&["--metrics-addr=0.0.0.0:9".to_string()]).as_deref(),
            Some("0.0.0.0:9")
        );
        assert_eq!(operator::metrics_addr_arg(&[]), None);
    }

    #[test]
    fn every_generated_crd_is_installed() {
        let docs = crd_documents().unwrap();
        for crd in certus_api::all_crds() {
            let name = crd.metadata.name.unwrap();
            assert!(
                docs.iter().any(|d| d["metadata"]["name"] == name.as_str()),
                "{name}"
            );
        }
    }
}
