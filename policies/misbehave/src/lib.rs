//! `misbehave`: a policy that misbehaves on purpose, for the registry's tests
//! of its sandbox limits. Not bundled into the binary.
//!
//! Settings: `{"mode": MODE}`, and optionally `"repository"`: misbehave only
//! for that repository, allow the rest. Modes:
//! - `loop`: spins until the fuel runs out; `hog`: reserves memory until the cap;
//!   `trap`: aborts;
//! - `print`: writes 1 MiB to stdout and to stderr, then allows;
//! - `panic`: a Rust panic (its message goes to stderr), then a trap;
//! - `sleep`: sleeps for an hour;
//! - `stdin`: reads stdin to the end, then denies saying how much it read;
//! - `socket`: connects to 127.0.0.1:5000, then denies saying what happened;
//! - `long-deny`: denies with a 6 MB reason;
//! - `lookups`: looks up the request's manifest by tag and blob by digest
//!   1,000 times each (and the repository `other/repo`'s manifest), then
//!   denies saying what each kind of answer came to, e.g. `ok=3 limit=1997`;
//! - `log-flood`: logs 10,000 messages of 10 KiB with newlines, then allows;
//! - `verify-flood`: asks the host to verify 1,000 signatures, then denies
//!   saying how many were answered and refused;
//! - `facts`: denies manifest requests with what the contract showed of the
//!   manifest (`action`, config user, labels, layer count, total size,
//!   children's platforms, `now` > 0), allows the rest;
//! - `allow`.

use std::sync::OnceLock;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    mode: String,
    #[serde(default)]
    repository: Option<String>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn parse(json: &str) -> Result<Settings, String> {
    let s: Settings = serde_json::from_str(json).map_err(|e| e.to_string())?;
    match s.mode.as_str() {
        "loop" | "hog" | "trap" | "print" | "panic" | "sleep" | "stdin" | "socket"
        | "long-deny" | "lookups" | "log-flood" | "verify-flood" | "facts" | "allow" => Ok(s),
        other => Err(format!("unknown mode {other:?}")),
    }
}

struct Policy;

impl Guest for Policy {
    fn validate_settings(settings: String) -> Result<(), String> {
        parse(&settings).map(|_| ())
    }

    fn init(settings: String) -> Result<(), String> {
        SETTINGS
            .set(parse(&settings)?)
            .map_err(|_| "init called twice".to_string())
    }

    fn evaluate(request: Request) -> Decision {
        let Some(settings) = SETTINGS.get() else {
            return Decision::Deny("not initialised".into());
        };
        if settings
            .repository
            .as_ref()
            .is_some_and(|r| *r != request.repository)
        {
            return Decision::Allow;
        }
        match settings.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "hog" => {
                // Reserve without touching: it is the memory cap that stops
                // this, not the fuel.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(8 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => std::process::abort(),
            "print" => {
                let line = "x".repeat(1023);
                for _ in 0..1024 {
                    println!("{line}");
                    eprintln!("{line}");
                }
                Decision::Allow
            }
            "panic" => panic!("misbehave panics on purpose"),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Decision::Allow
            }
            "stdin" => {
                use std::io::Read;
                let mut input = Vec::new();
                match std::io::stdin().read_to_end(&mut input) {
                    Ok(n) => Decision::Deny(format!("read {n} bytes from stdin")),
                    Err(e) => Decision::Deny(format!("stdin: {e}")),
                }
            }
            "socket" => match std::net::TcpStream::connect("127.0.0.1:5000") {
                Ok(_) => Decision::Deny("connected to 127.0.0.1:5000".into()),
                Err(e) => Decision::Deny(format!("cannot connect: {e}")),
            },
            "long-deny" => Decision::Deny("é".repeat(3 << 20)),
            "lookups" => lookups(&request),
            "facts" => facts(&request),
            "log-flood" => {
                let message = "line\nforged: yes ".repeat(600);
                for _ in 0..10_000 {
                    portcullis::policy::log::log(portcullis::policy::log::Level::Warn, &message);
                }
                Decision::Allow
            }
            "verify-flood" => {
                let (mut answered, mut refused) = (0, 0);
                for _ in 0..1000 {
                    match portcullis::policy::crypto::verify_signature("nope", b"m", b"s") {
                        Err(e) if e.starts_with("at most") => refused += 1,
                        _ => answered += 1,
                    }
                }
                Decision::Deny(format!("answered={answered} refused={refused}"))
            }
            _ => Decision::Allow,
        }
    }
}

/// The manifest's facts, as a denial's reason.
fn facts(request: &Request) -> Decision {
    let Some(m) = &request.manifest else {
        return Decision::Allow;
    };
    let mut parts = vec![
        format!("action={:?}", request.action),
        format!("now={}", request.now > 0),
    ];
    if let Some(image) = &m.image {
        parts.push(format!("layers={}", image.layers.len()));
        parts.push(format!("total={}", image.total_size));
        if let Some(c) = &image.config {
            parts.push(format!("os={} arch={}", c.os, c.architecture));
            parts.push(format!("user={:?}", c.user));
            parts.push(format!("labels={:?}", c.labels));
            parts.push(format!(
                "ports={:?} history={}",
                c.exposed_ports, c.history_length
            ));
        } else {
            parts.push("config=none".into());
        }
    }
    for child in &m.children {
        if let Some(p) = &child.platform {
            parts.push(format!("child={}/{}", p.os, p.architecture));
        }
    }
    Decision::Deny(parts.join(" "))
}

/// Asks for far more than an evaluation may look up; tallies the answers.
fn lookups(request: &Request) -> Decision {
    use portcullis::policy::lookup::{self, LookupError};
    use portcullis::policy::types::Reference;
    let mut tally = std::collections::BTreeMap::<&str, u32>::new();
    let mut note = |r: Result<usize, LookupError>| {
        let key = match r {
            Ok(_) => "ok",
            Err(LookupError::NotFound) => "notfound",
            Err(LookupError::Invalid) => "invalid",
            Err(LookupError::TooLarge) => "toolarge",
            Err(LookupError::LimitReached) => "limit",
            Err(LookupError::Unavailable) => "unavailable",
        };
        *tally.entry(key).or_default() += 1;
    };
    let digest = request
        .manifest
        .as_ref()
        .and_then(|m| m.image.as_ref())
        .and_then(|i| i.layers.first())
        .map(|l| l.digest.clone())
        .unwrap_or_default();
    note(lookup::manifest(&Reference::Tag("../../other/repo".into())).map(|m| m.content.len()));
    note(lookup::blob("sha256:../../../etc/passwd").map(|b| b.len()));
    for _ in 0..1000 {
        note(lookup::manifest(&Reference::Tag("v1".into())).map(|m| m.content.len()));
        note(lookup::blob(&digest).map(|b| b.len()));
    }
    let text: Vec<String> = tally.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Decision::Deny(text.join(" "))
}

export!(Policy);
