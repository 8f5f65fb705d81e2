//! `/health`: what this agent tells its peers about itself, and how it asks them.
//!
//! Served on the ENI address only (peers reach it over the same path as the zone's traffic;
//! nothing listens on the primary interface). The answer is small JSON with no secrets: who
//! this is, whether its own self-check passes, whether it is leaving, which zones it carries.
//! Served by the tiny responder of [`crate::http`]: one GET, one answer, close, to the group's
//! peers and loopback only (plus `failover.health_allow`), within [`crate::http::Limits::HEALTH`].
//! Peers parse the answer leniently (unknown fields ignored), so agents of different versions
//! understand each other during a rolling upgrade.
//!
//! The asking side trusts an answer only so far: no redirect is followed (one would make this
//! agent request any URL from its ENI address), the body is read up to [`MAX_BODY`], and an
//! instance ID that is not one (by the lease's holder rules) is dropped. What the answer says
//! steers eligibility only: the instance a hand-over names in the lease is the one EC2 says is
//! attached to the peer's ENI (`agent::watch::execute`), not the one the peer claims to be.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::http::Allow;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("/health: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("/health of {url}: {source}")]
    Fetch { url: String, source: reqwest::Error },
    #[error(
        "/health: cannot build the HTTP client: {}; this is a bug of the agent (/health is \
         plain HTTP and needs no CA roots): report it with this line",
        crate::http::chain(.0)
    )]
    Client(reqwest::Error),
    #[error("/health of {url}: answered {status} (redirects are not followed)")]
    Status { url: String, status: u16 },
    #[error("/health of {url}: the answer is over {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("/health of {url}: not a report: {source}")]
    Parse {
        url: String,
        source: serde_json::Error,
    },
}

/// A report is a few hundred bytes; a peer that sends more is not a peer of ours.
pub const MAX_BODY: usize = 16 * 1024;

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
    /// `active` (its own zone), `active+holding` (and others'), `holding` (others' only),
    /// `standby` (nothing), `draining`.
    pub role: String,
    pub version: String,
    /// Zones whose gateways this one cannot hear now (ICMP down): a gateway listed here renews
    /// its lease, so a one-way partition is never read as its death.
    pub cannot_hear: Vec<String>,
    /// An advisory notice (a rebalance recommendation, a `system-maintenance` event) says this
    /// instance may go: peers choose it last as a successor.
    #[serde(default)]
    pub at_risk: bool,
}

/// Serves `GET /health` on `addr:port` with the latest report until the task is dropped, to
/// the sources `allow` admits.
pub async fn serve(
    addr: Ipv4Addr,
    port: u16,
    report: watch::Receiver<Report>,
    allow: Allow,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let sock = SocketAddr::from((addr, port));
    let listener = tokio::net::TcpListener::bind(sock)
        .await
        .map_err(|source| Error::Bind { addr: sock, source })?;
    Ok(serve_on(listener, report, allow))
}

fn serve_on(
    listener: tokio::net::TcpListener,
    report: watch::Receiver<Report>,
    allow: Allow,
) -> tokio::task::JoinHandle<()> {
    let limits = crate::http::Limits::HEALTH;
    crate::http::serve_on(
        listener,
        "/health",
        (limits, allow),
        move |path| match path {
            "/health" => {
                let body = serde_json::to_string(&*report.borrow()).unwrap_or_else(|_| "{}".into());
                crate::http::Response::json(body)
            }
            _ => crate::http::Response::not_found(),
        },
    )
}

/// Asks peers' `/health`, from the ENI address like every peer probe.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    port: u16,
}

impl Client {
    pub fn new(source: Ipv4Addr, port: u16, timeout: Duration) -> Result<Self, Error> {
        let http = crate::http::plain_client()
            .local_address(std::net::IpAddr::V4(source))
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A fresh connection per ask: a pooled one to a dead peer would only time out later.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(Error::Client)?;
        Ok(Self { http, port })
    }

    pub async fn fetch(&self, peer: Ipv4Addr) -> Result<Report, Error> {
        self.fetch_url(format!("http://{peer}:{}/health", self.port))
            .await
    }

    async fn fetch_url(&self, url: String) -> Result<Report, Error> {
        let fetch = |source| Error::Fetch {
            url: url.clone(),
            source,
        };
        let mut response = self.http.get(&url).send().await.map_err(fetch)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Status {
                url,
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(Error::TooLarge { url });
        }
        let mut body = Vec::with_capacity(1024);
        while let Some(chunk) = response.chunk().await.map_err(fetch)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(Error::TooLarge { url });
            }
            body.extend_from_slice(&chunk);
        }
        let mut report: Report =
            serde_json::from_slice(&body).map_err(|source| Error::Parse { url, source })?;
        if !report.instance_id.is_empty()
            && !crate::decide::lease::valid_holder(&report.instance_id)
        {
            // Never a lease holder, nor a log line an operator would trust: the peer is known
            // by its ENI instead.
            report.instance_id.clear();
        }
        Ok(report)
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
        // Bound once and kept: a port chosen, released and bound again can be taken meanwhile
        // by another test's client socket.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _server = serve_on(listener, rx, Allow::default());
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

    /// A one-shot raw HTTP server: answers every connection with `head` and then `body_len`
    /// bytes of `x` (streamed, so 100 MB costs no memory here); counts the connections.
    async fn raw(
        head: String,
        body_len: usize,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = head.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 1024];
                    let _ = s.read(&mut req).await;
                    let _ = s.write_all(head.as_bytes()).await;
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut left = body_len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                });
            }
        });
        (port, hits)
    }

    #[tokio::test]
    async fn a_peer_answer_that_redirects_floods_or_lies_is_not_believed() {
        let client = |port| Client::new(Ipv4Addr::LOCALHOST, port, Duration::from_secs(2)).unwrap();
        // A redirect to a URL that would answer: never followed.
        let good = r#"{"instance_id":"i-0abc","healthy":true}"#;
        let (target, target_hits) = raw(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{good}",
                good.len()
            ),
            0,
        )
        .await;
        let (redirecting, _) = raw(
            format!(
                "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{target}/health\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ),
            0,
        )
        .await;
        let err = client(redirecting)
            .fetch(Ipv4Addr::LOCALHOST)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Status { status: 302, .. }), "{err}");
        assert_eq!(target_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        // 100 MB, announced or not: refused past 16 KiB, quickly.
        let hundred_mb = 100 * 1024 * 1024;
        for head in [
            format!("HTTP/1.1 200 OK\r\ncontent-length: {hundred_mb}\r\n\r\n"),
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_owned(),
        ] {
            let (port, _) = raw(head.clone(), hundred_mb).await;
            let started = std::time::Instant::now();
            let err = client(port).fetch(Ipv4Addr::LOCALHOST).await.unwrap_err();
            assert!(matches!(err, Error::TooLarge { .. }), "{head:?}: {err}");
            assert!(started.elapsed() < Duration::from_secs(1), "{head:?}");
        }
        // An instance ID that could not be a lease holder is dropped; a plausible one is kept
        // (execute checks it against EC2 before it names a holder).
        for (id, kept) in [
            ("i-0abc", true),
            ("i-1/99/0", false),
            ("i 1", false),
            ("", false),
        ] {
            let body = format!(r#"{{"instance_id":{id:?},"healthy":true}}"#);
            let (port, _) = raw(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                ),
                0,
            )
            .await;
            let r = client(port).fetch(Ipv4Addr::LOCALHOST).await.unwrap();
            assert!(r.healthy);
            assert_eq!(r.instance_id.is_empty(), !kept, "{id:?}");
        }
    }
}
