//! The web UI against a hostile visitor: every page and form without a
//! good session, with another user's, with a bad CSRF token or from another
//! site; hidden repositories asked for by address; HTML in what pushers
//! and users write; open redirects; password guessing; oversized forms;
//! the headers every page carries; OpenID Connect callbacks that were not
//! started here. Nothing here may answer 5xx. (The pages' stories are in
//! `tests/ui.rs`; the harness in `tests/common/ui.rs`.)
//!
//! | hostile case                                                        | expected                                 |
//! |---------------------------------------------------------------------|------------------------------------------|
//! | no session; a garbled, tampered, expired, not-yet-valid or unsigned session; another registry's session; the registry's own access or refresh token; a robot token; an 9 KiB cookie | GET pages: 303 to sign-in; POST forms: 403; `/ui/` anonymous and the cookie cleared; nothing changed |
//! | the session cookie as a Bearer token or a password on `/v2/`, as a refresh token at `/token` | 401 / refused           |
//! | another user's session                                              | only their own tokens and refusals; another's token: 404, still good |
//! | the user's password changes, the user is removed (live reload)      | the session ends within 3 s (a group joined shows as soon) |
//! | forged sessions from one address until it is throttled, then another user's good session from it (unverified since a restart) | anonymous for now, the good cookie kept (not cleared) |
//! | CSRF token missing, empty, wrong, truncated, another session's, a signed-out session's | 403 page, nothing changed |
//! | right token but `Origin` of another site or `null`, `Sec-Fetch-Site: cross-site / same-site`, not a form content type | 403, nothing changed |
//! | sign-in form: no form cookie, field and cookie differ, cross-site   | 403, no session                          |
//! | a repository the viewer may not pull, by name, tag or digest; its delete form | 404 (403 for the delete), the same page as a missing one |
//! | `<script>`, `"><img onerror>` in labels, annotations, user, created, platforms, token descriptions, search, filters, `return`, `Host` | escaped, never raw |
//! | sign-in `return` = another site, `//`, `/\`, `javascript:`, `..`, `%2e%2e`, CRLF, ... | Location `/ui/` (or the given `/ui/` path) |
//! | many wrong passwords for one user, from one address                 | 429 page with `Retry-After`; `/token` refuses alike |
//! | a form body over 16 KiB, not UTF-8                                  | 403, nothing stored                      |
//! | hostile paths and queries (`..`, NUL, huge `n`, long names)          | 4xx, never 5xx                           |
//! | every page, redirect and error                                      | CSP without scripts or inline styles, nosniff, DENY, no-store |
//! | OIDC callback without the flow cookie, wrong/no state, another flow's cookie, a tampered cookie, a replayed code, an ID token with another nonce or none, a provider error | 400 page, no session |

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::oidc::Provider;
use common::ui::{
    described_image, encode, home_lab, jwt_claims, push_as, put_manifest_as, tags_of, Browser,
    Page, ALICE, BOB, CAROL,
};
use common::{descriptor, Image, TestRegistry, OCI_INDEX, OCI_MANIFEST};
use portcullis::config::OidcConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A registry for the tables below: failed logins are not limited by
/// address, where one address sends dozens of bad sessions on purpose
/// (`sign_in_is_throttled...` has the limits).
async fn lab(secrets: &std::path::Path) -> TestRegistry {
    home_lab(secrets, |c| c.auth.failed_logins_per_address = 0).await
}

fn no_server_error(page: &Page, what: &str) {
    assert!(
        !page.status.is_server_error(),
        "{what}: {} {}",
        page.status,
        page.body
    );
}

/// The tokens `browser`'s user has, by id.
async fn token_ids(browser: &mut Browser) -> Vec<String> {
    let page = browser.get("/ui/tokens").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.select("tr.token td.token-id")
        .iter()
        .map(|c| c.text())
        .collect()
}

/// Signs `user` in and makes one token; its id and secret.
async fn make_token(browser: &mut Browser, csrf: &str, description: &str) -> (String, String) {
    let page = browser
        .post(
            "/ui/tokens",
            &[("csrf", csrf), ("description", description)],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let secret = page.text("code#new-token");
    let id = secret[4..20].to_owned();
    (id, secret)
}

/// The registry's own key signing `claims` as a session would be signed.
fn sign_as_registry(registry: &TestRegistry, kid: &str, claims: &Value) -> Option<String> {
    let path = registry
        .config()
        .auth
        .token_key
        .clone()
        .unwrap_or_else(|| registry.root().join("portcullis/token.key"));
    let pem = std::fs::read(path).ok()?;
    let key = portcullis::identity::jwt::SigningKey::from_pem(&pem).expect("the registry's key");
    Some(key.sign(kid, claims).expect("sign"))
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

fn with_payload(token: &str, claims: &Value) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    parts.join(".")
}

#[tokio::test]
async fn pages_and_forms_refuse_visitors_without_a_good_session() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    push_as(&registry, ALICE, "team-a/app", "1", &Image::random()).await;
    let mut alice = Browser::new(&registry);
    let csrf = alice.sign_in(ALICE.0, ALICE.1).await;
    let (token_id, robot_secret) = make_token(&mut alice, &csrf, "kept").await;
    let session = alice.cookie("portcullis_session").unwrap().to_owned();
    let claims = jwt_claims(&session);
    let kid = header_of(&session)["kid"].as_str().unwrap().to_owned();
    let now = portcullis::identity::jwt::now();

    // Another registry (another key) signs alice in too.
    let other_secrets = tempfile::tempdir().unwrap();
    let other = lab(other_secrets.path()).await;
    let mut elsewhere = Browser::new(&other);
    elsewhere.sign_in(ALICE.0, ALICE.1).await;
    let foreign = elsewhere.cookie("portcullis_session").unwrap().to_owned();
    assert_eq!(
        jwt_claims(&foreign)["iss"],
        claims["iss"],
        "same issuer name"
    );

    // The registry's own API tokens for alice.
    let token_answer: Value = registry
        .request(
            Method::GET,
            "/token?service=portcullis&scope=repository:team-a/app:pull&offline_token=true",
        )
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = token_answer["token"].as_str().unwrap().to_owned();
    let refresh = token_answer["refresh_token"].as_str().unwrap().to_owned();

    let mut sub_bob = claims.clone();
    sub_bob["sub"] = json!("bob");
    let mut longer = claims.clone();
    longer["exp"] = json!(now + 365 * 86_400);
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 120);
    let mut early = claims.clone();
    early["nbf"] = json!(now + 600);
    let mut as_access = claims.clone();
    as_access["token_use"] = json!("access");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({ "alg": "none", "typ": "JWT" }).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut bad_signature = session.clone();
    let last = bad_signature.pop().unwrap();
    bad_signature.push(if last == 'A' { 'B' } else { 'A' });

    let mut cases: Vec<(&str, Option<String>)> = vec![
        ("no cookie", None),
        ("garbage", Some("not-a-session".into())),
        (
            "a JWT-looking garbage",
            Some("eyJhbGciOi.eyJzdWIi.c2ln".into()),
        ),
        (
            "payload changed (sub bob)",
            Some(with_payload(&session, &sub_bob)),
        ),
        (
            "payload changed (exp +1y)",
            Some(with_payload(&session, &longer)),
        ),
        ("signature changed", Some(bad_signature)),
        ("alg none", Some(unsigned)),
        ("another registry's session", Some(foreign)),
        ("the registry's access token", Some(access.clone())),
        ("the registry's refresh token", Some(refresh.clone())),
        ("a robot token", Some(robot_secret.clone())),
        ("a 9 KiB cookie", Some("a".repeat(9 * 1024))),
    ];
    // Signed by the registry's own key, but expired, not yet valid, or not
    // a session (where the test can read the key: the filesystem backend).
    for (what, claims) in [
        ("expired 2 minutes ago", &expired),
        ("valid only in 10 minutes", &early),
        ("signed, token_use access", &as_access),
    ] {
        if let Some(token) = sign_as_registry(&registry, &kid, claims) {
            cases.push((what, Some(token)));
        }
    }
    // The harness signs like the registry: the real claims, re-signed, work.
    if let Some(resigned) = sign_as_registry(&registry, &kid, &claims) {
        let mut check = Browser::new(&registry);
        check.set_cookie("portcullis_session", &resigned);
        assert_eq!(check.get("/ui/").await.text("#viewer"), "alice");
    }

    let revoke = format!("/ui/tokens/{token_id}/revoke");
    for (what, cookie) in &cases {
        let mut visitor = Browser::new(&registry);
        let set = |visitor: &mut Browser| {
            if let Some(cookie) = cookie {
                visitor.set_cookie("portcullis_session", cookie);
            }
        };
        set(&mut visitor);
        let home = visitor.get("/ui/").await;
        assert_eq!(home.status, StatusCode::OK, "{what}");
        assert_eq!(home.text("#viewer"), "anonymous", "{what}");
        assert!(home.has("a#signin"), "{what}");
        if cookie.is_some() && !what.contains("9 KiB") {
            assert!(
                home.set_cookie("portcullis_session")
                    .is_some_and(|c| c.contains("Max-Age=0")),
                "{what}: the bad cookie is cleared"
            );
        }
        for path in ["/ui/decisions", "/ui/tokens", "/ui/storage"] {
            set(&mut visitor);
            let page = visitor.get(path).await;
            assert_eq!(page.status, StatusCode::SEE_OTHER, "{what}: GET {path}");
            assert_eq!(
                page.location(),
                format!("/ui/signin?return={}", path.replace('/', "%2F")),
                "{what}: GET {path}"
            );
        }
        for path in [
            "/ui/tokens",
            revoke.as_str(),
            "/ui/signout",
            "/ui/r/team-a/app/:1/delete",
            "/ui/storage/refresh",
        ] {
            set(&mut visitor);
            let page = visitor
                .post(path, &[("csrf", &csrf), ("description", "forged")])
                .await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{what}: POST {path}");
            assert!(
                page.text("#error").contains("not sent from this site"),
                "{what}"
            );
            assert_eq!(page.text("#viewer"), "anonymous", "{what}");
        }
    }
    // Nothing changed: alice's token, the tag, alice's session.
    assert_eq!(token_ids(&mut alice).await, [token_id.as_str()]);
    assert_eq!(tags_of(&registry, BOB, "team-a/app").await, ["1"]);
    assert_eq!(alice.get("/ui/").await.text("#viewer"), "alice");

    // The session is good for /ui/ only.
    let api = |auth: &'static str, value: String| {
        let registry = &registry;
        async move {
            let request = registry.request(Method::GET, "/v2/team-a/app/tags/list");
            let request = match auth {
                "bearer" => request.bearer_auth(value),
                _ => request.basic_auth("alice", Some(value)),
            };
            request.send().await.unwrap().status()
        }
    };
    assert_eq!(
        api("bearer", access.clone()).await,
        StatusCode::OK,
        "control"
    );
    assert_eq!(
        api("bearer", session.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api("basic", session.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let refreshed = registry
        .request(Method::POST, "/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&service=portcullis&refresh_token={session}"
        ))
        .send()
        .await
        .unwrap();
    assert!(
        refreshed.status().is_client_error(),
        "a session is no refresh token: {}",
        refreshed.status()
    );
    // Tokens are no passwords for the sign-in form, ours least of all.
    for (what, password) in [
        ("the session", &session),
        ("an access token", &access),
        ("a robot token", &robot_secret),
    ] {
        let mut visitor = Browser::new(&registry);
        let page = visitor.sign_in_to("alice", password, "/ui/").await;
        assert_eq!(
            page.status,
            StatusCode::UNAUTHORIZED,
            "{what} as a password"
        );
        assert_eq!(
            page.text("#error"),
            "Sign in with your user name and password."
        );
        assert!(visitor.cookie("portcullis_session").is_none());
    }
    // Sign-in at /token with it as a password: refused too.
    let login = registry
        .request(Method::GET, "/token?service=portcullis")
        .basic_auth("alice", Some(&session))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_users_session_sees_and_changes_only_their_own() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    push_as(&registry, BOB, "vault/keys", "1", &Image::random()).await;
    push_as(&registry, ALICE, "team-a/app", "1", &Image::random()).await;
    let (status, _) = registry
        .push_image_as(Some(ALICE), "team-b/app", "1", &Image::random())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut alice = Browser::new(&registry);
    let alice_csrf = alice.sign_in(ALICE.0, ALICE.1).await;
    let (alice_token, alice_secret) = make_token(&mut alice, &alice_csrf, "alice's").await;
    let mut carol = Browser::new(&registry);
    let carol_csrf = carol.sign_in(CAROL.0, CAROL.1).await;
    let (carol_token, _) = make_token(&mut carol, &carol_csrf, "carol's").await;

    // Lists: each their own.
    assert_eq!(token_ids(&mut alice).await, [alice_token.as_str()]);
    assert_eq!(token_ids(&mut carol).await, [carol_token.as_str()]);
    let refusals = carol.get("/ui/decisions").await;
    assert!(
        !refusals.has("tr.decision"),
        "carol was refused nothing: {}",
        refusals.body
    );
    assert!(!refusals.body.contains("team-b"));
    // vault/** is not carol's to see: not listed, not shown, not named.
    let home = carol.get("/ui/").await;
    assert!(!home.body.contains("vault"));
    assert!(!carol.get("/ui/?q=vault").await.body.contains("vault/keys"));
    assert_eq!(
        carol.get("/ui/r/vault/keys").await.status,
        StatusCode::NOT_FOUND
    );
    let storage = carol.get("/ui/storage").await;
    assert!(!storage.body.contains("vault/keys"), "{}", storage.body);
    // Looking is not a request: carol's refusals stay empty (they would
    // name vault/keys), and an anonymous visitor's browsing leaves no
    // refusals on the admin's page either.
    let refusals = carol.get("/ui/decisions").await;
    assert!(!refusals.body.contains("vault"), "{}", refusals.body);
    assert!(!refusals.has("tr.decision"));
    let mut anonymous = Browser::new(&registry);
    for path in ["/ui/", "/ui/r/team-a/app", "/ui/r/vault/keys/:1"] {
        anonymous.get(path).await;
    }
    let mut bob = Browser::new(&registry);
    bob.sign_in(BOB.0, BOB.1).await;
    let all = bob.get("/ui/decisions").await;
    let users: Vec<String> = all
        .select("tr.decision td.user")
        .iter()
        .map(|c| c.text())
        .collect();
    assert_eq!(users, ["alice"], "only alice's refused push: {}", all.body);

    // Forms with carol's session: alice's token, alice's CSRF token.
    for (path, csrf, status) in [
        (
            format!("/ui/tokens/{alice_token}/revoke"),
            carol_csrf.as_str(),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/ui/tokens/{alice_token}/revoke"),
            alice_csrf.as_str(),
            StatusCode::FORBIDDEN,
        ),
        (
            format!("/ui/tokens/{carol_token}/revoke"),
            alice_csrf.as_str(),
            StatusCode::FORBIDDEN,
        ),
        (
            "/ui/signout".to_owned(),
            alice_csrf.as_str(),
            StatusCode::FORBIDDEN,
        ),
        (
            "/ui/r/team-a/app/:1/delete".to_owned(),
            carol_csrf.as_str(),
            StatusCode::FORBIDDEN,
        ),
        (
            "/ui/storage/refresh".to_owned(),
            carol_csrf.as_str(),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let page = carol.post(&path, &[("csrf", csrf)]).await;
        assert_eq!(page.status, status, "carol POST {path}: {}", page.body);
        assert_eq!(page.text("#viewer"), "carol");
    }
    assert_eq!(token_ids(&mut alice).await, [alice_token.as_str()]);
    assert_eq!(token_ids(&mut carol).await, [carol_token.as_str()]);
    assert_eq!(tags_of(&registry, BOB, "team-a/app").await, ["1"]);
    let works = registry
        .request(Method::GET, "/v2/team-a/app/tags/list")
        .basic_auth("alice", Some(&alice_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(works.status(), StatusCode::OK);
    // carol still signed in, alice too.
    assert_eq!(carol.get("/ui/").await.text("#viewer"), "carol");
    assert_eq!(alice.get("/ui/").await.text("#viewer"), "alice");
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_or_from_another_site_change_nothing() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    push_as(&registry, ALICE, "team-a/app", "1", &Image::random()).await;
    let mut bob = Browser::new(&registry);
    let bob_csrf = bob.sign_in(BOB.0, BOB.1).await;
    // A CSRF token of alice's that ended with her sign-out.
    let mut alice = Browser::new(&registry);
    let old_csrf = alice.sign_in(ALICE.0, ALICE.1).await;
    assert_eq!(
        alice
            .post("/ui/signout", &[("csrf", &old_csrf)])
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let csrf = alice.sign_in(ALICE.0, ALICE.1).await;
    let origin = format!("http://{}", registry.addr());

    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, &'a str);
    let form = |csrf: Option<&str>| match csrf {
        Some(c) => format!("csrf={}&description=forged", encode(c)),
        None => "description=forged".to_owned(),
    };
    let urlencoded = "application/x-www-form-urlencoded";
    let cases: Vec<Case> = vec![
        ("no csrf field", form(None), vec![], urlencoded),
        ("empty csrf", form(Some("")), vec![], urlencoded),
        ("zeros", form(Some(&"0".repeat(64))), vec![], urlencoded),
        ("bob's", form(Some(&bob_csrf)), vec![], urlencoded),
        (
            "a signed-out session's",
            form(Some(&old_csrf)),
            vec![],
            urlencoded,
        ),
        ("truncated", form(Some(&csrf[..63])), vec![], urlencoded),
        (
            "one character more",
            form(Some(&format!("{csrf}0"))),
            vec![],
            urlencoded,
        ),
        (
            "upper case",
            form(Some(&csrf.to_uppercase())),
            vec![],
            urlencoded,
        ),
        (
            "the session's cookie",
            form(Some(alice.cookie("portcullis_session").unwrap())),
            vec![],
            urlencoded,
        ),
        (
            "Origin of another site",
            form(Some(&csrf)),
            vec![("origin", "https://evil.example".to_owned())],
            urlencoded,
        ),
        (
            "Origin null",
            form(Some(&csrf)),
            vec![("origin", "null".to_owned())],
            urlencoded,
        ),
        (
            "Origin of a look-alike host",
            form(Some(&csrf)),
            vec![("origin", format!("{origin}.evil.example"))],
            urlencoded,
        ),
        (
            "Sec-Fetch-Site cross-site",
            form(Some(&csrf)),
            vec![("sec-fetch-site", "cross-site".to_owned())],
            urlencoded,
        ),
        (
            "Sec-Fetch-Site same-site",
            form(Some(&csrf)),
            vec![("sec-fetch-site", "same-site".to_owned())],
            urlencoded,
        ),
        (
            "right Origin, cross-site fetch",
            form(Some(&csrf)),
            vec![
                ("origin", origin.clone()),
                ("sec-fetch-site", "cross-site".to_owned()),
            ],
            urlencoded,
        ),
        ("text/plain", form(Some(&csrf)), vec![], "text/plain"),
        (
            "multipart",
            format!(
                "--x\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--x--\r\n"
            ),
            vec![],
            "multipart/form-data; boundary=x",
        ),
        (
            "JSON",
            json!({ "csrf": csrf, "description": "forged" }).to_string(),
            vec![],
            "application/json",
        ),
    ];
    let targets = [
        "/ui/tokens".to_owned(),
        "/ui/signout".to_owned(),
        "/ui/r/team-a/app/:1/delete".to_owned(),
    ];
    for (what, body, headers, content_type) in &cases {
        for target in &targets {
            let mut request = alice
                .request(Method::POST, target)
                .header("content-type", *content_type)
                .body(body.clone());
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let page = alice.send(request).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{what}: {target}");
            assert!(page.has("#error"), "{what}: {target}");
        }
    }
    assert!(token_ids(&mut alice).await.is_empty(), "no token was made");
    assert_eq!(
        alice.get("/ui/").await.text("#viewer"),
        "alice",
        "still signed in"
    );
    // bob may delete, and his forms are just as picky.
    let page = bob
        .send(
            bob.form("/ui/r/team-a/app/:1/delete", &[("csrf", &bob_csrf)])
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(tags_of(&registry, BOB, "team-a/app").await, ["1"]);

    // The control: the same form from this site works.
    let made = alice
        .send(
            alice
                .form("/ui/tokens", &[("csrf", &csrf), ("description", "real")])
                .header("origin", origin.as_str())
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    assert_eq!(token_ids(&mut alice).await.len(), 1);

    // The sign-in form's double submit.
    let mut visitor = Browser::new(&registry);
    let form_page = visitor.get("/ui/signin").await;
    let value = form_page.field("signin", "csrf");
    let fields = |csrf: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("return", "/ui/".to_owned()),
            ("user", "alice".to_owned()),
            ("password", "alice-pw".to_owned()),
        ]
    };
    let cases: Vec<(&str, Option<String>, String, Option<&str>)> = vec![
        ("no form cookie", None, value.clone(), None),
        ("no field", Some(value.clone()), String::new(), None),
        ("field differs", Some(value.clone()), "0".repeat(32), None),
        (
            "cross-site",
            Some(value.clone()),
            value.clone(),
            Some("https://evil.example"),
        ),
        // A cookie a sibling site set for the parent domain (cookie
        // tossing) with the field to match: its Origin gives it away.
        (
            "a tossed cookie from a sibling site",
            Some("0".repeat(32)),
            "0".repeat(32),
            Some("http://evil.127.0.0.1.nip.io"),
        ),
    ];
    for (what, cookie, field, origin) in cases {
        let mut browser = Browser::new(&registry);
        if let Some(cookie) = &cookie {
            browser.set_cookie("portcullis_signin", cookie);
        }
        let pairs = fields(&field);
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut request = browser.form("/ui/signin", &borrowed);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let page = browser.send(request).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "sign-in, {what}");
        assert!(browser.cookie("portcullis_session").is_none(), "{what}");
    }
}

/// `text` with `path` (raw and percent-encoded as the sign-in link has it)
/// replaced by `PATH`.
fn without_path(text: &str, path: &str) -> String {
    let encoded: String = path
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    text.replace(&encoded, "PATH").replace(path, "PATH")
}

#[tokio::test]
async fn repositories_the_viewer_may_not_pull_are_the_same_404_as_missing_ones() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    let secret = Image::random();
    push_as(&registry, BOB, "team-a/app", "v1", &secret).await;
    push_as(&registry, BOB, "vault/keys", "v1", &secret).await;
    let missing_digest = format!("sha256:{}", "1".repeat(64));
    let mut anonymous = Browser::new(&registry);
    let mut carol = Browser::new(&registry);
    let carol_csrf = carol.sign_in(CAROL.0, CAROL.1).await;

    // (viewer, hidden, missing): the hidden one exists.
    let pairs = [
        ("/ui/r/team-a/app", "/ui/r/team-a/nosuch"),
        ("/ui/r/team-a/app/:v1", "/ui/r/team-a/nosuch/:v1"),
        ("/ui/r/team-a/app/:v1", "/ui/r/team-a/app/:nosuch"),
        (
            &format!("/ui/r/team-a/app/@{}", secret.digest),
            &format!("/ui/r/team-a/nosuch/@{}", secret.digest),
        ),
        (
            &format!("/ui/r/team-a/app/@{}", secret.digest),
            &format!("/ui/r/team-a/app/@{missing_digest}"),
        ),
    ];
    for (hidden, missing) in pairs {
        let a = anonymous.get(hidden).await;
        let b = anonymous.get(missing).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{hidden}");
        assert_eq!(b.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(
            without_path(&a.body, hidden),
            without_path(&b.body, missing),
            "anonymous: {hidden} and {missing} must look alike"
        );
        assert!(!a.body.contains(&secret.digest) || hidden.contains(&secret.digest));
    }
    for (hidden, missing) in [
        ("/ui/r/vault/keys", "/ui/r/vault/nosuch"),
        ("/ui/r/vault/keys/:v1", "/ui/r/vault/nosuch/:v1"),
        (
            &format!("/ui/r/vault/keys/@{}", secret.digest),
            &format!("/ui/r/vault/nosuch/@{}", secret.digest),
        ),
    ] {
        let a = carol.get(hidden).await;
        let b = carol.get(missing).await;
        assert_eq!(
            (a.status, b.status),
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
        );
        assert_eq!(
            without_path(&a.body, hidden),
            without_path(&b.body, missing),
            "carol: {hidden} and {missing}"
        );
    }
    // The delete form of a hidden repository: the chain's refusal, the
    // same for a missing one (what carol may not see, she cannot touch).
    let a = carol
        .post("/ui/r/vault/keys/:v1/delete", &[("csrf", &carol_csrf)])
        .await;
    let b = carol
        .post("/ui/r/vault/nosuch/:v1/delete", &[("csrf", &carol_csrf)])
        .await;
    assert_eq!(a.status, b.status, "{} / {}", a.body, b.body);
    assert!(a.status == StatusCode::FORBIDDEN || a.status == StatusCode::NOT_FOUND);
    assert_eq!(
        a.text("#error").replace("vault/keys", "NAME"),
        b.text("#error").replace("vault/nosuch", "NAME")
    );
    assert_eq!(tags_of(&registry, BOB, "vault/keys").await, ["v1"]);
}

#[tokio::test]
async fn html_that_pushers_and_users_write_is_escaped_everywhere() {
    const SCRIPT: &str = "<script>alert(1)</script>";
    const ATTRIBUTE: &str = "\"><img src=x onerror=alert(1)>";
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    // Labels (keys and values), annotations, the user, a command.
    let config: Value = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": SCRIPT,
        "config": {
            "User": ATTRIBUTE,
            "Labels": { SCRIPT: ATTRIBUTE, "org.opencontainers.image.title": SCRIPT },
            "Entrypoint": [SCRIPT],
            "Cmd": [ATTRIBUTE],
            "ExposedPorts": { SCRIPT: {} },
        },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let image = Image::from_parts(
        serde_json::to_vec(&config).unwrap(),
        vec![common::random_bytes(100)],
        json!({ "annotations": { SCRIPT: ATTRIBUTE, "org.x": SCRIPT } }),
    );
    push_as(&registry, ALICE, "team-a/xss", "v1", &image).await;
    // An index whose platforms and annotations carry it too.
    let mut child = descriptor(OCI_MANIFEST, &image.manifest);
    child["platform"] = json!({ "os": SCRIPT, "architecture": ATTRIBUTE });
    child["annotations"] = json!({ "x": SCRIPT });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child],
        "annotations": { ATTRIBUTE: SCRIPT },
    }))
    .unwrap();
    put_manifest_as(&registry, ALICE, "team-a/xss", "multi", OCI_INDEX, index).await;
    let plain = described_image(json!({}), "", json!({}));
    push_as(&registry, ALICE, "team-a/xss", "plain", &plain).await;

    let mut alice = Browser::new(&registry);
    let csrf = alice.sign_in(ALICE.0, ALICE.1).await;
    let made = alice
        .post(
            "/ui/tokens",
            &[
                ("csrf", &csrf),
                ("description", &format!("{SCRIPT}{ATTRIBUTE}")),
            ],
        )
        .await;
    assert_eq!(made.status, StatusCode::OK);
    // A refusal whose reason names the repository (no HTML there: names
    // cannot hold it), seen on the decisions page with hostile filters.
    let (status, _) = registry
        .push_image_as(Some(ALICE), "team-b/xss", "1", &plain)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut bob = Browser::new(&registry);
    bob.sign_in(BOB.0, BOB.1).await;

    let mut pages: Vec<(String, Page)> = Vec::new();
    for path in [
        "/ui/r/team-a/xss".to_owned(),
        "/ui/r/team-a/xss/:v1".to_owned(),
        "/ui/r/team-a/xss/:multi".to_owned(),
        format!("/ui/?q={}", encode(&format!("{SCRIPT}{ATTRIBUTE}"))),
        "/ui/tokens".to_owned(),
        format!(
            "/ui/signin?return={}",
            encode(&format!("/ui/{ATTRIBUTE}{SCRIPT}"))
        ),
    ] {
        let page = alice.get(&path).await;
        pages.push((path, page));
    }
    pages.push(("the token's answer".into(), made));
    for filter in ["repository", "user", "policy", "outcome"] {
        let path = format!(
            "/ui/decisions?{filter}={}",
            encode(&format!("{ATTRIBUTE}{SCRIPT}"))
        );
        let page = bob.get(&path).await;
        pages.push((path, page));
    }
    // The registry's host in the pull lines comes from the Host header.
    let hostile_host = alice
        .send(
            alice
                .request(Method::GET, "/ui/r/team-a/xss/:v1")
                .header("host", "evil\"><script>alert(1)</script>"),
        )
        .await;
    pages.push(("a hostile Host".into(), hostile_host));

    for (what, page) in &pages {
        no_server_error(page, what);
        for raw in ["<script", "<img", "onerror=alert(1)>"] {
            assert!(
                !page.body.contains(raw),
                "{what}: raw {raw:?} in the page:\n{}",
                page.body
            );
        }
    }
    let body = |what: &str| {
        &pages
            .iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("{what}"))
            .1
    };
    let manifest = body("/ui/r/team-a/xss/:v1");
    assert_eq!(manifest.status, StatusCode::OK);
    assert!(manifest
        .body
        .contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // The reader decodes it back: what was pushed is what is shown.
    let labels: Vec<(String, String)> = manifest
        .select("tr.label")
        .iter()
        .map(|r| (r.one("th").text(), r.one("td").text()))
        .collect();
    assert!(
        labels.contains(&(SCRIPT.to_owned(), ATTRIBUTE.to_owned())),
        "{labels:?}"
    );
    assert_eq!(manifest.text("dd#user"), ATTRIBUTE);
    assert_eq!(manifest.text("dd#created"), SCRIPT);
    let annotations: Vec<(String, String)> = manifest
        .select("tr.annotation")
        .iter()
        .map(|r| (r.one("th").text(), r.one("td").text()))
        .collect();
    assert!(annotations.contains(&(SCRIPT.to_owned(), ATTRIBUTE.to_owned())));
    let index = body("/ui/r/team-a/xss/:multi");
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(
        index.text("tr.platform td.platform"),
        format!("{SCRIPT}/{ATTRIBUTE}")
    );
    let tags = body("/ui/r/team-a/xss");
    assert_eq!(tags.text("tr.tag[data-tag=v1] td.created"), SCRIPT);
    let tokens = body("/ui/tokens");
    assert_eq!(
        tokens.text("tr.token td.description"),
        format!("{SCRIPT}{ATTRIBUTE}")
    );
    let search = body(&format!(
        "/ui/?q={}",
        encode(&format!("{SCRIPT}{ATTRIBUTE}"))
    ));
    assert_eq!(
        common::ui::unescape(search.one("form#search input").attr("value").unwrap()),
        format!("{SCRIPT}{ATTRIBUTE}")
    );
    let host = body("a hostile Host");
    assert_eq!(host.status, StatusCode::OK);
    assert!(!host.text("code#pull-by-tag").contains("evil"));
}

#[tokio::test]
async fn the_sign_in_return_goes_nowhere_but_this_ui() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    let cases: &[(&str, &str)] = &[
        ("/ui/r/public/app", "/ui/r/public/app"),
        (
            "/ui/decisions?user=bob&outcome=deny",
            "/ui/decisions?user=bob&outcome=deny",
        ),
        ("https://evil.example", "/ui/"),
        ("https://evil.example/ui/", "/ui/"),
        ("http:evil.example", "/ui/"),
        ("//evil.example", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui//evil.example", "/ui/"),
        ("/\\evil.example", "/ui/"),
        ("/ui/\\evil.example", "/ui/"),
        ("\\\\evil.example", "/ui/"),
        ("javascript:alert(1)", "/ui/"),
        ("JaVaScRiPt:alert(1)", "/ui/"),
        ("data:text/html,<script>alert(1)</script>", "/ui/"),
        ("/ui/../v2/", "/ui/"),
        ("/ui/..", "/ui/"),
        ("/ui/./../v2/_catalog", "/ui/"),
        ("/ui/%2e%2e/v2/_catalog", "/ui/"),
        ("/ui/%2E%2E/v2/_catalog", "/ui/"),
        ("/ui/.%2e/v2/_catalog", "/ui/"),
        ("/ui/%2f%2fevil.example", "/ui/"),
        ("/ui/%5c%5cevil.example", "/ui/"),
        ("/ui/\r\nLocation: https://evil.example", "/ui/"),
        ("/ui/\r\nSet-Cookie: portcullis_session=x", "/ui/"),
        ("/ui/%0d%0aSet-Cookie:%20portcullis_session=x", "/ui/"),
        ("/ui/\u{0}", "/ui/"),
        ("/ui/ x", "/ui/"),
        (" /ui/", "/ui/"),
        ("/ui/\u{e9}", "/ui/"),
        ("/uix", "/ui/"),
        ("/v2/_catalog", "/ui/"),
        ("/", "/ui/"),
        ("", "/ui/"),
    ];
    for (given, expected) in cases {
        // The form carries the checked value.
        let mut browser = Browser::new(&registry);
        let form = browser
            .get(&format!("/ui/signin?return={}", encode(given)))
            .await;
        assert_eq!(form.status, StatusCode::OK, "{given:?}");
        assert_eq!(form.field("signin", "return"), *expected, "form, {given:?}");
        // A hand-made form post with the raw value: the same place.
        let csrf = form.field("signin", "csrf");
        let answer = browser
            .post(
                "/ui/signin",
                &[
                    ("csrf", &csrf),
                    ("return", given),
                    ("user", ALICE.0),
                    ("password", ALICE.1),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{given:?}");
        assert_eq!(answer.location(), *expected, "after sign-in, {given:?}");
        assert_eq!(
            answer.set_cookies().len(),
            2,
            "{given:?}: the session and the spent form cookie, nothing injected"
        );
        // Signed in: the form's address sends on at once, as safely.
        let again = browser
            .get(&format!("/ui/signin?return={}", encode(given)))
            .await;
        assert_eq!(again.status, StatusCode::SEE_OTHER);
        assert_eq!(again.location(), *expected, "signed in, {given:?}");
    }
}

#[tokio::test]
async fn sign_in_is_throttled_per_user_and_per_address_with_the_api() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |c| {
        c.auth.failed_logins_per_user = 3;
        c.auth.failed_logins_per_address = 6;
    })
    .await;
    let attempt = |user: &'static str, password: &'static str| {
        let registry = &registry;
        async move {
            let mut browser = Browser::new(registry);
            browser.sign_in_to(user, password, "/ui/").await
        }
    };
    for _ in 0..3 {
        let page = attempt("alice", "wrong").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    for password in ["wrong", "alice-pw"] {
        let page = attempt("alice", password).await;
        assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "{password}");
        let retry: u64 = page
            .header("retry-after")
            .and_then(|r| r.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(
            page.text("#error").starts_with("Too many failed sign-ins"),
            "{}",
            page.text("#error")
        );
        assert!(page.set_cookie("portcullis_session").is_none());
        assert!(page.has("form#signin"), "the form is shown again");
    }
    // docker login for alice is refused alike; bob is not alice.
    let token = registry
        .request(Method::GET, "/token?service=portcullis")
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(attempt("bob", "bob-pw").await.status, StatusCode::SEE_OTHER);
    // From this address: 3 failures so far, 3 more to the limit of 6.
    for user in ["nobody-1", "nobody-2", "nobody-3"] {
        assert_eq!(attempt(user, "x").await.status, StatusCode::UNAUTHORIZED);
    }
    let page = attempt("carol", "carol-pw").await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.header("retry-after").is_some());
}

#[tokio::test]
async fn oversized_and_malformed_form_bodies_are_refused_not_failed() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    let mut alice = Browser::new(&registry);
    let csrf = alice.sign_in(ALICE.0, ALICE.1).await;
    let mut visitor = Browser::new(&registry);
    let signin_csrf = visitor.get("/ui/signin").await.field("signin", "csrf");

    let body = |what: &str, csrf: &str| -> Vec<u8> {
        let mut body =
            format!("csrf={csrf}&user=alice&password=alice-pw&description=").into_bytes();
        match what {
            "16 KiB + 1" => body.extend(std::iter::repeat_n(b'a', 16 * 1024)),
            "64 KiB" => body.extend(std::iter::repeat_n(b'a', 64 * 1024)),
            _ => body.extend_from_slice(&[0xff, 0xfe, 0xfd]),
        }
        body
    };
    for what in ["16 KiB + 1", "64 KiB", "not UTF-8"] {
        for (browser, path, token) in [
            (&mut visitor, "/ui/signin", signin_csrf.as_str()),
            (&mut alice, "/ui/tokens", csrf.as_str()),
        ] {
            let request = browser
                .request(Method::POST, path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body(what, token));
            let page = browser.send(request).await;
            no_server_error(&page, what);
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{what} to {path}");
        }
    }
    assert!(visitor.cookie("portcullis_session").is_none());
    assert!(token_ids(&mut alice).await.is_empty());
    // Under the bound, a long description is cut to 200 characters, and
    // control characters are dropped.
    let long = format!("a\u{7}b\r\n{}", "x".repeat(10_000));
    let page = alice
        .post("/ui/tokens", &[("csrf", &csrf), ("description", &long)])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let description = page.text("tr.token td.description");
    assert_eq!(description.chars().count(), 200);
    assert!(description.starts_with("abxxx"), "{description}");
}

#[tokio::test]
async fn hostile_paths_and_queries_get_4xx_never_5xx() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    push_as(&registry, ALICE, "team-a/app", "1", &Image::random()).await;
    let mut alice = Browser::new(&registry);
    alice.sign_in(ALICE.0, ALICE.1).await;
    let long_name = "a/".repeat(200) + "a";
    let long_q = "q".repeat(4000);
    let cases: Vec<(String, Option<StatusCode>)> = vec![
        ("/ui/r/".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/r/a/:".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/r/a/@".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/r/a/@sha256:zz".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/r/a/@md5:0000".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/r/UPPER/case".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/r/a/%3Cscript%3E".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/r/a/:%3Cscript%3E".into(), Some(StatusCode::NOT_FOUND)),
        (format!("/ui/r/{long_name}"), Some(StatusCode::NOT_FOUND)),
        ("/ui/r/team-a/app?offset=-5".into(), Some(StatusCode::OK)),
        (
            "/ui/r/team-a/app?offset=99999999999999999999999".into(),
            Some(StatusCode::OK),
        ),
        (
            "/ui/r/team-a/app?offset=18446744073709551615".into(),
            Some(StatusCode::OK),
        ),
        ("/ui/?n=0".into(), Some(StatusCode::OK)),
        ("/ui/?n=-1".into(), Some(StatusCode::OK)),
        (
            "/ui/?n=99999999999999999999999".into(),
            Some(StatusCode::OK),
        ),
        (
            format!("/ui/?after={}", "z".repeat(300)),
            Some(StatusCode::OK),
        ),
        (format!("/ui/?q={long_q}"), Some(StatusCode::OK)),
        ("/ui/?q=%00%ff%fe".into(), Some(StatusCode::OK)),
        ("/ui/?q=%".into(), Some(StatusCode::OK)),
        (
            format!("/ui/decisions?repository={long_q}"),
            Some(StatusCode::OK),
        ),
        ("/ui/decisions?outcome=%00".into(), Some(StatusCode::OK)),
        (
            "/ui/oidc/start?issuer=0".into(),
            Some(StatusCode::NOT_FOUND),
        ),
        (
            "/ui/oidc/start?issuer=-1".into(),
            Some(StatusCode::NOT_FOUND),
        ),
        (
            "/ui/oidc/start?issuer=99999999999999999999".into(),
            Some(StatusCode::NOT_FOUND),
        ),
        ("/ui/oidc/start".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/oidc/callback".into(), Some(StatusCode::BAD_REQUEST)),
        (
            "/ui/oidc/callback?code=x&state=y".into(),
            Some(StatusCode::BAD_REQUEST),
        ),
        ("/ui/nosuch".into(), Some(StatusCode::NOT_FOUND)),
        ("/ui/static/nosuch.css".into(), Some(StatusCode::NOT_FOUND)),
        (
            "/ui/tokens/x/revoke".into(),
            Some(StatusCode::METHOD_NOT_ALLOWED),
        ),
        (
            "/ui/storage/refresh".into(),
            Some(StatusCode::METHOD_NOT_ALLOWED),
        ),
    ];
    for (path, expected) in &cases {
        let page = alice.get(path).await;
        no_server_error(&page, path);
        if let Some(expected) = expected {
            assert_eq!(page.status, *expected, "{path}");
        }
    }
    // Paths no HTTP client sends as they are: over a bare connection.
    for path in [
        "/ui/r/..%2f..%2f..%2fetc%2fpasswd",
        "/ui/r/../../etc/passwd",
        "/ui/r/team-a/app/../../../v2/_catalog",
        "/ui/static/../../../etc/passwd",
        "/ui/r/team-a%00/app",
        "/ui/r/team-a/app/:1/../../x",
        "/ui/%2e%2e/v2/_catalog",
        "/ui/tokens/..%2f..%2fsignout/revoke",
    ] {
        for method in ["GET", "POST"] {
            let response = registry.raw_request(method, path).await;
            assert!(
                (400..500).contains(&response.status) || response.status == 200,
                "{method} {path}: {}",
                response.status
            );
            let body = String::from_utf8_lossy(&response.body);
            assert!(!body.contains("root:"), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn every_page_redirect_and_error_carries_the_security_headers() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = lab(secrets.path()).await;
    let image = described_image(json!({ "a": "b" }), "1000", json!({}));
    push_as(&registry, BOB, "public/app", "v1", &image).await;
    let (status, _) = registry
        .push_image_as(Some(ALICE), "team-b/app", "1", &image)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a refusal for the decisions page"
    );
    let mut anonymous = Browser::new(&registry);
    let mut bob = Browser::new(&registry);
    let csrf = bob.sign_in(BOB.0, BOB.1).await;

    let mut pages: Vec<(String, Page)> = Vec::new();
    for path in [
        "/ui/",
        "/ui/?q=app",
        "/ui/r/public/app",
        "/ui/r/public/app/:v1",
        "/ui/signin",
        "/ui/nosuch",
        "/ui/r/nosuch/app",
        "/ui/tokens",
        "/ui/decisions",
        "/ui/storage",
        "/ui/oidc/callback",
    ] {
        pages.push((format!("anonymous GET {path}"), anonymous.get(path).await));
        pages.push((format!("bob GET {path}"), bob.get(path).await));
    }
    pages.push((
        "bob GET manifest by digest".into(),
        bob.get(&format!("/ui/r/public/app/@{}", image.digest))
            .await,
    ));
    pages.push((
        "POST refused".into(),
        anonymous.post("/ui/tokens", &[("csrf", "x")]).await,
    ));
    pages.push((
        "POST sign-in, wrong password".into(),
        anonymous.sign_in_to("bob", "wrong", "/ui/").await,
    ));
    pages.push((
        "POST token made".into(),
        bob.post("/ui/tokens", &[("csrf", &csrf)]).await,
    ));
    pages.push((
        "POST delete refused".into(),
        bob.post("/ui/r/public/app/:v1/delete", &[("csrf", &csrf)])
            .await,
    ));
    pages.push((
        "POST sign-out".into(),
        bob.post("/ui/signout", &[("csrf", &csrf)]).await,
    ));
    pages.push(("GET /ui".into(), anonymous.get("/ui").await));
    pages.push((
        "GET of a POST form".into(),
        anonymous.get("/ui/signout").await,
    ));
    pages.push((
        "HEAD /ui/".into(),
        anonymous
            .send(anonymous.request(Method::HEAD, "/ui/"))
            .await,
    ));
    let style = anonymous.get("/ui/static/style.css").await;

    let csp = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
               frame-ancestors 'none'; base-uri 'none'";
    for (what, page) in pages
        .iter()
        .chain(std::iter::once(&("style.css".to_owned(), style)))
    {
        no_server_error(page, what);
        let policy = page.header("content-security-policy").unwrap_or("");
        assert_eq!(policy, csp, "{what}");
        assert!(!policy.contains("unsafe-inline") && !policy.contains("script-src"));
        assert_eq!(
            page.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(page.header("x-frame-options"), Some("DENY"), "{what}");
        assert_eq!(
            page.header("referrer-policy"),
            Some("same-origin"),
            "{what}"
        );
        if what == "style.css" {
            assert_eq!(page.header("content-type"), Some("text/css; charset=utf-8"));
            assert_eq!(page.header("cache-control"), Some("public, max-age=3600"));
            continue;
        }
        assert_eq!(page.header("cache-control"), Some("no-store"), "{what}");
        if !page.body.is_empty() {
            assert_eq!(
                page.header("content-type"),
                Some("text/html; charset=utf-8"),
                "{what}"
            );
            // What the policy would block must not be needed: no script,
            // no inline style, no inline event handler.
            for forbidden in ["<script", " style=\"", "<style", " onclick=", "javascript:"] {
                assert!(!page.body.contains(forbidden), "{what}: {forbidden}");
            }
            assert!(page.body.starts_with("<!DOCTYPE html>"), "{what}");
            // Well-formed enough: no element says an attribute twice.
            for element in common::ui::elements(&page.body) {
                let mut names: Vec<&str> = element.attrs.iter().map(|(k, _)| k.as_str()).collect();
                names.sort_unstable();
                let before = names.len();
                names.dedup();
                assert_eq!(
                    names.len(),
                    before,
                    "{what}: <{} {:?}>",
                    element.tag,
                    element.attrs
                );
            }
        }
    }
}

fn oidc(issuer: &str) -> OidcConfig {
    common::oidc::issuer_config(issuer, Some("portcullis"))
}

/// A URL with one query parameter replaced (or removed, with `None`).
fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(name))
        .map(str::to_owned)
        .collect();
    if let Some(value) = value {
        pairs.push(format!("{name}={}", encode(value)));
    }
    format!("{base}?{}", pairs.join("&"))
}

fn param(url: &str, name: &str) -> Option<String> {
    url.split_once('?')?
        .1
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[tokio::test]
async fn openid_connect_callbacks_not_started_here_are_refused() {
    let provider = Provider::start();
    let secrets = tempfile::tempdir().unwrap();
    let issuer = provider.issuer.clone();
    let registry = lab_with_oidc(secrets.path(), &issuer).await;

    // A flow: the redirect to the provider, its cookie, its callback URL.
    struct Flow {
        cookie: String,
        authorize: String,
    }
    async fn start(registry: &TestRegistry, back: &str) -> Flow {
        let mut browser = Browser::new(registry);
        let page = browser
            .get(&format!("/ui/oidc/start?issuer=0&return={}", encode(back)))
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        Flow {
            cookie: browser.cookie("portcullis_oidc").unwrap().to_owned(),
            authorize: page.location().to_owned(),
        }
    }
    async fn at_provider(authorize: &str) -> String {
        let mut browser = Browser::at("http://unused.invalid");
        let page = browser.get(authorize).await;
        assert_eq!(page.status, StatusCode::FOUND, "{}", page.body);
        page.location().to_owned()
    }
    async fn callback(registry: &TestRegistry, url: &str, cookie: Option<&str>) -> Page {
        let mut browser = Browser::new(registry);
        if let Some(cookie) = cookie {
            browser.set_cookie("portcullis_oidc", cookie);
        }
        let page = browser.get(url).await;
        no_server_error(&page, &format!("{url} with the cookie {cookie:?}"));
        page
    }
    let refused = |page: &Page, what: &str| {
        assert_eq!(
            page.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            page.body
        );
        assert!(
            page.text("#error")
                .starts_with("This sign-in cannot be finished"),
            "{what}: {}",
            page.text("#error")
        );
        assert!(page.set_cookie("portcullis_session").is_none(), "{what}");
        assert_eq!(page.text("#viewer"), "anonymous", "{what}");
    };

    let a = start(&registry, "/ui/tokens").await;
    let b = start(&registry, "/ui/").await;
    let a_back = at_provider(&a.authorize).await;
    let b_back = at_provider(&b.authorize).await;
    let state_a = param(&a_back, "state").unwrap();
    refused(&callback(&registry, &a_back, None).await, "no flow cookie");
    refused(
        &callback(&registry, &a_back, Some(&b.cookie)).await,
        "another flow's cookie",
    );
    refused(
        &callback(
            &registry,
            &with_param(&a_back, "state", Some("x")),
            Some(&a.cookie),
        )
        .await,
        "a wrong state",
    );
    refused(
        &callback(
            &registry,
            &with_param(&a_back, "state", None),
            Some(&a.cookie),
        )
        .await,
        "no state",
    );
    // The cookie changed (its return, its nonce): its digest is the state.
    let mut parts: Vec<String> = a.cookie.split('.').map(str::to_owned).collect();
    parts[3] = URL_SAFE_NO_PAD.encode("/ui/decisions");
    refused(
        &callback(&registry, &a_back, Some(&parts.join("."))).await,
        "a cookie with another return",
    );
    let mut parts: Vec<String> = a.cookie.split('.').map(str::to_owned).collect();
    parts[2] = "0".repeat(32);
    refused(
        &callback(&registry, &a_back, Some(&parts.join("."))).await,
        "a cookie with another nonce",
    );
    refused(
        &callback(
            &registry,
            &with_param(&a_back, "code", None),
            Some(&a.cookie),
        )
        .await,
        "no code",
    );
    let error = with_param(
        &with_param(&a_back, "code", None),
        "error",
        Some("access_denied<script>alert(1)</script>"),
    );
    let page = callback(&registry, &error, Some(&a.cookie)).await;
    refused(&page, "the provider's error");
    assert!(!page.body.contains("<script>alert"));
    assert!(page.text("#error").contains("access_denied<script>"));

    // The nonce: the same flow (its state, its PKCE challenge) but the
    // provider asked with another nonce, or none: the ID token it returns
    // does not carry this flow's nonce.
    for (what, nonce) in [("another nonce", Some("f".repeat(32))), ("no nonce", None)] {
        let flow = start(&registry, "/ui/").await;
        let asked = with_param(&flow.authorize, "nonce", nonce.as_deref());
        let back = at_provider(&asked).await;
        let page = callback(&registry, &back, Some(&flow.cookie)).await;
        refused(&page, what);
        assert!(
            page.text("#error").contains("nonce"),
            "{what}: {}",
            page.text("#error")
        );
    }
    // PKCE: the provider asked with another challenge; the verifier in the
    // cookie does not match it, so the provider refuses the exchange.
    let flow = start(&registry, "/ui/").await;
    let asked = with_param(
        &flow.authorize,
        "code_challenge",
        Some(&URL_SAFE_NO_PAD.encode([7u8; 32])),
    );
    let back = at_provider(&asked).await;
    let page = callback(&registry, &back, Some(&flow.cookie)).await;
    assert!(
        page.status.is_client_error(),
        "another challenge: {}",
        page.status
    );
    assert!(page.set_cookie("portcullis_session").is_none());

    // The real one works once; its code replayed (with the cookie an
    // attacker copied) does not.
    let page = callback(&registry, &a_back, Some(&a.cookie)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/ui/tokens");
    let session = page
        .set_cookie("portcullis_session")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("portcullis_session=")
        .to_owned();
    let replay = callback(&registry, &a_back, Some(&a.cookie)).await;
    assert!(
        replay.status.is_client_error(),
        "a replayed code: {}",
        replay.status
    );
    assert!(replay.set_cookie("portcullis_session").is_none());
    assert_eq!(replay.text("#viewer"), "anonymous");
    // b's code with b's cookie still works: flows do not interfere.
    let page = callback(&registry, &b_back, Some(&b.cookie)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        param(&b_back, "state").unwrap_or_default().len(),
        state_a.len()
    );

    // The provider's ID token is not a session, and the session is ours.
    let id_token = provider
        .mint(json!({ "sub": "johndoe", "aud": "portcullis" }))
        .await;
    let mut browser = Browser::new(&registry);
    browser.set_cookie("portcullis_session", &id_token);
    assert_eq!(browser.get("/ui/").await.text("#viewer"), "anonymous");
    browser.set_cookie("portcullis_session", &session);
    assert_eq!(browser.get("/ui/").await.text("#viewer"), "johndoe");
    // A hostile return on the start: the flow comes back to /ui/.
    let flow = start(&registry, "https://evil.example/").await;
    let back = at_provider(&flow.authorize).await;
    let page = callback(&registry, &back, Some(&flow.cookie)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/ui/");
}

async fn lab_with_oidc(secrets: &std::path::Path, issuer: &str) -> TestRegistry {
    let issuer = issuer.to_owned();
    home_lab(secrets, move |c| {
        c.auth.failed_logins_per_address = 0;
        c.auth.oidc = vec![oidc(&issuer)];
    })
    .await
}

/// A config file for a server that reloads it (and its htpasswd file).
fn watched_config(data: &std::path::Path, htpasswd: &std::path::Path, admins: &[&str]) -> String {
    let admins: Vec<String> = admins.iter().map(|u| format!("{u:?}")).collect();
    format!(
        r#"
listen = "127.0.0.1:0"
[storage]
root = "{}"
[auth]
htpasswd = "{}"
failed_logins_per_address = 0
[groups]
admins = [{}]
[[policy.chain]]
name = "team-access"
module = "builtin:group-access"
[policy.chain.settings]
authenticated = [{{ repositories = ["**"], actions = ["pull", "list"] }}]
"#,
        data.display(),
        htpasswd.display(),
        admins.join(", ")
    )
}

#[tokio::test]
async fn a_session_follows_the_accounts_a_new_password_or_a_removed_user_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let htpasswd = common::write_htpasswd(dir.path(), &[ALICE, BOB, CAROL]);
    let config_path = dir.path().join("portcullis.toml");
    std::fs::write(&config_path, watched_config(&data, &htpasswd, &["bob"])).unwrap();
    let config = portcullis::config::Config::load(Some(&config_path)).unwrap();
    let server = portcullis::server::Server::bind_watching(config, Some(config_path.clone()))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let mut alice = Browser::at(&base);
    alice.sign_in(ALICE.0, ALICE.1).await;
    let mut carol = Browser::at(&base);
    carol.sign_in(CAROL.0, CAROL.1).await;
    let mut bob = Browser::at(&base);
    bob.sign_in(BOB.0, BOB.1).await;
    assert!(!alice.get("/ui/decisions").await.has("table#chain"));

    // Waits up to 3 s until `check` holds for the page at `path`.
    async fn becomes(browser: &mut Browser, path: &str, check: impl Fn(&Page) -> bool, what: &str) {
        let started = std::time::Instant::now();
        loop {
            // A cleared cookie would be gone from the jar: keep sending it.
            let cookie = browser.cookie("portcullis_session").map(str::to_owned);
            let page = browser.get(path).await;
            if check(&page) {
                return;
            }
            if let Some(cookie) = cookie {
                browser.set_cookie("portcullis_session", &cookie);
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{what}: not within 3 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // alice becomes an admin in the running config: her session shows it.
    std::fs::write(
        &config_path,
        watched_config(&data, &htpasswd, &["bob", "alice"]),
    )
    .unwrap();
    becomes(
        &mut alice,
        "/ui/decisions",
        |p| p.has("table#chain"),
        "alice an admin",
    )
    .await;
    // alice's password changes, carol is removed: their sessions end;
    // bob's goes on.
    let text = std::fs::read_to_string(&htpasswd).unwrap();
    let rewritten: String = text
        .lines()
        .filter(|l| !l.starts_with("carol:"))
        .map(|l| {
            if l.starts_with("alice:") {
                format!("alice:{}\n", bcrypt::hash("alice-new", 4).unwrap())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&htpasswd, rewritten).unwrap();
    for (browser, who) in [(&mut alice, "alice"), (&mut carol, "carol")] {
        becomes(
            browser,
            "/ui/",
            |p| p.text("#viewer") == "anonymous",
            &format!("{who}'s session ended"),
        )
        .await;
    }
    assert_eq!(bob.get("/ui/").await.text("#viewer"), "bob");
    let page = alice.sign_in_to(ALICE.0, ALICE.1, "/ui/").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "the old password");
    let page = alice.sign_in_to(ALICE.0, "alice-new", "/ui/").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "the new one");
    let _ = stop.send(());
}

#[tokio::test]
async fn forged_cookies_from_an_address_do_not_sign_its_other_users_out() {
    let secrets = tempfile::tempdir().unwrap();
    let mut registry = home_lab(secrets.path(), |c| c.auth.failed_logins_per_address = 3).await;
    let mut alice = Browser::new(&registry);
    alice.sign_in(ALICE.0, ALICE.1).await;
    let cookie = alice.cookie("portcullis_session").unwrap().to_owned();
    // A restart forgets which sessions were verified.
    registry.restart().await;
    let mut alice = Browser::new(&registry);
    alice.set_cookie("portcullis_session", &cookie);
    // Someone at the same address (a proxy, a NAT) sends forged sessions
    // until the address is throttled.
    let mut forger = Browser::new(&registry);
    for i in 0..4 {
        forger.set_cookie(
            "portcullis_session",
            &format!("eyJhbGciOiJFZERTQSJ9.eyJ{i}.c2ln"),
        );
        let page = forger.get("/ui/").await;
        assert_eq!(page.text("#viewer"), "anonymous");
    }
    // alice's session cannot be checked just now: her page is anonymous,
    // but her cookie is kept for when the address may try again.
    let page = alice.get("/ui/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.text("#viewer"), "anonymous");
    assert!(
        page.set_cookie("portcullis_session").is_none(),
        "a good session is not cleared for others' failures: {:?}",
        page.set_cookies()
    );
    assert_eq!(alice.cookie("portcullis_session"), Some(cookie.as_str()));
}
