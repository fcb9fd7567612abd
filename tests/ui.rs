//! The web UI under `/ui/` as a browser uses it, without a browser: a
//! client that follows no redirect and keeps cookies by hand
//! (`tests/common/ui.rs`), against the real server, selecting by the ids and
//! classes the pages promise. The hostile cases are in `tests/ui_security.rs`.
//!
//! | story                                                         | expected                                   |
//! |---------------------------------------------------------------|--------------------------------------------|
//! | an anonymous visitor opens `/ui/`, searches, pages with `n=2` | only `public/**`; a private name nowhere in the HTML |
//! | sign in with the password form                                | 303 to `return`, HttpOnly SameSite=Lax Path=/ui/ session |
//! | a repository's tags, a manifest, an index                     | `span.immutable` on `v*` only; labels, layers, user, pull lines, platforms, referrers |
//! | delete a tag from its page                                    | 303 and gone (ops); 403 with the policy's reason (immutable, no grant) |
//! | the decisions page                                            | admins: `table#chain` and every refusal; others: their own only |
//! | personal tokens                                               | shown once, work as a password on `/v2/`, another user can neither see nor revoke them |
//! | sign out, then replay the old cookie                          | anonymous page, cookie cleared, its POSTs 403 |
//! | the storage page                                              | `#total-bytes` once the background run is done |
//! | `ui.enabled = false`                                          | `/ui/` is 404, the API unchanged           |
//! | OpenID Connect sign-in (authorization code, PKCE, nonce)      | 303 to the provider, back with a session for its user |
//! | the signature status, with a `builtin:signature` on `prod-*` tags | *verified* on a signed prod tag; *unknown* (never *verified*) for an unsigned image by another tag or digest, and for an SBOM under a prod tag |
//! | a session on two replicas, then signed out on one              | good on both; anonymous on the other within its 10 s recheck |
//! | behind https (`external_url`)                                  | `Secure` cookies; pull and login lines name the external host |
//! | 52 tags; 51 tokens                                             | tag pages of 50 with `a#next-page`; the 51st token is 409 |
//! | `examples/config-ui.toml`                                     | loads and serves the home lab it describes |

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::oidc::Provider;
use common::ui::{
    described_image, home_lab, push_as, put_manifest_as, select, tags_of, Browser, ALICE, BOB,
    CAROL,
};
use common::{descriptor, Image, TestRegistry, OCI_INDEX, OCI_MANIFEST};
use portcullis::config::{Config, OidcConfig};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The repository names of a listing page.
fn listed(page: &common::ui::Page) -> Vec<String> {
    page.select("tr.repository a.repository-link")
        .iter()
        .map(|a| a.text())
        .collect()
}

#[test]
fn the_page_reader_finds_what_maud_writes() {
    let html = r#"<table id="t"><tr class="tag" data-tag="v1"><td class="tag-name"><a href="/x">v1</a><span class="badge immutable">immutable</span></td></tr><tr class="tag" data-tag="latest"><td><table><tr><td>in</td></tr></table>&lt;b&gt;</td></tr></table><input type="hidden" name="csrf" value="abc">"#;
    assert_eq!(select(html, "tr.tag").len(), 2);
    assert_eq!(select(html, "table#t").len(), 1);
    let v1 = select(html, "tr[data-tag=v1]");
    assert_eq!(v1.len(), 1);
    assert_eq!(v1[0].select("span.immutable").len(), 1);
    assert_eq!(select(html, "tr[data-tag=latest]")[0].text(), "in<b>");
    assert!(select(html, "tr[data-tag=latest] span.immutable").is_empty());
    assert_eq!(select(html, "input")[0].attr("value"), Some("abc"));
}

#[tokio::test]
async fn anonymous_visitors_see_only_what_anonymous_callers_may_pull_searched_and_paged() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    let public = [
        "public/alpha",
        "public/beta",
        "public/delta",
        "public/gamma",
    ];
    for name in public {
        push_as(&registry, BOB, name, "1", &Image::random()).await;
    }
    push_as(&registry, BOB, "team-a/hidden-app", "1", &Image::random()).await;

    let mut visitor = Browser::new(&registry);
    let home = visitor.get("/ui/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.text("#viewer"), "anonymous");
    assert!(home.has("a#signin") && !home.has("form#signout"));
    assert!(home.has("form#search"));
    assert_eq!(listed(&home), public);
    assert!(!home.body.contains("hidden-app"), "{}", home.body);
    assert!(!home.has("a#next-page"));
    // `/ui` is the same place.
    let bare = visitor.get("/ui").await;
    assert_eq!(bare.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(bare.location(), "/ui/");

    // Search (any case), including for the hidden name.
    for (q, expected) in [
        ("alpha", vec!["public/alpha"]),
        ("ALPHA", vec!["public/alpha"]),
        ("ta", vec!["public/beta", "public/delta"]),
        ("public/", public.to_vec()),
        ("hidden", vec![]),
        ("team-a", vec![]),
        ("zzz", vec![]),
    ] {
        let page = visitor.get(&format!("/ui/?q={q}")).await;
        assert_eq!(page.status, StatusCode::OK, "q={q}");
        assert_eq!(listed(&page), expected, "q={q}");
        assert!(!page.body.contains("hidden-app"), "q={q}");
        if expected.is_empty() {
            assert!(page.text("main p.muted").contains("No repository matches"));
        }
    }

    // Pages of two, followed through a#next-page.
    let mut seen = Vec::new();
    let mut next = Some("/ui/?n=2".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let page = visitor.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let names = listed(&page);
        assert!(names.len() <= 2, "{path}: {names:?}");
        seen.extend(names);
        next = page
            .select("a#next-page")
            .first()
            .and_then(|a| a.attr("href"))
            .map(common::ui::unescape);
        pages += 1;
        assert!(pages < 10, "the pages end");
    }
    assert_eq!(seen, public, "every public repository once, in order");
    assert_eq!(pages, 2);
    // A search pages too.
    let first = visitor.get("/ui/?q=a&n=1").await;
    assert_eq!(listed(&first), ["public/alpha"]);
    let next = common::ui::unescape(first.one("a#next-page").attr("href").unwrap());
    assert!(next.contains("q=a"), "{next}");
    assert_eq!(listed(&visitor.get(&next).await), ["public/beta"]);

    // A public repository's pages, without delete forms for a visitor.
    let tags = visitor.get("/ui/r/public/alpha").await;
    assert_eq!(tags.status, StatusCode::OK);
    assert_eq!(tags.select("tr.tag").len(), 1);
    let manifest = visitor.get("/ui/r/public/alpha/:1").await;
    assert_eq!(manifest.status, StatusCode::OK);
    assert!(!manifest.has("form#delete-tag") && !manifest.has("form#delete-manifest"));
    // The private repository's pages are 404 (ui_security.rs compares bodies).
    assert_eq!(
        visitor.get("/ui/r/team-a/hidden-app").await.status,
        StatusCode::NOT_FOUND
    );

    // Signed in, the private repository is listed.
    let mut alice = Browser::new(&registry);
    alice.sign_in(ALICE.0, ALICE.1).await;
    let names = listed(&alice.get("/ui/").await);
    assert!(names.contains(&"team-a/hidden-app".to_owned()), "{names:?}");
}

#[tokio::test]
async fn signing_in_with_a_password_sets_a_strict_session_cookie_and_returns_where_asked() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    push_as(&registry, BOB, "public/alpha", "1", &Image::random()).await;
    let mut browser = Browser::new(&registry);

    let form = browser.get("/ui/signin?return=/ui/r/public/alpha").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.has("form#signin") && form.has("button#signin-submit"));
    assert_eq!(form.one("form#signin").attr("action"), Some("/ui/signin"));
    assert_eq!(form.one("form#signin").attr("method"), Some("post"));
    assert!(!form.has("a.signin-oidc"), "no issuer offers web sign-in");
    let signin_cookie = form.set_cookie("portcullis_signin").expect("a form cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/ui/"] {
        assert!(signin_cookie.contains(attribute), "{signin_cookie}");
    }
    assert_eq!(
        form.field("signin", "csrf"),
        browser.cookie("portcullis_signin").unwrap(),
        "double submit: the form's token is the cookie's"
    );
    assert_eq!(form.field("signin", "return"), "/ui/r/public/alpha");
    let csrf = form.field("signin", "csrf");

    // Wrong or missing credentials: 401 with the reason, no session.
    for (user, password, error) in [
        ("alice", "wrong", "Wrong user name or password."),
        ("nobody", "alice-pw", "Wrong user name or password."),
        ("alice", "", "Give a user name and a password."),
        ("", "alice-pw", "Give a user name and a password."),
    ] {
        let page = browser
            .post(
                "/ui/signin",
                &[
                    ("csrf", &csrf),
                    ("return", "/ui/"),
                    ("user", user),
                    ("password", password),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{user}/{password}");
        assert_eq!(page.text("#error"), error, "{user}/{password}");
        assert!(page.set_cookie("portcullis_session").is_none());
        assert_eq!(page.text("#viewer"), "anonymous");
    }

    let signed_in = browser
        .sign_in_to(ALICE.0, ALICE.1, "/ui/r/public/alpha")
        .await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    assert_eq!(signed_in.location(), "/ui/r/public/alpha");
    let cookie = signed_in
        .set_cookie("portcullis_session")
        .expect("a session cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/ui/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let max_age: i64 = cookie
        .split("; ")
        .find_map(|a| a.strip_prefix("Max-Age="))
        .and_then(|a| a.parse().ok())
        .expect("Max-Age");
    assert!((12 * 3600 - 10..=12 * 3600).contains(&max_age), "{cookie}");
    // The form's cookie is spent.
    assert!(signed_in
        .set_cookie("portcullis_signin")
        .is_some_and(|c| c.contains("Max-Age=0")));
    // The cookie holds a session token, not an API token.
    let session = browser.cookie("portcullis_session").unwrap().to_owned();
    let claims = common::ui::jwt_claims(&session);
    assert_eq!(claims["token_use"], "session");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["src"], "htpasswd");

    let back = browser.get("/ui/r/public/alpha").await;
    assert_eq!(back.status, StatusCode::OK);
    assert_eq!(back.text("#viewer"), "alice");
    assert!(back.has("form#signout") && back.has("button#signout-submit"));
    assert!(!back.has("a#signin"));
    assert_eq!(back.field("signout", "csrf").len(), 64);
    // Signed in already: the form sends you on.
    let again = browser.get("/ui/signin?return=/ui/tokens").await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert_eq!(again.location(), "/ui/tokens");
}

#[tokio::test]
async fn tags_and_manifest_pages_show_immutability_config_layers_platforms_and_pull_lines() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    let image = described_image(
        json!({ "org.opencontainers.image.source": "https://github.com/acme/app", "tier": "web" }),
        "1000:1000",
        json!({ "org.opencontainers.image.version": "1.0.0" }),
    );
    push_as(&registry, ALICE, "team-a/app", "v1.0.0", &image).await;
    push_as(&registry, ALICE, "team-a/app", "latest", &image).await;
    // An SBOM referring to it, and a two-platform index beside it.
    let sbom = Image::with_fields(json!({
        "artifactType": "application/vnd.example.sbom",
        "subject": image.descriptor(),
    }));
    push_as(&registry, ALICE, "team-a/app", "sbom", &sbom).await;
    let arm = Image::random();
    push_as(&registry, ALICE, "team-a/app", "arm", &arm).await;
    let mut amd = descriptor(OCI_MANIFEST, &image.manifest);
    amd["platform"] = json!({ "os": "linux", "architecture": "amd64" });
    let mut arm64 = descriptor(OCI_MANIFEST, &arm.manifest);
    arm64["platform"] = json!({ "os": "linux", "architecture": "arm64", "variant": "v8" });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd, arm64],
    }))
    .unwrap();
    put_manifest_as(&registry, ALICE, "team-a/app", "multi", OCI_INDEX, index).await;

    let mut alice = Browser::new(&registry);
    alice.sign_in(ALICE.0, ALICE.1).await;
    let host = registry.addr().to_string();

    let tags = alice.get("/ui/r/team-a/app").await;
    assert_eq!(tags.status, StatusCode::OK);
    assert!(tags.has("table#tags"));
    let rows = tags.select("tr.tag");
    let names: Vec<_> = rows.iter().filter_map(|r| r.attr("data-tag")).collect();
    for tag in ["v1.0.0", "latest", "sbom", "arm", "multi"] {
        assert!(names.contains(&tag), "{tag} in {names:?}");
    }
    let v1 = tags.one("tr.tag[data-tag=v1.0.0]");
    assert!(
        !v1.select("span.immutable").is_empty(),
        "v1.0.0 is immutable"
    );
    for tag in ["latest", "sbom", "multi"] {
        let row = tags.one(&format!("tr.tag[data-tag={tag}]"));
        assert!(row.select("span.immutable").is_empty(), "{tag} is not");
    }
    assert_eq!(
        v1.one("td.digest").attr("title"),
        Some(image.digest.as_str())
    );
    assert_eq!(v1.one("td.platforms").text(), "linux/amd64");
    assert_eq!(v1.one("td.created").text(), "2026-12-01 10:00 UTC");
    assert!(v1.one("td.size").text().ends_with("KiB"), "{}", v1.inner);
    assert_eq!(
        v1.one("a.tag-link").attr("href"),
        Some("/ui/r/team-a/app/:v1.0.0")
    );
    assert_eq!(
        tags.one("tr.tag[data-tag=multi]")
            .one("td.platforms")
            .text(),
        "linux/amd64, linux/arm64/v8"
    );

    let page = alice.get("/ui/r/team-a/app/:v1.0.0").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.has("h1 span.immutable"));
    assert_eq!(
        page.text("code#pull-by-tag"),
        format!("docker pull {host}/team-a/app:v1.0.0")
    );
    assert_eq!(
        page.text("code#pull-by-digest"),
        format!("docker pull {host}/team-a/app@{}", image.digest)
    );
    assert_eq!(
        page.one("#signature-status").attr("data-status"),
        Some("unknown")
    );
    assert_eq!(page.text("dd#user"), "1000:1000");
    assert_eq!(page.text("dd#entrypoint"), r#"["/app"]"#);
    assert_eq!(page.text("dd#cmd"), r#"["--serve"]"#);
    let labels: Vec<(String, String)> = page
        .select("table#labels tr.label")
        .iter()
        .map(|r| (r.one("th").text(), r.one("td").text()))
        .collect();
    assert_eq!(
        labels,
        [
            (
                "org.opencontainers.image.source".to_owned(),
                "https://github.com/acme/app".to_owned()
            ),
            ("tier".to_owned(), "web".to_owned())
        ]
    );
    let layers = page.select("table#layers tr.layer");
    assert_eq!(layers.len(), 2);
    for (row, layer) in layers.iter().zip(&image.layers) {
        assert_eq!(
            row.one("td.digest").attr("title"),
            Some(common::sha256(layer).as_str())
        );
        assert_eq!(
            row.one("td.size").text(),
            format!("{:.1} KiB", layer.len() as f64 / 1024.0)
        );
    }
    let annotations = page.select("table#annotations tr.annotation");
    assert_eq!(annotations.len(), 1);
    assert_eq!(annotations[0].one("td").text(), "1.0.0");
    let referrers = page.select("table#referrers tr.referrer");
    assert_eq!(referrers.len(), 1, "{}", page.body);
    assert_eq!(
        referrers[0].one("td.artifact-type").text(),
        "application/vnd.example.sbom"
    );
    assert!(referrers[0]
        .one("td.digest")
        .inner
        .contains(&format!("/ui/r/team-a/app/@{}", sbom.digest)));
    assert!(page.has("form#delete-tag") && page.has("form#delete-manifest"));

    // The same manifest under a mutable tag, and by digest.
    let latest = alice.get("/ui/r/team-a/app/:latest").await;
    assert_eq!(latest.status, StatusCode::OK);
    assert!(!latest.has("h1 span.immutable"));
    let by_digest = alice
        .get(&format!("/ui/r/team-a/app/@{}", image.digest))
        .await;
    assert_eq!(by_digest.status, StatusCode::OK);
    assert!(!by_digest.has("code#pull-by-tag") && by_digest.has("code#pull-by-digest"));
    assert!(!by_digest.has("form#delete-tag") && by_digest.has("form#delete-manifest"));
    assert_eq!(by_digest.text("dd#digest"), image.digest);

    // An index: its platforms, each linked to its manifest.
    let multi = alice.get("/ui/r/team-a/app/:multi").await;
    assert_eq!(multi.status, StatusCode::OK);
    let platforms: Vec<String> = multi
        .select("table#platforms tr.platform td.platform")
        .iter()
        .map(|c| c.text())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    assert!(multi
        .one("tr.platform")
        .one("td.digest")
        .inner
        .contains(&format!("/ui/r/team-a/app/@{}", image.digest)));
    assert!(!multi.has("table#layers"));
    // Addresses that name nothing.
    for path in [
        "/ui/r/team-a/app/:nosuch",
        "/ui/r/team-a/nosuch",
        "/ui/r/team-a/app/:bad:tag",
        &format!("/ui/r/team-a/app/@sha256:{}", "0".repeat(64)),
    ] {
        let page = alice.get(path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(page.text("#viewer"), "alice", "{path}");
    }
}

#[tokio::test]
async fn deleting_from_a_page_is_decided_by_the_chain_as_a_delete() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    for tag in ["v1.0.0", "latest", "dev"] {
        push_as(&registry, ALICE, "team-a/app", tag, &Image::random()).await;
    }
    let mut bob = Browser::new(&registry);
    bob.sign_in(BOB.0, BOB.1).await;
    let mut alice = Browser::new(&registry);
    alice.sign_in(ALICE.0, ALICE.1).await;

    // Each case: who, which tag; the status, what the page says, and
    // whether the tag is gone afterwards.
    let cases: [(&str, &str, StatusCode, &str, bool); 4] = [
        (
            "alice",
            "dev",
            StatusCode::FORBIDDEN,
            "denied by policy team-access",
            false,
        ),
        (
            "bob",
            "v1.0.0",
            StatusCode::FORBIDDEN,
            "denied by policy immutable-releases: tag v1.0.0 in team-a/app is immutable and cannot be deleted",
            false,
        ),
        ("bob", "latest", StatusCode::SEE_OTHER, "", true),
        ("bob", "dev", StatusCode::SEE_OTHER, "", true),
    ];
    for (who, tag, status, says, gone) in cases {
        let browser = if who == "bob" { &mut bob } else { &mut alice };
        let page = browser.get(&format!("/ui/r/team-a/app/:{tag}")).await;
        assert_eq!(page.status, StatusCode::OK, "{who} {tag}");
        let form = page.one("form#delete-tag");
        let action = form.attr("action").unwrap().to_owned();
        assert_eq!(action, format!("/ui/r/team-a/app/:{tag}/delete"));
        let csrf = page.field("delete-tag", "csrf");
        let answer = browser.post(&action, &[("csrf", &csrf)]).await;
        assert_eq!(
            answer.status, status,
            "{who} deletes {tag}: {}",
            answer.body
        );
        if status == StatusCode::SEE_OTHER {
            assert_eq!(answer.location(), "/ui/r/team-a/app");
        } else {
            let error = answer.text("#error");
            assert!(error.contains(says), "{who} {tag}: {error}");
        }
        let tags = tags_of(&registry, BOB, "team-a/app").await;
        assert_eq!(!tags.contains(&tag.to_owned()), gone, "{tag}: {tags:?}");
    }
    // Gone from the tags page too; deleting it again is a 404.
    let page = bob.get("/ui/r/team-a/app").await;
    assert!(page.select("tr.tag[data-tag=latest]").is_empty());
    let csrf = page.field("signout", "csrf");
    let again = bob
        .post("/ui/r/team-a/app/:latest/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);

    // A manifest by digest (the immutable tag's is kept, another goes).
    let digest_of = |tag: &str| {
        let registry = &registry;
        let tag = tag.to_owned();
        async move {
            let response = registry
                .request(Method::HEAD, &format!("/v2/team-a/app/manifests/{tag}"))
                .basic_auth(BOB.0, Some(BOB.1))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            common::header(&response, "docker-content-digest").unwrap()
        }
    };
    let release = digest_of("v1.0.0").await;
    let refused = bob
        .post(
            &format!("/ui/r/team-a/app/@{release}/delete"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.text("#error").contains("immutable"));
    let other = Image::random();
    push_as(&registry, ALICE, "team-a/app", "scratch", &other).await;
    let page = bob
        .get(&format!("/ui/r/team-a/app/@{}", other.digest))
        .await;
    let action = page
        .one("form#delete-manifest")
        .attr("action")
        .unwrap()
        .to_owned();
    let deleted = bob.post(&action, &[("csrf", &csrf)]).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.body);
    assert!(!tags_of(&registry, BOB, "team-a/app")
        .await
        .contains(&"scratch".to_owned()));
    assert!(tags_of(&registry, BOB, "team-a/app")
        .await
        .contains(&"v1.0.0".to_owned()));
}

#[tokio::test]
async fn the_decisions_page_shows_admins_the_chain_and_everyone_their_own_refusals() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    // alice may not push team-b, carol may not push at all.
    let (status, _) = registry
        .push_image_as(Some(ALICE), "team-b/app", "1", &Image::random())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = registry
        .push_image_as(Some(CAROL), "team-a/carols", "1", &Image::random())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    push_as(&registry, ALICE, "team-a/app", "1", &Image::random()).await;

    let mut bob = Browser::new(&registry);
    bob.sign_in(BOB.0, BOB.1).await;
    let page = bob.get("/ui/decisions").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.text("h1"), "Decisions");
    let chain: Vec<(String, String, String)> = page
        .select("table#chain tr.policy")
        .iter()
        .map(|r| {
            (
                r.one("td.name").text(),
                r.one("td.module").text(),
                r.one("td.mode").text(),
            )
        })
        .collect();
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert_eq!(chain[0].0, "team-access");
    assert!(chain[0].1.starts_with("builtin:group-access"), "{chain:?}");
    assert_eq!(chain[1].0, "immutable-releases");
    assert!(chain[1].1.starts_with("builtin:tag-immutability"));
    assert_eq!(chain[0].2, "enforce");
    assert!(page
        .select("table#chain tr.policy td.digest")
        .iter()
        .all(|d| d.attr("title").is_some_and(|t| t.starts_with("sha256:"))));
    assert!(page.has("#last-reload") && page.has("form#filter"));
    let rows = |page: &common::ui::Page| -> Vec<(String, String, String, String, String)> {
        page.select("tr.decision")
            .iter()
            .map(|r| {
                (
                    r.one("td.user").text(),
                    r.one("td.action").text(),
                    r.one("td.repository").text(),
                    r.one("td.outcome").text(),
                    r.one("td.policy").text(),
                )
            })
            .collect()
    };
    let all = rows(&page);
    let refused = |user: &str, repository: &str| {
        all.iter().any(|(u, a, r, o, p)| {
            u == user
                && a == "push"
                && r.starts_with(repository)
                && o == "deny"
                && p == "team-access"
        })
    };
    assert!(refused("alice", "team-b/app"), "{all:?}");
    assert!(refused("carol", "team-a/carols"), "{all:?}");
    let reason = page
        .select("tr.decision")
        .iter()
        .find(|r| r.one("td.user").text() == "alice")
        .map(|r| r.one("td.reason").text())
        .unwrap();
    assert!(!reason.is_empty());
    assert!(
        !all.iter().any(|(_, _, _, o, _)| o == "allow"),
        "denials only by default"
    );

    // The filters.
    for (query, keep) in [
        ("user=alice", "alice"),
        ("user=carol&outcome=deny", "carol"),
        ("repository=team-b", "alice"),
        ("policy=team-access&repository=carols", "carol"),
    ] {
        let filtered = rows(&bob.get(&format!("/ui/decisions?{query}")).await);
        assert!(!filtered.is_empty(), "{query}");
        assert!(
            filtered.iter().all(|r| r.0 == keep),
            "{query}: {filtered:?}"
        );
    }
    assert!(rows(&bob.get("/ui/decisions?outcome=allow").await).is_empty());
    assert!(rows(&bob.get("/ui/decisions?policy=immutable-releases").await).is_empty());

    // alice: her own refusal, not carol's, no chain.
    let mut alice = Browser::new(&registry);
    alice.sign_in(ALICE.0, ALICE.1).await;
    let page = alice.get("/ui/decisions").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.text("h1"), "Your refusals");
    assert!(!page.has("table#chain") && !page.has("form#filter"));
    let own = rows(&page);
    assert!(!own.is_empty());
    assert!(own.iter().all(|r| r.0 == "alice"), "{own:?}");
    assert!(!page.body.contains("carols"), "{}", page.body);
    // Filters are an admin's: alice asking for carol's still sees her own.
    let asked = alice.get("/ui/decisions?user=carol").await;
    assert!(rows(&asked).iter().all(|r| r.0 == "alice"));
    assert!(!asked.body.contains("carols"));
    // carol's page has only carol's.
    let mut carol = Browser::new(&registry);
    carol.sign_in(CAROL.0, CAROL.1).await;
    let theirs = rows(&carol.get("/ui/decisions").await);
    assert!(!theirs.is_empty() && theirs.iter().all(|r| r.0 == "carol"));
}

#[tokio::test]
async fn personal_tokens_are_shown_once_work_as_a_password_and_only_their_owner_revokes_them() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    push_as(&registry, BOB, "team-a/app", "1", &Image::random()).await;
    let mut alice = Browser::new(&registry);
    alice.sign_in(ALICE.0, ALICE.1).await;
    let page = alice.get("/ui/tokens").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.has("table#tokens"));
    assert!(page.has("form#create-token") && page.has("button#create-token-submit"));
    let csrf = page.field("create-token", "csrf");

    let created = alice
        .post(
            "/ui/tokens",
            &[
                ("csrf", &csrf),
                ("description", "alice nightly build"),
                ("expires_days", "30"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let secret = created.text("code#new-token");
    assert!(secret.starts_with("pcr_"), "{secret}");
    assert_eq!(
        created.text("code#docker-login"),
        format!("docker login {} -u alice --password-stdin", registry.addr())
    );
    let rows = created.select("table#tokens tr.token");
    assert_eq!(rows.len(), 1);
    let id = rows[0].one("td.token-id").text();
    assert!(secret.starts_with(&format!("pcr_{id}_")), "{secret} {id}");
    assert_eq!(rows[0].one("td.description").text(), "alice nightly build");
    assert_eq!(rows[0].one("td.last-used").text(), "never");
    let expires = rows[0].one("td.expires").text();
    let in_30_days = chrono::Utc::now() + chrono::Duration::days(30);
    assert!(
        expires.starts_with(&in_30_days.format("%Y-%m-%d").to_string()),
        "{expires}"
    );
    // Shown once: the list does not show it again.
    let listed = alice.get("/ui/tokens").await;
    assert!(!listed.body.contains(&secret));
    assert!(!listed.has("code#new-token"));

    // The token is a password for the API (a private repository).
    let api = |password: String| {
        let registry = &registry;
        async move {
            registry
                .request(Method::GET, "/v2/team-a/app/tags/list")
                .basic_auth("alice", Some(password))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(api(secret.clone()).await, StatusCode::OK);
    // ...which the page then says (the use is written in the background).
    let deadline = Instant::now() + Duration::from_secs(5);
    while alice.get("/ui/tokens").await.text("tr.token td.last-used") == "never" {
        assert!(
            Instant::now() < deadline,
            "the token's use is shown within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // bob sees none of it, and cannot revoke it by its id.
    let mut bob = Browser::new(&registry);
    let bob_csrf = bob.sign_in(BOB.0, BOB.1).await;
    let theirs = bob.get("/ui/tokens").await;
    assert!(!theirs.has("table#tokens"), "{}", theirs.body);
    assert!(!theirs.body.contains(&id) && !theirs.body.contains("nightly"));
    let refused = bob
        .post(&format!("/ui/tokens/{id}/revoke"), &[("csrf", &bob_csrf)])
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(refused.text("#error"), "You have no such token.");
    // The same answer as for an id nobody has.
    let none = bob
        .post("/ui/tokens/0123456789abcdef/revoke", &[("csrf", &bob_csrf)])
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(none.text("#error"), refused.text("#error"));
    assert_eq!(api(secret.clone()).await, StatusCode::OK, "still good");

    // A token cannot sign in to the page (it is not a password for people).
    let mut thief = Browser::new(&registry);
    let stolen = thief.sign_in_to("alice", &secret, "/ui/").await;
    assert_eq!(stolen.status, StatusCode::UNAUTHORIZED);
    assert!(thief.cookie("portcullis_session").is_none());

    // alice revokes it: the API refuses it from then on.
    let page = alice.get("/ui/tokens").await;
    let form = page.one("form.revoke-token");
    let action = form.attr("action").unwrap().to_owned();
    assert_eq!(action, format!("/ui/tokens/{id}/revoke"));
    let csrf = form.one("input").attr("value").unwrap().to_owned();
    let revoked = alice.post(&action, &[("csrf", &csrf)]).await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    assert_eq!(revoked.location(), "/ui/tokens");
    assert_eq!(api(secret.clone()).await, StatusCode::UNAUTHORIZED);
    assert!(!alice.get("/ui/tokens").await.has("tr.token"));

    // Lifetimes: out of range or not a number.
    for (days, status) in [
        ("0", StatusCode::BAD_REQUEST),
        ("366", StatusCode::BAD_REQUEST),
        ("-1", StatusCode::BAD_REQUEST),
        ("soon", StatusCode::BAD_REQUEST),
        ("", StatusCode::OK),
        ("365", StatusCode::OK),
    ] {
        let page = alice
            .post(
                "/ui/tokens",
                &[
                    ("csrf", &csrf),
                    ("description", "x"),
                    ("expires_days", days),
                ],
            )
            .await;
        assert_eq!(page.status, status, "expires_days={days}: {}", page.body);
    }
}

#[tokio::test]
async fn signing_out_ends_the_session_and_a_replayed_cookie_is_anonymous() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    let mut alice = Browser::new(&registry);
    let csrf = alice.sign_in(ALICE.0, ALICE.1).await;
    let cookie = alice.cookie("portcullis_session").unwrap().to_owned();

    let out = alice.post("/ui/signout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/ui/");
    let cleared = out.set_cookie("portcullis_session").expect("cleared");
    assert!(cleared.contains("Max-Age=0") && cleared.contains("Path=/ui/"));
    assert!(alice.cookie("portcullis_session").is_none());
    assert_eq!(alice.get("/ui/").await.text("#viewer"), "anonymous");

    // Someone who kept the cookie: anonymous, and told to drop it.
    let mut replay = Browser::new(&registry);
    replay.set_cookie("portcullis_session", &cookie);
    let home = replay.get("/ui/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.text("#viewer"), "anonymous");
    assert!(home.has("a#signin") && !home.has("form#signout"));
    assert!(home
        .set_cookie("portcullis_session")
        .is_some_and(|c| c.contains("Max-Age=0")));
    for path in ["/ui/tokens", "/ui/decisions", "/ui/storage"] {
        replay.set_cookie("portcullis_session", &cookie);
        let page = replay.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert!(page.location().starts_with("/ui/signin?return="), "{path}");
    }
    for path in ["/ui/tokens", "/ui/signout", "/ui/r/team-a/app/:1/delete"] {
        replay.set_cookie("portcullis_session", &cookie);
        let page = replay
            .post(path, &[("csrf", &csrf), ("description", "after sign-out")])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
    }
    // Signing in again is a new session with a new CSRF token.
    let again = alice.sign_in(ALICE.0, ALICE.1).await;
    assert_ne!(again, csrf);
    assert_ne!(alice.cookie("portcullis_session").unwrap(), cookie);
    // A restart remembers the sign-out (it is in the store).
    let mut registry = registry;
    registry.restart().await;
    let mut after = Browser::new(&registry);
    after.set_cookie("portcullis_session", &cookie);
    assert_eq!(after.get("/ui/").await.text("#viewer"), "anonymous");
    let mut kept = Browser::new(&registry);
    kept.set_cookie(
        "portcullis_session",
        alice.cookie("portcullis_session").unwrap(),
    );
    assert_eq!(kept.get("/ui/").await.text("#viewer"), "alice");
}

#[tokio::test]
async fn the_storage_page_shows_what_the_background_run_computed() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    let started = Instant::now();
    let image = Image::random();
    push_as(&registry, BOB, "team-a/app", "1", &image).await;
    let stored: u64 = std::iter::once(&image.config)
        .chain(&image.layers)
        .map(|b| b.len() as u64)
        .sum();
    let mut anonymous = Browser::new(&registry);
    let page = anonymous.get("/ui/storage").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/ui/signin?return=%2Fui%2Fstorage");

    let mut bob = Browser::new(&registry);
    bob.sign_in(BOB.0, BOB.1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = bob.get("/ui/storage").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.has("#total-bytes") && page.has("#computed-at"));
        if page.text("#computed-at").starts_with("Computed") {
            break page;
        }
        assert!(
            page.text("#computed-at").starts_with("Being computed"),
            "{}",
            page.body
        );
        assert!(
            Instant::now() < deadline,
            "the storage page is computed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total = page.text("#total-bytes");
    assert!(total.ends_with(" KiB") && total != "0 B", "{total}");
    let expected = format!(
        "{:.1} KiB",
        (stored + image.manifest.len() as u64) as f64 / 1024.0
    );
    let blobs_only = format!("{:.1} KiB", stored as f64 / 1024.0);
    assert!(
        total == expected || total == blobs_only,
        "{total}, expected {blobs_only} or {expected}"
    );
    let rows = page.select("table#repository-bytes tr.repository-bytes");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].inner.contains("/ui/r/team-a/app"));
    assert!(page.has("#gc-would-free"));
    assert_eq!(page.text("#retention-would-delete"), "no rules");
    // An admin may ask for a new computation; others do not get the form.
    let csrf = page.field("refresh-storage", "csrf");
    let asked = bob.post("/ui/storage/refresh", &[("csrf", &csrf)]).await;
    assert_eq!(asked.status, StatusCode::SEE_OTHER);
    assert_eq!(asked.location(), "/ui/storage");
    let mut carol = Browser::new(&registry);
    carol.sign_in(CAROL.0, CAROL.1).await;
    let theirs = carol.get("/ui/storage").await;
    assert_eq!(theirs.status, StatusCode::OK);
    assert!(!theirs.has("form#refresh-storage"));
    eprintln!("storage page computed {:?} after start", started.elapsed());
}

#[tokio::test]
async fn ui_enabled_false_serves_no_pages() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |c| c.ui.enabled = false).await;
    push_as(&registry, BOB, "public/app", "1", &Image::random()).await;
    let mut browser = Browser::new(&registry);
    for path in [
        "/ui/",
        "/ui",
        "/ui/signin",
        "/ui/r/public/app",
        "/ui/static/style.css",
        "/ui/tokens",
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!page.body.contains("<form"), "{path}");
    }
    let post = browser.post("/ui/signin", &[("user", "alice")]).await;
    assert!(post.status.is_client_error(), "{}", post.status);
    assert_eq!(tags_of(&registry, BOB, "public/app").await, ["1"]);
}

fn oidc(issuer: &str, client_id: Option<&str>) -> OidcConfig {
    common::oidc::issuer_config(issuer, client_id)
}

/// The query of a URL as pairs, decoded.
fn query_of(url: &str) -> Vec<(String, String)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn openid_connect_sign_in_uses_pkce_and_a_nonce_and_names_the_providers_user() {
    let provider = Provider::start();
    let secrets = tempfile::tempdir().unwrap();
    let issuer = provider.issuer.clone();
    let registry = home_lab(secrets.path(), |c| {
        // The provider's user, johndoe, is an admin here.
        c.groups.insert("admins".into(), vec!["johndoe".into()]);
        c.auth.oidc = vec![
            oidc("https://not-offered.example", None),
            oidc(&issuer, Some("portcullis")),
        ];
    })
    .await;
    let mut browser = Browser::new(&registry);
    let form = browser.get("/ui/signin?return=/ui/decisions").await;
    let links = form.select("a.signin-oidc");
    assert_eq!(links.len(), 1, "only the issuer with a ui_client_id");
    assert_eq!(links[0].text(), "Sign in with Test IdP");
    let start = common::ui::unescape(links[0].attr("href").unwrap());
    assert_eq!(start, "/ui/oidc/start?issuer=1&return=%2Fui%2Fdecisions");

    let to_provider = browser.get(&start).await;
    assert_eq!(to_provider.status, StatusCode::SEE_OTHER);
    let authorize = to_provider.location().to_owned();
    assert!(
        authorize.starts_with(&format!("{issuer}/authorize?")),
        "{authorize}"
    );
    let query = query_of(&authorize);
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {authorize}"))
    };
    assert_eq!(param("response_type"), "code");
    assert_eq!(param("client_id"), "portcullis");
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(param("code_challenge").len(), 43, "base64url SHA-256");
    assert!(param("state").len() >= 43);
    assert_eq!(param("nonce").len(), 32);
    assert!(param("scope").split(' ').any(|s| s == "openid"));
    assert_eq!(
        param("redirect_uri"),
        format!("http://{}/ui/oidc/callback", registry.addr())
    );
    let flow = to_provider
        .set_cookie("portcullis_oidc")
        .expect("a flow cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/ui/", "Max-Age=600"] {
        assert!(flow.contains(attribute), "{flow}");
    }
    assert!(browser.cookie("portcullis_oidc").is_some());
    // The verifier is in the cookie, not in the URL.
    let verifier = browser
        .cookie("portcullis_oidc")
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(!authorize.contains(&verifier));

    // The provider answers at once with the code.
    let at_provider = browser.get(&authorize).await;
    assert_eq!(at_provider.status, StatusCode::FOUND);
    let callback = at_provider.location().to_owned();
    assert!(
        callback.starts_with(&format!("http://{}/ui/oidc/callback?", registry.addr())),
        "{callback}"
    );
    assert_eq!(
        query_of(&callback)
            .iter()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.clone()),
        Some(param("state"))
    );
    let back = browser.get(&callback).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    assert_eq!(back.location(), "/ui/decisions");
    assert!(back
        .set_cookie("portcullis_oidc")
        .is_some_and(|c| c.contains("Max-Age=0")));
    let session = back.set_cookie("portcullis_session").expect("a session");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax"));
    let claims = common::ui::jwt_claims(browser.cookie("portcullis_session").unwrap());
    assert_eq!(claims["src"], format!("oidc:{issuer}"));
    // The session ends when the ID token (1 h) does, not in 12 h.
    assert!(claims["exp"].as_i64().unwrap() <= portcullis::identity::jwt::now() + 3600 + 5);

    // johndoe (the provider's `sub`) is signed in, and an admin here.
    let decisions = browser.get("/ui/decisions").await;
    assert_eq!(decisions.status, StatusCode::OK);
    assert_eq!(decisions.text("#viewer"), "johndoe");
    assert!(decisions.has("table#chain"));
    // They may make tokens, which keep no provider groups (none were sent).
    let tokens = browser.get("/ui/tokens").await;
    assert!(tokens.has("form#create-token"));
    let csrf = tokens.field("create-token", "csrf");
    let created = browser
        .post(
            "/ui/tokens",
            &[("csrf", &csrf), ("description", "from oidc")],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert!(created.text("code#docker-login").contains("-u johndoe"));
    let out = browser.post("/ui/signout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/ui/").await.text("#viewer"), "anonymous");
}

#[tokio::test]
async fn the_ui_example_config_loads_and_serves_the_home_lab_it_describes() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/config-ui.toml");
    let loaded = Config::load(Some(&example)).expect("the example loads");
    assert!(loaded.ui.enabled);
    assert_eq!(loaded.ui.admin_groups, ["admins"]);
    assert_eq!(loaded.ui.session_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(
        loaded.policy.decision_log.record,
        portcullis::config::DecisionRecord::All
    );
    assert!(loaded.policy.decision_log.ring > 0);
    assert!(loaded.auth.oidc.iter().all(|o| o.ui_client_id.is_none()));

    // The commented-out web sign-in lines are good too, once uncommented.
    let text = std::fs::read_to_string(&example).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ui_") {
            Some(rest) => format!("ui_{rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(uncommented, text, "the example has `# ui_...` lines");
    let dir = tempfile::tempdir().unwrap();
    let with_oidc_path = dir.path().join("config-ui.toml");
    std::fs::write(&with_oidc_path, uncommented).unwrap();
    let with_oidc = Config::load(Some(&with_oidc_path)).expect("uncommented, it loads");
    assert!(with_oidc.auth.oidc[0].ui_client_id.is_some());
    let label = with_oidc.auth.oidc[0].ui_name.clone().unwrap();

    let start = |config: Config| async move {
        TestRegistry::start_with(move |c| {
            let (root, listen) = (c.storage.clone(), c.listen);
            *c = config;
            c.storage = root;
            c.listen = listen;
            // (examples/htpasswd is relative to the repository, where tests run.)
        })
        .await
    };
    let registry = start(loaded).await;
    // alice and bob have the demo password "change-me".
    push_as(
        &registry,
        ("bob", "change-me"),
        "public/tools",
        "v1",
        &Image::random(),
    )
    .await;
    push_as(
        &registry,
        ("alice", "change-me"),
        "team-a/app",
        "v1",
        &Image::random(),
    )
    .await;
    let (status, _) = registry
        .push_image_as(None, "public/tools", "v2", &Image::random())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "pushes need a login");

    let mut visitor = Browser::new(&registry);
    let home = visitor.get("/ui/").await;
    assert_eq!(listed(&home), ["public/tools"]);
    let form = visitor.get("/ui/signin").await;
    assert!(form.has("form#signin") && !form.has("a.signin-oidc"));
    let mut bob = Browser::new(&registry);
    bob.sign_in("bob", "change-me").await;
    assert_eq!(
        listed(&bob.get("/ui/").await),
        ["public/tools", "team-a/app"]
    );
    let tags = bob.get("/ui/r/team-a/app").await;
    assert!(tags.has("tr.tag[data-tag=v1] span.immutable"));
    // Decisions: bob is an admin, and allows are recorded too.
    let decisions = bob.get("/ui/decisions").await;
    assert!(decisions.has("table#chain"));
    assert!(decisions
        .select("tr.decision td.outcome")
        .iter()
        .any(|o| o.text() == "allow"));
    assert!(decisions
        .select("tr.decision td.outcome")
        .iter()
        .any(|o| o.text() == "deny"));

    drop(registry);
    let registry = start(with_oidc).await;
    let form = Browser::new(&registry).get("/ui/signin").await;
    assert_eq!(form.text("a.signin-oidc"), format!("Sign in with {label}"));
}

/// An Ed25519 key pair, its public key in PEM (as `cosign generate-key-pair
/// --alg ed25519` would write it).
fn signing_key() -> (ring::signature::Ed25519KeyPair, String) {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let spki = [
        &[
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ][..],
        key.public_key().as_ref(),
    ]
    .concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
    (
        key,
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
    )
}

/// Signs `digest` in `repository` as cosign does (a simple-signing payload,
/// its signature in the layer's annotation), pushed in the tag scheme.
async fn cosign_sign(
    registry: &TestRegistry,
    key: &ring::signature::Ed25519KeyPair,
    repository: &str,
    digest: &str,
) {
    use base64::Engine as _;
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": format!("{}/{repository}", registry.addr()) },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap();
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
    let config = b"{}".to_vec();
    let mut layer = descriptor("application/vnd.dev.cosign.simplesigning.v1+json", &payload);
    layer["annotations"] = json!({ "dev.cosignproject.cosign/signature": signature });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(common::OCI_CONFIG, &config),
        "layers": [layer],
    }))
    .unwrap();
    let image = Image {
        digest: common::sha256(&manifest),
        config,
        layers: vec![payload],
        manifest,
    };
    let tag = format!("{}.sig", digest.replace(':', "-"));
    push_as(registry, BOB, repository, &tag, &image).await;
}

#[tokio::test]
async fn a_signature_status_says_verified_only_where_a_signature_policy_checked() {
    let (signer, key) = signing_key();
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), move |c| {
        // Pulls of prod-* tags in signed/** need a signature by the key.
        let mut releases = common::policy(
            "signed-releases",
            "builtin:signature",
            json!({ "keys": [key], "tags": ["prod-*"] }),
        );
        releases.actions = Some(vec![portcullis::config::Action::Pull]);
        releases.repositories = Some(vec!["signed/**".into()]);
        c.policy.chain.push(releases);
    })
    .await;
    let unsigned = Image::random();
    for tag in ["latest", "prod-1"] {
        push_as(&registry, BOB, "signed/app", tag, &unsigned).await;
    }
    push_as(&registry, BOB, "team-a/app", "latest", &unsigned).await;
    let mut bob = Browser::new(&registry);
    bob.sign_in(BOB.0, BOB.1).await;
    let status = |page: &common::ui::Page| {
        page.one("#signature-status")
            .attr("data-status")
            .unwrap()
            .to_owned()
    };
    // The prod tag of an unsigned image: not pulled, not shown.
    let prod = bob.get("/ui/r/signed/app/:prod-1").await;
    assert_eq!(prod.status, StatusCode::NOT_FOUND);
    // Signed, its prod tag is verified (and lists the signature).
    let signed = Image::random();
    push_as(&registry, BOB, "signed/app", "prod-2", &signed).await;
    cosign_sign(&registry, &signer, "signed/app", &signed.digest).await;
    let prod = bob.get("/ui/r/signed/app/:prod-2").await;
    assert_eq!(prod.status, StatusCode::OK, "{}", prod.body);
    assert_eq!(status(&prod), "verified");
    assert_eq!(
        prod.text("tr.referrer td.artifact-type"),
        "cosign signature (tag scheme)"
    );
    // The same unsigned image by another tag or its digest: shown (the
    // policy does not check those), and never called verified.
    for path in [
        "/ui/r/signed/app/:latest".to_owned(),
        format!("/ui/r/signed/app/@{}", unsigned.digest),
    ] {
        let page = bob.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert_eq!(
            status(&page),
            "unknown",
            "{path}: {}",
            page.text("#signature-status")
        );
    }
    // An artifact (an SBOM: no OS, no filesystem layer) is nothing the
    // policy asks a signature of: it lets it by, which is no verification.
    let sbom = Image::from_parts(
        b"{}".to_vec(),
        vec![b"{\"spdxVersion\":\"SPDX-2.3\"}".to_vec()],
        json!({ "artifactType": "application/spdx+json" }),
    );
    let sbom = {
        // Its layer is the SBOM document, not a filesystem.
        let mut manifest: serde_json::Value = serde_json::from_slice(&sbom.manifest).unwrap();
        manifest["config"]["mediaType"] = json!("application/vnd.oci.empty.v1+json");
        manifest["layers"][0]["mediaType"] = json!("application/spdx+json");
        let bytes = serde_json::to_vec(&manifest).unwrap();
        Image {
            digest: common::sha256(&bytes),
            manifest: bytes,
            ..sbom
        }
    };
    push_as(&registry, BOB, "signed/app", "prod-sbom", &sbom).await;
    let page = bob.get("/ui/r/signed/app/:prod-sbom").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        status(&page),
        "unknown",
        "{}",
        page.text("#signature-status")
    );
    assert!(
        page.text("#signature-status")
            .starts_with("not checked: not a runnable image"),
        "{}",
        page.text("#signature-status")
    );
    // A repository no signature policy covers.
    let page = bob.get("/ui/r/team-a/app/:latest").await;
    assert_eq!(status(&page), "unknown");
}

#[tokio::test]
async fn a_session_and_its_sign_out_hold_on_every_replica() {
    let secrets = tempfile::tempdir().unwrap();
    // Two servers on one store (a filesystem root here, a bucket on S3),
    // sharing the token key the store holds.
    let mut registry = home_lab(secrets.path(), |_| {}).await;
    registry.add_replica().await;
    let other = registry.replica_addr().unwrap();
    let mut a = Browser::new(&registry);
    let csrf = a.sign_in(ALICE.0, ALICE.1).await;
    let cookie = a.cookie("portcullis_session").unwrap().to_owned();
    let mut b = Browser::at(&format!("http://{other}"));
    b.set_cookie("portcullis_session", &cookie);
    let page = b.get("/ui/tokens").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.text("#viewer"), "alice");
    assert_eq!(
        page.field("create-token", "csrf"),
        csrf,
        "one session, one token"
    );

    let out = a.post("/ui/signout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    // The replica that signed it out knows at once...
    let mut c = Browser::new(&registry);
    c.set_cookie("portcullis_session", &cookie);
    assert_eq!(c.get("/ui/").await.text("#viewer"), "anonymous");
    // ...one that did, within its 10 s recheck.
    let started = Instant::now();
    loop {
        b.set_cookie("portcullis_session", &cookie);
        let page = b.get("/ui/").await;
        if page.text("#viewer") == "anonymous" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "the sign-out holds on the other replica within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.set_cookie("portcullis_session", &cookie);
    let post = b
        .post("/ui/tokens", &[("csrf", &csrf), ("description", "late")])
        .await;
    assert_eq!(post.status, StatusCode::FORBIDDEN);
    eprintln!(
        "sign-out seen by the other replica after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn behind_https_the_cookies_are_secure_and_the_lines_name_the_external_host() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |c| {
        c.external_url = Some("https://registry.home.example/".into());
    })
    .await;
    push_as(&registry, BOB, "public/app", "1", &Image::random()).await;
    let mut alice = Browser::new(&registry);
    let form = alice.get("/ui/signin").await;
    assert!(
        form.set_cookie("portcullis_signin")
            .is_some_and(|c| c.ends_with("; Secure")),
        "{:?}",
        form.set_cookies()
    );
    let signed_in = alice.sign_in_to(ALICE.0, ALICE.1, "/ui/").await;
    assert!(signed_in
        .set_cookie("portcullis_session")
        .is_some_and(|c| c.contains("; Secure")));
    let page = alice.get("/ui/r/public/app/:1").await;
    assert_eq!(
        page.text("code#pull-by-tag"),
        "docker pull registry.home.example/public/app:1"
    );
    let csrf = page.field("signout", "csrf");
    let made = alice.post("/ui/tokens", &[("csrf", &csrf)]).await;
    assert_eq!(
        made.text("code#docker-login"),
        "docker login registry.home.example -u alice --password-stdin"
    );
}

#[tokio::test]
async fn a_repositorys_tags_are_paged() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    let image = Image::random();
    push_as(&registry, ALICE, "team-a/many", "t00", &image).await;
    for i in 1..52 {
        let tag = format!("t{i:02}");
        let manifest = image.manifest.clone();
        put_manifest_as(
            &registry,
            ALICE,
            "team-a/many",
            &tag,
            OCI_MANIFEST,
            manifest,
        )
        .await;
    }
    let mut alice = Browser::new(&registry);
    alice.sign_in(ALICE.0, ALICE.1).await;
    let first = alice.get("/ui/r/team-a/many").await;
    assert_eq!(first.text("main p.muted"), "52 tags");
    let rows = first.select("tr.tag");
    assert_eq!(rows.len(), 50);
    let next = common::ui::unescape(first.one("a#next-page").attr("href").unwrap());
    assert_eq!(next, "/ui/r/team-a/many?offset=50");
    let second = alice.get(&next).await;
    let mut seen: Vec<String> = rows
        .iter()
        .chain(second.select("tr.tag").iter())
        .filter_map(|r| r.attr("data-tag").map(str::to_owned))
        .collect();
    assert_eq!(seen.len(), 52);
    assert!(!second.has("a#next-page"));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 52, "every tag once");
}

#[tokio::test]
async fn a_user_holds_at_most_fifty_tokens() {
    let secrets = tempfile::tempdir().unwrap();
    let registry = home_lab(secrets.path(), |_| {}).await;
    let mut carol = Browser::new(&registry);
    let csrf = carol.sign_in(CAROL.0, CAROL.1).await;
    for i in 0..50 {
        let page = carol
            .post(
                "/ui/tokens",
                &[("csrf", &csrf), ("description", &format!("t{i}"))],
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "token {i}");
    }
    let refused = carol.post("/ui/tokens", &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(refused.text("#error").contains("revoke one first"));
    assert_eq!(carol.get("/ui/tokens").await.select("tr.token").len(), 50);
}
