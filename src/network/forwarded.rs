//! `Forwarded` (RFC 7239) and `X-Forwarded-For`: the hops a request passed
//! through, the original client first. Each proxy appends the address it got
//! the request from, so only the right end of the list is vouched for: the
//! list is read from the nearest hop outwards, and the first address that is
//! not a trusted proxy is the client. Whatever a client wrote further left is
//! never reached. An entry that is not an address (`unknown`, an obfuscated
//! `_hidden`, garbage) ends the walk at the last trusted hop.
//!
//! Only the header the proxies set is read (`forwarded_header`): a proxy
//! appends to its own header and passes the other through untouched, so a
//! client could write the whole of the other one. Every line of the header
//! counts, in order.

use std::net::IpAddr;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Which header the trusted proxies write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (Traefik, nginx, HAProxy's `option forwardfor`).
    #[default]
    XForwardedFor,
    /// `Forwarded`, RFC 7239 (HAProxy's `option forwarded`, some CDNs).
    Forwarded,
}

/// At most this many hops are read (from the right); a longer list is the
/// client's invention, and the walk stops at the last trusted hop.
const MAX_HOPS: usize = 32;

/// The client behind `nearest` (a trusted proxy), by the forwarding headers.
pub fn client(
    nearest: IpAddr,
    header: ForwardedHeader,
    headers: &HeaderMap,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let hops = hops(header, headers);
    let mut current = nearest;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        match hop {
            Some(ip) => {
                current = super::canonical(*ip);
                if !trusted(current) {
                    return current;
                }
            }
            None => return current,
        }
    }
    current
}

/// The hops of `header`, leftmost first; `None` for an entry that is not
/// an address. Each entry is judged on its own, as bytes: a client's garbage
/// (not UTF-8, an unclosed quote) spoils only its own entries, never the
/// ones a proxy appended after them on the same line. (`for=` values never
/// hold a comma, so a plain split is exact for every entry worth reading.)
fn hops(header: ForwardedHeader, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let (name, read): (&str, fn(&str) -> Option<IpAddr>) = match header {
        ForwardedHeader::Forwarded => ("forwarded", for_of),
        ForwardedHeader::XForwardedFor => ("x-forwarded-for", |e| node(e.trim())),
    };
    headers
        .get_all(name)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(|entry| std::str::from_utf8(entry).ok().and_then(read))
        .collect()
}

/// The `for=` of one forwarded-element (`for=1.2.3.4;proto=https;by=...`).
/// An element without one is a hop that says nothing: not an address.
fn for_of(element: &str) -> Option<IpAddr> {
    element
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
        .and_then(|(_, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            node(value)
        })
}

/// A node: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, or
/// (X-Forwarded-For's habit) a bare `2001:db8::1`.
fn node(text: &str) -> Option<IpAddr> {
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || port(after.strip_prefix(':')?)) {
            return None;
        }
        return addr.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, p) = text.rsplit_once(':')?;
    if !port(p) {
        return None;
    }
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolve(pairs: &[(&str, &str)]) -> IpAddr {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        // 10.0.0.0/8 are the proxies; the request came from 10.0.0.1. The
        // header the proxies write: the one the case names first.
        let header = match pairs.first() {
            Some(("forwarded", _)) => ForwardedHeader::Forwarded,
            _ => ForwardedHeader::XForwardedFor,
        };
        client(
            ip("10.0.0.1"),
            header,
            &headers,
            |a| matches!(a, IpAddr::V4(v4) if v4.octets()[0] == 10),
        )
    }

    /// A line that is not UTF-8 spoils only the client's own entries.
    #[test]
    fn bytes_that_are_not_text_spoil_only_their_entry() {
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.7").unwrap(),
        );
        let trusted = |a: IpAddr| matches!(a, IpAddr::V4(v4) if v4.octets()[0] == 10);
        assert_eq!(
            client(
                ip("10.0.0.1"),
                ForwardedHeader::XForwardedFor,
                &headers,
                trusted
            ),
            ip("203.0.113.7")
        );
        // The header the proxies do not write is never read.
        let mut other = HeaderMap::new();
        other.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        assert_eq!(
            client(
                ip("10.0.0.1"),
                ForwardedHeader::XForwardedFor,
                &other,
                trusted
            ),
            ip("10.0.0.1")
        );
        other.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        other.remove("forwarded");
        assert_eq!(
            client(ip("10.0.0.1"), ForwardedHeader::Forwarded, &other, trusted),
            ip("10.0.0.1")
        );
    }

    /// Each header a client or a proxy chain may send, and who the client is.
    #[test]
    fn hostile_and_honest_headers() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            // No header: the proxy itself.
            (&[], "10.0.0.1"),
            (&[("x-forwarded-for", "203.0.113.7")], "203.0.113.7"),
            // A client's own XFF is kept left of what the proxy appended.
            (
                &[("x-forwarded-for", "6.6.6.6, 203.0.113.7")],
                "203.0.113.7",
            ),
            // Two trusted hops in front of the client.
            (
                &[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.9")],
                "203.0.113.7",
            ),
            // Every hop trusted: the leftmost.
            (&[("x-forwarded-for", "10.1.1.1, 10.0.0.9")], "10.1.1.1"),
            // Garbage where the proxy's hop should be: stop at the proxy.
            (&[("x-forwarded-for", "203.0.113.7, unknown")], "10.0.0.1"),
            (&[("x-forwarded-for", "203.0.113.7, <script>")], "10.0.0.1"),
            (&[("x-forwarded-for", "")], "10.0.0.1"),
            (&[("x-forwarded-for", ",,,")], "10.0.0.1"),
            (&[("x-forwarded-for", "999.1.1.1")], "10.0.0.1"),
            (&[("x-forwarded-for", "203.0.113.7:1234")], "203.0.113.7"),
            (&[("x-forwarded-for", "[2001:db8::7]:1234")], "2001:db8::7"),
            (&[("x-forwarded-for", "2001:db8::7")], "2001:db8::7"),
            (
                &[("x-forwarded-for", "::ffff:10.0.0.5, 203.0.113.7")],
                "203.0.113.7",
            ),
            (&[("x-forwarded-for", "[2001:db8::7]:99999x")], "10.0.0.1"),
            // Lines of one header are one list.
            (
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "203.0.113.7"),
                ],
                "203.0.113.7",
            ),
            // Forwarded, quoted IPv6 with a port, other parameters.
            (
                &[(
                    "forwarded",
                    "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https",
                )],
                "2001:db8:cafe::17",
            ),
            (
                &[("forwarded", "For=203.0.113.7;by=10.0.0.1")],
                "203.0.113.7",
            ),
            (&[("forwarded", "for=unknown")], "10.0.0.1"),
            (
                &[("forwarded", "for=_hidden, for=203.0.113.7")],
                "203.0.113.7",
            ),
            (&[("forwarded", "proto=https")], "10.0.0.1"),
            // A quoted comma is no address: the walk stops at the proxy.
            (&[("forwarded", "for=\"6.6.6.6,7.7.7.7\"")], "10.0.0.1"),
            // Forwarded wins over X-Forwarded-For.
            (
                &[
                    ("forwarded", "for=203.0.113.7"),
                    ("x-forwarded-for", "198.51.100.1"),
                ],
                "203.0.113.7",
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(resolve(headers), ip(want), "{headers:?}");
        }
    }

    #[test]
    fn a_long_list_stops_at_the_limit() {
        let trusted: Vec<String> = (0..100)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let list = format!("203.0.113.7, {}", trusted.join(", "));
        assert_eq!(
            resolve(&[("x-forwarded-for", list.as_str())]),
            ip("10.0.0.68"),
            "the walk reads 32 hops and stops at the last trusted one"
        );
    }
}
