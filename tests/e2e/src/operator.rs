//! The operator under test: the `certus-vault` binary, run as a child process with
//! `certus-vault run`, `KUBECONFIG=$CERTUS_E2E_KUBECONFIG` and its output in a log file.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Overrides the operator binary (skips the `cargo build`).
pub const ENV_OPERATOR_BIN: &str = "CERTUS_E2E_OPERATOR_BIN";
/// Extra arguments after `certus-vault run`, split on whitespace.
pub const ENV_OPERATOR_ARGS: &str = "CERTUS_E2E_OPERATOR_ARGS";
/// `RUST_LOG` for the operator (default `info`).
pub const ENV_OPERATOR_RUST_LOG: &str = "CERTUS_E2E_OPERATOR_RUST_LOG";

/// The directory of the test binary's profile, e.g. `target/debug` (the test binary is
/// `target/debug/deps/<name>-<hash>`).
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no profile directory", exe.display()))
}

/// The `certus-vault` binary: `$CERTUS_E2E_OPERATOR_BIN`, or `certus-vault` next to this
/// test binary's profile directory, (re)built with `cargo build -p certus-cli` once per
/// test binary so that it is never stale.
pub fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| resolve_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn resolve_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(ENV_OPERATOR_BIN).filter(|v| !v.is_empty()) {
        let bin = crate::user_path(Path::new(&bin));
        if !bin.is_file() {
            bail!("{ENV_OPERATOR_BIN}={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let profile_dir = profile_dir()?;
    let bin = profile_dir.join(format!("certus-vault{}", std::env::consts::EXE_SUFFIX));
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    // target/<profile> or target/<triple>/<profile> (cargo marks the root with CACHEDIR.TAG).
    let mut target_dir = profile_dir
        .parent()
        .context("profile directory has no parent")?
        .to_path_buf();
    let mut triple = None;
    if !target_dir.join("CACHEDIR.TAG").exists() {
        if let Some(parent) = target_dir.parent() {
            if parent.join("CACHEDIR.TAG").exists() {
                triple = target_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string);
                target_dir = parent.to_path_buf();
            }
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "certus-cli", "--bin", "certus-vault"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(crate::workspace_root())
        .stdin(Stdio::null());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(t) = &triple {
        cmd.args(["--target", t]);
    }
    eprintln!(
        "e2e: building the operator: {cmd:?} (set {ENV_OPERATOR_BIN} to use a prebuilt binary)"
    );
    match cmd.status() {
        Ok(s) if s.success() && bin.is_file() => Ok(bin),
        Ok(s) if s.success() => bail!(
            "cargo build succeeded but {} does not exist; set {ENV_OPERATOR_BIN}",
            bin.display()
        ),
        // A failed build must not silently test an older binary.
        Ok(s) => bail!(
            "building the operator failed ({s}); fix the build, or set {ENV_OPERATOR_BIN} to a binary to test"
        ),
        // No cargo (the test binary was run by hand): use what was built before.
        Err(e) if bin.is_file() => {
            eprintln!(
                "e2e: WARNING: cannot run {cargo} ({e}); testing the existing {}",
                bin.display()
            );
            Ok(bin)
        }
        Err(e) => bail!(
            "cannot run {cargo} ({e}) and {} does not exist; build it with `cargo build -p certus-cli` or set {ENV_OPERATOR_BIN}",
            bin.display()
        ),
    }
}

/// A running `certus-vault run`. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct Operator {
    child: Mutex<Child>,
    stopped: std::sync::atomic::AtomicBool,
    pid: u32,
    log: PathBuf,
    started: Instant,
    metrics_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("pid", &self.pid)
            .field("log", &self.log)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

impl Operator {
    /// Starts `<bin> run [$CERTUS_E2E_OPERATOR_ARGS]` with `KUBECONFIG=kubeconfig`, writing
    /// stdout and stderr to `log`. The Vault environment variables are removed so the
    /// operator can only reach Vault through the `VaultConnection` objects.
    pub fn start(bin: &Path, kubeconfig: &Path, log: &Path) -> Result<Operator> {
        Self::start_with(bin, kubeconfig, log, &[])
    }

    /// [`Operator::start`] with more arguments after `$CERTUS_E2E_OPERATOR_ARGS`. Unless
    /// one of them sets `--metrics-addr`, the operator serves /metrics, /livez and /readyz
    /// on a free loopback port ([`Operator::http_get`]), so several operators can run on
    /// one machine. `POD_NAME`/`POD_NAMESPACE` are removed: the Lease identity of each is
    /// `<hostname>-<pid>`.
    pub fn start_with(
        bin: &Path,
        kubeconfig: &Path,
        log: &Path,
        args: &[String],
    ) -> Result<Operator> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let file2 = file
            .try_clone()
            .context("duplicating the log file handle")?;
        let mut extra: Vec<String> = std::env::var(ENV_OPERATOR_ARGS)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        extra.extend(args.iter().cloned());
        let metrics_addr = match metrics_addr_arg(&extra) {
            Some(addr) => addr.parse::<SocketAddr>().ok(),
            None => {
                let addr = free_loopback_addr()?;
                extra.push(format!("--metrics-addr={addr}"));
                Some(addr)
            }
        };
        let rust_log = std::env::var(ENV_OPERATOR_RUST_LOG).unwrap_or_else(|_| "info".into());
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(&extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", &rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2));
        for var in [
            "VAULT_ADDR",
            "VAULT_TOKEN",
            "VAULT_CACERT",
            "BAO_ADDR",
            "BAO_TOKEN",
            "BAO_CACERT",
            "POD_NAME",
            "POD_NAMESPACE",
        ] {
            cmd.env_remove(var);
        }
        stop_stale(bin);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} run", bin.display()))?;
        let pid = child.id();
        if let Ok(pid_file) = pid_file(pid) {
            if let Some(dir) = pid_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            // Names the test process: its own operators are not "stale" to it.
            let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
        }
        eprintln!(
            "e2e: operator started: {} run {} (pid {pid}, KUBECONFIG={}, RUST_LOG={rust_log}); log: {}",
            bin.display(),
            extra.join(" "),
            kubeconfig.display(),
            log.display()
        );
        Ok(Operator {
            child: Mutex::new(child),
            stopped: std::sync::atomic::AtomicBool::new(false),
            pid,
            log: log.to_path_buf(),
            started: Instant::now(),
            metrics_addr,
        })
    }

    /// The process id (the Lease identity of the operator ends with `-<pid>`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where /metrics, /livez and /readyz are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `GET path` on the metrics address: (status, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self
            .metrics_addr
            .context("the operator's --metrics-addr is unknown")?;
        http_get(addr, path)
    }

    /// The value of an unlabelled sample (or one full `name{labels}`) on `/metrics`; 0 when
    /// the series is not exposed yet.
    pub fn metric(&self, name: &str) -> Result<f64> {
        let (code, text) = self.http_get("/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(metric_value(&text, name).unwrap_or(0.0))
    }

    /// Whether the log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains(needle))
    }

    /// Kills the process at once (SIGKILL): a crash, no graceful shutdown, no Lease
    /// release.
    pub fn kill(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("e2e: operator (pid {}) killed (SIGKILL)", self.pid);
        if let Ok(pid_file) = pid_file(self.pid) {
            let _ = std::fs::remove_file(pid_file);
        }
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().ok().flatten()
    }

    /// Fails when the process has exited, with its status and the end of its log.
    pub fn ensure_running(&self) -> Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => bail!(
                "the operator (pid {}) exited with {status} after {:.1}s; the suite needs a `certus-vault run` that keeps running (KUBECONFIG from the environment, no required flags).\n{}",
                self.pid,
                self.started.elapsed().as_secs_f64(),
                self.log_excerpt(40)
            ),
        }
    }

    /// `operator log <path> (last n lines):` followed by the lines.
    pub fn log_excerpt(&self, n: usize) -> String {
        format!(
            "operator log {} (last {n} lines):\n{}",
            self.log.display(),
            tail(&self.log, n)
        )
    }

    /// Stops the process: SIGTERM (graceful shutdown, which lets it release a leader
    /// lease), up to 15 s, then SIGKILL.
    pub fn stop(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match child.try_wait() {
            Ok(Some(status)) => {
                eprintln!(
                    "e2e: operator (pid {}) had already exited: {status}",
                    self.pid
                )
            }
            _ => terminate(&mut child, self.pid),
        }
        if let Ok(pid_file) = pid_file(self.pid) {
            let _ = std::fs::remove_file(pid_file);
        }
    }
}

/// The value of `--metrics-addr` in `args` (`--metrics-addr=X` or `--metrics-addr X`).
pub fn metrics_addr_arg(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--metrics-addr=") {
            return Some(v.to_string());
        }
        if a == "--metrics-addr" {
            return it.next().cloned();
        }
    }
    None
}

/// A loopback address with a port that was free a moment ago.
fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// One HTTP/1.1 `GET` (the operator's probes and metrics): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("an incomplete answer from {addr}{path}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line from {addr}{path}"))?;
    Ok((status, body.to_string()))
}

/// The value of the sample `name` (e.g. `certus_leader` or
/// `certus_controller_reconciles_total{kind="VaultPolicy"}`) in a /metrics text.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// SIGTERM, up to 15 s for the process to exit, then SIGKILL.
fn terminate(child: &mut Child, pid: u32) {
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if matches!(term, Ok(s) if s.success()) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("e2e: operator (pid {pid}) stopped: {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("e2e: operator (pid {pid}) did not stop within 15s of SIGTERM; killing it");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Records the pid of each running operator (one file per operator, holding the pid of
/// the test process that started it), so that a run that was killed before it could stop
/// its operators (SIGKILL, a CI timeout) does not leave them behind.
fn pid_file(pid: u32) -> Result<PathBuf> {
    Ok(pid_dir()?.join(pid.to_string()))
}

fn pid_dir() -> Result<PathBuf> {
    Ok(profile_dir()?.join("certus-e2e-logs").join("operator-pids"))
}

/// Stops the operators an earlier, interrupted run of this suite left running: every pid
/// in the pid directory that another test process started, if that process is still
/// `<bin> run` (checked through /proc on Linux). This test process's own operators are
/// left alone (a test may run several).
fn stop_stale(bin: &Path) {
    let Ok(dir) = pid_dir() else { return };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let me = std::process::id().to_string();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(&path).is_ok_and(|owner| owner.trim() == me) {
            continue;
        }
        let _ = std::fs::remove_file(&path);
        stop_if_ours(bin, pid);
    }
}

fn stop_if_ours(bin: &Path, pid: u32) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return;
    };
    // `<bin> run …`, or `<interpreter> <bin> run …` for a script.
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_ours = args
        .windows(2)
        .take(2)
        .any(|w| w[0] == bin.as_os_str().as_encoded_bytes() && w[1] == b"run");
    if !is_ours {
        return;
    }
    eprintln!("e2e: stopping operator pid {pid}, left running by an earlier interrupted run");
    let signal = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    while proc_dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if proc_dir.exists() {
        signal("-KILL");
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a file (or a note that it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
