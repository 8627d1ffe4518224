//! Tier 2: leader election with the Kubernetes side faked.
//!
//! - Two (or three) supervisors share one in-memory lease ([`MemoryLease`]); each runs a
//!   fake "controllers" future that records when it runs. Virtual time (tokio's paused
//!   clock) makes the timings exact: the recorded intervals never overlap, a standby takes
//!   over within the lease duration after the leader shuts down, crashes or cannot renew,
//!   and shutdown releases the lease.
//! - The same with the real `kube-lease-manager` elector ([`KubeLeaseElector`]) against a
//!   fake Lease API served over `tower-test` (real time, 2 s leases).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certus_controller::leader::{
    supervise, Fault, KubeLeaseElector, LeaderElector, LeaderStatus, LeaseTimings, MemoryElector,
    MemoryLease, NoElection, Role, StopSignal, SuperviseOptions,
};
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::client::{Body, ClientBuilder};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_test::mock;

// ---- the fake controllers and their log ------------------------------------------------

#[derive(Clone, Debug)]
struct Term {
    who: &'static str,
    start: Instant,
    stop: Option<Instant>,
    /// Stopped by finishing after the stop signal (not dropped).
    graceful: bool,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Term>>>);

impl Log {
    fn terms(&self) -> Vec<Term> {
        self.0.lock().unwrap().clone()
    }
    fn terms_of(&self, who: &str) -> Vec<Term> {
        self.terms().into_iter().filter(|t| t.who == who).collect()
    }
    fn running(&self) -> Vec<&'static str> {
        self.terms()
            .iter()
            .filter(|t| t.stop.is_none())
            .map(|t| t.who)
            .collect()
    }
    /// No two terms overlap: sorted by start, each ends before (or when) the next starts.
    fn assert_no_overlap(&self) {
        let mut terms = self.terms();
        terms.sort_by_key(|t| t.start);
        for w in terms.windows(2) {
            let stop = w[0].stop.unwrap_or_else(|| {
                panic!(
                    "{} still runs while {} started: {terms:#?}",
                    w[0].who, w[1].who
                )
            });
            assert!(
                stop <= w[1].start,
                "{} ran until {:?} but {} started at {:?}: {terms:#?}",
                w[0].who,
                stop,
                w[1].who,
                w[1].start
            );
        }
    }
}

/// Records its stop when dropped (graceful end or abort).
struct TermGuard {
    log: Log,
    idx: usize,
    graceful: bool,
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        let mut terms = self.log.0.lock().unwrap();
        terms[self.idx].stop = Some(Instant::now());
        terms[self.idx].graceful = self.graceful;
    }
}

/// Fake controllers: run until the stop signal, then take `drain` to finish their
/// in-flight reconciles.
fn controllers(
    log: Log,
    who: &'static str,
    drain: Duration,
) -> impl Fn(StopSignal) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync + 'static {
    move |stop: StopSignal| {
        let log = log.clone();
        Box::pin(async move {
            let idx = {
                let mut terms = log.0.lock().unwrap();
                terms.push(Term {
                    who,
                    start: Instant::now(),
                    stop: None,
                    graceful: false,
                });
                terms.len() - 1
            };
            let mut guard = TermGuard {
                log,
                idx,
                graceful: false,
            };
            stop.await;
            tokio::time::sleep(drain).await;
            guard.graceful = true;
            Ok(())
        })
    }
}

struct Instance<E> {
    elector: Arc<E>,
    status: Arc<LeaderStatus>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl<E: LeaderElector + 'static> Instance<E> {
    fn spawn(
        elector: E,
        options: SuperviseOptions,
        log: &Log,
        who: &'static str,
        drain: Duration,
    ) -> Self {
        let elector = Arc::new(elector);
        let status = Arc::new(LeaderStatus::new(who));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let elector = elector.clone();
            let status = status.clone();
            let start = controllers(log.clone(), who, drain);
            async move {
                supervise(&*elector, options, &status, start, async move {
                    let _ = rx.await;
                })
                .await
            }
        });
        Instance {
            elector,
            status,
            shutdown: Some(tx),
            task,
        }
    }

    fn request_shutdown(&mut self) {
        let _ = self.shutdown.take().unwrap().send(());
    }

    async fn shut_down(mut self) -> anyhow::Result<()> {
        self.request_shutdown();
        self.task.await.unwrap()
    }
}

fn timings(secs: u64) -> LeaseTimings {
    LeaseTimings::new(Duration::from_secs(secs)).unwrap()
}

fn memory(
    lease: &Arc<MemoryLease>,
    who: &'static str,
    log: &Log,
    drain: Duration,
) -> Instance<MemoryElector> {
    let t = timings(15);
    Instance::spawn(
        MemoryElector::new(lease.clone(), who, t),
        SuperviseOptions::for_timings(&t),
        log,
        who,
        drain,
    )
}

/// Polls `cond` every `step` until it holds, failing after `timeout`.
async fn wait_until(what: &str, timeout: Duration, step: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(step).await;
    }
}

const STEP: Duration = Duration::from_millis(50);

// ---- supervisor over the in-memory lease (virtual time) ------------------------------------

/// One leader, one healthy standby; the leader shuts down (draining for 3 s while it keeps
/// renewing), releases the lease, and the standby takes over within the lease duration.
#[tokio::test(start_paused = true)]
async fn standby_takes_over_after_the_leader_shuts_down_without_overlap() {
    let lease = MemoryLease::new();
    let log = Log::default();
    let a = memory(&lease, "a", &log, Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = memory(&lease, "b", &log, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(60)).await;

    assert_eq!(log.running(), vec!["a"], "only the leader runs controllers");
    assert_eq!(lease.valid_holder().as_deref(), Some("a"));
    assert_eq!(a.status.role(), Role::Leader);
    assert!(a.status.ready(true) && !a.status.ready(false));
    assert_eq!(b.status.role(), Role::Standby);
    assert!(b.status.ready(false), "a healthy standby is ready");
    assert!(!b.status.is_leader());
    assert_eq!(log.terms_of("b").len(), 0);

    let a_status = a.status.clone();
    let shutdown_at = Instant::now();
    let mut a = a;
    a.request_shutdown();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a_status.role(), Role::Stopping, "draining");
    assert!(!a_status.ready(true), "not ready while shutting down");
    assert_eq!(
        lease.valid_holder().as_deref(),
        Some("a"),
        "the lease is kept while draining"
    );
    assert_eq!(log.running(), vec!["a"]);
    a.task.await.unwrap().expect("a clean shutdown");
    let released_at = Instant::now();
    assert_eq!(a_status.role(), Role::Stopped);
    assert!(
        released_at >= shutdown_at + Duration::from_secs(3),
        "in-flight work finished first"
    );
    assert_ne!(
        lease.holder().as_deref(),
        Some("a"),
        "shutdown released the lease"
    );

    wait_until("b to lead", Duration::from_secs(30), STEP, || {
        log.running() == vec!["b"]
    })
    .await;
    let b_start = log.terms_of("b")[0].start;
    assert!(
        b_start - released_at <= Duration::from_secs(15),
        "the standby took over {:?} after the release",
        b_start - released_at
    );
    let a_term = &log.terms_of("a")[0];
    assert!(
        a_term.graceful,
        "the leader's controllers finished gracefully"
    );
    assert_eq!(b.status.role(), Role::Leader);
    log.assert_no_overlap();
    b.shut_down().await.unwrap();
    assert_eq!(lease.holder(), None);
}

/// The leader's process dies (its supervisor is dropped: no release). The standby takes
/// the lease once it expires: within the lease duration of the crash.
#[tokio::test(start_paused = true)]
async fn standby_takes_over_within_the_lease_duration_when_the_leader_crashes() {
    let lease = MemoryLease::new();
    let log = Log::default();
    let a = memory(&lease, "a", &log, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = memory(&lease, "b", &log, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(37)).await;
    assert_eq!(log.running(), vec!["a"]);

    let last_renewal = a.elector.renewed_at().unwrap();
    a.task.abort();
    let crashed_at = Instant::now();
    let _ = a.task.await;
    assert_eq!(
        log.running(),
        Vec::<&str>::new(),
        "a's controllers died with it"
    );
    assert_eq!(
        lease.holder().as_deref(),
        Some("a"),
        "nothing released the lease"
    );

    wait_until("b to lead", Duration::from_secs(30), STEP, || {
        log.running() == vec!["b"]
    })
    .await;
    let b_start = log.terms_of("b")[0].start;
    assert!(
        b_start >= last_renewal + Duration::from_secs(15),
        "b waited for the lease to expire"
    );
    assert!(
        b_start - crashed_at <= Duration::from_secs(15),
        "b took over {:?} after the crash",
        b_start - crashed_at
    );
    log.assert_no_overlap();
    b.shut_down().await.unwrap();
}

async fn leader_that_cannot_renew(fault: Fault) {
    let lease = MemoryLease::new();
    let log = Log::default();
    let a = memory(&lease, "a", &log, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = memory(&lease, "b", &log, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(log.running(), vec!["a"]);

    // From now on a's requests to the lease store hang / fail.
    a.elector.set_fault(fault);
    let last_renewal = a.elector.renewed_at().unwrap();
    let expires = last_renewal + Duration::from_secs(15);
    wait_until("b to lead", Duration::from_secs(40), STEP, || {
        log.running() == vec!["b"]
    })
    .await;

    let a_term = log.terms_of("a")[0].clone();
    let a_stop = a_term.stop.unwrap();
    assert!(!a_term.graceful, "dropped, not drained");
    assert!(
        a_stop <= expires - Duration::from_millis(2500),
        "a stopped at {:?} after its last renewal; must be 2.5s before the lease expires",
        a_stop - last_renewal
    );
    assert!(
        log.terms_of("b")[0].start >= expires,
        "b waited for the lease to expire"
    );
    assert_eq!(a.status.role(), Role::Standby);
    assert!(
        !a.status.ready(true),
        "a standby that cannot reach the lease is not ready"
    );
    log.assert_no_overlap();

    // The store comes back: a stays a standby, b keeps leading.
    a.elector.set_fault(Fault::None);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(log.running(), vec!["b"]);
    assert_eq!(log.terms_of("a").len(), 1, "a did not start again");
    assert_eq!(a.status.role(), Role::Standby);
    assert!(a.status.ready(false), "healthy standby again");
    log.assert_no_overlap();
    a.shut_down().await.unwrap();
    b.shut_down().await.unwrap();
}

/// A partitioned leader (its renewals hang) drops its controllers before its lease can
/// expire; the standby takes over after expiry.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_hang_stops_before_the_lease_expires() {
    leader_that_cannot_renew(Fault::Hang).await;
}

/// Same when the renewals fail with errors (the leader retries until the deadline).
#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_fail_stops_before_the_lease_expires() {
    leader_that_cannot_renew(Fault::Fail).await;
}

/// Three instances over many leadership changes (crash, shutdown, partitions): never two
/// terms at once.
#[tokio::test(start_paused = true)]
async fn three_instances_through_failures_never_overlap() {
    let lease = MemoryLease::new();
    let log = Log::default();
    let a = memory(&lease, "a", &log, Duration::from_secs(2));
    let b = memory(&lease, "b", &log, Duration::from_secs(2));
    let c = memory(&lease, "c", &log, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let instances = [&a, &b, &c];
    let leader = |log: &Log| log.running().first().copied();
    for round in 0..4 {
        let who = leader(&log).unwrap_or_else(|| panic!("round {round}: nobody leads"));
        let inst = instances
            .iter()
            .find(|i| i.status.identity() == who)
            .unwrap();
        inst.elector.set_fault(if round % 2 == 0 {
            Fault::Hang
        } else {
            Fault::Fail
        });
        wait_until("another leader", Duration::from_secs(60), STEP, || {
            leader(&log).is_some_and(|l| l != who)
        })
        .await;
        inst.elector.set_fault(Fault::None);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(log.running().len(), 1, "round {round}: {:?}", log.terms());
    }
    log.assert_no_overlap();
    assert!(
        lease.transitions() >= 5,
        "the lease changed hands in every round"
    );
    for i in [a, b, c] {
        i.shut_down().await.unwrap();
    }
    log.assert_no_overlap();
    assert_eq!(log.running(), Vec::<&str>::new());
    assert_eq!(lease.holder(), None, "the last leader released the lease");
}

/// Shutting down a standby returns at once and leaves the leader alone.
#[tokio::test(start_paused = true)]
async fn shutting_down_a_standby_leaves_the_leader_alone() {
    let lease = MemoryLease::new();
    let log = Log::default();
    let a = memory(&lease, "a", &log, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = memory(&lease, "b", &log, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = Instant::now();
    b.shut_down().await.unwrap();
    assert!(Instant::now() - t < Duration::from_secs(1));
    assert_eq!(lease.valid_holder().as_deref(), Some("a"));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(log.running(), vec!["a"]);
    a.shut_down().await.unwrap();
    assert_eq!(lease.holder(), None);
}

/// Controllers that end on their own are an error: supervise releases the lease and
/// returns it (the process exits and is restarted).
#[tokio::test(start_paused = true)]
async fn controllers_that_fail_end_supervise_with_an_error_and_release_the_lease() {
    let lease = MemoryLease::new();
    let t = timings(15);
    let elector = MemoryElector::new(lease.clone(), "a", t);
    let status = LeaderStatus::new("a");
    let result = supervise(
        &elector,
        SuperviseOptions::for_timings(&t),
        &status,
        |_stop: StopSignal| async { Err::<(), _>(anyhow::anyhow!("CRDs missing")) },
        std::future::pending(),
    )
    .await;
    let e = result.unwrap_err();
    assert!(format!("{e:#}").contains("CRDs missing"), "{e:#}");
    assert_eq!(lease.holder(), None);
    assert_eq!(status.role(), Role::Stopped);
}

/// Without election the controllers run at once, `certus_leader` is 1, and shutdown
/// drains them.
#[tokio::test(start_paused = true)]
async fn without_election_the_controllers_run_until_shutdown() {
    let log = Log::default();
    let i = Instance::spawn(
        NoElection::new("solo"),
        SuperviseOptions::default(),
        &log,
        "solo",
        Duration::from_secs(1),
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(log.running(), vec!["solo"]);
    assert!(i.status.is_leader());
    let mut registry = prometheus_client::registry::Registry::default();
    i.status.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("certus_leader 1"), "{text}");
    i.shut_down().await.unwrap();
    assert!(log.terms()[0].graceful);
}

// ---- kube-lease-manager against a fake Lease API (real time) ---------------------------------

const NS: &str = "ops";
const LEASE: &str = "certus-vault-operator";

/// The Lease as the fake API server holds it, shared by every client.
#[derive(Default)]
struct FakeApi {
    lease: Option<Value>,
    resource_version: u64,
    /// (identity of the client, method, field manager) of every write.
    writes: Vec<(String, Method, String)>,
    /// When each client's last successful PATCH was answered.
    last_patch_ok: std::collections::HashMap<String, std::time::Instant>,
    unexpected: Vec<String>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

fn respond(tx: tower_test::mock::SendResponse<Response<Body>>, code: u16, body: &Value) {
    tx.send_response(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// Merges `patch.spec` into the Lease: `null` removes a field. An apply patch that sets
/// `holderIdentity` while another holder's value is there conflicts (the field belongs to
/// the other holder's field manager), like server-side apply without force.
fn patch_lease(api: &mut FakeApi, apply: bool, patch: &Value) -> Result<Value, (u16, Value)> {
    let Some(lease) = api.lease.as_mut() else {
        return Err((404, status(404, "NotFound", "leases not found")));
    };
    let spec = lease["spec"].as_object_mut().unwrap();
    if apply {
        if let (Some(new), Some(old)) = (
            patch["spec"]["holderIdentity"].as_str(),
            spec.get("holderIdentity").and_then(Value::as_str),
        ) {
            if new != old {
                return Err((409, status(409, "Conflict", "Apply failed with 1 conflict: conflict with \"kube-lease-manager-x\": .spec.holderIdentity")));
            }
        }
    }
    if let Some(fields) = patch["spec"].as_object() {
        for (k, v) in fields {
            if v.is_null() {
                spec.remove(k);
            } else {
                spec.insert(k.clone(), v.clone());
            }
        }
    }
    api.resource_version += 1;
    lease["metadata"]["resourceVersion"] = json!(api.resource_version.to_string());
    Ok(lease.clone())
}

/// Serves one client (`who`) from the shared fake. PATCHes fail with 500 while
/// `fail_patches` is set.
async fn serve_lease_api(
    mut handle: mock::Handle<Request<Body>, Response<Body>>,
    who: String,
    api: Arc<Mutex<FakeApi>>,
    fail_patches: Arc<AtomicBool>,
) {
    let base = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    while let Some((req, tx)) = handle.next_request().await {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let field_manager = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("fieldManager="))
            .unwrap_or("")
            .to_string();
        let mut a = api.lock().unwrap();
        match (&method, path.as_str()) {
            (&Method::GET, p) if p == format!("{base}/{LEASE}") => match &a.lease {
                Some(l) => respond(tx, 200, l),
                None => respond(tx, 404, &status(404, "NotFound", "leases not found")),
            },
            (&Method::POST, p) if p == base => {
                a.writes.push((who.clone(), method.clone(), field_manager));
                if a.lease.is_some() {
                    respond(
                        tx,
                        409,
                        &status(409, "AlreadyExists", "leases already exists"),
                    );
                } else {
                    a.resource_version += 1;
                    let lease = json!({
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": LEASE, "namespace": NS, "resourceVersion": a.resource_version.to_string()},
                        "spec": {}
                    });
                    a.lease = Some(lease.clone());
                    respond(tx, 201, &lease);
                }
            }
            (&Method::PATCH, p) if p == format!("{base}/{LEASE}") => {
                a.writes.push((who.clone(), method.clone(), field_manager));
                if fail_patches.load(Ordering::SeqCst) {
                    respond(
                        tx,
                        500,
                        &status(500, "InternalError", "etcdserver: request timed out"),
                    );
                    continue;
                }
                let apply = content_type.starts_with("application/apply-patch");
                match patch_lease(&mut a, apply, &body) {
                    Ok(lease) => {
                        a.last_patch_ok
                            .insert(who.clone(), std::time::Instant::now());
                        respond(tx, 200, &lease)
                    }
                    Err((code, st)) => respond(tx, code, &st),
                }
            }
            _ => {
                a.unexpected.push(format!("{method} {path}?{query}"));
                respond(tx, 404, &status(404, "NotFound", "unexpected request"));
            }
        }
    }
}

fn kube_instance(
    api: &Arc<Mutex<FakeApi>>,
    who: &'static str,
    log: &Log,
) -> (Instance<KubeLeaseElector>, Arc<AtomicBool>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let fail = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_lease_api(
        handle,
        who.to_string(),
        api.clone(),
        fail.clone(),
    ));
    let t = timings(2);
    let elector = KubeLeaseElector::new(ClientBuilder::new(service, "default"), NS, LEASE, who, t);
    (
        Instance::spawn(
            elector,
            SuperviseOptions::for_timings(&t),
            log,
            who,
            Duration::ZERO,
        ),
        fail,
    )
}

fn holder(api: &Arc<Mutex<FakeApi>>) -> Option<String> {
    api.lock().unwrap().lease.as_ref()?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// kube-lease-manager through `KubeLeaseElector`: the first instance creates the Lease and
/// holds it (renewing it), the second stands by and is ready; shutting the leader down
/// releases the Lease (holderIdentity cleared) and the standby takes over within the lease
/// duration; the controllers never overlap.
#[tokio::test]
async fn kube_lease_elector_hands_over_after_a_release() {
    let api = Arc::new(Mutex::new(FakeApi::default()));
    let log = Log::default();
    let (a, _) = kube_instance(&api, "a", &log);
    wait_until("a to lead", Duration::from_secs(10), STEP, || {
        log.running() == vec!["a"]
    })
    .await;
    let (b, _) = kube_instance(&api, "b", &log);
    // Several renewal cycles of a 2 s lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(log.running(), vec!["a"]);
    assert_eq!(holder(&api).as_deref(), Some("a"));
    assert_eq!(b.status.role(), Role::Standby);
    assert!(
        b.status.ready(false),
        "the standby reached the Lease: ready"
    );
    {
        let a_api = api.lock().unwrap();
        let renewals = a_api
            .writes
            .iter()
            .filter(|(w, m, fm)| w == "a" && *m == Method::PATCH && fm == "kube-lease-manager-a")
            .count();
        assert!(
            renewals >= 4,
            "a acquired and renewed with its own field manager: {:?}",
            a_api.writes
        );
        assert_eq!(a_api.unexpected, Vec::<String>::new());
    }

    a.shut_down().await.unwrap();
    let released_at = Instant::now();
    assert_ne!(
        holder(&api).as_deref(),
        Some("a"),
        "shutdown released the Lease"
    );
    wait_until("b to lead", Duration::from_secs(10), STEP, || {
        log.running() == vec!["b"]
    })
    .await;
    let b_start = log.terms_of("b")[0].start;
    assert!(
        b_start - released_at <= Duration::from_millis(2000 + 1500),
        "b took over {:?} after the release",
        b_start - released_at
    );
    assert_eq!(holder(&api).as_deref(), Some("b"));
    log.assert_no_overlap();
    b.shut_down().await.unwrap();
    assert_eq!(holder(&api), None);
    assert_eq!(api.lock().unwrap().unexpected, Vec::<String>::new());
}

/// The leader's renewals fail (the API server answers 500): its controllers stop before
/// its Lease could expire, the standby takes the expired Lease, the old leader stays a
/// standby once the API server recovers.
#[tokio::test]
async fn kube_lease_elector_failing_renewals_stop_the_leader_before_expiry() {
    let api = Arc::new(Mutex::new(FakeApi::default()));
    let log = Log::default();
    let (a, a_fail) = kube_instance(&api, "a", &log);
    wait_until("a to lead", Duration::from_secs(10), STEP, || {
        log.running() == vec!["a"]
    })
    .await;
    let (b, _) = kube_instance(&api, "b", &log);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(log.running(), vec!["a"]);

    a_fail.store(true, Ordering::SeqCst);
    let failing_since = std::time::Instant::now();
    wait_until("b to lead", Duration::from_secs(15), STEP, || {
        log.running() == vec!["b"]
    })
    .await;
    let last_ok = api.lock().unwrap().last_patch_ok["a"];
    assert!(last_ok <= failing_since);
    let a_stop: std::time::Instant = log.terms_of("a")[0].stop.unwrap().into_std();
    assert!(
        a_stop <= last_ok + Duration::from_millis(2000),
        "a stopped {:?} after its last successful renewal (lease duration 2s)",
        a_stop - last_ok
    );
    assert_eq!(holder(&api).as_deref(), Some("b"));
    log.assert_no_overlap();

    a_fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(log.running(), vec!["b"], "{:?}", log.terms());
    assert_eq!(log.terms_of("a").len(), 1);
    assert_eq!(a.status.role(), Role::Standby);
    log.assert_no_overlap();
    a.shut_down().await.unwrap();
    assert_eq!(
        holder(&api).as_deref(),
        Some("b"),
        "a's shutdown leaves b's Lease alone"
    );
    b.shut_down().await.unwrap();
    assert_eq!(api.lock().unwrap().unexpected, Vec::<String>::new());
}
