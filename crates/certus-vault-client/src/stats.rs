use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the requests a session made. Used by metrics, benchmarks and tests
/// (e.g. "a resync of unchanged resources makes zero writes").
#[derive(Debug, Default)]
pub struct VaultStats {
    reads: AtomicU64,
    writes: AtomicU64,
    logins: AtomicU64,
    adoptions: AtomicU64,
    renewals: AtomicU64,
    errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// GET and LIST requests (health checks excluded).
    pub reads: u64,
    /// POST, PUT and DELETE requests (logins and renewals excluded).
    pub writes: u64,
    /// Successful and failed login attempts.
    pub logins: u64,
    /// Saved login tokens adopted instead of logging in (see `TokenStore`).
    pub adoptions: u64,
    /// Token renewals.
    pub renewals: u64,
    /// Requests that returned an error.
    pub errors: u64,
}

impl StatsSnapshot {
    /// Counter differences since `earlier`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
            logins: self.logins - earlier.logins,
            adoptions: self.adoptions - earlier.adoptions,
            renewals: self.renewals - earlier.renewals,
            errors: self.errors - earlier.errors,
        }
    }
}

impl VaultStats {
    pub(crate) fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn login(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn adoption(&self) {
        self.adoptions.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn renewal(&self) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            logins: self.logins.load(Ordering::Relaxed),
            adoptions: self.adoptions.load(Ordering::Relaxed),
            renewals: self.renewals.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}
