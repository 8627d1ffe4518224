//! Vault / OpenBao audit streaming for certus-vault-operator.
//!
//! Reads Vault's JSON audit stream from a **file audit device** (tailing, across
//! rotation and truncation, resuming from a checkpoint) and/or a **socket audit device**
//! (a TCP listener the operator serves), evaluates `AuditAlertRule`s on every entry, and
//! raises alerts through a Kubernetes Event sink, a Prometheus counter and optional
//! webhooks; it also exports audit metrics (requests, denials, failed logins by mount,
//! operation and identity, with bounded cardinality — see [`metrics`]).
//!
//! ```text
//!  file device ──► FileTailer ─┐                         ┌─► Prometheus counter + status
//!                              ├─► AuditProcessor ──► RuleSet ──► AlertDispatcher ─┬─► EventSink (queue)
//!  socket device ─► listener ──┘   (parse, metrics)   (pure, time passed in)      └─► webhook (queue, retries)
//! ```
//!
//! # Wiring it into the operator
//!
//! 1. Implement [`EventSink`] over kube's event recorder (Event on the `AuditAlertRule`
//!    named `alert.rule`, type `Warning`, reason [`Alert::EVENT_REASON`], note
//!    [`Alert::event_note`]) and [`CheckpointStore`] over a ConfigMap (store
//!    [`Checkpoint::to_json`] under one key; load with [`Checkpoint::from_json`]).
//!    [`FileCheckpointStore`] is a ready file-based store (e.g. on a PVC).
//! 2. Start the runtime once, with the operator's root metrics registry:
//!    `let audit = AuditRuntime::start(&mut registry, Some(event_sink), AuditOptions::default())?;`
//! 3. Spawn the sources the deployment configures (both take a shutdown future):
//!    `tokio::spawn(audit.run_file(FileSourceOptions::new("/vault/audit/audit.log"), store, shutdown.clone()));`
//!    `tokio::spawn(audit.run_socket(TcpListener::bind("0.0.0.0:9090").await?, Default::default(), shutdown));`
//! 4. In the `AuditAlertRule` controller (cluster-scoped kind): resolve
//!    `spec.webhook.secretRef` into a [`WebhookResolution`] (read the Secret, call
//!    [`WebhookTarget::from_secret_data`]; a missing Secret is
//!    `WebhookResolution::Unavailable { reason: "SecretNotFound", .. }`), then
//!    `let status = audit.rules().apply(&rule, webhook);` and patch the status
//!    subresource with it. On deletion call `rules.remove(name)` (no finalizer needed).
//! 5. Keep the counters in status fresh: loop on `rules.changed().await`, then for each
//!    name in `rules.take_dirty()` patch `rules.status(&rule)` (debounce to a few
//!    seconds; the counters are cumulative, so a skipped patch loses nothing).
//! 6. On SIGTERM resolve the shutdown future, await the source tasks (the file source
//!    saves its final checkpoint), then `audit.shutdown().await` drains the sink queues.
//!
//! # Vault configuration
//!
//! OpenBao accepts audit devices only from server configuration; HashiCorp Vault also
//! through `vault audit enable`. A file device (required) and, optionally, a socket
//! device pointing at the operator:
//!
//! ```hcl
//! audit "file" "file" {
//!   options { file_path = "/vault/audit/audit.log", mode = "0600" }
//! }
//! audit "socket" "certus" {
//!   options { address = "certus-vault-operator-audit.certus-system.svc:9090", socket_type = "tcp", format = "json" }
//! }
//! ```
//!
//! **Vault blocks requests when every audit device fails.** If the socket device is the
//! only one and the operator is down (or slow: the socket device writes synchronously),
//! Vault stops serving. Always configure a file device beside the socket device. The
//! socket listener has no TLS and no authentication: expose it only inside the cluster
//! and restrict it with a NetworkPolicy to the Vault pods.
//!
//! # Guarantees and limits
//!
//! - Malformed lines are counted (`certus_audit_malformed_lines_total`) and skipped; they
//!   never stop a source.
//! - Request and response bodies are never parsed into the model, logged or exported;
//!   HMAC'd values are never reversed and never leave the process.
//! - File source: exactly-once alerting across a clean restart (the checkpoint is the
//!   position after the last processed line and is saved on shutdown); after a crash,
//!   the lines since the last checkpoint save (at most
//!   [`FileSourceOptions::checkpoint_interval`]) are processed again (at-least-once).
//!   Threshold state (hits within a window) is in memory and starts empty after a
//!   restart.
//! - Socket source: at-most-once (a line is lost when the operator dies while Vault
//!   writes it); Vault retries nothing.
//! - Rules are evaluated at the entry's own time by default ([`TimeBasis::EntryTime`]),
//!   so a backlog replays correctly; status timestamps use the injected [`Clock`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alert;
pub mod checkpoint;
pub mod clock;
pub mod engine;
pub mod entry;
pub mod glob;
pub mod metrics;
pub mod pipeline;
pub mod rule;
pub mod sink;
pub mod tail;
pub mod webhook;

pub use alert::Alert;
pub use checkpoint::{
    Checkpoint, CheckpointError, CheckpointStore, FileCheckpointStore, MemoryCheckpointStore,
};
pub use clock::{Clock, ManualClock, SystemClock, TimeBasis};
pub use engine::{FiredAlert, RuleSet, RuleStats};
pub use entry::{parse_line, AuditEntry, EntryKind, Outcome, ParseError};
pub use glob::Glob;
pub use metrics::{AuditMetrics, MetricsOptions};
pub use pipeline::{
    run_file_source, run_socket_source, AuditError, AuditOptions, AuditProcessor, AuditRuntime,
    FileSourceOptions, LineOutcome, SocketSourceOptions,
};
pub use rule::CompiledRule;
pub use sink::{AlertDispatcher, DispatcherOptions, DispatcherTasks, EventSink};
pub use tail::{FileTailer, PollResult, StartAt, TailEvent, TailOptions};
pub use webhook::{Backoff, WebhookResolution, WebhookTarget};
