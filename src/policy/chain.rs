//! The ordered chain of policies and the decision over it: every policy whose
//! scope covers the request must allow; the first denial or failure wins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_patterns::PatternList;

use super::bindings::portcullis::policy::types as wit;
use super::builtin;
use super::decisions::{Decision, Judgement};
use super::engine::{block_on_guest, EngineError, Limits, Outcome, PolicyEngine, PolicyRuntime};
use super::lookups::LookupLimits;
use super::request::Access;
use super::sandbox::MemoryBudget;
use crate::config::{Action, Config, PolicyEntry, PolicyMode};
use crate::identity::Identity;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {name}: cannot read module {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy {name}: there is no bundled policy {module:?} (bundled: {known})")]
    UnknownBuiltin {
        name: String,
        module: String,
        known: String,
    },
    #[error("policy {name}: {source}")]
    Engine { name: String, source: EngineError },
    #[error("policy {name}: {reason}")]
    Artifact { name: String, reason: String },
}

/// The result of running a request through the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny {
        policy: String,
        reason: String,
    },
    /// A policy trapped, ran out of fuel or memory: the request is denied.
    Failed {
        policy: String,
        reason: String,
    },
    /// No room for the policy to run in `policy.total_memory`, even after
    /// every warm instance was dropped: the request is refused (503), not
    /// decided.
    Unavailable {
        policy: String,
    },
}

/// Which of a chain's policies decide: all, or for a manifest pull the ones
/// that need no facts (before the manifest is read) and then the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    All,
    WithoutFacts,
    WithFacts,
}

/// Bundled policies that never read what a pulled manifest is.
const FACT_FREE_BUILTINS: [&str; 3] = [
    "builtin:repo-allowlist",
    "builtin:group-access",
    "builtin:tag-immutability",
];

struct Scoped {
    runtime: PolicyRuntime,
    /// Speaks a contract with facts and may read them (not a fact-free builtin).
    needs_facts: bool,
    actions: Option<Vec<Action>>,
    repositories: Option<PatternList>,
    mode: PolicyMode,
    module: String,
    /// `sha256:<hex>` of the component as loaded.
    digest: String,
    /// The entry as configured (its settings: what a web page shows).
    entry: PolicyEntry,
}

/// A loaded policy as a page describes it.
#[derive(Debug, Clone)]
pub struct Described {
    pub name: String,
    pub module: String,
    pub digest: String,
    pub contract: &'static str,
    pub mode: PolicyMode,
    pub actions: Option<Vec<Action>>,
    pub repositories: Option<Vec<String>>,
    pub settings: serde_json::Value,
}

impl Scoped {
    fn applies(&self, access: &Access) -> bool {
        self.covers(access.action, access.repository.as_str())
    }

    fn covers(&self, action: Action, repository: &str) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(&action))
            && self
                .repositories
                .as_ref()
                .is_none_or(|r| r.matches(repository))
    }
}

/// An immutable, loaded chain. A reload builds a new one and swaps it in.
pub struct PolicyChain {
    engine: Arc<PolicyEngine>,
    policies: Vec<Scoped>,
    failures: FailureLog,
}

/// Longest deny reason passed on, in the response and in the log (a policy's
/// reason can be anything, and anonymous callers see it too).
pub const MAX_REASON_BYTES: usize = 2048;

/// `reason` cut to `MAX_REASON_BYTES` on a character boundary, saying so.
fn capped(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let cut = reason.len() - end;
        reason.truncate(end);
        reason.push_str(&format!(" [{cut} more bytes]"));
    }
    reason
}

/// Policy failures are logged at WARN once per policy and minute, with how
/// many more there were: a client that makes a policy fail on purpose gets
/// one line a minute into the log, not one per request.
#[derive(Default)]
struct FailureLog {
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

const FAILURE_LOG_WINDOW: Duration = Duration::from_secs(60);

impl FailureLog {
    fn record(&self, policy: &str, reason: &str, output: Option<&str>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get_mut(policy) {
            Some((since, suppressed)) if now.duration_since(*since) < FAILURE_LOG_WINDOW => {
                *suppressed += 1;
            }
            entry => {
                let suppressed = entry.map_or(0, |(_, n)| *n);
                last.insert(policy.to_owned(), (now, 0));
                tracing::warn!(
                    policy,
                    reason = %capped(reason.to_owned()),
                    output = output.unwrap_or(""),
                    more_failures_in_the_last_minute = suppressed,
                    "policy failed; request denied"
                );
            }
        }
    }
}

impl PolicyChain {
    /// The limits a config sets for every policy.
    pub fn limits(config: &Config) -> Limits {
        Limits {
            fuel: config.policy.fuel,
            memory: usize::try_from(config.policy.memory.as_u64()).unwrap_or(usize::MAX),
            recycle_after: config.policy.recycle_after.max(1),
            timeout: config.policy.timeout,
            lookups: LookupLimits {
                calls: config.policy.lookup_calls,
                bytes: config.policy.lookup_bytes.as_u64(),
                blob_bytes: config.policy.lookup_blob_bytes.as_u64(),
            },
        }
    }

    /// Compiles every module and validates every policy's settings; any
    /// problem refuses the whole chain.
    pub fn load(engine: Arc<PolicyEngine>, config: &Config) -> Result<Self, PolicyError> {
        let limits = Self::limits(config);
        // One budget for every instance of every chain (the one in force and
        // one being replaced), the engine's.
        let budget = Arc::clone(engine.budget());
        budget.set_cap(usize::try_from(config.policy.total_memory.as_u64()).unwrap_or(usize::MAX));
        let mut policies = Vec::with_capacity(config.policy.chain.len());
        for entry in &config.policy.chain {
            let (runtime, digest) = load_one(&engine, config, entry, limits, &budget)?;
            policies.push(Scoped {
                digest,
                entry: entry.clone(),
                needs_facts: runtime.contract() != "0.1"
                    && !FACT_FREE_BUILTINS.contains(&entry.module.as_str()),
                runtime,
                actions: entry.actions.clone(),
                repositories: entry
                    .repositories
                    .as_ref()
                    .and_then(|r| PatternList::new(r).ok()),
                mode: entry.mode,
                module: entry.module.clone(),
            });
        }
        super::engine::release_freed_memory();
        Ok(Self {
            engine,
            policies,
            failures: FailureLog::default(),
        })
    }

    /// The policy names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.runtime.name()).collect()
    }

    /// Each policy as loaded: name, module, contract version, mode.
    pub fn describe(&self) -> Vec<(String, String, &'static str, PolicyMode)> {
        self.policies
            .iter()
            .map(|p| {
                (
                    p.runtime.name().to_owned(),
                    p.module.clone(),
                    p.runtime.contract(),
                    p.mode,
                )
            })
            .collect()
    }

    /// Each policy as loaded, with its digest, scope and settings.
    pub fn described(&self) -> Vec<Described> {
        self.policies
            .iter()
            .map(|p| Described {
                name: p.runtime.name().to_owned(),
                module: p.module.clone(),
                digest: p.digest.clone(),
                contract: p.runtime.contract(),
                mode: p.mode,
                actions: p.actions.clone(),
                repositories: p.entry.repositories.clone(),
                settings: p.entry.settings.clone(),
            })
            .collect()
    }

    /// What the enforcing policies of `module` alone decide on `access`
    /// (a web page asking "is this image signed?"): not a request, so no
    /// decision is recorded. `None` when none of them covers `access`.
    pub async fn probe(
        &self,
        module: &str,
        access: &Access,
        identity: &Identity,
        client: IpAddr,
        metrics: &Metrics,
    ) -> Option<Verdict> {
        let applying: Vec<&Scoped> = self
            .policies
            .iter()
            .filter(|p| p.module == module && p.mode == PolicyMode::Enforce && p.applies(access))
            .collect();
        if applying.is_empty() {
            return None;
        }
        let request = access.to_wit(identity, client);
        for policy in applying {
            match self.run_one(policy, &request, metrics).await {
                Verdict::Allow => {}
                decided => return Some(decided),
            }
        }
        Some(Verdict::Allow)
    }

    /// Whether a policy that applies to `access` sees what a manifest is
    /// (contract 0.2 and later): only then does a pull read its facts.
    pub fn wants_manifest_facts(&self, access: &Access) -> bool {
        self.policies
            .iter()
            .any(|p| p.applies(access) && p.needs_facts)
    }

    /// Decides `access` by `identity` from `client`, recording each policy's
    /// decision and time in `metrics`.
    pub async fn evaluate(
        &self,
        access: &Access,
        identity: &Identity,
        client: IpAddr,
        metrics: &Metrics,
    ) -> Verdict {
        self.evaluate_stage(access, identity, client, metrics, Stage::All)
            .await
    }

    /// Decides `access` as [`evaluate`](Self::evaluate) does, without
    /// recording a decision: for a web page asking whether its viewer may
    /// see a repository, which is not a request. (Recorded, every page view
    /// would fill the decision log's ring, and a user's own refusals would
    /// name the repositories they may not see.)
    pub async fn judge(
        &self,
        access: &Access,
        identity: &Identity,
        client: IpAddr,
        metrics: &Metrics,
    ) -> Verdict {
        if !self.policies.iter().any(|p| p.applies(access)) {
            return Verdict::Allow;
        }
        let request = access.to_wit(identity, client);
        self.decide_with(&request, access.action, metrics, &|_| true, true, false)
            .await
    }

    /// Decides `access` with the policies of `stage` only.
    pub async fn evaluate_stage(
        &self,
        access: &Access,
        identity: &Identity,
        client: IpAddr,
        metrics: &Metrics,
        stage: Stage,
    ) -> Verdict {
        let in_stage = |p: &Scoped| match stage {
            Stage::All => true,
            Stage::WithoutFacts => !p.needs_facts,
            Stage::WithFacts => p.needs_facts,
        };
        // An allow of the first stage is not the decision: not logged.
        let logged = stage != Stage::WithoutFacts
            && self
                .engine
                .decisions()
                .is_some_and(|log| log.wants(&Verdict::Allow, false));
        if !logged
            && !self
                .policies
                .iter()
                .any(|p| p.applies(access) && in_stage(p))
        {
            return Verdict::Allow;
        }
        let request = access.to_wit(identity, client);
        let final_stage = stage != Stage::WithoutFacts;
        self.decide_with(
            &request,
            access.action,
            metrics,
            &in_stage,
            final_stage,
            true,
        )
        .await
    }

    /// Decides a request as the contract shows it (`policy replay`, audit
    /// scans): the chain's policies whose scope covers `action` on its
    /// repository, in order.
    pub async fn decide(
        &self,
        request: &wit::Request,
        action: Action,
        metrics: &Metrics,
    ) -> Verdict {
        self.decide_with(request, action, metrics, &|_| true, true, true)
            .await
    }

    async fn decide_with(
        &self,
        request: &wit::Request,
        action: Action,
        metrics: &Metrics,
        in_stage: &(dyn Fn(&Scoped) -> bool + Sync),
        final_stage: bool,
        record: bool,
    ) -> Verdict {
        let started = Instant::now();
        let mut audited = Vec::new();
        let mut verdict = Verdict::Allow;
        let applying = self
            .policies
            .iter()
            .filter(|p| in_stage(p) && p.covers(action, &request.repository));
        for policy in applying {
            match self.run_one(policy, request, metrics).await {
                Verdict::Allow => {}
                Verdict::Deny {
                    policy: name,
                    reason,
                } if policy.mode == PolicyMode::Audit => {
                    tracing::info!(
                        policy = %name,
                        repository = %request.repository,
                        reason = %reason,
                        "audit: the policy would deny this request"
                    );
                    audited.push((name, reason));
                }
                Verdict::Failed {
                    policy: name,
                    reason,
                } if policy.mode == PolicyMode::Audit => {
                    audited.push((name, format!("failed: {reason}")));
                }
                Verdict::Unavailable { policy: name } if policy.mode == PolicyMode::Audit => {
                    tracing::info!(policy = %name, "audit: the policy could not run (policy.total_memory)");
                    audited.push((name, "unavailable: no room in policy.total_memory".into()));
                }
                decided => {
                    verdict = decided;
                    break;
                }
            }
        }
        if let Some(log) = self.engine.decisions().filter(|_| record) {
            let decided = final_stage || verdict != Verdict::Allow || !audited.is_empty();
            if decided && log.wants(&verdict, !audited.is_empty()) {
                log.record(Decision::new(
                    request,
                    Judgement::of(&verdict),
                    audited,
                    started.elapsed(),
                ));
            }
        }
        verdict
    }

    /// One policy's verdict on `request`, with the retry for room in the budget.
    async fn run_one(&self, policy: &Scoped, request: &wit::Request, metrics: &Metrics) -> Verdict {
        let started = Instant::now();
        let mut measured = policy.runtime.evaluate(&self.engine, request).await;
        if measured.out_of_budget {
            // Make room: every warm instance of this chain goes, and the
            // policy gets one more try.
            for other in &self.policies {
                other.runtime.drop_warm_instances();
            }
            measured = policy.runtime.evaluate(&self.engine, request).await;
            if measured.out_of_budget {
                let name = policy.runtime.name();
                metrics.record_decision(name, "unavailable", started.elapsed());
                return Verdict::Unavailable {
                    policy: name.to_owned(),
                };
            }
        }
        let name = policy.runtime.name();
        let elapsed = started.elapsed();
        let audit = policy.mode == PolicyMode::Audit;
        let outcome = match (&measured.outcome, audit) {
            (Outcome::Allow, _) => "allow",
            (Outcome::Deny(_), false) => "deny",
            (Outcome::Deny(_), true) => "audit-deny",
            (Outcome::Failed(_), false) => "failed",
            (Outcome::Failed(_), true) => "audit-failed",
        };
        metrics.record_decision(name, outcome, elapsed);
        tracing::debug!(
            policy = name,
            outcome,
            fuel = measured.fuel_used,
            micros = elapsed.as_micros() as u64,
            output = measured.output.as_deref().unwrap_or(""),
            "policy evaluated"
        );
        match measured.outcome {
            Outcome::Allow => Verdict::Allow,
            Outcome::Deny(reason) => Verdict::Deny {
                policy: name.to_owned(),
                reason: capped(reason),
            },
            Outcome::Failed(reason) => {
                self.failures
                    .record(name, &reason, measured.output.as_deref());
                Verdict::Failed {
                    policy: name.to_owned(),
                    reason: capped(reason),
                }
            }
        }
    }
}

/// One policy file with its settings, loaded once to decide many requests:
/// what `portcullis policy test` runs. Compiled through the on-disk cache
/// when `cache_dir` is given, so a large component compiles once.
pub struct PolicyTester {
    engine: PolicyEngine,
    runtime: PolicyRuntime,
}

impl PolicyTester {
    pub fn load(
        module: &std::path::Path,
        settings: &str,
        limits: Limits,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self, String> {
        let engine = PolicyEngine::new(cache_dir).map_err(|e| e.to_string())?;
        let wasm =
            std::fs::read(module).map_err(|e| format!("cannot read {}: {e}", module.display()))?;
        let label = module.display().to_string();
        let pre = engine.compile(&label, &wasm).map_err(|e| e.to_string())?;
        let budget = Arc::clone(engine.budget());
        let runtime = PolicyRuntime::new(&engine, label, settings.to_owned(), pre, limits, budget)
            .map_err(|e| e.to_string())?;
        Ok(Self { engine, runtime })
    }

    /// The contract version the component speaks.
    pub fn contract(&self) -> &'static str {
        self.runtime.contract()
    }

    pub fn decide(
        &self,
        request: super::request::JsonRequest,
    ) -> Result<super::engine::Measured, String> {
        block_on_guest(self.runtime.evaluate(&self.engine, &request.into_wit()))
    }
}

fn load_one(
    engine: &PolicyEngine,
    config: &Config,
    entry: &PolicyEntry,
    limits: Limits,
    budget: &Arc<MemoryBudget>,
) -> Result<(PolicyRuntime, String), PolicyError> {
    let name = entry.name.clone();
    let wasm: std::borrow::Cow<'static, [u8]> = match entry.module.strip_prefix("builtin:") {
        Some(builtin_name) => builtin::lookup(builtin_name)
            .ok_or_else(|| PolicyError::UnknownBuiltin {
                name: name.clone(),
                module: builtin_name.to_owned(),
                known: builtin::names().collect::<Vec<_>>().join(", "),
            })?
            .into(),
        None if entry.module.starts_with("oci://") => {
            let module = super::artifacts::parse(&entry.module)
                .unwrap_or_else(|| Err("not an oci:// reference".into()))
                .map_err(|reason| PolicyError::Artifact {
                    name: name.clone(),
                    reason,
                })?;
            let storage = engine.lookups().map(|l| l.storage());
            super::artifacts::load(config, storage, &module, &config.policy_cache_dir())
                .map_err(|reason| PolicyError::Artifact {
                    name: name.clone(),
                    reason,
                })?
                .into()
        }
        None => {
            let path = config.policy.dir.join(&entry.module);
            std::fs::read(&path)
                .map_err(|source| PolicyError::Read {
                    name: name.clone(),
                    path,
                    source,
                })?
                .into()
        }
    };
    let engine_error = |source| PolicyError::Engine {
        name: name.clone(),
        source,
    };
    let digest = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&wasm)))
    };
    let pre = engine.compile(&entry.module, &wasm).map_err(engine_error)?;
    let runtime = PolicyRuntime::new(
        engine,
        name.clone(),
        entry.settings.to_string(),
        pre,
        limits,
        Arc::clone(budget),
    )
    .map_err(engine_error)?;
    Ok((runtime, digest))
}
