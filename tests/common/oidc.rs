//! A real OpenID provider for the tests that verify ID tokens: oauth2-mock-server
//! (npm) behind `tests/oidc/provider.mjs`, which `tests/oidc.sh install` sets up
//! in `~/.cache/portcullis-oidc` (or `PCTEST_OIDC_HOME`).
//!
//! The tokens a test gets come from the provider's own key store, the keys its
//! JWKS publishes, not from a signer of ours beside it: a verifier that agrees
//! with this provider agrees with its discovery document, JWKS and signatures,
//! not merely with our reading of the specifications.
//!
//! - [`Provider::issuer`] is `http://127.0.0.1:PORT`, the `iss` of every token;
//!   discovery is at `{issuer}/.well-known/openid-configuration`, the JWKS at
//!   `{issuer}/jwks`, and `{issuer}/authorize` answers at once with a redirect
//!   carrying a code (authorization code flow with PKCE, no login page).
//! - [`Provider::mint`] signs the claims a test asks for, expired or not yet
//!   valid ones included; [`Provider::rotate`] switches to a new signing key.
//!
//! The provider reads its stdin, a pipe whose write end this struct holds: it
//! exits when the test binary is gone, however it went, as well as on Drop.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// How long the provider may take to print its URLs (node starts in well
/// under a second; the key generation takes a few dozen milliseconds).
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Provider {
    /// `http://127.0.0.1:PORT`, without a trailing slash: the `iss` claim.
    pub issuer: String,
    /// The control port, `http://127.0.0.1:PORT` (`/mint`, `/rotate`, `/kids`).
    control: String,
    child: Child,
}

impl Provider {
    /// Starts a provider on two free loopback ports. Its key store holds an
    /// RS256 key and an ES256 key; `mint` signs with the RS256 one unless
    /// asked for `"alg": "ES256"`.
    ///
    /// Panics, with what the provider wrote on stderr, if it does not come up
    /// within 30 s (node missing, `tests/oidc.sh install` not run...).
    pub fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/provider.mjs");
        let mut child = Command::new("node")
            .arg(&script)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `node {}` (Node >= 20.19 needed): {e}",
                    script.display()
                )
            });

        // stderr is drained for the whole run, so that the provider never
        // blocks on a full pipe, and kept for the panic message.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });

        // The one line of JSON on stdout, read on a thread of its own so that
        // waiting for it can time out.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();

        let ready: Option<Value> = serde_json::from_str(&line).ok();
        let url = |name: &str| {
            ready
                .as_ref()
                .and_then(|v| v[name].as_str())
                .map(str::to_owned)
        };
        let (Some(issuer), Some(control)) = (url("issuer"), url("control")) else {
            let how = match child.try_wait() {
                Ok(Some(status)) => format!("exited ({status})"),
                _ => format!("printed no URLs within {START_TIMEOUT:?}"),
            };
            let _ = child.kill();
            let _ = child.wait();
            // The drain thread may still be copying the last bytes.
            std::thread::sleep(Duration::from_millis(100));
            let stderr = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
            panic!(
                "the OpenID provider (node {}) {how}, its stdout {line:?} \
                 (has tests/oidc.sh install run?); its stderr:\n{stderr}",
                script.display()
            );
        };
        Self {
            issuer,
            control,
            child,
        }
    }

    /// A JWT signed by the provider's current key, with `iss` = [`Self::issuer`],
    /// a `kid` header and `typ` `JWT`. `request` is the body of `POST /mint`,
    /// every field optional:
    ///
    /// - `sub`, `aud` (a string or an array), `groups` (an array): claims;
    /// - `exp_in`: `exp` = now + this many seconds (default 3600, may be negative);
    /// - `nbf_in`: `nbf` = now + this many seconds (default: now - 10);
    /// - `claims`: an object merged last, which may override anything, `iss`
    ///   included; a `null` removes the claim (`{"exp": null}`: no `exp`);
    /// - `header`: the same for the JOSE header (`{"kid": null}`: no `kid`);
    /// - `alg`: `"RS256"` (default) or `"ES256"`, that algorithm's current key;
    /// - `kid`: sign with this key instead (an older one, still in the JWKS).
    ///
    /// `iat` is always now.
    pub async fn mint(&self, request: Value) -> String {
        let reply = self.call("/mint", request).await;
        reply["token"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /mint answered {reply}"))
            .to_owned()
    }

    /// Generates a new RS256 key and signs with it from then on (`mint` and the
    /// provider's own `/token`); returns its kid. The old key stays in the JWKS,
    /// as a real provider keeps publishing it while its tokens live. For an
    /// ES256 key, or to drop the older keys from the JWKS, call
    /// `POST /rotate {"alg": "ES256", "retire": true}` through [`Self::call`].
    pub async fn rotate(&self) -> String {
        let reply = self.call("/rotate", serde_json::json!({})).await;
        reply["kid"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /rotate answered {reply}"))
            .to_owned()
    }

    /// Every kid the JWKS lists (in no meaningful order).
    pub async fn kids(&self) -> Vec<String> {
        let reply = reqwest::get(format!("{}/kids", self.control))
            .await
            .expect("GET /kids of the OpenID provider's control port")
            .json::<Value>()
            .await
            .expect("GET /kids answers JSON");
        serde_json::from_value(reply["kids"].clone())
            .unwrap_or_else(|e| panic!("GET /kids answered {reply}: {e}"))
    }

    /// `POST {control}{path}` with a JSON body, for what the helpers above do
    /// not cover; panics unless the answer is a 2xx with a JSON body.
    pub async fn call(&self, path: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.control))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} to the OpenID provider's control port: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path} {body}: {status} {text}");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path} answered {text:?}, not JSON: {e}"))
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `[[auth.oidc]]` entry trusting `issuer` (audience `portcullis`,
/// users from `sub`, groups from `groups`, keys refetched after 1 s), offered
/// for web sign-in as "Test IdP" when `ui_client_id` is given.
pub fn issuer_config(issuer: &str, ui_client_id: Option<&str>) -> portcullis::config::OidcConfig {
    portcullis::config::OidcConfig {
        issuer: issuer.into(),
        audience: "portcullis".into(),
        user_claim: "sub".into(),
        user_prefix: String::new(),
        groups_claim: "groups".into(),
        group_prefix: String::new(),
        ca_file: None,
        jwks_file: None,
        jwks_refetch: std::time::Duration::from_secs(1),
        ui_client_id: ui_client_id.map(str::to_owned),
        ui_name: ui_client_id.map(|_| "Test IdP".to_owned()),
        ui_client_secret_file: None,
    }
}
