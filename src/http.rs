//! A tiny HTTP/1.1 responder for the agent's two read-only endpoints (`/health` on the ENI
//! address, `/metrics` on localhost): one GET, one answer, close. Small on purpose: no
//! keep-alive, no request bodies, a bounded read with a timeout, so a misbehaving client costs
//! one short-lived task and nothing else. Also the builder of the agent's plain-HTTP clients
//! ([`plain_client`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// A request must arrive whole within this; clients are a LAN hop or a loopback away.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests are one line and a few headers; anything longer is not a client of ours.
const MAX_REQUEST: usize = 4096;

/// The builder of every client the agent uses for plain HTTP (IMDS, peers' `/health`).
///
/// With no root given, reqwest loads the platform's CA store while building the client and
/// fails without one ("builder error" on a minimal image that lacks `ca-certificates`): an
/// empty root store keeps these clients independent of it, and they never speak TLS anyway.
/// A proxy from the environment must never see metadata requests, tokens or peer probes.
pub fn plain_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(std::iter::empty::<reqwest::Certificate>())
}

/// An error and every source under it, in one line: reqwest's own text ("builder error")
/// names neither the cause nor the fix.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        // Some layers repeat their source's text in their own; say it once.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

pub struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn json(body: String) -> Self {
        Self {
            status: "200 OK",
            content_type: "application/json",
            body,
        }
    }

    pub fn text(content_type: &'static str, body: String) -> Self {
        Self {
            status: "200 OK",
            content_type,
            body,
        }
    }

    pub fn not_found() -> Self {
        Self {
            status: "404 Not Found",
            content_type: "application/json",
            body: r#"{"error":"not found"}"#.into(),
        }
    }
}

/// Listens on `addr` and answers every `GET <path>` with `handler(path)` until the task is
/// dropped.
pub async fn serve<H>(addr: SocketAddr, handler: H) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    H: Fn(&str) -> Response + Send + Sync + 'static,
{
    Ok(serve_on(TcpListener::bind(addr).await?, handler))
}

/// As [`serve`], on a listener bound already (tests bind port 0 and keep it, so no other
/// socket can take the port between choosing and binding it).
pub fn serve_on<H>(listener: TcpListener, handler: H) -> tokio::task::JoinHandle<()>
where
    H: Fn(&str) -> Response + Send + Sync + 'static,
{
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let handler = Arc::clone(&handler);
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &*handler).await {
                            debug!(%peer, error = %e, "HTTP request dropped");
                        }
                    });
                }
                Err(e) => {
                    warn!(%addr, error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

async fn answer<H: Fn(&str) -> Response>(
    mut stream: TcpStream,
    handler: &H,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 512];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match head {
        Err(_) => return Ok(()),
        Ok(result) => result?,
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let response = match (words.next(), words.next()) {
        (Some("GET"), Some(path)) => handler(path.split('?').next().unwrap_or(path)),
        _ => Response {
            status: "405 Method Not Allowed",
            content_type: "application/json",
            body: r#"{"error":"GET only"}"#.into(),
        },
    };
    let text = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        response.status,
        response.content_type,
        response.body.len(),
        response.body
    );
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}
