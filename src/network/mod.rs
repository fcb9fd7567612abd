//! Who is really calling: the client's address when the registry sits behind
//! a proxy or an ingress. Only the proxies listed in `trusted_proxies` are
//! believed; what anyone else says about an address (an `X-Forwarded-For` or
//! `Forwarded` header, a PROXY protocol header) is ignored.
//!
//! - [`forwarded`] reads `Forwarded` (RFC 7239) and `X-Forwarded-For`, from
//!   the nearest hop outwards, stopping at the first address that is not a
//!   trusted proxy: that one is the client.
//! - [`proxy_protocol`] reads HAProxy's PROXY protocol (v1 and v2) at the
//!   start of a connection, for TCP passthrough (Traefik's `proxyProtocol`,
//!   HAProxy's `send-proxy-v2`), before any TLS.
//!
//! The result is a [`ClientAddr`] in each request's extensions, which logs,
//! limits, the token service and policies (`client-ip`) all read.

pub mod forwarded;
pub mod proxy_protocol;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The address a request is attributed to, and the connection's own peer
/// when that differs (the proxy that forwarded it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// The TCP peer, when a trusted proxy reported another address.
    pub via: Option<IpAddr>,
}

/// The source address a trusted proxy reported in a PROXY protocol header,
/// set on every request of that connection by [`proxy_protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedSource(pub SocketAddr);

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address range (CIDR such as 10.0.0.0/8, fd00::/8 or an address)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: an IPv4 range written as
        // a dual-stack listener prints it. Shorter than /96 it would cover
        // more than IPv4-mapped addresses: refused rather than guessed.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                Some(_) => return Err(bad()),
                None => (addr, prefix),
            },
            IpAddr::V4(_) => (addr, prefix),
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let prefix = u32::from(self.prefix);
        match (canonical(ip), self.addr) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(prefix))
                    .unwrap_or(0);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(ip), IpAddr::V6(net)) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(prefix))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address in its own form even when it arrived mapped into IPv6
/// (`::ffff:10.0.0.1`, what a dual-stack listener reports).
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The proxies whose word about the client's address is taken, and the
/// header they write it in.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
    header: forwarded::ForwardedHeader,
}

impl TrustedProxies {
    pub fn new(ranges: &[Cidr], header: forwarded::ForwardedHeader) -> Self {
        Self {
            ranges: ranges.to_vec(),
            header,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(ip))
    }

    /// The client behind a request that came from `peer` on a connection
    /// (the PROXY header's source, if a trusted proxy sent one) with
    /// `headers`.
    pub fn client(
        &self,
        peer: IpAddr,
        proxied: Option<ProxiedSource>,
        headers: &axum::http::HeaderMap,
    ) -> ClientAddr {
        let peer = canonical(peer);
        let client = match proxied {
            // A PROXY header is where the walk ends: forwarding headers on
            // such a connection travel inside the client's own (TLS) bytes,
            // so the client wrote them.
            Some(ProxiedSource(source)) if self.contains(peer) => canonical(source.ip()),
            _ if self.contains(peer) => {
                forwarded::client(peer, self.header, headers, |ip| self.contains(ip))
            }
            _ => peer,
        };
        ClientAddr {
            ip: client,
            via: (client != peer).then_some(peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let ten: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(ip("10.1.2.3")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(!ten.contains(ip("::1")));
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains(ip("192.168.1.7")));
        assert!(!one.contains(ip("192.168.1.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("::1")));
        let host6: Cidr = "::1/128".parse().unwrap();
        assert!(host6.contains(ip("::1")));
        let odd: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(odd.contains(ip("172.31.255.255")));
        assert!(!odd.contains(ip("172.32.0.0")));
        assert_eq!(odd.to_string(), "172.16.0.0/12");
        // IPv4-mapped, as a dual-stack listener prints addresses.
        let mapped: Cidr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.1/32");
        assert!(mapped.contains(ip("10.0.0.1")));
        assert!(!mapped.contains(ip("10.0.0.2")));
        assert!(!mapped.contains(ip("203.0.113.7")));
        let mapped8: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped8.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn hostile_ranges_are_refused() {
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "localhost",
            "10.0.0.256/8",
            "10.0.0.0/ 8",
            "10.0.0.0/99999999999",
            "10.0.0.0/0008",
            // IPv4-mapped with a prefix that leaves the mapped range.
            "::ffff:10.0.0.1/95",
            "::ffff:0.0.0.0/0",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let trusted = TrustedProxies::new(&["10.0.0.2".parse().unwrap()], Default::default());
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        let from_proxy = trusted.client(ip("10.0.0.2"), None, &headers);
        assert_eq!(from_proxy.ip, ip("203.0.113.9"));
        assert_eq!(from_proxy.via, Some(ip("10.0.0.2")));
        let spoofed = trusted.client(ip("10.0.0.3"), None, &headers);
        assert_eq!(spoofed.ip, ip("10.0.0.3"));
        assert_eq!(spoofed.via, None);
        // A PROXY header's source is taken from a trusted peer only.
        let source = Some(ProxiedSource("198.51.100.4:5000".parse().unwrap()));
        let empty = axum::http::HeaderMap::new();
        assert_eq!(
            trusted.client(ip("10.0.0.2"), source, &empty).ip,
            ip("198.51.100.4")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.3"), source, &empty).ip,
            ip("10.0.0.3")
        );
        // After a believed PROXY header, forwarding headers are the client's.
        assert_eq!(
            trusted
                .client(
                    ip("10.0.0.2"),
                    Some(ProxiedSource("10.0.0.2:1".parse().unwrap())),
                    &headers
                )
                .ip,
            ip("10.0.0.2")
        );
        // Nobody trusted: the peer, whatever the headers say.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("10.0.0.2"), source, &headers).ip,
            ip("10.0.0.2")
        );
    }
}
