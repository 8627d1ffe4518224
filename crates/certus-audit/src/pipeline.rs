//! Wiring: line → parse → metrics → rules → sinks, and the async runners of the file
//! and socket sources.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use prometheus_client::registry::Registry;
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::clock::{Clock, SystemClock, TimeBasis};
use crate::engine::RuleSet;
use crate::entry::parse_line;
use crate::metrics::{AuditMetrics, MetricsOptions};
use crate::sink::{AlertDispatcher, DispatcherOptions, DispatcherTasks, EventSink};
use crate::tail::{FileTailer, TailEvent, TailOptions};

/// `source` label of the file reader.
pub const SOURCE_FILE: &str = "file";
/// `source` label of the socket listener.
pub const SOURCE_SOCKET: &str = "socket";

/// Errors that stop a source.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The checkpoint could not be loaded.
    #[error("audit checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// An I/O error of the socket listener.
    #[error("audit socket: {0}")]
    Io(#[from] std::io::Error),
    /// The webhook HTTP client could not be built.
    #[error("{0}")]
    Setup(String),
}

/// What happened to one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOutcome {
    /// Empty line, ignored.
    Blank,
    /// Not an audit entry: counted and skipped.
    Malformed,
    /// An entry, which raised this many alerts.
    Entry {
        /// Alerts raised.
        alerts: usize,
    },
}

/// Processes audit lines: metrics, rule evaluation, alert dispatch. Shared by every
/// source (`Arc`); each line is handled synchronously and quickly (no I/O: the sinks are
/// queues).
#[derive(Debug)]
pub struct AuditProcessor {
    rules: RuleSet,
    metrics: Arc<AuditMetrics>,
    dispatcher: AlertDispatcher,
    clock: Arc<dyn Clock>,
    basis: TimeBasis,
}

impl AuditProcessor {
    /// A processor over `rules`, counting into `metrics` and alerting through `dispatcher`.
    pub fn new(
        rules: RuleSet,
        metrics: Arc<AuditMetrics>,
        dispatcher: AlertDispatcher,
        clock: Arc<dyn Clock>,
        basis: TimeBasis,
    ) -> Self {
        AuditProcessor {
            rules,
            metrics,
            dispatcher,
            clock,
            basis,
        }
    }

    /// The rules evaluated.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<AuditMetrics> {
        &self.metrics
    }

    /// Handles one line from `source` (`file` or `socket`).
    pub fn process_line(&self, source: &'static str, line: &[u8]) -> LineOutcome {
        self.metrics.line(source);
        let entry = match parse_line(line) {
            Ok(Some(e)) => e,
            Ok(None) => return LineOutcome::Blank,
            Err(e) => {
                self.metrics.malformed(source);
                // The error names a position, never the content.
                tracing::debug!(source, len = line.len(), error = %e, "skipping a malformed audit line");
                return LineOutcome::Malformed;
            }
        };
        self.metrics.entry(&entry);
        let at = match self.basis {
            TimeBasis::EntryTime => entry.time.unwrap_or_else(|| self.clock.now()),
            TimeBasis::Clock => self.clock.now(),
        };
        let fired = self.rules.evaluate_at(&entry, at);
        let alerts = fired.len();
        for f in fired {
            self.dispatcher.dispatch(f);
        }
        LineOutcome::Entry { alerts }
    }
}

/// Settings of the file source runner.
#[derive(Debug, Clone)]
pub struct FileSourceOptions {
    /// The audit file (the file audit device's `file_path`).
    pub path: PathBuf,
    /// Tailer settings.
    pub tail: TailOptions,
    /// Wait between polls when the file has no new data.
    pub poll_interval: Duration,
    /// Least time between two checkpoint saves (a final one is always saved on
    /// shutdown). After a crash, at most this much is processed again.
    pub checkpoint_interval: Duration,
}

impl FileSourceOptions {
    /// Defaults for `path`: poll every 250 ms, checkpoint at most every 5 s.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSourceOptions {
            path: path.into(),
            tail: TailOptions::default(),
            poll_interval: Duration::from_millis(250),
            checkpoint_interval: Duration::from_secs(5),
        }
    }
}

/// Follows the audit file until `shutdown` resolves, then saves the checkpoint and
/// returns. Resumes from `store`'s checkpoint. I/O errors on the file are logged and
/// retried; only a checkpoint that cannot be loaded stops it (so the operator retries
/// instead of silently skipping).
pub async fn run_file_source(
    processor: Arc<AuditProcessor>,
    opts: FileSourceOptions,
    store: Arc<dyn CheckpointStore>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AuditError> {
    let initial = store.load().await?;
    tracing::info!(path = %opts.path.display(), resume = initial.is_some(), "reading the Vault audit file");
    let mut saved: Option<Checkpoint> = initial.clone();
    let mut tailer = Some(FileTailer::new(&opts.path, opts.tail.clone(), initial));
    let mut last_save = Instant::now();
    let shutdown = shutdown.fuse();
    tokio::pin!(shutdown);
    let mut stopping = false;
    loop {
        let Some(mut t) = tailer.take() else {
            break;
        };
        let p = processor.clone();
        let (t, res, cp) = tokio::task::spawn_blocking(move || {
            let res = t.poll(&mut |line| {
                p.process_line(SOURCE_FILE, line);
            });
            let cp = t.checkpoint();
            (t, res, cp)
        })
        .await
        .map_err(|e| AuditError::Setup(format!("audit reader task failed: {e}")))?;
        tailer = Some(t);
        let more = match res {
            Ok(r) => {
                for ev in &r.events {
                    processor.metrics.source_event(ev.as_str());
                    if !matches!(ev, TailEvent::Opened | TailEvent::Resumed) {
                        tracing::info!(path = %opts.path.display(), event = ev.as_str(), "audit file event");
                    }
                }
                r.more
            }
            Err(e) => {
                tracing::warn!(path = %opts.path.display(), error = %e, "cannot read the audit file; retrying");
                false
            }
        };
        if !stopping && (&mut shutdown).now_or_never().is_some() {
            stopping = true;
        }
        let due = stopping || last_save.elapsed() >= opts.checkpoint_interval;
        if let Some(cp) = cp.filter(|cp| due && saved.as_ref() != Some(cp)) {
            match store.save(&cp).await {
                Ok(()) => {
                    saved = Some(cp);
                    last_save = Instant::now();
                }
                Err(e) => {
                    processor.metrics.checkpoint_failure();
                    tracing::warn!(error = %e, "cannot save the audit checkpoint");
                }
            }
        }
        if stopping {
            break;
        }
        if !more {
            tokio::select! {
                _ = &mut shutdown => stopping = true,
                _ = tokio::time::sleep(opts.poll_interval) => {}
            }
            // One last poll after shutdown: read what was complete, then save.
        }
    }
    Ok(())
}

/// Settings of the socket listener.
#[derive(Debug, Clone)]
pub struct SocketSourceOptions {
    /// Longest line accepted; longer ones are skipped and counted as malformed.
    pub max_line_bytes: usize,
}

impl Default for SocketSourceOptions {
    fn default() -> Self {
        SocketSourceOptions {
            max_line_bytes: 4 << 20,
        }
    }
}

/// Serves Vault's socket audit device (`socket_type = "tcp"`, `format = "json"`): accepts
/// connections on `listener` and processes the JSON lines they send, until `shutdown`.
///
/// Vault blocks every request while all its audit devices fail: if this listener is the
/// only device and the operator is down, Vault stops answering. Always configure a file
/// device beside the socket device.
pub async fn run_socket_source(
    processor: Arc<AuditProcessor>,
    listener: TcpListener,
    opts: SocketSourceOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AuditError> {
    tracing::info!(addr = ?listener.local_addr().ok(), "serving the Vault socket audit device");
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        let p = processor.clone();
                        let max = opts.max_line_bytes;
                        conns.spawn(async move { serve_connection(p, stream, peer, max).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "audit socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    Ok(())
}

async fn serve_connection(p: Arc<AuditProcessor>, stream: TcpStream, peer: SocketAddr, max: usize) {
    tracing::debug!(%peer, "audit socket connection");
    let _ = stream.set_nodelay(true);
    let mut reader = tokio::io::BufReader::with_capacity(64 << 10, stream);
    let mut line: Vec<u8> = Vec::new();
    let mut discarding = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "audit socket read failed");
                break;
            }
        };
        if buf.is_empty() {
            if !line.is_empty() && !discarding {
                p.process_line(SOURCE_SOCKET, &line);
            }
            break;
        }
        let consumed = match memchr::memchr(b'\n', buf) {
            Some(i) => {
                if !discarding {
                    if line.is_empty() {
                        p.process_line(SOURCE_SOCKET, &buf[..i]);
                    } else {
                        line.extend_from_slice(&buf[..i]);
                        p.process_line(SOURCE_SOCKET, &line);
                        line.clear();
                    }
                }
                discarding = false;
                i + 1
            }
            None => {
                if !discarding {
                    line.extend_from_slice(buf);
                    if line.len() > max {
                        line = Vec::new();
                        discarding = true;
                        p.metrics.line(SOURCE_SOCKET);
                        p.metrics.malformed(SOURCE_SOCKET);
                    }
                }
                buf.len()
            }
        };
        reader.consume(consumed);
    }
    tracing::debug!(%peer, "audit socket connection closed");
}

/// Everything [`AuditRuntime::start`] needs.
pub struct AuditOptions {
    /// Label cardinality.
    pub metrics: MetricsOptions,
    /// Sink queues and webhook backoff.
    pub dispatcher: DispatcherOptions,
    /// The clock (status timestamps, and rule time with [`TimeBasis::Clock`]).
    pub clock: Arc<dyn Clock>,
    /// Which time rules are evaluated at.
    pub time_basis: TimeBasis,
    /// HTTP client for webhooks (default: [`crate::webhook::default_client`]).
    pub http: Option<reqwest::Client>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            metrics: MetricsOptions::default(),
            dispatcher: DispatcherOptions::default(),
            clock: Arc::new(SystemClock),
            time_basis: TimeBasis::EntryTime,
            http: None,
        }
    }
}

/// The audit subsystem, started with one call: metrics registered, sink tasks running,
/// an empty [`RuleSet`] to fill from `AuditAlertRule` resources, and a processor the
/// sources feed.
#[derive(Debug)]
pub struct AuditRuntime {
    rules: RuleSet,
    metrics: Arc<AuditMetrics>,
    processor: Arc<AuditProcessor>,
    tasks: DispatcherTasks,
}

impl AuditRuntime {
    /// Registers the metrics on `registry` and starts the sink tasks (needs a Tokio
    /// runtime). `events` is the operator's Kubernetes Event sink.
    pub fn start(
        registry: &mut Registry,
        events: Option<Arc<dyn EventSink>>,
        opts: AuditOptions,
    ) -> Result<Self, AuditError> {
        let metrics = Arc::new(AuditMetrics::register(registry, opts.metrics));
        Self::with_metrics(
            metrics,
            events,
            opts.dispatcher,
            opts.clock,
            opts.time_basis,
            opts.http,
        )
    }

    /// Like [`start`](Self::start) with metrics that are already built (tests, benches).
    pub fn with_metrics(
        metrics: Arc<AuditMetrics>,
        events: Option<Arc<dyn EventSink>>,
        dispatcher: DispatcherOptions,
        clock: Arc<dyn Clock>,
        time_basis: TimeBasis,
        http: Option<reqwest::Client>,
    ) -> Result<Self, AuditError> {
        let http = match http {
            Some(c) => c,
            None => crate::webhook::default_client().map_err(AuditError::Setup)?,
        };
        let rules = RuleSet::new(clock.clone());
        let (dispatcher, tasks) = AlertDispatcher::spawn(events, http, dispatcher, metrics.clone());
        let processor = Arc::new(AuditProcessor::new(
            rules.clone(),
            metrics.clone(),
            dispatcher,
            clock,
            time_basis,
        ));
        Ok(AuditRuntime {
            rules,
            metrics,
            processor,
            tasks,
        })
    }

    /// The rules: the `AuditAlertRule` controller calls `apply` / `remove` / `status`.
    pub fn rules(&self) -> RuleSet {
        self.rules.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<AuditMetrics> {
        self.metrics.clone()
    }

    /// The processor the sources feed.
    pub fn processor(&self) -> Arc<AuditProcessor> {
        self.processor.clone()
    }

    /// Follows the audit file (see [`run_file_source`]).
    pub fn run_file(
        &self,
        opts: FileSourceOptions,
        store: Arc<dyn CheckpointStore>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), AuditError>> + Send {
        run_file_source(self.processor(), opts, store, shutdown)
    }

    /// Serves the socket audit device (see [`run_socket_source`]).
    pub fn run_socket(
        &self,
        listener: TcpListener,
        opts: SocketSourceOptions,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), AuditError>> + Send {
        run_socket_source(self.processor(), listener, opts, shutdown)
    }

    /// Drops the processor and waits for queued alerts to be delivered. Call after the
    /// sources returned.
    pub async fn shutdown(self) {
        let AuditRuntime {
            rules,
            metrics,
            processor,
            tasks,
        } = self;
        drop((rules, metrics));
        // The dispatcher lives in the processor; sources hold clones of it until they end.
        drop(processor);
        tasks.join().await;
    }
}
