//! What one greedy or slow client may hold: upload sessions (per client and in
//! all), and how long and how large a request body may be.
//!
//! Request heads (size, field count, read time) are bounded by hyper, set up
//! in `server.rs`; this file bounds what the handlers see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::access::Caller;
use super::error::{ApiError, ErrorCode};
use crate::config::LimitsConfig;
use crate::reference::UploadId;

/// Who a session is charged to: the user, or the address of an anonymous caller.
pub fn client_key(caller: &Caller) -> String {
    match &caller.identity.subject {
        Some(user) => format!("user:{user}"),
        None => format!("ip:{}", caller.ip),
    }
}

struct Session {
    client: String,
    last_used: Instant,
}

#[derive(Default)]
struct Table {
    sessions: HashMap<UploadId, Session>,
    /// Slots held by requests that have not got a session id yet, or hold a
    /// one-shot upload, per client.
    reserved: HashMap<String, usize>,
}

impl Table {
    fn expire(&mut self, now: Instant, idle: Duration) {
        self.sessions
            .retain(|_, s| now.saturating_duration_since(s.last_used) < idle);
    }

    fn total(&self) -> usize {
        self.sessions.len() + self.reserved.values().sum::<usize>()
    }

    fn of(&self, client: &str) -> usize {
        self.sessions
            .values()
            .filter(|s| s.client == client)
            .count()
            + self.reserved.get(client).copied().unwrap_or(0)
    }

    fn release(&mut self, client: &str) {
        if let Some(n) = self.reserved.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.reserved.remove(client);
            }
        }
    }
}

/// Upload sessions open now, charged to the clients that opened them.
pub struct UploadLimiter {
    max_total: usize,
    max_per_client: usize,
    idle: Duration,
    table: Arc<Mutex<Table>>,
}

impl UploadLimiter {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            max_total: limits.max_uploads,
            max_per_client: limits.max_uploads_per_client,
            idle: limits.upload_idle,
            table: Arc::default(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a new session, or refuses with 429 and `Retry-After`.
    pub fn reserve(&self, client: String) -> Result<Slot, ApiError> {
        let mut table = self.table();
        table.expire(Instant::now(), self.idle);
        let refused = if table.total() >= self.max_total {
            Some(format!(
                "the registry has {} upload sessions open, its limit (limits.max_uploads); retry later",
                self.max_total
            ))
        } else if table.of(&client) >= self.max_per_client {
            Some(format!(
                "you have {} upload sessions open, the limit per client (limits.max_uploads_per_client); finish or cancel one, or retry later",
                self.max_per_client
            ))
        } else {
            None
        };
        if let Some(message) = refused {
            return Err(ApiError::new(ErrorCode::TooManyRequests, message)
                .with_status(StatusCode::TOO_MANY_REQUESTS)
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("10")));
        }
        *table.reserved.entry(client.clone()).or_default() += 1;
        Ok(Slot {
            table: Arc::clone(&self.table),
            client: Some(client),
        })
    }

    /// Marks a session used now; a session the limiter has not seen (one from
    /// before a restart) is charged to `client` from now on.
    pub fn touch(&self, id: UploadId, client: impl FnOnce() -> String) {
        let mut table = self.table();
        let now = Instant::now();
        match table.sessions.get_mut(&id) {
            Some(session) => session.last_used = now,
            None => {
                table.sessions.insert(
                    id,
                    Session {
                        client: client(),
                        last_used: now,
                    },
                );
            }
        }
    }

    /// The session is committed, cancelled or gone: its slot is free.
    pub fn finish(&self, id: UploadId) {
        self.table().sessions.remove(&id);
    }

    /// Sessions counted now (for tests and metrics).
    pub fn open(&self) -> usize {
        let mut table = self.table();
        table.expire(Instant::now(), self.idle);
        table.total()
    }
}

/// A reserved upload slot: freed on drop unless bound to a session.
pub struct Slot {
    table: Arc<Mutex<Table>>,
    client: Option<String>,
}

impl Slot {
    /// The slot now belongs to session `id`, until it finishes or idles out.
    pub fn bind(mut self, id: UploadId) {
        if let Some(client) = self.client.take() {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table.release(&client);
            table.sessions.insert(
                id,
                Session {
                    client,
                    last_used: Instant::now(),
                },
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table.release(&client);
        }
    }
}

/// Why a request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Idle(Duration),
    Total(Duration),
    TooLarge(u64),
}

/// Bounds on one request body: pauses, total time, size. The stream it
/// wraps ends with an error when a bound is passed; [`BodyLimits::explain`]
/// then turns the storage layer's error into the right response.
#[derive(Clone)]
pub struct BodyLimits {
    idle: Duration,
    total: Duration,
    max_bytes: Option<u64>,
    cut: Arc<OnceLock<Cut>>,
}

impl BodyLimits {
    pub fn new(limits: &LimitsConfig, max_bytes: Option<u64>) -> Self {
        Self {
            idle: limits.body_idle_timeout,
            total: limits.body_timeout,
            max_bytes,
            cut: Arc::default(),
        }
    }

    /// Refuses up front a body whose declared length is already too large.
    pub fn check_declared(&self, declared: Option<u64>) -> Result<(), ApiError> {
        match (self.max_bytes, declared) {
            (Some(max), Some(declared)) if declared > max => Err(too_large(max)),
            _ => Ok(()),
        }
    }

    /// Wraps a body stream so that it errs when a bound is passed. One timer
    /// per body, re-armed for each piece (not a new one per piece).
    pub fn guard<S, E>(
        &self,
        body: S,
    ) -> impl Stream<Item = Result<Bytes, String>> + Unpin + Send + 'static
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
        E: std::fmt::Display,
    {
        let deadline = Instant::now() + self.total;
        let timer = Box::pin(tokio::time::sleep_until(deadline));
        let state = (body, 0u64, timer, self.clone());
        Box::pin(futures_util::stream::unfold(
            Some(state),
            move |state| async move {
                let (mut body, seen, mut timer, limits) = state?;
                let idle_end = Instant::now() + limits.idle;
                let cut = if deadline <= idle_end {
                    timer.as_mut().reset(deadline);
                    Cut::Total(limits.total)
                } else {
                    timer.as_mut().reset(idle_end);
                    Cut::Idle(limits.idle)
                };
                let next = tokio::select! {
                    next = body.next() => next,
                    () = timer.as_mut() => {
                        let _ = limits.cut.set(cut);
                        return Some((Err("request body timed out".to_owned()), None));
                    }
                };
                match next {
                    Some(Ok(bytes)) => {
                        let seen = seen.saturating_add(bytes.len() as u64);
                        if let Some(max) = limits.max_bytes.filter(|max| seen > *max) {
                            let _ = limits.cut.set(Cut::TooLarge(max));
                            return Some((Err(format!("body larger than {max} bytes")), None));
                        }
                        Some((Ok(bytes), Some((body, seen, timer, limits))))
                    }
                    Some(Err(e)) => Some((Err(e.to_string()), None)),
                    None => None,
                }
            },
        ))
    }

    /// The response for a failed request: the bound that was passed, if one
    /// was, else the error as it is.
    pub fn explain(&self, err: ApiError) -> ApiError {
        match self.cut.get() {
            None => err,
            Some(Cut::TooLarge(max)) => too_large(*max),
            Some(Cut::Idle(idle)) => timeout(format!(
                "no request body data for {} (limits.body_idle_timeout); the upload session keeps what arrived before",
                humantime::format_duration(*idle)
            )),
            Some(Cut::Total(total)) => timeout(format!(
                "the request body took longer than {} (limits.body_timeout); send it in smaller chunks",
                humantime::format_duration(*total)
            )),
        }
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!(
            "the blob is larger than this registry accepts ({}, limits.max_blob_bytes)",
            bytesize::ByteSize::b(max)
        ),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

fn timeout(message: String) -> ApiError {
    // The spec has no code for a timeout; BLOB_UPLOAD_INVALID with 408 is what
    // the client can act on. The connection is closed after it (the access
    // layer says `Connection: close` on any error to a request with a body).
    ApiError::new(ErrorCode::BlobUploadInvalid, message).with_status(StatusCode::REQUEST_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn limits(total: usize, per_client: usize) -> LimitsConfig {
        let mut limits = crate::config::Config::default().limits;
        limits.max_uploads = total;
        limits.max_uploads_per_client = per_client;
        limits
    }

    fn caller(ip: [u8; 4]) -> Caller {
        Caller {
            identity: Identity::anonymous(),
            ip: std::net::IpAddr::from(ip),
            credentials: false,
            realm: String::new(),
        }
    }

    #[test]
    fn caps_per_client_and_in_all() {
        let limiter = UploadLimiter::new(&limits(3, 2));
        let a = client_key(&caller([10, 0, 0, 1]));
        let b = client_key(&caller([10, 0, 0, 2]));
        limiter.reserve(a.clone()).unwrap().bind(UploadId::new());
        let held = limiter.reserve(a.clone()).unwrap();
        let err = limiter.reserve(a.clone()).err().unwrap();
        assert_eq!(err.code, ErrorCode::TooManyRequests);
        assert!(err.message.contains("per client"), "{}", err.message);
        limiter.reserve(b.clone()).unwrap().bind(UploadId::new());
        let err = limiter.reserve(b.clone()).err().unwrap();
        assert!(err.message.contains("max_uploads)"), "{}", err.message);
        assert!(err.headers.iter().any(|(n, _)| n == header::RETRY_AFTER));
        drop(held);
        assert_eq!(limiter.open(), 2);
        limiter.reserve(b).unwrap();
    }

    #[test]
    fn finished_and_idle_sessions_free_their_slot() {
        let mut config = limits(10, 1);
        config.upload_idle = Duration::from_millis(30);
        let limiter = UploadLimiter::new(&config);
        let a = client_key(&caller([10, 0, 0, 1]));
        let id = UploadId::new();
        limiter.reserve(a.clone()).unwrap().bind(id);
        assert!(limiter.reserve(a.clone()).is_err());
        limiter.finish(id);
        let id = UploadId::new();
        limiter.reserve(a.clone()).unwrap().bind(id);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(limiter.open(), 0);
        // A session from before a restart is charged when it is used.
        let old = UploadId::new();
        limiter.touch(old, || a.clone());
        assert!(limiter.reserve(a).is_err());
    }

    #[tokio::test]
    async fn bodies_are_cut_at_their_bounds() {
        let mut config = limits(1, 1);
        config.body_idle_timeout = Duration::from_millis(50);
        let limits = BodyLimits::new(&config, Some(4));
        let chunks: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from_static(b"abc"))];
        let stalled = futures_util::stream::iter(chunks).chain(futures_util::stream::pending());
        let mut guarded = limits.guard(Box::pin(stalled));
        assert_eq!(guarded.next().await.unwrap().unwrap(), "abc");
        assert!(guarded.next().await.unwrap().is_err());
        let err = limits.explain(ApiError::new(ErrorCode::BlobUploadInvalid, "x"));
        assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);

        let limits = BodyLimits::new(&config, Some(4));
        let chunks: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"de")),
        ];
        let mut guarded = limits.guard(futures_util::stream::iter(chunks));
        assert!(guarded.next().await.unwrap().is_ok());
        assert!(guarded.next().await.unwrap().is_err());
        let err = limits.explain(ApiError::new(ErrorCode::BlobUploadInvalid, "x"));
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.code, ErrorCode::SizeInvalid);
        assert!(limits.check_declared(Some(5)).is_err());
        assert!(limits.check_declared(Some(4)).is_ok());
    }
}
