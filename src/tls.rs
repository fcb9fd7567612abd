//! TLS without a proxy: the rustls configuration (HTTP/1.1 and HTTP/2 by
//! ALPN) loaded from the configured PEM files and re-read when they change
//! (cert-manager renewals, a new `portcullis tls generate`); the served
//! certificate's end of validity, published and warned about before it comes;
//! and `portcullis tls generate`, which makes a local CA and a server
//! certificate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use time::OffsetDateTime;

/// Default lifetime of a server certificate from `generate`: 397 days, the
/// longest any client accepts for a publicly trusted certificate (Apple,
/// Chrome, Mozilla), so no client policy can refuse it; renewed yearly with
/// one command, warned about 30 days before.
pub const DEFAULT_SERVER_DAYS: u32 = 397;
/// Longest server certificate `generate` makes: Apple platforms refuse TLS
/// server certificates valid longer than 825 days, even under a CA the user
/// installed, so a longer one would fail on every Mac and iPhone.
pub const MAX_SERVER_DAYS: u32 = 825;
/// Lifetime of a new CA: ten years. Replacing it means touching every client
/// and node, so it should outlive many server certificates.
pub const CA_DAYS: u32 = 3650;
/// From how long before its end the served certificate is warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// How often the served certificate's expiry is checked again between reloads.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// Certificates start an hour in the past, so a node whose clock lags a
/// little (a Raspberry Pi has no clock of its own until NTP answers) accepts
/// one made a moment ago. Counted in the lifetime: `--days 397` spans 397 days.
const BACKDATE: time::Duration = time::Duration::hours(1);
const SECONDS_PER_DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load TLS certificate {cert} / key {key}: {source}")]
    Load {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate certificates: {0}")]
    Generate(String),
    #[error("{0}")]
    Refused(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Installs ring as rustls's process-wide crypto provider (once).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads the certificate and key into a config that can be reloaded in
/// place, and reports the certificate's end of validity to `expiry`.
pub async fn load(
    cert: &Path,
    key: &Path,
    expiry: &CertificateExpiry,
) -> Result<RustlsConfig, TlsError> {
    install_crypto_provider();
    let err = |source| TlsError::Load {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let (cert_pem, key_pem) = read_pair(cert, key).await.map_err(err)?;
    let not_after = not_after_of(&cert_pem).map_err(err)?;
    let config = RustlsConfig::from_pem(cert_pem, key_pem)
        .await
        .map_err(err)?;
    expiry.loaded(not_after);
    Ok(config)
}

/// Re-reads the certificate and key when anything changes in their
/// directories (Kubernetes swaps a Secret's files by renaming a symlinked
/// directory, editors by rename). A broken pair is logged and the running
/// one kept; connections already open are not disturbed.
pub fn watch(config: RustlsConfig, cert: PathBuf, key: PathBuf, expiry: CertificateExpiry) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the TLS files; restart to pick up new certificates");
            return;
        }
    };
    let dirs: std::collections::BTreeSet<PathBuf> = [&cert, &key]
        .iter()
        .map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        })
        .collect();
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch TLS directory");
        }
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        // Other files may live in the same directory (a log, say): reload
        // only when the certificate or key bytes actually changed.
        let mut loaded = read_pair(&cert, &key).await.ok().map(|p| fingerprint(&p));
        while rx.recv().await.is_some() {
            // Let a burst of events settle: cert and key are often written one after the other.
            tokio::time::sleep(Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            let pair = read_pair(&cert, &key).await;
            let current = pair.as_ref().ok().map(fingerprint);
            if current == loaded {
                continue;
            }
            loaded = current;
            let reloaded = match pair {
                Ok((cert_pem, key_pem)) => match not_after_of(&cert_pem) {
                    Ok(not_after) => config
                        .reload_from_pem(cert_pem, key_pem)
                        .await
                        .map(|()| not_after),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match reloaded {
                Ok(not_after) => {
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                    expiry.loaded(not_after);
                }
                Err(e) => tracing::error!(
                    cert = %cert.display(),
                    key = %key.display(),
                    error = %e,
                    "TLS reload failed; the previous certificate stays in use"
                ),
            }
        }
    });
}

async fn read_pair(cert: &Path, key: &Path) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    Ok((tokio::fs::read(cert).await?, tokio::fs::read(key).await?))
}

/// A hash of the certificate and key as they were read.
fn fingerprint((cert, key): &(Vec<u8>, Vec<u8>)) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(cert);
    hasher.update(key);
    hasher.finalize().into()
}

/// The notAfter of the first certificate in a PEM file (the server's own:
/// a chain starts with it), as Unix seconds.
fn not_after_of(pem: &[u8]) -> std::io::Result<i64> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| invalid(format!("no PEM certificate: {e}")))?;
    let cert = block
        .parse_x509()
        .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Where a certificate stands on its way to expiry.
#[derive(Debug, PartialEq, Eq)]
pub enum ExpiryState {
    /// More than [`EXPIRY_WARNING_DAYS`] left.
    Valid {
        days_left: i64,
    },
    /// Fewer than [`EXPIRY_WARNING_DAYS`] full days left.
    ExpiresSoon {
        days_left: i64,
    },
    Expired,
}

/// `days_left` counts whole days: a certificate ending in 9 days and 23
/// hours has 9 left.
pub fn expiry_state(not_after: i64, now: i64) -> ExpiryState {
    if not_after <= now {
        return ExpiryState::Expired;
    }
    let days_left = (not_after - now) / SECONDS_PER_DAY;
    if days_left < EXPIRY_WARNING_DAYS {
        ExpiryState::ExpiresSoon { days_left }
    } else {
        ExpiryState::Valid { days_left }
    }
}

/// The served certificate's end of validity: handed to `publish` (the
/// metrics gauge) at load and at every reload, and checked then and every
/// 12 hours: a warning in the log from 30 days before, an error once it has
/// passed. An expired certificate is still served (clients refuse it; a
/// renewal is picked up in place), so the log says loudly what to do.
#[derive(Clone)]
pub struct CertificateExpiry {
    cert: PathBuf,
    not_after: Arc<AtomicI64>,
    publish: Arc<dyn Fn(i64) + Send + Sync>,
}

impl CertificateExpiry {
    pub fn new(cert: PathBuf, publish: impl Fn(i64) + Send + Sync + 'static) -> Self {
        Self {
            cert,
            not_after: Arc::new(AtomicI64::new(i64::MAX)),
            publish: Arc::new(publish),
        }
    }

    fn loaded(&self, not_after: i64) {
        self.not_after.store(not_after, Ordering::Relaxed);
        (self.publish)(not_after);
        self.check();
    }

    /// Logs where the served certificate stands now.
    pub fn check(&self) {
        let not_after = self.not_after.load(Ordering::Relaxed);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let expires = format_unix(not_after);
        let cert = self.cert.display();
        match expiry_state(not_after, now) {
            ExpiryState::Valid { days_left } => {
                tracing::info!(%cert, %expires, days_left, "TLS certificate valid")
            }
            ExpiryState::ExpiresSoon { days_left } => tracing::warn!(
                %cert,
                %expires,
                days_left,
                "TLS certificate expires soon; renew it (`portcullis tls generate` with the same --out, \
                 or your certificate manager): the new files are picked up without a restart"
            ),
            ExpiryState::Expired => tracing::error!(
                %cert,
                %expires,
                "TLS certificate has expired; clients refuse it until it is renewed \
                 (`portcullis tls generate` with the same --out, or your certificate manager)"
            ),
        }
    }

    /// Checks again every 12 hours, for a server that runs for weeks
    /// without a reload.
    pub fn spawn_periodic_check(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_CHECK_EVERY).await;
                this.check();
            }
        });
    }
}

/// `2027-01-07 14:20 UTC`.
pub fn format_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

fn format_unix(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .map(format_utc)
        .unwrap_or_else(|_| format!("{t} (Unix time)"))
}

/// `--days`: a whole number from 1 to [`MAX_SERVER_DAYS`].
pub fn parse_days(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches(['+', '-']);
    let days: i128 = match s.trim().parse() {
        Ok(days) => days,
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(format!(
                "{s} days is out of range: from 1 to {MAX_SERVER_DAYS}"
            ))
        }
        Err(_) => return Err(format!("{s:?} is not a whole number of days")),
    };
    if days < 1 {
        return Err(format!(
            "{days} days: a certificate must be valid for at least 1 day"
        ));
    }
    if days > i128::from(MAX_SERVER_DAYS) {
        return Err(format!(
            "{days} days: at most {MAX_SERVER_DAYS} (Apple platforms refuse server certificates \
             valid longer, even from a private CA); renew instead, the CA is kept"
        ));
    }
    u32::try_from(days).map_err(|_| format!("{days} days is out of range"))
}

/// `--host`: a DNS name as image references spell registries (letters,
/// digits and inner hyphens, dot-separated; no wildcard: a registry has one
/// name), or an IP address. It is printed into the shell commands of the
/// instructions, so nothing else gets through.
pub fn parse_host(s: &str) -> Result<String, String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    if s.is_empty() {
        return Err("empty host name".into());
    }
    if s.len() > 253 {
        return Err(format!("host name of {} characters: at most 253", s.len()));
    }
    if s.contains(':') {
        return Err(format!(
            "{s:?} is not a host name (a port goes in --port, for the instructions)"
        ));
    }
    if s.starts_with("*.") {
        return Err(format!(
            "{s:?}: no wildcards; a registry has one name (give --host once per name)"
        ));
    }
    for label in s.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "{s:?} is not a host name (dot-separated labels of 1-63 letters, digits and inner hyphens)"
            ));
        }
    }
    Ok(s.to_owned())
}

/// The CA `generate` signed with.
pub struct CaSummary {
    /// Its subject's common name: `Portcullis local CA <date> <key id>`, so
    /// two CAs in one trust store are told apart.
    pub name: String,
    pub not_after: OffsetDateTime,
    /// Whether it was already in the directory (and kept) or made now.
    pub reused: bool,
}

/// What `generate` wrote.
pub struct Generated {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: CaSummary,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Set when the server certificate was cut short to end with its CA.
    pub ends_with_ca: bool,
}

/// Makes a local CA and a server certificate for `hosts` and `ips` in `out`,
/// valid for `days`: `ca.crt`, `ca.key` (0600), `tls.crt`, `tls.key` (0600).
/// An existing CA in `out` is reused, so nodes that already trust it keep
/// working; a server certificate never outlives it. Both carry subject key
/// identifiers, and the server certificate an authority key identifier
/// naming the CA's.
pub fn generate(
    hosts: &[String],
    ips: &[IpAddr],
    out: &Path,
    days: u32,
) -> Result<Generated, TlsError> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    parse_days(&days.to_string()).map_err(TlsError::Refused)?;
    if hosts.is_empty() {
        return Err(TlsError::Refused("at least one host name".into()));
    }
    for host in hosts {
        parse_host(host).map_err(TlsError::Refused)?;
    }
    std::fs::create_dir_all(out).map_err(|source| TlsError::Write {
        path: out.to_owned(),
        source,
    })?;
    let ca_cert_path = out.join("ca.crt");
    let ca_key_path = out.join("ca.key");
    // Whole seconds, as certificates store them, so what is reported is what was written.
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let not_before = now - BACKDATE;

    let (ca_key, ca_pem, ca) = match (ca_cert_path.exists(), ca_key_path.exists()) {
        (true, true) => {
            let key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(gen_err)?;
            let pem = read(&ca_cert_path)?;
            let ca = existing_ca(&pem, &key, &ca_cert_path, &ca_key_path)?;
            (key, pem, ca)
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(gen_err)?;
            let (pem, ca) = new_ca(&key, not_before)?;
            write(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write(&ca_cert_path, pem.as_bytes(), 0o644)?;
            (key, pem, ca)
        }
        (has_cert, _) => {
            let (there, missing) = if has_cert {
                (&ca_cert_path, &ca_key_path)
            } else {
                (&ca_key_path, &ca_cert_path)
            };
            return Err(TlsError::Refused(format!(
                "{} is there but {} is not: restore it to keep the CA your clients trust, \
                 or move {} away to make a new CA (every client must then trust the new one)",
                there.display(),
                missing.display(),
                there.display()
            )));
        }
    };
    if ca.not_after <= now {
        return Err(TlsError::Refused(format!(
            "the CA in {} expired on {}: move ca.crt and ca.key away to make a new CA \
             (every client must then trust the new one)",
            ca_cert_path.display(),
            format_utc(ca.not_after)
        )));
    }
    // The CA's own key identifier becomes the certificate's authority key identifier.
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(gen_err)?;

    let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen_err)?;
    for ip in ips {
        let san = SanType::IpAddress(*ip);
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, hosts[0].as_str());
    params.distinguished_name = name;
    // Not a CA, said explicitly: that also writes the subject key identifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // The key is ECDSA: it signs the handshake and encrypts nothing, and RFC
    // 5480 forbids keyEncipherment on an EC key.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    let wanted = not_before + time::Duration::days(i64::from(days));
    let ends_with_ca = wanted > ca.not_after;
    params.not_after = wanted.min(ca.not_after);
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    let cert_path = out.join("tls.crt");
    let key_path = out.join("tls.key");
    // Only the server certificate: clients are given the CA itself.
    write(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(Generated {
        ca_cert: ca_cert_path,
        cert: cert_path,
        key: key_path,
        ca,
        not_before: params.not_before,
        not_after: params.not_after,
        ends_with_ca,
    })
}

/// A new self-signed CA valid for [`CA_DAYS`], named with the day it was
/// made and the start of its key identifier.
fn new_ca(
    key: &rcgen::KeyPair,
    not_before: OffsetDateTime,
) -> Result<(String, CaSummary), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    };
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key_id: String = params
        .key_identifier(key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!(
        "Portcullis local CA {:04}-{:02}-{:02} {key_id}",
        not_before.year(),
        u8::from(not_before.month()),
        not_before.day()
    );
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Portcullis");
    dn.push(DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_before + time::Duration::days(i64::from(CA_DAYS));
    let cert = params
        .self_signed(key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((
        cert.pem(),
        CaSummary {
            name,
            not_after: params.not_after,
            reused: false,
        },
    ))
}

/// The CA already in the directory, checked: a CA certificate whose public
/// key is `key`'s.
fn existing_ca(
    pem: &str,
    key: &rcgen::KeyPair,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CaSummary, TlsError> {
    use rcgen::PublicKeyData as _;
    let unreadable = |e: String| {
        TlsError::Refused(format!(
            "{} is not a readable CA certificate ({e}); move it and {} away to make a new CA",
            cert_path.display(),
            key_path.display()
        ))
    };
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| unreadable(e.to_string()))?;
    let cert = block.parse_x509().map_err(|e| unreadable(e.to_string()))?;
    if !cert.is_ca() {
        return Err(unreadable("not a CA certificate".into()));
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(TlsError::Refused(format!(
            "{} and {} do not belong together (the key is not the certificate's)",
            cert_path.display(),
            key_path.display()
        )));
    }
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("(no common name)")
        .to_owned();
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| unreadable(e.to_string()))?;
    Ok(CaSummary {
        name,
        not_after,
        reused: true,
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file with `mode` from the start (no window with a wider mode).
fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    // A name of its own, made new (never an existing file or a symlink
    // someone left there, whose mode or owner would be theirs).
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let staged = path.with_file_name(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&staged)
        .map_err(err)?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&staged, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_states_around_the_warning_and_the_end() {
        let day = SECONDS_PER_DAY;
        let now = 1_800_000_000;
        assert_eq!(
            expiry_state(now + 400 * day, now),
            ExpiryState::Valid { days_left: 400 }
        );
        assert_eq!(
            expiry_state(now + 30 * day, now),
            ExpiryState::Valid { days_left: 30 }
        );
        assert_eq!(
            expiry_state(now + 30 * day - 1, now),
            ExpiryState::ExpiresSoon { days_left: 29 }
        );
        assert_eq!(
            expiry_state(now + 1, now),
            ExpiryState::ExpiresSoon { days_left: 0 }
        );
        assert_eq!(expiry_state(now, now), ExpiryState::Expired);
        assert_eq!(expiry_state(now - day, now), ExpiryState::Expired);
    }
}
