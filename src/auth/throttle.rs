//! Bounds on password checking: how many bcrypt verifications run at once
//! (the rest wait briefly, then get 429), and how many failed logins a user
//! name or a client address may have before its next attempts are refused
//! with 429 without any bcrypt work. A flood of wrong passwords then costs a
//! bounded share of the CPU and cannot guess at line rate; logged-in users,
//! answered from the credential cache, never wait for it.
//!
//! Failures are counted in token buckets (a bucket holds `limit` failures and
//! refills at `limit` a minute). Every credential the registry accepts goes
//! through one [`LoginThrottle`]. Client addresses are the TCP peer's: behind
//! a reverse proxy every client has the proxy's address, so there the
//! per-address limit counts all clients together (set it to 0 to turn it off
//! until trusted proxies are configurable).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a login waits for a verification slot before it gets 429.
const SLOT_WAIT: Duration = Duration::from_secs(2);
/// Buckets kept before full ones are forgotten (they hold no information).
const MAX_BUCKETS: usize = 10_000;
const REFILL_PERIOD: Duration = Duration::from_secs(60);

/// Why a login was not checked: try again after the duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

/// The limits, from `[auth]`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    /// bcrypt verifications at once.
    pub concurrent: usize,
    /// Failed logins per user name a minute (0: no limit).
    pub per_user: u32,
    /// Failed logins per client address a minute (0: no limit).
    pub per_address: u32,
}

pub struct LoginThrottle {
    slots: Semaphore,
    users: Buckets<String>,
    addresses: Buckets<IpAddr>,
}

impl LoginThrottle {
    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            slots: Semaphore::new(limits.concurrent.max(1)),
            users: Buckets::new(limits.per_user),
            addresses: Buckets::new(limits.per_address),
        }
    }

    /// Before a password is verified: whether this user name and address may
    /// try now, and a verification slot if so (held while bcrypt runs).
    pub async fn admit(
        &self,
        user: &str,
        address: IpAddr,
    ) -> Result<SemaphorePermit<'_>, Throttled> {
        let now = Instant::now();
        self.users.admit(user, now)?;
        self.addresses.admit(&address, now)?;
        match tokio::time::timeout(SLOT_WAIT, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Throttled {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// After a failed verification: one failure for the name and the address.
    pub fn failed(&self, user: &str, address: IpAddr) {
        let now = Instant::now();
        self.users.spend(user.to_owned(), now);
        self.addresses.spend(address, now);
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Failure buckets by key; `limit` 0 admits everything.
struct Buckets<K> {
    limit: u32,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq> Buckets<K> {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let rate = f64::from(self.limit) / REFILL_PERIOD.as_secs_f64();
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(self.limit));
        bucket.updated = now;
    }

    fn admit<Q>(&self, key: &Q, now: Instant) -> Result<(), Throttled>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.limit == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bucket) = buckets.get_mut(key) else {
            return Ok(());
        };
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        let rate = f64::from(self.limit) / REFILL_PERIOD.as_secs_f64();
        let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0);
        Err(Throttled {
            retry_after: Duration::from_secs_f64(wait),
        })
    }

    fn spend(&self, key: K, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            // Forget the buckets that have refilled; if a flood of distinct
            // keys keeps them all busy, forget them all (a fresh bucket is
            // the most lenient state, so this only ever errs towards letting
            // an attempt through to bcrypt, which the slots still bound).
            buckets.retain(|_, b| {
                self.refill(b, now);
                b.tokens < f64::from(self.limit)
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let limit = f64::from(self.limit);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: limit,
            updated: now,
        });
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_user: u32, per_address: u32) -> ThrottleLimits {
        ThrottleLimits {
            concurrent: 1,
            per_user,
            per_address,
        }
    }

    #[tokio::test]
    async fn a_user_name_is_refused_after_its_failures_and_refills_over_a_minute() {
        let throttle = LoginThrottle::new(limits(3, 0));
        let ip: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..3 {
            drop(throttle.admit("alice", ip).await.unwrap());
            throttle.failed("alice", ip);
        }
        let refused = throttle.admit("alice", ip).await.unwrap_err();
        assert!(refused.retry_after >= Duration::from_secs(1));
        assert!(
            refused.retry_after <= Duration::from_secs(20),
            "{refused:?}"
        );
        // Other names are not affected.
        assert!(throttle.admit("bob", ip).await.is_ok());
        // A bucket refills at the limit a minute.
        let later = Instant::now() + Duration::from_secs(21);
        assert!(throttle.users.admit("alice", later).is_ok());
    }

    #[tokio::test]
    async fn an_address_is_refused_after_its_failures_whatever_the_names() {
        let throttle = LoginThrottle::new(limits(0, 2));
        let ip: IpAddr = [192, 0, 2, 1].into();
        for user in ["a", "b"] {
            drop(throttle.admit(user, ip).await.unwrap());
            throttle.failed(user, ip);
        }
        assert!(throttle.admit("c", ip).await.is_err());
        assert!(throttle.admit("c", [192, 0, 2, 2].into()).await.is_ok());
    }

    #[tokio::test]
    async fn verifications_past_the_slots_wait_then_are_refused() {
        let throttle = LoginThrottle::new(limits(0, 0));
        let ip: IpAddr = [192, 0, 2, 1].into();
        let held = throttle.admit("a", ip).await.unwrap();
        let started = Instant::now();
        assert!(throttle.admit("b", ip).await.is_err());
        assert!(started.elapsed() >= SLOT_WAIT);
        drop(held);
        assert!(throttle.admit("b", ip).await.is_ok());
    }

    #[test]
    fn a_flood_of_names_keeps_the_table_bounded() {
        let buckets: Buckets<String> = Buckets::new(5);
        let now = Instant::now();
        for i in 0..(3 * MAX_BUCKETS) {
            buckets.spend(format!("user{i}"), now);
        }
        assert!(buckets.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}
