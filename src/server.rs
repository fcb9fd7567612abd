//! Binds the listener and runs the HTTP server until shutdown is asked for.
//! Used by `portcullis serve` and by the integration tests, which run the real
//! server in-process on an ephemeral loopback port.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::auth::{AuthConfigError, Authenticator};
use crate::config::Config;
use crate::policy::reload::ChainHolder;
use crate::policy::{PolicyChain, PolicyEngine, PolicyError};
use crate::storage::{Storage, StorageSettings};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Storage(io::Error),
    #[error("{0}")]
    Auth(#[from] AuthConfigError),
    #[error("cannot start the policy engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

pub struct Server {
    listener: TcpListener,
    router: axum::Router,
    local_addr: SocketAddr,
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
        let storage = Storage::open(
            &config.storage.root,
            StorageSettings {
                upload_max_age: config.storage.upload_max_age,
            },
        )
        .map_err(ServerError::Storage)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let auth = Arc::new(Authenticator::from_config(&config)?);
        let engine = Arc::new(
            PolicyEngine::new(Some(config.policy_cache_dir()))
                .map_err(|e| ServerError::Engine(e.to_string()))?,
        );
        let chain = {
            let (engine, config) = (Arc::clone(&engine), config.clone());
            tokio::task::spawn_blocking(move || PolicyChain::load(engine, &config))
                .await
                .map_err(|e| ServerError::Engine(e.to_string()))??
        };
        tracing::info!(policies = ?chain.names(), "policy chain loaded");
        let config_file = watch.clone().flatten();
        let policies = Arc::new(ChainHolder::new(chain, engine, config_file));
        if watch.is_some() {
            policies.watch(config.policy.dir.clone());
        }
        let router = api::router(Arc::new(AppState {
            storage,
            config,
            auth,
            policies,
        }));
        Ok(Self {
            listener,
            router,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
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
