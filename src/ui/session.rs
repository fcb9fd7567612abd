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
        if let Some((out, at)) = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
        {
            if out || at.elapsed() < RECHECK {
                return out;
            }
        }
        let out = match self.storage.get_record(RecordKind::SignedOut, id).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the signed-out sessions; treating the session as ended");
                return true;
            }
        };
        self.remember(id, out);
        out
    }

    /// Ends the session `id` (which would expire at `expires`, Unix time).
    pub async fn sign_out(
        &self,
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
            self.prune().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
}
