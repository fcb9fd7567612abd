//! JSON Web Tokens and JWKS documents (`src/identity/jwt.rs`) and robot-token
//! credentials (`src/identity/robots.rs`): whatever a client or an issuer
//! sends, parsing and verification never panic, a token over the length
//! bound is refused before decoding, only the three asymmetric algorithms
//! parse, and nothing verifies under a key it was not signed with.
//!
//! Input: any bytes, read as UTF-8 (lossily) for tokens and credentials, and
//! as a JWKS document whose keys then verify the input as a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::identity::jwt::{Algorithm, JwkSet, JwtError, PublicJwk, Unverified, MAX_TOKEN};
use portcullis::identity::robots;

/// An Ed25519 key nobody holds the private half of (RFC 8037's example
/// public key): no input may verify under it.
fn foreign_key() -> PublicJwk {
    serde_json::from_value(serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    }))
    .expect("a valid JWK")
}

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let raw: &str = &raw;
    match Unverified::parse(raw) {
        Ok(token) => {
            assert!(raw.len() <= MAX_TOKEN);
            assert!(matches!(
                token.alg,
                Algorithm::Rs256 | Algorithm::Es256 | Algorithm::EdDsa
            ));
            let _ = token.issuer();
            assert!(
                token.verify(&foreign_key()).is_err(),
                "verified under a key nobody holds"
            );
        }
        Err(JwtError::TooLong) => assert!(raw.len() > MAX_TOKEN),
        Err(_) => {}
    }
    if let Some((id, secret)) = robots::parse(raw) {
        assert_eq!(id.len(), 16);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!((20..=128).contains(&secret.len()));
    }
    // As a JWKS document: every key it yields checks a signature without panicking.
    if let Ok(keys) = JwkSet::parse(data) {
        for key in keys {
            let token = format!("eyJhbGciOiJFZERTQSJ9.e30.{}", "A".repeat(86));
            if let Ok(parsed) = Unverified::parse(&token) {
                let _ = parsed.verify(&key);
            }
        }
    }
});
