//! Sessions and CSRF tokens of the web UI.
//!
//! A session is a cookie holding one of the registry's own tokens
//! (`token_use: session`), signed with the token key every replica shares
//! (`auth.token_key`): nothing is kept server-side to sign in, and any
//! replica accepts the cookie. Its source is checked on every page as for
//! a refresh token (a removed user, a changed password, a revoked robot
//! token or an untrusted issuer ends it). Signing out writes the session's
//! id to a record in the store (`_portcullis/signed-out/<id>`), which every
//! replica reads, until the session would have expired anyway.
//!
//! CSRF: each form carries `SHA-256("portcullis-ui-csrf" || session id)`;
//! the id is inside the HttpOnly cookie, so another site can neither read
//! nor compute it. The sign-in form, before any session, uses a random
//! value in a short-lived cookie and the form (double submit).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use bytes::Bytes;
use sha2::Digest as _;
use subtle::ConstantTimeEq;

use crate::storage::records::RecordKind;
use crate::storage::Storage;

pub const SESSION_COOKIE: &str = "portcullis_session";
pub const SIGNIN_COOKIE: &str = "portcullis_signin";
pub const OIDC_COOKIE: &str = "portcullis_oidc";

/// The longest cookie value read (a session token is ~1 KiB).
const MAX_COOKIE: usize = 8 * 1024;

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= MAX_COOKIE)
}

/// `Set-Cookie` for a cookie of the UI: HttpOnly, SameSite=Lax (a link
/// from elsewhere arrives signed in; a cross-site form post does not),
/// Path=/ui/, Secure when the registry is reached over https.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/ui/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/ui/; Max-Age=0; HttpOnly; SameSite=Lax")
}

/// The CSRF token of a session's forms.
pub fn csrf_token(session_id: &str) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(b"portcullis-ui-csrf\0");
    hash.update(session_id.as_bytes());
    hex::encode(hash.finalize())
}

/// Constant-time comparison of a presented token with the expected one.
pub fn tokens_match(presented: Option<&str>, expected: &str) -> bool {
    match presented {
        Some(p) if !expected.is_empty() => p.as_bytes().ct_eq(expected.as_bytes()).into(),
        _ => false,
    }
}

/// Sessions ended by signing out: read from the store (shared by replicas)
/// and remembered here briefly either way.
pub struct SignedOut {
    storage: Storage,
    known: Mutex<HashMap<String, (bool, Instant)>>,
    /// When expired records were last pruned.
    pruned: Mutex<Option<Instant>>,
}

/// Expired sign-out records are pruned at most this often (after a sign-out).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long "not signed out" is believed without asking the store again:
/// a sign-out on another replica holds here within this.
const RECHECK: Duration = Duration::from_secs(10);
const MAX_REMEMBERED: usize = 10_000;

impl SignedOut {
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            known: Mutex::new(HashMap::new()),
            pruned: Mutex::new(None),
        }
    }

    fn remember(&self, id: &str, out: bool) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_REMEMBERED {
            known.retain(|_, (out, at)| *out || at.elapsed() < RECHECK);
            if known.len() >= MAX_REMEMBERED {
                known.clear();
            }
        }
        known.insert(id.to_owned(), (out, Instant::now()));
    }

    /// Whether the session `id` was signed out (on any replica). A store
    /// that cannot be read counts as signed out: fail closed.
    pub async fn is_signed_out(&self, id: &str) -> bool {
        self.status(id).await.unwrap_or(true)
    }

    /// Whether the session `id` was signed out, or `None` when the store
    /// cannot tell now (the page is then shown as to an anonymous visitor,
    /// and the cookie kept: a passing store error signs nobody out).
    pub async fn status(&self, id: &str) -> Option<bool> {
        if let Some((out, at)) = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
        {
            if out || at.elapsed() < RECHECK {
                return Some(out);
            }
        }
        let out = match self.storage.get_record(RecordKind::SignedOut, id).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the signed-out sessions; the page is shown as to an anonymous visitor");
                return None;
            }
        };
        self.remember(id, out);
        Some(out)
    }

    /// Ends the session `id` (which would expire at `expires`, Unix time).
    pub async fn sign_out(
        self: &std::sync::Arc<Self>,
        id: &str,
        expires: i64,
    ) -> Result<(), crate::storage::StorageError> {
        self.remember(id, true);
        self.storage
            .put_record(
                RecordKind::SignedOut,
                id,
                Bytes::from(format!("{expires}\n")),
            )
            .await?;
        let due = {
            let mut pruned = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
            let due = pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY);
            if due {
                *pruned = Some(Instant::now());
            }
            due
        };
        if due {
            // In the background: reading every record is no part of this
            // user's sign-out (on S3, one request per record).
            let this = std::sync::Arc::clone(self);
            tokio::spawn(async move { this.prune().await });
        }
        Ok(())
    }
}

impl SignedOut {
    /// Drops the records of sessions that have expired anyway.
    pub async fn prune(&self) {
        let Ok(ids) = self.storage.list_records(RecordKind::SignedOut).await else {
            return;
        };
        let now = crate::identity::jwt::now();
        for id in ids {
            let expired = match self.storage.get_record(RecordKind::SignedOut, &id).await {
                Ok(Some(bytes)) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .is_none_or(|expires| expires < now),
                _ => false,
            };
            if expired {
                if let Err(e) = self.storage.delete_record(RecordKind::SignedOut, &id).await {
                    tracing::debug!(error = %e, "cannot prune a signed-out session record");
                }
            }
        }
    }
}

/// How many sessions one user may start per window, on one replica: each
/// may end in a sign-out record kept until the session would have expired,
/// so a user signing in and out in a loop must not fill the store.
const STARTS_PER_WINDOW: u32 = 30;
const STARTS_WINDOW: Duration = Duration::from_secs(600);
const MAX_USERS_COUNTED: usize = 10_000;

/// Sessions started per user recently.
#[derive(Default)]
pub struct SessionStarts {
    counts: Mutex<HashMap<String, (Instant, u32)>>,
}

impl SessionStarts {
    /// Counts a session start for `user`; false when over the limit.
    pub fn admit(&self, user: &str) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= MAX_USERS_COUNTED && !counts.contains_key(user) {
            counts.retain(|_, (since, _)| since.elapsed() < STARTS_WINDOW);
            if counts.len() >= MAX_USERS_COUNTED {
                return false;
            }
        }
        let entry = counts.entry(user.to_owned()).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= STARTS_WINDOW {
            *entry = (Instant::now(), 0);
        }
        if entry.1 >= STARTS_PER_WINDOW {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_user_starts_a_bounded_number_of_sessions() {
        let starts = SessionStarts::default();
        for _ in 0..STARTS_PER_WINDOW {
            assert!(starts.admit("alice"));
        }
        assert!(!starts.admit("alice"));
        assert!(starts.admit("bob"));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("xportcullis_session=evil; portcullis_session=good"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("good"));
        assert_eq!(cookie(&headers, SIGNIN_COOKIE), None);
        let mut long = HeaderMap::new();
        let value = format!("portcullis_session={}", "a".repeat(MAX_COOKIE + 1));
        long.insert(header::COOKIE, HeaderValue::from_str(&value).unwrap());
        assert_eq!(cookie(&long, SESSION_COOKIE), None);
    }

    #[test]
    fn csrf_tokens_are_per_session_and_compared_whole() {
        let a = csrf_token("0011");
        assert_ne!(a, csrf_token("0012"));
        assert!(tokens_match(Some(&a), &a));
        assert!(!tokens_match(Some(&a[..10]), &a));
        assert!(!tokens_match(None, &a));
        assert!(!tokens_match(Some(""), ""));
    }

    #[tokio::test]
    async fn signing_out_holds_and_prunes_expired_records_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.storage.root = dir.path().join("store");
        let storage = Storage::open(&config.storage).await.unwrap();
        let now = crate::identity::jwt::now();
        storage
            .put_record(
                RecordKind::SignedOut,
                "00stale",
                Bytes::from(format!("{}\n", now - 10)),
            )
            .await
            .unwrap();
        let sessions = std::sync::Arc::new(SignedOut::new(storage.clone()));
        sessions.sign_out("00aa", now + 3600).await.unwrap();
        assert!(sessions.is_signed_out("00aa").await);
        assert!(!sessions.is_signed_out("00bb").await);
        // Another replica (no memory of it) reads the record.
        let other = SignedOut::new(storage.clone());
        assert!(other.is_signed_out("00aa").await);
        let mut left = Vec::new();
        for _ in 0..100 {
            left = storage.list_records(RecordKind::SignedOut).await.unwrap();
            if left.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(left, ["00aa"]);
    }

    #[tokio::test]
    async fn a_store_that_cannot_tell_is_not_a_sign_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.storage.root = dir.path().join("store");
        let storage = Storage::open(&config.storage).await.unwrap();
        let sessions = SignedOut::new(storage.clone());
        storage
            .put_record(RecordKind::SignedOut, "00gone", Bytes::from("1\n"))
            .await
            .unwrap();
        assert_eq!(sessions.status("00gone").await, Some(true));
        // The records' directory replaced by a file: reads fail (not "none").
        let records = walk(dir.path(), "signed-out").expect("the records' directory");
        std::fs::remove_dir_all(&records).unwrap();
        std::fs::write(&records, b"").unwrap();
        assert_eq!(sessions.status("00cc").await, None);
        assert!(sessions.is_signed_out("00cc").await, "fails closed");
        // What it knew stays known.
        assert_eq!(sessions.status("00gone").await, Some(true));
    }

    fn walk(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == name) {
                    return Some(path);
                }
                if let Some(found) = walk(&path, name) {
                    return Some(found);
                }
            }
        }
        None
    }
}
