//! `/health`: what this agent tells its peers about itself, and how it asks them.
//!
//! Served on the ENI address only (peers reach it over the same path as the zone's traffic;
//! nothing listens on the primary interface). The answer is small JSON with no secrets: who
//! this is, whether its own self-check passes, whether it is leaving, which zones it carries.
//! A tiny HTTP/1.1 responder on a tokio listener: one GET, one answer, close. Peers parse the
//! answer leniently (unknown fields ignored), so agents of different versions understand each
//! other during a rolling upgrade.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

/// A request must arrive whole within this; a peer is a LAN hop away.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests are one line and a few headers; anything longer is not a peer.
const MAX_REQUEST: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("/health: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("/health of {url}: {source}")]
    Fetch { url: String, source: reqwest::Error },
    #[error("/health: cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub instance_id: String,
    pub zone: String,
    pub eni: String,
    /// The own self-check verdict (rise/fall applied).
    pub healthy: bool,
    /// Leaving: handing its zones over (planned exit or demotion).
    pub draining: bool,
    /// Zones whose routes point at this gateway's ENI.
    pub carries: Vec<String>,
    pub version: String,
}

/// Serves `GET /health` on `addr:port` with the latest report until the task is dropped.
pub async fn serve(
    addr: Ipv4Addr,
    port: u16,
    report: watch::Receiver<Report>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let sock = SocketAddr::from((addr, port));
    let listener = TcpListener::bind(sock)
        .await
        .map_err(|source| Error::Bind { addr: sock, source })?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let report = report.borrow().clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &report).await {
                            debug!(%peer, error = %e, "/health request dropped");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "/health: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn answer(mut stream: TcpStream, report: &Report) -> std::io::Result<()> {
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
    if head.is_err() {
        return Ok(());
    }
    head.unwrap_or(Ok(()))?;
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/health")) => (
            "200 OK",
            serde_json::to_string(report).unwrap_or_else(|_| "{}".into()),
        ),
        (Some("GET"), Some(_)) => ("404 Not Found", r#"{"error":"not found"}"#.into()),
        _ => (
            "405 Method Not Allowed",
            r#"{"error":"GET /health only"}"#.into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Asks peers' `/health`, from the ENI address like every peer probe.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    port: u16,
}

impl Client {
    pub fn new(source: Ipv4Addr, port: u16, timeout: Duration) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::V4(source))
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            // A fresh connection per ask: a pooled one to a dead peer would only time out later.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(Error::Client)?;
        Ok(Self { http, port })
    }

    pub async fn fetch(&self, peer: Ipv4Addr) -> Result<Report, Error> {
        let url = format!("http://{peer}:{}/health", self.port);
        let fetch = async {
            self.http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json::<Report>()
                .await
        };
        fetch.await.map_err(|source| Error::Fetch { url, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_latest_report_and_parses_it_back() {
        let (tx, rx) = watch::channel(Report {
            instance_id: "i-1".into(),
            zone: "us-east-1a".into(),
            healthy: true,
            ..Report::default()
        });
        // Port 0 is refused by config validation; tests pick a free one the same way.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let _server = serve(Ipv4Addr::LOCALHOST, port, rx).await.unwrap();
        let client = Client::new(Ipv4Addr::LOCALHOST, port, Duration::from_secs(2)).unwrap();
        let r = client.fetch(Ipv4Addr::LOCALHOST).await.unwrap();
        assert!(r.healthy && !r.draining);
        tx.send_modify(|r| {
            r.draining = true;
            r.carries = vec!["us-east-1a".into(), "us-east-1b".into()];
        });
        let r = client.fetch(Ipv4Addr::LOCALHOST).await.unwrap();
        assert!(r.draining);
        assert_eq!(r.carries.len(), 2);
        // Anything but GET /health is refused.
        let url = format!("http://127.0.0.1:{port}/metrics");
        let status = reqwest::get(&url).await.unwrap().status();
        assert_eq!(status.as_u16(), 404);
    }

    #[test]
    fn peers_of_other_versions_parse() {
        let r: Report =
            serde_json::from_str(r#"{"healthy":true,"future_field":[1,2],"zone":"z"}"#).unwrap();
        assert!(r.healthy);
        assert_eq!(r.zone, "z");
        assert!(serde_json::from_str::<Report>("42").is_err());
        assert!(serde_json::from_str::<Report>(r#"{"healthy":"yes"}"#).is_err());
    }
}
