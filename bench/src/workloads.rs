//! The requests of each workload, against one registry at a time.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::client::{self, Conn};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes `size` bytes of random data to `path` in 1 MiB pieces; returns its digest.
pub fn random_file(path: &Path, size: u64, seed: u64) -> Result<String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Writes `size` bytes to a scratch file in `dir` and deletes it, leaving that
/// much page-cache memory freshly freed. On this VM, memory the guest has not
/// used recently (or has reported free to the host) costs about 2.4 s of
/// kernel CPU per GiB the first time it is touched; a server writing a blob
/// right after this reuses the freed pages, so neither server's figure
/// depends on which of them happened to find warm pages.
pub fn recycle_page_cache(dir: &Path, size: u64) -> Result<()> {
    let path = dir.join("page-cache-scratch.bin");
    let mut out = std::fs::File::create(&path)?;
    let buf = vec![0x5au8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    drop(out);
    std::fs::remove_file(&path)?;
    Ok(())
}

/// `sync(2)`: every dirty page on the machine written back before a cell
/// starts (through the `sync` command, to keep this crate free of `unsafe`).
pub fn flush_dirty_pages() {
    let _ = std::process::Command::new("sync").status();
}

async fn start_upload(conn: &mut Conn, repo: &str) -> Result<String> {
    let resp = conn
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[("content-length", "0")],
            client::empty(),
        )
        .await?;
    let resp = client::expect(resp, 202, "POST upload").await?;
    let loc = client::location(&resp)?;
    client::drain(resp).await?;
    Ok(loc)
}

/// POST, then PUT ?digest= with the whole file as the body.
pub async fn push_monolithic(
    addr: SocketAddr,
    repo: &str,
    file: &Path,
    size: u64,
    digest: &str,
) -> Result<()> {
    let mut conn = Conn::new(addr);
    let loc = start_upload(&mut conn, repo).await?;
    let len = size.to_string();
    let resp = conn
        .send(
            Method::PUT,
            &client::with_query(&loc, &format!("digest={digest}")),
            &[
                ("content-length", &len),
                ("content-type", "application/octet-stream"),
            ],
            client::file_body(file).await?,
        )
        .await?;
    client::drain(client::expect(resp, 201, "PUT blob").await?).await?;
    Ok(())
}

/// POST, PATCH chunks with Content-Range, then PUT ?digest= with no body.
pub async fn push_chunked(
    addr: SocketAddr,
    repo: &str,
    file: &Path,
    size: u64,
    digest: &str,
    chunk: usize,
) -> Result<()> {
    let mut conn = Conn::new(addr);
    let mut loc = start_upload(&mut conn, repo).await?;
    let mut f = std::fs::File::open(file)?;
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(chunk as u64) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf)?;
        let range = format!("{}-{}", offset, offset + n as u64 - 1);
        let len = n.to_string();
        let resp = conn
            .send(
                Method::PATCH,
                &loc,
                &[
                    ("content-range", &range),
                    ("content-length", &len),
                    ("content-type", "application/octet-stream"),
                ],
                client::full(buf),
            )
            .await?;
        let resp = client::expect(resp, 202, "PATCH chunk").await?;
        loc = client::location(&resp)?;
        client::drain(resp).await?;
        offset += n as u64;
    }
    let resp = conn
        .send(
            Method::PUT,
            &client::with_query(&loc, &format!("digest={digest}")),
            &[("content-length", "0")],
            client::empty(),
        )
        .await?;
    client::drain(client::expect(resp, 201, "PUT close").await?).await?;
    Ok(())
}

/// `clients` concurrent GETs of the blob, each on its own connection; bytes read.
pub async fn pull(
    addr: SocketAddr,
    repo: &str,
    digest: &str,
    size: u64,
    clients: usize,
) -> Result<u64> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let path = format!("/v2/{repo}/blobs/{digest}");
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let resp = conn.send(Method::GET, &path, &[], client::empty()).await?;
            let n = client::drain(client::expect(resp, 200, "GET blob").await?).await?;
            if n != size {
                bail!("GET blob: {n} bytes, expected {size}");
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

pub fn small_blobs(count: usize, size: usize, seed: u64) -> Arc<Vec<(Bytes, String)>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    Arc::new(
        (0..count)
            .map(|_| {
                let mut b = vec![0u8; size];
                rng.fill_bytes(&mut b);
                let d = sha256_digest(&b);
                (Bytes::from(b), d)
            })
            .collect(),
    )
}

/// How the small-blob pushes went through.
#[derive(Default, Debug, Clone, Copy)]
pub struct PushModes {
    /// POST ?digest= answered 201: one request.
    pub single: usize,
    /// POST ?digest= answered 202 (body ignored): PUT ?digest= followed.
    pub two_step: usize,
}

/// Pushes one blob: POST ?digest= with the body; if the registry opens a
/// session instead (202), the PUT follows.
pub async fn push_small(conn: &mut Conn, repo: &str, data: &Bytes, digest: &str) -> Result<bool> {
    let len = data.len().to_string();
    let resp = conn
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[
                ("content-length", &len),
                ("content-type", "application/octet-stream"),
            ],
            client::full(data.clone()),
        )
        .await?;
    match resp.status().as_u16() {
        201 => {
            client::drain(resp).await?;
            Ok(true)
        }
        202 => {
            let loc = client::location(&resp)?;
            client::drain(resp).await?;
            let resp = conn
                .send(
                    Method::PUT,
                    &client::with_query(&loc, &format!("digest={digest}")),
                    &[
                        ("content-length", &len),
                        ("content-type", "application/octet-stream"),
                    ],
                    client::full(data.clone()),
                )
                .await?;
            client::drain(client::expect(resp, 201, "PUT small blob").await?).await?;
            Ok(false)
        }
        _ => {
            client::expect(resp, 201, "POST ?digest=").await?;
            unreachable!()
        }
    }
}

pub async fn push_many(
    addr: SocketAddr,
    repo: &str,
    blobs: Arc<Vec<(Bytes, String)>>,
    clients: usize,
) -> Result<PushModes> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, blobs, repo) = (next.clone(), blobs.clone(), repo.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut modes = PushModes::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((data, digest)) = blobs.get(i) else {
                    return Ok::<_, anyhow::Error>(modes);
                };
                if push_small(&mut conn, &repo, data, digest).await? {
                    modes.single += 1;
                } else {
                    modes.two_step += 1;
                }
            }
        }));
    }
    let mut all = PushModes::default();
    for t in tasks {
        let m = t.await??;
        all.single += m.single;
        all.two_step += m.two_step;
    }
    Ok(all)
}

pub async fn put_manifest(
    addr: SocketAddr,
    repo: &str,
    tag: &str,
    manifest: &[u8],
    media_type: &str,
) -> Result<()> {
    let mut conn = Conn::new(addr);
    let len = manifest.len().to_string();
    let resp = conn
        .send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("content-type", media_type), ("content-length", &len)],
            client::full(manifest.to_vec()),
        )
        .await?;
    client::drain(client::expect(resp, 201, "PUT manifest").await?).await?;
    Ok(())
}

/// A small image: a config blob, one 4 KiB layer, and its OCI manifest under `tag`.
pub async fn push_small_image(addr: SocketAddr, repo: &str, tag: &str) -> Result<String> {
    let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = small_blobs(1, 4096, 7)[0].clone();
    let mut conn = Conn::new(addr);
    let config_digest = sha256_digest(config);
    push_small(&mut conn, repo, &Bytes::from_static(config), &config_digest).await?;
    push_small(&mut conn, repo, &layer.0, &layer.1).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [ { "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.1, "size": 4096 } ]
    });
    let bytes = serde_json::to_vec(&manifest)?;
    put_manifest(addr, repo, tag, &bytes, OCI_MANIFEST).await?;
    Ok(sha256_digest(&bytes))
}

pub struct RateResult {
    pub requests: u64,
    /// Requests sent, the warm-up's included.
    pub sent: u64,
    /// TCP connections opened during the cell (= clients when kept alive).
    pub connections: u64,
    pub errors: u64,
    pub secs: f64,
    /// Sorted latencies in nanoseconds.
    pub latencies: Vec<u64>,
}

impl RateResult {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i] as f64 / 1e6
    }
}

/// A token for `scope` from `GET /token`, with `authorization` (Basic
/// credentials) as the caller.
pub async fn token(addr: SocketAddr, authorization: &str, scope: &str) -> Result<String> {
    let mut conn = Conn::new(addr);
    let resp = conn
        .send(
            Method::GET,
            &format!("/token?service=portcullis&scope={scope}"),
            &[("authorization", authorization)],
            client::empty(),
        )
        .await?;
    let body = client::bytes(client::expect(resp, 200, "GET /token").await?).await?;
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    json["token"]
        .as_str()
        .map(str::to_owned)
        .context("GET /token: no \"token\" in the answer")
}

/// `conc` keep-alive connections each sending `method path` back to back for
/// `secs` (after a warm-up of `warmup`, not counted), with `authorization`
/// (a Bearer token) on every request if given.
pub async fn rate(
    addr: SocketAddr,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    conc: usize,
    warmup: Duration,
    secs: Duration,
) -> Result<RateResult> {
    let connects0 = client::CONNECTS.load(Ordering::Relaxed);
    let start = Instant::now() + warmup;
    let end = start + secs;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (method, path) = (method.clone(), path.to_string());
        let authorization = authorization.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            let mut headers = vec![("accept", OCI_MANIFEST)];
            if let Some(a) = &authorization {
                headers.push(("authorization", a));
            }
            let mut conn = Conn::new(addr);
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut sent = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let resp = conn
                    .send(method.clone(), &path, &headers, client::empty())
                    .await?;
                let ok = resp.status().as_u16() == 200;
                client::drain(resp).await?;
                sent += 1;
                if t0 >= start {
                    if ok {
                        lat.push(t0.elapsed().as_nanos() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            Ok::<_, anyhow::Error>((lat, errors, sent))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut sent = 0;
    for t in tasks {
        let (lat, e, n) = t.await??;
        all.extend(lat);
        errors += e;
        sent += n;
    }
    all.sort_unstable();
    Ok(RateResult {
        requests: all.len() as u64,
        sent,
        connections: client::CONNECTS.load(Ordering::Relaxed) - connects0,
        errors,
        secs: secs.as_secs_f64(),
        latencies: all,
    })
}

/// Writes through to `inner`, hashing what passes.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub struct Layer {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// A gzip tar holding one file of `size` random bytes.
pub fn make_layer(dir: &Path, index: usize, size: usize) -> Result<Layer> {
    let path = dir.join(format!("layer{index}.tar.gz"));
    let file = HashWriter {
        inner: std::io::BufWriter::new(std::fs::File::create(&path)?),
        hasher: Sha256::new(),
    };
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let tar_out = HashWriter {
        inner: gz,
        hasher: Sha256::new(),
    };
    let mut builder = tar::Builder::new(tar_out);
    let mut data = vec![0u8; size];
    SmallRng::seed_from_u64(1000 + index as u64).fill_bytes(&mut data);
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, format!("bench/layer{index}.bin"), &data[..])?;
    let tar_out = builder.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(tar_out.hasher.finalize()));
    let mut file = tar_out.inner.finish()?;
    file.flush()?;
    let digest = format!("sha256:{}", hex::encode(file.hasher.finalize()));
    let size = std::fs::metadata(&path)?.len();
    Ok(Layer {
        path,
        digest,
        size,
        diff_id,
    })
}

/// Config and OCI manifest of an image made of `layers`.
pub fn image_manifest(layers: &[Layer]) -> Result<(Vec<u8>, String, Vec<u8>)> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bench/none"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "portcullis bench"})).collect::<Vec<_>>(),
    }))?;
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.digest, "size": l.size
        })).collect::<Vec<_>>(),
    }))?;
    Ok((config, config_digest, manifest))
}

pub async fn push_image(
    addr: SocketAddr,
    repo: &str,
    tag: &str,
    layers: &[Layer],
    config: &[u8],
    config_digest: &str,
    manifest: &[u8],
) -> Result<()> {
    for l in layers {
        push_monolithic(addr, repo, &l.path, l.size, &l.digest)
            .await
            .with_context(|| format!("push {}", l.path.display()))?;
    }
    let mut conn = Conn::new(addr);
    push_small(
        &mut conn,
        repo,
        &Bytes::copy_from_slice(config),
        config_digest,
    )
    .await?;
    put_manifest(addr, repo, tag, manifest, OCI_MANIFEST).await
}

/// A P-256 key pair made for this run, signing as `cosign sign --key` does:
/// ECDSA P-256 SHA-256, ASN.1 DER, base64.
pub struct CosignKey {
    pair: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

impl CosignKey {
    pub fn generate() -> Result<Self> {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("P-256 key generation failed"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("P-256 key rejected"))?;
        Ok(Self { pair, rng })
    }

    /// The public key as SPKI PEM (`cosign.pub`): the fixed SPKI prefix of
    /// an id-ecPublicKey / prime256v1 key, then the uncompressed point.
    pub fn public_pem(&self) -> String {
        use ring::signature::KeyPair;
        let mut der =
            hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = crate::servers::base64(&der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("ascii"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// base64 of the DER signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String> {
        let sig = self
            .pair
            .sign(&self.rng, message)
            .map_err(|_| anyhow::anyhow!("signing failed"))?;
        Ok(crate::servers::base64(sig.as_ref()))
    }
}

/// Pushes a cosign signature of `digest` in `repo` in the tag scheme: the
/// simple-signing payload blob, a `{}` config, and the signature manifest
/// (one layer, the signature in its annotation) under `sha256-<hex>.sig`.
/// Returns the signature manifest's tag.
pub async fn push_cosign_signature(
    addr: SocketAddr,
    repo: &str,
    digest: &str,
    key: &CosignKey,
) -> Result<String> {
    let hex = digest
        .strip_prefix("sha256:")
        .context("only sha256 digests are signed")?;
    let payload = serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": { "docker-reference": format!("{addr}/{repo}") },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature"
        },
        "optional": null
    }))?;
    let signature = key.sign(&payload)?;
    let payload_digest = sha256_digest(&payload);
    let config: &[u8] = b"{}";
    let config_digest = sha256_digest(config);
    let mut conn = Conn::new(addr);
    push_small(
        &mut conn,
        repo,
        &Bytes::from(payload.clone()),
        &payload_digest,
    )
    .await?;
    push_small(&mut conn, repo, &Bytes::from_static(config), &config_digest).await?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [ {
            "mediaType": SIMPLE_SIGNING,
            "digest": payload_digest,
            "size": payload.len(),
            "annotations": { "dev.cosignproject.cosign/signature": signature }
        } ]
    }))?;
    let tag = format!("sha256-{hex}.sig");
    put_manifest(addr, repo, &tag, &manifest, OCI_MANIFEST).await?;
    Ok(tag)
}

/// The status of one GET of `path` (a manifest, with the OCI Accept header).
pub async fn get_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut conn = Conn::new(addr);
    let resp = conn
        .send(
            Method::GET,
            path,
            &[("accept", OCI_MANIFEST)],
            client::empty(),
        )
        .await?;
    let status = resp.status().as_u16();
    client::drain(resp).await?;
    Ok(status)
}
