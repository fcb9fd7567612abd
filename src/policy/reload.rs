//! Hot reload: the current chain behind an `ArcSwap`, rebuilt off the request
//! path when the config file or a file in the policies directory changes (or
//! on SIGHUP). A broken config or policy leaves the running chain in place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::chain::PolicyChain;
use super::engine::PolicyEngine;
use crate::config::Config;
use crate::metrics::Metrics;

/// What else a reload re-reads from the new config (the accounts), in two
/// halves: the hook reads and checks (an error fails the whole reload), and
/// the closure it returns puts the result in force, called only once the
/// chain loaded too, so accounts and chain always change together.
pub type ReloadHook =
    Box<dyn Fn(&Config) -> Result<Box<dyn FnOnce() + Send>, String> + Send + Sync>;

/// The chain in force. Requests load it once and finish on it, whatever swaps happen meanwhile.
pub struct ChainHolder {
    current: ArcSwap<PolicyChain>,
    engine: Arc<PolicyEngine>,
    config_file: Option<PathBuf>,
    metrics: Arc<Metrics>,
    hook: Option<ReloadHook>,
    /// Files outside the policies directory whose change means a reload
    /// (the htpasswd file, OIDC JWKS files), as of the last load.
    extra_files: std::sync::Mutex<Vec<PathBuf>>,
    /// When the chain in force was loaded, and the last reload's time and
    /// outcome (an error keeps the chain in force): for the web UI.
    status: std::sync::Mutex<ReloadStatus>,
}

/// When the chain was loaded and how the last reload went.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub loaded: std::time::SystemTime,
    pub last_attempt: Option<(std::time::SystemTime, Result<(), String>)>,
}

impl ChainHolder {
    pub fn new(
        chain: PolicyChain,
        engine: Arc<PolicyEngine>,
        config_file: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            current: ArcSwap::from_pointee(chain),
            engine,
            config_file,
            metrics,
            hook: None,
            extra_files: std::sync::Mutex::new(Vec::new()),
            status: std::sync::Mutex::new(ReloadStatus {
                loaded: std::time::SystemTime::now(),
                last_attempt: None,
            }),
        }
    }

    /// Runs `hook` with each reloaded config.
    pub fn on_reload(mut self, hook: ReloadHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Also reload when one of these files changes.
    pub fn watch_files(&self, files: Vec<PathBuf>) {
        *self.extra_files.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }

    pub fn current(&self) -> Arc<PolicyChain> {
        self.current.load_full()
    }

    /// Re-reads the config and rebuilds the chain; on success swaps it in.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let result = self.rebuild();
        self.metrics.record_reload(result.is_ok());
        let now = std::time::SystemTime::now();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if result.is_ok() {
            status.loaded = now;
        }
        status.last_attempt = Some((now, result.as_ref().map(|_| ()).map_err(Clone::clone)));
        drop(status);
        result
    }

    /// The decision log (its in-memory ring), if the engine keeps one.
    pub fn decisions(&self) -> Option<Arc<super::decisions::DecisionLog>> {
        self.engine.decisions().cloned()
    }

    /// When the chain in force was loaded, and how the last reload went.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn rebuild(&self) -> Result<Vec<String>, String> {
        let config = Config::load(self.config_file.as_deref()).map_err(|e| e.to_string())?;
        self.watch_files(account_files(&config));
        let commit = match &self.hook {
            Some(hook) => Some(hook(&config).map_err(|e| format!("accounts: {e}"))?),
            None => None,
        };
        let chain =
            PolicyChain::load(Arc::clone(&self.engine), &config).map_err(|e| e.to_string())?;
        let names = chain.names().iter().map(|s| s.to_string()).collect();
        if let Some(commit) = commit {
            commit();
        }
        self.current.store(Arc::new(chain));
        Ok(names)
    }

    /// Watches the config file and the policies directory, and SIGHUP, and
    /// reloads on change. Runs until the process ends.
    pub fn watch(self: &Arc<Self>, policy_dir: PathBuf) {
        use notify::{RecursiveMode, Watcher};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let notify_tx = tx.clone();
        let relevant = Relevant {
            config_file: self
                .config_file
                .as_ref()
                .and_then(|f| f.file_name())
                .map(Into::into),
            policy_dir: policy_dir
                .canonicalize()
                .unwrap_or_else(|_| policy_dir.clone()),
            extra_files: self
                .extra_files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter_map(|f| f.file_name().map(Into::into))
                .collect(),
        };
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if !event.kind.is_access() && event.paths.iter().any(|p| relevant.matches(p)) {
                    let _ = notify_tx.send(());
                }
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch for policy changes; SIGHUP still reloads");
                return self.watch_signal_only(tx, rx);
            }
        };
        // Watch directories, not files: editors and ConfigMaps replace files by rename.
        let mut watched = vec![policy_dir];
        if let Some(file) = &self.config_file {
            watched.push(
                file.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".")),
            );
        }
        for file in self
            .extra_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            if !watched.contains(&dir) {
                watched.push(dir);
            }
        }
        for dir in &watched {
            if dir.is_dir() {
                if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                }
            }
        }
        spawn_sighup(tx);
        let holder = Arc::clone(self);
        tokio::spawn(async move {
            let _watcher = watcher;
            while rx.recv().await.is_some() {
                // Let a burst of events (an editor's save, a ConfigMap swap) settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                holder.reload_logged().await;
            }
        });
    }

    fn watch_signal_only(
        self: &Arc<Self>,
        tx: tokio::sync::mpsc::UnboundedSender<()>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        spawn_sighup(tx);
        let holder = Arc::clone(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                holder.reload_logged().await;
            }
        });
    }

    async fn reload_logged(self: &Arc<Self>) {
        let holder = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || holder.reload()).await;
        match result {
            Ok(Ok(names)) => {
                tracing::info!(policies = %names.join(", "), "policy chain and accounts reloaded")
            }
            Ok(Err(e)) => tracing::error!(
                config = %self
                    .config_file
                    .as_deref()
                    .map_or("(none)".into(), |p| p.display().to_string()),
                error = %e,
                "reload failed; the previous policy chain and accounts stay in force"
            ),
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
        }
    }
}

/// Which changed paths mean a reload: the config file (by name, since it is
/// watched through its directory) and component files in the policies directory.
struct Relevant {
    config_file: Option<std::ffi::OsString>,
    policy_dir: PathBuf,
    /// The accounts' files (htpasswd, JWKS), by name.
    extra_files: Vec<std::ffi::OsString>,
}

impl Relevant {
    fn matches(&self, path: &std::path::Path) -> bool {
        let is_config = self
            .config_file
            .as_deref()
            .is_some_and(|f| path.file_name() == Some(f));
        let is_policy = path.parent().is_some_and(|p| {
            p == self.policy_dir || p.canonicalize().is_ok_and(|p| p == self.policy_dir)
        }) && path.extension().is_some_and(|e| e == "wasm");
        // A Kubernetes Secret or ConfigMap volume changes by swapping its
        // `..data` link: no event names the file itself.
        let is_account_file = path.file_name().is_some_and(|name| {
            self.extra_files.iter().any(|f| f == name)
                || (!self.extra_files.is_empty() && name.to_string_lossy().starts_with("..data"))
        });
        is_config || is_policy || is_account_file
    }
}

/// The files the accounts are read from, whose changes mean a reload.
pub fn account_files(config: &Config) -> Vec<PathBuf> {
    config
        .auth
        .htpasswd
        .iter()
        .chain(config.auth.oidc.iter().filter_map(|o| o.jwks_file.as_ref()))
        .cloned()
        .collect()
}

fn spawn_sighup(tx: tokio::sync::mpsc::UnboundedSender<()>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP");
            return;
        };
        while hup.recv().await.is_some() {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
}
