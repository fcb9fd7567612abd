//! What accounts bring beyond the policies. Failed logins are bounded: a
//! user name or a client address that keeps failing gets 429 with
//! `Retry-After`, without any bcrypt work, while users already logged in are
//! served from the credential cache throughout. An upload session belongs to
//! the user who started it.
//!
//! | hostile case                                   | expected                                  |
//! |------------------------------------------------|-------------------------------------------|
//! | 10 wrong passwords for one name, then more     | 401 ×10, then 429 `TOO_MANY_REQUESTS`     |
//! | the right password for that name right after   | 429 (the name is locked for a while)      |
//! | 30 wrong logins from one address, many names   | 401 ×30, then 429 for any new name        |
//! | 48 clients flooding wrong passwords            | a logged-in user's pulls all answer 200   |
//! | a malformed Authorization header               | 401, and it counts against nothing        |
//! | another user (push rights too) on a session    | 404 `BLOB_UPLOAD_UNKNOWN` on every verb   |
//! | an anonymous caller on a user's session        | 404 `BLOB_UPLOAD_UNKNOWN`                 |

mod common;

use std::time::Duration;

use common::{expect_error, header, Image, TestRegistry};
use reqwest::{Method, StatusCode};

async fn login(registry: &TestRegistry, user: &str, password: &str) -> reqwest::Response {
    registry
        .request(Method::GET, "/v2/")
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
}

async fn registry_with(
    users: &[(&str, &str)],
    per_address: u32,
) -> (TestRegistry, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let path = common::write_htpasswd(secrets.path(), users);
    let registry = TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(path);
        c.auth.failed_logins_per_address = per_address;
    })
    .await;
    (registry, secrets)
}

#[tokio::test]
async fn a_user_name_that_keeps_failing_is_refused_with_429_and_retry_after() {
    // The per-address limit off: this is the per-name one.
    let (mut registry, _secrets) =
        registry_with(&[("alice", "alice-pw"), ("bob", "bob-pw")], 0).await;
    // Failure counts are a replica's own (README, "Scale-out"): on the S3
    // backend, one of the two replicas.
    registry.single_replica();
    assert_eq!(
        login(&registry, "alice", "alice-pw").await.status(),
        StatusCode::OK
    );
    for attempt in 0..10 {
        let wrong = login(&registry, "bob", &format!("guess-{attempt}")).await;
        expect_error(wrong, 401, "UNAUTHORIZED").await;
    }
    let refused = login(&registry, "bob", "guess-10").await;
    let retry_after: u64 = header(&refused, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    expect_error(refused, 429, "TOO_MANY_REQUESTS").await;
    // The right password does not help while the name is locked...
    let right = login(&registry, "bob", "bob-pw").await;
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...and other names, and a logged-in user, are not affected.
    assert_eq!(
        login(&registry, "alice", "alice-pw").await.status(),
        StatusCode::OK
    );
    // A malformed header is refused before any counting.
    let malformed = registry
        .request(Method::GET, "/v2/")
        .header("authorization", "Basic !!!")
        .send()
        .await
        .unwrap();
    expect_error(malformed, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_refused_whatever_the_names() {
    let (mut registry, _secrets) = registry_with(&[("alice", "alice-pw")], 30).await;
    // Failure counts are a replica's own (README, "Scale-out"): on the S3
    // backend, one of the two replicas.
    registry.single_replica();
    for attempt in 0..30 {
        let wrong = login(&registry, &format!("user{attempt}"), "x").await;
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }
    let refused = login(&registry, "someone-new", "x").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&refused, "retry-after").is_some());
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_leaves_logged_in_users_served() {
    let (mut registry, _secrets) =
        registry_with(&[("alice", "alice-pw"), ("bob", "bob-pw")], 30).await;
    // Failure counts are a replica's own (README, "Scale-out"): on the S3
    // backend, one of the two replicas.
    registry.single_replica();
    let image = Image::random();
    let (status, _) = registry
        .push_image_as(Some(("alice", "alice-pw")), "app", "1", &image)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // 48 clients, each trying wrong passwords for a name of its own and for bob.
    let flood: Vec<_> = (0..48)
        .map(|client| {
            let http = registry.http.clone();
            let url = registry.url("/v2/");
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for attempt in 0..6 {
                    let user = if attempt % 2 == 0 {
                        "bob".to_string()
                    } else {
                        format!("c{client}")
                    };
                    let response = http
                        .get(&url)
                        .basic_auth(user, Some(format!("wrong-{attempt}")))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .expect("an answer, not a dropped connection");
                    statuses.push(response.status());
                }
                statuses
            })
        })
        .collect();
    for _ in 0..20 {
        let pulled = registry
            .request(Method::GET, &format!("/v2/app/manifests/{}", image.digest))
            .basic_auth("alice", Some("alice-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(pulled.status(), StatusCode::OK);
    }
    let mut throttled = 0;
    for task in flood {
        for status in task.await.unwrap() {
            assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
                "{status}"
            );
            throttled += usize::from(status == StatusCode::TOO_MANY_REQUESTS);
        }
    }
    // 288 attempts from one address: past 30 failures, the rest are refused
    // unchecked (or waited too long for a verification slot).
    assert!(throttled >= 288 / 2, "only {throttled} of 288 throttled");
}

#[tokio::test]
async fn an_upload_session_belongs_to_the_user_who_started_it() {
    let (registry, _secrets) = registry_with(&[("alice", "alice-pw"), ("bob", "bob-pw")], 30).await;
    // Both replicas on the S3 backend: the owner travels with the session.
    let started = registry
        .request(Method::POST, "/v2/shared/app/blobs/uploads/")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let url = registry.location(&started);
    let data = b"alice's layer".to_vec();
    let digest = common::sha256(&data);
    let as_bob = |method: Method, url: &str| {
        registry
            .http
            .request(method, url)
            .basic_auth("bob", Some("bob-pw"))
    };
    let commit = format!(
        "{url}{}digest={digest}",
        if url.contains('?') { "&" } else { "?" }
    );
    for (what, request) in [
        ("PATCH", as_bob(Method::PATCH, &url).body(data.clone())),
        ("GET", as_bob(Method::GET, &url)),
        ("PUT", as_bob(Method::PUT, &commit).body(data.clone())),
        ("DELETE", as_bob(Method::DELETE, &url)),
        (
            "anonymous PATCH",
            registry.http.patch(&url).body(data.clone()),
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{what}");
        expect_error(response, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    // Untouched by all that, alice finishes her upload.
    let finished = registry
        .http
        .put(&commit)
        .basic_auth("alice", Some("alice-pw"))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(finished.status(), StatusCode::CREATED);
}
