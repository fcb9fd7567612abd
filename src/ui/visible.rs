//! Which repositories a viewer may see, fast with 10,000 of them: the
//! store's list is read at most every few seconds, one reader at a time and
//! in the background while pages keep coming (a page waits for that walk
//! only when there is no list younger than a minute), and the chain decides
//! only the names a page shows, each viewer's decisions kept briefly.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::Viewer;
use crate::api::SharedState;
use crate::config::Action;
use crate::policy::request::Resource;
use crate::policy::{Access, PolicyChain};
use crate::reference::RepositoryName;
use crate::storage::{Storage, StorageError};

/// How long the store's list of repositories is used before it is read
/// again (in the background: until then, pages use the one they have).
fn list_ttl(storage: &Storage) -> Duration {
    match storage {
        Storage::Filesystem(_) => Duration::from_secs(5),
        Storage::S3(_) => Duration::from_secs(30),
    }
}

/// How old a list a page may still show (reading it again behind it); an
/// older one, after a quiet spell, is read again before the page.
fn list_max_age(storage: &Storage) -> Duration {
    list_ttl(storage) * 12
}

/// How long a viewer's decisions are reused (a policy reload or a change
/// of groups shows within this).
const DECISIONS_TTL: Duration = Duration::from_secs(30);
const MAX_VIEWERS: usize = 256;
/// Decisions kept for one viewer, and for all of them together (names
/// come from addresses anyone may type: each is bounded).
const MAX_DECISIONS: usize = 50_000;
const MAX_DECISIONS_TOTAL: usize = 200_000;
/// The most chain evaluations one page of the repository list makes.
const PAGE_EVALUATIONS: usize = 2_000;

/// Whose decisions these are: who, with which groups, and from where (a
/// policy may decide by the client's address: what an anonymous caller on
/// the office network may pull is not what one elsewhere may).
type ViewerKey = (Option<String>, Vec<String>, IpAddr);

fn viewer_key(viewer: &Viewer) -> ViewerKey {
    (
        viewer.identity.subject.clone(),
        viewer.identity.groups.clone(),
        viewer.ip,
    )
}

struct Decided<C> {
    since: Instant,
    /// The chain in force when decided (a reload starts afresh). Weak: an
    /// old chain is not kept alive, and its address is not reused while
    /// this points at it.
    chain: Weak<C>,
    may: HashMap<String, bool>,
}

/// Recent decisions per viewer, bounded in viewers, names per viewer and
/// names in all.
pub(crate) struct DecisionCache<C> {
    inner: Mutex<(HashMap<ViewerKey, Decided<C>>, usize)>,
}

impl<C> DecisionCache<C> {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new((HashMap::new(), 0)),
        }
    }

    fn fresh(d: &Decided<C>, chain: &Arc<C>) -> bool {
        std::ptr::eq(d.chain.as_ptr(), Arc::as_ptr(chain)) && d.since.elapsed() < DECISIONS_TTL
    }

    pub fn get(&self, key: &ViewerKey, chain: &Arc<C>, name: &str) -> Option<bool> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .0
            .get(key)
            .filter(|d| Self::fresh(d, chain))
            .and_then(|d| d.may.get(name).copied())
    }

    pub fn put(&self, key: ViewerKey, chain: &Arc<C>, name: &str, may: bool) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (viewers, total) = &mut *guard;
        if (viewers.len() >= MAX_VIEWERS && !viewers.contains_key(&key))
            || *total >= MAX_DECISIONS_TOTAL
        {
            viewers.retain(|_, d| Self::fresh(d, chain));
            if viewers.len() >= MAX_VIEWERS {
                viewers.clear();
            }
            *total = viewers.values().map(|d| d.may.len()).sum();
            if *total >= MAX_DECISIONS_TOTAL {
                viewers.clear();
                *total = 0;
            }
        }
        let decided = viewers.entry(key).or_insert_with(|| Decided {
            since: Instant::now(),
            chain: Arc::downgrade(chain),
            may: HashMap::new(),
        });
        if !Self::fresh(decided, chain) || decided.may.len() >= MAX_DECISIONS {
            *total = total.saturating_sub(decided.may.len());
            decided.since = Instant::now();
            decided.chain = Arc::downgrade(chain);
            decided.may.clear();
        }
        if decided.may.insert(name.to_owned(), may).is_none() {
            *total += 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        debug_assert_eq!(
            inner.1,
            inner.0.values().map(|d| d.may.len()).sum::<usize>()
        );
        inner.1
    }
}

pub struct Visible {
    names: Arc<Names>,
    decided: DecisionCache<PolicyChain>,
}

/// The store's repositories, sorted, and when they were read. A walk of a
/// filesystem store with 10,000 repositories takes about 175 ms (some
/// 130,000 system calls), longer than a page may: a page that finds the
/// list older than [`list_ttl`] (but not [`list_max_age`]) uses it and has
/// it read again behind it.
struct Names {
    storage: Storage,
    list: Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    /// Held by the one walk of the store at a time.
    walking: Arc<tokio::sync::Mutex<()>>,
}

impl Names {
    fn cached(&self) -> Option<(Instant, Arc<Vec<String>>)> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the list from the store (the caller holds `walking`).
    async fn walk(&self) -> Result<Arc<Vec<String>>, StorageError> {
        let mut list: Vec<String> = self
            .storage
            .list_repositories()
            .await?
            .into_iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        list.sort();
        let list = Arc::new(list);
        *self.list.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), Arc::clone(&list)));
        Ok(list)
    }

    /// The list: the one in hand (read again behind it when old), or, when
    /// there is none young enough, the one a walk reads now.
    async fn get(self: &Arc<Self>) -> Result<Arc<Vec<String>>, StorageError> {
        let usable = |at: Instant| at.elapsed() < list_max_age(&self.storage);
        if let Some((at, list)) = self.cached().filter(|(at, _)| usable(*at)) {
            if at.elapsed() >= list_ttl(&self.storage) {
                self.refresh();
            }
            return Ok(list);
        }
        let _walking = self.walking.lock().await;
        // A walk that ended while this waited did the work.
        if let Some((_, list)) = self.cached().filter(|(at, _)| usable(*at)) {
            return Ok(list);
        }
        self.walk().await
    }

    /// Reads the list again in the background, unless a walk is under way.
    fn refresh(self: &Arc<Self>) {
        let Ok(walking) = Arc::clone(&self.walking).try_lock_owned() else {
            return;
        };
        let names = Arc::clone(self);
        tokio::spawn(async move {
            let _walking = walking;
            if let Err(e) = names.walk().await {
                tracing::warn!(error = %e, "web UI: cannot list the repositories; the last list read stays in use");
            }
        });
    }
}

/// A page of repository names.
pub struct NamePage {
    pub names: Vec<String>,
    /// The name to continue after, when more follow.
    pub next: Option<String>,
    /// The page stopped early (its evaluations spent): `next` continues.
    pub more: bool,
}

impl Visible {
    pub fn new(storage: Storage) -> Self {
        Self {
            names: Arc::new(Names {
                storage,
                list: Mutex::new(None),
                walking: Arc::new(tokio::sync::Mutex::new(())),
            }),
            decided: DecisionCache::new(),
        }
    }

    /// Every repository in the store, sorted (cached).
    pub async fn all(&self) -> Result<Arc<Vec<String>>, StorageError> {
        self.names.get().await
    }

    /// Whether `viewer` may see `name`: whether the chain lets them pull
    /// from it (a pull with no reference yet, so policies that judge a
    /// manifest let it by), from the viewer's recent decisions or the chain.
    pub(crate) async fn may_list(&self, state: &SharedState, viewer: &Viewer, name: &str) -> bool {
        let mut budget = 1;
        self.decide(state, viewer, name, &mut budget)
            .await
            .unwrap_or(false)
    }

    /// Whether `viewer` may see `name`, from the cache, or from the chain
    /// while `budget` lasts (each evaluation spends one); `None` when it
    /// would take an evaluation and the budget is spent.
    async fn decide(
        &self,
        state: &SharedState,
        viewer: &Viewer,
        name: &str,
        budget: &mut usize,
    ) -> Option<bool> {
        let key = viewer_key(viewer);
        let chain = state.policies.current();
        if let Some(known) = self.decided.get(&key, &chain, name) {
            return Some(known);
        }
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        let Ok(repository) = RepositoryName::parse(name) else {
            return Some(false);
        };
        let access = Access::new(Action::Pull, Resource::Manifest, repository);
        // Not recorded in the decision log: this decides what a page shows.
        let may = chain
            .permits(&access, &viewer.identity, viewer.ip, &state.metrics)
            .await;
        self.decided.put(key, &chain, name, may);
        Some(may)
    }

    /// Up to `n` names after `after` that contain `query` (case-insensitive)
    /// and that `viewer` may see: the chain decides names in order until the
    /// page is full, never the whole store: at most [`PAGE_EVALUATIONS`]
    /// evaluations a page (a viewer who may see few of many repositories,
    /// or an anonymous one from ever new addresses, costs no more). When
    /// that stops the page early, `more` says so, and the same address
    /// continues (the names decided so far are cached).
    pub(crate) async fn page(
        &self,
        state: &SharedState,
        viewer: &Viewer,
        query: &str,
        after: Option<&str>,
        n: usize,
    ) -> Result<NamePage, StorageError> {
        let all = self.all().await?;
        let start = after.map_or(0, |a| all.partition_point(|name| name.as_str() <= a));
        let query = query.trim().to_lowercase();
        let mut names = Vec::with_capacity(n);
        let mut next = None;
        let mut more = false;
        let mut budget = PAGE_EVALUATIONS;
        for name in all[start..].iter().filter(|name| name.contains(&query)) {
            match self.decide(state, viewer, name, &mut budget).await {
                Some(true) => {}
                Some(false) => continue,
                None => {
                    more = true;
                    break;
                }
            }
            if names.len() == n {
                next = names.last().cloned();
                break;
            }
            names.push(name.clone());
        }
        if more {
            // Never a hidden name as the cursor: the last one shown, or
            // where this page began.
            next = names
                .last()
                .cloned()
                .or_else(|| after.map(str::to_owned))
                .or_else(|| Some(String::new()));
        }
        Ok(NamePage { names, next, more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: Option<&str>, ip: &str) -> ViewerKey {
        (user.map(str::to_owned), Vec::new(), ip.parse().unwrap())
    }

    #[test]
    fn decisions_are_per_viewer_address_and_chain() {
        let cache = DecisionCache::<()>::new();
        let chain = Arc::new(());
        let office = key(None, "10.0.0.5");
        let outside = key(None, "203.0.113.9");
        cache.put(office.clone(), &chain, "internal/app", true);
        assert_eq!(cache.get(&office, &chain, "internal/app"), Some(true));
        // An anonymous caller elsewhere is decided for themselves.
        assert_eq!(cache.get(&outside, &chain, "internal/app"), None);
        assert_eq!(
            cache.get(&key(Some("bob"), "10.0.0.5"), &chain, "internal/app"),
            None
        );
        // A reloaded chain starts afresh.
        let reloaded = Arc::new(());
        assert_eq!(cache.get(&office, &reloaded, "internal/app"), None);
        cache.put(office.clone(), &reloaded, "other", false);
        assert_eq!(cache.get(&office, &reloaded, "internal/app"), None);
        assert_eq!(cache.get(&office, &reloaded, "other"), Some(false));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn decisions_are_bounded_in_all() {
        let cache = DecisionCache::<()>::new();
        let chain = Arc::new(());
        for i in 0..(MAX_VIEWERS + 10) {
            cache.put(
                key(None, &format!("10.1.{}.{}", i / 200, i % 200)),
                &chain,
                "a",
                true,
            );
            assert!(cache.inner.lock().unwrap().0.len() <= MAX_VIEWERS);
        }
        // Names anyone may type, from many addresses: never more than the
        // bound in all, however many are asked for.
        for i in 0..(MAX_DECISIONS_TOTAL + 5_000) {
            let ip = format!("10.0.0.{}", i % 10);
            cache.put(key(None, &ip), &chain, &format!("name-{i}"), false);
            assert!(cache.len() <= MAX_DECISIONS_TOTAL);
        }
        for i in 0..(MAX_DECISIONS + 10) {
            cache.put(
                key(Some("eve"), "192.0.2.1"),
                &chain,
                &format!("n{i}"),
                false,
            );
        }
        assert!(cache.len() <= MAX_DECISIONS_TOTAL);
        let inner = cache.inner.lock().unwrap();
        assert!(inner.0.len() <= MAX_VIEWERS);
        assert!(inner.0.values().all(|d| d.may.len() <= MAX_DECISIONS));
    }

    /// A registry on a temporary directory with `hidden` repositories the
    /// chain keeps from everyone and two public ones, and a decision ring.
    async fn registry(
        hidden: usize,
    ) -> (
        tempfile::TempDir,
        SharedState,
        Arc<crate::policy::decisions::DecisionLog>,
    ) {
        use crate::config::{Config, PolicyEntry, PolicyMode};
        use crate::policy::decisions::DecisionLog;
        use crate::policy::engine::PolicyEngine;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.root = dir.path().join("store");
        config.policy.chain = vec![PolicyEntry {
            name: "public-only".into(),
            module: "builtin:repo-allowlist".into(),
            settings: serde_json::json!({ "pull": ["public/**"] }),
            actions: None,
            repositories: None,
            mode: PolicyMode::Enforce,
        }];
        config.policy.decision_log.ring = 1000;
        let storage = Storage::open(&config.storage).await.unwrap();
        let mut names: Vec<String> = (0..hidden).map(|i| format!("hidden/r{i:05}")).collect();
        names.extend(["public/app".to_owned(), "public/web".to_owned()]);
        for name in &names {
            let path = config
                .storage
                .root
                .join(crate::storage::paths::LAYOUT_ROOT)
                .join(crate::storage::paths::REPOSITORIES)
                .join(name)
                .join("_manifests");
            std::fs::create_dir_all(path).unwrap();
        }
        assert_eq!(
            storage.list_repositories().await.unwrap().len(),
            names.len()
        );
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let log = Arc::new(DecisionLog::open(&config.policy.decision_log).unwrap());
        let engine = PolicyEngine::new(None).unwrap();
        engine.attach_decision_log(Arc::clone(&log));
        let engine = Arc::new(engine);
        let chain = {
            let (engine, config) = (Arc::clone(&engine), config.clone());
            tokio::task::spawn_blocking(move || PolicyChain::load(engine, &config))
                .await
                .unwrap()
                .unwrap()
        };
        let state = Arc::new(crate::api::AppState {
            uploads: crate::api::limits::UploadLimiter::new(&config.limits),
            auth: Arc::new(crate::identity::Identities::new(&config, storage.clone()).unwrap()),
            policies: Arc::new(crate::policy::reload::ChainHolder::new(
                chain,
                engine,
                None,
                Arc::clone(&metrics),
            )),
            storage,
            metrics,
            proxy: None,
            facts: Default::default(),
            trusted_proxies: crate::network::TrustedProxies::new(
                &config.trusted_proxies,
                config.forwarded_header,
            ),
            config,
        });
        (dir, state, log)
    }

    fn anonymous(ip: &str) -> Viewer {
        Viewer {
            identity: crate::identity::Identity::anonymous(),
            session: None,
            ip: ip.parse().unwrap(),
            stale_cookie: false,
        }
    }

    #[tokio::test]
    async fn an_old_list_is_used_while_it_is_read_again_behind_it() {
        let (_dir, state, _log) = registry(1).await;
        let visible = Visible::new(state.storage.clone());
        let add_repository = |name: &str| {
            let root = &state.config.storage.root;
            let layout = root.join(crate::storage::paths::LAYOUT_ROOT);
            let repositories = layout.join(crate::storage::paths::REPOSITORIES);
            std::fs::create_dir_all(repositories.join(name).join("_manifests")).unwrap();
        };
        // Makes the list in hand older than `age`.
        let age_list = |age: Duration| {
            let mut list = visible.names.list.lock().unwrap();
            let (at, _) = list.as_mut().unwrap();
            *at = Instant::now() - age - Duration::from_secs(1);
        };
        assert_eq!(visible.all().await.unwrap().len(), 3);
        add_repository("public/new");
        // Fresh: the list in hand, no walk.
        assert_eq!(visible.all().await.unwrap().len(), 3);
        // Old: still the list in hand for this page, read again behind it.
        age_list(list_ttl(&state.storage));
        assert_eq!(visible.all().await.unwrap().len(), 3);
        let deadline = Instant::now() + Duration::from_secs(10);
        while visible.all().await.unwrap().len() != 4 {
            assert!(Instant::now() < deadline, "the list was never read again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(visible
            .all()
            .await
            .unwrap()
            .contains(&"public/new".to_owned()));
        // Older than a page may show (nobody looked for a while): read
        // again before the page, which shows what is there now.
        add_repository("public/newer");
        age_list(list_max_age(&state.storage));
        assert_eq!(visible.all().await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_page_costs_at_most_its_evaluations_and_records_none() {
        let hidden = PAGE_EVALUATIONS + 500;
        let (_dir, state, log) = registry(hidden).await;
        let visible = Visible::new(state.storage.clone());
        let viewer = anonymous("203.0.113.9");
        // Every hidden name comes first: the page stops at its budget, shows
        // nothing, and continues from where it began (no hidden name in the
        // cursor).
        let first = visible.page(&state, &viewer, "", None, 50).await.unwrap();
        assert!(first.names.is_empty());
        assert!(first.more);
        assert_eq!(first.next.as_deref(), Some(""));
        assert_eq!(visible.decided.len(), PAGE_EVALUATIONS);
        // The same address again: the cached names cost nothing, the rest fit.
        let second = visible.page(&state, &viewer, "", None, 50).await.unwrap();
        assert_eq!(second.names, ["public/app", "public/web"]);
        assert!(!second.more);
        assert_eq!(second.next, None);
        assert_eq!(visible.decided.len(), hidden + 2);
        // From after a shown name, the cursor is that name.
        let one = visible.page(&state, &viewer, "", None, 1).await.unwrap();
        assert_eq!(one.names, ["public/app"]);
        assert_eq!(one.next.as_deref(), Some("public/app"));
        // Another address is decided afresh (and within the same budget).
        let elsewhere = anonymous("198.51.100.4");
        let other = visible
            .page(&state, &elsewhere, "", None, 50)
            .await
            .unwrap();
        assert!(other.names.is_empty() && other.more);
        // Deciding what a page shows is not a decision to log: nothing in
        // the ring names a hidden repository.
        assert!(log.recent(1000, |_| true).is_empty());
        assert!(!visible.may_list(&state, &viewer, "hidden/r00000").await);
        assert!(visible.may_list(&state, &viewer, "public/app").await);
        assert!(log.recent(1000, |_| true).is_empty());
    }
}
