//! An IMDSv2-only client: who this instance is, where it runs, which interfaces it has.
//!
//! IMDSv1 is never used, so gateways can run with `HttpTokens=required`: a box that forwards
//! other hosts' traffic is exactly where v1's request forgery exposure matters. The token is
//! cached and refreshed before it expires, and once more if IMDS answers 401 (it restarted, or
//! the clock jumped). A 404 means "absent" and is `None`, not an error. Connect errors and 5xx
//! answers are retried with exponential backoff inside one overall deadline per call.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep, timeout_at};

const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The longest TTL IMDS grants (6 h): fewer token round trips, and a token never leaves the box.
const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// Refresh this long before expiry so a token never expires between the check and the request.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// First retry comes quickly: a transient IMDS hiccup usually clears in tens of milliseconds.
const INITIAL_BACKOFF: Duration = Duration::from_millis(20);
/// Cap the backoff so a call still retries a few times inside a deadline of a few seconds.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "IMDS: cannot build the HTTP client: {}; this is a bug of the agent (IMDS is plain HTTP \
         and needs no CA roots): report it with this line",
        crate::http::chain(.0)
    )]
    Client(#[source] reqwest::Error),
    #[error("IMDS {call}: no usable answer within {timeout:?} ({attempts} attempts); last: {last}")]
    DeadlineExceeded {
        call: String,
        timeout: Duration,
        attempts: u32,
        last: String,
    },
    #[error("IMDS {call}: still 401 Unauthorized after refreshing the session token")]
    Unauthorized { call: String },
    #[error("IMDS {call}: unexpected HTTP status {status}")]
    Status { call: String, status: StatusCode },
    #[error("IMDS {call}: absent (404), but the agent needs it")]
    Missing { call: String },
    #[error("IMDS {call}: cannot use the answer {body:?}: {reason}")]
    Invalid {
        call: String,
        body: String,
        reason: String,
    },
}

impl Error {
    /// True when IMDS did not answer in time: waiting may help. Anything else is an answer that
    /// will not change by asking again.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::DeadlineExceeded { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One network interface as IMDS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: String,
    pub device_number: u32,
    pub interface_id: String,
    pub local_ipv4s: Vec<Ipv4Addr>,
    pub subnet_id: String,
    /// Absent on an IPv6-only subnet.
    pub subnet_ipv4_cidr_block: Option<String>,
    pub vpc_id: String,
}

/// Everything the agent learns about itself at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    /// MAC of the primary interface.
    pub mac: String,
    pub interfaces: Vec<Interface>,
    /// `None` outside an Auto Scaling group.
    pub target_lifecycle_state: Option<String>,
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// What one HTTP attempt came to, for the retry loop to decide on.
enum Attempt {
    Done(Option<String>),
    /// Carries the refused token, so concurrent callers drop it once and not a fresh one.
    Unauthorized(String),
    Retry(String),
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    token: Mutex<Option<Token>>,
}

impl Client {
    /// `base` is the endpoint without a path (`http://169.254.169.254`); `timeout` bounds each
    /// call, retries included.
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let http = crate::http::plain_client()
            // A fresh connection per call: IMDS is a link-local hop away (a connect costs
            // microseconds), calls are rare, and an idle kept-alive connection that the IMDS
            // side has dropped (or that stalls on delayed ACKs, as the lab's emulator did at
            // 40 ms per call) would cost more than it saves.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(Error::Client)?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            timeout,
            token: Mutex::new(None),
        })
    }

    /// GETs `path` (e.g. `/latest/meta-data/instance-id`); `Ok(None)` on 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>> {
        let path = format!("/{}", path.trim_start_matches('/'));
        let call = format!("GET {path}");
        let deadline = Instant::now() + self.timeout;
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0;
        let mut refreshed = false;
        loop {
            attempts += 1;
            let attempt = match timeout_at(deadline, self.attempt(&path, &call)).await {
                Ok(attempt) => attempt?,
                Err(_) => Attempt::Retry("timed out".to_owned()),
            };
            let last = match attempt {
                Attempt::Done(body) => return Ok(body),
                Attempt::Unauthorized(refused) if !refreshed => {
                    refreshed = true;
                    let mut cached = self.token.lock().await;
                    if cached.as_ref().is_some_and(|t| t.value == refused) {
                        *cached = None;
                    }
                    continue;
                }
                Attempt::Unauthorized(_) => return Err(Error::Unauthorized { call }),
                Attempt::Retry(last) => last,
            };
            if Instant::now() + backoff >= deadline {
                return Err(Error::DeadlineExceeded {
                    call,
                    timeout: self.timeout,
                    attempts,
                    last,
                });
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn attempt(&self, path: &str, call: &str) -> Result<Attempt> {
        let token = match self.token().await? {
            Ok(token) => token,
            Err(why) => return Ok(Attempt::Retry(format!("PUT {TOKEN_PATH}: {why}"))),
        };
        let request = self.http.get(format!("{}{path}", self.base));
        let (status, _, body) = match exchange(request.header(TOKEN_HEADER, &token)).await {
            Ok(answer) => answer,
            Err(why) => return Ok(Attempt::Retry(why)),
        };
        Ok(match status {
            StatusCode::OK => Attempt::Done(Some(body)),
            StatusCode::NOT_FOUND => Attempt::Done(None),
            StatusCode::UNAUTHORIZED => Attempt::Unauthorized(token),
            status if retryable(status) => Attempt::Retry(format!("HTTP {status}")),
            status => {
                return Err(Error::Status {
                    call: call.to_owned(),
                    status,
                });
            }
        })
    }

    /// The cached token, or a fresh one. The outer `Err` is final; the inner one is retryable.
    async fn token(&self) -> Result<Result<String, String>> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(Ok(token.value.clone()));
        }
        let request = self.http.put(format!("{}{TOKEN_PATH}", self.base));
        let (status, headers, value) =
            match exchange(request.header(TOKEN_TTL_HEADER, TOKEN_TTL.as_secs())).await {
                Ok(answer) => answer,
                Err(why) => return Ok(Err(why)),
            };
        match status {
            StatusCode::OK => {}
            status if retryable(status) => return Ok(Err(format!("HTTP {status}"))),
            status => {
                return Err(Error::Status {
                    call: format!("PUT {TOKEN_PATH}"),
                    status,
                });
            }
        }
        // IMDS echoes the TTL it granted; trust it over the one we asked for.
        let ttl = headers
            .get(TOKEN_TTL_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map_or(TOKEN_TTL, Duration::from_secs);
        let refresh_at = Instant::now() + ttl.saturating_sub(TOKEN_REFRESH_MARGIN);
        *cached = Some(Token {
            value: value.clone(),
            refresh_at,
        });
        Ok(Ok(value))
    }

    async fn require(&self, path: &str) -> Result<String> {
        match self.get(path).await? {
            Some(body) => Ok(body.trim().to_owned()),
            None => Err(Error::Missing {
                call: format!("GET {path}"),
            }),
        }
    }

    async fn parsed<T: FromStr<Err: fmt::Display>>(&self, path: &str) -> Result<T> {
        parse(path, &self.require(path).await?)
    }

    pub async fn instance_id(&self) -> Result<String> {
        self.require("/latest/meta-data/instance-id").await
    }

    pub async fn region(&self) -> Result<String> {
        self.require("/latest/meta-data/placement/region").await
    }

    pub async fn availability_zone(&self) -> Result<String> {
        self.require("/latest/meta-data/placement/availability-zone")
            .await
    }

    /// MAC of the primary interface.
    pub async fn mac(&self) -> Result<String> {
        self.require("/latest/meta-data/mac").await
    }

    /// The ASG's intended state for this instance (`InService`, `Terminated`, ...); `None`
    /// outside an Auto Scaling group.
    pub async fn target_lifecycle_state(&self) -> Result<Option<String>> {
        let state = self
            .get("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await?;
        Ok(state.map(|s| s.trim().to_owned()))
    }

    /// Every attached interface, ordered by device number (the primary first).
    pub async fn interfaces(&self) -> Result<Vec<Interface>> {
        let macs = self
            .require("/latest/meta-data/network/interfaces/macs/")
            .await?;
        let mut interfaces = Vec::new();
        for mac in macs.lines().map(|l| l.trim().trim_end_matches('/')) {
            if !mac.is_empty() {
                interfaces.push(self.interface(mac).await?);
            }
        }
        interfaces.sort_by_key(|i| i.device_number);
        Ok(interfaces)
    }

    async fn interface(&self, mac: &str) -> Result<Interface> {
        let dir = format!("/latest/meta-data/network/interfaces/macs/{mac}");
        let ipv4s_path = format!("{dir}/local-ipv4s");
        let ipv4s = self.get(&ipv4s_path).await?.unwrap_or_default();
        Ok(Interface {
            mac: mac.to_owned(),
            device_number: self.parsed(&format!("{dir}/device-number")).await?,
            interface_id: self.require(&format!("{dir}/interface-id")).await?,
            local_ipv4s: ipv4s
                .split_whitespace()
                .map(|ip| parse(&ipv4s_path, ip))
                .collect::<Result<_>>()?,
            subnet_id: self.require(&format!("{dir}/subnet-id")).await?,
            subnet_ipv4_cidr_block: self
                .get(&format!("{dir}/subnet-ipv4-cidr-block"))
                .await?
                .map(|c| c.trim().to_owned()),
            vpc_id: self.require(&format!("{dir}/vpc-id")).await?,
        })
    }

    /// Reads everything in [`Identity`], each call under its own deadline.
    pub async fn identity(&self) -> Result<Identity> {
        Ok(Identity {
            instance_id: self.instance_id().await?,
            region: self.region().await?,
            availability_zone: self.availability_zone().await?,
            mac: self.mac().await?,
            interfaces: self.interfaces().await?,
            target_lifecycle_state: self.target_lifecycle_state().await?,
        })
    }
}

/// Sends and reads the whole answer; `Err` is a transport failure, worth retrying.
async fn exchange(request: RequestBuilder) -> Result<(StatusCode, HeaderMap, String), String> {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, headers, body))
}

fn parse<T: FromStr<Err: fmt::Display>>(path: &str, body: &str) -> Result<T> {
    body.trim().parse().map_err(|e| Error::Invalid {
        call: format!("GET {path}"),
        body: body.to_owned(),
        reason: format!("{e}"),
    })
}

/// IMDS throttles with 429 and has brief 5xx moments while the host agent restarts.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One request as the fake IMDS saw it: method, path, token header, TTL header.
    type Seen = (String, String, Option<String>, Option<String>);
    type Log = Arc<StdMutex<Vec<Seen>>>;

    /// A tiny IMDSv2: one request per connection; the Nth PUT issues `tok-N`, a GET without the
    /// newest token gets 401, and `answer(path, earlier GETs)` answers the rest.
    async fn serve(answer: fn(&str, usize) -> (u16, &'static str)) -> (Client, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Log::default();
        let seen = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let header = |name: &str| {
                    let mut lines = text.lines().filter_map(|l| l.split_once(": "));
                    lines
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_owned())
                };
                let mut first = text.split(' ');
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let token = header(TOKEN_HEADER);
                let (status, body) = {
                    let mut log = seen.lock().expect("log");
                    let count = |m: &str| log.iter().filter(|r| r.0 == m).count();
                    let (puts, gets) = (count("PUT"), count("GET"));
                    let answer = match method {
                        "PUT" => (200, format!("tok-{}", puts + 1)),
                        _ if token != Some(format!("tok-{puts}")) => (401, String::new()),
                        _ => {
                            let (status, body) = answer(path, gets);
                            (status, body.to_owned())
                        }
                    };
                    log.push((method.into(), path.into(), token, header(TOKEN_TTL_HEADER)));
                    answer
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        let client = Client::new(&base, Duration::from_secs(2)).expect("client");
        (client, log)
    }

    fn methods(log: &Log) -> Vec<String> {
        log.lock()
            .expect("log")
            .iter()
            .map(|r| r.0.clone())
            .collect()
    }

    #[tokio::test]
    async fn token_is_fetched_once_and_sent() {
        let (imds, log) = serve(|_, _| (200, "i-0abc\n")).await;
        assert_eq!(imds.instance_id().await.expect("id"), "i-0abc");
        assert_eq!(imds.instance_id().await.expect("id"), "i-0abc");
        assert_eq!(methods(&log), ["PUT", "GET", "GET"]);
        let log = log.lock().expect("log");
        assert_eq!(log[0].3.as_deref(), Some("21600"));
        assert_eq!(log[1].1, "/latest/meta-data/instance-id");
        assert_eq!(log[2].2.as_deref(), Some("tok-1"));
    }

    #[tokio::test]
    async fn unauthorized_refreshes_the_token_once() {
        // The first GET is refused as if IMDS had restarted and forgotten tok-1.
        let (imds, log) = serve(|_, gets| {
            if gets == 0 {
                (401, "")
            } else {
                (200, "eu-west-1")
            }
        })
        .await;
        assert_eq!(imds.region().await.expect("region"), "eu-west-1");
        assert_eq!(methods(&log), ["PUT", "GET", "PUT", "GET"]);

        // A 401 that persists is an error after exactly one refresh, not a loop.
        let (imds, log) = serve(|_, _| (401, "")).await;
        let err = imds.region().await.expect_err("401");
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("GET /latest/meta-data/placement/region"),
            "{err}"
        );
        assert_eq!(methods(&log), ["PUT", "GET", "PUT", "GET"]);
    }

    /// IMDSv2 only: when the token PUT is refused (an IMDSv1-only endpoint, a proxy in the
    /// way), the call fails naming it, and no GET ever goes out without a token.
    #[tokio::test]
    async fn a_refused_token_is_an_error_never_a_v1_fallback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let methods = Arc::new(StdMutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&methods);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut chunk = [0u8; 2048];
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&chunk[..n]).to_string();
                let method = text.split(' ').next().unwrap_or("").to_owned();
                // IMDSv1 would answer this GET: the agent must never ask it.
                let (status, body) = if method == "PUT" {
                    (403, "")
                } else {
                    (200, "i-v1")
                };
                seen.lock().expect("log").push(method);
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        let imds = Client::new(&base, Duration::from_secs(2)).expect("client");
        let err = imds.instance_id().await.expect_err("no token, no answer");
        assert!(err.to_string().contains("token"), "{err}");
        let methods = methods.lock().expect("log").clone();
        assert!(
            !methods.is_empty() && methods.iter().all(|m| m == "PUT"),
            "{methods:?}"
        );
    }

    #[tokio::test]
    async fn not_found_is_none() {
        let (imds, _) = serve(|_, _| (404, "")).await;
        assert_eq!(imds.target_lifecycle_state().await.expect("state"), None);
        let err = imds.instance_id().await.expect_err("required");
        let expected =
            "IMDS GET /latest/meta-data/instance-id: absent (404), but the agent needs it";
        assert_eq!(err.to_string(), expected);
    }

    #[tokio::test]
    async fn server_errors_are_retried() {
        let (imds, log) = serve(|_, gets| {
            if gets < 2 {
                (503, "")
            } else {
                (200, "InService")
            }
        })
        .await;
        let state = imds.target_lifecycle_state().await.expect("state");
        assert_eq!(state.as_deref(), Some("InService"));
        assert_eq!(methods(&log), ["PUT", "GET", "GET", "GET"]);
    }

    #[tokio::test]
    async fn deadline_exceeded_names_the_call() {
        let (mut imds, _) = serve(|_, _| (500, "")).await;
        imds.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = imds.mac().await.expect_err("deadline");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.is_transient());
        let text = err.to_string();
        let expected = "IMDS GET /latest/meta-data/mac: no usable answer within 200ms";
        assert!(text.starts_with(expected), "{text}");
        assert!(text.contains("last: HTTP 500"), "{text}");
    }

    #[tokio::test]
    async fn unreachable_imds_exceeds_the_deadline() {
        // Bind then drop: the port refuses connections.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let imds = Client::new(&base, Duration::from_millis(150)).expect("client");
        let err = imds.instance_id().await.expect_err("refused");
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("last: PUT /latest/api/token: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn interfaces_are_read_per_mac() {
        let (imds, _) = serve(|path, _| {
            let rest = path.strip_prefix("/latest/meta-data/network/interfaces/macs/");
            match rest.unwrap_or("?") {
                "" => (200, "0a:00:00:00:00:02/\n0a:00:00:00:00:01/"),
                "0a:00:00:00:00:01/device-number" => (200, "0"),
                "0a:00:00:00:00:02/device-number" => (200, "1"),
                "0a:00:00:00:00:02/local-ipv4s" => (200, "10.0.1.5\n10.0.1.6"),
                r if r.ends_with("/interface-id") => (200, "eni-1"),
                r if r.ends_with("/subnet-id") => (200, "subnet-1"),
                r if r.ends_with("/vpc-id") => (200, "vpc-1"),
                _ => (404, ""),
            }
        })
        .await;
        let interfaces = imds.interfaces().await.expect("interfaces");
        assert_eq!(interfaces.len(), 2);
        assert_eq!(interfaces[0].mac, "0a:00:00:00:00:01");
        assert!(interfaces[0].local_ipv4s.is_empty());
        assert_eq!(interfaces[1].device_number, 1);
        let ips = [Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 0, 1, 6)];
        assert_eq!(interfaces[1].local_ipv4s, ips);
        assert_eq!(interfaces[1].subnet_ipv4_cidr_block, None);
    }
}
