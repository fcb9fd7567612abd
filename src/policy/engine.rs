//! The Wasm host: one wasmtime `Engine` for the process, components compiled
//! once (and cached on disk, keyed by content hash and engine version), and a
//! small pool of warm instances per policy.
//!
//! Isolation: an instance that fails in any way (trap, fuel, memory, time) is
//! thrown away, never reused, so one request's failure cannot leak into the
//! next decision. Healthy instances are reused (about 2.5 µs a call instead of
//! tens of µs for a fresh one) and recycled after `recycle_after` evaluations.
//! Guests get WASI with nothing in it: no preopened directories, no
//! environment or arguments, no sockets, an empty stdin, stdout and stderr
//! captured in small buffers (`sandbox`), and clocks frozen at the Unix epoch.
//!
//! Evaluations are async: the server awaits them on its tokio workers, the
//! guest running on a fiber of wasmtime's. A WASI call that would block (a
//! sleep, a poll) is a future the worker awaits, not a blocked thread, and
//! every evaluation has a wall-clock deadline (`policy.timeout`) besides its
//! fuel; a long computation yields to other requests every `YIELD_FUEL` units.
//! Synchronous callers (loading a chain, `policy test`) drive the same
//! futures on a thread and runtime of their own ([`block_on_guest`]).
//! This module does not know about HTTP or the registry's request types.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest as _;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::portcullis::policy::types as wit;
use super::bindings::{Policy, PolicyPre};
use super::bindings_v01::portcullis::policy::types as wit_v01;
use super::bindings_v01::{Policy as PolicyV01, PolicyPre as PolicyPreV01};
use super::decisions::DecisionLog;
use super::lookups::{LookupLimits, LookupSession, Lookups};
use super::sandbox::{CapturedOutput, GuestLimiter, GuestLog, MemoryBudget, Usage};

/// Resource limits applied to every evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel (roughly, Wasm instructions) per call; a runaway loop runs out.
    pub fuel: u64,
    /// Memory cap per instance, in bytes: all its linear memories and
    /// tables together.
    pub memory: usize,
    /// Evaluations before a healthy instance is replaced by a fresh one.
    pub recycle_after: u32,
    /// Longest wall-clock time of one call into a policy.
    pub timeout: Duration,
    /// What one evaluation may look up.
    pub lookups: LookupLimits,
}

/// Fuel between two yields of a running guest to the async worker, so that
/// a long evaluation does not hold a worker thread for all of its fuel (about
/// 0.1-0.3 ms of guest code).
const YIELD_FUEL: u64 = 100_000;

/// The budget of an engine until a config sets `policy.total_memory`.
const DEFAULT_TOTAL_MEMORY: usize = 256 << 20;
/// Resources (streams, pollables, ...) one store may hold at once: a guest
/// that leaks them traps instead of growing the host's table.
const MAX_RESOURCES: usize = 1024;
/// Most bytes one `get-random-bytes` call may ask the host for.
const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// Fuel added per string and per byte of the request handed to a policy, on
/// top of `policy.fuel`: lowering the request into the guest (an allocation
/// per string) and reading it costs the guest fuel in proportion to its size,
/// so a large, valid manifest (100,000 annotations) must not run a policy dry
/// that a small one leaves with most of its fuel. Bounded, since requests are
/// (`limits.max_manifest_bytes`).
const FUEL_PER_STRING: u64 = 1_000;
const FUEL_PER_BYTE: u64 = 4;

/// The fuel one evaluation of `request` gets: `base` plus its size's share.
fn fuel_for(base: u64, request: &wit::Request) -> u64 {
    let (mut strings, mut bytes) = (0u64, 0u64);
    let mut add = |s: &str| {
        strings += 1;
        bytes += s.len() as u64;
    };
    add(&request.repository);
    add(&request.client_ip);
    if let Some(wit::Reference::Tag(s) | wit::Reference::Digest(s)) = &request.reference {
        add(s);
    }
    request.identity.subject.iter().for_each(|s| add(s));
    request.identity.groups.iter().for_each(|s| add(s));
    request.current_digest.iter().for_each(|s| add(s));
    request.mount_from.iter().for_each(|s| add(s));
    request.digest_tags.iter().for_each(|s| add(s));
    if let Some(m) = &request.manifest {
        add(&m.media_type);
        add(&m.digest);
        m.artifact_type.iter().for_each(|s| add(s));
        m.subject.iter().for_each(|s| add(s));
        for (key, value) in &m.annotations {
            add(key);
            add(value);
        }
        if let Some(image) = &m.image {
            add(&image.config_digest);
            add(&image.config_media_type);
            for layer in &image.layers {
                add(&layer.digest);
                add(&layer.media_type);
            }
            if let Some(c) = &image.config {
                add(&c.os);
                add(&c.architecture);
                add(&c.user);
                c.variant.iter().for_each(|s| add(s));
                c.created.iter().for_each(|s| add(s));
                for (key, value) in &c.labels {
                    add(key);
                    add(value);
                }
                c.entrypoint.iter().for_each(|s| add(s));
                c.cmd.iter().for_each(|s| add(s));
                c.env.iter().for_each(|s| add(s));
                c.exposed_ports.iter().for_each(|s| add(s));
            }
        }
        for child in &m.children {
            add(&child.digest);
            add(&child.media_type);
            child.artifact_type.iter().for_each(|s| add(s));
            if let Some(p) = &child.platform {
                add(&p.os);
                add(&p.architecture);
                p.variant.iter().for_each(|s| add(s));
                p.os_version.iter().for_each(|s| add(s));
            }
        }
    }
    base.saturating_add(strings.saturating_mul(FUEL_PER_STRING))
        .saturating_add(bytes.saturating_mul(FUEL_PER_BYTE))
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot set up the Wasm engine: {0}")]
    Setup(String),
    #[error("{0} is not a valid policy component: {1}")]
    Compile(String, String),
    #[error("policy {policy} failed: {reason}")]
    Failed { policy: String, reason: String },
    #[error("policy {policy} refused its settings: {reason}")]
    Settings { policy: String, reason: String },
    #[error("policy {policy}: no room for a new instance within policy.total_memory")]
    OutOfBudget { policy: String },
}

/// Per-store state: an empty WASI context, the resource limiter, the
/// buffers the guest's stdout and stderr go to, and what the contract's
/// imports allow the current evaluation (lookups, log, verifications).
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    output: CapturedOutput,
    pub(super) lookups: LookupSession,
    pub(super) verifications: u32,
    log: GuestLog,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for GuestState {}
impl wit_v01::Host for GuestState {}

impl super::bindings::portcullis::policy::log::Host for GuestState {
    fn log(&mut self, level: super::bindings::portcullis::policy::log::Level, message: String) {
        use super::bindings::portcullis::policy::log::Level;
        let level = match level {
            Level::Debug => 0,
            Level::Info => 1,
            Level::Warn => 2,
        };
        self.log.write(level, &message, &self.output);
    }
}

/// Clocks that always read the Unix epoch: policies get no time unless granted.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The process-wide Wasm engine and the linker every policy is instantiated with.
pub struct PolicyEngine {
    engine: Engine,
    /// `engine`'s configuration, for the short-lived engines that compile.
    config: Config,
    linker: Linker<GuestState>,
    cache_dir: Option<PathBuf>,
    /// `policy.total_memory`, for every instance of every chain this engine
    /// runs (a chain being replaced and its successor share it).
    budget: Arc<MemoryBudget>,
    /// Where policies' lookups are answered from, once the server has a store.
    lookups: std::sync::OnceLock<Arc<Lookups>>,
    /// Where the chains' decisions are recorded, once the server has set it.
    decisions: std::sync::OnceLock<Arc<DecisionLog>>,
}

impl PolicyEngine {
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, EngineError> {
        let config = engine_config();
        let engine = Engine::new(&config).map_err(|e| EngineError::Setup(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        // Both contracts' imports: 0.2's interfaces, and 0.1's types.
        Policy::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |s| s)
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        wit_v01::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |s| s)
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        Ok(Self {
            engine,
            config,
            linker,
            cache_dir,
            budget: MemoryBudget::new(DEFAULT_TOTAL_MEMORY),
            lookups: std::sync::OnceLock::new(),
            decisions: std::sync::OnceLock::new(),
        })
    }

    /// Where lookups are answered from, when attached.
    pub fn lookups(&self) -> Option<&Arc<Lookups>> {
        self.lookups.get()
    }

    /// Records the chains' decisions in `log` from now on.
    pub fn attach_decision_log(&self, log: Arc<DecisionLog>) {
        let _ = self.decisions.set(log);
    }

    /// The decision log, when one is attached.
    pub fn decisions(&self) -> Option<&Arc<DecisionLog>> {
        self.decisions.get()
    }

    /// Answers policies' lookups from `lookups` (the server's store) from now on.
    pub fn attach_lookups(&self, lookups: Arc<Lookups>) {
        let _ = self.lookups.set(lookups);
    }

    /// The memory budget of all policy instances (its cap set by each chain
    /// loaded from a config).
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Compiles a component (or loads its cached compilation) and links it.
    /// `label` names it in errors (a file name or `builtin:<name>`).
    /// A component built against 0.1.x is run with 0.1's bindings.
    pub fn compile(&self, label: &str, wasm: &[u8]) -> Result<Compiled, EngineError> {
        let bad = |e: wasmtime::Error| EngineError::Compile(label.to_owned(), format!("{e:#}"));
        let cached = self.cache_path(wasm).is_some_and(|p| p.is_file());
        let started = std::time::Instant::now();
        if !cached {
            // A large JavaScript or Python component takes seconds: say so
            // when it starts, not only when it is in force.
            tracing::info!(policy = label, bytes = wasm.len(), "compiling policy");
        }
        let component = self.compile_cached(wasm).map_err(bad)?;
        if !cached {
            tracing::info!(
                policy = label,
                millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "policy compiled"
            );
        }
        let v01 = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name.starts_with("portcullis:policy/types@0.1."));
        let pre = self.linker.instantiate_pre(&component).map_err(bad)?;
        if v01 {
            PolicyPreV01::new(pre).map(Compiled::V01).map_err(bad)
        } else {
            PolicyPre::new(pre).map(Compiled::V02).map_err(bad)
        }
    }

    fn cache_path(&self, wasm: &[u8]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut key = sha2::Sha256::new();
        key.update(wasm);
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(
            &self.engine.precompile_compatibility_hash(),
            &mut engine_hash,
        );
        let engine_key = std::hash::Hasher::finish(&engine_hash);
        Some(dir.join(format!(
            "{}-{engine_key:016x}.cwasm",
            hex::encode(key.finalize())
        )))
    }

    fn compile_cached(&self, wasm: &[u8]) -> wasmtime::Result<Component> {
        let path = self.cache_path(wasm);
        if let Some(path) = &path {
            if path.is_file() {
                if let Some(component) =
                    self.load_cached(path, "ignoring unusable policy cache entry")
                {
                    return Ok(component);
                }
            }
            if self.compile_in_child(wasm, path) {
                if let Some(component) =
                    self.load_cached(path, "cannot load the policy compiled by the child process")
                {
                    return Ok(component);
                }
            }
        }
        // Compiled by an engine of its own on threads of their own, all gone
        // when this returns, so that compiling leaves nothing behind but free
        // memory (which `release_freed_memory` returns): the engine keeps
        // Cranelift's scratch state for as long as it lives, and ours lives as
        // long as the process; each thread keeps a cache of the memory it freed
        // (glibc's tcache) until it ends.
        let compiled = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("policy-compile-{i}"))
            .build_scoped(rayon::ThreadBuilder::run, |pool| {
                pool.install(|| Engine::new(&self.config)?.precompile_component(wasm))
            })
            .context("cannot start the threads that compile policies")??;
        if let Some(path) = &path {
            // Loaded back from the cache, like on a warm start: the code is then
            // a mapping of the file instead of anonymous memory.
            match store_cache_entry(path, &compiled) {
                Ok(()) => {
                    if let Some(component) =
                        self.load_cached(path, "cannot load the policy just cached")
                    {
                        return Ok(component);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled policy")
                }
            }
        }
        // SAFETY: `compiled` was produced just now by an engine with this
        // engine's configuration, and has not left this process.
        unsafe { Component::deserialize(&self.engine, &compiled) }
    }

    /// Maps a compiled component from the cache; `None` (logged with
    /// `failure`) when it cannot be used.
    fn load_cached(&self, path: &Path, failure: &str) -> Option<Component> {
        // SAFETY: the cache directory belongs to the registry (mode 0700,
        // made by `store_cache_entry`) and its files are written only by this
        // executable (in-process or as `policy precompile`), named by the hash
        // of the source component and the engine's compatibility hash;
        // wasmtime also checks the artifact's header against this engine.
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "{failure}");
                None
            }
        }
    }

    /// Compiles in a child process (`portcullis policy precompile`) into the
    /// cache file at `path`, when the binary has asked for it with
    /// [`compile_in_child_processes`]. Cranelift's code and working memory are
    /// then never part of the server: after compiling, its resident memory is
    /// what a start from a warm cache has. `false` (logged) falls back to
    /// compiling in-process.
    fn compile_in_child(&self, wasm: &[u8], path: &Path) -> bool {
        use std::io::Write;
        let Some(exe) = COMPILER_EXECUTABLE.get() else {
            return false;
        };
        let run = || -> std::io::Result<()> {
            let mut child = std::process::Command::new(exe)
                .args(["policy", "precompile", "--output"])
                .arg(path)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(wasm)?;
            }
            let output = child.wait_with_output()?;
            if output.status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )))
            }
        };
        match run() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "compiling the policy in a child process failed; compiling in-process");
                false
            }
        }
    }

    fn new_store(
        &self,
        policy: &Arc<str>,
        limits: &Limits,
        budget: &Arc<MemoryBudget>,
    ) -> Store<GuestState> {
        // stdout and stderr share one buffer: what a guest printed, in order.
        let output = CapturedOutput::default();
        let mut wasi = WasiCtxBuilder::new();
        wasi.wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .stdout(output.clone())
            .stderr(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let state = GuestState {
            wasi: wasi.build(),
            table,
            limiter: GuestLimiter::new(limits.memory, Arc::clone(budget)),
            output,
            lookups: LookupSession::default(),
            verifications: 0,
            log: GuestLog::new(Arc::clone(policy)),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
    }
}

/// The executable that compiles policies in child processes, when set.
static COMPILER_EXECUTABLE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes cache misses compile in child processes running `exe policy
/// precompile` (the `portcullis` binary itself). Only for engines with a
/// cache directory; the library's default (and the tests') is in-process.
pub fn compile_in_child_processes(exe: PathBuf) {
    let _ = COMPILER_EXECUTABLE.set(exe);
}

/// `portcullis policy precompile`: compiles `wasm` with the engine
/// configuration of [`PolicyEngine::new`] and writes the artifact to `output`
/// (mode 0600, atomically), for the parent to map.
pub fn precompile_to(wasm: &[u8], output: &Path) -> Result<(), EngineError> {
    let engine = Engine::new(&engine_config()).map_err(|e| EngineError::Setup(e.to_string()))?;
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|e| EngineError::Compile("<stdin>".into(), format!("{e:#}")))?;
    store_cache_entry(output, &compiled).map_err(|e| EngineError::Setup(e.to_string()))
}

/// The one engine configuration, shared by the server's engine and the
/// engines that compile for it (their artifacts must match it).
fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    // Proposals the contract does not need stay off. Multi-memory above all:
    // each memory would get the whole `policy.memory` (the limiter sums them
    // anyway, and refuses more than `sandbox::MAX_MEMORIES`).
    config.wasm_multi_memory(false);
    config.wasm_memory64(false);
    // Keep guest stacks small: policies are shallow, and a runaway recursion
    // should trap quickly.
    config.max_wasm_stack(512 * 1024);
    config
}

/// Hands the heap that compiling policies freed back to the operating system.
///
/// glibc gives each thread its own malloc arena and keeps what is freed in an
/// arena for later: the compiling threads have ended, but their arenas still
/// hold what they freed, which a start from a warm cache never touched (about
/// 1.5 MiB for the three bundled policies, over 100 MiB for the Python example).
/// musl's allocator returns freed memory on its own, and has no such call.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only touches the allocator's own free lists, under
    // the arenas' locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Writes a cache file atomically (staged, synced, renamed), mode 0600 in a
/// directory made 0700.
pub(super) fn store_cache_entry(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let staged = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

/// A compiled, linked component, with the bindings of the contract version
/// it was built against.
#[derive(Clone)]
pub enum Compiled {
    V02(PolicyPre<GuestState>),
    V01(PolicyPreV01<GuestState>),
}

impl Compiled {
    /// The contract version the component speaks, e.g. `0.2`.
    pub fn version(&self) -> &'static str {
        match self {
            Compiled::V02(_) => "0.2",
            Compiled::V01(_) => "0.1",
        }
    }
}

enum Bindings {
    V02(Policy),
    V01(PolicyV01),
}

/// A warm instance and how many evaluations it has served.
struct Warm {
    store: Store<GuestState>,
    bindings: Bindings,
    uses: u32,
}

/// One configured policy: its compiled component, settings and instance pool.
pub struct PolicyRuntime {
    name: String,
    label: Arc<str>,
    settings: String,
    pre: Compiled,
    limits: Limits,
    budget: Arc<MemoryBudget>,
    pool: Mutex<Vec<Warm>>,
}

/// What one evaluation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny(String),
    /// The policy trapped, ran out of fuel, memory or time, or failed to initialise.
    Failed(String),
}

/// An outcome with what it cost, and what the guest printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    pub outcome: Outcome,
    pub fuel_used: u64,
    /// What the instance held at the end (all memories and tables).
    pub usage: Usage,
    /// The guest's stdout and stderr during this evaluation, at most
    /// `sandbox::OUTPUT_CAP` bytes.
    pub output: Option<String>,
    /// It failed because all instances together hold `policy.total_memory`:
    /// a lack of room, which the chain may make by dropping warm instances.
    pub out_of_budget: bool,
}

impl Measured {
    fn failed(reason: String) -> Self {
        Self {
            outcome: Outcome::Failed(reason),
            fuel_used: 0,
            usage: Usage::default(),
            output: None,
            out_of_budget: false,
        }
    }
}

/// Most instances kept warm per policy; more concurrent requests instantiate afresh.
const MAX_WARM: usize = 64;

impl PolicyRuntime {
    pub fn new(
        engine: &PolicyEngine,
        name: String,
        settings: String,
        pre: Compiled,
        limits: Limits,
        budget: Arc<MemoryBudget>,
    ) -> Result<Self, EngineError> {
        let runtime = Self {
            label: Arc::from(name.as_str()),
            name,
            settings,
            pre,
            limits,
            budget,
            pool: Mutex::new(Vec::new()),
        };
        block_on_guest(runtime.validate_settings(engine)).map_err(|e| runtime.failed(e))??;
        Ok(runtime)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The contract version the component speaks.
    pub fn contract(&self) -> &'static str {
        self.pre.version()
    }

    fn failed(&self, reason: impl std::fmt::Display) -> EngineError {
        EngineError::Failed {
            policy: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// A new instance in a new store, with a full tank of fuel.
    async fn instantiate(
        &self,
        engine: &PolicyEngine,
    ) -> Result<(Store<GuestState>, Bindings), EngineError> {
        let mut store = engine.new_store(&self.label, &self.limits, &self.budget);
        store
            .set_fuel(self.limits.fuel)
            .and_then(|()| store.fuel_async_yield_interval(Some(YIELD_FUEL)))
            .map_err(|e| self.failed(e))?;
        let bindings = match &self.pre {
            Compiled::V02(pre) => self
                .within_deadline(pre.instantiate_async(&mut store))
                .await
                .map(Bindings::V02),
            Compiled::V01(pre) => self
                .within_deadline(pre.instantiate_async(&mut store))
                .await
                .map(Bindings::V01),
        };
        let bindings = bindings.map_err(|e| self.call_failed(&store, "instantiation", e))?;
        Ok((store, bindings))
    }

    /// A failed call into a new instance: for want of room in the budget, or
    /// the guest's own failure.
    fn call_failed(&self, store: &Store<GuestState>, call: &str, reason: String) -> EngineError {
        if store.data().limiter.out_of_budget() {
            EngineError::OutOfBudget {
                policy: self.name.clone(),
            }
        } else {
            self.failed(format!("{call}: {reason}"))
        }
    }

    /// Runs one call into the guest under the wall-clock deadline.
    async fn within_deadline<R>(
        &self,
        call: impl Future<Output = wasmtime::Result<R>>,
    ) -> Result<R, String> {
        match tokio::time::timeout(self.limits.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(describe_trap(&e)),
            Err(_) => Err(format!(
                "took longer than policy.timeout ({})",
                humantime::format_duration(self.limits.timeout)
            )),
        }
    }

    fn settings_error(&self, reason: String) -> EngineError {
        EngineError::Settings {
            policy: self.name.clone(),
            reason,
        }
    }

    /// Runs `validate-settings` on a fresh instance, then warms one instance.
    async fn validate_settings(&self, engine: &PolicyEngine) -> Result<(), EngineError> {
        let (mut store, bindings) = self.instantiate(engine).await?;
        let call = match &bindings {
            Bindings::V02(b) => {
                self.within_deadline(b.call_validate_settings(&mut store, &self.settings))
                    .await
            }
            Bindings::V01(b) => {
                self.within_deadline(b.call_validate_settings(&mut store, &self.settings))
                    .await
            }
        };
        call.map_err(|e| self.failed(format!("validate-settings: {e}")))?
            .map_err(|reason| self.settings_error(reason))?;
        // Gone before the next one is made: a load needs room for one instance.
        drop((store, bindings));
        let warm = self.fresh(engine).await?;
        self.lock_pool().push(warm);
        Ok(())
    }

    /// A new instance that has been given its settings.
    async fn fresh(&self, engine: &PolicyEngine) -> Result<Warm, EngineError> {
        let (mut store, bindings) = self.instantiate(engine).await?;
        let call = match &bindings {
            Bindings::V02(b) => {
                self.within_deadline(b.call_init(&mut store, &self.settings))
                    .await
            }
            Bindings::V01(b) => {
                self.within_deadline(b.call_init(&mut store, &self.settings))
                    .await
            }
        };
        call.map_err(|e| self.call_failed(&store, "init", e))?
            .map_err(|reason| self.settings_error(reason))?;
        Ok(Warm {
            store,
            bindings,
            uses: 0,
        })
    }

    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every warm instance, giving their memory back to the budget.
    pub fn drop_warm_instances(&self) {
        let dropped = std::mem::take(&mut *self.lock_pool());
        drop(dropped);
    }

    /// Decides one request. Never panics and never returns an error: every
    /// failure is `Outcome::Failed`, which the chain treats as a denial.
    pub async fn evaluate(&self, engine: &PolicyEngine, request: &wit::Request) -> Measured {
        let pooled = self.lock_pool().pop();
        let mut warm = match pooled {
            Some(w) => w,
            None => match self.fresh(engine).await {
                Ok(w) => w,
                Err(e) => {
                    return Measured {
                        out_of_budget: matches!(e, EngineError::OutOfBudget { .. }),
                        ..Measured::failed(e.to_string())
                    }
                }
            },
        };
        let fuel = fuel_for(self.limits.fuel, request);
        if let Err(e) = warm.store.set_fuel(fuel) {
            return Measured::failed(e.to_string());
        }
        {
            let state = warm.store.data_mut();
            state.lookups = LookupSession::new(
                engine.lookups.get().cloned(),
                &request.repository,
                self.limits.lookups,
            );
            state.verifications = 0;
            state.log.reset();
        }
        let result = match &warm.bindings {
            Bindings::V02(b) => {
                self.within_deadline(b.call_evaluate(&mut warm.store, request))
                    .await
            }
            Bindings::V01(b) => {
                let old = to_v01(request);
                self.within_deadline(b.call_evaluate(&mut warm.store, &old))
                    .await
                    .map(|d| match d {
                        wit_v01::Decision::Allow => wit::Decision::Allow,
                        wit_v01::Decision::Deny(reason) => wit::Decision::Deny(reason),
                    })
            }
        };
        // No lookups between evaluations.
        warm.store.data_mut().lookups = LookupSession::default();
        let fuel_used = fuel.saturating_sub(warm.store.get_fuel().unwrap_or(0));
        let state = warm.store.data();
        let (usage, output) = (state.limiter.usage(), state.output.take());
        let out_of_budget = state.limiter.out_of_budget();
        let outcome = match result {
            Ok(wit::Decision::Allow) => Outcome::Allow,
            Ok(wit::Decision::Deny(reason)) => Outcome::Deny(reason),
            // The instance is dropped here: a failed store is never reused.
            Err(reason) => Outcome::Failed(reason),
        };
        if !matches!(outcome, Outcome::Failed(_)) {
            warm.uses += 1;
            // Under memory pressure the instance goes, making room for others.
            if warm.uses < self.limits.recycle_after && !self.budget.under_pressure() {
                let mut pool = self.lock_pool();
                if pool.len() < MAX_WARM {
                    pool.push(warm);
                }
            }
        }
        Measured {
            outcome,
            fuel_used,
            usage,
            output,
            out_of_budget,
        }
    }
}

/// The request as contract 0.1 describes it: what 0.2 added is left out.
fn to_v01(request: &wit::Request) -> wit_v01::Request {
    wit_v01::Request {
        action: match request.action {
            wit::Action::Pull => wit_v01::Action::Pull,
            wit::Action::Push => wit_v01::Action::Push,
            wit::Action::Delete => wit_v01::Action::Delete,
            wit::Action::List => wit_v01::Action::List,
        },
        resource: match request.resource {
            wit::ResourceKind::Manifest => wit_v01::ResourceKind::Manifest,
            wit::ResourceKind::Blob => wit_v01::ResourceKind::Blob,
            wit::ResourceKind::Upload => wit_v01::ResourceKind::Upload,
            wit::ResourceKind::Tags => wit_v01::ResourceKind::Tags,
            wit::ResourceKind::Catalog => wit_v01::ResourceKind::Catalog,
            wit::ResourceKind::Referrers => wit_v01::ResourceKind::Referrers,
        },
        repository: request.repository.clone(),
        reference: request.reference.as_ref().map(|r| match r {
            wit::Reference::Tag(t) => wit_v01::Reference::Tag(t.clone()),
            wit::Reference::Digest(d) => wit_v01::Reference::Digest(d.clone()),
        }),
        identity: wit_v01::Identity {
            subject: request.identity.subject.clone(),
            groups: request.identity.groups.clone(),
        },
        client_ip: request.client_ip.clone(),
        // 0.1 showed the manifest on pushes only.
        manifest: request
            .manifest
            .as_ref()
            .filter(|_| request.action == wit::Action::Push)
            .map(|m| wit_v01::Manifest {
                media_type: m.media_type.clone(),
                digest: m.digest.clone(),
                size: m.size,
                artifact_type: m.artifact_type.clone(),
                subject: m.subject.clone(),
                annotations: m.annotations.clone(),
            }),
        current_digest: request.current_digest.clone(),
        digest_tags: request.digest_tags.clone(),
        mount_from: request.mount_from.clone(),
    }
}

/// Drives a guest call to completion from synchronous code (loading a chain,
/// `portcullis policy test`), whether or not the caller is inside a tokio
/// runtime: on a scoped thread with a current-thread runtime of its own, with
/// timers (the deadline, a guest's sleeps) and I/O (fetching an `oci://`
/// module).
pub fn block_on_guest<F>(call: F) -> Result<F::Output, String>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime for the policy: {e}"))?;
                Ok(runtime.block_on(call))
            })
            .join()
            .unwrap_or_else(|_| Err("the thread running the policy panicked".into()))
    })
}

fn describe_trap(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => "ran out of fuel (runaway loop?)".to_owned(),
        Some(wasmtime::Trap::StackOverflow) => "overflowed its stack".to_owned(),
        Some(trap) => format!("trapped: {trap}"),
        None => {
            let text = format!("{e:#}");
            // The limiter's own messages (`sandbox`) say what was exceeded,
            // behind wasmtime's backtrace context: they alone are the reason.
            let root = e.root_cause().to_string();
            if root.starts_with("exceeded ") {
                return root;
            }
            if text.contains("memory") {
                format!("exceeded its memory limit: {text}")
            } else {
                text
            }
        }
    }
}
