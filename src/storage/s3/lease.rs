//! A lease in the bucket (`_portcullis/leases/<name>`): which replica runs
//! gc now. Sound only on a store that enforces conditional writes: the
//! lease is created with `If-None-Match: *` and taken over or renewed with
//! `If-Match` on the version read, so two replicas can neither both create
//! it nor both take over an expired one. On a store that ignores them
//! (Garage 2.5) this module refuses to hand out leases.
//!
//! The lease records its holder and when it expires (the holder's clock):
//! replicas' clocks must agree to well within `gc.lease_ttl`.

use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::{Conditional, S3Storage};
use crate::storage::{Result, StorageError};

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    /// Unix seconds; 0 for a released lease.
    expires: i64,
}

/// A lease this replica holds: the version it wrote, to renew or release it.
#[derive(Debug)]
pub struct LeaseTicket {
    key: Path,
    holder: String,
    e_tag: String,
}

#[derive(Debug)]
pub enum LeaseOutcome {
    Acquired(LeaseTicket),
    /// Someone else holds it until `expires` (Unix seconds).
    Held {
        holder: String,
        expires: i64,
    },
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn record(holder: &str, expires: i64) -> PutPayload {
    let json = serde_json::to_vec(&LeaseRecord {
        holder: holder.to_owned(),
        expires,
    })
    .unwrap_or_default();
    PutPayload::from(Bytes::from(json))
}

fn deadline(ttl: Duration) -> i64 {
    unix_now().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1))
}

impl S3Storage {
    /// Whether the store enforces conditional writes (found at start-up).
    pub fn enforces_conditional_writes(&self) -> bool {
        self.conditional == Conditional::Enforced
    }

    fn lease_key(&self, name: &str) -> Path {
        self.key(format!("_portcullis/leases/{name}"))
    }

    /// Writes `payload` with `mode`; `None` when the condition failed.
    async fn put_conditional(
        &self,
        key: &Path,
        payload: PutPayload,
        mode: PutMode,
    ) -> Result<Option<String>> {
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        match self.s3.put_opts(key, payload, options).await {
            Ok(result) => result.e_tag.map(Some).ok_or_else(|| {
                StorageError::Unavailable(format!(
                    "{}: the store returned no ETag for the lease; it cannot be renewed",
                    self.description
                ))
            }),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Takes the lease `name` for `ttl` if nobody holds it (or its holder
    /// let it expire).
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome> {
        if !self.enforces_conditional_writes() {
            return Err(StorageError::Unavailable(format!(
                "{} does not enforce conditional writes: a lease in it would not exclude anyone",
                self.description
            )));
        }
        let key = self.lease_key(name);
        let ticket = |e_tag| {
            LeaseOutcome::Acquired(LeaseTicket {
                key: key.clone(),
                holder: holder.to_owned(),
                e_tag,
            })
        };
        if let Some(e_tag) = self
            .put_conditional(&key, record(holder, deadline(ttl)), PutMode::Create)
            .await?
        {
            return Ok(ticket(e_tag));
        }
        let Some((bytes, e_tag)) = self.get_small(&key, 4096).await? else {
            // Gone between the two requests (an operator removed it): next time.
            return Ok(LeaseOutcome::Held {
                holder: String::new(),
                expires: unix_now(),
            });
        };
        let current: Option<LeaseRecord> = serde_json::from_slice(&bytes).ok();
        if let Some(current) = &current {
            if current.expires > unix_now() {
                return Ok(LeaseOutcome::Held {
                    holder: current.holder.clone(),
                    expires: current.expires,
                });
            }
        }
        // Expired, released or unreadable: take it over, if nobody else
        // did since it was read.
        let update = PutMode::Update(UpdateVersion {
            e_tag,
            version: None,
        });
        match self
            .put_conditional(&key, record(holder, deadline(ttl)), update)
            .await?
        {
            Some(e_tag) => Ok(ticket(e_tag)),
            None => Ok(LeaseOutcome::Held {
                holder: String::from("another replica (it took the lease over just now)"),
                expires: deadline(ttl),
            }),
        }
    }

    /// Extends a held lease by `ttl` from now; `false` when it was lost
    /// (taken over after it expired).
    pub async fn renew_lease(&self, ticket: &mut LeaseTicket, ttl: Duration) -> Result<bool> {
        let update = PutMode::Update(UpdateVersion {
            e_tag: Some(ticket.e_tag.clone()),
            version: None,
        });
        let payload = record(&ticket.holder, deadline(ttl));
        match self.put_conditional(&ticket.key, payload, update).await? {
            Some(e_tag) => {
                ticket.e_tag = e_tag;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Gives the lease up (marks it expired), so the next run anywhere
    /// need not wait for it to time out.
    pub async fn release_lease(&self, ticket: LeaseTicket) -> Result<()> {
        let update = PutMode::Update(UpdateVersion {
            e_tag: Some(ticket.e_tag),
            version: None,
        });
        self.put_conditional(&ticket.key, record("", 0), update)
            .await
            .map(|_| ())
    }
}
