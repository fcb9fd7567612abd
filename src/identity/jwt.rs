//! JSON Web Tokens, verified and signed with asymmetric algorithms only.
//!
//! The parser takes nothing on trust: a token longer than [`MAX_TOKEN`] is
//! refused before any decoding; the header's `alg` must be one of RS256,
//! ES256 or EdDSA and must match the key's type (an RSA or OKP key never
//! verifies an HMAC, `none` is never accepted); `crit` headers are refused.
//! Claims are only read after the signature verified, except `iss`, which
//! picks the issuer whose keys to try ([`Unverified::issuer`]).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde::Deserialize;
use sha2::Digest as _;

/// The longest token looked at (a JWT with a few dozen groups is ~2 KiB).
pub const MAX_TOKEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JSON Web Token")]
    Malformed,
    #[error("the token is longer than {MAX_TOKEN} bytes")]
    TooLong,
    #[error("signing algorithm {0:?} is not accepted (RS256, ES256, EdDSA only)")]
    Algorithm(String),
    #[error("the token names a key ({0:?}) the issuer does not publish")]
    UnknownKey(Option<String>),
    #[error("the key does not fit the token's algorithm")]
    KeyMismatch,
    #[error("bad signature")]
    Signature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    Audience,
    #[error("the token is from another issuer")]
    Issuer,
    #[error("the token lacks the claim {0}")]
    MissingClaim(&'static str),
}

/// Algorithms accepted anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Rs256,
    Es256,
    EdDsa,
}

impl Algorithm {
    fn parse(name: &str) -> Result<Self, JwtError> {
        match name {
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            "EdDSA" => Ok(Self::EdDsa),
            other => Err(JwtError::Algorithm(other.chars().take(32).collect())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A token split and decoded, its signature not yet checked.
pub struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
    payload: serde_json::Map<String, serde_json::Value>,
}

impl Unverified {
    pub fn parse(token: &str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN {
            return Err(JwtError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        let header: Header =
            serde_json::from_slice(&decode(h)?).map_err(|_| JwtError::Malformed)?;
        if header.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        let alg = Algorithm::parse(&header.alg)?;
        let payload = serde_json::from_slice(&decode(p)?).map_err(|_| JwtError::Malformed)?;
        let signature = decode(s)?;
        Ok(Self {
            alg,
            kid: header.kid,
            signing_input: token.as_bytes()[..h.len() + 1 + p.len()].to_vec(),
            signature,
            payload,
        })
    }

    /// The `iss` claim before verification: only to choose whose keys to try.
    pub fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(|v| v.as_str())
    }

    /// Checks the signature with `key`; the claims are returned only if it holds.
    pub fn verify(
        self,
        key: &PublicJwk,
    ) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
        key.verify(self.alg, &self.signing_input, &self.signature)?;
        Ok(self.payload)
    }
}

/// A public key as a JWKS publishes it (RFC 7517/7518/8037).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// A JWKS document: keys of types we cannot use are skipped, not errors.
#[derive(Debug, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<serde_json::Value>,
}

impl JwkSet {
    /// The usable signing keys of a JWKS document.
    pub fn parse(bytes: &[u8]) -> Result<Vec<PublicJwk>, serde_json::Error> {
        let set: JwkSet = serde_json::from_slice(bytes)?;
        Ok(set
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<PublicJwk>(k).ok())
            .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
            .filter(|k| matches!(k.kty.as_str(), "RSA" | "EC" | "OKP"))
            .collect())
    }
}

impl PublicJwk {
    fn field(&self, value: &Option<String>) -> Result<Vec<u8>, JwtError> {
        value
            .as_deref()
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .ok_or(JwtError::KeyMismatch)
    }

    fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> Result<(), JwtError> {
        if self.alg.as_deref().is_some_and(|a| a != alg.name()) {
            return Err(JwtError::KeyMismatch);
        }
        let result = match (alg, self.kty.as_str(), self.crv.as_deref()) {
            (Algorithm::Rs256, "RSA", _) => signature::RsaPublicKeyComponents {
                n: self.field(&self.n)?,
                e: self.field(&self.e)?,
            }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig),
            (Algorithm::Es256, "EC", Some("P-256")) => {
                let (x, y) = (self.field(&self.x)?, self.field(&self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwtError::KeyMismatch);
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
            }
            (Algorithm::EdDsa, "OKP", Some("Ed25519")) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, self.field(&self.x)?)
                    .verify(message, sig)
            }
            _ => return Err(JwtError::KeyMismatch),
        };
        result.map_err(|_| JwtError::Signature)
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Checks `exp` (required) and `nbf` (if present) with `leeway` seconds.
pub fn check_times(
    claims: &serde_json::Map<String, serde_json::Value>,
    leeway: i64,
) -> Result<i64, JwtError> {
    let now = now();
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64())
        .ok_or(JwtError::MissingClaim("exp"))?;
    if exp.saturating_add(leeway) <= now {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or(JwtError::Malformed)?;
        if nbf.saturating_sub(leeway) > now {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(exp)
}

/// Whether `aud` (a string or a list) names `audience`.
pub fn has_audience(claims: &serde_json::Map<String, serde_json::Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == audience,
        Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// The registry's own signing key: Ed25519 (what it generates) or ECDSA
/// P-256, from a PKCS#8 PEM file.
pub enum SigningKey {
    Ed25519(signature::Ed25519KeyPair),
    P256(signature::EcdsaKeyPair),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no PKCS#8 private key in the file")]
    NoKey,
    #[error("the key is neither Ed25519 nor ECDSA P-256 in PKCS#8 ({0})")]
    Unsupported(String),
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

impl SigningKey {
    /// A new Ed25519 key, as PKCS#8 PEM.
    pub fn generate_pem() -> Result<String, KeyError> {
        let rng = SystemRandom::new();
        let doc = signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let body = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let mut reader = pem;
        let der = loop {
            match rustls_pemfile::read_one(&mut reader) {
                Ok(Some(rustls_pemfile::Item::Pkcs8Key(der))) => break der,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Err(KeyError::NoKey),
            }
        };
        let der = der.secret_pkcs8_der();
        if let Ok(key) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(Self::Ed25519(key));
        }
        let rng = SystemRandom::new();
        signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map(Self::P256)
            .map_err(|e| KeyError::Unsupported(e.to_string()))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ed25519(_) => Algorithm::EdDsa,
            Self::P256(_) => Algorithm::Es256,
        }
    }

    /// The public half as a JWK, its `kid` a digest of the public key.
    pub fn public_jwk(&self) -> PublicJwk {
        let public = match self {
            Self::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Self::P256(k) => k.public_key().as_ref().to_vec(),
        };
        let kid = URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(&public)[..12]);
        let mut jwk = PublicJwk {
            kty: String::new(),
            kid: Some(kid),
            alg: Some(self.algorithm().name().to_owned()),
            use_: Some("sig".into()),
            crv: None,
            n: None,
            e: None,
            x: None,
            y: None,
        };
        match self {
            Self::Ed25519(_) => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(URL_SAFE_NO_PAD.encode(&public));
            }
            Self::P256(_) => {
                // Uncompressed point: 0x04 || x || y.
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = public.get(1..33).map(|x| URL_SAFE_NO_PAD.encode(x));
                jwk.y = public.get(33..65).map(|y| URL_SAFE_NO_PAD.encode(y));
            }
        }
        jwk
    }

    /// A compact JWS of `claims`, its header naming `kid`.
    pub fn sign(&self, kid: &str, claims: &serde_json::Value) -> Result<String, KeyError> {
        let header =
            serde_json::json!({ "alg": self.algorithm().name(), "typ": "JWT", "kid": kid });
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = match self {
            Self::Ed25519(k) => k.sign(token.as_bytes()).as_ref().to_vec(),
            Self::P256(k) => k
                .sign(&SystemRandom::new(), token.as_bytes())
                .map_err(|e| KeyError::Generate(e.to_string()))?
                .as_ref()
                .to_vec(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }
}

/// Random bytes from the OS.
pub fn random_bytes(bytes: usize) -> Result<Vec<u8>, KeyError> {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(buf)
}

/// Random bytes from the OS, as URL-safe base64.
pub fn random_token(bytes: usize) -> Result<String, KeyError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn signs_and_verifies_with_both_key_types() {
        let ed = SigningKey::from_pem(SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
        let claims = serde_json::json!({ "sub": "alice", "exp": now() + 60 });
        let token = ed.sign("k1", &claims).unwrap();
        let parsed = Unverified::parse(&token).unwrap();
        assert_eq!(parsed.alg, Algorithm::EdDsa);
        let verified = parsed.verify(&ed.public_jwk()).unwrap();
        assert_eq!(verified["sub"], "alice");
        // P-256 from a PKCS#8 document ring makes.
        let rng = SystemRandom::new();
        let doc = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(doc.as_ref())
        );
        let ec = SigningKey::from_pem(pem.as_bytes()).unwrap();
        let token = ec.sign("k2", &claims).unwrap();
        assert!(Unverified::parse(&token)
            .unwrap()
            .verify(&ec.public_jwk())
            .is_ok());
        // Each key refuses the other's tokens.
        assert_eq!(
            Unverified::parse(&token)
                .unwrap()
                .verify(&ed.public_jwk())
                .err(),
            Some(JwtError::KeyMismatch)
        );
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key_is_tried() {
        let payload = b64(serde_json::json!({ "sub": "x", "exp": now() + 60 }));
        for alg in ["none", "HS256", "HS512", "RS512", "PS256", ""] {
            let token = format!("{}.{payload}.", b64(serde_json::json!({ "alg": alg })));
            assert!(
                matches!(Unverified::parse(&token), Err(JwtError::Algorithm(_))),
                "{alg}"
            );
        }
        let crit = format!(
            "{}.{payload}.AA",
            b64(serde_json::json!({ "alg": "EdDSA", "crit": ["b64"] }))
        );
        assert_eq!(Unverified::parse(&crit).err(), Some(JwtError::Malformed));
        assert_eq!(
            Unverified::parse(&"a".repeat(MAX_TOKEN + 1)).err(),
            Some(JwtError::TooLong)
        );
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let key = SigningKey::from_pem(SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
        let token = key
            .sign("k", &serde_json::json!({ "sub": "bob", "exp": now() + 60 }))
            .unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(serde_json::json!({ "sub": "admin", "exp": now() + 60 }));
        parts[1] = &forged;
        let result = Unverified::parse(&parts.join("."))
            .unwrap()
            .verify(&key.public_jwk());
        assert_eq!(result.err(), Some(JwtError::Signature));
    }

    #[test]
    fn times_and_audiences() {
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert_eq!(
            check_times(&claims(serde_json::json!({ "exp": now() - 120 })), 30).err(),
            Some(JwtError::Expired)
        );
        assert_eq!(
            check_times(
                &claims(serde_json::json!({ "exp": now() + 600, "nbf": now() + 300 })),
                30
            )
            .err(),
            Some(JwtError::NotYetValid)
        );
        assert_eq!(
            check_times(&claims(serde_json::json!({})), 30).err(),
            Some(JwtError::MissingClaim("exp"))
        );
        assert!(has_audience(
            &claims(serde_json::json!({ "aud": ["a", "b"] })),
            "b"
        ));
        assert!(!has_audience(
            &claims(serde_json::json!({ "aud": "a" })),
            "b"
        ));
    }
}
