use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use crate::error::{ErrorClass, VaultError};
use crate::persist::{PersistedToken, TokenStore};
use crate::secret::SecretString;
use crate::stats::VaultStats;

/// Where Vault is and how to talk to it (no credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Base URL, e.g. `https://vault:8200`.
    pub address: String,
    /// PEM CA bundle that signs Vault's certificate; the system roots are used when absent.
    pub ca_pem: Option<String>,
    /// Name to verify in Vault's certificate when it differs from the address host.
    pub server_name: Option<String>,
    /// Skip TLS verification (development only).
    pub insecure_skip_verify: bool,
    /// Vault namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl ConnectionConfig {
    /// A config with defaults (30s timeout, no TLS customisation).
    pub fn new(address: impl Into<String>) -> Self {
        ConnectionConfig {
            address: address.into(),
            ca_pem: None,
            server_name: None,
            insecure_skip_verify: false,
            namespace: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Produces a fresh JWT for Kubernetes auth (e.g. through the TokenRequest API).
pub type JwtSource =
    Arc<dyn Fn() -> BoxFuture<'static, Result<SecretString, VaultError>> + Send + Sync>;

/// How a session logs in.
#[derive(Clone)]
pub enum Credentials {
    /// A token given as is. Renewed when renewable; cannot be re-obtained.
    Token(SecretString),
    /// AppRole login.
    AppRole {
        mount: String,
        role_id: String,
        secret_id: SecretString,
    },
    /// Kubernetes auth login with a JWT from `jwt`. `identity` names the ServiceAccount
    /// (`namespace/name`) and is part of the session's identity key.
    Kubernetes {
        mount: String,
        role: String,
        identity: String,
        jwt: JwtSource,
    },
    /// JWT/OIDC auth method login (`auth/<mount>/login` with `role` and a JWT from
    /// `jwt`). `identity` names where the JWT comes from (a ServiceAccount, or a Secret
    /// key plus a hash of its value) and is part of the session's identity key.
    Jwt {
        mount: String,
        role: String,
        identity: String,
        jwt: JwtSource,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token([redacted])"),
            Credentials::AppRole { mount, role_id, .. } => write!(
                f,
                "AppRole {{ mount: {mount:?}, role_id: {role_id:?}, secret_id: [redacted] }}"
            ),
            Credentials::Kubernetes {
                mount,
                role,
                identity,
                ..
            } => write!(
                f,
                "Kubernetes {{ mount: {mount:?}, role: {role:?}, identity: {identity:?} }}"
            ),
            Credentials::Jwt {
                mount,
                role,
                identity,
                ..
            } => write!(
                f,
                "Jwt {{ mount: {mount:?}, role: {role:?}, identity: {identity:?} }}"
            ),
        }
    }
}

impl Credentials {
    /// A stable key for the identity these credentials log in as. Secret parts are hashed.
    fn identity_key(&self) -> String {
        let h = |s: &str| hex::encode(&Sha256::digest(s.as_bytes())[..8]);
        match self {
            Credentials::Token(t) => format!("token:{}", h(t.expose())),
            Credentials::AppRole {
                mount,
                role_id,
                secret_id,
            } => format!("approle:{mount}:{role_id}:{}", h(secret_id.expose())),
            Credentials::Kubernetes {
                mount,
                role,
                identity,
                ..
            } => format!("kubernetes:{mount}:{role}:{identity}"),
            Credentials::Jwt {
                mount,
                role,
                identity,
                ..
            } => format!("jwt:{mount}:{role}:{identity}"),
        }
    }
    /// [`identity_key`](Self::identity_key) without the login secret's hash: the Vault
    /// role (and ServiceAccount or Secret) a token belongs to, whatever SecretID or JWT
    /// obtained it. Used to key saved tokens.
    fn persist_key(&self) -> String {
        match self {
            Credentials::AppRole { mount, role_id, .. } => format!("approle:{mount}:{role_id}"),
            Credentials::Jwt {
                mount,
                role,
                identity,
                ..
            } => format!(
                "jwt:{mount}:{role}:{}",
                identity.split('#').next().unwrap_or_default()
            ),
            other => other.identity_key(),
        }
    }
    fn can_relogin(&self) -> bool {
        !matches!(self, Credentials::Token(_))
    }
    fn method(&self) -> &'static str {
        match self {
            Credentials::Token(_) => "token",
            Credentials::AppRole { .. } => "approle",
            Credentials::Kubernetes { .. } => "kubernetes",
            Credentials::Jwt { .. } => "jwt",
        }
    }
}

/// What `sys/health` reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
    pub version: String,
}

/// Non-secret facts about the session's token.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TokenInfo {
    /// The token's accessor (not a secret: it can look up or revoke, not use, the token).
    pub accessor: String,
    pub display_name: String,
    pub policies: Vec<String>,
    /// Remaining TTL in seconds; 0 means the token never expires.
    pub ttl: u64,
    pub renewable: bool,
}

/// How long the session's token lives: what a lease issued with it inherits (Vault
/// revokes a token's leases and child tokens when the token expires or is revoked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenLifetime {
    /// The token's accessor (not a secret).
    pub accessor: String,
    /// Time left; `None` when the token never expires.
    pub expires_in: Option<Duration>,
    /// Whether the session keeps extending this very token (renewable and not yet capped
    /// by its maximum TTL). When false, the token dies at `expires_in` and the session
    /// will log in again (a new token) or fail.
    pub extendable: bool,
}

#[derive(Clone)]
struct TokenState {
    token: SecretString,
    /// The token's accessor.
    accessor: String,
    /// The TTL the token was created with; a renewal granting less hit the maximum TTL.
    full_ttl: u64,
    /// A renewal was capped by the token's maximum TTL: its expiry is final.
    capped: bool,
    /// When the token must be refreshed (renewed or re-obtained); `None` = never expires.
    refresh_at: Option<Instant>,
    /// When the token expires.
    expires_at: Option<Instant>,
    renewable: bool,
    client: Arc<VaultClient>,
    /// What a `lookup-self` made while obtaining the token said (token login, adoption),
    /// so a connection check right after does not look it up again.
    looked_up: Option<(Instant, TokenInfo)>,
}

impl TokenState {
    /// A token known from its `lookup-self` answer (a given token, or a saved one being
    /// adopted); the answer is kept for [`VaultSession::token_info`].
    fn from_lookup(
        token: SecretString,
        client: Arc<VaultClient>,
        info: vaultrs::api::token::responses::LookupTokenResponse,
    ) -> Self {
        let ttl = Duration::from_secs(info.ttl);
        TokenState {
            token,
            accessor: info.accessor.clone(),
            full_ttl: info.creation_ttl.max(info.ttl),
            capped: false,
            refresh_at: (info.ttl > 0).then(|| refresh_point(ttl)),
            expires_at: (info.ttl > 0).then(|| Instant::now() + ttl),
            renewable: info.renewable.unwrap_or(false),
            client,
            looked_up: Some((Instant::now(), token_info_of(info))),
        }
    }
}

/// The non-secret facts of a `lookup-self` answer (policies include identity policies).
fn token_info_of(info: vaultrs::api::token::responses::LookupTokenResponse) -> TokenInfo {
    let mut policies = info.policies;
    policies.extend(info.identity_policies.unwrap_or_default());
    policies.sort();
    policies.dedup();
    TokenInfo {
        accessor: info.accessor,
        display_name: info.display_name,
        policies,
        ttl: info.ttl,
        renewable: info.renewable.unwrap_or(false),
    }
}

/// One logged-in identity against one Vault.
pub struct VaultSession {
    config: ConnectionConfig,
    credentials: Credentials,
    http: reqwest::Client,
    base: String,
    token: RwLock<Option<TokenState>>,
    login_lock: Mutex<()>,
    stats: Arc<VaultStats>,
    /// Set once the token issued leases: revoking it would revoke them too.
    keep_token: AtomicBool,
    /// Where the login token is saved, and under which key (see [`TokenStore`]).
    persist: Option<(Arc<dyn TokenStore>, String)>,
    /// Whether adopting a saved token was tried (once per process).
    adopt_tried: AtomicBool,
}

impl std::fmt::Debug for VaultSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSession")
            .field("address", &self.config.address)
            .field("credentials", &self.credentials)
            .finish()
    }
}

static CRYPTO: Once = Once::new();

/// Installs the process-wide rustls crypto provider (ring) once.
pub fn install_crypto_provider() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn refresh_point(ttl: Duration) -> Instant {
    // Refresh after two thirds of the TTL, so a slow or failed attempt still has time.
    Instant::now() + ttl.mul_f64(2.0 / 3.0)
}

impl VaultSession {
    /// Builds a session. Nothing is sent to Vault until the first request.
    pub async fn connect(
        config: ConnectionConfig,
        credentials: Credentials,
    ) -> Result<Arc<Self>, VaultError> {
        Self::connect_with_stats(config, credentials, Arc::new(VaultStats::default())).await
    }

    /// Like [`connect`](Self::connect) with shared counters.
    pub async fn connect_with_stats(
        config: ConnectionConfig,
        credentials: Credentials,
        stats: Arc<VaultStats>,
    ) -> Result<Arc<Self>, VaultError> {
        Self::connect_inner(config, credentials, stats, None).await
    }

    async fn connect_inner(
        config: ConnectionConfig,
        credentials: Credentials,
        stats: Arc<VaultStats>,
        persist: Option<(Arc<dyn TokenStore>, String)>,
    ) -> Result<Arc<Self>, VaultError> {
        install_crypto_provider();
        let url = reqwest::Url::parse(&config.address).map_err(|e| {
            VaultError::config(format!("address {:?} is not a URL: {e}", config.address))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(VaultError::config(format!(
                "address {:?} must start with http:// or https://",
                config.address
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| VaultError::config(format!("address {:?} has no host", config.address)))?
            .to_string();
        let port = url.port_or_known_default().unwrap_or(8200);
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64);
        let mut base_url = url.clone();
        if url.scheme() == "http" {
            builder = builder.tls_certs_only(Vec::new());
        } else {
            if let Some(pem) = &config.ca_pem {
                let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                    VaultError::config(format!("tls.caBundle is not a PEM certificate bundle: {e}"))
                })?;
                if certs.is_empty() {
                    return Err(VaultError::config("tls.caBundle holds no PEM certificate"));
                }
                builder = builder.tls_certs_only(certs);
            }
            if config.insecure_skip_verify {
                builder = builder.tls_danger_accept_invalid_certs(true);
            }
            if let Some(name) = config.server_name.as_deref().filter(|n| *n != host) {
                let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|e| {
                        VaultError::new(
                            ErrorClass::Transient,
                            "resolve",
                            None,
                            format!("cannot resolve {host}: {e}"),
                        )
                    })?
                    .collect();
                builder = builder.resolve_to_addrs(name, &addrs);
                base_url
                    .set_host(Some(name))
                    .map_err(|e| VaultError::config(format!("tls.serverName {name:?}: {e}")))?;
            }
        }
        let http = builder
            .build()
            .map_err(|e| VaultError::from_reqwest("build client", e))?;
        let base = base_url.as_str().trim_end_matches('/').to_string();
        // Only tokens obtained by login are saved (a given token is the user's).
        let credentials_can_relogin = credentials.can_relogin();
        Ok(Arc::new(VaultSession {
            config,
            credentials,
            http,
            base,
            token: RwLock::new(None),
            login_lock: Mutex::new(()),
            stats,
            keep_token: AtomicBool::new(false),
            persist: persist.filter(|_| credentials_can_relogin),
            adopt_tried: AtomicBool::new(false),
        }))
    }

    /// The request counters of this session.
    pub fn stats(&self) -> &Arc<VaultStats> {
        &self.stats
    }

    /// The connection settings.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// The login method name (`token`, `approle`, `kubernetes`).
    pub fn auth_method(&self) -> &'static str {
        self.credentials.method()
    }

    fn vaultrs_client(&self, token: &str) -> Result<VaultClient, VaultError> {
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&self.config.address)
            .token(token)
            .timeout(Some(self.config.timeout));
        if let Some(ns) = &self.config.namespace {
            settings.set_namespace(ns.clone());
        }
        let settings = settings
            .build()
            .map_err(|e| VaultError::config(format!("vault client settings: {e}")))?;
        // Reuse our HTTP client (TLS settings, keep-alive pool) instead of vaultrs' own.
        let http = rustify::clients::reqwest::Client::new(&self.base, self.http.clone());
        let middle = vaultrs::api::EndpointMiddleware {
            token: token.to_string(),
            version: "v1".into(),
            wrap: None,
            namespace: self.config.namespace.clone(),
        };
        Ok(VaultClient {
            http,
            middle,
            settings,
        })
    }

    /// Returns a valid token state, logging in or renewing when needed. Only one task logs
    /// in at a time; the others wait and reuse its result.
    async fn current(&self) -> Result<TokenState, VaultError> {
        if let Some(state) = self.token.read().await.as_ref() {
            if state.refresh_at.is_none_or(|t| Instant::now() < t) {
                return Ok(state.clone());
            }
        }
        let _guard = self.login_lock.lock().await;
        // Someone else may have refreshed while we waited.
        let existing = self.token.read().await.clone();
        if let Some(state) = &existing {
            if state.refresh_at.is_none_or(|t| Instant::now() < t) {
                return Ok(state.clone());
            }
            let still_valid = state
                .expires_at
                .is_none_or(|t| Instant::now() + Duration::from_secs(1) < t);
            if state.renewable && still_valid {
                match self.renew(state).await {
                    Ok(new) => {
                        *self.token.write().await = Some(new.clone());
                        return Ok(new);
                    }
                    Err(e) if !self.credentials.can_relogin() => return Err(e),
                    Err(e) => tracing::warn!(error = %e, "token renewal failed; logging in again"),
                }
            } else if !self.credentials.can_relogin() {
                if still_valid {
                    // A non-renewable static token: keep using it until it expires.
                    return Ok(state.clone());
                }
                return Err(VaultError::new(ErrorClass::PermissionDenied, "token", None, "the configured Vault token has expired and is not renewable; store a new token in the Secret"));
            }
        }
        if existing.is_none() && !self.adopt_tried.swap(true, Ordering::Relaxed) {
            if let Some(adopted) = self.adopt().await {
                *self.token.write().await = Some(adopted.clone());
                return Ok(adopted);
            }
        }
        let new = self.login().await?;
        self.save(&new).await;
        *self.token.write().await = Some(new.clone());
        Ok(new)
    }

    /// The least time left for a saved token to be worth adopting.
    const MIN_ADOPT_TTL: u64 = 10;

    /// Adopts the token a previous process saved for this identity, when Vault still
    /// accepts it with the saved accessor and it has time left. Anything else (nothing
    /// saved, store unreachable, token revoked or expired) means a normal login.
    async fn adopt(&self) -> Option<TokenState> {
        let (store, key) = self.persist.as_ref()?;
        let saved = match store.load(key).await {
            Ok(Some(saved)) => saved,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "reading the saved Vault token failed; logging in");
                return None;
            }
        };
        let client = Arc::new(self.vaultrs_client(saved.token.expose()).ok()?);
        self.stats.read();
        let info = match vaultrs::token::lookup_self(client.as_ref()).await {
            Ok(info) => info,
            Err(e) => {
                self.stats.error();
                let e = VaultError::from_vaultrs("GET auth/token/lookup-self", e);
                tracing::info!(error = %e, "the saved Vault token is no longer valid; logging in");
                return None;
            }
        };
        if info.accessor != saved.accessor || (info.ttl != 0 && info.ttl < Self::MIN_ADOPT_TTL) {
            tracing::info!("the saved Vault token does not match or expires now; logging in");
            return None;
        }
        // It may be the parent of leases issued before the restart: never revoke it.
        self.keep_token.store(true, Ordering::Relaxed);
        self.stats.adoption();
        tracing::info!(
            method = self.credentials.method(),
            ttl = info.ttl,
            "adopted the saved Vault login token (no new login; leases it issued stay renewable)"
        );
        Some(TokenState::from_lookup(saved.token, client, info))
    }

    /// Saves a token obtained by login (see [`TokenStore`]); failures are logged only.
    async fn save(&self, state: &TokenState) {
        let Some((store, key)) = &self.persist else {
            return;
        };
        let saved = PersistedToken {
            token: state.token.clone(),
            accessor: state.accessor.clone(),
        };
        if let Err(e) = store.save(key, &saved).await {
            tracing::warn!(error = %e, "saving the Vault login token failed; after a restart the operator logs in anew");
        }
    }

    async fn login(&self) -> Result<TokenState, VaultError> {
        let method = self.credentials.method();
        let op = format!("login ({method})");
        match &self.credentials {
            Credentials::Token(token) => {
                let client = Arc::new(self.vaultrs_client(token.expose())?);
                self.stats.read();
                let info = vaultrs::token::lookup_self(client.as_ref()).await.map_err(|e| {
                    self.stats.error();
                    let mut e = VaultError::from_vaultrs("GET auth/token/lookup-self", e);
                    if e.class == ErrorClass::PermissionDenied {
                        e.message = "the configured Vault token is invalid or expired (lookup-self was denied)".into();
                    }
                    e
                })?;
                Ok(TokenState::from_lookup(token.clone(), client, info))
            }
            Credentials::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let anon = self.vaultrs_client("")?;
                self.stats.login();
                let auth = vaultrs::auth::approle::login(&anon, mount, role_id, secret_id.expose())
                    .await
                    .map_err(|e| self.login_error(&op, e))?;
                self.state_from_auth(auth)
            }
            Credentials::Kubernetes {
                mount, role, jwt, ..
            } => {
                let jwt = jwt().await?;
                let anon = self.vaultrs_client("")?;
                self.stats.login();
                let auth = vaultrs::auth::kubernetes::login(&anon, mount, role, jwt.expose())
                    .await
                    .map_err(|e| self.login_error(&op, e))?;
                self.state_from_auth(auth)
            }
            Credentials::Jwt {
                mount, role, jwt, ..
            } => {
                let jwt = jwt().await?;
                let anon = self.vaultrs_client("")?;
                self.stats.login();
                let auth =
                    vaultrs::auth::oidc::login(&anon, mount, jwt.expose(), Some(role.clone()))
                        .await
                        .map_err(|e| self.login_error(&op, e))?;
                self.state_from_auth(auth)
            }
        }
    }

    fn login_error(&self, op: &str, e: vaultrs::error::ClientError) -> VaultError {
        self.stats.error();
        let mut e = VaultError::from_vaultrs(op, e);
        if matches!(e.class, ErrorClass::InvalidRequest) {
            // Vault answers 400 for bad credentials on most auth methods.
            e.class = ErrorClass::PermissionDenied;
        }
        e
    }

    fn state_from_auth(&self, auth: vaultrs::api::AuthInfo) -> Result<TokenState, VaultError> {
        let token = SecretString::new(auth.client_token);
        let client = Arc::new(self.vaultrs_client(token.expose())?);
        let ttl = Duration::from_secs(auth.lease_duration);
        Ok(TokenState {
            refresh_at: (auth.lease_duration > 0).then(|| refresh_point(ttl)),
            expires_at: (auth.lease_duration > 0).then(|| Instant::now() + ttl),
            renewable: auth.renewable,
            accessor: auth.accessor,
            full_ttl: auth.lease_duration,
            capped: false,
            token,
            client,
            looked_up: None,
        })
    }

    async fn renew(&self, state: &TokenState) -> Result<TokenState, VaultError> {
        self.stats.renewal();
        let auth = vaultrs::token::renew_self(state.client.as_ref(), None)
            .await
            .map_err(|e| {
                self.stats.error();
                VaultError::from_vaultrs("POST auth/token/renew-self", e)
            })?;
        let ttl = Duration::from_secs(auth.lease_duration);
        // Vault caps renewals at the token's max TTL; when the new TTL is short, plan a
        // fresh login instead of another renewal.
        Ok(TokenState {
            token: state.token.clone(),
            refresh_at: (auth.lease_duration > 0).then(|| refresh_point(ttl)),
            expires_at: (auth.lease_duration > 0).then(|| Instant::now() + ttl),
            // A short grant is the end only when it was capped (a token whose normal TTL
            // is a few seconds keeps being renewed).
            renewable: auth.renewable
                && (auth.lease_duration > 5 || auth.lease_duration >= state.full_ttl),
            accessor: state.accessor.clone(),
            full_ttl: state.full_ttl,
            capped: state.capped || auth.lease_duration < state.full_ttl,
            client: state.client.clone(),
            looked_up: None,
        })
    }

    /// Forgets the cached token so the next request logs in again.
    async fn invalidate(&self, token: &SecretString) {
        let mut guard = self.token.write().await;
        if guard.as_ref().is_some_and(|s| &s.token == token) {
            *guard = None;
        }
    }

    /// Runs a typed `vaultrs` operation with the session's token. On a permission error
    /// with credentials that can log in again, the token is re-obtained once and the
    /// operation retried once (never in a loop).
    pub async fn typed<T, F, Fut>(
        &self,
        operation: &str,
        write: bool,
        f: F,
    ) -> Result<T, VaultError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, vaultrs::error::ClientError>>,
    {
        let mut retried = false;
        loop {
            let state = self.current().await?;
            if write {
                self.stats.write();
            } else {
                self.stats.read();
            }
            match f(state.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.stats.error();
                    let err = VaultError::from_vaultrs(operation, e);
                    if err.class == ErrorClass::PermissionDenied
                        && !retried
                        && self.credentials.can_relogin()
                    {
                        retried = true;
                        self.invalidate(&state.token).await;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Sends a raw request to `/v1/<path>` and returns the response JSON (`None` for 204).
    /// Permission errors trigger one re-login and one retry, as in [`typed`](Self::typed).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, VaultError> {
        self.send(method, path, body, true).await
    }

    /// [`request`](Self::request); `relogin: false` returns a permission error as is.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        relogin: bool,
    ) -> Result<Option<Value>, VaultError> {
        let path = path.trim_start_matches('/');
        let operation = format!("{} {path}", method.as_str());
        let write = !matches!(method.as_str(), "GET" | "LIST" | "HEAD");
        let mut retried = false;
        loop {
            let state = self.current().await?;
            if write {
                self.stats.write();
            } else {
                self.stats.read();
            }
            let mut req = self
                .http
                .request(method.clone(), format!("{}/v1/{path}", self.base))
                .header("X-Vault-Token", state.token.expose())
                .header("X-Vault-Request", "true");
            if let Some(ns) = &self.config.namespace {
                req = req.header("X-Vault-Namespace", ns);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| {
                self.stats.error();
                VaultError::from_reqwest(&operation, e)
            })?;
            let status = resp.status();
            if status == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| VaultError::from_reqwest(&operation, e))?;
            if status.is_success() {
                if bytes.is_empty() {
                    return Ok(None);
                }
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    VaultError::new(
                        ErrorClass::Transient,
                        &operation,
                        Some(status.as_u16()),
                        format!("response is not JSON: {e}"),
                    )
                })?;
                return Ok(Some(v));
            }
            self.stats.error();
            let msg = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("errors").cloned())
                .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                .filter(|v| !v.is_empty())
                .map(|v| v.join("; "))
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            let err = VaultError::new(
                ErrorClass::from_status(status.as_u16()),
                &operation,
                Some(status.as_u16()),
                msg,
            );
            if err.class == ErrorClass::PermissionDenied
                && relogin
                && !retried
                && self.credentials.can_relogin()
            {
                retried = true;
                self.invalidate(&state.token).await;
                continue;
            }
            return Err(err);
        }
    }

    /// Lists the keys under a path when the token may: `Ok(None)` on a permission error,
    /// which — unlike other requests — does not log in again. For optional bulk reads
    /// (`certus_reconcile::order`): a policy without `list` is normal, and the caller then
    /// reads objects one by one. A 404 is an empty list.
    pub async fn list_if_allowed(&self, path: &str) -> Result<Option<Vec<String>>, VaultError> {
        let method = Method::from_bytes(b"LIST").expect("LIST is a valid method");
        match self.send(method, path, None, false).await {
            Ok(Some(v)) => Ok(Some(
                v.pointer("/data/keys")
                    .and_then(|k| serde_json::from_value(k.clone()).ok())
                    .unwrap_or_default(),
            )),
            Ok(None) => Ok(Some(vec![])),
            Err(e) if e.is_not_found() => Ok(Some(vec![])),
            Err(e) if e.class == ErrorClass::PermissionDenied => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a path; a 404 is `Ok(None)`.
    pub async fn read(&self, path: &str) -> Result<Option<Value>, VaultError> {
        match self.request(Method::GET, path, None).await {
            Err(e) if e.is_not_found() => Ok(None),
            other => other,
        }
    }

    /// Writes a path (POST).
    pub async fn write(&self, path: &str, body: &Value) -> Result<Option<Value>, VaultError> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// Deletes a path; a 404 counts as success.
    pub async fn delete(&self, path: &str) -> Result<(), VaultError> {
        match self.request(Method::DELETE, path, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Lists the keys under a path; a 404 is an empty list.
    pub async fn list(&self, path: &str) -> Result<Vec<String>, VaultError> {
        let method = Method::from_bytes(b"LIST").expect("LIST is a valid method");
        match self.request(method, path, None).await {
            Ok(Some(v)) => Ok(v
                .pointer("/data/keys")
                .and_then(|k| serde_json::from_value(k.clone()).ok())
                .unwrap_or_default()),
            Ok(None) => Ok(vec![]),
            Err(e) if e.is_not_found() => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    /// `sys/health` (unauthenticated; sealed and standby servers answer too).
    pub async fn health(&self) -> Result<Health, VaultError> {
        let op = "GET sys/health";
        let url = format!(
            "{}/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200&perfstandbyok=true",
            self.base
        );
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| VaultError::from_reqwest(op, e))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| VaultError::from_reqwest(op, e))?;
        if !status.is_success() {
            return Err(VaultError::new(
                ErrorClass::from_status(status.as_u16()),
                op,
                Some(status.as_u16()),
                "unexpected health status",
            ));
        }
        Ok(Health {
            initialized: v["initialized"].as_bool().unwrap_or(false),
            sealed: v["sealed"].as_bool().unwrap_or(true),
            standby: v["standby"].as_bool().unwrap_or(false),
            version: v["version"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Looks up the session's own token (logging in first if needed).
    pub async fn token_info(&self) -> Result<TokenInfo, VaultError> {
        // Obtaining a given token or adopting a saved one looked it up a moment ago:
        // reuse that answer instead of a second lookup-self.
        const FRESH: Duration = Duration::from_secs(5);
        let state = self.current().await?;
        if let Some((at, info)) = &state.looked_up {
            let age = at.elapsed();
            if age < FRESH {
                let mut info = info.clone();
                if info.ttl > 0 {
                    info.ttl = info.ttl.saturating_sub(age.as_secs()).max(1);
                }
                return Ok(info);
            }
        }
        let info = self
            .typed("GET auth/token/lookup-self", false, |c| async move {
                vaultrs::token::lookup_self(c.as_ref()).await
            })
            .await?;
        Ok(token_info_of(info))
    }

    /// Reads an ACL policy's text; `None` when it does not exist.
    ///
    /// Uses `sys/policies/acl/<name>` (the current API; vaultrs only wraps the legacy
    /// `sys/policy/<name>`), so the operator's own Vault policy needs capabilities on
    /// `sys/policies/acl/*` only.
    pub async fn policy_read(&self, name: &str) -> Result<Option<String>, VaultError> {
        Ok(self
            .read(&format!("sys/policies/acl/{name}"))
            .await?
            .and_then(|v| {
                v.pointer("/data/policy")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }))
    }

    /// Creates or replaces an ACL policy.
    pub async fn policy_write(&self, name: &str, text: &str) -> Result<(), VaultError> {
        self.request(
            Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(&serde_json::json!({ "policy": text })),
        )
        .await
        .map(|_| ())
    }

    /// Deletes an ACL policy; absent is success.
    pub async fn policy_delete(&self, name: &str) -> Result<(), VaultError> {
        self.delete(&format!("sys/policies/acl/{name}")).await
    }

    /// Refreshes the token now if it is due, so an idle session keeps a live token (and
    /// leases created with it stay valid). Returns when the next refresh is due.
    pub async fn refresh_if_due(&self) -> Result<Option<Duration>, VaultError> {
        let state = self.current().await?;
        Ok(state
            .refresh_at
            .map(|t| t.saturating_duration_since(Instant::now())))
    }

    /// The lifetime of the session's token (logging in first if needed). Leases issued
    /// now die with this token unless it is extended.
    pub async fn token_lifetime(&self) -> Result<TokenLifetime, VaultError> {
        let state = self.current().await?;
        let now = Instant::now();
        Ok(TokenLifetime {
            accessor: state.accessor.clone(),
            expires_in: state.expires_at.map(|t| t.saturating_duration_since(now)),
            extendable: state.renewable && !state.capped,
        })
    }

    /// Whether the session holds a token (has logged in).
    pub async fn has_token(&self) -> bool {
        self.token.read().await.is_some()
    }

    /// Marks the token as parent of leases or child tokens: [`revoke`](Self::revoke) then
    /// leaves it alone, because revoking it would revoke every credential it issued.
    pub fn retain_token(&self) {
        self.keep_token.store(true, Ordering::Relaxed);
    }

    /// Revokes the session's token if it was obtained by login (a token given by the user
    /// is left alone, and so is a token that issued leases, see
    /// [`retain_token`](Self::retain_token)). Called on shutdown.
    pub async fn revoke(&self) -> Result<(), VaultError> {
        if !self.credentials.can_relogin() || self.keep_token.load(Ordering::Relaxed) {
            return Ok(());
        }
        let state = self.token.write().await.take();
        if let Some(state) = state {
            self.stats.write();
            vaultrs::token::revoke_self(state.client.as_ref())
                .await
                .map_err(|e| VaultError::from_vaultrs("POST auth/token/revoke-self", e))?;
            if let Some((store, key)) = &self.persist {
                if let Err(e) = store.remove(key).await {
                    tracing::warn!(error = %e, "removing the saved Vault token failed");
                }
            }
        }
        Ok(())
    }
}

/// One session per identity, shared by every resource that uses the same connection and
/// login. Keyed by address, namespace and credential identity (secret parts hashed).
#[derive(Default)]
pub struct SessionCache {
    sessions: Mutex<HashMap<String, Arc<VaultSession>>>,
    stats: Arc<VaultStats>,
    token_store: Option<Arc<dyn TokenStore>>,
}

impl SessionCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache whose sessions save their login tokens in `store` and adopt them after a
    /// restart (see [`TokenStore`]).
    pub fn with_token_store(store: Arc<dyn TokenStore>) -> Self {
        SessionCache {
            token_store: Some(store),
            ..Self::default()
        }
    }

    /// The key under which a session's token is saved: a hash of the Vault identity
    /// (address, namespace, TLS settings, login method, role and ServiceAccount or Secret
    /// name), without the login secret: a rotated AppRole SecretID or a renewed JWT logs in
    /// as the same role, so its token replaces the saved one instead of piling up beside it.
    pub fn token_key(config: &ConnectionConfig, credentials: &Credentials) -> String {
        let id = Self::identity_with(config, &credentials.persist_key());
        hex::encode(&Sha256::digest(id.as_bytes())[..10])
    }

    fn identity(config: &ConnectionConfig, credentials: &Credentials) -> String {
        Self::identity_with(config, &credentials.identity_key())
    }

    fn identity_with(config: &ConnectionConfig, credentials: &str) -> String {
        format!(
            "{}|{}|{:?}|{}|{}|{}",
            config.address,
            config.namespace.as_deref().unwrap_or(""),
            config.server_name,
            config.insecure_skip_verify,
            config
                .ca_pem
                .as_deref()
                .map(|p| hex::encode(&Sha256::digest(p.as_bytes())[..8]))
                .unwrap_or_default(),
            credentials
        )
    }

    /// Counters summed over every session of this cache.
    pub fn stats(&self) -> &Arc<VaultStats> {
        &self.stats
    }

    /// Returns the session for this identity, creating it (without logging in) if needed.
    pub async fn get(
        &self,
        config: ConnectionConfig,
        credentials: Credentials,
    ) -> Result<Arc<VaultSession>, VaultError> {
        let key = Self::identity(&config, &credentials);
        let mut sessions = self.sessions.lock().await;
        if let Some(s) = sessions.get(&key) {
            if s.config.timeout == config.timeout {
                return Ok(s.clone());
            }
        }
        let persist = self
            .token_store
            .clone()
            .map(|store| (store, Self::token_key(&config, &credentials)));
        let s =
            VaultSession::connect_inner(config, credentials, self.stats.clone(), persist).await?;
        sessions.insert(key, s.clone());
        Ok(s)
    }

    /// Every session currently cached.
    pub async fn sessions(&self) -> Vec<Arc<VaultSession>> {
        self.sessions.lock().await.values().cloned().collect()
    }

    /// Keeps every logged-in session's token alive until `shutdown` resolves: renews (or
    /// re-obtains) each token when due, so an idle operator never lets the token that
    /// issued its leases expire. Sessions that never logged in are left alone (no login
    /// is made on their behalf). Failures are logged and retried at the next tick.
    pub async fn run_renewal(&self, shutdown: impl Future<Output = ()>) {
        const MAX_SLEEP: Duration = Duration::from_secs(30);
        const RETRY: Duration = Duration::from_secs(5);
        tokio::pin!(shutdown);
        loop {
            let mut sleep = MAX_SLEEP;
            for s in self.sessions().await {
                if !s.has_token().await {
                    continue;
                }
                match s.refresh_if_due().await {
                    Ok(Some(next)) => sleep = sleep.min(next.max(Duration::from_millis(200))),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, address = %s.config.address, "keeping the Vault token alive failed; retrying");
                        sleep = sleep.min(RETRY);
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Revokes every token obtained by login (shutdown).
    pub async fn revoke_all(&self) {
        for s in self.sessions().await {
            if let Err(e) = s.revoke().await {
                tracing::warn!(error = %e, "revoking a Vault token on shutdown failed");
            }
        }
    }
}
