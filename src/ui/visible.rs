//! Which repositories a viewer may see, fast with 10,000 of them: the
//! store's list is read at most every few seconds (one reader at a time),
//! and the chain decides only the names a page shows, each viewer's
//! decisions kept briefly.

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

/// How long the store's list of repositories is reused.
fn list_ttl(storage: &Storage) -> Duration {
    match storage {
        Storage::Filesystem(_) => Duration::from_secs(5),
        Storage::S3(_) => Duration::from_secs(30),
    }
}

/// How long a viewer's decisions are reused (a policy reload or a change
/// of groups shows within this).
const DECISIONS_TTL: Duration = Duration::from_secs(30);
const MAX_VIEWERS: usize = 256;
/// Decisions kept for one viewer, and for all of them together (names
/// come from addresses anyone may type: each is bounded).
const MAX_DECISIONS: usize = 50_000;
const MAX_DECISIONS_TOTAL: usize = 200_000;

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
            *total -= decided.may.len();
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
        debug_assert_eq!(inner.1, inner.0.values().map(|d| d.may.len()).sum::<usize>());
        inner.1
    }
}

pub struct Visible {
    storage: Storage,
    names: tokio::sync::Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    decided: DecisionCache<PolicyChain>,
}

/// A page of repository names.
pub struct NamePage {
    pub names: Vec<String>,
    /// The name to continue after, when more follow.
    pub next: Option<String>,
}

impl Visible {
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            names: tokio::sync::Mutex::new(None),
            decided: DecisionCache::new(),
        }
    }

    /// Every repository in the store, sorted (cached).
    pub async fn all(&self) -> Result<Arc<Vec<String>>, StorageError> {
        let mut names = self.names.lock().await;
        if let Some((at, list)) = names.as_ref() {
            if at.elapsed() < list_ttl(&self.storage) {
                return Ok(Arc::clone(list));
            }
        }
        let mut list: Vec<String> = self
            .storage
            .list_repositories()
            .await?
            .into_iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        list.sort();
        let list = Arc::new(list);
        *names = Some((Instant::now(), Arc::clone(&list)));
        Ok(list)
    }

    /// Whether `viewer` may see `name`: whether the chain lets them pull
    /// from it (a pull with no reference yet, so policies that judge a
    /// manifest let it by), from the viewer's recent decisions or the chain.
    pub(crate) async fn may_list(&self, state: &SharedState, viewer: &Viewer, name: &str) -> bool {
        let key = viewer_key(viewer);
        let chain = state.policies.current();
        if let Some(known) = self.decided.get(&key, &chain, name) {
            return known;
        }
        let Ok(repository) = RepositoryName::parse(name) else {
            return false;
        };
        let access = Access::new(Action::Pull, Resource::Manifest, repository);
        // Not recorded in the decision log: this decides what a page shows.
        let may = chain
            .permits(&access, &viewer.identity, viewer.ip, &state.metrics)
            .await;
        self.decided.put(key, &chain, name, may);
        may
    }

    /// Up to `n` names after `after` that contain `query` (case-insensitive)
    /// and that `viewer` may see: the chain decides names in order until the
    /// page is full, never the whole store.
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
        for name in all[start..].iter().filter(|name| name.contains(&query)) {
            if !self.may_list(state, viewer, name).await {
                continue;
            }
            if names.len() == n {
                next = names.last().cloned();
                break;
            }
            names.push(name.clone());
        }
        Ok(NamePage { names, next })
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
}
