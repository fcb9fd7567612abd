//! The bundled policies, compiled from `policies/` by `build.rs` and embedded
//! in the binary: a config names them as `builtin:<name>`.

const BUILTINS: [(&str, &[u8]); 4] = [
    (
        "repo-allowlist",
        include_bytes!(concat!(env!("OUT_DIR"), "/repo-allowlist.wasm")),
    ),
    (
        "group-access",
        include_bytes!(concat!(env!("OUT_DIR"), "/group-access.wasm")),
    ),
    (
        "tag-immutability",
        include_bytes!(concat!(env!("OUT_DIR"), "/tag-immutability.wasm")),
    ),
    (
        "signature",
        include_bytes!(concat!(env!("OUT_DIR"), "/signature.wasm")),
    ),
];

/// The component bytes of a bundled policy.
pub fn lookup(name: &str) -> Option<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The names of the bundled policies, for messages.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(n, _)| *n)
}
