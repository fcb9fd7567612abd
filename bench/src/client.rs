//! A minimal HTTP/1.1 client on hyper's connection API: one keep-alive TCP
//! connection per `Conn`, no pool, no redirects, bodies streamed.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::io::ReaderStream;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A file streamed in 256 KiB reads: never held in memory whole.
pub async fn file_body(path: &Path) -> Result<Body> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let stream = ReaderStream::with_capacity(file, 256 * 1024).map(|r| r.map(Frame::data));
    Ok(StreamBody::new(stream).boxed_unsync())
}

/// TCP connections opened so far (all `Conn`s): shows whether a server
/// keeps connections alive.
pub static CONNECTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct Conn {
    addr: SocketAddr,
    host: String,
    tx: Option<SendRequest<Body>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            tx: None,
        }
    }

    async fn connect(&mut self) -> Result<()> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        stream.set_nodelay(true)?;
        CONNECTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.tx = Some(tx);
        Ok(())
    }

    /// Sends one request on the kept-alive connection (reconnecting if the
    /// server closed it). The previous response's body must have been read.
    pub async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Response<Incoming>> {
        let usable = match self.tx.as_mut() {
            Some(tx) => tx.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.connect().await?;
        }
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body)?;
        let tx = self.tx.as_mut().expect("connected");
        tx.ready().await?;
        Ok(tx.send_request(req).await?)
    }
}

/// Reads and discards a body, returning its length.
pub async fn drain(resp: Response<Incoming>) -> Result<u64> {
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

pub async fn bytes(resp: Response<Incoming>) -> Result<Bytes> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// Checks the status; on a mismatch, the body is part of the error.
pub async fn expect(
    resp: Response<Incoming>,
    status: u16,
    what: &str,
) -> Result<Response<Incoming>> {
    if resp.status().as_u16() == status {
        return Ok(resp);
    }
    let got = resp.status();
    let body = bytes(resp).await.unwrap_or_default();
    bail!(
        "{what}: expected {status}, got {got}: {}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    )
}

/// The upload URL of a 202, as a path (Distribution answers with an absolute URL).
pub fn location(resp: &Response<Incoming>) -> Result<String> {
    let loc = resp
        .headers()
        .get("location")
        .context("no Location header")?
        .to_str()?;
    if let Some(rest) = loc
        .strip_prefix("http://")
        .or_else(|| loc.strip_prefix("https://"))
    {
        return Ok(rest
            .find('/')
            .map(|i| &rest[i..])
            .unwrap_or("/")
            .to_string());
    }
    Ok(loc.to_string())
}

pub fn with_query(path: &str, kv: &str) -> String {
    if path.contains('?') {
        format!("{path}&{kv}")
    } else {
        format!("{path}?{kv}")
    }
}
