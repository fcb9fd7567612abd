//! Identity for every client: the token service (`/token`), anonymous
//! callers, OpenID Connect issuers (a real provider from npm, on loopback),
//! robot tokens, and accounts that reload live.
//!
//! Hostile tokens, each sent as `Authorization: Bearer` on an API request
//! (and where it makes sense at `/token`):
//!
//! | hostile case                                          | expected                                   |
//! |-------------------------------------------------------|--------------------------------------------|
//! | `alg: none`, empty signature                          | 401, Bearer challenge, `invalid_token`     |
//! | HS256 signed with the issuer's public key as secret   | 401 (only RS256, ES256, EdDSA are accepted) |
//! | a trusted issuer's token, payload changed (sub=admin)  | 401 (bad signature)                        |
//! | another issuer, another audience                      | 401                                        |
//! | expired (2 min ago), not valid for 10 more minutes    | 401 (30 s leeway)                          |
//! | 200 tokens naming made-up `kid`s                       | 401 each, one JWKS refetch a second at most, each < 50 ms |
//! | a 20 KiB token (longer than any real JWT)             | 401 without decoding it                    |
//! | a 1 MB token in the header / in the `/token` form     | 431 / 413: refused by the size bounds      |
//! | a token of another registry (its key, its service)    | 401                                        |
//! | a revoked robot token, and tokens minted from it      | 401 within `auth.robot_token_refresh`      |
//! | a refresh token after its robot token was revoked     | 401 at `/token`                            |
//! | a refresh token as a Bearer token; an access token as a refresh token | 401                    |
//! | the registry's own access token as a password (to stretch an ID token) | 401 at `/token`       |
//! | an ID token whose subject is an htpasswd user's name  | 401 (set `user_prefix` for that issuer)    |
//! | an ID token that ends within a minute                 | 401 at `/token`: log in again              |
//! | garbage, `Bearer` with nothing, another scheme        | 401                                        |

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::oidc::Provider;
use common::{expect_error, header, policy, write_htpasswd, TestRegistry};
use portcullis::config::{Config, OidcConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

/// The home-lab setup: anonymous pulls of `public/**`, devs push team-a,
/// ops push anything, the `ci` group (from an OIDC issuer) pushes `ci/**`.
fn group_access() -> portcullis::config::PolicyEntry {
    policy(
        "team-access",
        "builtin:group-access",
        json!({
            "authenticated": [{ "repositories": ["**"], "actions": ["pull", "list"] }],
            "anonymous": [{ "repositories": ["public/**"], "actions": ["pull"] }],
            "groups": {
                "devs": [{ "repositories": ["team-a/**"], "actions": ["pull", "push", "list"] }],
                "ops": [{ "repositories": ["**"], "actions": ["pull", "push", "delete", "list"] }],
                "ci": [{ "repositories": ["ci/**"], "actions": ["pull", "push"] }],
            }
        }),
    )
}

fn oidc(issuer: &str) -> OidcConfig {
    common::oidc::issuer_config(issuer, None)
}

async fn registry(secrets: &std::path::Path, extra: impl FnOnce(&mut Config)) -> TestRegistry {
    let htpasswd = write_htpasswd(secrets, USERS);
    let mut registry = TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(htpasswd);
        c.auth.robot_token_refresh = Duration::from_secs(1);
        c.groups.insert("devs".into(), vec!["alice".into()]);
        c.groups.insert("ops".into(), vec!["bob".into()]);
        c.policy.chain = vec![group_access()];
        extra(c);
    })
    .await;
    // One replica keeps the timing assertions about one process; the robot
    // tokens' test keeps both (on S3) to show they travel through the bucket.
    registry.single_replica();
    registry
}

/// Like [`registry`], with every replica of the S3 pass (requests alternate).
async fn replicated_registry(secrets: &std::path::Path) -> TestRegistry {
    let htpasswd = write_htpasswd(secrets, USERS);
    TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(htpasswd);
        c.auth.robot_token_refresh = Duration::from_secs(1);
        c.groups.insert("ops".into(), vec!["bob".into()]);
        c.policy.chain = vec![group_access()];
    })
    .await
}

/// `GET /token` as docker sends it.
async fn get_token(
    registry: &TestRegistry,
    credentials: Option<(&str, &str)>,
    query: &str,
) -> reqwest::Response {
    let mut request = registry.request(Method::GET, &format!("/token?service=portcullis&{query}"));
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    request.send().await.unwrap()
}

async fn token_of(response: reqwest::Response) -> Value {
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.text().await
    );
    response.json().await.unwrap()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn with_bearer(
    registry: &TestRegistry,
    method: Method,
    path: &str,
    token: &str,
) -> reqwest::Response {
    registry
        .request(method, path)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `POST /token` with an OAuth2 form body, as containerd sends it.
async fn post_form(registry: &TestRegistry, body: String) -> reqwest::Response {
    registry
        .request(Method::POST, "/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// An API request with Basic credentials (curl, scripts).
async fn with_basic(
    registry: &TestRegistry,
    method: Method,
    path: &str,
    (user, password): (&str, &str),
) -> reqwest::Response {
    registry
        .request(method, path)
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_token_service_serves_anonymous_callers_users_and_containerd() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = registry(secrets.path(), |_| {}).await;
    let realm = format!("http://{}/token", registry.addr());

    // The ping: a Bearer challenge naming the token service.
    let ping = registry.get("/v2/").await;
    assert_eq!(ping.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&ping, "www-authenticate").unwrap(),
        format!("Bearer realm=\"{realm}\",service=\"portcullis\"")
    );

    // An anonymous token: pull granted on public/**, nothing on team-a.
    let anonymous = token_of(
        get_token(
            &registry,
            None,
            "scope=repository:public/app:pull,push&scope=repository:team-a/app:pull",
        )
        .await,
    )
    .await;
    let token = anonymous["token"].as_str().unwrap();
    assert_eq!(anonymous["access_token"], anonymous["token"]);
    assert!(anonymous.get("refresh_token").is_none());
    let granted = claims(token);
    assert_eq!(granted["sub"], "");
    assert_eq!(
        granted["access"],
        json!([
            { "type": "repository", "name": "public/app", "actions": ["pull"] },
            { "type": "repository", "name": "team-a/app", "actions": [] },
        ])
    );
    // With it: /v2/ answers, public pulls are decided (404: nothing there), team-a
    // is an insufficient scope.
    assert_eq!(
        with_bearer(&registry, Method::GET, "/v2/", token)
            .await
            .status(),
        StatusCode::OK
    );
    let public = with_bearer(&registry, Method::GET, "/v2/public/app/manifests/1", token).await;
    expect_error(public, 404, "MANIFEST_UNKNOWN").await;
    let private = with_bearer(&registry, Method::GET, "/v2/team-a/app/manifests/1", token).await;
    assert_eq!(
        header(&private, "www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"{realm}\",service=\"portcullis\",\
             scope=\"repository:team-a/app:pull\",error=\"insufficient_scope\""
        )
    );
    expect_error(private, 401, "UNAUTHORIZED").await;

    // Empty Basic credentials (podman, skopeo) are an anonymous caller.
    let empty = registry
        .request(Method::GET, "/v2/public/app/manifests/1")
        .header("authorization", format!("Basic {}", STANDARD.encode(":")))
        .send()
        .await
        .unwrap();
    expect_error(empty, 404, "MANIFEST_UNKNOWN").await;
    let empty_token = get_token(
        &registry,
        Some(("", "")),
        "scope=repository:public/app:pull",
    )
    .await;
    assert_eq!(empty_token.status(), StatusCode::OK);

    // docker login: Basic at /token with offline_token, a refresh token back.
    let alice = token_of(
        get_token(
            &registry,
            Some(("alice", "alice-pw")),
            "scope=repository:team-a/app:pull,push&scope=repository:team-b/app:pull,push&offline_token=true&client_id=docker",
        )
        .await,
    )
    .await;
    let access = alice["token"].as_str().unwrap();
    assert_eq!(
        claims(access)["access"],
        json!([
            { "type": "repository", "name": "team-a/app", "actions": ["pull", "push"] },
            { "type": "repository", "name": "team-b/app", "actions": ["pull"] },
        ])
    );
    let refresh = alice["refresh_token"].as_str().unwrap().to_owned();
    let started = with_bearer(
        &registry,
        Method::POST,
        "/v2/team-a/app/blobs/uploads/",
        access,
    )
    .await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    // The token's access is a hint; the chain decides: team-b push is refused.
    let refused = with_bearer(
        &registry,
        Method::POST,
        "/v2/team-b/app/blobs/uploads/",
        access,
    )
    .await;
    expect_error(refused, 403, "DENIED").await;
    // Basic credentials on API requests keep working (curl, scripts).
    let basic = with_basic(
        &registry,
        Method::POST,
        "/v2/team-a/app/blobs/uploads/",
        ("alice", "alice-pw"),
    )
    .await;
    assert_eq!(basic.status(), StatusCode::ACCEPTED);

    // containerd: the OAuth2 form, password and refresh grants.
    let password = post_form(
        &registry,
        "grant_type=password&username=bob&password=bob-pw&service=portcullis&client_id=containerd-client&scope=repository%3Ateam-b%2Fapp%3Apull%2Cpush"
            .into(),
    ).await;
    let password: Value = token_of(password).await;
    assert_eq!(password["scope"], "repository:team-b/app:pull,push");
    let bob = password["access_token"].as_str().unwrap();
    assert_eq!(
        with_bearer(
            &registry,
            Method::POST,
            "/v2/team-b/app/blobs/uploads/",
            bob
        )
        .await
        .status(),
        StatusCode::ACCEPTED
    );
    let refreshed = post_form(&registry, format!(
        "grant_type=refresh_token&refresh_token={refresh}&service=portcullis&scope=repository%3Ateam-a%2Fapp%3Apush"
    ))
    .await;
    let refreshed: Value = token_of(refreshed).await;
    assert_eq!(
        claims(refreshed["access_token"].as_str().unwrap())["sub"],
        "alice"
    );
    let unknown_grant = post_form(
        &registry,
        "grant_type=client_credentials&service=portcullis".into(),
    )
    .await;
    assert_eq!(unknown_grant.status(), StatusCode::BAD_REQUEST);
    let wrong_service = registry.get("/token?service=elsewhere").await;
    assert_eq!(wrong_service.status(), StatusCode::BAD_REQUEST);
    let wrong_password = get_token(&registry, Some(("alice", "nope")), "").await;
    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&wrong_password, "www-authenticate")
        .unwrap()
        .starts_with("Basic realm="));
}

/// A token signed with `key` (HMAC-SHA256) under `header`.
fn hs256(header: Value, payload: Value, key: &[u8]) -> String {
    let signing = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, signing.as_bytes());
    format!("{signing}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

async fn expect_invalid_token(registry: &TestRegistry, case: &str, token: &str) -> Duration {
    let started = Instant::now();
    let response = with_bearer(registry, Method::GET, "/v2/ci/app/tags/list", token).await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
    let challenge = header(&response, "www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=") && challenge.contains("error=\"invalid_token\""),
        "{case}: {challenge}"
    );
    took
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_a_challenge_and_quickly() {
    let provider = Provider::start();
    let secrets = tempfile::tempdir().unwrap();
    let issuer = provider.issuer.clone();
    let registry = registry(secrets.path(), |c| {
        c.auth.oidc = vec![oidc(&issuer)];
        // Failed tokens count against the address: off here, where one
        // address sends hundreds on purpose (tests/accounts.rs has the limits).
        c.auth.failed_logins_per_address = 0;
    })
    .await;
    let now = portcullis::identity::jwt::now();
    let good = json!({ "sub": "ci-job", "aud": "portcullis", "groups": ["ci"] });
    let valid = provider.mint(good.clone()).await;
    // The real thing works (and warms the key cache).
    let ok = with_bearer(&registry, Method::GET, "/v2/ci/app/tags/list", &valid).await;
    expect_error(ok, 404, "NAME_UNKNOWN").await;

    let header_of = |token: &str| -> Value {
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let payload = json!({ "iss": issuer, "sub": "ci-job", "aud": "portcullis", "groups": ["ci"], "exp": now + 600 });
    let jwks: Value = reqwest::get(format!("{issuer}/jwks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_key = jwks["keys"][0].to_string();
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            json!({ "iss": issuer, "sub": "admin", "aud": "portcullis", "groups": ["ops"], "exp": now + 600 })
                .to_string(),
        );
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(json!({ "alg": "none", "typ": "JWT" }).to_string()),
                URL_SAFE_NO_PAD.encode(payload.to_string())
            ),
        ),
        (
            "HS256 with the public key",
            hs256(
                json!({ "alg": "HS256", "kid": header_of(&valid)["kid"] }),
                payload.clone(),
                public_key.as_bytes(),
            ),
        ),
        ("tampered payload", tampered),
        (
            "another issuer",
            provider
                .mint(json!({ "sub": "x", "aud": "portcullis", "claims": { "iss": "http://127.0.0.1:1" } }))
                .await,
        ),
        (
            "another audience",
            provider.mint(json!({ "sub": "x", "aud": "elsewhere" })).await,
        ),
        (
            "expired",
            provider
                .mint(json!({ "sub": "x", "aud": "portcullis", "exp_in": -120 }))
                .await,
        ),
        (
            "not yet valid",
            provider
                .mint(json!({ "sub": "x", "aud": "portcullis", "nbf_in": 600 }))
                .await,
        ),
        ("20 KiB", format!("eyJ{}", "A".repeat(20 * 1024))),
        ("garbage", "not-a-token".into()),
        ("three dots", "...".into()),
    ];
    for (case, token) in &cases {
        expect_invalid_token(&registry, case, token).await;
    }
    let nothing = registry
        .request(Method::GET, "/v2/ci/app/tags/list")
        .header("authorization", "Bearer")
        .send()
        .await
        .unwrap();
    assert_eq!(nothing.status(), StatusCode::UNAUTHORIZED);
    let other_scheme = registry
        .request(Method::GET, "/v2/ci/app/tags/list")
        .header("authorization", "Negotiate abc")
        .send()
        .await
        .unwrap();
    assert_eq!(other_scheme.status(), StatusCode::UNAUTHORIZED);

    // A flood of made-up kids: each refused, none slow, the JWKS fetched at
    // most once a second (the provider is not hammered).
    let mut took = Vec::new();
    for i in 0..200 {
        let token = provider
            .call(
                "/mint",
                json!({ "sub": "x", "aud": "portcullis", "header": { "kid": format!("made-up-{i}") } }),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let refusal = expect_invalid_token(&registry, "unknown kid", &token).await;
        // The first may wait for the one refetch the flood is allowed.
        if i > 0 {
            took.push(refusal);
        }
    }
    took.sort();
    // Each refusal is answered from memory; the other tests of this binary
    // share the 2 cores, so allow two scheduling hiccups in 199.
    let third_slowest = took[took.len() - 3];
    eprintln!(
        "unknown-kid refusals: median {:?}, third slowest {third_slowest:?}, slowest {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(
        third_slowest < Duration::from_millis(50),
        "refusals of unknown kids took up to {third_slowest:?}"
    );
    // And the valid token, cached, still answers.
    let ok = with_bearer(&registry, Method::GET, "/v2/ci/app/tags/list", &valid).await;
    expect_error(ok, 404, "NAME_UNKNOWN").await;

    // 1 MB: the header bound answers 431, the form bound 413; never a 5xx.
    let huge = "A".repeat(1 << 20);
    let in_header = registry.raw_request("GET", "/v2/").await;
    assert_eq!(in_header.status, 401);
    let in_header = registry
        .request(Method::GET, "/v2/")
        .bearer_auth(&huge)
        .send()
        .await;
    match in_header {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        // hyper may close the connection after its 431, before reqwest reads it.
        Err(e) => eprintln!("1 MB header: connection ended ({e})"),
    }
    let in_form = post_form(
        &registry,
        format!("grant_type=password&username=x&password={huge}"),
    )
    .await;
    assert_eq!(in_form.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A token of another registry: its own key and service name.
    let other_secrets = tempfile::tempdir().unwrap();
    let other = registry_named(other_secrets.path(), "elsewhere").await;
    let foreign = token_of(get_token_for(&other, "elsewhere", ("alice", "alice-pw")).await).await;
    expect_invalid_token(
        &registry,
        "another registry's token",
        foreign["token"].as_str().unwrap(),
    )
    .await;
}

async fn registry_named(secrets: &std::path::Path, service: &str) -> TestRegistry {
    let service = service.to_owned();
    registry(secrets, move |c| c.auth.realm = service).await
}

async fn get_token_for(
    registry: &TestRegistry,
    service: &str,
    (user, password): (&str, &str),
) -> reqwest::Response {
    registry
        .request(Method::GET, &format!("/token?service={service}"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn id_tokens_log_in_push_where_their_group_may_and_key_rotation_is_followed() {
    let provider = Provider::start();
    let secrets = tempfile::tempdir().unwrap();
    let issuer = provider.issuer.clone();
    let registry = registry(secrets.path(), |c| c.auth.oidc = vec![oidc(&issuer)]).await;
    let id_token = provider
        .mint(json!({ "sub": "ci-job", "aud": "portcullis", "groups": ["ci"] }))
        .await;
    // docker login -u anything --password-stdin <<< "$ID_TOKEN"
    let login = token_of(
        get_token(
            &registry,
            Some(("anything", &id_token)),
            "scope=repository:ci/app:pull,push&offline_token=true",
        )
        .await,
    )
    .await;
    let access = login["token"].as_str().unwrap();
    assert_eq!(claims(access)["sub"], "ci-job");
    assert_eq!(
        claims(access)["access"][0]["actions"],
        json!(["pull", "push"])
    );
    // A refresh token from an ID token ends when the ID token does (1 h here).
    let refresh = claims(login["refresh_token"].as_str().unwrap());
    assert!(refresh["exp"].as_i64().unwrap() <= portcullis::identity::jwt::now() + 3600 + 5);
    assert_eq!(
        with_bearer(&registry, Method::POST, "/v2/ci/app/blobs/uploads/", access)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    // The ID token itself as a Bearer token; outside ci/** the chain says no.
    assert_eq!(
        with_bearer(
            &registry,
            Method::POST,
            "/v2/ci/app/blobs/uploads/",
            &id_token
        )
        .await
        .status(),
        StatusCode::ACCEPTED
    );
    let elsewhere = with_bearer(
        &registry,
        Method::POST,
        "/v2/team-a/app/blobs/uploads/",
        &id_token,
    )
    .await;
    expect_error(elsewhere, 403, "DENIED").await;

    // Our own access token is not a password: an ID token cannot be
    // stretched into a 30-day refresh token that way.
    let stretched = get_token(&registry, Some(("anything", access)), "offline_token=true").await;
    assert_eq!(stretched.status(), StatusCode::UNAUTHORIZED);
    // A subject that is an htpasswd account's name is not that account.
    let impostor = provider
        .mint(json!({ "sub": "alice", "aud": "portcullis", "groups": ["ops"] }))
        .await;
    let impostor = get_token(&registry, Some(("alice", &impostor)), "").await;
    assert_eq!(impostor.status(), StatusCode::UNAUTHORIZED);
    // An ID token about to end gets no token (docker would hold on to it).
    let ending = provider
        .mint(json!({ "sub": "ci-job", "aud": "portcullis", "exp_in": 30 }))
        .await;
    let ending = get_token(&registry, Some(("anything", &ending)), "").await;
    assert_eq!(ending.status(), StatusCode::UNAUTHORIZED);

    // The provider rotates its key: the next token is verified without a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let kid = provider.rotate().await;
    let rotated = provider
        .mint(json!({ "sub": "ci-job", "aud": "portcullis", "groups": ["ci"] }))
        .await;
    assert!(rotated.len() > 20 && kid.len() > 4);
    let after = token_of(
        get_token(
            &registry,
            Some(("anything", &rotated)),
            "scope=repository:ci/app:push",
        )
        .await,
    )
    .await;
    assert_eq!(
        claims(after["token"].as_str().unwrap())["access"][0]["actions"],
        json!(["push"])
    );
}

#[tokio::test]
async fn robot_tokens_log_in_and_a_revocation_ends_them_and_their_tokens() {
    let secrets = tempfile::tempdir().unwrap();
    // On S3, two replicas: a token made in the bucket works on both, and its
    // revocation holds on both within the refresh interval.
    let registry = replicated_registry(secrets.path()).await;
    let storage = portcullis::storage::Storage::open(&registry.config().storage)
        .await
        .unwrap();
    use portcullis::identity::robots;
    let (record, secret) = robots::create(&storage, "ci-bot", Some(vec!["ops".into()]), None, "CI")
        .await
        .unwrap();
    assert!(secret.starts_with("pcr_"));
    // Stored hashed: the secret is nowhere in the store.
    let listed = robots::list(&storage).await.unwrap();
    assert_eq!(listed, vec![record.clone()]);
    assert!(!serde_json::to_string(&listed)
        .unwrap()
        .contains(&secret[21..]));

    // As the password on API requests, and for docker login (with a refresh token).
    let basic = with_basic(
        &registry,
        Method::POST,
        "/v2/anything/app/blobs/uploads/",
        ("ci-bot", &secret),
    )
    .await;
    assert_eq!(basic.status(), StatusCode::ACCEPTED);
    let login = token_of(
        get_token(
            &registry,
            Some(("ci-bot", &secret)),
            "scope=repository:x/y:push&offline_token=true",
        )
        .await,
    )
    .await;
    let access = login["token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    // A refresh token is not an access token, nor the other way round.
    expect_invalid_token(&registry, "refresh as bearer", &refresh).await;
    let swapped = post_form(
        &registry,
        format!("grant_type=refresh_token&refresh_token={access}"),
    )
    .await;
    assert_eq!(swapped.status(), StatusCode::UNAUTHORIZED);
    // Its use is recorded.
    let mut used = None;
    for _ in 0..50 {
        used = robots::last_used(&storage, &record.id).await;
        if used.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(used.is_some(), "the token's last use was recorded");

    // Revoked in the store (as `portcullis token revoke` does, from any
    // process): within the refresh interval everything minted from it ends.
    assert!(robots::revoke(&storage, &record.id).await.unwrap());
    let revoked = Instant::now();
    loop {
        // Requests alternate between the replicas (on S3): two in a row of
        // each kind reach both, and each replica re-reads on its own clock.
        let mut refused = 0;
        for _ in 0..2 {
            let r = with_bearer(&registry, Method::POST, "/v2/x/y/blobs/uploads/", &access).await;
            refused += usize::from(r.status() == StatusCode::UNAUTHORIZED);
        }
        for _ in 0..2 {
            let r = with_basic(
                &registry,
                Method::POST,
                "/v2/anything/app/blobs/uploads/",
                ("ci-bot", &secret),
            )
            .await;
            refused += usize::from(r.status() == StatusCode::UNAUTHORIZED);
        }
        if refused == 4 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(3),
            "revocation not in force after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = with_basic(
        &registry,
        Method::POST,
        "/v2/anything/app/blobs/uploads/",
        ("ci-bot", &secret),
    )
    .await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    let refreshed = post_form(
        &registry,
        format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    assert_eq!(refreshed.status(), StatusCode::UNAUTHORIZED);
    let login = get_token(&registry, Some(("ci-bot", &secret)), "").await;
    assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
}

fn reload_config(data: &std::path::Path, htpasswd: &std::path::Path, ops: &[&str]) -> String {
    let ops: Vec<String> = ops.iter().map(|u| format!("{u:?}")).collect();
    format!(
        r#"
listen = "127.0.0.1:0"
[storage]
root = "{}"
[auth]
htpasswd = "{}"
[groups]
devs = ["alice"]
ops = [{}]
[[policy.chain]]
name = "team-access"
module = "builtin:group-access"
[policy.chain.settings]
authenticated = [{{ repositories = ["**"], actions = ["pull", "list"] }}]
[policy.chain.settings.groups]
devs = [{{ repositories = ["team-a/**"], actions = ["pull", "push"] }}]
ops = [{{ repositories = ["**"], actions = ["pull", "push", "delete"] }}]
"#,
        data.display(),
        htpasswd.display(),
        ops.join(", ")
    )
}

/// Waits until `check` holds, for at most 3 s; returns how long it took.
async fn within_3s<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: not in force after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn groups_and_htpasswd_changes_hold_within_3s_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let htpasswd = write_htpasswd(&secrets, USERS);
    let config_path = dir.path().join("portcullis.toml");
    let data = dir.path().join("data");
    std::fs::write(&config_path, reload_config(&data, &htpasswd, &["bob"])).unwrap();
    let config = Config::load(Some(&config_path)).unwrap();
    let server = portcullis::server::Server::bind_watching(config, Some(config_path.clone()))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    let http = reqwest::Client::new();

    // bob keeps pulling the whole time, with a token and with Basic
    // credentials: no request may fail because of a swap.
    let token: Value = http
        .get(format!("{base}/token?service=portcullis"))
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let load_base = base.clone();
    let load = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut requests = 0u32;
        while stop_rx.try_recv().is_err() {
            let with_token = http
                .get(format!("{load_base}/v2/team-b/app/tags/list"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let with_basic = http
                .get(format!("{load_base}/v2/team-b/app/tags/list"))
                .basic_auth("bob", Some("bob-pw"))
                .send()
                .await
                .unwrap();
            for r in [with_token, with_basic] {
                assert_eq!(
                    r.status(),
                    StatusCode::NOT_FOUND,
                    "a request failed during a reload"
                );
            }
            requests += 2;
        }
        requests
    });
    let push = |user: &'static str, password: &'static str, repo: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .basic_auth(user, Some(password))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        push("alice", "alice-pw", "team-b/app").await,
        StatusCode::FORBIDDEN
    );

    // alice joins ops in the running config.
    std::fs::write(
        &config_path,
        reload_config(&data, &htpasswd, &["bob", "alice"]),
    )
    .unwrap();
    let took = within_3s("alice in ops", || async {
        push("alice", "alice-pw", "team-b/app").await == StatusCode::ACCEPTED
    })
    .await;
    eprintln!("[groups] change in force after {took:?}");

    // A new account, then the account removed (its cached login goes too).
    let text = std::fs::read_to_string(&htpasswd).unwrap();
    let carol = format!("carol:{}\n", bcrypt::hash("carol-pw", 4).unwrap());
    std::fs::write(&htpasswd, format!("{text}{carol}")).unwrap();
    within_3s("carol added", || async {
        push("carol", "carol-pw", "team-a/app").await == StatusCode::FORBIDDEN
    })
    .await;
    std::fs::write(&htpasswd, &text).unwrap();
    within_3s("carol removed", || async {
        push("carol", "carol-pw", "team-a/app").await == StatusCode::UNAUTHORIZED
    })
    .await;

    // A broken htpasswd file keeps the accounts in force.
    std::fs::write(&htpasswd, "this line is not an entry\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        push("alice", "alice-pw", "team-b/app").await,
        StatusCode::ACCEPTED
    );
    std::fs::write(&htpasswd, &text).unwrap();
    // Accounts and chain change together: alice leaves ops in a config whose
    // chain does not load, and stays in ops with the chain in force.
    std::fs::write(
        &config_path,
        reload_config(&data, &htpasswd, &["bob"]).replace("builtin:group-access", "builtin:nope"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        push("alice", "alice-pw", "team-b/app").await,
        StatusCode::ACCEPTED
    );

    let _ = stop_tx.send(());
    let requests = load.await.expect("no request failed");
    assert!(requests > 10, "the load ran ({requests} requests)");
}
