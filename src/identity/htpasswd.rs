//! Passwords from an htpasswd file (bcrypt entries, as `htpasswd -B` writes
//! them and `registry:2` reads them).
//!
//! bcrypt is slow on purpose, so it runs on the blocking pool, never on the
//! async workers, and a verified password is remembered for `cache_ttl`
//! under a salted SHA-256 of user and password (compared in constant time)
//! together with the hash it matched: when the file changes a user's hash or
//! drops the user, the remembered verification no longer counts. Unknown
//! users are checked against a dummy hash so their timing matches.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use subtle::ConstantTimeEq;

use super::IdentityError;

/// The accounts of one htpasswd file, as read at one (re)load.
pub struct Passwords {
    /// user -> bcrypt hash.
    users: HashMap<String, String>,
    /// A hash of a random password at the file's highest cost: unknown users
    /// are verified against it, so they take as long as known ones.
    dummy_hash: String,
}

impl Passwords {
    pub fn read(path: &Path) -> Result<Self, IdentityError> {
        let users = read_htpasswd(path)?;
        let cost = users
            .values()
            .filter_map(|h| h.get(4..6).and_then(|c| c.parse::<u32>().ok()))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy_hash =
            bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost.clamp(4, 31)).unwrap_or_default();
        Ok(Self { users, dummy_hash })
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// A short fingerprint of the user's current hash: a refresh token
    /// carries it, so a password change ends the tokens minted before.
    pub fn version(&self, user: &str) -> Option<String> {
        self.users
            .get(user)
            .map(|h| hex::encode(&sha2::Sha256::digest(h.as_bytes())[..8]))
    }

    /// The hash to verify `user`'s password against, and whether the user exists.
    pub fn hash_for(&self, user: &str) -> (String, bool) {
        match self.users.get(user) {
            Some(h) => (h.clone(), true),
            None => (self.dummy_hash.clone(), false),
        }
    }
}

struct Cached {
    key: [u8; 32],
    hash: String,
    expires: Instant,
}

/// Verified passwords, remembered for a while.
pub struct PasswordCache {
    ttl: Duration,
    salt: [u8; 32],
    entries: Mutex<HashMap<String, Cached>>,
}

impl PasswordCache {
    pub fn new(ttl: Duration) -> Self {
        let mut salt = [0u8; 32];
        // Two v4 UUIDs come from the OS's CSPRNG; enough for a per-process salt.
        salt[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        salt[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            ttl,
            salt,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether this user and password verified recently against the hash
    /// the file has for the user now.
    pub fn hit(&self, passwords: &Passwords, user: &str, key: &[u8; 32]) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = entries.get(user) else {
            return false;
        };
        let same: bool = entry.key.ct_eq(key).into();
        same && entry.expires > Instant::now()
            && passwords.users.get(user).is_some_and(|h| *h == entry.hash)
    }

    pub fn remember(&self, user: String, key: [u8; 32], hash: String) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if entries.len() > 10_000 {
            entries.retain(|_, c| c.expires > now);
        }
        entries.insert(
            user,
            Cached {
                key,
                hash,
                expires: now + self.ttl,
            },
        );
    }

    /// Drops what the new file no longer vouches for.
    pub fn retain_valid(&self, passwords: Option<&Passwords>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|user, c| passwords.is_some_and(|p| p.users.get(user) == Some(&c.hash)));
    }
}

fn read_htpasswd(path: &Path) -> Result<HashMap<String, String>, IdentityError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry_error = |reason: &str| IdentityError::Entry {
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

    #[test]
    fn non_bcrypt_entries_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "bob:{SHA}abc\n").unwrap();
        let err = Passwords::read(&path).err().unwrap().to_string();
        assert!(
            err.contains("line 1") && err.contains("htpasswd -B"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_hash_ends_the_cached_verification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("one", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let before = Passwords::read(&path).unwrap();
        let cache = PasswordCache::new(Duration::from_secs(60));
        let key = cache.key("alice", "one");
        cache.remember("alice".into(), key, hash);
        assert!(cache.hit(&before, "alice", &key));
        std::fs::write(
            &path,
            format!("alice:{}\n", bcrypt::hash("two", 4).unwrap()),
        )
        .unwrap();
        let after = Passwords::read(&path).unwrap();
        assert!(!cache.hit(&after, "alice", &key));
        cache.retain_valid(Some(&after));
        assert!(!cache.hit(&before, "alice", &key));
    }
}
