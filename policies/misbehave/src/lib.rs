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
        | "long-deny" | "allow" => Ok(s),
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
            _ => Decision::Allow,
        }
    }
}

export!(Policy);
