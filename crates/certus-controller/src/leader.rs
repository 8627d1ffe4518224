//! Leader election: only the holder of a `coordination.k8s.io` Lease runs the
//! controllers (and so reconciles and writes).
//!
//! [`supervise`] is the loop of the operator process:
//!
//! ```text
//!            ┌──────────── lease acquired and valid ────────────┐
//!            │                                                  ▼
//!        Standby ◄── lease lost / not renewed in time ──── Leader (controllers run)
//!            │       (controllers dropped at once)              │
//!            │                                                  │ shutdown
//!            ▼ shutdown                                         ▼
//!        release the Lease ◄──── controllers drained ───── Stopping (lease still renewed)
//! ```
//!
//! The election itself is behind [`LeaderElector`]: [`KubeLeaseElector`] (a Lease through
//! the `kube-lease-manager` crate), [`MemoryElector`] (an in-process lease for tests) and
//! [`NoElection`] (a single replica: always the leader).
//!
//! ## Timings ([`LeaseTimings`], for the default `--lease-duration 15s`)
//! - The holder renews the Lease 5 s (`renew_before`, a third of the duration) before it
//!   expires, i.e. every ~10 s.
//! - The leader's controllers may only run while its last successful acquire/renewal is
//!   younger than `duration - stop_before` (12.5 s): if a renewal has not landed by then
//!   (API server unreachable, request hanging), the controllers are dropped — in-flight
//!   reconciles are cancelled — without waiting for any answer. The remaining 2.5 s are
//!   the tolerated clock skew between the instances.
//! - A standby takes an expired Lease at the earliest `duration` (15 s) after the last
//!   renewal, and a released one when its cached expiry passes (at most `duration`).
//! - A Lease lost to another holder (seen on the next renewal) stops the controllers at
//!   once; a failed renewal keeps them running until the deadline above, since the
//!   Lease is still ours until it expires.
//!
//! So two instances never run controllers at the same time, as long as the clocks of
//! the instances differ by less than `stop_before`.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{Method, Request, Response};
use kube::client::{Body, ClientBuilder};
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Fires when the controllers started by [`supervise`] must stop (shutdown requested).
/// When leadership is lost they are not asked: their future is dropped.
pub type StopSignal = BoxFuture<'static, ()>;

/// One side of a leader election.
///
/// The supervisor keeps a [`changed`](Self::changed) future polled at all times while it
/// runs (the implementation renews the lease inside it), and calls
/// [`release`](Self::release) once at the end.
pub trait LeaderElector: Send + Sync {
    /// The identity written into the lease (`holderIdentity`).
    fn identity(&self) -> &str;

    /// Waits until this instance's leadership changes and returns it (`true`: it holds the
    /// lease now). While it holds the lease, the implementation renews it for as long as
    /// this future is polled. An error is transient: the supervisor logs it and calls
    /// again after a backoff; leadership is then bounded by
    /// [`valid_until`](Self::valid_until).
    fn changed(&self) -> impl Future<Output = anyhow::Result<bool>> + Send;

    /// Gives the lease up if this instance holds it, so a standby takes over without
    /// waiting for it to expire. Safe to call when not holding it.
    fn release(&self) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Until when this instance's leadership is certain: its last successful acquire or
    /// renewal plus the lease duration (far in the future for [`NoElection`]). `None`
    /// when this instance is not the leader. The controllers only run while this is more
    /// than `stop_before` ahead.
    fn valid_until(&self) -> Option<Instant>;

    /// Whether the last exchange with the lease store succeeded (a healthy standby is
    /// ready; see [`LeaderStatus::ready`]).
    fn healthy(&self) -> bool;

    /// Whether there is a lease at all (`false` for [`NoElection`]; only changes logs).
    fn uses_lease(&self) -> bool {
        true
    }
}

/// The timings of a lease of `duration`; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a lease is valid after its last renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// The holder renews this long before the lease expires.
    pub renew_before: Duration,
    /// The holder's controllers stop this long before the lease would expire when no
    /// renewal has succeeded: the tolerated clock skew between instances.
    pub stop_before: Duration,
}

impl LeaseTimings {
    /// Timings for a lease of `duration` (whole seconds, at least 2 s: a Lease counts in
    /// seconds): renew a third of the duration before expiry (at least 1 s), stop half of
    /// that before expiry.
    pub fn new(duration: Duration) -> anyhow::Result<Self> {
        if duration.subsec_nanos() != 0 || duration.as_secs() < 2 {
            bail!(
                "the lease duration must be a whole number of seconds, at least 2s (got {duration:?})"
            );
        }
        let secs = duration.as_secs();
        let renew = (secs / 3).max(1);
        Ok(LeaseTimings {
            duration,
            renew_before: Duration::from_secs(renew),
            stop_before: Duration::from_millis(renew * 500),
        })
    }
}

// ---- status shared with /readyz, /livez and /metrics ----------------------------------

/// Where the supervisor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not the leader: waiting for the lease.
    Standby,
    /// The leader: the controllers run.
    Leader,
    /// Shutting down: the controllers finish their in-flight reconciles, the lease is
    /// still renewed.
    Stopping,
    /// [`supervise`] has returned.
    Stopped,
}

impl Role {
    fn from_u8(v: u8) -> Role {
        match v {
            0 => Role::Standby,
            1 => Role::Leader,
            2 => Role::Stopping,
            _ => Role::Stopped,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            Role::Standby => 0,
            Role::Leader => 1,
            Role::Stopping => 2,
            Role::Stopped => 3,
        }
    }
}

/// The supervisor's state as the probes and `/metrics` see it.
#[derive(Debug)]
pub struct LeaderStatus {
    identity: String,
    role: AtomicU8,
    elector_healthy: AtomicBool,
    /// Milliseconds since `epoch` of the supervisor loop's last heartbeat.
    last_beat_ms: AtomicU64,
    epoch: std::time::Instant,
    leader: Gauge,
}

impl LeaderStatus {
    /// A status for identity `identity`: standby, alive now, elector not yet heard from.
    pub fn new(identity: impl Into<String>) -> Self {
        LeaderStatus {
            identity: identity.into(),
            role: AtomicU8::new(Role::Standby.as_u8()),
            elector_healthy: AtomicBool::new(false),
            last_beat_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            leader: Gauge::default(),
        }
    }

    /// Registers `certus_leader` (1 while this instance runs the controllers).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "certus_leader",
            "1 while this instance holds the leader Lease and runs the controllers (always 1 without leader election), 0 otherwise",
            self.leader.clone(),
        );
    }

    /// This instance's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The current role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::SeqCst))
    }

    /// Whether the controllers run (leader, or leader finishing in-flight reconciles).
    pub fn is_leader(&self) -> bool {
        matches!(self.role(), Role::Leader | Role::Stopping)
    }

    /// `/readyz`: a leader whose controllers are ready (`controllers_ready`, from
    /// [`Metrics::is_ready`](crate::Metrics::is_ready): CRDs established, watches started),
    /// or a standby whose last exchange with the lease store succeeded. Not ready while
    /// stopping.
    pub fn ready(&self, controllers_ready: bool) -> bool {
        match self.role() {
            Role::Leader => controllers_ready,
            Role::Standby => self.elector_healthy.load(Ordering::SeqCst),
            Role::Stopping | Role::Stopped => false,
        }
    }

    /// `/livez`: the supervisor loop has beaten within `max_silence` and has not returned.
    pub fn live(&self, max_silence: Duration) -> bool {
        if self.role() == Role::Stopped {
            return false;
        }
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::SeqCst));
        self.epoch.elapsed().saturating_sub(last) <= max_silence
    }

    fn beat(&self) {
        self.last_beat_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    fn set_role(&self, role: Role) {
        self.role.store(role.as_u8(), Ordering::SeqCst);
        self.leader
            .set(i64::from(matches!(role, Role::Leader | Role::Stopping)));
    }

    fn set_healthy(&self, healthy: bool) {
        self.elector_healthy.store(healthy, Ordering::SeqCst);
    }
}

// ---- the supervisor ---------------------------------------------------------------------

/// Settings of [`supervise`].
#[derive(Clone, Copy, Debug)]
pub struct SuperviseOptions {
    /// Stop the controllers this long before [`LeaderElector::valid_until`].
    pub stop_before: Duration,
    /// First pause after an election error; doubles up to `retry_max`.
    pub retry_base: Duration,
    /// Longest pause after an election error.
    pub retry_max: Duration,
    /// How often the loop reports it is alive (`/livez`) and refreshes the elector's
    /// health (`/readyz`).
    pub heartbeat: Duration,
}

impl Default for SuperviseOptions {
    fn default() -> Self {
        SuperviseOptions {
            stop_before: Duration::ZERO,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
        }
    }
}

impl SuperviseOptions {
    /// Options for a lease with `timings`. Retries stay well inside the renewal window.
    pub fn for_timings(timings: &LeaseTimings) -> Self {
        SuperviseOptions {
            stop_before: timings.stop_before,
            retry_max: (timings.renew_before / 2)
                .clamp(Duration::from_millis(200), Duration::from_secs(5)),
            ..SuperviseOptions::default()
        }
    }
}

/// A running set of controllers: its future and the sender of its stop signal.
struct Running<Fut> {
    controllers: Pin<Box<Fut>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Runs `start_controllers` while `elector` says this instance is the leader, until
/// `shutdown` resolves; see the module documentation.
///
/// - Standby: waits for the lease. Leader: calls `start_controllers(stop)` and polls the
///   returned future; the lease keeps being renewed meanwhile.
/// - Leadership lost, or not renewed in time (`valid_until - stop_before` passed): the
///   controllers' future is dropped at once (kube-runtime cancels the in-flight
///   reconciles), back to standby.
/// - `shutdown`: `stop` fires and the controllers finish their in-flight reconciles while
///   the lease is still renewed (dropped if it is lost meanwhile); then the lease is
///   released and `Ok(())` is returned.
/// - The controllers returning without being asked is an error: the lease is released
///   and the error returned (the process should exit and be restarted).
pub async fn supervise<E, F, Fut>(
    elector: &E,
    options: SuperviseOptions,
    status: &LeaderStatus,
    start_controllers: F,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    E: LeaderElector,
    F: Fn(StopSignal) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut shutdown = pin!(shutdown.fuse());
    // Boxed (not `pin!`) so that it can really be dropped before `release`: an
    // in-flight call may hold the elector's state.
    let mut changed = Box::pin(elector.changed());
    let mut heartbeat = tokio::time::interval(options.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut holding = false;
    let mut shutting_down = false;
    let mut running: Option<Running<Fut>> = None;
    let mut retry = options.retry_base;
    let mut retry_at: Option<Instant> = None;
    let mut failure: Option<anyhow::Error> = None;
    status.set_role(Role::Standby);
    status.beat();

    loop {
        let now = Instant::now();
        let deadline = elector
            .valid_until()
            .map(|t| t.checked_sub(options.stop_before).unwrap_or(t));
        let valid = deadline.is_some_and(|d| now < d);

        if running.is_some() && !(holding && valid) {
            running = None; // drops the controllers: in-flight reconciles are cancelled
            status.set_role(if shutting_down {
                Role::Stopping
            } else {
                Role::Standby
            });
            if holding {
                warn!(identity = elector.identity(), "the leader Lease was not renewed in time; controllers stopped at once (in-flight reconciles cancelled)");
            } else {
                warn!(identity = elector.identity(), "lost the leader Lease; controllers stopped at once (in-flight reconciles cancelled)");
            }
        }
        if shutting_down && running.is_none() {
            break;
        }
        if running.is_none() && holding && valid {
            if elector.uses_lease() {
                info!(
                    identity = elector.identity(),
                    "holding the leader Lease; starting the controllers"
                );
            } else {
                info!(
                    identity = elector.identity(),
                    "leader election off; starting the controllers"
                );
            }
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let stop: StopSignal = Box::pin(async move {
                let _ = rx.await;
            });
            running = Some(Running {
                controllers: Box::pin(start_controllers(stop)),
                stop: Some(tx),
            });
            status.set_role(Role::Leader);
        }

        let has_running = running.is_some();
        tokio::select! {
            biased;
            _ = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                if let Some(r) = running.as_mut() {
                    info!("shutdown requested; the controllers finish their in-flight reconciles (the leader Lease is kept meanwhile)");
                    if let Some(tx) = r.stop.take() {
                        let _ = tx.send(());
                    }
                    status.set_role(Role::Stopping);
                } else {
                    info!("shutdown requested");
                }
            }
            result = async {
                match running.as_mut() {
                    Some(r) => r.controllers.as_mut().await,
                    None => std::future::pending().await,
                }
            }, if has_running => {
                running = None;
                status.set_role(if shutting_down { Role::Stopping } else { Role::Standby });
                match result {
                    Ok(()) if shutting_down => {
                        info!("controllers stopped");
                        break;
                    }
                    Ok(()) => {
                        error!("the controllers stopped without being asked to");
                        failure = Some(anyhow!("the controllers stopped without being asked to"));
                        break;
                    }
                    Err(e) => {
                        error!(error = %format!("{e:#}"), "the controllers failed");
                        failure = Some(e.context("the controllers failed"));
                        break;
                    }
                }
            }
            result = &mut changed, if retry_at.is_none() => {
                changed.set(elector.changed());
                match result {
                    Ok(now_holding) => {
                        retry = options.retry_base;
                        status.set_healthy(true);
                        if now_holding != holding && elector.uses_lease() {
                            if now_holding {
                                info!(identity = elector.identity(), "acquired the leader Lease");
                            } else if !has_running {
                                info!(identity = elector.identity(), "standing by: another instance holds the leader Lease");
                            }
                        }
                        holding = now_holding;
                    }
                    Err(e) => {
                        status.set_healthy(false);
                        warn!(
                            error = %format!("{e:#}"),
                            holding,
                            retry_in = ?retry,
                            "leader election: reaching the Lease failed; retrying"
                        );
                        // Leadership is kept until `valid_until`: the lease is ours until
                        // it expires, and the deadline below stops the controllers first.
                        retry_at = Some(Instant::now() + retry);
                        retry = (retry * 2).min(options.retry_max);
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(far_future)), if retry_at.is_some() => {
                retry_at = None;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if has_running && deadline.is_some() => {
                // Re-evaluated at the top of the loop: not valid any more.
                debug!("the leader Lease deadline passed");
            }
            // Holding a lease that is not (yet) renewed: wait for a renewal to land.
            _ = tokio::time::sleep(Duration::from_millis(100)), if holding && !valid && !has_running => {}
            _ = heartbeat.tick() => {
                status.beat();
                if retry_at.is_none() && !has_running {
                    status.set_healthy(elector.healthy());
                }
            }
        }
    }

    // Stop renewing before giving the lease up.
    drop(changed);
    drop(running);
    if elector.uses_lease() {
        match elector.release().await {
            Ok(()) => info!(
                identity = elector.identity(),
                "leader election: Lease released (if held)"
            ),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "releasing the leader Lease failed; a standby takes over when it expires")
            }
        }
    }
    status.set_role(Role::Stopped);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

// ---- no election --------------------------------------------------------------------

/// A single replica: always the leader, never renewed, nothing to release.
#[derive(Debug)]
pub struct NoElection {
    identity: String,
    announced: AtomicBool,
}

impl NoElection {
    /// An elector that reports leadership once.
    pub fn new(identity: impl Into<String>) -> Self {
        NoElection {
            identity: identity.into(),
            announced: AtomicBool::new(false),
        }
    }
}

impl LeaderElector for NoElection {
    fn identity(&self) -> &str {
        &self.identity
    }

    async fn changed(&self) -> anyhow::Result<bool> {
        if !self.announced.swap(true, Ordering::SeqCst) {
            return Ok(true);
        }
        std::future::pending().await
    }

    async fn release(&self) -> anyhow::Result<()> {
        Ok(())
    }

    fn valid_until(&self) -> Option<Instant> {
        Some(far_future())
    }

    fn healthy(&self) -> bool {
        true
    }

    fn uses_lease(&self) -> bool {
        false
    }
}

// ---- in-memory lease (tests) --------------------------------------------------------------

#[derive(Debug, Default)]
struct MemoryLeaseState {
    holder: Option<String>,
    renewed: Option<Instant>,
    duration: Duration,
    transitions: u32,
}

/// An in-process Lease shared by [`MemoryElector`]s: the model of a `coordination.k8s.io`
/// Lease for tests (holder, renew time, duration; expired = renew time + duration passed).
#[derive(Debug, Default)]
pub struct MemoryLease {
    state: Mutex<MemoryLeaseState>,
}

impl MemoryLease {
    /// A free lease.
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryLease::default())
    }

    /// The `holderIdentity`, expired or not.
    pub fn holder(&self) -> Option<String> {
        self.lock().holder.clone()
    }

    /// The holder whose lease has not expired.
    pub fn valid_holder(&self) -> Option<String> {
        let s = self.lock();
        match (&s.holder, s.renewed) {
            (Some(h), Some(r)) if Instant::now() < r + s.duration => Some(h.clone()),
            _ => None,
        }
    }

    /// When the lease expires (`None`: free).
    pub fn expires_at(&self) -> Option<Instant> {
        let s = self.lock();
        s.holder.as_ref()?;
        s.renewed.map(|r| r + s.duration)
    }

    /// How often the lease changed hands (`leaseTransitions`).
    pub fn transitions(&self) -> u32 {
        self.lock().transitions
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryLeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Acquires or renews for `identity`: it holds the lease, or the lease is free or
    /// expired. Returns whether `identity` holds it now.
    fn take_or_renew(&self, identity: &str, duration: Duration, now: Instant) -> bool {
        let mut s = self.lock();
        let expired = s.renewed.is_none_or(|r| now >= r + s.duration);
        let mine = s.holder.as_deref() == Some(identity);
        if mine || s.holder.is_none() || expired {
            if !mine {
                s.transitions += 1;
            }
            s.holder = Some(identity.to_string());
            s.renewed = Some(now);
            s.duration = duration;
            true
        } else {
            false
        }
    }

    fn release(&self, identity: &str) {
        let mut s = self.lock();
        if s.holder.as_deref() == Some(identity) {
            s.holder = None;
            s.renewed = None;
        }
    }
}

/// A simulated failure of the lease store, for [`MemoryElector::set_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Requests work.
    None,
    /// Every request fails at once (API server answers errors).
    Fail,
    /// Every request hangs until the fault is cleared (network partition).
    Hang,
}

/// A [`LeaderElector`] over a [`MemoryLease`], with the timing behaviour of
/// [`KubeLeaseElector`]: the holder renews `renew_before` ahead of expiry; a standby looks
/// again when the current holder's lease would expire (so it notices a release only
/// then), and takes a free or expired lease.
#[derive(Debug)]
pub struct MemoryElector {
    lease: Arc<MemoryLease>,
    identity: String,
    timings: LeaseTimings,
    fault: Mutex<Fault>,
    fault_changed: tokio::sync::Notify,
    reported: AtomicBool,
    renewed_at: Mutex<Option<Instant>>,
    healthy: AtomicBool,
}

impl MemoryElector {
    /// An elector for `identity` over `lease`.
    pub fn new(
        lease: Arc<MemoryLease>,
        identity: impl Into<String>,
        timings: LeaseTimings,
    ) -> Self {
        MemoryElector {
            lease,
            identity: identity.into(),
            timings,
            fault: Mutex::new(Fault::None),
            fault_changed: tokio::sync::Notify::new(),
            reported: AtomicBool::new(false),
            renewed_at: Mutex::new(None),
            healthy: AtomicBool::new(true),
        }
    }

    /// Simulates a failure of the lease store from now on (or ends it).
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
        self.fault_changed.notify_waiters();
    }

    /// When this elector last acquired or renewed the lease.
    pub fn renewed_at(&self) -> Option<Instant> {
        *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One request to the store: waits out a `Hang`, fails on `Fail`.
    async fn request(&self) -> anyhow::Result<()> {
        loop {
            let notified = self.fault_changed.notified();
            match self.fault() {
                Fault::None => {
                    self.healthy.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                Fault::Fail => {
                    self.healthy.store(false, Ordering::SeqCst);
                    bail!("simulated lease store failure");
                }
                Fault::Hang => {
                    self.healthy.store(false, Ordering::SeqCst);
                    notified.await;
                }
            }
        }
    }
}

impl LeaderElector for MemoryElector {
    fn identity(&self) -> &str {
        &self.identity
    }

    async fn changed(&self) -> anyhow::Result<bool> {
        loop {
            let reported = self.reported.load(Ordering::SeqCst);
            let renew_due = self.renewed_at().is_none_or(|r| {
                Instant::now() >= r + self.timings.duration - self.timings.renew_before
            });
            let holding = if reported && !renew_due {
                true
            } else {
                self.request().await?;
                let now = Instant::now();
                let got = self
                    .lease
                    .take_or_renew(&self.identity, self.timings.duration, now);
                if got {
                    *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
                }
                got
            };
            if holding != reported {
                self.reported.store(holding, Ordering::SeqCst);
                if !holding {
                    *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                return Ok(holding);
            }
            let next = if holding {
                self.renewed_at().unwrap_or_else(Instant::now) + self.timings.duration
                    - self.timings.renew_before
            } else {
                // Like kube-lease-manager: look again when the holder's lease expires.
                self.lease
                    .expires_at()
                    .unwrap_or_else(Instant::now)
                    .max(Instant::now() + Duration::from_millis(10))
            };
            tokio::time::sleep_until(next).await;
        }
    }

    async fn release(&self) -> anyhow::Result<()> {
        self.request().await?;
        self.lease.release(&self.identity);
        self.reported.store(false, Ordering::SeqCst);
        *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn valid_until(&self) -> Option<Instant> {
        if !self.reported.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.renewed_at().unwrap_or_else(Instant::now) + self.timings.duration)
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}

// ---- Kubernetes Lease (kube-lease-manager) -------------------------------------------------

/// What the lease client saw: when the last successful renewal was sent, and whether the
/// last exchange succeeded.
#[derive(Debug)]
struct Exchanges {
    created: Instant,
    last_renewal: Mutex<Option<Instant>>,
    healthy: AtomicBool,
}

impl Exchanges {
    fn record(&self, method: &Method, sent: Instant, outcome: Result<http::StatusCode, ()>) {
        match outcome {
            Ok(status) => {
                // The API server answered: healthy unless it refused us or failed.
                let ok = !status.is_server_error()
                    && status != http::StatusCode::UNAUTHORIZED
                    && status != http::StatusCode::FORBIDDEN;
                self.healthy.store(ok, Ordering::SeqCst);
                if status.is_success() && *method == Method::PATCH {
                    // Every successful PATCH of the lease client writes the Lease: acquire
                    // (renewTime set just before sending), renewal, release. Only its time
                    // while holding matters (see `KubeLeaseElector::valid_until`).
                    let mut last = self.last_renewal.lock().unwrap_or_else(|p| p.into_inner());
                    if last.is_none_or(|l| l < sent) {
                        *last = Some(sent);
                    }
                }
            }
            Err(()) => self.healthy.store(false, Ordering::SeqCst),
        }
    }
}

/// Tower layer of the lease client that feeds [`Exchanges`].
#[derive(Clone)]
struct RecordLayer(Arc<Exchanges>);

impl<S> tower::Layer<S> for RecordLayer {
    type Service = RecordService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordService {
            inner,
            exchanges: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct RecordService<S> {
    inner: S,
    exchanges: Arc<Exchanges>,
}

impl<S, B> tower::Service<Request<Body>> for RecordService<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let method = req.method().clone();
        let sent = Instant::now();
        let exchanges = self.exchanges.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            exchanges.record(
                &method,
                sent,
                res.as_ref().map(|r| r.status()).map_err(|_| ()),
            );
            res
        })
    }
}

/// Leader election on a `coordination.k8s.io/v1` Lease with `kube-lease-manager`
/// (server-side apply with a field manager per identity, so two instances cannot both
/// lock it).
///
/// The Lease is created when missing (RBAC: `create` on leases, then `get`/`patch` on
/// this one). Its validity is tracked from the client side: a middleware on the lease
/// client records when each successful write was sent, and
/// [`valid_until`](LeaderElector::valid_until) is that plus the duration. After an error
/// the manager is rebuilt on the next call (its internal state may be stale), so a lease
/// this instance still holds is reported again instead of being renewed silently.
pub struct KubeLeaseElector {
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    timings: LeaseTimings,
    exchanges: Arc<Exchanges>,
    manager: tokio::sync::Mutex<Option<Arc<LeaseManager>>>,
    reported: AtomicBool,
    /// Set when a call failed while reporting leadership: the deadline as of the last
    /// write before the failure. Writes after it do not count until the (rebuilt) manager
    /// reports again: it may be force-releasing someone else's expired lock.
    frozen_until: Mutex<Option<Instant>>,
    maybe_holder: AtomicBool,
}

impl std::fmt::Debug for KubeLeaseElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLeaseElector")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("timings", &self.timings)
            .finish()
    }
}

impl KubeLeaseElector {
    /// An elector for Lease `namespace/name` as `identity`. `client` is the builder of the
    /// lease client (usually `ClientBuilder::try_from(config)` with short timeouts, so a
    /// hanging renewal fails fast); a recording layer is added to it.
    pub fn new<S, B>(
        client: ClientBuilder<S>,
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
        timings: LeaseTimings,
    ) -> Self
    where
        S: tower::Service<Request<Body>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<tower::BoxError> + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<tower::BoxError>,
    {
        let exchanges = Arc::new(Exchanges {
            created: Instant::now(),
            last_renewal: Mutex::new(None),
            healthy: AtomicBool::new(false),
        });
        let client = client.with_layer(&RecordLayer(exchanges.clone())).build();
        KubeLeaseElector {
            client,
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            timings,
            exchanges,
            manager: tokio::sync::Mutex::new(None),
            reported: AtomicBool::new(false),
            frozen_until: Mutex::new(None),
            maybe_holder: AtomicBool::new(false),
        }
    }

    async fn manager(&self) -> anyhow::Result<Arc<LeaseManager>> {
        let mut slot = self.manager.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = LeaseManagerBuilder::new(self.client.clone(), &self.name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(self.timings.duration.as_secs())
            .with_grace(self.timings.renew_before.as_secs())
            // The builder keeps the field manager of its random default identity.
            .with_field_manager(field_manager(&self.identity))
            .build()
            .await
            .with_context(|| {
                format!("reading or creating Lease {}/{}", self.namespace, self.name)
            })?;
        let m = Arc::new(m);
        *slot = Some(m.clone());
        Ok(m)
    }
}

impl KubeLeaseElector {
    /// The deadline given by this instance's last successful write. No write yet (a
    /// restarted process whose identity still holds the Lease): already passed, so the
    /// controllers wait for the manager's next renewal.
    fn written_until(&self) -> Instant {
        self.exchanges
            .last_renewal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t + self.timings.duration)
            .unwrap_or(self.exchanges.created)
    }

    async fn try_changed(&self) -> anyhow::Result<bool> {
        let manager = self.manager().await?;
        manager
            .changed()
            .await
            .with_context(|| format!("Lease {}/{}", self.namespace, self.name))
    }
}

impl LeaderElector for KubeLeaseElector {
    fn identity(&self) -> &str {
        &self.identity
    }

    async fn changed(&self) -> anyhow::Result<bool> {
        match self.try_changed().await {
            Ok(holding) => {
                *self.frozen_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.reported.store(holding, Ordering::SeqCst);
                self.maybe_holder.store(holding, Ordering::SeqCst);
                Ok(holding)
            }
            Err(e) => {
                if self.reported.load(Ordering::SeqCst) {
                    let mut frozen = self.frozen_until.lock().unwrap_or_else(|p| p.into_inner());
                    if frozen.is_none() {
                        *frozen = Some(self.written_until());
                    }
                }
                // Rebuild on the next call: a fresh manager reports the Lease as it is.
                *self.manager.lock().await = None;
                Err(e)
            }
        }
    }

    async fn release(&self) -> anyhow::Result<()> {
        if !self.maybe_holder.load(Ordering::SeqCst) {
            return Ok(());
        }
        let manager = self.manager().await?;
        manager
            .release()
            .await
            .with_context(|| format!("releasing Lease {}/{}", self.namespace, self.name))?;
        self.reported.store(false, Ordering::SeqCst);
        self.maybe_holder.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn valid_until(&self) -> Option<Instant> {
        if !self.reported.load(Ordering::SeqCst) {
            return None;
        }
        if let Some(frozen) = *self.frozen_until.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(frozen);
        }
        Some(self.written_until())
    }

    fn healthy(&self) -> bool {
        self.exchanges.healthy.load(Ordering::SeqCst)
    }
}

/// The field manager of the Lease writes of `identity` (at most 128 characters).
fn field_manager(identity: &str) -> String {
    format!("kube-lease-manager-{identity}")
        .chars()
        .take(128)
        .collect()
}

/// This process's identity in the Lease: `$POD_NAME`, else `<hostname>-<pid>`.
pub fn default_identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "certus-vault".to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_follow_the_duration() {
        let t = LeaseTimings::new(Duration::from_secs(15)).unwrap();
        assert_eq!(t.renew_before, Duration::from_secs(5));
        assert_eq!(t.stop_before, Duration::from_millis(2500));
        let t = LeaseTimings::new(Duration::from_secs(2)).unwrap();
        assert_eq!(t.renew_before, Duration::from_secs(1));
        assert_eq!(t.stop_before, Duration::from_millis(500));
        assert!(t.renew_before < t.duration && t.stop_before < t.renew_before);
        assert!(LeaseTimings::new(Duration::from_secs(1)).is_err());
        assert!(LeaseTimings::new(Duration::from_millis(2500)).is_err());
    }

    #[test]
    fn readiness_by_role() {
        let s = LeaderStatus::new("a");
        assert!(
            !s.ready(true),
            "a standby that has not reached the lease store yet"
        );
        s.set_healthy(true);
        assert!(s.ready(false), "a healthy standby is ready");
        s.set_role(Role::Leader);
        assert!(!s.ready(false), "a leader whose controllers are not ready");
        assert!(s.ready(true));
        assert!(s.is_leader());
        s.set_role(Role::Stopping);
        assert!(!s.ready(true));
        assert!(s.is_leader());
        s.set_role(Role::Standby);
        s.set_healthy(false);
        assert!(!s.ready(true), "an unhealthy standby");
        assert!(s.live(Duration::from_secs(30)));
        s.set_role(Role::Stopped);
        assert!(!s.live(Duration::from_secs(30)));
    }

    #[test]
    fn identity_prefers_the_pod_name() {
        // Not setting variables here (tests share the environment): just the shape.
        let id = default_identity();
        assert!(!id.is_empty());
        if std::env::var("POD_NAME").is_err() {
            assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        }
    }
}
