//! Binds the listener and runs the HTTP server until shutdown is asked for.
//! Used by `portcullis serve` and by the integration tests, which run the real
//! server in-process on an ephemeral loopback port.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum_server::accept::{TcpConfigAcceptor, TcpKeepaliveConfig, TcpSocketConfig};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use crate::api::{self, AppState};
use crate::config::Config;
use crate::identity::{Identities, IdentityError};
use crate::maintenance::{ChainSource, Maintenance};
use crate::metrics::Metrics;
use crate::network::proxy_protocol::ProxyProtocolAcceptor;
use crate::network::TrustedProxies;
use crate::policy::reload::ChainHolder;
use crate::policy::{PolicyChain, PolicyEngine, PolicyError};
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Storage(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Auth(#[from] IdentityError),
    #[error("cannot start the policy engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

pub struct Server {
    listener: std::net::TcpListener,
    router: axum::Router,
    local_addr: SocketAddr,
    tls: Option<RustlsConfig>,
    grace: Duration,
    limits: crate::config::LimitsConfig,
    /// The trusted proxies whose PROXY headers are read, if the protocol is on.
    proxy_protocol: Option<TrustedProxies>,
    /// Where content is stored, for messages.
    storage_location: String,
}

impl Server {
    /// Opens storage, loads the policy chain and binds the configured address.
    /// Policies are not watched for changes: see [`Server::bind_watching`].
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        Self::bind_inner(config, None).await
    }

    /// Like [`Server::bind`], and reloads the policy chain when `config_file`
    /// or the policies directory changes, or on SIGHUP.
    pub async fn bind_watching(
        config: Config,
        config_file: Option<PathBuf>,
    ) -> Result<Self, ServerError> {
        Self::bind_inner(config, Some(config_file)).await
    }

    async fn bind_inner(
        config: Config,
        watch: Option<Option<PathBuf>>,
    ) -> Result<Self, ServerError> {
        let storage = Storage::open(&config.storage)
            .await
            .map_err(ServerError::Storage)?;
        let storage_location = storage.location();
        if config.storage.backend == crate::config::Backend::Filesystem {
            check_storage_root(&config.storage.root);
        }
        storage.probe_writable().await.map_err(|e| {
            ServerError::Config(format!(
                "storage {} is not writable: {e}",
                storage.location()
            ))
        })?;
        let auth = Arc::new(Identities::new(&config, storage.clone())?);
        auth.start(config.auth.robot_token_refresh);
        let metrics = Arc::new(Metrics::new());
        let engine = Arc::new(
            PolicyEngine::new(Some(config.policy_cache_dir()))
                .map_err(|e| ServerError::Engine(e.to_string()))?,
        );
        engine.attach_lookups(crate::policy::lookups::Lookups::new(
            storage.clone(),
            Arc::clone(&metrics),
        ));
        let decisions = crate::policy::decisions::DecisionLog::open(&config.policy.decision_log)
            .map_err(|e| ServerError::Config(format!("policy.decision_log.path: {e}")))?;
        engine.attach_decision_log(Arc::new(decisions));
        let chain = {
            let (engine, config) = (Arc::clone(&engine), config.clone());
            tokio::task::spawn_blocking(move || PolicyChain::load(engine, &config))
                .await
                .map_err(|e| ServerError::Engine(e.to_string()))??
        };
        tracing::info!(policies = %chain.names().join(", "), "policy chain loaded");
        let config_file = watch.clone().flatten();
        let accounts = Arc::clone(&auth);
        let policies = Arc::new(
            ChainHolder::new(chain, engine, config_file, Arc::clone(&metrics)).on_reload(Box::new(
                move |config: &Config| {
                    let prepared = accounts.prepare(config).map_err(|e| e.to_string())?;
                    let accounts = Arc::clone(&accounts);
                    Ok(Box::new(move || accounts.commit(prepared)) as Box<dyn FnOnce() + Send>)
                },
            )),
        );
        if watch.is_some() {
            policies.watch_files(crate::policy::reload::account_files(&config));
            policies.watch(config.policy.dir.clone());
        }
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                let gauge = Arc::clone(&metrics);
                let expiry = crate::tls::CertificateExpiry::new(cert.clone(), move |not_after| {
                    gauge.set_tls_certificate_expiry(not_after)
                });
                let tls = crate::tls::load(cert, key, &expiry).await?;
                if watch.is_some() {
                    crate::tls::watch(tls.clone(), cert.clone(), key.clone(), expiry.clone());
                }
                expiry.spawn_periodic_check();
                Some(tls)
            }
            _ => None,
        };
        spawn_storage_gauge(storage.clone(), Arc::clone(&metrics));
        spawn_upload_expiry(storage.clone(), config.storage.upload_max_age);

        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        if let Some(every) = config.gc.every {
            let maintenance = Maintenance::new(
                &config,
                storage.clone(),
                Some(ChainSource::Live(Arc::clone(&policies))),
                Arc::clone(&metrics),
            )
            .and_then(|m| m.check_schedule().map(|()| m))
            .map_err(|e| ServerError::Config(e.to_string()))?;
            Arc::new(maintenance).spawn_schedule(every);
        }
        let grace = config.shutdown_grace;
        let limits = config.limits.clone();
        let proxy = crate::proxy::Proxy::from_config(&config.proxy).map(Arc::new);
        if let Some(proxy) = &proxy {
            tracing::info!(remote = proxy.remote(), prefix = %config.proxy.prefix, "pull-through cache on");
        }
        let uploads = api::limits::UploadLimiter::new(&config.limits);
        let trusted_proxies = TrustedProxies::new(&config.trusted_proxies, config.forwarded_header);
        let proxy_protocol = config.proxy_protocol.then(|| trusted_proxies.clone());
        if proxy_protocol.is_some() && trusted_proxies.is_empty() {
            tracing::warn!(
                "proxy_protocol is on but trusted_proxies is empty: every PROXY header is ignored"
            );
        }
        let state = Arc::new(AppState {
            uploads,
            storage,
            config,
            auth,
            policies,
            metrics,
            proxy,
            facts: Default::default(),
            trusted_proxies,
        });
        let pages = crate::ui::router(&state);
        let router = api::router_with(state, pages);
        Ok(Self {
            listener,
            router,
            local_addr,
            tls,
            grace,
            limits,
            proxy_protocol,
            storage_location,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The storage root or bucket the server stores into.
    pub fn storage_location(&self) -> &str {
        &self.storage_location
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// requests in flight (uploads) finish within the configured grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let handle = axum_server::Handle::new();
        let grace = self.grace;
        let stopper = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.graceful_shutdown(Some(grace));
        });
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let limits = &self.limits;
        // No Nagle delay (small responses on a keep-alive connection would
        // wait ~40 ms for an ACK), and keepalive probes find dead peers.
        let tcp = TcpConfigAcceptor::new(
            TcpSocketConfig::new()
                .nodelay(true)
                .keepalive(TcpKeepaliveConfig::new().time(Duration::from_secs(60))),
        );
        // The PROXY header, if on, comes before the TLS handshake.
        let tcp = ProxyProtocolAcceptor::new(tcp, self.proxy_protocol, limits.header_timeout);
        let mut server = axum_server::from_tcp(self.listener)?;
        bound_heads(server.http_builder(), limits);
        let server = server.first_request_timeout(limits.header_timeout);
        match self.tls {
            Some(tls) => {
                let acceptor = RustlsAcceptor::new(tls)
                    .handshake_timeout(limits.header_timeout)
                    .acceptor(tcp);
                server
                    .acceptor(acceptor)
                    .handle(handle)
                    .serve(service)
                    .await
            }
            None => server.acceptor(tcp).handle(handle).serve(service).await,
        }
    }
}

/// Bounds what a client may send before a handler runs: the size and field
/// count of a request head, and how long it may take to arrive (also the
/// idle time of a keep-alive connection). HTTP/1.1 answers 431 past a size
/// bound; the HTTP/2 bound is the header list size.
fn bound_heads(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &crate::config::LimitsConfig,
) {
    let head = usize::try_from(limits.max_header_bytes.as_u64()).unwrap_or(usize::MAX);
    builder
        .http1()
        .max_buf_size(head.max(8192))
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .max_header_list_size(u32::try_from(head).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
}

/// Warns about a world-writable storage root: the registry never needs it.
fn check_storage_root(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(root) {
        if meta.permissions().mode() & 0o002 != 0 {
            tracing::warn!(
                root = %root.display(),
                "the storage root is world-writable; use storage.group (or fsGroup in Kubernetes) and chmod o-w"
            );
        }
    }
}

/// Keeps the storage-bytes gauge current (a walk of `blobs/` every minute).
fn spawn_storage_gauge(storage: Storage, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        loop {
            match storage.blob_bytes().await {
                Ok(bytes) => metrics.set_storage_bytes(bytes),
                Err(e) => tracing::warn!(error = %e, "cannot measure storage"),
            }
            // On an object store the walk is a listing of the whole bucket,
            // made by every replica: less often there.
            let every = match storage {
                Storage::Filesystem(_) => 60,
                Storage::S3(_) => 600,
            };
            tokio::time::sleep(Duration::from_secs(every)).await;
        }
    });
}

/// Deletes upload sessions idle for longer than `storage.upload_max_age`,
/// checking every quarter of that (at most every 10 minutes).
fn spawn_upload_expiry(storage: Storage, max_age: Duration) {
    let every = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match storage.expire_uploads().await {
                Ok(removed) if !removed.is_empty() => {
                    for removal in &removed {
                        tracing::info!(%removal, "expired upload session");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot expire upload sessions"),
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
