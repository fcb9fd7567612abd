//! The audit trail, read from the real binary's JSON log on stderr: every
//! access line names the user (or `anonymous`) and the client, a 401/403
//! names the policy and its reason, a failed login has a line of its own
//! with the name tried and never the secret; fields are plain values (no
//! Rust `Some(...)`), and nothing carries terminal colour codes when stderr
//! is a file. The bytes counted are right: a chunked PATCH counts its body,
//! a HEAD counts none.

mod common;

use common::served::Served;
use common::write_htpasswd;
use reqwest::StatusCode;
use serde_json::Value;

const SECRET: &str = "correct-horse-battery";
const WRONG: &str = "wrong-password-xyzzy";

async fn audited() -> (Served, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let htpasswd = write_htpasswd(secrets.path(), &[("alice", SECRET)]);
    let served = Served::start_with(
        &format!(
            "[auth]\nhtpasswd = {htpasswd:?}\n\
             [[policy.chain]]\nname = \"team-push\"\nmodule = \"builtin:repo-allowlist\"\n\
             settings = {{ push = [\"alice/**\"], pull = [\"**\"], list = [\"**\"], delete = [\"alice/**\"] }}\n"
        ),
        &["--log-format", "json"],
    )
    .await;
    (served, secrets)
}

#[tokio::test]
async fn access_lines_name_the_user_the_client_and_the_refusing_policy() {
    let (served, _secrets) = audited().await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", served.base);

    // Signed in: the user.
    let ok = http
        .get(url("/v2/alice/app/tags/list"))
        .basic_auth("alice", Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::NOT_FOUND);
    let line = served.access("/v2/alice/app/tags/list").await;
    assert_eq!(line["user"], "alice");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["status"], 404);
    assert!(line.get("policy").is_none(), "{line}");

    // Anonymous and refused by the chain: 401 naming the policy.
    let anonymous = http
        .post(url("/v2/other/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let line = served.access("/v2/other/app/blobs/uploads/").await;
    assert_eq!(line["user"], "anonymous");
    assert_eq!(line["policy"], "team-push");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("denied by policy team-push"),
        "{line}"
    );

    // Signed in and refused: 403 naming the policy and the user.
    let refused = http
        .post(url("/v2/bob/app/blobs/uploads/"))
        .basic_auth("alice", Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let line = served.access("/v2/bob/app/blobs/uploads/").await;
    assert_eq!(line["user"], "alice");
    assert_eq!(line["status"], 403);
    assert_eq!(line["policy"], "team-push");

    // A failed login: 401 without a policy, and a line of its own with the
    // name tried, the client and why; never the password.
    let failed = http
        .get(url("/v2/alice/failed/tags/list"))
        .basic_auth("alice", Some(WRONG))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    let line = served.access("/v2/alice/failed/tags/list").await;
    assert_eq!(line["user"], "anonymous");
    assert_eq!(line["policy"], "-");
    assert!(!line["reason"].as_str().unwrap().is_empty(), "{line}");
    let login = served
        .line("login failed", |l| {
            l["fields"]["message"] == "login failed" && l["fields"]["user"] == "alice"
        })
        .await;
    assert!(
        matches!(login["level"].as_str(), Some("INFO" | "WARN")),
        "{login}"
    );
    assert_eq!(login["fields"]["client"], "127.0.0.1");
    assert!(login["fields"]["reason"].is_string(), "{login}");

    let log = served.stderr();
    assert!(
        !log.contains(WRONG) && !log.contains(SECRET),
        "a secret was logged"
    );
    // Nor the Authorization header that carries them.
    use base64::Engine as _;
    for password in [WRONG, SECRET] {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
        assert!(!log.contains(&basic), "credentials were logged");
    }
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is a file"
    );
    for line in served.json_lines() {
        for (key, value) in line["fields"].as_object().unwrap() {
            if let Value::String(text) = value {
                assert!(
                    !text.starts_with("Some(")
                        && !text.starts_with("None")
                        && !text.starts_with('"')
                        && !text.contains("\\\""),
                    "field {key} is Rust Debug text: {line}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_chunked_patch_counts_its_body_and_a_head_counts_none() {
    let (served, _secrets) = audited().await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", served.base);
    let start = http
        .post(url("/v2/alice/bytes/blobs/uploads/"))
        .basic_auth("alice", Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = start.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with('/') {
        url(&location)
    } else {
        location
    };
    // A streamed body: no Content-Length, Transfer-Encoding: chunked, as
    // docker sends layers.
    let data = common::random_bytes(300_000);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let patch = http
        .patch(&location)
        .basic_auth("alice", Some(SECRET))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::ACCEPTED);
    let patched = served
        .line("for the PATCH", |l| {
            l["target"] == "portcullis::access" && l["fields"]["method"] == "PATCH"
        })
        .await;
    assert_eq!(patched["fields"]["bytes_in"], 300_000, "{patched}");

    let digest = common::sha256(&data);
    let put = http
        .put(format!(
            "{location}{}digest={digest}",
            if location.contains('?') { '&' } else { '?' }
        ))
        .basic_auth("alice", Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED, "{:?}", put.text().await);

    let blob = format!("/v2/alice/bytes/blobs/{digest}");
    let head = http.head(url(&blob)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "300000");
    let get = http.get(url(&blob)).send().await.unwrap();
    assert_eq!(get.bytes().await.unwrap().len(), 300_000);
    for _ in 0..100 {
        if served
            .json_lines()
            .iter()
            .filter(|l| l["fields"]["path"] == blob.as_str())
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let lines = served.json_lines();
    let find = |method: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["path"] == blob.as_str() && l["fields"]["method"] == method)
            .map(|l| l["fields"].clone())
            .unwrap_or_else(|| panic!("no {method} line:\n{}", served.stderr()))
    };
    assert_eq!(find("HEAD")["bytes_out"], 0);
    assert_eq!(find("GET")["bytes_out"], 300_000);

    // The metrics agree: the upload route received the whole body.
    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let received: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_http_received_bytes") && l.contains("route=\"upload\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(received, 300_000.0, "received:\n{metrics}");
}
