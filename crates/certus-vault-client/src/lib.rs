//! Access to Vault/OpenBao over `vaultrs`.
//!
//! - [`VaultSession`]: one logged-in identity. The token is cached, renewed before it
//!   expires, re-obtained once on a permission error, and revoked on shutdown.
//! - [`SessionCache`]: one session per identity, shared by every resource that uses it,
//!   so there is never one login per reconcile. With a [`TokenStore`], the login token
//!   survives restarts and leader changes (the leases it issued are not lost).
//! - Typed operations (policies, health, token info) go through `vaultrs`; generic
//!   `read`/`write`/`delete`/`list` reach any other Vault path with the same client,
//!   token and error classes.
//! - [`VaultError`] carries an [`ErrorClass`] (not-found / permission-denied /
//!   invalid-request / transient / config) that callers use to decide on retries.
#![forbid(unsafe_code)]

mod error;
mod persist;
mod secret;
mod session;
mod stats;

pub use error::{ErrorClass, VaultError};
pub use persist::{MemoryTokenStore, PersistedToken, TokenStore};
pub use secret::SecretString;
pub use session::{
    ConnectionConfig, Credentials, Health, JwtSource, SessionCache, TokenInfo, TokenLifetime,
    VaultSession,
};
pub use stats::{StatsSnapshot, VaultStats};
