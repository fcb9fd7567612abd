//! The configuration: built-in defaults < a TOML file < `PORTCULLIS_*` environment
//! variables (nested keys joined with `__`, e.g. `PORTCULLIS_STORAGE__ROOT`).
//!
//! This module only loads and checks values; it does not open files or sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the registry listens on.
    pub listen: SocketAddr,
    /// On SIGTERM, how long requests in flight (uploads) may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The URL clients reach the registry at (`https://cr.example.com`),
    /// for the token service's `realm`. Unset: taken from each request's
    /// `Host` header and whether TLS is on.
    pub external_url: Option<String>,
    /// Proxies (address ranges) whose `X-Forwarded-For`/`Forwarded` headers
    /// and PROXY protocol headers say who the client is; nobody else's are
    /// believed. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<crate::network::Cidr>,
    /// The header `trusted_proxies` write the client's address in:
    /// `x-forwarded-for` (Traefik, nginx, HAProxy's `option forwardfor`) or
    /// `forwarded` (RFC 7239). The other one is never read: a proxy passes
    /// it through from the client untouched.
    pub forwarded_header: crate::network::forwarded::ForwardedHeader,
    /// Read a PROXY protocol header (v1 or v2) at the start of each
    /// connection, for TCP passthrough (Traefik's `proxyProtocol`, HAProxy's
    /// `send-proxy-v2`); believed from `trusted_proxies` only.
    pub proxy_protocol: bool,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    /// Groups and their members: `devs = ["alice", "bob"]`. Policies see a
    /// caller's groups in the request's identity.
    pub groups: BTreeMap<String, Vec<String>>,
    pub policy: PolicyConfig,
    pub proxy: ProxyConfig,
    /// Which tags to keep (`[[retention]]`, in order; the first rule whose
    /// globs match a tag decides it; tags no rule matches are kept).
    pub retention: Vec<RetentionRule>,
    /// Scheduled gc (and retention) inside the server.
    pub gc: GcConfig,
    /// The web interface under `/ui/`.
    pub ui: UiConfig,
}

/// `[ui]`: the web pages the registry serves under `/ui/` (`crate::ui`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Serve `/ui/` at all (false: every `/ui/` path is 404).
    pub enabled: bool,
    /// Members of these groups see the policy chain and every recent
    /// decision; everyone else sees their own refusals only.
    pub admin_groups: Vec<String>,
    /// How long a browser session lasts after signing in.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

/// One `[[retention]]` rule (applied by `maintenance::retention`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Repositories the rule covers (globs, `!` excludes): `["team-a/**"]`.
    pub repositories: Vec<String>,
    /// Tags it decides (globs, `!` excludes).
    #[serde(default = "every_tag")]
    pub tags: Vec<String>,
    /// Keep the N most recently pushed of the tags this rule decides in a repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_newest: Option<u32>,
    /// Keep tags pushed (last set) within this long ("30d").
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_within: Option<Duration>,
    /// `any`: a tag is kept when either condition holds; `all`: only when
    /// every condition given holds.
    #[serde(default)]
    pub keep_if: KeepIf,
}

fn every_tag() -> Vec<String> {
    vec!["*".into()]
}

/// How a rule's conditions combine (see [`RetentionRule::keep_if`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeepIf {
    #[default]
    Any,
    All,
}

/// `[gc]`: gc (and retention) on a schedule, inside the server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// How often the server runs gc; unset: never (only `portcullis gc`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
    /// Whether a scheduled run applies the `[[retention]]` rules before gc.
    pub retention: bool,
    /// The subject retention's deletes are decided as by the policy chain.
    pub identity: String,
    /// The groups that identity has (a tag-immutability `exempt_groups`
    /// entry lets retention delete release tags).
    pub groups: Vec<String>,
    /// S3 on a store that does not enforce conditional writes: no lease can
    /// keep two replicas from running gc at once, so the schedule starts
    /// only when the operator declares that this replica is the only one
    /// with `gc.every` set.
    pub single_replica: bool,
    /// S3: how long the gc lease in the bucket holds without being renewed
    /// (a holder renews it every third of this while it runs).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

/// Pull-through cache: repositories under `prefix` mirror `remote`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The upstream registry, e.g. "https://registry-1.docker.io". Unset: no cache.
    pub remote: Option<String>,
    /// Local repositories `<prefix>/<name>` mirror the upstream's `<name>`
    /// (`dockerhub/library/postgres` -> `library/postgres`). Empty: the whole
    /// registry is a mirror (what Docker's `registry-mirrors` expects).
    pub prefix: String,
    /// Upstream credentials, if it needs them (Docker Hub rate limits are per account).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A tag is re-checked against the upstream after this long.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
}

/// A value never printed: `portcullis config` and logs show `********`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("********")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// An htpasswd file with bcrypt entries (`htpasswd -B`), as `registry:2` uses.
    /// Without one, every request is anonymous.
    pub htpasswd: Option<PathBuf>,
    /// Accounts on or off. Unset: on when `htpasswd` or `[[auth.oidc]]` is
    /// configured; `true` also turns them on with robot tokens as the only source.
    pub enabled: Option<bool>,
    /// This registry's name in token challenges and tokens (`service`, `aud`).
    pub realm: String,
    /// How long a verified password is remembered, so bcrypt runs once per
    /// client and not on every request.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Password verifications (bcrypt) at once; more wait up to 2 s, then 429.
    pub max_verifications: usize,
    /// Failed logins a user name may have a minute before its next attempts
    /// get 429 without being checked (0: no limit).
    pub failed_logins_per_user: u32,
    /// The same per client address (the TCP peer's; behind a proxy, all
    /// clients share the proxy's: raise it or set 0 there).
    pub failed_logins_per_address: u32,
    /// The token service's signing key (PKCS#8 PEM, Ed25519 or ECDSA
    /// P-256). Unset on the filesystem backend: generated into the storage
    /// root on first start. Required on S3, where every replica must share it.
    pub token_key: Option<PathBuf>,
    /// How long a token from `/token` is valid.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// How long a refresh token (`docker login`'s stored credential) is valid.
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// How often each replica re-reads the robot-token list from the store:
    /// the bound on how long a revocation made elsewhere takes to hold.
    #[serde(with = "humantime_serde")]
    pub robot_token_refresh: Duration,
    /// OpenID Connect issuers whose JWTs are accepted (people's ID tokens,
    /// CI jobs' tokens, Kubernetes service-account tokens).
    pub oidc: Vec<OidcConfig>,
}

/// One trusted OpenID Connect issuer (`[[auth.oidc]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` of its tokens; discovery is `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The `aud` its tokens must carry for this registry.
    pub audience: String,
    /// The claim that names the user.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Put before every user name from this issuer (`github:`): set it for
    /// an issuer anyone can get tokens from, so its users cannot take the
    /// names of others. A name equal to an htpasswd account is refused.
    #[serde(default)]
    pub user_prefix: String,
    /// The claim that lists the user's groups (a list, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Put before every group from the claim (`github:`): set it for an
    /// issuer whose groups its users choose, so they cannot claim yours.
    #[serde(default)]
    pub group_prefix: String,
    /// CA certificates (PEM) for an issuer not under public TLS (a k3s API server).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The issuer's keys as a JWKS file instead of fetching them.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The shortest time between two fetches of the keys, when a token names
    /// a key not seen yet (a rotation): bounds what a flood of unknown `kid`s costs.
    #[serde(default = "default_jwks_refetch", with = "humantime_serde")]
    pub jwks_refetch: Duration,
    /// The OAuth client id the web UI signs in with (authorization code with
    /// PKCE); unset: this issuer is not offered on the sign-in page. Its ID
    /// tokens must name `audience` in `aud`, as every token here must.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui_client_id: Option<String>,
    /// The sign-in button's label (`Authentik`); default: the issuer's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui_name: Option<String>,
    /// A file holding the client secret, for an issuer that treats the UI
    /// as a confidential client (PKCE is used either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui_client_secret_file: Option<PathBuf>,
}

/// Refuses a retention glob that could never match or that says something
/// other than the author meant: unbalanced `[`/`{`, or characters no
/// repository name (lowercase) or tag can hold.
fn check_glob(pattern: &str, tag: bool) -> Result<(), String> {
    let body = pattern.strip_prefix('!').unwrap_or(pattern);
    let (mut brackets, mut braces) = (0i32, 0i32);
    for c in body.chars() {
        match c {
            '[' if brackets > 0 => return Err("`[` inside `[...]`".into()),
            '[' => brackets += 1,
            ']' => brackets -= 1,
            '{' => braces += 1,
            '}' => braces -= 1,
            _ => {}
        }
        if brackets < 0 || braces < 0 {
            return Err(format!("unbalanced {c:?}"));
        }
        let glob = matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | ',' | '!' | '^');
        let allowed = if tag {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
        } else {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')
        };
        if !glob && !allowed {
            let what = if tag {
                "a tag has only letters, digits, `.`, `_` and `-`"
            } else {
                "a repository name has only lowercase letters, digits, `.`, `_`, `-` and `/`"
            };
            return Err(format!("{c:?} can never match: {what}"));
        }
    }
    if brackets != 0 || braces != 0 {
        return Err("unbalanced `[` or `{`".into());
    }
    Ok(())
}

/// An issuer's keys are only fetched over https, except from this host.
fn oidc_issuer_allowed(issuer: &str) -> bool {
    if issuer.starts_with("https://") {
        return issuer.len() > "https://".len();
    }
    let Some(rest) = issuer.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_user_claim() -> String {
    "sub".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_jwks_refetch() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Where `module` files are found.
    pub dir: PathBuf,
    /// Fuel per evaluation (about one unit per Wasm instruction): a runaway loop is stopped.
    pub fuel: u64,
    /// Memory cap per policy instance, e.g. "16MiB": all its linear
    /// memories and tables together.
    pub memory: bytesize::ByteSize,
    /// Memory all instances of all policies may hold together; past three
    /// quarters of it, warm instances are dropped after use.
    pub total_memory: bytesize::ByteSize,
    /// Longest wall-clock time of one call into a policy (a guest's sleeps included).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A warm instance is replaced by a fresh one after this many evaluations.
    pub recycle_after: u32,
    /// Compiled policies are cached here (default: `<storage.root>/portcullis/policy-cache`).
    pub cache_dir: Option<PathBuf>,
    /// Lookups (referrers, manifests, blobs) one evaluation may make.
    pub lookup_calls: u32,
    /// Bytes all lookups of one evaluation may hand to the policy.
    pub lookup_bytes: bytesize::ByteSize,
    /// Largest blob a policy may look up.
    pub lookup_blob_bytes: bytesize::ByteSize,
    /// Where decisions are written, besides the in-memory ring.
    pub decision_log: DecisionLogConfig,
    /// The ordered chain: every policy that applies must allow.
    pub chain: Vec<PolicyEntry>,
}

/// The decision log: one JSON line per decision (`policy::decisions`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// Which decisions: `off`, `denials` (denials, failures and what audit
    /// policies would deny) or `all`.
    pub record: DecisionRecord,
    /// A file to append to, or `-` for stderr; none keeps the ring only.
    pub path: Option<PathBuf>,
    /// Most recent decisions kept in memory per replica (for the web page).
    pub ring: usize,
    /// Longest line written; larger facts (annotations, labels, env) are
    /// replaced by their digest to fit.
    pub max_line_bytes: bytesize::ByteSize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecisionRecord {
    Off,
    Denials,
    All,
}

/// What a chain entry's denials do.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Denials refuse the request.
    #[default]
    Enforce,
    /// Denials are logged and counted (outcome `audit-deny`); the request
    /// goes on to the next policy. For rolling out a policy.
    Audit,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// Shown in denials and logs.
    pub name: String,
    /// A component file in `policy.dir`, or `builtin:<name>` for a bundled policy.
    pub module: String,
    /// The policy's own settings, handed to it as JSON.
    #[serde(default = "empty_settings")]
    pub settings: serde_json::Value,
    /// Only these actions are sent to the policy (default: all).
    pub actions: Option<Vec<Action>>,
    /// Only requests for matching repositories are sent to it (globs, `!` excludes).
    pub repositories: Option<Vec<String>>,
    /// `enforce` (the default) or `audit`.
    #[serde(default)]
    pub mode: PolicyMode,
}

fn empty_settings() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// What a request does, as policies and scopes name it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
    List,
}

/// TLS is on when both files are set; they are re-read when they change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, server certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where content lives: `filesystem` (the directory `root`) or `s3` (a
    /// bucket of an S3-compatible object store, shared by any number of
    /// replicas).
    pub backend: Backend,
    /// Root of the Distribution-layout data directory (`docker/registry/v2` lives below it).
    /// With the S3 backend it holds only the compiled-policy cache.
    pub root: PathBuf,
    /// S3: the endpoint URL (`http://garage:3900`); unset means AWS S3 itself.
    pub endpoint: Option<String>,
    /// S3: the bucket (it must exist).
    pub bucket: Option<String>,
    /// S3: the region (Garage: its `s3_region`, `garage` by default).
    pub region: String,
    /// S3: every key starts with this prefix (then Distribution's `docker/registry/v2/...`).
    pub prefix: String,
    /// S3: credentials; unset, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` are used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// S3: size of the parts an upload is sent in (at least 5 MiB, S3's minimum);
    /// one part per upload in flight is held in memory.
    pub part_size: bytesize::ByteSize,
    /// S3: longest time for one request to the store (a part upload included).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// S3: longest time to connect to the store.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// S3: retries of a failed request (with backoff), and the longest time spent retrying.
    pub max_retries: usize,
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// S3: blob GETs are answered with a redirect to a presigned URL, so blob
    /// bytes go from the store to the client without passing the replica.
    pub redirect: bool,
    /// S3: `auto` detects at start-up whether the store honours conditional
    /// writes (`If-None-Match`/`If-Match` on PUT) and uses them for tags when
    /// it does; `off` never relies on them.
    pub conditional_writes: ConditionalWrites,
    /// Whether DELETE on manifests, tags and blobs is accepted (else 405 UNSUPPORTED).
    pub delete_enabled: bool,
    /// Upload sessions untouched for longer than this are removed by `gc`;
    /// blobs younger than this are never swept, so an image being pushed is safe.
    #[serde(with = "humantime_serde")]
    pub upload_max_age: Duration,
    /// Mode of every file the registry creates, in octal ("0640"). Never world-writable.
    pub file_mode: String,
    /// Mode of every directory the registry creates, in octal ("0750").
    pub dir_mode: String,
    /// Group (name or numeric gid) given to everything the registry creates,
    /// so a shared volume needs no `chmod 777`.
    pub group: Option<Group>,
    /// Where manifest and blob-metadata reads (a few small files) run:
    /// `auto` reads them on the request's thread when the storage root is on
    /// a local filesystem and on the blocking pool otherwise (NFS, SMB, FUSE,
    /// anything unrecognised), `inline` always on the request's thread,
    /// `pool` always on the blocking pool.
    pub small_reads: SmallReads,
}

/// See [`StorageConfig::backend`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Filesystem,
    S3,
}

/// See [`StorageConfig::conditional_writes`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConditionalWrites {
    #[default]
    Auto,
    Off,
}

/// See [`StorageConfig::small_reads`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmallReads {
    #[default]
    Auto,
    Inline,
    Pool,
}

/// A group by name or number (`group = "registry"`, `group = 1000`, or
/// `PORTCULLIS_STORAGE__GROUP=1000`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Group {
    Id(u32),
    Name(String),
}

impl StorageConfig {
    /// The file and directory modes, checked: octal, and not world-writable.
    pub fn modes(&self) -> Result<(u32, u32), ConfigError> {
        let parse = |key: &str, raw: &str| {
            let mode = u32::from_str_radix(raw.trim_start_matches("0o"), 8).map_err(|_| {
                ConfigError::Invalid(format!(
                    "storage.{key} = {raw:?} is not an octal mode like \"0640\""
                ))
            })?;
            if mode > 0o777 {
                return Err(ConfigError::Invalid(format!(
                    "storage.{key} = {raw:?}: only permission bits (at most 0777)"
                )));
            }
            if mode & 0o002 != 0 {
                return Err(ConfigError::Invalid(format!(
                    "storage.{key} = {raw:?} is world-writable; use a group (storage.group) instead"
                )));
            }
            Ok(mode)
        };
        Ok((
            parse("file_mode", &self.file_mode)?,
            parse("dir_mode", &self.dir_mode)?,
        ))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest manifest accepted on PUT, in bytes (the spec suggests 4 MiB).
    pub max_manifest_bytes: u64,
    /// Largest page `n` accepted for tag and catalog listings.
    pub max_page_size: usize,
    /// Largest blob accepted by an upload; unset: no limit but the disk.
    /// A bigger upload is refused with 413 `SIZE_INVALID`.
    pub max_blob_bytes: Option<bytesize::ByteSize>,
    /// Largest request head (request line and headers). Past it the
    /// connection gets 431 and is closed.
    pub max_header_bytes: bytesize::ByteSize,
    /// Most header fields in one request (HTTP/1.1); past it, 431.
    pub max_headers: usize,
    /// Time a client has to send a request's headers, also on an idle
    /// keep-alive connection; past it the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest pause between two pieces of a request body; past it the
    /// request fails with 408 and the connection is closed.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Longest time to receive one request body (an upload chunk or a
    /// manifest); past it the request fails with 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Upload sessions open at once, in all. Past it, 429 `TOO_MANY_REQUESTS`
    /// with `Retry-After`.
    pub max_uploads: usize,
    /// Upload sessions open at once per client (the user name, or the
    /// address of an anonymous client). Past it, 429 `TOO_MANY_REQUESTS`.
    pub max_uploads_per_client: usize,
    /// An upload session unused for this long stops counting against the
    /// two caps above; it stays resumable until `storage.upload_max_age`,
    /// when the server deletes it.
    #[serde(with = "humantime_serde")]
    pub upload_idle: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            forwarded_header: Default::default(),
            proxy_protocol: false,
            tls: TlsConfig::default(),
            storage: StorageConfig {
                backend: Backend::Filesystem,
                root: PathBuf::from("./data"),
                endpoint: None,
                bucket: None,
                region: "us-east-1".into(),
                prefix: String::new(),
                access_key_id: None,
                secret_access_key: None,
                part_size: bytesize::ByteSize::mib(8),
                request_timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(5),
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                redirect: false,
                conditional_writes: ConditionalWrites::Auto,
                delete_enabled: true,
                small_reads: SmallReads::Auto,
                upload_max_age: Duration::from_secs(24 * 3600),
                file_mode: "0640".into(),
                dir_mode: "0750".into(),
                group: None,
            },
            limits: LimitsConfig {
                max_manifest_bytes: 4 * 1024 * 1024,
                max_page_size: 10_000,
                max_blob_bytes: None,
                max_header_bytes: bytesize::ByteSize::kib(64),
                max_headers: 100,
                header_timeout: Duration::from_secs(30),
                body_idle_timeout: Duration::from_secs(60),
                body_timeout: Duration::from_secs(3600),
                max_uploads: 1024,
                max_uploads_per_client: 64,
                upload_idle: Duration::from_secs(15 * 60),
            },
            auth: AuthConfig {
                htpasswd: None,
                enabled: None,
                realm: "portcullis".into(),
                cache_ttl: Duration::from_secs(300),
                max_verifications: 2,
                failed_logins_per_user: 10,
                failed_logins_per_address: 30,
                token_key: None,
                token_ttl: Duration::from_secs(300),
                refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
                robot_token_refresh: Duration::from_secs(10),
                oidc: Vec::new(),
            },
            groups: BTreeMap::new(),
            policy: PolicyConfig {
                dir: PathBuf::from("./policies"),
                fuel: 10_000_000,
                memory: bytesize::ByteSize::mib(16),
                total_memory: bytesize::ByteSize::mib(256),
                timeout: Duration::from_secs(2),
                recycle_after: 10_000,
                cache_dir: None,
                lookup_calls: 16,
                lookup_bytes: bytesize::ByteSize::mib(1),
                lookup_blob_bytes: bytesize::ByteSize::kib(64),
                decision_log: DecisionLogConfig {
                    record: DecisionRecord::Denials,
                    path: None,
                    ring: 1000,
                    max_line_bytes: bytesize::ByteSize::kib(16),
                },
                chain: Vec::new(),
            },
            external_url: None,
            proxy: ProxyConfig {
                remote: None,
                prefix: "mirror".into(),
                username: None,
                password: None,
                tag_ttl: Duration::from_secs(300),
            },
            retention: Vec::new(),
            gc: GcConfig {
                every: None,
                retention: true,
                identity: "system:retention".into(),
                groups: Vec::new(),
                single_replica: false,
                lease_ttl: Duration::from_secs(600),
            },
            ui: UiConfig {
                enabled: true,
                admin_groups: vec!["admins".into()],
                session_ttl: Duration::from_secs(12 * 3600),
            },
        }
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        // PORTCULLIS_LOG is the log filter, read by the binary, not a config key.
        Self::load_with_env(
            file,
            Env::prefixed("PORTCULLIS_").split("__").ignore(&["log"]),
        )
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.storage.modes()?;
        if self.storage.backend == Backend::S3 {
            let s = &self.storage;
            if s.bucket.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::Invalid(
                    "storage.backend = \"s3\" needs storage.bucket".into(),
                ));
            }
            if let Some(endpoint) = &s.endpoint {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err(ConfigError::Invalid(format!(
                        "storage.endpoint = {endpoint:?}: use a URL such as http://garage:3900"
                    )));
                }
            }
            if s.part_size.as_u64() < 5 << 20 || s.part_size.as_u64() > 512 << 20 {
                return Err(ConfigError::Invalid(format!(
                    "storage.part_size = {} must be between 5 MiB (S3's smallest part) and 512 MiB",
                    s.part_size
                )));
            }
            if s.prefix.split('/').any(|c| c == "." || c == "..") {
                return Err(ConfigError::Invalid(format!(
                    "storage.prefix = {:?} may not contain . or .. components",
                    s.prefix
                )));
            }
            for (key, value) in [
                ("request_timeout", s.request_timeout),
                ("connect_timeout", s.connect_timeout),
            ] {
                if value.is_zero() {
                    return Err(ConfigError::Invalid(format!(
                        "storage.{key} must be longer than 0s"
                    )));
                }
            }
        }
        if let Some(remote) = &self.proxy.remote {
            if !(remote.starts_with("https://") || remote.starts_with("http://")) {
                return Err(ConfigError::Invalid(format!(
                    "proxy.remote = {remote:?}: use a URL such as https://registry-1.docker.io"
                )));
            }
            let prefix = &self.proxy.prefix;
            if !prefix.is_empty() && crate::reference::RepositoryName::parse(prefix).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "proxy.prefix = {prefix:?} is not a repository name prefix"
                )));
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "tls: set both cert and key (or neither, for plain HTTP)".into(),
            ));
        }
        if self.limits.max_manifest_bytes == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_manifest_bytes must be greater than 0".into(),
            ));
        }
        if self.limits.max_page_size == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_page_size must be greater than 0".into(),
            ));
        }
        let limits = &self.limits;
        if limits.max_header_bytes.as_u64() < 8192 || limits.max_header_bytes.as_u64() > 16 << 20 {
            return Err(ConfigError::Invalid(format!(
                "limits.max_header_bytes = {} must be between 8 KiB and 16 MiB",
                limits.max_header_bytes
            )));
        }
        for (key, value) in [
            ("max_headers", limits.max_headers),
            ("max_uploads", limits.max_uploads),
            ("max_uploads_per_client", limits.max_uploads_per_client),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{key} must be greater than 0"
                )));
            }
        }
        for (key, value) in [
            ("header_timeout", limits.header_timeout),
            ("body_idle_timeout", limits.body_idle_timeout),
            ("body_timeout", limits.body_timeout),
            ("upload_idle", limits.upload_idle),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "limits.{key} must be longer than 0s"
                )));
            }
        }
        if limits.max_blob_bytes.is_some_and(|b| b.as_u64() == 0) {
            return Err(ConfigError::Invalid(
                "limits.max_blob_bytes must be greater than 0 (leave it unset for no limit)".into(),
            ));
        }
        if self.policy.fuel == 0
            || self.policy.memory.as_u64() == 0
            || self.policy.timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "policy.fuel, policy.memory and policy.timeout must be greater than 0".into(),
            ));
        }
        if self.auth.max_verifications == 0 {
            return Err(ConfigError::Invalid(
                "auth.max_verifications must be at least 1".into(),
            ));
        }
        self.validate_identity()?;
        self.validate_maintenance()?;
        if self.policy.total_memory < self.policy.memory {
            return Err(ConfigError::Invalid(format!(
                "policy.total_memory ({}) must be at least policy.memory ({}): \
                 no policy instance could be made",
                self.policy.total_memory, self.policy.memory
            )));
        }
        let mut names = std::collections::HashSet::new();
        for entry in &self.policy.chain {
            if !names.insert(entry.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "policy.chain: two policies are named {:?}",
                    entry.name
                )));
            }
            if let Some(repos) = &entry.repositories {
                portcullis_patterns::PatternList::new(repos).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "policy.chain {:?}: repositories: {e}",
                        entry.name
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Where compiled policies are cached.
    /// Whether callers are identified at all (see `auth.enabled`).
    pub fn accounts_enabled(&self) -> bool {
        self.auth
            .enabled
            .unwrap_or(self.auth.htpasswd.is_some() || !self.auth.oidc.is_empty())
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let a = &self.auth;
        if a.enabled == Some(false) && (a.htpasswd.is_some() || !a.oidc.is_empty()) {
            return invalid(
                "auth.enabled = false with auth.htpasswd or [[auth.oidc]] configured: \
                 remove one or the other"
                    .into(),
            );
        }
        if a.token_ttl < Duration::from_secs(10) || a.token_ttl > Duration::from_secs(24 * 3600) {
            return invalid("auth.token_ttl must be between 10s and 24h".into());
        }
        if a.refresh_token_ttl < a.token_ttl {
            return invalid("auth.refresh_token_ttl must be at least auth.token_ttl".into());
        }
        if a.robot_token_refresh < Duration::from_secs(1) {
            return invalid("auth.robot_token_refresh must be at least 1s".into());
        }
        if a.realm.is_empty() || a.realm.contains(['"', '\\']) || a.realm.len() > 128 {
            return invalid(format!(
                "auth.realm = {:?}: a non-empty name of at most 128 characters without quotes",
                a.realm
            ));
        }
        if let Some(url) = &self.external_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(['"', ' ', '\\', '?', '#']);
            if !ok {
                return invalid(format!(
                    "external_url = {url:?}: use the URL clients reach the registry at, \
                     such as https://cr.example.com"
                ));
            }
        }
        if self.storage.backend == Backend::S3 && self.accounts_enabled() && a.token_key.is_none() {
            return invalid(
                "with accounts on the S3 backend, every replica must sign tokens with the \
                 same key: set auth.token_key to a PKCS#8 file every replica mounts \
                 (`openssl genpkey -algorithm ed25519 -out token.key`)"
                    .into(),
            );
        }
        let mut issuers = std::collections::HashSet::new();
        for oidc in &a.oidc {
            if !issuers.insert(oidc.issuer.as_str()) {
                return invalid(format!(
                    "[[auth.oidc]]: issuer {:?} is listed twice",
                    oidc.issuer
                ));
            }
            if !oidc_issuer_allowed(&oidc.issuer) {
                return invalid(format!(
                    "[[auth.oidc]] issuer = {:?}: an https:// URL (http:// only on loopback)",
                    oidc.issuer
                ));
            }
            if oidc.jwks_refetch < Duration::from_secs(1) {
                return invalid(format!(
                    "[[auth.oidc]] {}: jwks_refetch must be at least 1s",
                    oidc.issuer
                ));
            }
            if oidc.audience.is_empty() || oidc.user_claim.is_empty() {
                return invalid(format!(
                    "[[auth.oidc]] {}: audience and user_claim must not be empty",
                    oidc.issuer
                ));
            }
        }
        Ok(())
    }

    fn validate_maintenance(&self) -> Result<(), ConfigError> {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        for (i, rule) in self.retention.iter().enumerate() {
            let at = format!("[[retention]] #{}", i + 1);
            let invalid = |m: String| Err(ConfigError::Invalid(format!("{at}: {m}")));
            for (key, patterns, tag) in [
                ("repositories", &rule.repositories, false),
                ("tags", &rule.tags, true),
            ] {
                if patterns.is_empty() {
                    return invalid(format!("{key} is empty: name at least one glob"));
                }
                for pattern in patterns {
                    if let Err(e) = check_glob(pattern, tag) {
                        return invalid(format!("{key}: {pattern:?}: {e}"));
                    }
                }
                let list = portcullis_patterns::PatternList::new(patterns)
                    .map_err(|e| ConfigError::Invalid(format!("{at}: {key}: {e}")))?;
                if list.is_empty() {
                    return invalid(format!(
                        "{key} has only exclusions (`!`): add what the rule covers, e.g. \"*\""
                    ));
                }
            }
            match (rule.keep_newest, rule.keep_within) {
                (None, None) => {
                    return invalid(
                        "set keep_newest, keep_within or both: a rule with neither would \
                         delete every tag it matches"
                            .into(),
                    )
                }
                (Some(0), _) => {
                    return invalid(
                        "keep_newest = 0 keeps nothing: leave it out (or use keep_within)".into(),
                    )
                }
                _ => {}
            }
            if let Some(within) = rule.keep_within {
                if within.is_zero() || within > CENTURY {
                    return invalid(format!(
                        "keep_within = {:?} must be longer than 0s and at most 100 years",
                        humantime::format_duration(within).to_string()
                    ));
                }
            }
        }
        let gc = &self.gc;
        if gc
            .every
            .is_some_and(|e| e < Duration::from_secs(1) || e > CENTURY)
        {
            return Err(ConfigError::Invalid(
                "gc.every must be at least 1s (and at most 100 years); leave it unset for no schedule"
                    .into(),
            ));
        }
        if gc.identity.is_empty()
            || gc.identity.len() > 128
            || gc.identity.chars().any(char::is_control)
        {
            return Err(ConfigError::Invalid(format!(
                "gc.identity = {:?}: a name of 1 to 128 characters",
                gc.identity
            )));
        }
        if gc
            .groups
            .iter()
            .any(|g| g.is_empty() || g.chars().any(char::is_control))
        {
            return Err(ConfigError::Invalid("gc.groups: empty group name".into()));
        }
        if gc.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "gc.lease_ttl must be at least 1s".into(),
            ));
        }
        Ok(())
    }

    pub fn policy_cache_dir(&self) -> PathBuf {
        self.policy
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.storage.root.join("portcullis/policy-cache"))
    }

    /// The effective configuration as TOML, for `portcullis config`; secrets
    /// (`proxy.password`) are masked.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                "listen = \"127.0.0.1:6000\"\n[storage]\nroot = \"/srv/a\"\n",
            )?;
            jail.set_env("PORTCULLIS_STORAGE__ROOT", "/srv/b");
            let c = Config::load(Some(Path::new("p.toml"))).expect("config loads");
            assert_eq!(c.listen.port(), 6000);
            assert_eq!(c.storage.root, PathBuf::from("/srv/b"));
            assert_eq!(c.limits.max_manifest_bytes, 4 * 1024 * 1024);
            Ok(())
        });
    }

    #[test]
    fn secrets_are_masked_when_the_config_is_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PORTCULLIS_PROXY__REMOTE", "https://registry-1.docker.io");
            jail.set_env("PORTCULLIS_PROXY__PASSWORD", "hunter2");
            let c = Config::load(None).expect("config loads");
            assert_eq!(
                c.proxy.password.as_ref().map(Secret::expose),
                Some("hunter2")
            );
            let printed = c.to_toml();
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains("password = \"********\""), "{printed}");
            assert!(!format!("{c:?}").contains("hunter2"));
            Ok(())
        });
    }

    #[test]
    fn the_s3_backend_is_checked_and_its_secret_masked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s3.toml",
                "[storage]\nbackend = \"s3\"\nendpoint = \"http://garage:3900\"\nbucket = \"registry\"\nregion = \"garage\"\nsecret_access_key = \"s3cr3t-value\"\n",
            )?;
            let c = Config::load(Some(Path::new("s3.toml"))).expect("config loads");
            assert_eq!(c.storage.backend, Backend::S3);
            assert_eq!(c.storage.part_size, bytesize::ByteSize::mib(8));
            assert!(!c.to_toml().contains("s3cr3t-value"));
            jail.create_file("nobucket.toml", "[storage]\nbackend = \"s3\"\n")?;
            let e = Config::load(Some(Path::new("nobucket.toml"))).unwrap_err();
            assert!(e.to_string().contains("storage.bucket"), "{e}");
            jail.set_env("PORTCULLIS_STORAGE__PART_SIZE", "1MiB");
            let e = Config::load(Some(Path::new("s3.toml"))).unwrap_err();
            assert!(e.to_string().contains("5 MiB"), "{e}");
            jail.set_env("PORTCULLIS_STORAGE__PART_SIZE", "8MiB");
            jail.set_env("PORTCULLIS_STORAGE__ENDPOINT", "garage:3900");
            let e = Config::load(Some(Path::new("s3.toml"))).unwrap_err();
            assert!(e.to_string().contains("storage.endpoint"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "listn = \"x\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(e.to_string().contains("listn"), "{e}");
            jail.create_file("bad2.toml", "listen = \"not an address\"\n")?;
            assert!(Config::load(Some(Path::new("bad2.toml"))).is_err());
            Ok(())
        });
    }

    /// Hostile `[[retention]]` and `[gc]` settings: each is refused with a
    /// message naming the key and what to do.
    #[test]
    fn hostile_retention_and_gc_settings_are_refused_with_a_reason() {
        let rule = |body: &str| format!("[[retention]]\nrepositories = [\"team/*\"]\n{body}\n");
        let cases: Vec<(String, &str)> = vec![
            (rule("keep_newest = 3\ntags = [\"pr-[\"]"), "unbalanced"),
            (rule("keep_newest = 3\ntags = [\"pr-]\"]"), "unbalanced"),
            (rule("keep_newest = 3\ntags = [\"{a,b\"]"), "unbalanced"),
            (rule("keep_newest = 3\ntags = [\"[[a]]\"]"), "inside"),
            (
                rule("keep_newest = 3\ntags = [\"release/*\"]"),
                "can never match",
            ),
            (
                rule("keep_newest = 3\ntags = [\"pr *\"]"),
                "can never match",
            ),
            (rule("keep_newest = 3\ntags = []"), "tags is empty"),
            (rule("keep_newest = 3\ntags = [\"\"]"), "empty pattern"),
            (
                rule("keep_newest = 3\ntags = [\"!latest\"]"),
                "only exclusions",
            ),
            (
                "[[retention]]\nrepositories = [\"Team/*\"]\nkeep_newest = 1\n".into(),
                "lowercase",
            ),
            (
                "[[retention]]\nrepositories = []\nkeep_newest = 1\n".into(),
                "repositories is empty",
            ),
            ("[[retention]]\nkeep_newest = 1\n".into(), "repositories"),
            (rule(""), "set keep_newest, keep_within or both"),
            (rule("keep_newest = 0"), "keep_newest = 0 keeps nothing"),
            (
                rule("keep_newest = 0\nkeep_within = \"1d\""),
                "keep_newest = 0",
            ),
            (rule("keep_newest = -1"), "keep_newest"),
            (rule("keep_newest = 99999999999"), "keep_newest"),
            (rule("keep_newest = \"ten\""), "keep_newest"),
            (rule("keep_within = \"-1d\""), "keep_within"),
            (rule("keep_within = \"0s\""), "longer than 0s"),
            (rule("keep_within = \"200years\""), "at most 100 years"),
            (
                rule("keep_within = \"99999999999999999999d\""),
                "keep_within",
            ),
            (rule("keep_within = 30"), "keep_within"),
            (rule("keep_newest = 3\nkeep_if = \"maybe\""), "keep_if"),
            (rule("keep_last = 3"), "keep_last"),
            (
                "[gc]\nevery = \"0s\"\n".into(),
                "gc.every must be at least 1s",
            ),
            (
                "[gc]\nevery = \"500ms\"\n".into(),
                "gc.every must be at least 1s",
            ),
            ("[gc]\nevery = \"soon\"\n".into(), "every"),
            ("[gc]\nevery = \"1000years\"\n".into(), "at most 100 years"),
            ("[gc]\nidentity = \"\"\n".into(), "gc.identity"),
            ("[gc]\nidentity = \"a\\nb\"\n".into(), "gc.identity"),
            ("[gc]\ngroups = [\"\"]\n".into(), "gc.groups"),
            ("[gc]\nlease_ttl = \"0s\"\n".into(), "gc.lease_ttl"),
            ("[gc]\ninterval = \"1h\"\n".into(), "interval"),
            ("[retention]\nkeep_newest = 1\n".into(), "retention"),
        ];
        figment::Jail::expect_with(|jail| {
            for (i, (toml, expected)) in cases.iter().enumerate() {
                let file = format!("hostile-{i}.toml");
                jail.create_file(&file, toml)?;
                match Config::load(Some(Path::new(&file))) {
                    Ok(_) => panic!("accepted:\n{toml}"),
                    Err(e) => assert!(
                        e.to_string().contains(expected),
                        "{toml}\nerror {e:?} does not say {expected:?}"
                    ),
                }
            }
            // What is fine: both conditions, `all`, exclusions next to globs.
            jail.create_file(
                "fine.toml",
                "[gc]\nevery = \"1s\"\ngroups = [\"release-admins\"]\n\
                 [[retention]]\nrepositories = [\"team/**\", \"!team/keep\"]\n\
                 tags = [\"pr-[0-9]*\", \"{a,b}-*\", \"!pr-1\"]\n\
                 keep_newest = 10\nkeep_within = \"30d\"\nkeep_if = \"all\"\n",
            )?;
            let c = Config::load(Some(Path::new("fine.toml"))).expect("a good config loads");
            assert_eq!(c.retention[0].keep_if, KeepIf::All);
            assert_eq!(c.gc.every, Some(Duration::from_secs(1)));
            assert!(
                c.to_toml().contains("keep_within = \"30days\""),
                "{}",
                c.to_toml()
            );
            Ok(())
        });
    }
}
