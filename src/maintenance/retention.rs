//! Retention: which tags to keep (`[[retention]]`), and deleting the rest
//! through the policy chain.
//!
//! A rule covers repositories and tags by glob and keeps the newest N of
//! the tags it decides in a repository, or those pushed within a duration,
//! combined with `keep_if = "any"` (either) or `"all"` (every condition
//! given). Rules are tried in order; the first whose globs match a tag
//! decides it; a tag no rule matches is kept. "Pushed" is when the tag was
//! last set; ties go to the tag whose name sorts last, so a plan is the
//! same on every run over the same store.
//!
//! Each tag to drop is a `DELETE` of the tag, decided by the chain for the
//! `gc.identity` (tag-immutability still protects release tags unless that
//! identity is in an `exempt_groups` group). A manifest left with no tag by
//! those deletes is then deleted by digest (through the chain too), with the
//! children of an index and the referrers (signatures, SBOMs) that only it
//! kept, so that gc can free their blobs; what any remaining manifest still
//! reaches stays. Manifests that were untagged before the run are never
//! touched. Retention does not decide anything a policy's export could:
//! that belongs to the contract's next version.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use portcullis_patterns::PatternList;

use crate::config::{Action, KeepIf, RetentionRule};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::policy::request::Resource;
use crate::policy::{Access, PolicyChain, Verdict};
use crate::reference::{Digest, Reference, RepositoryName, Tag};
use crate::storage::{ParsedManifest, Storage, StorageError, TagRecord};

/// The client address policies see for retention's deletes: no network
/// client made them.
pub const SYSTEM_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The `[[retention]]` rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    repositories: PatternList,
    tags: PatternList,
    keep_newest: Option<u32>,
    keep_within: Option<Duration>,
    keep_if: KeepIf,
}

/// What the plan says about one tag, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPlan {
    pub tag: Tag,
    pub digest: Digest,
    pub pushed: SystemTime,
    pub keep: bool,
    /// Which rule decided, and on what: `rule 1: 4th newest (keep 3: no),
    /// pushed 2d ago (within 7d: yes), any: keep`.
    pub why: String,
}

impl Rules {
    /// Compiles the rules (the config has checked them already).
    pub fn new(config: &[RetentionRule]) -> Result<Self, String> {
        let rules = config
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = |e: String| format!("[[retention]] #{}: {e}", i + 1);
                Ok(Rule {
                    repositories: PatternList::new(&r.repositories).map_err(at)?,
                    tags: PatternList::new(&r.tags).map_err(at)?,
                    keep_newest: r.keep_newest,
                    keep_within: r.keep_within,
                    keep_if: r.keep_if,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule covers `repository` (others are not even listed).
    pub fn covers(&self, repository: &RepositoryName) -> bool {
        self.rules
            .iter()
            .any(|r| r.repositories.matches(repository.as_str()))
    }

    /// Decides every tag of `repository`, newest first.
    pub fn plan(
        &self,
        repository: &RepositoryName,
        mut tags: Vec<TagRecord>,
        now: SystemTime,
    ) -> Vec<TagPlan> {
        tags.sort_by(|a, b| b.pushed.cmp(&a.pushed).then_with(|| b.tag.cmp(&a.tag)));
        let applicable: Vec<(usize, &Rule)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.repositories.matches(repository.as_str()))
            .collect();
        let mut ranks = vec![0u64; self.rules.len()];
        tags.into_iter()
            .map(|record| {
                let rule = applicable
                    .iter()
                    .find(|(_, r)| r.tags.matches(record.tag.as_str()));
                let (keep, why) = match rule {
                    None => (true, "no rule matches".to_owned()),
                    Some((index, rule)) => {
                        ranks[*index] += 1;
                        let age = now.duration_since(record.pushed).unwrap_or_default();
                        rule.decide(*index + 1, ranks[*index], age)
                    }
                };
                TagPlan {
                    tag: record.tag,
                    digest: record.digest,
                    pushed: record.pushed,
                    keep,
                    why,
                }
            })
            .collect()
    }
}

impl Rule {
    /// Whether the `rank`-th newest tag, pushed `age` ago, is kept, and why.
    fn decide(&self, number: usize, rank: u64, age: Duration) -> (bool, String) {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut conditions = Vec::new();
        let mut why = vec![format!("rule {number}:")];
        if let Some(n) = self.keep_newest {
            let holds = rank <= u64::from(n);
            conditions.push(holds);
            why.push(format!(
                "{} newest (keep {n}: {}),",
                ordinal(rank),
                yes_no(holds)
            ));
        }
        if let Some(within) = self.keep_within {
            let holds = age <= within;
            conditions.push(holds);
            why.push(format!(
                "pushed {} ago (within {}: {}),",
                short(age),
                short(within),
                yes_no(holds)
            ));
        }
        let keep = match self.keep_if {
            KeepIf::Any => conditions.iter().any(|c| *c),
            KeepIf::All => conditions.iter().all(|c| *c),
        };
        let how = match self.keep_if {
            KeepIf::Any => "any",
            KeepIf::All => "all",
        };
        why.push(format!("{how}: {}", if keep { "keep" } else { "drop" }));
        (keep, why.join(" "))
    }
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// A duration in its largest whole unit: `3d`, `5h`, `12m`, `40s`.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What happened to one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOutcome {
    Kept,
    Deleted,
    /// A dry run: the chain allows it, nothing was written.
    WouldDelete,
    /// The chain refused the delete (not retried).
    Refused {
        policy: String,
        reason: String,
    },
    /// The tag moved or went away after it was planned; left as it is.
    Changed,
}

#[derive(Debug, Clone)]
pub struct TagResult {
    pub plan: TagPlan,
    pub outcome: TagOutcome,
}

/// What happened to a manifest retention left without a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOutcome {
    Deleted,
    WouldDelete,
    Refused {
        policy: String,
        reason: String,
    },
    /// Tagged again (a push) after it was planned: kept.
    Changed,
    /// Reached only through a manifest that stayed (refused, or tagged
    /// again): what that manifest needs stays with it.
    KeptWithParent,
}

#[derive(Debug, Clone)]
pub struct ManifestResult {
    pub digest: Digest,
    /// Why it goes: `untagged`, `child of <digest>`, `referrer of <digest>`.
    pub why: String,
    pub outcome: ManifestOutcome,
}

#[derive(Debug, Clone)]
pub struct RepositoryReport {
    pub repository: RepositoryName,
    pub tags: Vec<TagResult>,
    pub manifests: Vec<ManifestResult>,
}

#[derive(Debug, Clone, Default)]
pub struct RetentionReport {
    pub repositories: Vec<RepositoryReport>,
}

impl RetentionReport {
    pub fn tags_deleted(&self) -> usize {
        self.count_tags(|o| matches!(o, TagOutcome::Deleted | TagOutcome::WouldDelete))
    }

    pub fn manifests_deleted(&self) -> usize {
        self.repositories
            .iter()
            .flat_map(|r| &r.manifests)
            .filter(|m| {
                matches!(
                    m.outcome,
                    ManifestOutcome::Deleted | ManifestOutcome::WouldDelete
                )
            })
            .count()
    }

    pub fn refused(&self) -> usize {
        self.count_tags(|o| matches!(o, TagOutcome::Refused { .. }))
            + self
                .repositories
                .iter()
                .flat_map(|r| &r.manifests)
                .filter(|m| matches!(m.outcome, ManifestOutcome::Refused { .. }))
                .count()
    }

    /// The report as `portcullis retention` prints it: per repository,
    /// every tag with what happened to it and the rule that decided, then
    /// the manifests that went with the deleted tags.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for repository in &self.repositories {
            out.push_str(&format!("{}\n", repository.repository));
            for t in &repository.tags {
                let what = match &t.outcome {
                    TagOutcome::Kept => "keep".to_owned(),
                    TagOutcome::Deleted => "deleted".to_owned(),
                    TagOutcome::WouldDelete => "would delete".to_owned(),
                    TagOutcome::Refused { policy, reason } => {
                        format!("refused by policy {policy} ({reason})")
                    }
                    TagOutcome::Changed => "changed meanwhile, left alone".to_owned(),
                };
                out.push_str(&format!("  tag {}: {what} [{}]\n", t.plan.tag, t.plan.why));
            }
            for m in &repository.manifests {
                let what = match &m.outcome {
                    ManifestOutcome::Deleted => "deleted".to_owned(),
                    ManifestOutcome::WouldDelete => "would delete".to_owned(),
                    ManifestOutcome::Refused { policy, reason } => {
                        format!("refused by policy {policy} ({reason})")
                    }
                    ManifestOutcome::Changed => "tagged again meanwhile, kept".to_owned(),
                    ManifestOutcome::KeptWithParent => "kept: what it belongs to stayed".to_owned(),
                };
                out.push_str(&format!("  manifest {} ({}): {what}\n", m.digest, m.why));
            }
        }
        out
    }

    fn count_tags(&self, which: impl Fn(&TagOutcome) -> bool) -> usize {
        self.repositories
            .iter()
            .flat_map(|r| &r.tags)
            .filter(|t| which(&t.outcome))
            .count()
    }
}

/// Applies the rules to every repository they cover: one pass, decided by
/// `chain` for `identity`. With `dry_run`, the chain is asked but nothing
/// is written.
pub struct Retention<'a> {
    pub storage: &'a Storage,
    pub chain: &'a PolicyChain,
    pub identity: &'a Identity,
    pub metrics: &'a Metrics,
    pub dry_run: bool,
}

impl Retention<'_> {
    pub async fn run(&self, rules: &Rules) -> Result<RetentionReport, StorageError> {
        let mut report = RetentionReport::default();
        if rules.is_empty() {
            return Ok(report);
        }
        for repository in self.storage.list_repositories().await? {
            if !rules.covers(&repository) {
                continue;
            }
            let tags = self.storage.tag_history(&repository).await?;
            let plan = rules.plan(&repository, tags, SystemTime::now());
            report
                .repositories
                .push(self.apply(&repository, plan).await?);
        }
        Ok(report)
    }

    /// Asks the chain about `access`; `None` when it allows.
    async fn refusal(&self, access: &Access) -> Option<(String, String)> {
        match self
            .chain
            .evaluate(access, self.identity, SYSTEM_ADDRESS, self.metrics)
            .await
        {
            Verdict::Allow => None,
            Verdict::Deny { policy, reason } | Verdict::Failed { policy, reason } => {
                Some((policy, reason))
            }
            Verdict::Unavailable { policy } => Some((
                policy,
                "no room to run in policy.total_memory now; the next run tries again".into(),
            )),
        }
    }

    async fn apply(
        &self,
        repository: &RepositoryName,
        plan: Vec<TagPlan>,
    ) -> Result<RepositoryReport, StorageError> {
        let mut tags = Vec::with_capacity(plan.len());
        for plan in plan {
            let outcome = if plan.keep {
                TagOutcome::Kept
            } else {
                self.drop_tag(repository, &plan).await?
            };
            tags.push(TagResult { plan, outcome });
        }
        let dropped = tags
            .iter()
            .any(|t| matches!(t.outcome, TagOutcome::Deleted | TagOutcome::WouldDelete));
        let manifests = if dropped {
            self.drop_untagged(repository, &tags).await?
        } else {
            Vec::new()
        };
        Ok(RepositoryReport {
            repository: repository.clone(),
            tags,
            manifests,
        })
    }

    async fn drop_tag(
        &self,
        repository: &RepositoryName,
        plan: &TagPlan,
    ) -> Result<TagOutcome, StorageError> {
        let mut access = Access::new(Action::Delete, Resource::Manifest, repository.clone())
            .with_reference(Reference::Tag(plan.tag.clone()));
        access.current_digest = Some(plan.digest.clone());
        if let Some((policy, reason)) = self.refusal(&access).await {
            tracing::info!(
                %repository, tag = %plan.tag, %policy, %reason,
                "retention: the policy chain refused to delete the tag; it stays"
            );
            return Ok(TagOutcome::Refused { policy, reason });
        }
        if self.dry_run {
            return Ok(TagOutcome::WouldDelete);
        }
        match self
            .storage
            .delete_tag(repository, &plan.tag, Some(&plan.digest))
            .await
        {
            Ok(()) => {
                tracing::info!(%repository, tag = %plan.tag, digest = %plan.digest, why = %plan.why, "retention: tag deleted");
                Ok(TagOutcome::Deleted)
            }
            Err(StorageError::TagChanged(_) | StorageError::ManifestUnknown(_)) => {
                Ok(TagOutcome::Changed)
            }
            Err(e) => Err(e),
        }
    }

    /// The manifests that the deleted tags leave unreachable: those that
    /// were named only by them, and what only they kept (an index's
    /// children, referrers of them); none that a tag or another manifest
    /// still reaches.
    async fn drop_untagged(
        &self,
        repository: &RepositoryName,
        tags: &[TagResult],
    ) -> Result<Vec<ManifestResult>, StorageError> {
        // What the tags name now: after a real run read again (a push may
        // have landed meanwhile); for a dry run, as if the deletes happened.
        let tagged: HashSet<Digest> = if self.dry_run {
            tags.iter()
                .filter(|t| t.outcome != TagOutcome::WouldDelete)
                .map(|t| t.plan.digest.clone())
                .collect()
        } else {
            self.storage
                .tag_history(repository)
                .await?
                .into_iter()
                .map(|r| r.digest)
                .collect()
        };
        let seeds: BTreeSet<Digest> = tags
            .iter()
            .filter(|t| matches!(t.outcome, TagOutcome::Deleted | TagOutcome::WouldDelete))
            .map(|t| t.plan.digest.clone())
            .filter(|d| !tagged.contains(d))
            .collect();
        if seeds.is_empty() {
            return Ok(Vec::new());
        }
        // Everything the seeds reach (children, referrers), parents first.
        let mut order: Vec<(Digest, String)> = Vec::new();
        let mut reached: HashSet<Digest> = HashSet::new();
        let mut queue: VecDeque<(Digest, String)> = seeds
            .iter()
            .map(|d| (d.clone(), "untagged".to_owned()))
            .collect();
        let mut children_of: HashMap<Digest, Vec<Digest>> = HashMap::new();
        // Every manifest each one was reached through: it goes only if all
        // of them went.
        let mut reached_from: HashMap<Digest, Vec<Digest>> = HashMap::new();
        while let Some((digest, why)) = queue.pop_front() {
            if tagged.contains(&digest) || !reached.insert(digest.clone()) {
                continue;
            }
            let children = self.children(repository, &digest).await?;
            for child in &children {
                reached_from
                    .entry(child.clone())
                    .or_default()
                    .push(digest.clone());
                queue.push_back((child.clone(), format!("child of {digest}")));
            }
            children_of.insert(digest.clone(), children);
            for referrer in self.storage.list_referrers(repository, &digest).await? {
                reached_from
                    .entry(referrer.digest.clone())
                    .or_default()
                    .push(digest.clone());
                queue.push_back((referrer.digest, format!("referrer of {digest}")));
            }
            order.push((digest, why));
        }
        // What the rest of the repository still reaches stays.
        let mut kept: HashSet<Digest> = HashSet::new();
        let mut pending: Vec<Digest> = self
            .storage
            .list_manifests(repository)
            .await?
            .into_iter()
            .filter(|d| !reached.contains(d))
            .chain(tagged.iter().cloned())
            .collect();
        while let Some(digest) = pending.pop() {
            if !kept.insert(digest.clone()) {
                continue;
            }
            let children = match children_of.get(&digest) {
                Some(c) => c.clone(),
                None => self.children(repository, &digest).await?,
            };
            pending.extend(children);
            // A kept manifest keeps its signatures, SBOMs and attestations.
            for referrer in self.storage.list_referrers(repository, &digest).await? {
                pending.push(referrer.digest);
            }
        }
        let mut results = Vec::new();
        // Parents come before what they reach (breadth first): whether each
        // went is known when its children's turn comes.
        let mut gone: HashSet<Digest> = HashSet::new();
        for (digest, why) in order {
            if kept.contains(&digest) {
                continue;
            }
            let parent_stayed = reached_from
                .get(&digest)
                .is_some_and(|parents| parents.iter().any(|p| !gone.contains(p)));
            let outcome = if parent_stayed {
                ManifestOutcome::KeptWithParent
            } else {
                self.drop_manifest(repository, &digest).await?
            };
            if matches!(
                outcome,
                ManifestOutcome::Deleted | ManifestOutcome::WouldDelete
            ) {
                gone.insert(digest.clone());
            }
            results.push(ManifestResult {
                digest,
                why,
                outcome,
            });
        }
        Ok(results)
    }

    /// The child manifests of an index (none for an image or a manifest
    /// that is gone or cannot be parsed).
    async fn children(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Vec<Digest>, StorageError> {
        let stored = match self
            .storage
            .get_manifest(repository, &Reference::Digest(digest.clone()))
            .await
        {
            Ok(stored) => stored,
            Err(StorageError::ManifestUnknown(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(ParsedManifest::parse(&stored.bytes, None)
            .map(|m| m.manifests.into_iter().map(|c| c.digest).collect())
            .unwrap_or_default())
    }

    async fn drop_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<ManifestOutcome, StorageError> {
        let mut access = Access::new(Action::Delete, Resource::Manifest, repository.clone())
            .with_reference(Reference::Digest(digest.clone()));
        if !self.dry_run {
            access.digest_tags = self.storage.tags_pointing_to(repository, digest).await?;
            if !access.digest_tags.is_empty() {
                return Ok(ManifestOutcome::Changed);
            }
        }
        if let Some((policy, reason)) = self.refusal(&access).await {
            tracing::info!(
                %repository, %digest, %policy, %reason,
                "retention: the policy chain refused to delete the untagged manifest; it stays"
            );
            return Ok(ManifestOutcome::Refused { policy, reason });
        }
        if self.dry_run {
            return Ok(ManifestOutcome::WouldDelete);
        }
        match self.storage.delete_manifest(repository, digest, &[]).await {
            Ok(()) => {
                tracing::info!(%repository, %digest, "retention: manifest deleted");
                Ok(ManifestOutcome::Deleted)
            }
            Err(StorageError::DigestTagsChanged(_)) => Ok(ManifestOutcome::Changed),
            Err(StorageError::ManifestUnknown(_)) => Ok(ManifestOutcome::Changed),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        tags: &[&str],
        newest: Option<u32>,
        within: Option<u64>,
        keep_if: KeepIf,
    ) -> RetentionRule {
        RetentionRule {
            repositories: vec!["team/*".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            keep_newest: newest,
            keep_within: within.map(|d| Duration::from_secs(d * 86_400)),
            keep_if,
        }
    }

    fn digest(n: u8) -> Digest {
        Digest::of(crate::reference::Algorithm::Sha256, &[n])
    }

    /// Tags `t0`..`t9`, `ti` pushed `i` days before `now`.
    fn ten_days(now: SystemTime) -> Vec<TagRecord> {
        (0..10u8)
            .map(|i| TagRecord {
                tag: Tag::parse(&format!("t{i}")).unwrap(),
                digest: digest(i),
                pushed: now - Duration::from_secs(u64::from(i) * 86_400 + 60),
            })
            .collect()
    }

    fn kept(plan: &[TagPlan]) -> Vec<String> {
        let mut k: Vec<String> = plan
            .iter()
            .filter(|p| p.keep)
            .map(|p| p.tag.to_string())
            .collect();
        k.sort();
        k
    }

    #[test]
    fn any_keeps_the_newest_or_the_recent_and_all_keeps_only_both() {
        let now = SystemTime::now();
        let repo = RepositoryName::parse("team/api").unwrap();
        let any = Rules::new(&[rule(&["*"], Some(2), Some(5), KeepIf::Any)]).unwrap();
        assert_eq!(
            kept(&any.plan(&repo, ten_days(now), now)),
            ["t0", "t1", "t2", "t3", "t4"]
        );
        let all = Rules::new(&[rule(&["*"], Some(2), Some(5), KeepIf::All)]).unwrap();
        assert_eq!(kept(&all.plan(&repo, ten_days(now), now)), ["t0", "t1"]);
        let all = Rules::new(&[rule(&["*"], Some(8), Some(3), KeepIf::All)]).unwrap();
        let plan = all.plan(&repo, ten_days(now), now);
        assert_eq!(kept(&plan), ["t0", "t1", "t2"]);
        let t5 = plan.iter().find(|p| p.tag.as_str() == "t5").unwrap();
        assert_eq!(
            t5.why,
            "rule 1: 6th newest (keep 8: yes), pushed 5d ago (within 3d: no), all: drop"
        );
    }

    #[test]
    fn the_first_matching_rule_decides_and_unmatched_tags_stay() {
        let now = SystemTime::now();
        let rules = Rules::new(&[
            rule(&["t[0-4]"], Some(1), None, KeepIf::Any),
            rule(&["t[3-7]"], Some(1), None, KeepIf::Any),
        ])
        .unwrap();
        let repo = RepositoryName::parse("team/api").unwrap();
        // t0..t4 by rule 1 (t0 newest), t5..t7 by rule 2 (t5 newest); t8, t9 by none.
        assert_eq!(
            kept(&rules.plan(&repo, ten_days(now), now)),
            ["t0", "t5", "t8", "t9"]
        );
        let other = RepositoryName::parse("other/api").unwrap();
        assert!(!rules.covers(&other));
        assert_eq!(kept(&rules.plan(&other, ten_days(now), now)).len(), 10);
    }

    #[test]
    fn ties_in_push_time_are_broken_by_name_the_same_way_every_time() {
        let now = SystemTime::now();
        let same: Vec<TagRecord> = ["a", "c", "b"]
            .iter()
            .enumerate()
            .map(|(i, t)| TagRecord {
                tag: Tag::parse(t).unwrap(),
                digest: digest(i as u8),
                pushed: now,
            })
            .collect();
        let rules = Rules::new(&[rule(&["*"], Some(1), None, KeepIf::Any)]).unwrap();
        let repo = RepositoryName::parse("team/x").unwrap();
        let mut reversed = same.clone();
        reversed.reverse();
        assert_eq!(kept(&rules.plan(&repo, same, now)), ["c"]);
        assert_eq!(kept(&rules.plan(&repo, reversed, now)), ["c"]);
    }
}
