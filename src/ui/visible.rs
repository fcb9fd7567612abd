//! Which repositories a viewer may see, fast with 10,000 of them: the
//! store's list is read at most every few seconds (one reader at a time),
//! and the chain decides only the names a page shows, each viewer's
//! decisions kept briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Viewer;
use crate::api::access::would_allow;
use crate::api::SharedState;
use crate::config::Action;
use crate::policy::request::Resource;
use crate::policy::Access;
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
const MAX_DECISIONS: usize = 50_000;

type ViewerKey = (Option<String>, Vec<String>);

struct Decided {
    since: Instant,
    /// The chain in force when decided (a reload starts afresh).
    chain: usize,
    may: HashMap<String, bool>,
}

pub struct Visible {
    storage: Storage,
    names: tokio::sync::Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    viewers: Mutex<HashMap<ViewerKey, Decided>>,
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
            viewers: Mutex::new(HashMap::new()),
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
        let key = (
            viewer.identity.subject.clone(),
            viewer.identity.groups.clone(),
        );
        let chain = Arc::as_ptr(&state.policies.current()) as usize;
        if let Some(known) = self
            .viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|d| d.chain == chain && d.since.elapsed() < DECISIONS_TTL)
            .and_then(|d| d.may.get(name).copied())
        {
            return known;
        }
        let Ok(repository) = RepositoryName::parse(name) else {
            return false;
        };
        let access = Access::new(Action::Pull, Resource::Manifest, repository);
        let may = would_allow(state, &viewer.caller(), &access).await;
        let mut viewers = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        if viewers.len() >= MAX_VIEWERS && !viewers.contains_key(&key) {
            viewers.retain(|_, d| d.since.elapsed() < DECISIONS_TTL);
            if viewers.len() >= MAX_VIEWERS {
                viewers.clear();
            }
        }
        let decided = viewers.entry(key).or_insert_with(|| Decided {
            since: Instant::now(),
            chain,
            may: HashMap::new(),
        });
        if decided.chain != chain
            || decided.since.elapsed() >= DECISIONS_TTL
            || decided.may.len() >= MAX_DECISIONS
        {
            decided.since = Instant::now();
            decided.chain = chain;
            decided.may.clear();
        }
        decided.may.insert(name.to_owned(), may);
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
