//! `misbehave`: a policy that misbehaves on purpose, for the registry's tests
//! of its sandbox limits. Not bundled into the binary.
//!
//! Settings: `{"mode": "loop" | "hog" | "trap" | "allow"}`, and optionally
//! `"repository"`: misbehave only for that repository, allow the rest.

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
        "loop" | "hog" | "trap" | "allow" => Ok(s),
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
            _ => Decision::Allow,
        }
    }
}

export!(Policy);
