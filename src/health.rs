//! `/health`: what this agent tells its peers about itself, and how it asks them.
//!
//! Served on the ENI address only (peers reach it over the same path as the zone's traffic;
//! nothing listens on the primary interface). The answer is small JSON with no secrets: who
//! this is, whether its own self-check passes, whether it is leaving, which zones it carries.
//! Served by the tiny responder of [`crate::http`]: one GET, one answer, close. Peers parse the
//! answer leniently (unknown fields ignored), so agents of different versions understand each
//! other during a rolling upgrade.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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

/// Serves `GET /health` on `addr:port` with the latest report until the task is dropped.
pub async fn serve(
    addr: Ipv4Addr,
    port: u16,
    report: watch::Receiver<Report>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let sock = SocketAddr::from((addr, port));
    let listener = tokio::net::TcpListener::bind(sock)
        .await
        .map_err(|source| Error::Bind { addr: sock, source })?;
    Ok(serve_on(listener, report))
}

fn serve_on(
    listener: tokio::net::TcpListener,
    report: watch::Receiver<Report>,
) -> tokio::task::JoinHandle<()> {
    crate::http::serve_on(listener, move |path| match path {
        "/health" => {
            let body = serde_json::to_string(&*report.borrow()).unwrap_or_else(|_| "{}".into());
            crate::http::Response::json(body)
        }
        _ => crate::http::Response::not_found(),
    })
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
        // Bound once and kept: a port chosen, released and bound again can be taken meanwhile
        // by another test's client socket.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _server = serve_on(listener, rx);
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
