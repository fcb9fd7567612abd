//! The policy engine: every request is decided by an ordered chain of
//! sandboxed WebAssembly components (the contract is `wit/policy.wit`).
//!
//! `engine` hosts components (wasmtime, limits, warm instances), `chain` holds
//! the configured, ordered set and decides requests, `request` builds the
//! contract's request from what the API layer knows, `builtin` carries the
//! bundled policies, `reload` watches the config and swaps chains, `sandbox`
//! bounds what an instance may allocate and print.

pub mod builtin;
pub mod chain;
pub mod engine;
pub mod reload;
pub mod request;
pub mod sandbox;

/// Host bindings generated from `wit/` (no hand-written glue).
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "wit",
        // Called with `.await` on the server's async workers: WASI calls that
        // would block (a sleep, a poll) wait as futures, not as blocked threads.
        exports: { default: async },
    });
}

pub use chain::{PolicyChain, PolicyError, Verdict};
pub use engine::{Limits, Outcome, PolicyEngine};
pub use request::Access;
