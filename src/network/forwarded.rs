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
/// an address.
fn hops(header: ForwardedHeader, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    match header {
        ForwardedHeader::Forwarded => values(headers, "forwarded")
            .iter()
            .flat_map(|line| split_outside_quotes(line, ','))
            .map(|element| for_of(&element))
            .collect(),
        ForwardedHeader::XForwardedFor => values(headers, "x-forwarded-for")
            .iter()
            .flat_map(|line| line.split(','))
            .map(|entry| node(entry.trim()))
            .collect(),
    }
}

/// A header's lines, skipping any that is not visible ASCII (as if absent:
/// such a line cannot name an address, and a hop must not be invented).
fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The `for=` of one forwarded-element (`for=1.2.3.4;proto=https;by=...`).
/// An element without one is a hop that says nothing: not an address.
fn for_of(element: &str) -> Option<IpAddr> {
    split_outside_quotes(element, ';')
        .iter()
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

/// Splits at `sep` except inside a quoted string (where `\` escapes).
fn split_outside_quotes(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        let current = parts.last_mut().expect("parts is never empty");
        if escaped {
            current.push(c);
            escaped = false;
        } else if quoted && c == '\\' {
            current.push(c);
            escaped = true;
        } else if c == '"' {
            current.push(c);
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(String::new());
        } else {
            current.push(c);
        }
    }
    parts.into_iter().map(|p| p.trim().to_owned()).collect()
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
            // A quoted comma does not split an element.
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
