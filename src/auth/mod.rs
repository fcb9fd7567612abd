//! Who is asking: HTTP Basic credentials checked against an htpasswd file
//! (bcrypt entries, as `htpasswd -B` writes them and `registry:2` reads them),
//! and group membership from the config.
//!
//! bcrypt is slow on purpose, so it runs on the blocking pool, never on the
//! async workers, and a verified credential is remembered for `cache_ttl`
//! under a salted SHA-256 of user and password (compared in constant time).
//! Unknown users are checked against a dummy hash so their timing matches.
//! How much bcrypt work clients can cause is bounded by `throttle`.
//! This module decides identity only; what an identity may do is the policies'.

pub mod throttle;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::Digest as _;
use subtle::ConstantTimeEq;

use crate::config::Config;
use throttle::{LoginThrottle, ThrottleLimits};

/// The caller, as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// `None` for an anonymous request.
    pub subject: Option<String>,
    /// Sorted group names.
    pub groups: Vec<String>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self::default()
    }

    pub fn is_anonymous(&self) -> bool {
        self.subject.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the Authorization header is not valid Basic credentials")]
    Malformed,
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("too many failed logins or logins at once; retry in {} s", retry_after.as_secs())]
    Throttled { retry_after: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read htpasswd file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("htpasswd file {path}, line {line}: {reason}")]
    Entry {
        path: String,
        line: usize,
        reason: String,
    },
}

struct Cached {
    key: [u8; 32],
    identity: Identity,
    expires: Instant,
}

pub struct Authenticator {
    /// user -> bcrypt hash; `None` when no htpasswd file is configured.
    users: Option<HashMap<String, String>>,
    /// A hash of a random password at the file's highest cost: unknown users
    /// are verified against it, so they take as long as known ones.
    dummy_hash: String,
    /// user -> sorted groups.
    groups: HashMap<String, Vec<String>>,
    realm: String,
    ttl: Duration,
    salt: [u8; 32],
    cache: Mutex<HashMap<String, Cached>>,
    throttle: LoginThrottle,
}

impl Authenticator {
    pub fn from_config(config: &Config) -> Result<Self, AuthConfigError> {
        let users = match &config.auth.htpasswd {
            Some(path) => Some(read_htpasswd(path)?),
            None => None,
        };
        let cost = users
            .iter()
            .flat_map(|u| u.values())
            .filter_map(|h| h.get(4..6).and_then(|c| c.parse::<u32>().ok()))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy_hash = match users {
            Some(_) => bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost.clamp(4, 31))
                .unwrap_or_default(),
            None => String::new(),
        };
        Ok(Self {
            users,
            dummy_hash,
            groups: invert_groups(&config.groups),
            realm: config.auth.realm.clone(),
            ttl: config.auth.cache_ttl,
            salt: rand_salt(),
            cache: Mutex::new(HashMap::new()),
            throttle: LoginThrottle::new(ThrottleLimits {
                concurrent: config.auth.max_verifications,
                per_user: config.auth.failed_logins_per_user,
                per_address: config.auth.failed_logins_per_address,
            }),
        })
    }

    /// Whether credentials are checked at all.
    pub fn enabled(&self) -> bool {
        self.users.is_some()
    }

    /// The `WWW-Authenticate` value for a 401.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm.replace('"', "'"))
    }

    fn identity_for(&self, user: &str) -> Identity {
        Identity {
            subject: Some(user.to_owned()),
            groups: self.groups.get(user).cloned().unwrap_or_default(),
        }
    }

    /// The caller behind an `Authorization` header value (or its absence),
    /// from the client address `peer`.
    pub async fn identify(
        self: &Arc<Self>,
        authorization: Option<&str>,
        peer: IpAddr,
    ) -> Result<Identity, AuthError> {
        let Some(header) = authorization else {
            return Ok(Identity::anonymous());
        };
        let Some(users) = &self.users else {
            // No accounts configured: credentials mean nothing, the caller is anonymous.
            return Ok(Identity::anonymous());
        };
        let (user, password) = parse_basic(header).ok_or(AuthError::Malformed)?;
        let key = self.cache_key(&user, &password);
        if let Some(identity) = self.cached(&user, &key) {
            return Ok(identity);
        }
        let slot = self
            .throttle
            .admit(&user, peer)
            .await
            .map_err(|t| AuthError::Throttled {
                retry_after: t.retry_after,
            })?;
        let hash = users.get(&user).cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let verified =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        drop(slot);
        if !(verified && known) {
            return Err(AuthError::BadCredentials);
        }
        self.throttle.succeeded(&user, peer);
        let identity = self.identity_for(&user);
        self.remember(user, key, identity.clone());
        Ok(identity)
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn cached(&self, user: &str, key: &[u8; 32]) -> Option<Identity> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get(user)?;
        let same: bool = entry.key.ct_eq(key).into();
        (same && entry.expires > Instant::now()).then(|| entry.identity.clone())
    }

    fn remember(&self, user: String, key: [u8; 32], identity: Identity) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if cache.len() > 10_000 {
            cache.retain(|_, c| c.expires > now);
        }
        cache.insert(
            user,
            Cached {
                key,
                identity,
                expires: now + self.ttl,
            },
        );
    }
}

fn rand_salt() -> [u8; 32] {
    // Two v4 UUIDs come from the OS's CSPRNG; enough for a per-process salt.
    let mut salt = [0u8; 32];
    salt[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    salt[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    salt
}

fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn invert_groups(groups: &BTreeMap<String, Vec<String>>) -> HashMap<String, Vec<String>> {
    let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
    for (group, members) in groups {
        for member in members {
            by_user
                .entry(member.clone())
                .or_default()
                .push(group.clone());
        }
    }
    for list in by_user.values_mut() {
        list.sort();
        list.dedup();
    }
    by_user
}

fn read_htpasswd(path: &Path) -> Result<HashMap<String, String>, AuthConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry_error = |reason: &str| AuthConfigError::Entry {
            path: shown.clone(),
            line: i + 1,
            reason: reason.to_owned(),
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| entry_error("expected user:hash"))?;
        if user.is_empty() {
            return Err(entry_error("the user name is empty"));
        }
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(entry_error(
                "only bcrypt entries are supported; create them with `htpasswd -B`",
            ));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn authenticator(htpasswd: &str) -> (tempfile::TempDir, Arc<Authenticator>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, htpasswd).unwrap();
        let mut config = Config::default();
        config.auth.htpasswd = Some(path);
        config
            .groups
            .insert("devs".into(), vec!["alice".into(), "bob".into()]);
        (dir, Arc::new(Authenticator::from_config(&config).unwrap()))
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[tokio::test]
    async fn bcrypt_users_get_their_groups_and_wrong_passwords_fail() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (_dir, auth) = authenticator(&format!("# users\nalice:{hash}\n"));
        let who = auth
            .identify(Some(&basic("alice", "s3cret")), PEER)
            .await
            .unwrap();
        assert_eq!(who.subject.as_deref(), Some("alice"));
        assert_eq!(who.groups, vec!["devs".to_string()]);
        // Second time from the cache, same answer.
        assert_eq!(
            auth.identify(Some(&basic("alice", "s3cret")), PEER)
                .await
                .unwrap(),
            who
        );
        assert!(matches!(
            auth.identify(Some(&basic("alice", "wrong")), PEER).await,
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            auth.identify(Some(&basic("mallory", "s3cret")), PEER).await,
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            auth.identify(Some("Basic !!!"), PEER).await,
            Err(AuthError::Malformed)
        ));
        assert!(auth.identify(None, PEER).await.unwrap().is_anonymous());
    }

    #[test]
    fn non_bcrypt_entries_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "bob:{SHA}abc\n").unwrap();
        let mut config = Config::default();
        config.auth.htpasswd = Some(path);
        let err = Authenticator::from_config(&config)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("htpasswd -B"),
            "{err}"
        );
    }
}
