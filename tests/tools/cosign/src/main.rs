//! `cosign-tool`: an independent implementation of cosign key generation,
//! signing (tag scheme, `sha256-<hex>.sig`) and verification, built on the
//! sigstore project's Rust crate. It exists only for Portcullis' tests; see
//! README.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::verification_constraint::{
    PublicKeyVerifier, VerificationConstraint, VerificationConstraintVec,
};
use sigstore::cosign::{
    ClientBuilder, Constraint, CosignCapabilities, SignatureLayer, verify_constraints,
};
use sigstore::crypto::SigStoreSigner;
use sigstore::crypto::SigningScheme;
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::signing_key::ecdsa::ECDSAKeys;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "\
usage:
  cosign-tool generate-key --alg p256|ed25519 --out DIR
  cosign-tool sign --key DIR/cosign.key --registry HOST:PORT --repo NAME --digest sha256:HEX
                   [--identity HOST/REPO] [--insecure] [--user USER:PASS]
                   [--replace] [--tamper] [--digest-in-payload sha256:OTHER]
  cosign-tool verify --key DIR/cosign.pub --registry HOST:PORT --repo NAME --digest sha256:HEX
                     [--identity HOST/REPO] [--insecure] [--user USER:PASS]
  cosign-tool payload --key DIR/cosign.key --identity HOST/REPO --digest sha256:HEX --out DIR2

The private key's password is read from COSIGN_PASSWORD (unset = empty).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "generate-key" => Flags::parse(rest, &[]).and_then(|f| generate_key(&f)),
        "payload" => Flags::parse(rest, &[]).and_then(|f| payload(&f)),
        "sign" => {
            Flags::parse(rest, &["insecure", "tamper", "replace"]).and_then(|f| block_on(sign(&f)))
        }
        "verify" => Flags::parse(rest, &["insecure"]).and_then(|f| block_on(verify(&f))),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown subcommand {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `verify` reports its verdict on stdout; everything else on stderr.
            if cmd == "verify" {
                println!("{e}");
            } else {
                eprintln!("cosign-tool {cmd}: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `--name value` options and `--switch` booleans.
struct Flags {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Flags {
    fn parse(args: &[String], switches: &[&str]) -> Result<Flags> {
        let mut flags = Flags {
            values: HashMap::new(),
            switches: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            if let Some((k, v)) = name.split_once('=') {
                flags.values.insert(k.to_string(), v.to_string());
            } else if switches.contains(&name) {
                flags.switches.push(name.to_string());
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                flags.values.insert(name.to_string(), v.clone());
            }
        }
        Ok(flags)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn req(&self, name: &str) -> Result<&str> {
        self.get(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn on(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?
        .block_on(f)
}

fn password() -> Vec<u8> {
    std::env::var("COSIGN_PASSWORD")
        .unwrap_or_default()
        .into_bytes()
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(|e| format!("write {}: {e}", path.display()))
}

fn check_digest(d: &str) -> Result<()> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {d:?} is not sha256:HEX"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("digest {d:?} is not sha256:<64 hex>"));
    }
    Ok(())
}

// ---------------------------------------------------------------- keys

fn generate_key(f: &Flags) -> Result<()> {
    let scheme = match f.req("alg")? {
        "p256" => SigningScheme::ECDSA_P256_SHA256_ASN1,
        "ed25519" => SigningScheme::ED25519,
        other => return Err(format!("--alg {other:?}: expected p256 or ed25519")),
    };
    let out = PathBuf::from(f.req("out")?);
    std::fs::create_dir_all(&out).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    let keypair = scheme
        .create_signer()
        .and_then(|s| s.to_sigstore_keypair())
        .map_err(|e| format!("generate key: {e}"))?;
    // cosign's format: PKCS#8 DER sealed with scrypt + nacl secretbox, PEM label
    // "ENCRYPTED SIGSTORE PRIVATE KEY"; an empty password is allowed, as in cosign.
    let private = keypair
        .private_key_to_encrypted_pem(&password())
        .map_err(|e| format!("encrypt private key: {e}"))?;
    let public = keypair
        .public_key_to_pem()
        .map_err(|e| format!("public key: {e}"))?;
    write(&out.join("cosign.key"), private.as_bytes())?;
    write(&out.join("cosign.pub"), public.as_bytes())?;
    println!("{}", out.join("cosign.pub").display());
    Ok(())
}

/// Loads a cosign key (encrypted "ENCRYPTED SIGSTORE/COSIGN PRIVATE KEY" with
/// COSIGN_PASSWORD, or a plain PKCS#8 "PRIVATE KEY") and picks its scheme.
fn load_signer(path: &str) -> Result<SigStoreSigner> {
    let pem = std::fs::read(path).map_err(|e| format!("read {path}: {e}"))?;
    let keypair = SigStoreKeyPair::from_encrypted_pem(&pem, &password())
        .map_err(|e| format!("load {path}: {e} (wrong COSIGN_PASSWORD?)"))?;
    let scheme = match &keypair {
        SigStoreKeyPair::ECDSA(ECDSAKeys::P256(_)) => SigningScheme::ECDSA_P256_SHA256_ASN1,
        SigStoreKeyPair::ECDSA(ECDSAKeys::P384(_)) => SigningScheme::ECDSA_P384_SHA384_ASN1,
        SigStoreKeyPair::ECDSA(ECDSAKeys::P521(_)) => SigningScheme::ECDSA_P521_SHA512_ASN1,
        SigStoreKeyPair::ED25519(_) => SigningScheme::ED25519,
        SigStoreKeyPair::RSA(_) => SigningScheme::RSA_PKCS1_SHA256(0),
    };
    keypair
        .to_sigstore_signer(&scheme)
        .map_err(|e| format!("signer for {path}: {e}"))
}

// ---------------------------------------------------------------- payload

/// An unsigned layer whose simple-signing payload names `identity` and `digest`.
fn unsigned_layer(identity: &str, digest: &str) -> Result<SignatureLayer> {
    let reference: OciReference = identity
        .parse()
        .map_err(|e| format!("identity {identity:?}: {e}"))?;
    let mut layer =
        SignatureLayer::new_unsigned(&reference, digest).map_err(|e| format!("payload: {e}"))?;
    // The crate writes the reference as parsed (normalised, e.g. with ":latest"
    // or a docker.io/ prefix); cosign writes the repository as given.
    layer.simple_signing.critical.identity.docker_reference = identity.to_string();
    Ok(layer)
}

/// Signs the layer's payload with the crate's `PrivateKeySigner` constraint.
fn sign_layer(layer: &mut SignatureLayer, signer: SigStoreSigner) -> Result<()> {
    match PrivateKeySigner::new_with_signer(signer).add_constraint(layer) {
        Ok(true) => Ok(()),
        Ok(false) => Err("layer was already signed".into()),
        Err(e) => Err(format!("sign: {e}")),
    }
}

fn payload(f: &Flags) -> Result<()> {
    let digest = f.req("digest")?;
    check_digest(digest)?;
    let signer = load_signer(f.req("key")?)?;
    let mut layer = unsigned_layer(f.req("identity")?, digest)?;
    sign_layer(&mut layer, signer)?;
    let out = PathBuf::from(f.req("out")?);
    std::fs::create_dir_all(&out).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    // raw_data is exactly the bytes that were signed.
    write(&out.join("payload.json"), &layer.raw_data)?;
    write(
        &out.join("signature.b64"),
        layer.signature.as_deref().unwrap_or_default().as_bytes(),
    )?;
    Ok(())
}

// ---------------------------------------------------------------- registry

fn client(f: &Flags, registry: &str) -> Result<sigstore::cosign::Client> {
    let protocol = if f.on("insecure") {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    };
    ClientBuilder::default()
        .with_oci_client_config(ClientConfig {
            protocol,
            ..Default::default()
        })
        .build()
        .map_err(|e| format!("cosign client: {e}"))
}

fn auth(f: &Flags) -> Result<Auth> {
    match f.get("user") {
        None => Ok(Auth::Anonymous),
        Some(up) => {
            let (u, p) = up
                .split_once(':')
                .ok_or("--user expects USER:PASSWORD".to_string())?;
            Ok(Auth::Basic(u.to_string(), p.to_string()))
        }
    }
}

async fn sign(f: &Flags) -> Result<()> {
    let registry = f.req("registry")?;
    let repo = f.req("repo")?;
    let digest = f.req("digest")?;
    check_digest(digest)?;
    let identity = match f.get("identity") {
        Some(i) => i.to_string(),
        None => format!("{registry}/{repo}"),
    };
    let payload_digest = f.get("digest-in-payload").unwrap_or(digest);
    check_digest(payload_digest)?;

    let signer = load_signer(f.req("key")?)?;
    let mut layer = unsigned_layer(&identity, payload_digest)?;
    sign_layer(&mut layer, signer)?;

    if f.on("tamper") {
        // push_signature serialises `simple_signing` again, so changing it after
        // signing yields a payload that differs from the signed one by one byte.
        let r = &mut layer.simple_signing.critical.identity.docker_reference;
        let last = r.pop().unwrap_or('x');
        r.push(if last == 'x' { 'y' } else { 'x' });
    }

    let target = OciReference::with_tag(
        registry.to_string(),
        repo.to_string(),
        format!("{}.sig", digest.replace(':', "-")),
    );
    let mut client = client(f, registry)?;
    let auth = auth(f)?;
    let mut layers = Vec::new();
    if !f.on("replace") {
        // Like cosign, add to the signatures already under the tag. The crate
        // can only hand back layers it accepts (payload names this digest) and
        // re-serialises their payload, so only layers of this tool's own
        // making survive byte-for-byte; bundle-form (referrers) ones are skipped.
        let image =
            OciReference::with_digest(registry.to_string(), repo.to_string(), digest.into());
        if let Ok(existing) = client.trusted_signature_layers(&auth, &image).await {
            layers.extend(existing.into_iter().filter(|l| l.bundle.is_none()));
        }
    }
    layers.push(layer);
    let pushed = client
        .push_signature(None, &auth, &target, layers)
        .await
        .map_err(|e| format!("push {target}: {e}"))?;
    println!("{}", pushed.manifest_url);
    Ok(())
}

/// A layer must be signed by the key and, if asked, name the given identity.
#[derive(Debug)]
struct KeyAndIdentity {
    key: PublicKeyVerifier,
    identity: Option<String>,
}

impl VerificationConstraint for KeyAndIdentity {
    fn verify(&self, layer: &SignatureLayer) -> sigstore::errors::Result<bool> {
        let id_ok = self
            .identity
            .as_deref()
            .is_none_or(|id| layer.simple_signing.critical.identity.docker_reference == id);
        Ok(id_ok && self.key.verify(layer)?)
    }
}

async fn verify(f: &Flags) -> Result<()> {
    let registry = f.req("registry")?;
    let repo = f.req("repo")?;
    let digest = f.req("digest")?;
    check_digest(digest)?;
    let key_path = f.req("key")?;
    let pem = std::fs::read(key_path).map_err(|e| format!("read {key_path}: {e}"))?;
    let key = PublicKeyVerifier::try_from(&pem).map_err(|e| format!("load {key_path}: {e}"))?;

    let image = OciReference::with_digest(registry.to_string(), repo.to_string(), digest.into());
    let mut client = client(f, registry)?;
    // Finds the image's digest (HEAD), pulls `sha256-<hex>.sig` and (OCI 1.1)
    // referrers; layers whose payload names another digest, or that lack the
    // signature annotation, are dropped here. Fetch errors are only logged by
    // the crate, so "no signatures" also covers "registry unreachable".
    let layers = client
        .trusted_signature_layers(&auth(f)?, &image)
        .await
        .map_err(|e| format!("not verified: {e}"))?;
    if layers.is_empty() {
        return Err(format!("not verified: no signatures found for {image}"));
    }
    let constraints: VerificationConstraintVec = vec![Box::new(KeyAndIdentity {
        key,
        identity: f.get("identity").map(str::to_string),
    })];
    verify_constraints(&layers, constraints.iter()).map_err(|_| {
        format!(
            "not verified: none of {} signature layer(s) is signed by {key_path}{}",
            layers.len(),
            match f.get("identity") {
                Some(id) => format!(" for identity {id}"),
                None => String::new(),
            }
        )
    })?;
    println!("verified");
    Ok(())
}
