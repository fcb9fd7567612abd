//! Robot and personal tokens: long-lived secrets for CI jobs and people,
//! usable as the password of `docker login` and at `/token`.
//!
//! A token is `pcr_<id>_<secret>`: a 16-hex-digit id and 32 random bytes.
//! Only a SHA-256 of the secret is stored (the secret has 256 bits of
//! entropy, so a slow hash adds nothing), in the content store
//! (`_portcullis/tokens/<id>`), so every replica on one bucket sees the
//! same tokens. Each replica keeps the list in memory and re-reads it every
//! `auth.robot_token_refresh`: that is how long a revocation made elsewhere
//! (`portcullis token revoke`, another replica) takes to hold. A token not
//! in the list yet is read from the store when it is first used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use subtle::ConstantTimeEq;

use super::jwt;
use crate::storage::records::RecordKind;
use crate::storage::{Storage, StorageError};

const PREFIX: &str = "pcr_";
/// Uses are written back at most this often per token and replica.
const USE_RECORD_EVERY: Duration = Duration::from_secs(60);

/// A token as stored (the secret's hash, never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RobotToken {
    pub id: String,
    pub user: String,
    /// The groups the token acts with; `None`: the user's, from `[groups]`.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub description: String,
    pub created: i64,
    #[serde(default)]
    pub expires: Option<i64>,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
}

impl RobotToken {
    pub fn expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// A `pcr_` credential split into id and secret, if it has that shape.
pub fn parse(credential: &str) -> Option<(&str, &str)> {
    let rest = credential.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(16)?;
    let secret = secret.strip_prefix('_')?;
    let ok = id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && (20..=128).contains(&secret.len());
    ok.then_some((id, secret))
}

fn hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Makes a token for `user`; returns the record and the one-time secret.
pub async fn create(
    storage: &Storage,
    user: &str,
    groups: Option<Vec<String>>,
    expires: Option<i64>,
    description: &str,
) -> Result<(RobotToken, String), StorageError> {
    let failed = |e: jwt::KeyError| StorageError::Io(std::io::Error::other(e));
    let id = hex::encode(jwt::random_bytes(8).map_err(failed)?);
    let secret = jwt::random_token(32).map_err(failed)?;
    let record = RobotToken {
        id: id.clone(),
        user: user.to_owned(),
        groups,
        description: description.to_owned(),
        created: jwt::now(),
        expires,
        secret_sha256: hash(&secret),
    };
    let bytes = serde_json::to_vec_pretty(&record)
        .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
    storage
        .put_record(RecordKind::Tokens, &id, Bytes::from(bytes))
        .await?;
    Ok((record, format!("{PREFIX}{id}_{secret}")))
}

/// Every stored token (one that cannot be read is skipped, with a warning).
pub async fn list(storage: &Storage) -> Result<Vec<RobotToken>, StorageError> {
    let mut tokens = Vec::new();
    for id in storage.list_records(RecordKind::Tokens).await? {
        match read(storage, &id).await {
            Ok(Some(record)) => tokens.push(record),
            Ok(None) => {}
            Err(e) => tracing::warn!(id, error = %e, "cannot read a robot token; skipped"),
        }
    }
    Ok(tokens)
}

async fn read(storage: &Storage, id: &str) -> Result<Option<RobotToken>, StorageError> {
    let Some(bytes) = storage.get_record(RecordKind::Tokens, id).await? else {
        return Ok(None);
    };
    match serde_json::from_slice::<RobotToken>(&bytes) {
        Ok(record) if record.id == id => Ok(Some(record)),
        _ => {
            tracing::warn!(id, "ignoring an unreadable robot-token record");
            Ok(None)
        }
    }
}

/// When a token was last used, if recorded.
pub async fn last_used(storage: &Storage, id: &str) -> Option<i64> {
    let bytes = storage.get_record(RecordKind::TokenUses, id).await.ok()??;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

/// Removes a token; returns whether it existed.
pub async fn revoke(storage: &Storage, id: &str) -> Result<bool, StorageError> {
    let existed = storage.get_record(RecordKind::Tokens, id).await?.is_some();
    storage.delete_record(RecordKind::Tokens, id).await?;
    storage.delete_record(RecordKind::TokenUses, id).await?;
    Ok(existed)
}

/// Unknown ids remembered as unknown, so a flood of made-up ones costs one
/// store read each per refresh period, not one per request.
const MISSES: usize = 10_000;

/// The tokens one replica knows, kept current from the store.
pub struct Robots {
    storage: Storage,
    known: ArcSwap<HashMap<String, RobotToken>>,
    uses: Mutex<HashMap<String, Instant>>,
    misses: Mutex<HashMap<String, Instant>>,
    /// When the list was last read whole, and how often it should be.
    refreshed: Mutex<Option<Instant>>,
    every: Mutex<Duration>,
}

impl Robots {
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            known: ArcSwap::from_pointee(HashMap::new()),
            uses: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(None),
            every: Mutex::new(Duration::from_secs(10)),
        }
    }

    /// Re-reads the list from the store (tokens revoked elsewhere go).
    pub async fn refresh(&self) -> Result<usize, StorageError> {
        let tokens = list(&self.storage).await?;
        let map: HashMap<_, _> = tokens.into_iter().map(|t| (t.id.clone(), t)).collect();
        let n = map.len();
        self.known.store(Arc::new(map));
        self.misses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.refreshed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(n)
    }

    /// Refreshes every `every` until the process ends.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        *self.every.lock().unwrap_or_else(|p| p.into_inner()) = every;
        let robots = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                if let Err(e) = robots.refresh().await {
                    tracing::warn!(error = %e, "cannot re-read robot tokens; keeping the last list");
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Whether the list is current: read within three refresh periods. A
    /// replica that cannot read the store stops accepting robot tokens
    /// rather than honour revoked ones indefinitely.
    fn current(&self) -> bool {
        let every = *self.every.lock().unwrap_or_else(|p| p.into_inner());
        self.refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < every * 3)
    }

    /// The record of `id`: from the list, else from the store (a token made
    /// since the last refresh, perhaps on another replica).
    async fn record(&self, id: &str) -> Option<RobotToken> {
        if !self.current() {
            tracing::warn!(
                id,
                "robot tokens refused: the list could not be re-read from the store"
            );
            return None;
        }
        if let Some(record) = self.known.load().get(id) {
            return Some(record.clone());
        }
        {
            let misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
            if misses.contains_key(id) {
                return None;
            }
        }
        let Ok(Some(record)) = read(&self.storage, id).await else {
            let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
            if misses.len() >= MISSES {
                misses.clear();
            }
            misses.insert(id.to_owned(), Instant::now());
            return None;
        };
        // rcu: a refresh that lands meanwhile is not undone.
        self.known.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(id.to_owned(), record.clone());
            map
        });
        Some(record)
    }

    /// Whether the token `id` exists and has not expired (checked on every
    /// use of a token minted from it).
    pub async fn active(&self, id: &str) -> bool {
        self.record(id)
            .await
            .is_some_and(|t| !t.expired(jwt::now()))
    }

    /// The token a `pcr_` credential is, if its secret matches.
    pub async fn verify(&self, id: &str, secret: &str) -> Option<RobotToken> {
        let record = self.record(id).await?;
        let same: bool = hash(secret)
            .as_bytes()
            .ct_eq(record.secret_sha256.as_bytes())
            .into();
        if !same || record.expired(jwt::now()) {
            return None;
        }
        self.record_use(id);
        Some(record)
    }

    /// Writes the time of use, at most once a minute per token.
    fn record_use(&self, id: &str) {
        {
            let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if uses
                .get(id)
                .is_some_and(|t| now.duration_since(*t) < USE_RECORD_EVERY)
            {
                return;
            }
            if uses.len() > 10_000 {
                uses.clear();
            }
            uses.insert(id.to_owned(), now);
        }
        let (storage, id) = (self.storage.clone(), id.to_owned());
        tokio::spawn(async move {
            let stamp = Bytes::from(jwt::now().to_string());
            if let Err(e) = storage.put_record(RecordKind::TokenUses, &id, stamp).await {
                tracing::debug!(error = %e, id, "cannot record a robot token's use");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_credentials_parse() {
        let good = format!("pcr_0123456789abcdef_{}", "x".repeat(43));
        assert_eq!(parse(&good).map(|p| p.0), Some("0123456789abcdef"));
        for bad in [
            "pcr_",
            "pcr_0123456789abcdef",
            "pcr_0123456789ABCDEF_xxxxxxxxxxxxxxxxxxxxxxxxx",
            "pcr_../../etc/passw_xxxxxxxxxxxxxxxxxxxxxxxxx",
            "password",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
