//! Who is asking. Identity sources: an htpasswd file (`htpasswd.rs`), robot
//! and personal tokens in the content store (`robots.rs`), OpenID Connect
//! issuers (`oidc.rs`); and the token service (`tokens.rs`) that turns any
//! of them, or no credentials at all, into the short-lived Bearer tokens of
//! Docker's token specification. Groups come from `[groups]`, joined by
//! what an OIDC token or a robot token asserts.
//!
//! This module decides identity only; what an identity may do is the
//! policies'. Every credential goes through one [`LoginThrottle`], and the
//! accounts (htpasswd, `[groups]`, OIDC settings) are swapped atomically on
//! the same reload as the policy chain.

pub mod htpasswd;
pub mod jwt;
pub mod oidc;
pub mod robots;
pub mod throttle;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use sha2::Digest as _;

use crate::config::Config;
use crate::storage::Storage;
use htpasswd::{PasswordCache, Passwords};
use jwt::{JwtError, Unverified};
use throttle::{LoginThrottle, ThrottleLimits, Throttled};
use tokens::{AccessEntry, TokenClaims, TokenService, TokenUse};

/// The caller, as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// `None` for an anonymous request.
    pub subject: Option<String>,
    /// Sorted group names.
    pub groups: Vec<String>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self::default()
    }

    pub fn is_anonymous(&self) -> bool {
        self.subject.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the Authorization header is neither Basic credentials nor a Bearer token")]
    Malformed,
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("invalid token: {0}")]
    BadToken(String),
    #[error("too many failed logins or logins at once; retry in {} s", retry_after.as_secs())]
    Throttled { retry_after: Duration },
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

impl From<Throttled> for AuthError {
    fn from(t: Throttled) -> Self {
        AuthError::Throttled {
            retry_after: t.retry_after,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("htpasswd file {path}, line {line}: {reason}")]
    Entry {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("token-signing key: {0}")]
    Key(String),
    #[error("[[auth.oidc]] {0}")]
    Oidc(String),
}

/// The accounts of one (re)load of the config.
struct Accounts {
    enabled: bool,
    passwords: Option<Passwords>,
    /// user -> sorted groups, from `[groups]`.
    groups: HashMap<String, Vec<String>>,
    oidc: oidc::Issuers,
}

impl Accounts {
    fn load(config: &Config, previous: Option<&Accounts>) -> Result<Self, IdentityError> {
        let passwords = match &config.auth.htpasswd {
            Some(path) => Some(Passwords::read(path)?),
            None => None,
        };
        Ok(Self {
            enabled: config.accounts_enabled(),
            passwords,
            groups: invert_groups(&config.groups),
            oidc: oidc::Issuers::from_config(&config.auth.oidc, previous.map(|p| &p.oidc))?,
        })
    }

    /// Groups of `user`: the source's own list if it has one, joined with `[groups]`.
    fn groups(&self, user: &str, asserted: Option<&[String]>, join: bool) -> Vec<String> {
        let mut groups: Vec<String> = asserted.map(<[String]>::to_vec).unwrap_or_default();
        if join || asserted.is_none() {
            groups.extend(self.groups.get(user).cloned().unwrap_or_default());
        }
        groups.sort();
        groups.dedup();
        groups
    }
}

/// Accounts read from a new config, not yet in force.
pub struct PreparedAccounts(Accounts);

/// The longest user name looked at (longer ones are refused unverified).
const MAX_USER: usize = 256;

/// Which tokens a place accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accept {
    /// The registry's own (access or refresh) and issuers' ID tokens.
    Any,
    /// Only an OIDC issuer's token (a password at `/token`).
    Issuer,
    /// Only the registry's own (a refresh token).
    Ours,
}

/// A caller who proved who they are (or chose not to), and how.
#[derive(Debug, Clone)]
pub struct Login {
    pub identity: Identity,
    /// `anonymous`, `htpasswd`, `robot:<id>`, `oidc:<issuer>`.
    pub source: String,
    /// Groups the source asserted, carried in tokens.
    pub asserted_groups: Option<Vec<String>>,
    /// When the credential itself ends (an ID token's `exp`).
    pub not_after: Option<i64>,
    /// The password's version, for refresh tokens.
    pub version: Option<String>,
}

impl Login {
    fn anonymous() -> Self {
        Self {
            identity: Identity::anonymous(),
            source: "anonymous".into(),
            asserted_groups: None,
            not_after: None,
            version: None,
        }
    }
}

/// The caller of an API request.
#[derive(Debug, Clone)]
pub struct Presented {
    pub identity: Identity,
    /// Whether credentials or a token were presented (an anonymous token counts).
    pub credentials: bool,
}

/// A signed-in web UI session.
#[derive(Debug, Clone)]
pub struct Session {
    pub login: Login,
    /// The session id (the token's `jti`): its CSRF secret and sign-out key.
    pub id: String,
    pub expires: i64,
    /// The cookie value, when the session was just issued.
    pub token: Option<String>,
}

/// A token response of `/token`.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_in: i64,
    pub issued_at: i64,
    pub refresh_token: Option<String>,
}

enum CachedToken {
    /// One of ours; the source is checked again on each use.
    Ours(Arc<TokenClaims>),
    /// An OIDC issuer's.
    Oidc {
        issuer: String,
        login: oidc::OidcLogin,
    },
}

/// Verified tokens by the SHA-256 of their text (a signature check costs
/// 50-100 µs, more than a manifest GET), until they expire.
struct TokenCache {
    /// Token hash -> (expiry, what it verified as).
    entries: Mutex<HashMap<TokenHash, (i64, Arc<CachedToken>)>>,
}

type TokenHash = [u8; 32];

const TOKEN_CACHE_ENTRIES: usize = 10_000;

impl TokenCache {
    fn get(&self, key: &[u8; 32]) -> Option<Arc<CachedToken>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (exp, entry) = entries.get(key)?;
        (*exp > jwt::now()).then(|| Arc::clone(entry))
    }

    fn put(&self, key: [u8; 32], exp: i64, entry: Arc<CachedToken>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= TOKEN_CACHE_ENTRIES {
            let now = jwt::now();
            entries.retain(|_, (exp, _)| *exp > now);
            if entries.len() >= TOKEN_CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (exp, entry));
    }
}

pub struct Identities {
    accounts: ArcSwap<Accounts>,
    tokens: TokenService,
    robots: Arc<robots::Robots>,
    throttle: LoginThrottle,
    passwords: PasswordCache,
    verified: TokenCache,
    token_ttl: i64,
    refresh_ttl: i64,
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Identities {
    pub fn new(config: &Config, storage: Storage) -> Result<Self, IdentityError> {
        let accounts = Accounts::load(config, None)?;
        let tokens = TokenService::open(
            config.auth.token_key.as_deref(),
            &config.storage.root,
            &config.auth.realm,
        )?;
        Ok(Self {
            accounts: ArcSwap::from_pointee(accounts),
            tokens,
            robots: Arc::new(robots::Robots::new(storage)),
            throttle: LoginThrottle::new(ThrottleLimits {
                concurrent: config.auth.max_verifications,
                per_user: config.auth.failed_logins_per_user,
                per_address: config.auth.failed_logins_per_address,
            }),
            passwords: PasswordCache::new(config.auth.cache_ttl),
            verified: TokenCache {
                entries: Mutex::new(HashMap::new()),
            },
            token_ttl: seconds(config.auth.token_ttl),
            refresh_ttl: seconds(config.auth.refresh_token_ttl),
        })
    }

    /// Starts the background work of a serving process: the robot-token
    /// list's refresh and the first fetch of the OIDC issuers' keys.
    pub fn start(&self, robot_refresh: Duration) {
        self.robots.spawn_refresh(robot_refresh);
        self.accounts.load().oidc.warm();
    }

    /// Reads the accounts of `config` without putting them in force: the
    /// first half of a reload, whose second half ([`commit`](Self::commit))
    /// runs only if the policy chain loaded too.
    pub fn prepare(&self, config: &Config) -> Result<PreparedAccounts, IdentityError> {
        let previous = self.accounts.load_full();
        Ok(PreparedAccounts(Accounts::load(config, Some(&previous))?))
    }

    /// Puts prepared accounts in force; remembered password checks and
    /// verified tokens they no longer vouch for are dropped.
    pub fn commit(&self, prepared: PreparedAccounts) {
        let accounts = prepared.0;
        self.passwords.retain_valid(accounts.passwords.as_ref());
        accounts.oidc.warm();
        self.accounts.store(Arc::new(accounts));
        self.verified
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether callers are identified at all.
    pub fn enabled(&self) -> bool {
        self.accounts.load().enabled
    }

    /// The `service` of challenges and tokens.
    pub fn service(&self) -> &str {
        self.tokens.service()
    }

    /// A trusted OpenID issuer, as the accounts in force have it.
    pub fn oidc_issuer(&self, issuer: &str) -> Option<Arc<oidc::Issuer>> {
        self.accounts.load().oidc.get(issuer).cloned()
    }

    pub fn robots(&self) -> &Arc<robots::Robots> {
        &self.robots
    }

    /// The caller of an API request, from its `Authorization` header.
    pub async fn identify(
        &self,
        authorization: Option<&str>,
        peer: IpAddr,
    ) -> Result<Presented, AuthError> {
        let anonymous = Presented {
            identity: Identity::anonymous(),
            credentials: false,
        };
        let Some(header) = authorization else {
            return Ok(anonymous);
        };
        if !self.enabled() {
            // No accounts: credentials mean nothing, the caller is anonymous.
            return Ok(anonymous);
        }
        let Some((scheme, value)) = header.trim().split_once(' ') else {
            return Err(self.malformed(peer));
        };
        let login = if scheme.eq_ignore_ascii_case("basic") {
            let Some((user, password)) = parse_basic(value) else {
                return Err(self.malformed(peer));
            };
            if user.is_empty() && password.is_empty() {
                // podman and skopeo answer a challenge with empty credentials.
                return Ok(anonymous);
            }
            self.login(&user, &password, peer).await?
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.bearer(value.trim(), peer).await?
        } else {
            return Err(self.malformed(peer));
        };
        Ok(Presented {
            identity: login.identity,
            credentials: true,
        })
    }

    /// Checks a user name and password (or a robot token, or an OIDC JWT as
    /// the password, whatever the user name).
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Login, AuthError> {
        if user.len() > MAX_USER {
            return Err(self.failed("(too long)", peer, "the user name is too long"));
        }
        if let Some((id, secret)) = robots::parse(password) {
            return self.robot_login(id, secret, peer).await;
        }
        if looks_like_jwt(password) {
            return self.oidc_login(password, peer).await;
        }
        self.password_login(user, password, peer).await
    }

    async fn password_login(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Login, AuthError> {
        let accounts = self.accounts.load_full();
        let Some(passwords) = &accounts.passwords else {
            return Err(self.failed(user, peer, "no htpasswd file is configured"));
        };
        let key = self.passwords.key(user, password);
        if !self.passwords.hit(passwords, user, &key) {
            let slot = self.throttle.admit(user, peer).await?;
            let (hash, known) = passwords.hash_for(user);
            let (password, checked) = (password.to_owned(), hash.clone());
            let verified = tokio::task::spawn_blocking(move || {
                bcrypt::verify(password, &checked).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            drop(slot);
            if !(verified && known) {
                return Err(self.failed(user, peer, "wrong user name or password"));
            }
            self.throttle.succeeded(user, peer);
            self.passwords.remember(user.to_owned(), key, hash);
        }
        Ok(Login {
            identity: Identity {
                subject: Some(user.to_owned()),
                groups: accounts.groups(user, None, false),
            },
            source: "htpasswd".into(),
            asserted_groups: None,
            not_after: None,
            version: passwords.version(user),
        })
    }

    async fn robot_login(&self, id: &str, secret: &str, peer: IpAddr) -> Result<Login, AuthError> {
        // Counted against the address only: a made-up id is the attacker's
        // choice, and would let them fill the table of user names.
        self.throttle.admit_cheap(None, peer)?;
        let Some(robot) = self.robots.verify(id, secret).await else {
            let who = format!("robot:{id}");
            return Err(self.failed(&who, peer, "unknown, revoked or expired robot token"));
        };
        self.throttle.succeeded_cheap(None, peer);
        let accounts = self.accounts.load();
        Ok(Login {
            identity: Identity {
                subject: Some(robot.user.clone()),
                groups: accounts.groups(&robot.user, robot.groups.as_deref(), false),
            },
            source: format!("robot:{id}"),
            asserted_groups: robot.groups,
            not_after: robot.expires,
            version: None,
        })
    }

    async fn oidc_login(&self, token: &str, peer: IpAddr) -> Result<Login, AuthError> {
        match self.verify_token(token, peer, Accept::Issuer).await {
            Ok((login, TokenUse::Access)) => Ok(login),
            Err(e @ AuthError::Throttled { .. }) => Err(e),
            _ => Err(self.failed("", peer, "not a valid token of a trusted issuer")),
        }
    }

    /// A Bearer token on an API request: one of ours (an access token) or
    /// an OIDC issuer's.
    async fn bearer(&self, token: &str, peer: IpAddr) -> Result<Login, AuthError> {
        if let Some((id, secret)) = robots::parse(token) {
            return self.robot_login(id, secret, peer).await;
        }
        match self.verify_token(token, peer, Accept::Any).await? {
            (login, TokenUse::Access) => Ok(login),
            (_, TokenUse::Refresh) => Err(AuthError::BadToken(
                "a refresh token is only good at /token".into(),
            )),
            (_, TokenUse::Session) => Err(AuthError::BadToken(
                "a web UI session is only good for /ui/".into(),
            )),
        }
    }

    /// `POST /token` with `grant_type=refresh_token`.
    pub async fn refresh(&self, token: &str, peer: IpAddr) -> Result<Login, AuthError> {
        match self.verify_token(token, peer, Accept::Ours).await? {
            (login, TokenUse::Refresh) => Ok(login),
            _ => Err(AuthError::BadToken("not a refresh token".into())),
        }
    }

    /// Verifies a JWT (cached by its hash), then checks that its source
    /// still vouches for the caller.
    async fn verify_token(
        &self,
        token: &str,
        peer: IpAddr,
        accept: Accept,
    ) -> Result<(Login, TokenUse), AuthError> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let entry = match self.verified.get(&key) {
            Some(entry) => entry,
            None => {
                self.throttle.admit_cheap(None, peer)?;
                let (exp, entry) = match self.verify_uncached(token).await {
                    Ok(verified) => verified,
                    Err(reason) => return Err(self.bad_token(peer, reason)),
                };
                self.throttle.succeeded_cheap(None, peer);
                let entry = Arc::new(entry);
                self.verified.put(key, exp, Arc::clone(&entry));
                entry
            }
        };
        let accounts = self.accounts.load_full();
        match &*entry {
            CachedToken::Ours(_) if accept == Accept::Issuer => {
                Err(self.bad_token(peer, "the registry's own token is not a password".into()))
            }
            CachedToken::Oidc { .. } if accept == Accept::Ours => {
                Err(self.bad_token(peer, "not one of the registry's tokens".into()))
            }
            CachedToken::Ours(claims) => {
                let login = self
                    .still_valid(&accounts, claims)
                    .await
                    .map_err(|reason| self.bad_token(peer, reason.to_owned()))?;
                Ok((login, claims.token_use))
            }
            CachedToken::Oidc { issuer, login } => {
                if accounts.oidc.get(issuer).is_none() {
                    return Err(self.bad_token(peer, "the issuer is no longer trusted".into()));
                }
                if accounts
                    .passwords
                    .as_ref()
                    .is_some_and(|p| p.has_user(&login.user))
                {
                    return Err(self.bad_token(
                        peer,
                        format!(
                            "the issuer's user {:?} is also an htpasswd account; \
                             set user_prefix for this issuer",
                            login.user
                        ),
                    ));
                }
                Ok((
                    Login {
                        identity: Identity {
                            subject: Some(login.user.clone()),
                            groups: accounts.groups(&login.user, Some(&login.groups), true),
                        },
                        source: format!("oidc:{issuer}"),
                        asserted_groups: Some(login.groups.clone()),
                        not_after: Some(login.expires),
                        version: None,
                    },
                    TokenUse::Access,
                ))
            }
        }
    }

    async fn verify_uncached(&self, token: &str) -> Result<(i64, CachedToken), String> {
        let parsed = Unverified::parse(token).map_err(|e| e.to_string())?;
        let issuer = parsed.issuer().map(str::to_owned);
        match issuer.as_deref() {
            Some(iss) if iss == self.tokens.issuer() => {
                let claims = self.tokens.verify(parsed).map_err(|e| e.to_string())?;
                Ok((claims.exp, CachedToken::Ours(Arc::new(claims))))
            }
            Some(iss) => {
                let accounts = self.accounts.load_full();
                let Some(issuer) = accounts.oidc.get(iss) else {
                    return Err(JwtError::Issuer.to_string());
                };
                let login = issuer.verify(parsed).await.map_err(|e| e.to_string())?;
                Ok((
                    login.expires.saturating_add(30),
                    CachedToken::Oidc {
                        issuer: iss.to_owned(),
                        login,
                    },
                ))
            }
            None => Err(JwtError::MissingClaim("iss").to_string()),
        }
    }

    /// Whether the source of one of our tokens still vouches for it.
    async fn still_valid(
        &self,
        accounts: &Accounts,
        claims: &TokenClaims,
    ) -> Result<Login, &'static str> {
        if claims.sub.is_empty() {
            return Ok(Login::anonymous());
        }
        let user = claims.sub.as_str();
        let src = claims.src.as_str();
        let mut join = false;
        if src == "htpasswd" {
            let passwords = accounts.passwords.as_ref().ok_or("the user was removed")?;
            if !passwords.has_user(user) {
                return Err("the user was removed");
            }
            if claims.token_use != TokenUse::Access && claims.ver != passwords.version(user) {
                return Err("the password changed");
            }
        } else if let Some(id) = src.strip_prefix("robot:") {
            if !self.robots.active(id).await {
                return Err("the robot token was revoked or expired");
            }
        } else if let Some(issuer) = src.strip_prefix("oidc:") {
            if accounts.oidc.get(issuer).is_none() {
                return Err("the issuer is no longer trusted");
            }
            join = true;
        } else {
            return Err("unknown source");
        }
        Ok(Login {
            identity: Identity {
                subject: Some(user.to_owned()),
                groups: accounts.groups(user, claims.groups.as_deref(), join),
            },
            source: src.to_owned(),
            asserted_groups: claims.groups.clone(),
            // A refresh token's own end bounds what is minted from it.
            not_after: match claims.token_use {
                TokenUse::Refresh | TokenUse::Session => {
                    Some(claims.nat.map_or(claims.exp, |n| n.min(claims.exp)))
                }
                TokenUse::Access => claims.nat,
            },
            version: claims.ver.clone(),
        })
    }

    /// A web UI session's cookie value: who it is, and the session's id
    /// (for its CSRF secret and signing out). Checked like a refresh token:
    /// its source must still vouch for the user, a changed password ends it.
    pub async fn session(&self, token: &str, peer: IpAddr) -> Result<Session, AuthError> {
        if token.len() > jwt::MAX_TOKEN {
            return Err(AuthError::BadToken("the session is too long".into()));
        }
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let (login, token_use) = self.verify_token(token, peer, Accept::Ours).await?;
        if token_use != TokenUse::Session {
            return Err(AuthError::BadToken("not a web UI session".into()));
        }
        let claims = match self.verified.get(&key).as_deref() {
            Some(CachedToken::Ours(claims)) => Arc::clone(claims),
            _ => return Err(AuthError::BadToken("not a web UI session".into())),
        };
        Ok(Session {
            login,
            id: claims.jti.clone(),
            expires: claims.exp,
            token: None,
        })
    }

    /// Signs a web UI session for `login`, lasting `ttl` (less if the
    /// credential it came from ends sooner).
    pub fn issue_session(&self, login: &Login, ttl: Duration) -> Result<Session, AuthError> {
        let Some(sub) = login.identity.subject.as_deref() else {
            return Err(AuthError::BadToken(
                "an anonymous caller has no session".into(),
            ));
        };
        let failed = |e: jwt::KeyError| AuthError::Signing(e.to_string());
        let now = jwt::now();
        let mut lifetime = seconds(ttl).max(60);
        if let Some(end) = login.not_after {
            if end.saturating_sub(now) < 60 {
                return Err(AuthError::BadToken(
                    "the credential expires within a minute; sign in again".into(),
                ));
            }
            lifetime = lifetime.min(end.saturating_sub(now));
        }
        let mut claims = self
            .tokens
            .claims(TokenUse::Session, sub, &login.source, lifetime);
        claims.jti = hex::encode(jwt::random_bytes(16).map_err(failed)?);
        claims.groups = login.asserted_groups.clone();
        claims.ver = login.version.clone();
        claims.nat = login.not_after;
        let token = self.tokens.sign(&claims).map_err(failed)?;
        let mut login = login.clone();
        login.not_after = Some(claims.exp);
        Ok(Session {
            login,
            id: claims.jti,
            expires: claims.exp,
            token: Some(token),
        })
    }

    /// The caller of a `/token` request with no credentials.
    pub fn anonymous_login(&self) -> Login {
        Login::anonymous()
    }

    /// Signs an access token for `login` (and a refresh token if asked and
    /// the caller is not anonymous).
    pub fn issue(
        &self,
        login: &Login,
        access: Vec<AccessEntry>,
        offline: bool,
    ) -> Result<Issued, AuthError> {
        let sub = login.identity.subject.as_deref().unwrap_or("");
        let failed = |e: jwt::KeyError| AuthError::Signing(e.to_string());
        let now = jwt::now();
        let bounded = |lifetime: i64| match login.not_after {
            Some(end) => lifetime.min(end.saturating_sub(now)).max(1),
            None => lifetime,
        };
        if login
            .not_after
            .is_some_and(|end| end.saturating_sub(now) < 60)
        {
            // docker takes any expiry under a minute as a minute, and would
            // keep sending a token already refused: log in again instead.
            return Err(AuthError::BadToken(
                "the credential expires within a minute; get a new one".into(),
            ));
        }
        let lifetime = bounded(self.token_ttl);
        let mut claims = self
            .tokens
            .claims(TokenUse::Access, sub, &login.source, lifetime);
        claims.access = access;
        claims.groups = login.asserted_groups.clone();
        claims.nat = login.not_after;
        let token = self.tokens.sign(&claims).map_err(failed)?;
        let refresh_token = if offline && !login.identity.is_anonymous() {
            let mut refresh = self.tokens.claims(
                TokenUse::Refresh,
                sub,
                &login.source,
                bounded(self.refresh_ttl),
            );
            refresh.groups = login.asserted_groups.clone();
            refresh.ver = login.version.clone();
            refresh.nat = login.not_after;
            Some(self.tokens.sign(&refresh).map_err(failed)?)
        } else {
            None
        };
        Ok(Issued {
            token,
            expires_in: lifetime,
            issued_at: now,
            refresh_token,
        })
    }

    /// Logs a failed login (never the secret) and says why.
    fn failed(&self, user: &str, peer: IpAddr, reason: &str) -> AuthError {
        tracing::warn!(target: "portcullis::auth", user, client = %peer, reason, "login failed");
        AuthError::BadCredentials
    }

    fn malformed(&self, peer: IpAddr) -> AuthError {
        tracing::warn!(
            target: "portcullis::auth",
            client = %peer,
            reason = "the Authorization header is neither Basic credentials nor a Bearer token",
            "login failed"
        );
        AuthError::Malformed
    }

    fn bad_token(&self, peer: IpAddr, reason: String) -> AuthError {
        tracing::warn!(target: "portcullis::auth", client = %peer, reason = %reason, "token refused");
        AuthError::BadToken(reason)
    }
}

/// Three base64url segments: a JWT, not a password typed by a person.
fn looks_like_jwt(text: &str) -> bool {
    text.len() > 20
        && text.split('.').count() == 3
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && text.starts_with("eyJ")
}

fn parse_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn invert_groups(groups: &BTreeMap<String, Vec<String>>) -> HashMap<String, Vec<String>> {
    let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
    for (group, members) in groups {
        for member in members {
            by_user
                .entry(member.clone())
                .or_default()
                .push(group.clone());
        }
    }
    for list in by_user.values_mut() {
        list.sort();
        list.dedup();
    }
    by_user
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    async fn identities(htpasswd: &str) -> (tempfile::TempDir, Identities) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, htpasswd).unwrap();
        let mut config = Config::default();
        config.storage.root = dir.path().join("data");
        config.auth.htpasswd = Some(path);
        config
            .groups
            .insert("devs".into(), vec!["alice".into(), "bob".into()]);
        let storage = Storage::open(&config.storage).await.unwrap();
        let ids = Identities::new(&config, storage).unwrap();
        (dir, ids)
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[tokio::test]
    async fn passwords_tokens_and_anonymous_callers() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (_dir, ids) = identities(&format!("# users\nalice:{hash}\n")).await;
        let who = ids
            .identify(Some(&basic("alice", "s3cret")), PEER)
            .await
            .unwrap();
        assert_eq!(who.identity.subject.as_deref(), Some("alice"));
        assert_eq!(who.identity.groups, vec!["devs".to_string()]);
        assert!(matches!(
            ids.identify(Some(&basic("alice", "wrong")), PEER).await,
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            ids.identify(Some("Basic !!!"), PEER).await,
            Err(AuthError::Malformed)
        ));
        // Empty Basic credentials are no credentials.
        let empty = ids.identify(Some(&basic("", "")), PEER).await.unwrap();
        assert!(empty.identity.is_anonymous() && !empty.credentials);
        // A token for alice works as a Bearer token; a refresh token does not.
        let login = ids.login("alice", "s3cret", PEER).await.unwrap();
        let issued = ids.issue(&login, Vec::new(), true).unwrap();
        let bearer = ids
            .identify(Some(&format!("Bearer {}", issued.token)), PEER)
            .await
            .unwrap();
        assert_eq!(bearer.identity, who.identity);
        let refresh = issued.refresh_token.unwrap();
        assert!(ids
            .identify(Some(&format!("Bearer {refresh}")), PEER)
            .await
            .is_err());
        assert_eq!(
            ids.refresh(&refresh, PEER).await.unwrap().identity,
            who.identity
        );
        // An anonymous token is a token with no subject.
        let anon = ids.issue(&ids.anonymous_login(), Vec::new(), true).unwrap();
        assert!(anon.refresh_token.is_none());
        let presented = ids
            .identify(Some(&format!("Bearer {}", anon.token)), PEER)
            .await
            .unwrap();
        assert!(presented.identity.is_anonymous() && presented.credentials);
    }
}
