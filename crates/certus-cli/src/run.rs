//! `certus-vault run`: the operator process.
//!
//! One process runs every controller ([`certus_controller::run`]) with one shared Vault
//! session cache, behind a leader election when `--leader-election` is on (only the
//! holder of the Lease reconciles; see [`certus_controller::leader`]), and serves
//! `/metrics`, `/livez` and `/readyz` ([`certus_controller::server`]).
//!
//! SIGTERM or Ctrl-C: the controllers finish their in-flight reconciles, the login tokens
//! of the operator are revoked (dynamic credentials are not: they must survive a
//! restart), the Lease is released so a standby takes over at once, and the process exits
//! 0. A second signal exits at once (code 130).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use certus_controller::leader::{
    default_identity, KubeLeaseElector, LeaderElector, LeaderStatus, LeaseTimings, NoElection,
    StopSignal, SuperviseOptions,
};
use certus_controller::metrics::VaultStatsCollector;
use certus_controller::server::{self, Probes};
use certus_controller::token_store::KubeTokenStore;
use certus_controller::{Metrics, RunOptions, SharedSessions};
use certus_vault_client::SessionCache;
use clap::ArgAction;
use futures::FutureExt;
use kube::client::ClientBuilder;
use kube::Client;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// `certus-vault run` flags. Every flag also reads an environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Namespaces whose namespaced resources are watched, comma-separated. Empty: all
    /// namespaces. (ClusterVaultConnections are always watched cluster-wide.)
    #[arg(long, env = "CERTUS_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Reconciles that may run at the same time, per controller (0: unbounded).
    #[arg(long, env = "CERTUS_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: u16,

    /// How often a reconciled resource is compared with Vault again (drift detection).
    #[arg(long, env = "CERTUS_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// How often a VaultConnection is checked (reachability, seal state, login).
    #[arg(long, env = "CERTUS_CONNECTION_CHECK_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub connection_check_interval: Duration,

    /// How long the cleanup of a deleted resource is retried before its finalizer is
    /// released anyway (with a Warning Event).
    #[arg(long, env = "CERTUS_DELETION_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub deletion_timeout: Duration,

    /// Address of /metrics, /livez and /readyz (port 0: any free port, logged).
    #[arg(long, env = "CERTUS_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Run the controllers only while holding a coordination.k8s.io Lease, so several
    /// replicas can run (one reconciles, the others stand by). Off by default so a
    /// single local process needs no Lease permissions; the Helm chart turns it on.
    #[arg(
        long,
        env = "CERTUS_LEADER_ELECTION",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub leader_election: bool,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "CERTUS_LEASE_NAME",
        default_value = "certus-vault-operator"
    )]
    pub lease_name: String,

    /// Namespace of the leader Lease. Default: $POD_NAMESPACE, else the kubeconfig's
    /// namespace (in a cluster: the Pod's).
    #[arg(long, env = "CERTUS_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long the Lease stays valid after its last renewal (whole seconds, >= 2s). The
    /// holder renews it a third of this before expiry; a standby takes over within this
    /// time after the leader stops or loses its connection.
    #[arg(long, env = "CERTUS_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// Follow Vault's file audit device at this path (as mounted in the operator's Pod)
    /// and evaluate AuditAlertRules on it. Only the leader reads it; it resumes from the
    /// checkpoint ConfigMap. Without --audit-file and --audit-socket, AuditAlertRules are
    /// validated but not evaluated (Ready=False NoAuditSource).
    #[arg(long, env = "CERTUS_AUDIT_FILE")]
    pub audit_file: Option<std::path::PathBuf>,

    /// Serve Vault's socket audit device (socket_type "tcp", format "json") on this
    /// address, e.g. 0.0.0.0:9090 (leader only). Keep a file audit device configured in
    /// Vault too: Vault blocks every request when all its audit devices fail.
    #[arg(long, env = "CERTUS_AUDIT_SOCKET")]
    pub audit_socket: Option<SocketAddr>,

    /// ConfigMap, in the operator's namespace ($POD_NAMESPACE), that holds how far the
    /// audit file was read, so a restarted or new leader resumes without re-alerting.
    #[arg(long, env = "CERTUS_AUDIT_CHECKPOINT_CONFIGMAP", default_value = certus_controller::audit::DEFAULT_CHECKPOINT_CONFIGMAP)]
    pub audit_checkpoint_configmap: String,

    /// Keep the Vault login tokens (AppRole, Kubernetes auth) in Secrets
    /// `certus-vault-token-<hash>` of the operator's namespace ($POD_NAMESPACE), so a
    /// restarted operator or a new leader adopts the token that issued the leases and
    /// renews it, instead of logging in anew and re-issuing every DynamicCredential
    /// before the old token expires. `false`: tokens live in memory only.
    #[arg(
        long,
        env = "CERTUS_PERSIST_VAULT_TOKENS",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub persist_vault_tokens: bool,

    /// Namespace of the saved Vault login tokens (--persist-vault-tokens). Default:
    /// $POD_NAMESPACE, else the kubeconfig's namespace (in a cluster: the Pod's).
    #[arg(long, env = "CERTUS_VAULT_TOKEN_NAMESPACE")]
    pub vault_token_namespace: Option<String>,
}

/// Default of `--concurrency` (the same as `RunOptions::default()`).
pub const DEFAULT_CONCURRENCY: u16 = 8;

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (e.g. 30s, 5m, 1h)"))
}

impl Args {
    /// The controllers' options (metrics and sessions given).
    pub fn run_options(&self, metrics: Arc<Metrics>, sessions: Arc<SessionCache>) -> RunOptions {
        let mut namespaces: Vec<String> = self
            .namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        RunOptions {
            namespaces,
            concurrency: self.concurrency,
            resync_interval: self.resync_interval,
            connection_check_interval: self.connection_check_interval,
            deletion_timeout: self.deletion_timeout,
            metrics,
            sessions: SharedSessions(sessions),
            audit: certus_controller::audit::AuditConfig {
                file: self.audit_file.clone(),
                socket: self.audit_socket,
                checkpoint_configmap: self.audit_checkpoint_configmap.clone(),
                ..Default::default()
            },
            ..RunOptions::default()
        }
    }
}

/// The Lease namespace: the flag, else `$POD_NAMESPACE`, else `fallback` (the client
/// configuration's default namespace).
pub fn lease_namespace(flag: Option<&str>, pod_namespace: Option<&str>, fallback: &str) -> String {
    [flag, pod_namespace]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or(fallback)
        .to_string()
}

/// Resolves on the first SIGTERM or Ctrl-C; a second one exits the process at once.
fn shutdown_signal() -> futures::future::Shared<futures::future::BoxFuture<'static, ()>> {
    let (tx, rx) = tokio::sync::oneshot::channel::<&'static str>();
    tokio::spawn(async move {
        let first = next_signal().await;
        let _ = tx.send(first);
        let second = next_signal().await;
        warn!(signal = second, "second signal: exiting now");
        std::process::exit(130);
    });
    async move {
        if let Ok(signal) = rx.await {
            info!(signal, "shutting down");
        }
    }
    .boxed()
    .shared()
}

#[cfg(unix)]
async fn next_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn next_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

/// Runs the operator until SIGTERM/Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The process-wide rustls provider (ring) for the Vault and Kubernetes clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timings = if args.leader_election {
        Some(LeaseTimings::new(args.lease_duration).context("--lease-duration")?)
    } else {
        None
    };
    let shutdown = shutdown_signal();

    let config = kube::Config::infer().await.context(
        "loading the Kubernetes client configuration (in-cluster, $KUBECONFIG or ~/.kube/config)",
    )?;
    let client = Client::try_from(config.clone()).context("building the Kubernetes client")?;

    let metrics = Arc::new(Metrics::default());
    let sessions = Arc::new(if args.persist_vault_tokens {
        let namespace = lease_namespace(
            args.vault_token_namespace.as_deref(),
            std::env::var("POD_NAMESPACE").ok().as_deref(),
            &config.default_namespace,
        );
        info!(namespace = %namespace, "Vault login tokens are kept in Secrets {}<hash> (--persist-vault-tokens)", certus_controller::token_store::SECRET_PREFIX);
        SessionCache::with_token_store(Arc::new(KubeTokenStore::new(client.clone(), &namespace)))
    } else {
        SessionCache::new()
    });
    let mut opts = args.run_options(metrics.clone(), sessions.clone());
    let identity = default_identity();
    let status = Arc::new(LeaderStatus::new(identity.clone()));

    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // certus_audit_* (with --audit-file/--audit-socket): once per process, fed by every
    // leadership term.
    opts.audit.register_metrics(&mut registry);
    status.register(&mut registry);
    VaultStatsCollector::register(sessions.stats().clone(), &mut registry);
    let probes = Probes {
        registry: Arc::new(registry),
        metrics: metrics.clone(),
        leader: status.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "listening on --metrics-addr {} (taken? choose another address)",
                args.metrics_addr
            )
        })?;
    let metrics_addr = listener.local_addr().unwrap_or(args.metrics_addr);
    info!(addr = %metrics_addr, "serving /metrics, /livez and /readyz");
    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, probes, async move {
        let _ = server_stop_rx.await;
    }));

    // Keeps the operator's Vault tokens alive for as long as the process runs (also on a
    // standby that was leader before: tokens that issued leases must not expire).
    let (renewal_stop_tx, renewal_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let renewal = {
        let sessions = sessions.clone();
        tokio::spawn(async move {
            sessions
                .run_renewal(async move {
                    let _ = renewal_stop_rx.await;
                })
                .await
        })
    };

    let start = |stop: StopSignal| certus_controller::run(client.clone(), opts.clone(), stop);
    info!(
        identity = %identity,
        namespaces = %if opts.namespaces.is_empty() { "*".to_string() } else { opts.namespaces.join(",") },
        concurrency = opts.concurrency,
        resync = ?opts.resync_interval,
        leader_election = args.leader_election,
        "starting certus-vault-operator {}",
        env!("CARGO_PKG_VERSION")
    );
    let result = match timings {
        Some(timings) => {
            let namespace = lease_namespace(
                args.lease_namespace.as_deref(),
                std::env::var("POD_NAMESPACE").ok().as_deref(),
                &config.default_namespace,
            );
            // Short timeouts on the lease client: a renewal that hangs fails within the
            // renewal window instead of after kube's default 295 s.
            let mut lease_config = config.clone();
            lease_config.connect_timeout = Some(timings.renew_before);
            lease_config.read_timeout = Some(timings.renew_before);
            lease_config.write_timeout = Some(timings.renew_before);
            let builder = ClientBuilder::try_from(lease_config)
                .context("building the Kubernetes client of the leader Lease")?;
            let elector =
                KubeLeaseElector::new(builder, &namespace, &args.lease_name, &identity, timings);
            info!(
                lease = %format!("{namespace}/{}", args.lease_name),
                identity = elector.identity(),
                duration = ?timings.duration,
                renew_before = ?timings.renew_before,
                stop_before = ?timings.stop_before,
                "leader election on"
            );
            certus_controller::supervise(
                &elector,
                SuperviseOptions::for_timings(&timings),
                &status,
                start,
                shutdown,
            )
            .await
        }
        None => {
            let elector = NoElection::new(identity.clone());
            certus_controller::supervise(
                &elector,
                SuperviseOptions::default(),
                &status,
                start,
                shutdown,
            )
            .await
        }
    };

    // `run` revokes the login tokens after a graceful stop; this covers controllers that
    // were dropped (leadership lost) and sessions created since. Tokens that issued
    // leases are kept (`VaultSession::retain_token`).
    let _ = renewal_stop_tx.send(());
    let _ = renewal.await;
    sessions.revoke_all().await;
    let _ = server_stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "the metrics server failed"),
        Ok(_) => {}
        Err(_) => warn!("the metrics server did not stop within 5s"),
    }
    result?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn defaults() {
        let a = parse(&[]);
        assert!(a.namespaces.is_empty());
        assert_eq!(a.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(a.concurrency, RunOptions::default().concurrency);
        assert_eq!(a.resync_interval, Duration::from_secs(300));
        assert_eq!(a.connection_check_interval, Duration::from_secs(60));
        assert_eq!(a.deletion_timeout, Duration::from_secs(600));
        assert_eq!(a.metrics_addr, "0.0.0.0:8080".parse().unwrap());
        assert!(!a.leader_election);
        assert_eq!(a.lease_name, "certus-vault-operator");
        assert_eq!(a.lease_namespace, None);
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert!(
            a.persist_vault_tokens,
            "login tokens survive restarts by default"
        );
        assert!(!parse(&["--persist-vault-tokens=false"]).persist_vault_tokens);
        assert_eq!(a.vault_token_namespace, None);
    }

    /// The flags exactly as the Helm chart and config/manager pass them.
    #[test]
    fn chart_flags_parse() {
        let a = parse(&[
            "--metrics-addr=0.0.0.0:9090",
            "--namespaces=team-a,team-b",
            "--leader-election",
            "--lease-name=certus-vault-operator-leader",
            "--lease-namespace=certus-system",
            "--concurrency=4",
            "--resync-interval=10m",
        ]);
        assert_eq!(a.metrics_addr.port(), 9090);
        assert_eq!(a.namespaces, vec!["team-a", "team-b"]);
        assert!(a.leader_election);
        assert_eq!(a.lease_name, "certus-vault-operator-leader");
        assert_eq!(a.lease_namespace.as_deref(), Some("certus-system"));
        assert_eq!(a.concurrency, 4);
        assert_eq!(a.resync_interval, Duration::from_secs(600));
        let a = parse(&["--leader-election=false", "--lease-duration", "30s"]);
        assert!(!a.leader_election);
        assert_eq!(a.lease_duration, Duration::from_secs(30));
        assert!(Cli::try_parse_from(["run", "--resync-interval", "soon"]).is_err());
    }

    #[test]
    fn run_options_drop_empty_and_duplicate_namespaces() {
        let a = parse(&["--namespaces", "b,,a, b"]);
        let o = a.run_options(Arc::new(Metrics::default()), Arc::new(SessionCache::new()));
        assert_eq!(o.namespaces, vec!["a", "b"]);
        assert_eq!(o.resync_interval, Duration::from_secs(300));
        let a = parse(&["--namespaces="]);
        let o = a.run_options(Arc::new(Metrics::default()), Arc::new(SessionCache::new()));
        assert!(
            o.namespaces.is_empty(),
            "an empty list means every namespace"
        );
    }

    #[test]
    fn lease_namespace_precedence() {
        assert_eq!(lease_namespace(Some("x"), Some("pod"), "kc"), "x");
        assert_eq!(lease_namespace(None, Some("pod"), "kc"), "pod");
        assert_eq!(lease_namespace(Some(""), Some(" "), "kc"), "kc");
        assert_eq!(lease_namespace(None, None, "kc"), "kc");
    }

    /// The audit flags as the Helm chart passes them land in `RunOptions::audit`.
    #[test]
    fn audit_flags_map_to_the_audit_config() {
        let a = parse(&[]);
        let o = a.run_options(Arc::new(Metrics::default()), Arc::new(SessionCache::new()));
        assert!(!o.audit.has_source(), "no audit source by default");
        assert_eq!(
            o.audit.checkpoint_configmap,
            "certus-vault-audit-checkpoint"
        );
        let a = parse(&[
            "--audit-file=/vault/audit/audit.log",
            "--audit-socket=0.0.0.0:9090",
            "--audit-checkpoint-configmap=audit-cp",
        ]);
        let o = a.run_options(Arc::new(Metrics::default()), Arc::new(SessionCache::new()));
        assert_eq!(
            o.audit.file.as_deref(),
            Some(std::path::Path::new("/vault/audit/audit.log"))
        );
        assert_eq!(o.audit.socket, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(o.audit.checkpoint_configmap, "audit-cp");
        assert!(Cli::try_parse_from(["run", "--audit-socket", "9090"]).is_err());
    }
}
