//! The frame every page shares (navigation, who is signed in), the
//! stylesheet, and how numbers and times are written.

use axum::http::header;
use axum::response::IntoResponse;
use maud::{html, Markup, DOCTYPE};

use super::Viewer;

const STYLE: &str = include_str!("style.css");

/// `/ui/static/style.css`, cacheable for an hour.
pub async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
}

/// A whole page: `title` and `body` inside the navigation frame.
pub fn page(viewer: &Viewer, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Portcullis" }
                link rel="stylesheet" href="/ui/static/style.css";
            }
            body {
                header {
                    nav {
                        a.brand href="/ui/" { "Portcullis" }
                        a href="/ui/" { "Repositories" }
                        @if viewer.signed_in() {
                            a href="/ui/decisions" { "Decisions" }
                            a href="/ui/tokens" { "Tokens" }
                            a href="/ui/storage" { "Storage" }
                        }
                        span.spacer {}
                        span #viewer { (viewer.name()) }
                        @if viewer.signed_in() {
                            form #signout method="post" action="/ui/signout" {
                                input type="hidden" name="csrf" value=(viewer.csrf());
                                button #signout-submit type="submit" { "Sign out" }
                            }
                        } @else {
                            a #signin href="/ui/signin" { "Sign in" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Bytes as people read them (1000-based is what `docker images` shows;
/// this uses binary units, labelled so).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A Unix time in UTC, to the minute.
pub fn unix_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn system_time(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix_time(seconds)
}

/// An RFC 3339 time from an image config (builder-written, unchecked):
/// shown to the minute when it parses, as written (it is escaped) otherwise.
pub fn created(raw: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_else(|_| raw.chars().take(64).collect())
}

/// `sha256:0123456789ab`: enough of a digest to tell them apart on a page.
pub fn short_digest(digest: &str) -> String {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("", digest));
    format!("{algorithm}:{}", hex.chars().take(12).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(unix_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(created("2026-12-06T17:00:00+01:00"), "2026-12-06 16:00 UTC");
        assert_eq!(created("<b>"), "<b>");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
    }
}
