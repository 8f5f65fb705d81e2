//! A tiny HTTP/1.1 responder for the agent's two read-only endpoints (`/health` on the ENI
//! address, `/metrics` on localhost): one GET, one answer, close. Small on purpose: no
//! keep-alive, no request bodies, a bounded read. Also the builder of the agent's plain-HTTP
//! clients ([`plain_client`]).
//!
//! `/health` must listen where the whole VPC can reach it (the security group lets the VPC in
//! for NAT), so a client that opens connections and never finishes them must not cost the agent
//! more than a fixed handful of descriptors: the descriptors it needs for its EC2 calls, IMDS,
//! netlink and `/proc` come from the same limit. Hence, in this order, before any task exists:
//! an allow-list of source addresses (others are reset at once), a cap on connections in
//! progress per source and in all (over it: reset at once), and one deadline for the whole
//! exchange.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Requests are one line and a few headers; anything longer is not a client of ours.
const MAX_REQUEST: usize = 4096;
/// A refusal is logged at most once per this (a flood must not become a log flood); the rest
/// are counted in `gateway_agent_http_refused_total`.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);

/// How much one listener may hold at once, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections in progress, all sources together.
    pub max_connections: usize,
    /// Connections in progress from one source address.
    pub per_source: usize,
    /// The whole exchange (request read, answer written) must end within this.
    pub deadline: Duration,
}

impl Limits {
    /// `/health`: a peer asks twice a second with a 400 ms timeout, so a handful per peer is
    /// plenty; 64 descriptors are a small share of the unit's `LimitNOFILE`. A LAN hop answers in
    /// well under a second: a client slower than that is not a peer that still waits.
    pub const HEALTH: Limits = Limits {
        max_connections: 64,
        per_source: 4,
        deadline: Duration::from_secs(1),
    };
    /// `/metrics`: one scraper, rarely two.
    pub const METRICS: Limits = Limits {
        max_connections: 8,
        per_source: 4,
        deadline: Duration::from_secs(2),
    };
}

/// Which source addresses may connect. Loopback always may; everyone else only when allowed
/// by a configured network or a host named at run time (the group's peer ENI addresses, which
/// the run loop learns by discovery and updates here).
#[derive(Debug, Clone, Default)]
pub struct Allow(Arc<RwLock<AllowSet>>);

#[derive(Debug, Default)]
struct AllowSet {
    any: bool,
    nets: Vec<(IpAddr, u8)>,
    hosts: BTreeSet<IpAddr>,
}

impl Allow {
    /// Every source (the endpoint's listen address is its only fence, e.g. `/metrics` on
    /// 127.0.0.1 by default).
    pub fn any() -> Allow {
        let allow = Allow::default();
        allow.write().any = true;
        allow
    }

    /// Loopback, these networks (`(network, prefix length)`, as `config::parse_cidr` gives
    /// them), and the hosts set later with [`Allow::set_hosts`].
    pub fn nets(nets: Vec<(IpAddr, u8)>) -> Allow {
        let allow = Allow::default();
        allow.write().nets = nets;
        allow
    }

    /// Replaces the hosts allowed besides the networks.
    pub fn set_hosts(&self, hosts: impl IntoIterator<Item = IpAddr>) {
        self.write().hosts = hosts.into_iter().map(|h| h.to_canonical()).collect();
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let set = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ip.is_loopback()
            || set.any
            || set.hosts.contains(&ip)
            || set.nets.iter().any(|(net, len)| in_net(ip, *net, *len))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AllowSet> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The connections in progress, per source: a slot is taken before the connection's task is
/// spawned and given back when the task ends, however it ends.
#[derive(Debug)]
struct Slots {
    limits: Limits,
    taken: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if taken.0 >= self.limits.max_connections {
            return Err("busy");
        }
        let mine = taken.1.entry(ip).or_insert(0);
        if *mine >= self.limits.per_source {
            return Err("busy-source");
        }
        *mine += 1;
        taken.0 += 1;
        Ok(Slot {
            slots: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self
            .slots
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        taken.0 = taken.0.saturating_sub(1);
        if let Some(n) = taken.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                taken.1.remove(&self.ip);
            }
        }
    }
}

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
/// dropped; `endpoint` names it in logs and metrics.
pub async fn serve<H>(
    addr: SocketAddr,
    endpoint: &'static str,
    (limits, allow): (Limits, Allow),
    handler: H,
) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    H: Fn(&str) -> Response + Send + Sync + 'static,
{
    Ok(serve_on(
        TcpListener::bind(addr).await?,
        endpoint,
        (limits, allow),
        handler,
    ))
}

/// As [`serve`], on a listener bound already (tests bind port 0 and keep it, so no other
/// socket can take the port between choosing and binding it).
pub fn serve_on<H>(
    listener: TcpListener,
    endpoint: &'static str,
    (limits, allow): (Limits, Allow),
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(&str) -> Response + Send + Sync + 'static,
{
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let handler = Arc::new(handler);
    let slots = Arc::new(Slots {
        limits,
        taken: Mutex::new((0, HashMap::new())),
    });
    tokio::spawn(async move {
        let mut logged: Option<tokio::time::Instant> = None;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE among others: the descriptors are needed elsewhere; back off.
                    warn!(%addr, endpoint, error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = if allow.permits(peer.ip()) {
                slots.take(peer.ip())
            } else {
                Err("not-allowed")
            };
            let slot = match slot {
                Ok(slot) => slot,
                Err(reason) => {
                    // A reset frees the descriptor now and leaves no TIME_WAIT behind.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    crate::metrics::inc(
                        "gateway_agent_http_refused_total",
                        &[("endpoint", endpoint), ("reason", reason)],
                    );
                    if logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                        warn!(%addr, endpoint, %peer, reason, "HTTP connection refused (further refusals are counted in gateway_agent_http_refused_total)");
                        logged = Some(tokio::time::Instant::now());
                    }
                    continue;
                }
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(limits.deadline, answer(stream, &*handler)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, endpoint, error = %e, "HTTP request dropped"),
                    Err(_) => debug!(%peer, endpoint, "HTTP request too slow: dropped"),
                }
            });
        }
    })
}

async fn answer<H: Fn(&str) -> Response>(
    mut stream: TcpStream,
    handler: &H,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_allow_list_admits_loopback_its_networks_and_its_hosts_only() {
        let allow = Allow::nets(vec![(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 0)), 16)]);
        allow.set_hosts([IpAddr::V4(Ipv4Addr::new(10, 0, 2, 10))]);
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1", true),
            ("127.8.9.10", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("10.0.2.10", true),
            ("::ffff:10.0.2.10", true),
            ("10.0.2.11", false),
            ("10.9.255.1", true),
            ("10.10.0.1", false),
            ("0.0.0.0", false),
            ("fd00::1", false),
        ];
        for (ip, want) in cases {
            assert_eq!(allow.permits(ip.parse().unwrap()), *want, "{ip}");
        }
        allow.set_hosts([]);
        assert!(
            !allow.permits("10.0.2.10".parse().unwrap()),
            "hosts are replaced"
        );
        assert!(Allow::any().permits("203.0.113.9".parse().unwrap()));
        assert!(!Allow::default().permits("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn slots_cap_all_sources_and_each_source_and_come_back() {
        let slots = Arc::new(Slots {
            limits: Limits {
                max_connections: 3,
                per_source: 2,
                deadline: Duration::from_secs(1),
            },
            taken: Mutex::new((0, HashMap::new())),
        });
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some("busy-source"));
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some("busy"));
        drop(a1);
        assert!(slots.take(b).is_ok(), "a slot given back is free again");
    }

    async fn server(limits: Limits, allow: Allow) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve_on(listener, "test", (limits, allow), |_| {
            Response::json("{}".into())
        });
        (addr, task)
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /x HTTP/1.1\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn slow_clients_hold_a_bounded_number_of_slots_for_a_bounded_time() {
        let limits = Limits {
            max_connections: 4,
            per_source: 4,
            deadline: Duration::from_millis(300),
        };
        let (addr, _task) = server(limits, Allow::any()).await;
        // Four clients that send one byte and stall take every slot...
        let mut stalled = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"G").await.unwrap();
            stalled.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...so a fifth is reset at once, not queued behind them...
        let started = std::time::Instant::now();
        let refused = get(addr).await;
        assert!(
            refused.as_deref().map_or(true, str::is_empty),
            "over the cap: {refused:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(200));
        // ...and past the deadline the stalled ones are closed and the slots free again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        for s in &mut stalled {
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
                .await
                .expect("closed by the deadline");
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        let answer = get(addr).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }
}
