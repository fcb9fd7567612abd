//! The token service's tokens (Docker's registry token specification):
//! short-lived access tokens and long-lived refresh tokens, JWTs signed with
//! the registry's own asymmetric key.
//!
//! A token records who the caller is and how they proved it (`src`), never
//! what they may do: its `access` claim is a hint for clients, and every
//! request is decided by the policy chain at the moment it arrives. The
//! source is checked again on every use (the user still in the htpasswd
//! file, the robot token not revoked, the issuer still trusted), so removing
//! a user or revoking a token holds for the tokens minted from it too.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::jwt::{self, JwtError, KeyError, PublicJwk, SigningKey, Unverified};
use super::IdentityError;

/// What a token's `access` claim lists (the spec's resource-actions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Whether a token may call the API, only get new access tokens, or only
/// be a web UI session (its cookie).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenUse {
    Access,
    Refresh,
    Session,
}

/// The claims of the registry's own tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    pub iss: String,
    /// The user; empty for an anonymous caller.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    pub token_use: TokenUse,
    /// How the caller proved who they are: `anonymous`, `htpasswd`,
    /// `robot:<id>`, `oidc:<issuer>`.
    pub src: String,
    /// Groups the source asserted (an ID token's claim, a robot token's
    /// list); `None`: the user's groups from `[groups]` at each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// For a refresh token from a password: the password's version, so a
    /// change of password ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<String>,
    /// When the credential the token came from ends (an ID token's `exp`,
    /// a robot token's expiry): no token minted from it, nor any minted
    /// from those, outlives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<i64>,
}

pub struct TokenService {
    key: SigningKey,
    jwk: PublicJwk,
    kid: String,
    /// `aud` of every token, and the challenge's `service`.
    service: String,
    /// `iss` of every token.
    issuer: String,
}

impl TokenService {
    /// Loads the key from `key_file`, or from (generating it first) the
    /// storage root's `portcullis/token.key` when there is no file.
    pub fn open(
        key_file: Option<&Path>,
        storage_root: &Path,
        service: &str,
    ) -> Result<Self, IdentityError> {
        let pem = match key_file {
            Some(path) => read_key(path)?,
            None => generated_key(&storage_root.join("portcullis/token.key"))?,
        };
        let key = SigningKey::from_pem(&pem).map_err(|e| IdentityError::Key(e.to_string()))?;
        let jwk = key.public_jwk();
        let kid = jwk.kid.clone().unwrap_or_default();
        Ok(Self {
            key,
            jwk,
            kid,
            service: service.to_owned(),
            issuer: format!("{service}/token"),
        })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs a token of `token_use` for `sub` valid for `lifetime` seconds.
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, KeyError> {
        let value = serde_json::to_value(claims).map_err(|e| KeyError::Generate(e.to_string()))?;
        self.key.sign(&self.kid, &value)
    }

    /// Fresh claims with the issuer, audience and times filled in.
    pub fn claims(&self, token_use: TokenUse, sub: &str, src: &str, lifetime: i64) -> TokenClaims {
        let now = jwt::now();
        TokenClaims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.service.clone(),
            exp: now.saturating_add(lifetime),
            nbf: now,
            iat: now,
            jti: jwt::random_token(12).unwrap_or_default(),
            access: Vec::new(),
            token_use,
            src: src.to_owned(),
            groups: None,
            ver: None,
            nat: None,
        }
    }

    /// Verifies one of our tokens: our key, issuer and audience, in its time.
    pub fn verify(&self, token: Unverified) -> Result<TokenClaims, JwtError> {
        if token.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(JwtError::UnknownKey(
                token.kid.as_deref().map(|k| k.chars().take(32).collect()),
            ));
        }
        let claims = token.verify(&self.jwk)?;
        if claims.get("iss").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        if !jwt::has_audience(&claims, &self.service) {
            return Err(JwtError::Audience);
        }
        jwt::check_times(&claims, 5)?;
        serde_json::from_value(serde_json::Value::Object(claims)).map_err(|_| JwtError::Malformed)
    }
}

/// Reads a private key, refusing one that everyone on the host can read.
fn read_key(path: &Path) -> Result<Vec<u8>, IdentityError> {
    use std::os::unix::fs::PermissionsExt as _;
    let read_error = |source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_error)?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(IdentityError::Key(format!(
            "{} is readable by every user of this host; chmod o-r it (0600, or 0640 for a group)",
            path.display()
        )));
    }
    std::fs::read(path).map_err(read_error)
}

/// The generated key: read if there, else made with mode 0600 (created
/// exclusively, so two processes starting at once agree on one key).
fn generated_key(path: &Path) -> Result<Vec<u8>, IdentityError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o070 != 0 {
            tracing::warn!(key = %path.display(), "the token-signing key is readable by its group; chmod 600 it");
        }
        return read_key(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Read {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let pem = SigningKey::generate_pem().map_err(|e| IdentityError::Key(e.to_string()))?;
    let staged = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()?;
        // A hard link fails if another process made the key meanwhile.
        match std::fs::hard_link(&staged, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    };
    let result = write();
    let _ = std::fs::remove_file(&staged);
    result.map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })?;
    tracing::info!(key = %path.display(), "generated the token-signing key");
    read_key(path)
}

/// Shares one service between the identity sources and the API.
pub type SharedTokens = Arc<TokenService>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = TokenService::open(None, dir.path(), "reg").unwrap();
        let key = dir.path().join("portcullis/token.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = TokenService::open(None, dir.path(), "reg").unwrap();
        assert_eq!(first.kid, second.kid);
        let claims = first.claims(TokenUse::Access, "alice", "htpasswd", 60);
        let token = first.sign(&claims).unwrap();
        let back = second.verify(Unverified::parse(&token).unwrap()).unwrap();
        assert_eq!(back.sub, "alice");
        // Another registry (another service name) refuses it.
        let other = TokenService::open(None, dir.path(), "other").unwrap();
        assert!(other.verify(Unverified::parse(&token).unwrap()).is_err());
    }
}
