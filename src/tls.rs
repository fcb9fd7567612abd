//! TLS without a proxy: the rustls configuration (HTTP/1.1 and HTTP/2 by
//! ALPN) loaded from the configured PEM files and re-read when they change
//! (cert-manager renewals, a new `portcullis tls generate`), and
//! `portcullis tls generate`, which makes a local CA and a server certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

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

/// Loads the certificate and key into a config that can be reloaded in place.
pub async fn load(cert: &Path, key: &Path) -> Result<RustlsConfig, TlsError> {
    install_crypto_provider();
    RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|source| TlsError::Load {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })
}

/// Re-reads the certificate and key when anything changes in their
/// directories (Kubernetes swaps a Secret's files by renaming a symlinked
/// directory, editors by rename). A broken pair is logged and the running
/// one kept; connections already open are not disturbed.
pub fn watch(config: RustlsConfig, cert: PathBuf, key: PathBuf) {
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
        let mut loaded = fingerprint(&cert, &key).await;
        while rx.recv().await.is_some() {
            // Let a burst of events settle: cert and key are often written one after the other.
            tokio::time::sleep(Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            let current = fingerprint(&cert, &key).await;
            if current == loaded {
                continue;
            }
            loaded = current;
            match config.reload_from_pem_file(&cert, &key).await {
                Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded"),
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

/// A hash of the certificate and key files as they are now.
async fn fingerprint(cert: &Path, key: &Path) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(tokio::fs::read(cert).await.ok()?);
    hasher.update(tokio::fs::read(key).await.ok()?);
    Some(hasher.finalize().into())
}

/// What `generate` wrote.
pub struct Generated {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a local CA and a server certificate for `hosts` and `ips` in `out`:
/// `ca.crt`, `ca.key` (0600), `tls.crt`, `tls.key` (0600). An existing CA in
/// `out` is reused, so nodes that already trust it keep working.
pub fn generate(
    hosts: &[String],
    ips: &[std::net::IpAddr],
    out: &Path,
) -> Result<Generated, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    std::fs::create_dir_all(out).map_err(|source| TlsError::Write {
        path: out.to_owned(),
        source,
    })?;
    let ca_cert_path = out.join("ca.crt");
    let ca_key_path = out.join("ca.key");

    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "Portcullis local CA");
    ca_params.distinguished_name = ca_name;
    ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);

    let (ca_key, ca_pem) = if ca_cert_path.is_file() && ca_key_path.is_file() {
        let key_pem = read(&ca_key_path)?;
        let cert_pem = read(&ca_cert_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(gen_err)?;
        (key, cert_pem)
    } else {
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = ca_params.self_signed(&key).map_err(gen_err)?;
        write(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write(&ca_cert_path, cert.pem().as_bytes(), 0o644)?;
        (key, cert.pem())
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(gen_err)?;

    let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen_err)?;
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("portcullis"),
    );
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
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
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Write {
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
    let staged = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&staged)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&staged, path).map_err(err)
}
