//! A browser without a browser for the web UI's tests (`tests/ui.rs`,
//! `tests/ui_security.rs`): a reqwest client that never follows redirects
//! and keeps cookies by hand (each `Set-Cookie` read, each `Cookie` sent), so
//! a test sees every 303 and every cookie attribute; and a small reader of
//! the pages' HTML that finds elements by the contract's ids and classes
//! (`docs: /work/ui-contract.md`, the pages in `src/ui/`).
//!
//! The reader knows the HTML `maud` writes (double-quoted attributes, no
//! comments or scripts), not HTML at large: enough to select `tr.decision`
//! or `code#new-token` and read their text.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use super::TestRegistry;

/// One visitor: their cookies, and a client that shows every redirect.
pub struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

/// A page as the server sent it.
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Browser {
    /// A visitor of `registry` (its first server: sessions and sign-outs are
    /// the same on every replica, but a test reads one server's ring).
    pub fn new(registry: &TestRegistry) -> Self {
        Self::at(&format!("http://{}", registry.addr()))
    }

    pub fn at(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("build a client"),
            base: base.trim_end_matches('/').to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.insert(name.to_owned(), value.to_owned());
    }

    pub fn forget_cookie(&mut self, name: &str) {
        self.cookies.remove(name);
    }

    /// A request to a path (or an absolute URL) with this visitor's cookies.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut request = self.client.request(method, url);
        if !self.cookies.is_empty() {
            let cookie = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header("cookie", cookie);
        }
        request
    }

    /// Sends `request`, keeps the cookies it sets (a `Max-Age=0` removes one).
    pub async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let response = request.send().await.expect("the request reaches the UI");
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all("set-cookie") {
            let set = set.to_str().expect("Set-Cookie is ASCII");
            let pair = set.split(';').next().unwrap_or("");
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if set.contains("Max-Age=0") || value.is_empty() {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        let body = response.text().await.expect("read the page");
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.request(Method::GET, path);
        self.send(request).await
    }

    /// A form post as a browser sends it from one of this site's pages.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let request = self.form(path, fields);
        self.send(request).await
    }

    /// The request of [`Self::post`], for a test to add headers to.
    pub fn form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.request(Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(fields))
    }

    /// Signs in with the password form (GET the form, POST it back) and
    /// returns the POST's answer (303 when it worked).
    pub async fn sign_in_to(&mut self, user: &str, password: &str, back: &str) -> Page {
        let form = self
            .get(&format!("/ui/signin?return={}", encode(back)))
            .await;
        assert_eq!(
            form.status,
            StatusCode::OK,
            "the sign-in form: {}",
            form.body
        );
        let csrf = form.field("signin", "csrf");
        let back = form.field("signin", "return");
        self.post(
            "/ui/signin",
            &[
                ("csrf", &csrf),
                ("return", &back),
                ("user", user),
                ("password", password),
            ],
        )
        .await
    }

    /// Signs in (and checks it worked); the session's CSRF token.
    pub async fn sign_in(&mut self, user: &str, password: &str) -> String {
        let answer = self.sign_in_to(user, password, "/ui/").await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "{user} signs in: {}",
            answer.body
        );
        assert!(
            self.cookie("portcullis_session").is_some(),
            "{user}: a session cookie"
        );
        let home = self.get("/ui/").await;
        assert_eq!(home.text("#viewer"), user, "the navigation names {user}");
        home.field("signout", "csrf")
    }
}

/// `application/x-www-form-urlencoded`.
pub fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every `Set-Cookie` of the answer.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The `Set-Cookie` that sets (or clears) `name`.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    pub fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("a Location ({}): {}", self.status, self.body))
    }

    /// Every element matching `selector` (see [`select`]).
    pub fn select(&self, selector: &str) -> Vec<Element<'_>> {
        select(&self.body, selector)
    }

    /// The one element matching `selector`; panics if none.
    pub fn one(&self, selector: &str) -> Element<'_> {
        self.select(selector).into_iter().next().unwrap_or_else(|| {
            panic!(
                "no {selector} in the page ({}):\n{}",
                self.status, self.body
            )
        })
    }

    pub fn has(&self, selector: &str) -> bool {
        !self.select(selector).is_empty()
    }

    /// The text of the first element matching `selector`.
    pub fn text(&self, selector: &str) -> String {
        self.one(selector).text()
    }

    /// The value of the input `name` in `form#<form>`.
    pub fn field(&self, form: &str, name: &str) -> String {
        let form = self.one(&format!("form#{form}"));
        form.select("input")
            .into_iter()
            .find(|i| i.attr("name") == Some(name))
            .and_then(|i| i.attr("value").map(unescape))
            .unwrap_or_else(|| {
                panic!(
                    "no input {name} in form#{}: {}",
                    form.attr("id").unwrap_or(""),
                    form.inner
                )
            })
    }
}

/// An element of a page: its tag, attributes and raw inner HTML.
#[derive(Debug, Clone)]
pub struct Element<'a> {
    pub tag: String,
    pub attrs: Vec<(String, String)>,
    pub inner: &'a str,
}

impl<'a> Element<'a> {
    /// An attribute's raw (still escaped) value; `""` for a bare one.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn classes(&self) -> Vec<&str> {
        self.attr("class")
            .map(|c| c.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// The text inside, tags dropped and entities decoded, trimmed.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in self.inner.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        unescape(out.trim())
    }

    pub fn select(&self, selector: &str) -> Vec<Element<'a>> {
        select(self.inner, selector)
    }

    pub fn one(&self, selector: &str) -> Element<'a> {
        self.select(selector)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {selector} in {}", self.inner))
    }
}

/// Decodes the entities maud writes.
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

const VOID: &[&str] = &["input", "meta", "link", "br", "img", "hr"];

/// Every element of `html`, in document order (nested ones included).
pub fn elements(html: &str) -> Vec<Element<'_>> {
    let bytes = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(offset) = html[i..].find('<') {
        let start = i + offset;
        i = start + 1;
        if !bytes.get(i).is_some_and(|b| b.is_ascii_alphabetic()) {
            continue;
        }
        let name_end = html[i..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(html.len(), |e| i + e);
        let tag = html[i..name_end].to_ascii_lowercase();
        let (attrs, open_end) = attributes(html, name_end);
        let inner = if VOID.contains(&tag.as_str()) {
            ""
        } else {
            let end = closing(html, &tag, open_end);
            &html[open_end..end]
        };
        out.push(Element { tag, attrs, inner });
        i = open_end;
    }
    out
}

/// The attributes from `at` to the end of the start tag, and where its content begins.
fn attributes(html: &str, mut at: usize) -> (Vec<(String, String)>, usize) {
    let bytes = html.as_bytes();
    let mut attrs = Vec::new();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        match bytes.get(at) {
            None => return (attrs, html.len()),
            Some(b'>') => return (attrs, at + 1),
            Some(b'/') => at += 1,
            Some(_) => {
                let name_end = html[at..]
                    .find(|c: char| c == '=' || c == '>' || c.is_ascii_whitespace())
                    .map_or(html.len(), |e| at + e);
                let name = html[at..name_end].to_ascii_lowercase();
                at = name_end;
                if bytes.get(at) == Some(&b'=') && bytes.get(at + 1) == Some(&b'"') {
                    let value_end = html[at + 2..].find('"').map_or(html.len(), |e| at + 2 + e);
                    attrs.push((name, html[at + 2..value_end].to_owned()));
                    at = value_end + 1;
                } else {
                    attrs.push((name, String::new()));
                }
            }
        }
    }
}

/// Where the element `tag` whose content starts at `from` closes.
fn closing(html: &str, tag: &str, from: usize) -> usize {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut depth = 1;
    let mut at = from;
    loop {
        let next_close = html[at..].find(&close).map(|e| at + e);
        let next_open = html[at..]
            .match_indices(&open)
            .map(|(e, _)| at + e)
            .find(|&e| {
                html.as_bytes()
                    .get(e + open.len())
                    .is_some_and(|b| !b.is_ascii_alphanumeric())
            });
        match (next_open, next_close) {
            (_, None) => return html.len(),
            (Some(o), Some(c)) if o < c => {
                depth += 1;
                at = o + open.len();
            }
            (_, Some(c)) => {
                depth -= 1;
                if depth == 0 {
                    return c;
                }
                at = c + close.len();
            }
        }
    }
}

/// Elements matching a selector: simple ones (`tag`, `#id`, `.class`, any
/// mix: `tr.decision`, `code#new-token`, `span.badge.immutable`, and
/// `[attr=value]`: `tr[data-tag=v1.0.0]`), separated by spaces for
/// descendants (`table#labels tr.label`).
pub fn select<'a>(html: &'a str, selector: &str) -> Vec<Element<'a>> {
    let mut parts = selector.split_whitespace();
    let first = parts.next().expect("a selector");
    let mut found = select_simple(html, first);
    for part in parts {
        found = found
            .iter()
            .flat_map(|e| select_simple(e.inner, part))
            .collect();
    }
    found
}

fn select_simple<'a>(html: &'a str, selector: &str) -> Vec<Element<'a>> {
    let (selector, attr) = match selector.split_once('[') {
        Some((s, rest)) => {
            let rest = rest.trim_end_matches(']');
            let (k, v) = rest.split_once('=').expect("[attr=value]");
            (s, Some((k.to_owned(), v.to_owned())))
        }
        None => (selector, None),
    };
    let mut tag = None;
    let mut id = None;
    let mut classes = Vec::new();
    let mut current = String::new();
    let mut kind = 't';
    let mut flush = |kind: char, text: &mut String| {
        if !text.is_empty() {
            match kind {
                't' => tag = Some(std::mem::take(text)),
                '#' => id = Some(std::mem::take(text)),
                _ => classes.push(std::mem::take(text)),
            }
        }
    };
    for c in selector.chars() {
        if c == '#' || c == '.' {
            flush(kind, &mut current);
            kind = c;
        } else {
            current.push(c);
        }
    }
    flush(kind, &mut current);
    elements(html)
        .into_iter()
        .filter(|e| tag.as_deref().is_none_or(|t| e.tag == t))
        .filter(|e| id.as_deref().is_none_or(|i| e.attr("id") == Some(i)))
        .filter(|e| {
            let have = e.classes();
            classes.iter().all(|c| have.contains(&c.as_str()))
        })
        .filter(|e| {
            attr.as_ref()
                .is_none_or(|(k, v)| e.attr(k).map(unescape).as_deref() == Some(v.as_str()))
        })
        .collect()
}

/// Polls `check` every 100 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The home lab's accounts: alice is a dev (pushes `team-a/**`), bob an
/// admin and operator (pushes and deletes anything, sees every decision),
/// carol only signs in (pulls and lists what any signed-in user may).
pub const ALICE: (&str, &str) = ("alice", "alice-pw");
pub const BOB: (&str, &str) = ("bob", "bob-pw");
pub const CAROL: (&str, &str) = ("carol", "carol-pw");

/// The chain of the UI tests: anonymous callers pull `public/**` (and so
/// see it listed: the pages browse by pull), signed-in users pull and list
/// everything but `vault/**`; devs push `team-a/**`, ops do anything; `v*`
/// tags never move.
pub fn home_lab_chain() -> Vec<portcullis::config::PolicyEntry> {
    vec![
        super::policy(
            "team-access",
            "builtin:group-access",
            serde_json::json!({
                "anonymous": [{ "repositories": ["public/**"], "actions": ["pull"] }],
                "authenticated": [{ "repositories": ["**", "!vault/**"], "actions": ["pull", "list"] }],
                "groups": {
                    "devs": [{ "repositories": ["team-a/**"], "actions": ["pull", "push", "list"] }],
                    "ops": [{ "repositories": ["**"], "actions": ["pull", "push", "delete", "list"] }],
                }
            }),
        ),
        super::policy(
            "immutable-releases",
            "builtin:tag-immutability",
            serde_json::json!({ "tags": ["v*"] }),
        ),
    ]
}

/// A registry for the home lab in `secrets` (where its htpasswd file goes),
/// then `extra`. One server, also on the S3 pass: a test reads one
/// replica's decision ring.
pub async fn home_lab(
    secrets: &std::path::Path,
    extra: impl FnOnce(&mut portcullis::config::Config),
) -> TestRegistry {
    let htpasswd = super::write_htpasswd(secrets, &[ALICE, BOB, CAROL]);
    let mut registry = TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(htpasswd);
        c.auth.robot_token_refresh = Duration::from_secs(1);
        c.groups.insert("devs".into(), vec!["alice".into()]);
        c.groups.insert("ops".into(), vec!["bob".into()]);
        c.groups.insert("admins".into(), vec!["bob".into()]);
        c.policy.chain = home_lab_chain();
        extra(c);
    })
    .await;
    registry.single_replica();
    registry
}

/// PUTs manifest `bytes` of `media_type` as `user` (its blobs already
/// pushed) and expects it stored.
pub async fn put_manifest_as(
    registry: &TestRegistry,
    user: (&str, &str),
    repository: &str,
    reference: &str,
    media_type: &str,
    bytes: Vec<u8>,
) {
    let put = registry
        .request(
            reqwest::Method::PUT,
            &format!("/v2/{repository}/manifests/{reference}"),
        )
        .basic_auth(user.0, Some(user.1))
        .header("content-type", media_type)
        .body(bytes)
        .send()
        .await
        .expect("manifest PUT reaches the registry");
    assert_eq!(
        put.status(),
        StatusCode::CREATED,
        "{} puts {repository}:{reference}",
        user.0
    );
}

/// Pushes `image` to `repository:tag` as `user` and checks it was stored.
pub async fn push_as(
    registry: &TestRegistry,
    user: (&str, &str),
    repository: &str,
    tag: &str,
    image: &super::Image,
) {
    let (status, body) = registry
        .push_image_as(Some(user), repository, tag, image)
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{} pushes {repository}:{tag}: {body}",
        user.0
    );
}

/// An image whose config has `labels`, `user`, an entrypoint and a command,
/// and whose manifest has `annotations`.
pub fn described_image(
    labels: serde_json::Value,
    user: &str,
    annotations: serde_json::Value,
) -> super::Image {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-12-01T10:00:00Z",
        "config": {
            "User": user,
            "Labels": labels,
            "Entrypoint": ["/app"],
            "Cmd": ["--serve"],
            "ExposedPorts": { "8080/tcp": {} },
        },
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": [{ "created_by": "COPY app /app" }],
        "nonce": hex::encode(super::random_bytes(8)),
    });
    super::Image::from_parts(
        serde_json::to_vec(&config).expect("config serialises"),
        vec![super::random_bytes(1500), super::random_bytes(3000)],
        serde_json::json!({ "annotations": annotations }),
    )
}

/// The tags `/v2/<repository>/tags/list` names, asked as `user`.
pub async fn tags_of(registry: &TestRegistry, user: (&str, &str), repository: &str) -> Vec<String> {
    let response = registry
        .request(Method::GET, &format!("/v2/{repository}/tags/list"))
        .basic_auth(user.0, Some(user.1))
        .send()
        .await
        .expect("tags list reaches the registry");
    assert_eq!(response.status(), StatusCode::OK, "tags of {repository}");
    let body: serde_json::Value = response.json().await.expect("a JSON tag list");
    serde_json::from_value(body["tags"].clone()).unwrap_or_default()
}

/// The claims of a JWT (unverified: the test reads what it was given).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
