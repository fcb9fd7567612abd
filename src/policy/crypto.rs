//! Signature verification for policies (`interface crypto` in
//! `wit/policy.wit`): ECDSA P-256 with SHA-256 and Ed25519, by `ring`, with
//! keys as PEM SubjectPublicKeyInfo (what `cosign generate-key-pair` writes).
//! Results are cached by the hash of key, message and signature, so a policy
//! that checks the same signature on every pull pays a hash, not a
//! verification. Bounded per evaluation like the other imports.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use sha2::Digest as _;

use super::bindings::portcullis::policy::crypto;
use super::engine::GuestState;

/// Verifications per evaluation.
pub const MAX_VERIFICATIONS: u32 = 64;
/// Longest message and key accepted.
const MAX_MESSAGE: usize = 1 << 20;
const MAX_KEY_PEM: usize = 16 << 10;
const MAX_SIGNATURE: usize = 1024;
/// Results kept; past that the cache starts over.
const CACHE_ENTRIES: usize = 16_384;

/// The DER prefixes of the two SubjectPublicKeyInfo forms accepted, before
/// the key's bytes: id-ecPublicKey with prime256v1 (an uncompressed point,
/// 65 bytes), and id-Ed25519 (32 bytes).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    EcdsaP256,
    Ed25519,
}

/// The algorithm and raw public key of a PEM `PUBLIC KEY`.
fn parse_key(pem: &str) -> Result<(Algorithm, Vec<u8>), String> {
    if pem.len() > MAX_KEY_PEM {
        return Err("the public key is longer than 16 KiB".into());
    }
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|rest| rest.trim_end().strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or("the public key is not a PEM PUBLIC KEY block")?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the public key's base64: {e}"))?;
    if der.len() == P256_SPKI_PREFIX.len() + 65 && der.starts_with(&P256_SPKI_PREFIX) {
        Ok((Algorithm::EcdsaP256, der[P256_SPKI_PREFIX.len()..].to_vec()))
    } else if der.len() == ED25519_SPKI_PREFIX.len() + 32 && der.starts_with(&ED25519_SPKI_PREFIX) {
        Ok((
            Algorithm::Ed25519,
            der[ED25519_SPKI_PREFIX.len()..].to_vec(),
        ))
    } else {
        Err("the public key is neither ECDSA P-256 (uncompressed) nor Ed25519".into())
    }
}

/// Whether `signature` is `key_pem`'s signature of `message`.
pub fn verify(key_pem: &str, message: &[u8], signature: &[u8]) -> Result<bool, String> {
    if message.len() > MAX_MESSAGE {
        return Err("the message is longer than 1 MiB".into());
    }
    if signature.len() > MAX_SIGNATURE {
        return Err("the signature is longer than 1 KiB".into());
    }
    let (algorithm, key) = parse_key(key_pem)?;
    let cache_key = cache_key(&key, message, signature);
    if let Some(known) = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&cache_key)
    {
        return Ok(*known);
    }
    let verifier: &'static dyn ring::signature::VerificationAlgorithm = match algorithm {
        Algorithm::EcdsaP256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        Algorithm::Ed25519 => &ring::signature::ED25519,
    };
    let valid = ring::signature::UnparsedPublicKey::new(verifier, &key)
        .verify(message, signature)
        .is_ok();
    let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(cache_key, valid);
    Ok(valid)
}

fn cache() -> &'static Mutex<HashMap<[u8; 32], bool>> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], bool>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The cache's key: each part length-prefixed, so no two inputs collide by
/// moving bytes from one part to the next.
fn cache_key(key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut hash = sha2::Sha256::new();
    for part in [key, message, signature] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

impl crypto::Host for GuestState {
    fn verify_signature(
        &mut self,
        public_key_pem: String,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, String> {
        if self.verifications >= MAX_VERIFICATIONS {
            return Err(format!(
                "at most {MAX_VERIFICATIONS} verifications per evaluation"
            ));
        }
        self.verifications += 1;
        verify(&public_key_pem, &message, &signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn pem(spki: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    #[test]
    fn p256_and_ed25519_signatures_verify_and_others_do_not() {
        let rng = SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
        let ec = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).expect("key");
        let ec_pem = pem(&[&P256_SPKI_PREFIX[..], ec.public_key().as_ref()].concat());
        let signature = ec.sign(&rng, b"payload").expect("sign");
        assert_eq!(verify(&ec_pem, b"payload", signature.as_ref()), Ok(true));
        assert_eq!(verify(&ec_pem, b"payloae", signature.as_ref()), Ok(false));
        // Cached, and still right.
        assert_eq!(verify(&ec_pem, b"payload", signature.as_ref()), Ok(true));

        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let ed = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key");
        let ed_pem = pem(&[&ED25519_SPKI_PREFIX[..], ed.public_key().as_ref()].concat());
        let signature = ed.sign(b"payload");
        assert_eq!(verify(&ed_pem, b"payload", signature.as_ref()), Ok(true));
        assert_eq!(verify(&ec_pem, b"payload", signature.as_ref()), Ok(false));
    }

    #[test]
    fn hostile_keys_are_refused_with_a_reason() {
        for key in [
            "",
            "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----",
        ] {
            assert!(verify(key, b"m", b"s").is_err(), "{key:?}");
        }
        let long = "A".repeat(MAX_KEY_PEM + 1);
        assert!(verify(&long, b"m", b"s").is_err());
    }
}
