//! Bounds on password checking: how many bcrypt verifications run at once
//! (the rest wait briefly, then get 429), and how many failed logins a user
//! name or a client address may have before its next attempts are refused
//! with 429 without any bcrypt work. A flood of wrong passwords then costs a
//! bounded share of the CPU and cannot guess at line rate; logged-in users,
//! answered from the credential cache, never wait for it.
//!
//! Failures are counted in token buckets (a bucket holds `limit` failures and
//! refills at `limit` a minute). An attempt takes its token before bcrypt
//! runs and gets it back if the password was right, so concurrent attempts
//! cannot all pass on one token. Every credential the registry accepts goes
//! through one [`LoginThrottle`]. Client addresses are the real client's
//! (through `trusted_proxies`; IPv6 by /64, what one host is usually
//! given): without `trusted_proxies`, behind a reverse proxy every client
//! has the proxy's address and the per-address limit counts them together.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
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
    /// try now, and a verification slot if so (held while bcrypt runs). The
    /// attempt counts as a failure until [`succeeded`](Self::succeeded).
    pub async fn admit(
        &self,
        user: &str,
        address: IpAddr,
    ) -> Result<SemaphorePermit<'_>, Throttled> {
        let now = Instant::now();
        let address = address_key(address);
        // The address first: a client already refused adds no user bucket.
        self.addresses.take(address, now)?;
        if let Err(refused) = self.users.take(user.to_owned(), now) {
            self.addresses.give_back(&address);
            return Err(refused);
        }
        match tokio::time::timeout(SLOT_WAIT, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                // Not checked: not a failure either.
                self.succeeded(user, address);
                Err(Throttled {
                    retry_after: Duration::from_secs(1),
                })
            }
        }
    }

    /// Before a cheap verification (a signature, a hash): the same failure
    /// buckets as [`admit`](Self::admit), without a bcrypt slot. `user` is
    /// the name the failures count against, if the credential carries one
    /// that is not an attacker's free choice of victim.
    pub fn admit_cheap(&self, user: Option<&str>, address: IpAddr) -> Result<(), Throttled> {
        let now = Instant::now();
        let key = address_key(address);
        self.addresses.take(key, now)?;
        if let Some(user) = user {
            if let Err(refused) = self.users.take(user.to_owned(), now) {
                self.addresses.give_back(&key);
                return Err(refused);
            }
        }
        Ok(())
    }

    /// After a cheap verification that passed.
    pub fn succeeded_cheap(&self, user: Option<&str>, address: IpAddr) {
        if let Some(user) = user {
            self.users.give_back(user);
        }
        self.addresses.give_back(&address_key(address));
    }

    /// After a verification that passed: the attempt's tokens come back.
    pub fn succeeded(&self, user: &str, address: IpAddr) {
        self.users.give_back(user);
        self.addresses.give_back(&address_key(address));
    }
}

/// The key an address is counted under: IPv4 as it is, IPv6 by its /64.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        v4 => v4,
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

    /// Takes one token from `key`'s bucket (made full if new), or says how
    /// long until one is there.
    fn take(&self, key: K, now: Instant) -> Result<(), Throttled> {
        if self.limit == 0 {
            return Ok(());
        }
        let limit = f64::from(self.limit);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            // Forget the buckets that have refilled; if a flood of distinct
            // keys keeps them all busy, forget them all (a fresh bucket is
            // the most lenient state, so this only ever errs towards letting
            // an attempt through to bcrypt, which the slots still bound).
            buckets.retain(|_, b| {
                self.refill(b, now);
                b.tokens < limit
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: limit,
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let rate = limit / REFILL_PERIOD.as_secs_f64();
        let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0);
        Err(Throttled {
            retry_after: Duration::from_secs_f64(wait),
        })
    }

    /// Returns a token taken by an attempt that turned out not to fail.
    fn give_back<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.limit == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(f64::from(self.limit));
        }
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
        // A right password costs nothing.
        drop(throttle.admit("alice", ip).await.unwrap());
        throttle.succeeded("alice", ip);
        for _ in 0..3 {
            drop(throttle.admit("alice", ip).await.unwrap());
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
        assert!(throttle.users.take("alice".into(), later).is_ok());
    }

    #[tokio::test]
    async fn an_address_is_refused_after_its_failures_whatever_the_names() {
        let throttle = LoginThrottle::new(limits(0, 2));
        let ip: IpAddr = [192, 0, 2, 1].into();
        for user in ["a", "b"] {
            drop(throttle.admit(user, ip).await.unwrap());
        }
        assert!(throttle.admit("c", ip).await.is_err());
        assert!(throttle.admit("c", [192, 0, 2, 2].into()).await.is_ok());
        // IPv6 addresses count by /64.
        let host: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        drop(throttle.admit("a", host).await.unwrap());
        drop(throttle.admit("b", neighbour).await.unwrap());
        assert!(throttle.admit("c", host).await.is_err());
        assert!(throttle
            .admit("c", "2001:db8:1:3::5".parse().unwrap())
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn concurrent_attempts_cannot_share_one_token() {
        let throttle = LoginThrottle::new(ThrottleLimits {
            concurrent: 64,
            per_user: 3,
            per_address: 0,
        });
        let ip: IpAddr = [192, 0, 2, 1].into();
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..10 {
            match throttle.admit("alice", ip).await {
                Ok(slot) => held.push(slot),
                Err(_) => refused += 1,
            }
        }
        assert_eq!((held.len(), refused), (3, 7));
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
            buckets.take(format!("user{i}"), now).unwrap();
        }
        assert!(buckets.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}
