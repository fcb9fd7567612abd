//! HAProxy's PROXY protocol, versions 1 (text) and 2 (binary): a TCP proxy
//! that passes connections through untouched (TLS included) writes the
//! client's address in a short header before the connection's own bytes.
//! <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>
//!
//! With `proxy_protocol = true`, a connection from a peer in
//! `trusted_proxies` must start with a header (before TLS and HTTP), which
//! is believed; one without, or with a malformed header, is closed, as the
//! protocol asks: a receiver must never guess whether a header is there,
//! or a relay that passes a client's bytes through untouched would let the
//! client write one. Connections from anyone else are not read at all: a
//! header from them is just bytes that are not HTTP (400).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{ProxiedSource, TrustedProxies};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header taken (addresses and TLVs). HAProxy's headers with
/// TLVs are far smaller; a longer one is refused rather than buffered.
const V2_MAX: usize = 16 + 4096;

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Could still be a header: read more.
    Incomplete,
    /// Not a PROXY header: the connection's own first bytes.
    NotProxy,
    /// A header of `len` bytes; `source` is `None` for `LOCAL` (a proxy's own
    /// health check) and for families without an IP address.
    Header {
        source: Option<SocketAddr>,
        len: usize,
    },
    Invalid(&'static str),
}

/// Reads `buf` as the start of a connection.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    let prefix_of = |whole: &[u8]| {
        let n = buf.len().min(whole.len());
        buf[..n] == whole[..n]
    };
    if prefix_of(V2_SIGNATURE) {
        return if buf.len() < 16 {
            Parsed::Incomplete
        } else {
            parse_v2(buf)
        };
    }
    if prefix_of(b"PROXY ") {
        return if buf.len() < 6 {
            Parsed::Incomplete
        } else {
            parse_v1(buf)
        };
    }
    Parsed::NotProxy
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 line longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[6..end]) else {
        return Parsed::Invalid("PROXY v1 line is not ASCII");
    };
    let len = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Parsed::Header { source: None, len },
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let address = |text: &str| -> Option<IpAddr> {
                if v4 {
                    text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            match (address(src), address(dst), v1_port(sport), v1_port(dport)) {
                (Some(src), Some(_), Some(sport), Some(_)) => Parsed::Header {
                    source: Some(SocketAddr::new(src, sport)),
                    len,
                },
                _ => Parsed::Invalid("PROXY v1 addresses or ports are malformed"),
            }
        }
        _ => Parsed::Invalid("PROXY v1 line is malformed"),
    }
}

/// A port: 1 to 5 digits, no leading zero, at most 65535.
fn v1_port(text: &str) -> Option<u16> {
    let plain = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    plain.then(|| text.parse().ok()).flatten()
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Parsed::Invalid("PROXY v2 header of another version");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("PROXY v2 command is neither LOCAL nor PROXY"),
    };
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Parsed::Invalid("PROXY v2 header longer than 4 KiB");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let addresses = &buf[16..len];
    // The high nibble is the address family, the low one the transport
    // (1 stream, 2 datagram); only a stream's IP source is a client.
    let source = match family {
        0x11 => {
            if addresses.len() < 12 {
                return Parsed::Invalid("PROXY v2 IPv4 addresses are truncated");
            }
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        0x21 => {
            if addresses.len() < 36 {
                return Parsed::Invalid("PROXY v2 IPv6 addresses are truncated");
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => None,
        _ => return Parsed::Invalid("PROXY v2 address family is unknown"),
    };
    Parsed::Header {
        source: if local { None } else { source },
        len,
    }
}

/// Reads the PROXY header a trusted proxy must send off the start of
/// `stream`: the source it reports, and the bytes read past it.
async fn read_header(stream: &mut TcpStream) -> io::Result<(Option<ProxiedSource>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let refused = match parse(&buf) {
            Parsed::Incomplete => {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Parsed::Header { source, len } => {
                let rest = buf.split_off(len);
                return Ok((source.map(ProxiedSource), rest));
            }
            Parsed::NotProxy => "a trusted proxy's connection does not start with a PROXY header",
            Parsed::Invalid(reason) => reason,
        };
        let peer = stream
            .peer_addr()
            .map(|p| p.ip().to_string())
            .unwrap_or_default();
        tracing::warn!(
            target: "portcullis::network",
            peer,
            reason = refused,
            "connection closed: PROXY protocol (proxy_protocol = true)"
        );
        return Err(io::Error::new(io::ErrorKind::InvalidData, refused));
    }
}

/// The acceptor in front of TLS: reads the header with a deadline (the
/// request-head timeout), then hands on the rest of the connection.
#[derive(Clone)]
pub struct ProxyProtocolAcceptor<A> {
    inner: A,
    /// `None`: the protocol is off, and connections pass untouched; else
    /// the peers that must send a header (and the only ones read).
    trusted: Option<TrustedProxies>,
    timeout: Duration,
}

impl<A> ProxyProtocolAcceptor<A> {
    pub fn new(inner: A, trusted: Option<TrustedProxies>, timeout: Duration) -> Self {
        Self {
            inner,
            trusted,
            timeout,
        }
    }
}

impl<A, S> Accept<TcpStream, S> for ProxyProtocolAcceptor<A>
where
    A: Accept<TcpStream, S, Stream = TcpStream> + Clone + Send + 'static,
    A::Future: Send,
    A::Service: Send,
    S: Send + 'static,
{
    type Stream = Rewound<TcpStream>;
    type Service = WithSource<A::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let inner = self.inner.clone();
        let trusted = self.trusted.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let (mut stream, service) = inner.accept(stream, service).await?;
            let from_proxy = match (&trusted, stream.peer_addr()) {
                (Some(trusted), Ok(peer)) => trusted.contains(peer.ip()),
                _ => false,
            };
            if !from_proxy {
                return Ok((
                    Rewound::new(Vec::new(), stream),
                    WithSource::new(service, None),
                ));
            }
            let (source, rest) = tokio::time::timeout(timeout, read_header(&mut stream))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            Ok((Rewound::new(rest, stream), WithSource::new(service, source)))
        })
    }
}

/// A stream with bytes already read off its start put back in front.
pub struct Rewound<T> {
    prefix: Vec<u8>,
    offset: usize,
    inner: T,
}

impl<T> Rewound<T> {
    fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewound<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() && buf.remaining() > 0 {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewound<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection's service, which puts the reported source on each request.
#[derive(Clone)]
pub struct WithSource<S> {
    inner: S,
    source: Option<ProxiedSource>,
}

impl<S> WithSource<S> {
    fn new(inner: S, source: Option<ProxiedSource>) -> Self {
        Self { inner, source }
    }
}

impl<S, B> tower::Service<axum::http::Request<B>> for WithSource<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        if let Some(source) = self.source {
            request.extensions_mut().insert(source);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        header.extend_from_slice(addresses);
        header
    }

    fn source(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn v1_headers() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            Parsed::Header {
                source: source("203.0.113.7:56324"),
                len: 43
            }
        );
        let six = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert_eq!(
            parse(six),
            Parsed::Header {
                source: source("[2001:db8::7]:4000"),
                len: six.len()
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                source: None,
                len: 15
            }
        );
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7"), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
    }

    #[test]
    fn v2_headers() {
        let mut addresses = vec![203, 0, 113, 7, 10, 0, 0, 1];
        addresses.extend_from_slice(&56324u16.to_be_bytes());
        addresses.extend_from_slice(&443u16.to_be_bytes());
        let header = v2(1, 0x11, &addresses);
        assert_eq!(
            parse(&header),
            Parsed::Header {
                source: source("203.0.113.7:56324"),
                len: 28
            }
        );
        // TLVs after the addresses are part of the header.
        let mut with_tlv = addresses.clone();
        with_tlv.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'b', b'c']);
        assert_eq!(
            parse(&v2(1, 0x11, &with_tlv)),
            Parsed::Header {
                source: source("203.0.113.7:56324"),
                len: 34
            }
        );
        // LOCAL: the proxy speaking for itself.
        assert_eq!(
            parse(&v2(0, 0x11, &addresses)),
            Parsed::Header {
                source: None,
                len: 28
            }
        );
        let mut six = [0u8; 36].to_vec();
        six[15] = 7;
        six[32..34].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &six)),
            Parsed::Header {
                source: source("[::7]:4000"),
                len: 52
            }
        );
        assert_eq!(parse(&header[..20]), Parsed::Incomplete);
        assert_eq!(parse(&header[..5]), Parsed::Incomplete);
    }

    /// What a client or a broken proxy may send first, and what happens.
    #[test]
    fn hostile_starts() {
        let not_proxy: &[&[u8]] = &[
            b"GET /v2/ HTTP/1.1\r\n",
            b"PUT /v2/x/manifests/1 HTTP/1.1\r\n",
            b"PATCH /v2/x/blobs/uploads/1 HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00", // a TLS ClientHello
            b"PRI * HTTP/2.0\r\n",
            b"\r\n\r\nX",
            b"proxy tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        ];
        for start in not_proxy {
            assert_eq!(parse(start), Parsed::NotProxy, "{start:?}");
        }
        let mut long_v2 = V2_SIGNATURE.to_vec();
        long_v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let invalid: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 1.2.3.4\r\n".to_vec(),
            b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n".to_vec(),
            b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n".to_vec(),
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 extra\r\n".to_vec(),
            [b"PROXY ".to_vec(), vec![b'A'; 200]].concat(),
            b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            // v2: another version, another command, unknown family,
            // addresses shorter than their family, longer than 4 KiB.
            {
                let mut h = v2(1, 0x11, &[0; 12]);
                h[12] = 0x11;
                h
            },
            v2(2, 0x11, &[0; 12]),
            v2(1, 0x41, &[0; 12]),
            v2(1, 0x11, &[0; 11]),
            v2(1, 0x21, &[0; 35]),
            long_v2,
        ];
        for start in &invalid {
            assert!(
                matches!(parse(start), Parsed::Invalid(_)),
                "{:?} gave {:?}",
                String::from_utf8_lossy(start),
                parse(start)
            );
        }
    }
}
