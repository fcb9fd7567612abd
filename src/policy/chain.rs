//! The ordered chain of policies and the decision over it: every policy whose
//! scope covers the request must allow; the first denial or failure wins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_patterns::PatternList;

use super::builtin;
use super::engine::{block_on_guest, EngineError, Limits, Outcome, PolicyEngine, PolicyRuntime};
use super::request::Access;
use super::sandbox::MemoryBudget;
use crate::config::{Action, Config, PolicyEntry};
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

struct Scoped {
    runtime: PolicyRuntime,
    actions: Option<Vec<Action>>,
    repositories: Option<PatternList>,
}

impl Scoped {
    fn applies(&self, access: &Access) -> bool {
        self.actions
            .as_ref()
            .is_none_or(|a| a.contains(&access.action))
            && self
                .repositories
                .as_ref()
                .is_none_or(|r| r.matches(access.repository.as_str()))
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
            let runtime = load_one(&engine, config, entry, limits, &budget)?;
            policies.push(Scoped {
                runtime,
                actions: entry.actions.clone(),
                repositories: entry
                    .repositories
                    .as_ref()
                    .and_then(|r| PatternList::new(r).ok()),
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

    /// Decides `access` by `identity` from `client`, recording each policy's
    /// decision and time in `metrics`.
    pub async fn evaluate(
        &self,
        access: &Access,
        identity: &Identity,
        client: IpAddr,
        metrics: &Metrics,
    ) -> Verdict {
        let mut request = None;
        for policy in self.policies.iter().filter(|p| p.applies(access)) {
            let request = request.get_or_insert_with(|| access.to_wit(identity, client));
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
            let outcome = match &measured.outcome {
                Outcome::Allow => "allow",
                Outcome::Deny(_) => "deny",
                Outcome::Failed(_) => "failed",
            };
            metrics.record_decision(name, outcome, elapsed);
            tracing::debug!(
                policy = name,
                outcome = ?measured.outcome,
                fuel = measured.fuel_used,
                micros = elapsed.as_micros() as u64,
                output = measured.output.as_deref().unwrap_or(""),
                "policy evaluated"
            );
            match measured.outcome {
                Outcome::Allow => continue,
                Outcome::Deny(reason) => {
                    return Verdict::Deny {
                        policy: name.to_owned(),
                        reason: capped(reason),
                    }
                }
                Outcome::Failed(reason) => {
                    self.failures
                        .record(name, &reason, measured.output.as_deref());
                    return Verdict::Failed {
                        policy: name.to_owned(),
                        reason: capped(reason),
                    };
                }
            }
        }
        Verdict::Allow
    }
}

/// Loads one policy file with `settings` and decides one request, for
/// `portcullis policy test`: what authors run before deploying a policy.
pub fn test_policy(
    module: &std::path::Path,
    settings: &str,
    request: super::request::JsonRequest,
    limits: Limits,
) -> Result<super::engine::Measured, String> {
    let engine = PolicyEngine::new(None).map_err(|e| e.to_string())?;
    let wasm =
        std::fs::read(module).map_err(|e| format!("cannot read {}: {e}", module.display()))?;
    let label = module.display().to_string();
    let pre = engine.compile(&label, &wasm).map_err(|e| e.to_string())?;
    let budget = Arc::clone(engine.budget());
    let runtime = PolicyRuntime::new(&engine, label, settings.to_owned(), pre, limits, budget)
        .map_err(|e| e.to_string())?;
    block_on_guest(runtime.evaluate(&engine, &request.into_wit()))
}

fn load_one(
    engine: &PolicyEngine,
    config: &Config,
    entry: &PolicyEntry,
    limits: Limits,
    budget: &Arc<MemoryBudget>,
) -> Result<PolicyRuntime, PolicyError> {
    let name = entry.name.clone();
    let wasm: std::borrow::Cow<'static, [u8]> = match entry.module.strip_prefix("builtin:") {
        Some(builtin_name) => builtin::lookup(builtin_name)
            .ok_or_else(|| PolicyError::UnknownBuiltin {
                name: name.clone(),
                module: builtin_name.to_owned(),
                known: builtin::names().collect::<Vec<_>>().join(", "),
            })?
            .into(),
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
    let pre = engine.compile(&entry.module, &wasm).map_err(engine_error)?;
    PolicyRuntime::new(
        engine,
        name.clone(),
        entry.settings.to_string(),
        pre,
        limits,
        Arc::clone(budget),
    )
    .map_err(engine_error)
}
