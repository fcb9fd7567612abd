//! The policy engine: every request is decided by an ordered chain of
//! sandboxed WebAssembly components (the contract is `wit/policy.wit`).
//!
//! `engine` hosts components (wasmtime, limits, warm instances, both contract
//! versions), `chain` holds the configured, ordered set and decides requests
//! (audit mode, the two stages of a pull), `request` builds the contract's
//! request from what the API layer knows, `facts` describes a manifest's
//! image for it, `lookups`, `crypto` and `sandbox` (its log) are the imports
//! a policy may call, `decisions` records what the chain decided, `builtin`
//! carries the bundled policies, `artifacts` loads `oci://` modules,
//! `reload` watches the config and swaps chains, `authoring` and `scaffold`
//! are `policy test|replay|audit|new`.

pub mod artifacts;
pub mod authoring;
pub mod builtin;
pub mod chain;
pub mod crypto;
pub mod decisions;
pub mod engine;
pub mod facts;
pub mod lookups;
pub mod reload;
pub mod request;
pub mod sandbox;
pub mod scaffold;

/// Host bindings of the current contract, `portcullis:policy@0.2.0`,
/// generated from `wit/` (no hand-written glue).
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "wit",
        // Called with `.await` on the server's async workers: WASI calls that
        // would block (a sleep, a poll) wait as futures, not as blocked threads,
        // and so do lookups that wait on the store.
        imports: { "portcullis:policy/lookup": async },
        exports: { default: async },
    });
}

/// Host bindings of contract 0.1.0 (`wit/v0.1/`), for components built
/// against it: records are structural, so each version needs its own types.
pub mod bindings_v01 {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "wit/v0.1",
        exports: { default: async },
    });
}

pub use chain::{PolicyChain, PolicyError, Verdict};
pub use engine::{Limits, Outcome, PolicyEngine};
pub use request::Access;
