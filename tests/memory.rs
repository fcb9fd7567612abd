//! Large blobs stream through the registry: pushing and pulling 256 MiB must
//! not grow the process by anything like the blob's size. The server runs in
//! this test's process, so the process's resident set covers both sides.
//!
//! This file holds one test on purpose: other tests running alongside would
//! move the resident set too.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{header, TestRegistry};
use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

const BLOB_SIZE: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;
const ALLOWED_GROWTH: u64 = 64 * 1024 * 1024;

/// This process's resident set, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

/// Samples the resident set until stopped, keeping the peak.
struct PeakSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakSampler {
    fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(resident_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(resident_bytes(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self { peak, stop, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread");
        self.peak.load(Ordering::Relaxed).max(resident_bytes())
    }
}

/// Deterministic, incompressible-looking chunks, generated as they are sent.
fn chunk(index: u64) -> Bytes {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(CHUNK);
    while data.len() < CHUNK {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    Bytes::from(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_blob_streams_through_without_growing_memory() {
    let registry = TestRegistry::start().await;
    let session = registry.start_upload("large/blob").await;
    let chunks = BLOB_SIZE / CHUNK as u64;

    let before = resident_bytes();
    let sampler = PeakSampler::start();

    // Push: one streamed PATCH, hashed as it is generated.
    let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let body = {
        let hasher = Arc::clone(&hasher);
        futures_util::stream::iter(0..chunks).map(move |i| {
            let data = chunk(i);
            hasher.lock().expect("hasher lock").update(&data);
            Ok::<_, std::io::Error>(data)
        })
    };
    let patch = registry
        .http
        .patch(&session)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("PATCH reaches the registry");
    assert_eq!(patch.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(&patch, "range"),
        Some(format!("0-{}", BLOB_SIZE - 1))
    );
    let digest = format!(
        "sha256:{}",
        hex::encode(hasher.lock().expect("hasher lock").clone().finalize())
    );
    let session = registry.location(&patch);
    let put = registry
        .http
        .put(format!("{session}?digest={digest}"))
        .send()
        .await
        .expect("PUT reaches the registry");
    assert_eq!(put.status(), StatusCode::CREATED);

    // Pull: streamed and hashed, never collected.
    let get = registry
        .get(&format!("/v2/large/blob/blobs/{digest}"))
        .await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, "content-length"), Some(BLOB_SIZE.to_string()));
    let mut pulled = Sha256::new();
    let mut received = 0u64;
    let mut stream = get.bytes_stream();
    while let Some(frame) = stream.next().await {
        let frame = frame.expect("blob body streams");
        received += frame.len() as u64;
        pulled.update(&frame);
    }
    assert_eq!(received, BLOB_SIZE);
    assert_eq!(format!("sha256:{}", hex::encode(pulled.finalize())), digest);

    let peak = sampler.finish();
    let after = resident_bytes();
    let growth = peak.saturating_sub(before);
    eprintln!(
        "resident set: {} MiB before, {} MiB peak, {} MiB after",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    // On S3 an upload holds, by design, one part being filled and up to two
    // being sent (`storage.part_size`, 8 MiB): a fixed amount, not the blob's.
    let allowed = if common::s3_backend() {
        ALLOWED_GROWTH + 3 * 8 * 1024 * 1024
    } else {
        ALLOWED_GROWTH
    };
    assert!(
        growth < allowed,
        "resident set grew by {} MiB (from {} MiB to a peak of {} MiB, {} MiB at the end) \
         moving a {} MiB blob",
        growth >> 20,
        before >> 20,
        peak >> 20,
        after >> 20,
        BLOB_SIZE >> 20
    );
}
