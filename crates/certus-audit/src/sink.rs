//! Alert sinks: Kubernetes Events (a trait the operator implements) and webhooks, each
//! behind a bounded queue drained by its own task, so a slow API server or webhook never
//! delays the audit stream. When a queue is full the alert is dropped and counted
//! (`certus_audit_alerts_dropped_total{sink}`); the Prometheus counter and the rule
//! status are updated before the queues and are never dropped.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::alert::Alert;
use crate::engine::FiredAlert;
use crate::metrics::AuditMetrics;
use crate::webhook::{deliver, Backoff, Delivery, WebhookTarget};

/// Publishes alerts as Kubernetes Events on the `AuditAlertRule` named `alert.rule`
/// (type `Warning`, reason [`Alert::EVENT_REASON`], note [`Alert::event_note`]).
/// Implemented by the operator over kube's event recorder. Calls are made one at a time
/// from the event task; an error is logged and counted, not retried.
pub trait EventSink: Send + Sync + 'static {
    /// Publishes one alert.
    fn publish<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), String>>;
}

/// Queue sizes and webhook behaviour.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    /// Alerts waiting for the Event sink.
    pub event_queue: usize,
    /// Alerts waiting for webhook delivery.
    pub webhook_queue: usize,
    /// Webhook deliveries in flight at once.
    pub webhook_concurrency: usize,
    /// Backoff between webhook attempts.
    pub backoff: Backoff,
}

impl Default for DispatcherOptions {
    fn default() -> Self {
        DispatcherOptions {
            event_queue: 1024,
            webhook_queue: 1024,
            webhook_concurrency: 4,
            backoff: Backoff::default(),
        }
    }
}

/// Hands alerts to the sinks without ever waiting. Clone it freely.
#[derive(Clone, Debug)]
pub struct AlertDispatcher {
    events: Option<mpsc::Sender<Alert>>,
    webhooks: mpsc::Sender<(Arc<WebhookTarget>, Alert)>,
    metrics: Arc<AuditMetrics>,
}

/// The sink tasks; [`join`](Self::join) waits for them to drain after every
/// [`AlertDispatcher`] clone is dropped.
#[derive(Debug)]
pub struct DispatcherTasks {
    handles: Vec<JoinHandle<()>>,
}

impl DispatcherTasks {
    /// Waits until the queues are drained and the tasks ended.
    pub async fn join(self) {
        for h in self.handles {
            let _ = h.await;
        }
    }

    /// Stops the tasks at once (alerts still queued are lost).
    pub fn abort(&self) {
        self.handles.iter().for_each(JoinHandle::abort);
    }
}

impl AlertDispatcher {
    /// Starts the sink tasks (needs a Tokio runtime). `events` is the operator's Event
    /// sink (`None`: no Events); `http` the client for webhooks (see
    /// [`crate::webhook::default_client`]).
    pub fn spawn(
        events: Option<Arc<dyn EventSink>>,
        http: reqwest::Client,
        opts: DispatcherOptions,
        metrics: Arc<AuditMetrics>,
    ) -> (AlertDispatcher, DispatcherTasks) {
        let mut handles = Vec::new();
        let events_tx = events.map(|sink| {
            let (tx, mut rx) = mpsc::channel::<Alert>(opts.event_queue.max(1));
            let m = metrics.clone();
            handles.push(tokio::spawn(async move {
                while let Some(alert) = rx.recv().await {
                    if let Err(e) = sink.publish(&alert).await {
                        m.event_failure();
                        tracing::warn!(rule = %alert.rule, error = %e, "cannot publish the audit alert Event");
                    }
                }
            }));
            tx
        });
        let (wh_tx, mut wh_rx) =
            mpsc::channel::<(Arc<WebhookTarget>, Alert)>(opts.webhook_queue.max(1));
        let m = metrics.clone();
        let concurrency = opts.webhook_concurrency.max(1);
        let backoff = opts.backoff;
        handles.push(tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(concurrency));
            while let Some((target, alert)) = wh_rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let http = http.clone();
                let m = m.clone();
                tokio::spawn(async move {
                    let result = deliver(&http, &target, &alert, backoff).await;
                    match result {
                        Delivery::Delivered { attempts } => {
                            m.webhook_retries(u64::from(attempts - 1));
                            m.webhook_result("delivered");
                        }
                        Delivery::Failed {
                            attempts,
                            last_error,
                        } => {
                            m.webhook_retries(u64::from(attempts.saturating_sub(1)));
                            m.webhook_result("failed");
                            tracing::warn!(rule = %alert.rule, host = target.host(), attempts, error = %last_error, "audit alert webhook failed");
                        }
                    }
                    drop(permit);
                });
            }
            // Wait for deliveries in flight.
            let _ = permits.acquire_many(concurrency as u32).await;
        }));
        (
            AlertDispatcher {
                events: events_tx,
                webhooks: wh_tx,
                metrics,
            },
            DispatcherTasks { handles },
        )
    }

    /// Counts the alert and queues it for the Event sink and its webhook. Never waits:
    /// a full queue drops the alert for that sink and counts it.
    pub fn dispatch(&self, fired: FiredAlert) {
        let FiredAlert { alert, webhook } = fired;
        self.metrics.rule_match(&alert.rule, alert.severity);
        tracing::info!(rule = %alert.rule, severity = alert.severity, summary = %alert.summary, "audit alert");
        if let Some(target) = webhook {
            if self.webhooks.try_send((target, alert.clone())).is_err() {
                self.metrics.dropped("webhook");
            }
        }
        if let Some(tx) = &self.events {
            if tx.try_send(alert).is_err() {
                self.metrics.dropped("event");
            }
        }
    }
}
