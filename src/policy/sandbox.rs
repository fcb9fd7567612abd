//! What one policy instance may take from the host, and the accounting that
//! holds it to that: memory summed over all its linear memories and tables,
//! counts of instances, memories and tables, and a budget shared by every
//! instance of every policy; plus the bounded buffer a guest's stdout and
//! stderr go to. The engine (`engine.rs`) installs these in each store; this
//! module knows nothing of components or requests.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

// What the bundled policies and the examples take, measured with `portcullis
// policy test` (its `memory:` line) and, for instances, by counting the
// instantiations in each component (`wasm-tools print`):
//
// | component              | instances | memories | tables | elements | bytes held |
// |------------------------|----------:|---------:|-------:|---------:|-----------:|
// | bundled (Rust)         |         3 |        1 |      2 |  107-110 |     130 KB |
// | c-max-size (C)         |         2 |        1 |      1 |        1 |     128 KB |
// | js-require-source (JS) |         1 |        1 |      1 |    7,688 |     9.6 MB |
// | python-non-root        |        14 |        1 |      2 |    5,757 |    13.0 MB |

/// Core instances one policy instance may create (Python needs 14).
pub const MAX_INSTANCES: usize = 24;
/// Linear memories per policy instance, all core instances together (every
/// component above has 1).
pub const MAX_MEMORIES: usize = 4;
/// Tables per policy instance (at most 2 above).
pub const MAX_TABLES: usize = 8;
/// Table elements per policy instance, all tables together (at most 7,688
/// above: 13 times that).
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// What one table element costs the host, counted against the memory caps
/// (a function reference is a pointer, plus wasmtime's lazy-init bit).
const TABLE_ELEMENT_BYTES: usize = 16;
/// Bytes of stdout and of stderr kept per evaluation; the rest is dropped.
pub const OUTPUT_CAP: usize = 4096;

/// Memory every policy instance together may hold (`policy.total_memory`).
/// Reservations are made as memories and tables grow and given back when the
/// instance's store is dropped.
#[derive(Debug)]
pub struct MemoryBudget {
    cap: AtomicUsize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: AtomicUsize::new(cap),
            used: AtomicUsize::new(0),
        })
    }

    /// A reloaded config's `policy.total_memory`: the budget is the
    /// engine's, shared by the chain in force and one being replaced.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Release);
    }

    fn reserve(&self, bytes: usize) -> bool {
        let cap = self.cap();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= cap)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes reserved now, by all instances.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Acquire)
    }

    /// Past three quarters of the budget, warm instances are dropped after
    /// use instead of being pooled, so that new instances find room.
    pub fn under_pressure(&self) -> bool {
        self.used() > self.cap() / 4 * 3
    }
}

/// The `ResourceLimiter` of one store (one policy instance).
pub struct GuestLimiter {
    /// `policy.memory`: linear memories and tables of this instance together.
    memory_cap: usize,
    budget: Arc<MemoryBudget>,
    /// Bytes this instance holds (all memories, and tables at
    /// `TABLE_ELEMENT_BYTES` an element), all of it reserved in `budget`.
    held: usize,
    table_elements: usize,
    memories: usize,
    tables: usize,
    /// The last growth allowed (bytes, table elements): wasmtime may still
    /// fail it after asking (`*_grow_failed`), and then it is given back.
    last_growth: (usize, usize),
    /// Whether a growth was refused for `policy.total_memory`: the
    /// evaluation failed for want of room, not through the guest's fault.
    out_of_budget: bool,
}

/// What an instance held at its largest, for `portcullis policy test`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: usize,
    pub memories: usize,
    pub tables: usize,
    pub table_elements: usize,
}

impl GuestLimiter {
    pub fn new(memory_cap: usize, budget: Arc<MemoryBudget>) -> Self {
        Self {
            memory_cap,
            budget,
            held: 0,
            table_elements: 0,
            memories: 0,
            tables: 0,
            last_growth: (0, 0),
            out_of_budget: false,
        }
    }

    /// Whether a growth was refused because all instances together hold
    /// `policy.total_memory`.
    pub fn out_of_budget(&self) -> bool {
        self.out_of_budget
    }

    fn give_back_last_growth(&mut self) {
        let (bytes, elements) = std::mem::take(&mut self.last_growth);
        self.held -= bytes;
        self.table_elements -= elements;
        self.budget.release(bytes);
    }

    pub fn usage(&self) -> Usage {
        Usage {
            bytes: self.held,
            memories: self.memories,
            tables: self.tables,
            table_elements: self.table_elements,
        }
    }

    /// Takes `bytes` more for this instance, or says why not (the guest traps).
    fn take(&mut self, bytes: usize, what: &str) -> wasmtime::Result<bool> {
        let total = self.held.saturating_add(bytes);
        if total > self.memory_cap {
            wasmtime::bail!(
                "exceeded its memory limit: {what} would bring it to {total} bytes \
                 in all its memories and tables, over policy.memory ({} bytes)",
                self.memory_cap
            );
        }
        if !self.budget.reserve(bytes) {
            self.out_of_budget = true;
            wasmtime::bail!(
                "exceeded the memory limit of all policies together: {what} would pass \
                 policy.total_memory ({} bytes)",
                self.budget.cap()
            );
        }
        self.held = total;
        self.last_growth = (bytes, 0);
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the memory's own declared maximum the growth fails anyway
        // (after asking): nothing to reserve, and no trap for a guest that
        // probes it (an allocator does).
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        // Wasmtime asks with `current` 0 when it creates a memory.
        self.take(desired.saturating_sub(current), "growing a memory")?;
        if current == 0 {
            self.memories += 1;
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let added = desired.saturating_sub(current);
        let elements = self.table_elements.saturating_add(added);
        if elements > MAX_TABLE_ELEMENTS {
            wasmtime::bail!(
                "exceeded its table limit: {elements} elements in all its tables, \
                 over {MAX_TABLE_ELEMENTS}"
            );
        }
        self.take(added.saturating_mul(TABLE_ELEMENT_BYTES), "growing a table")?;
        self.table_elements = elements;
        self.last_growth.1 = added;
        if current == 0 {
            self.tables += 1;
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.give_back_last_growth();
        Ok(())
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.give_back_last_growth();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

/// A guest's stdout or stderr: the first `OUTPUT_CAP` bytes written since the
/// last [`take`](Self::take) are kept, the rest dropped. Writes never block
/// and never fail, so printing cannot stall or break an evaluation.
#[derive(Clone, Default)]
pub struct CapturedOutput {
    buffer: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

impl CapturedOutput {
    fn append(&self, bytes: &[u8]) {
        let mut captured = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let room = OUTPUT_CAP.saturating_sub(captured.bytes.len());
        let kept = bytes.len().min(room);
        captured.bytes.extend_from_slice(&bytes[..kept]);
        captured.dropped = captured.dropped.saturating_add(bytes.len() - kept);
    }

    /// What was written since the last call (lossy UTF-8, with a note of how
    /// much was dropped), or `None` if nothing was.
    pub fn take(&self) -> Option<String> {
        let mut captured = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if captured.bytes.is_empty() && captured.dropped == 0 {
            return None;
        }
        let mut text = String::from_utf8_lossy(&captured.bytes).into_owned();
        if captured.dropped > 0 {
            text.push_str(&format!(" [{} more bytes dropped]", captured.dropped));
        }
        *captured = Captured::default();
        Some(text)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memories_and_tables_count_together_against_the_instance_cap() {
        let budget = MemoryBudget::new(1 << 30);
        let mut limiter = GuestLimiter::new(1 << 20, Arc::clone(&budget));
        assert!(limiter.memory_growing(0, 512 << 10, None).unwrap());
        // A second memory of the same size fits exactly; a third does not.
        assert!(limiter.memory_growing(0, 512 << 10, None).unwrap());
        assert!(limiter.memory_growing(0, 64 << 10, None).is_err());
        assert!(limiter.table_growing(0, 10, None).is_err());
        assert_eq!(budget.used(), 1 << 20);
        drop(limiter);
        assert_eq!(budget.used(), 0, "a dropped instance gives its memory back");
    }

    #[test]
    fn table_elements_are_capped_and_cost_memory() {
        let budget = MemoryBudget::new(1 << 30);
        let mut limiter = GuestLimiter::new(64 << 20, Arc::clone(&budget));
        assert!(limiter.table_growing(0, 1000, None).unwrap());
        assert_eq!(budget.used(), 1000 * TABLE_ELEMENT_BYTES);
        assert!(limiter
            .table_growing(1000, MAX_TABLE_ELEMENTS + 1, None)
            .is_err());
        assert_eq!(limiter.usage().table_elements, 1000);
    }

    #[test]
    fn growth_past_a_declared_maximum_or_failed_later_reserves_nothing() {
        let budget = MemoryBudget::new(1 << 30);
        let mut limiter = GuestLimiter::new(64 << 20, Arc::clone(&budget));
        assert!(limiter.memory_growing(0, 1 << 20, Some(2 << 20)).unwrap());
        assert!(!limiter
            .memory_growing(1 << 20, 4 << 20, Some(2 << 20))
            .unwrap());
        assert_eq!(budget.used(), 1 << 20);
        // Allowed by the limiter, then failed by wasmtime: given back.
        assert!(limiter
            .memory_growing(1 << 20, 2 << 20, Some(2 << 20))
            .unwrap());
        limiter
            .memory_grow_failed(wasmtime::format_err!("no room"))
            .unwrap();
        assert_eq!(budget.used(), 1 << 20);
        assert_eq!(limiter.usage().bytes, 1 << 20);
    }

    #[test]
    fn the_shared_budget_stops_growth_across_instances() {
        let budget = MemoryBudget::new(3 << 20);
        let mut a = GuestLimiter::new(4 << 20, Arc::clone(&budget));
        let mut b = GuestLimiter::new(4 << 20, Arc::clone(&budget));
        assert!(a.memory_growing(0, 5 << 19, None).unwrap());
        assert!(budget.under_pressure(), "2.5 of 3 MiB held");
        assert!(b.memory_growing(0, 1 << 20, None).is_err());
        assert!(b.out_of_budget());
        assert!(b.memory_growing(0, 1 << 19, None).unwrap());
        drop(a);
        assert_eq!(budget.used(), 1 << 19);
    }

    #[test]
    fn output_is_kept_up_to_the_cap_and_reset_by_take() {
        let out = CapturedOutput::default();
        assert_eq!(out.take(), None);
        out.append(b"hello ");
        out.append(&vec![b'x'; OUTPUT_CAP]);
        let text = out.take().unwrap();
        assert!(text.starts_with("hello xx"));
        assert!(text.ends_with(" [6 more bytes dropped]"), "{text}");
        assert_eq!(out.take(), None);
    }
}

/// Messages one evaluation may write with the contract's `log` import, and
/// the longest kept of each (longer ones are cut).
pub const MAX_LOG_MESSAGES: u32 = 16;
pub const MAX_LOG_MESSAGE_BYTES: usize = 1024;

/// A guest's `log` calls during one evaluation: written to the operator's
/// log under `portcullis::policy` with the policy's name (control characters
/// replaced, so a message cannot forge log lines), and to the captured
/// output, which `policy test` shows.
#[derive(Default)]
pub struct GuestLog {
    pub(super) policy: Arc<str>,
    written: u32,
    dropped: u32,
}

impl GuestLog {
    pub fn new(policy: Arc<str>) -> Self {
        Self {
            policy,
            written: 0,
            dropped: 0,
        }
    }

    /// Starts a new evaluation's count; how many messages the last one dropped.
    pub fn reset(&mut self) -> u32 {
        self.written = 0;
        std::mem::take(&mut self.dropped)
    }

    /// Writes one message at `level` (0 debug, 1 info, 2 warn), unless this
    /// evaluation has written its share.
    pub fn write(&mut self, level: u8, message: &str, output: &CapturedOutput) {
        if self.written >= MAX_LOG_MESSAGES {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.written += 1;
        let mut end = message.len().min(MAX_LOG_MESSAGE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let clean: String = message[..end]
            .chars()
            .map(|c| {
                // Control characters would start forged lines; bidirectional
                // overrides would make a line read other than it is.
                let bidi = ('\u{202A}'..='\u{202E}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c);
                if c.is_control() || bidi {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        let policy = &*self.policy;
        let name = match level {
            0 => {
                tracing::debug!(target: "portcullis::policy", policy, "{clean}");
                "debug"
            }
            1 => {
                tracing::info!(target: "portcullis::policy", policy, "{clean}");
                "info"
            }
            _ => {
                tracing::warn!(target: "portcullis::policy", policy, "{clean}");
                "warn"
            }
        };
        output.append(format!("[{name}] {clean}\n").as_bytes());
    }
}
