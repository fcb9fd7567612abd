//! What policy authors and operators run before a policy is enforced:
//! `policy test` (one request, or a table of cases with expected decisions),
//! `policy replay` (a decision log decided again under another chain) and
//! `policy audit` (every stored tag run through a chain as a push).
//! Each returns an exit code: 0 as expected, 1 a denial or a mismatch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::chain::{PolicyChain, PolicyTester, Verdict};
use super::decisions::Decision;
use super::engine::{Measured, Outcome, PolicyEngine};
use super::facts::FactsCache;
use super::lookups::Lookups;
use super::request::{JsonRequest, Resource};
use super::Access;
use crate::config::{Action, Config};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::reference::{Reference, Tag};
use crate::storage::{OpenMode, Storage};

/// The default compile cache of `policy test`: `$XDG_CACHE_HOME/portcullis`
/// or `~/.cache/portcullis`.
pub fn user_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|base| base.join("portcullis/policy-cache"))
}

/// `policy test`'s arguments.
pub struct TestRun {
    pub policy: PathBuf,
    pub settings: String,
    pub request: Option<String>,
    pub cases: Option<PathBuf>,
    pub fuel: u64,
    pub cache_dir: Option<PathBuf>,
}

/// One case of a table: a request and the decision expected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    request: JsonRequest,
    expect: Expected,
    /// A substring the deny or failure reason must contain.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expected {
    Allow,
    Deny,
    Failed,
}

fn read_arg(value: &str, what: &str) -> Result<String, String> {
    match value.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).map_err(|e| format!("{what} {file}: {e}")),
        None => Ok(value.to_owned()),
    }
}

/// `portcullis policy test`.
pub fn run_tests(run: &TestRun) -> Result<u8, String> {
    let settings = read_arg(&run.settings, "--settings")?;
    // The server's defaults, so that what passes here passes there.
    let defaults = Config::default();
    let mut limits = PolicyChain::limits(&defaults);
    limits.fuel = run.fuel;
    limits.recycle_after = u32::MAX;
    let started = std::time::Instant::now();
    let tester = PolicyTester::load(&run.policy, &settings, limits, run.cache_dir.clone())?;
    eprintln!(
        "loaded {} (contract {}) in {} ms",
        run.policy.display(),
        tester.contract(),
        started.elapsed().as_millis()
    );
    if let Some(request) = &run.request {
        let request: JsonRequest = serde_json::from_str(&read_arg(request, "--request")?)
            .map_err(|e| format!("--request: {e}"))?;
        let measured = tester.decide(request)?;
        print_measured(&measured);
        return Ok(u8::from(measured.outcome != Outcome::Allow));
    }
    let Some(path) = &run.cases else {
        return Err("give --request or --cases".into());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--cases {}: {e}", path.display()))?;
    let cases: Vec<Case> =
        serde_json::from_str(&text).map_err(|e| format!("--cases {}: {e}", path.display()))?;
    let mut failed = 0;
    for case in cases {
        let measured = tester.decide(case.request)?;
        let (got, reason) = match &measured.outcome {
            Outcome::Allow => (Expected::Allow, ""),
            Outcome::Deny(r) => (Expected::Deny, r.as_str()),
            Outcome::Failed(r) => (Expected::Failed, r.as_str()),
        };
        let reason_ok = case
            .reason
            .as_deref()
            .is_none_or(|want| reason.contains(want));
        if got == case.expect && reason_ok {
            println!("ok    {}", case.name);
        } else {
            failed += 1;
            println!(
                "FAIL  {}: expected {:?}{}, got {:?}{}",
                case.name,
                case.expect,
                case.reason
                    .as_deref()
                    .map(|r| format!(" ({r:?})"))
                    .unwrap_or_default(),
                got,
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                }
            );
            if let Some(output) = &measured.output {
                println!("      policy output: {}", output.trim_end());
            }
        }
    }
    println!("{failed} failed");
    Ok(u8::from(failed > 0))
}

fn print_measured(measured: &Measured) {
    match &measured.outcome {
        Outcome::Allow => println!("allow"),
        Outcome::Deny(reason) => println!("deny: {reason}"),
        Outcome::Failed(reason) => println!("failed: {reason}"),
    }
    println!("fuel used: {}", measured.fuel_used);
    let usage = measured.usage;
    println!(
        "memory: {} bytes in {} memories and {} tables of {} elements",
        usage.bytes, usage.memories, usage.tables, usage.table_elements
    );
    if let Some(output) = &measured.output {
        eprintln!("policy output: {output}");
    }
}

/// Where a command other than `serve` caches compiled policies: the
/// configured `policy.cache_dir`, or the default below `storage.root` only
/// when that root exists (no command but `serve` creates a missing root:
/// without it, policies are compiled and not cached).
pub fn cache_dir_outside_serve(config: &Config) -> Option<PathBuf> {
    if config.policy.cache_dir.is_none() && !config.storage.root.is_dir() {
        return None;
    }
    Some(config.policy_cache_dir())
}

/// Loads `config`'s chain with lookups answered from its storage, opened in
/// `mode` (a missing root is an error), for the commands that decide
/// offline (`policy audit`, `replay`: read-only; `retention`).
pub async fn chain_with_store(
    config: &Config,
    mode: OpenMode,
) -> Result<(PolicyChain, Storage), String> {
    let storage = Storage::open_with(&config.storage, mode).await?;
    let engine = PolicyEngine::new(cache_dir_outside_serve(config)).map_err(|e| e.to_string())?;
    engine.attach_lookups(Lookups::new(storage.clone(), Arc::new(Metrics::new())));
    let engine = Arc::new(engine);
    let config = config.clone();
    let chain = tokio::task::spawn_blocking(move || PolicyChain::load(engine, &config))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((chain, storage))
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Allow => "allow".into(),
        Verdict::Deny { policy, reason } => format!("deny by {policy}: {reason}"),
        Verdict::Failed { policy, reason } => format!("failed in {policy}: {reason}"),
        Verdict::Unavailable { policy } => format!("unavailable ({policy})"),
    }
}

/// `portcullis policy replay`.
pub async fn replay(log: &Path, config: &Config) -> Result<u8, String> {
    let (chain, _storage) = chain_with_store(config, OpenMode::ReadOnly).await?;
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let metrics = Metrics::new();
    let (mut total, mut changed, mut unreadable) = (0, 0, 0);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let decision: Decision = match serde_json::from_str(line) {
            Ok(d) => d,
            Err(e) => {
                unreadable += 1;
                eprintln!("line {}: not a decision: {e}", n + 1);
                continue;
            }
        };
        total += 1;
        let action = decision.request.action;
        let inexact = !decision.omitted.is_empty();
        let request = decision.request.clone().into_wit();
        let verdict = chain.decide(&request, action, &metrics).await;
        let now = super::decisions::Judgement::of(&verdict);
        if now.outcome != decision.judgement.outcome {
            changed += 1;
            println!(
                "line {}: {} {:?} {} by {}: was {}, now {}{}",
                n + 1,
                decision.time,
                action,
                decision.request.repository,
                decision
                    .request
                    .identity
                    .subject
                    .as_deref()
                    .unwrap_or("anonymous"),
                decision.judgement.outcome,
                verdict_text(&verdict),
                if inexact {
                    " (facts were omitted from the log line: inexact)"
                } else {
                    ""
                }
            );
        }
    }
    println!("{total} decisions replayed, {changed} would change, {unreadable} lines unreadable");
    Ok(u8::from(changed > 0))
}

/// `portcullis policy audit`.
pub async fn audit(config: &Config, user: Option<&str>) -> Result<u8, String> {
    let (chain, storage) = chain_with_store(config, OpenMode::ReadOnly).await?;
    let identity = match user {
        Some(name) => Identity {
            subject: Some(name.to_owned()),
            groups: config
                .groups
                .iter()
                .filter(|(_, members)| members.iter().any(|m| m == name))
                .map(|(group, _)| group.clone())
                .collect(),
        },
        None => Identity::anonymous(),
    };
    let facts = FactsCache::default();
    let metrics = Metrics::new();
    let client = std::net::IpAddr::from([127, 0, 0, 1]);
    let (mut checked, mut refused) = (0, 0);
    let repositories = storage
        .list_repositories()
        .await
        .map_err(|e| e.to_string())?;
    for repository in repositories {
        let tags = storage
            .list_tags(&repository)
            .await
            .map_err(|e| e.to_string())?;
        for tag in tags {
            let Ok(tag) = Tag::parse(&tag) else { continue };
            let reference = Reference::Tag(tag.clone());
            let Ok(stored) = storage.get_manifest(&repository, &reference).await else {
                continue;
            };
            let mut access = Access::new(Action::Push, Resource::Manifest, repository.clone())
                .with_reference(reference);
            access.manifest = Some(facts.of_stored(&storage, &repository, &stored).await);
            access.current_digest = Some(stored.digest.clone());
            checked += 1;
            let verdict = chain.evaluate(&access, &identity, client, &metrics).await;
            if verdict != Verdict::Allow {
                refused += 1;
                println!(
                    "{repository}:{tag} ({}): {}",
                    stored.digest,
                    verdict_text(&verdict)
                );
            }
        }
    }
    println!("{checked} tags checked, {refused} would be refused");
    Ok(u8::from(refused > 0))
}
