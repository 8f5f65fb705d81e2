//! Probes: ICMP echo (surge-ping) to addresses, and "is this systemd unit active".
//!
//! The self-check is what gates a gateway's claim to carry traffic: at boot it must pass before
//! the zone's routes are pointed here. Each probe reports a verdict with the evidence, so a
//! failed boot says exactly which target or unit let it down.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use surge_ping::{Client, Config, PingIdentifier, PingSequence};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither an unprivileged ICMP socket nor a raw one (CAP_NET_RAW) could be opened.
    #[error("ICMP: cannot open a socket (needs CAP_NET_RAW or net.ipv4.ping_group_range): {0}")]
    Socket(#[source] std::io::Error),
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `icmp 198.51.100.1` or `unit strongswan.service`.
    pub probe: String,
    pub ok: bool,
    /// `rtt 0.4 ms`, `3 of 3 echoes unanswered (1 s timeout)`, `inactive`...
    pub detail: String,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.ok { "ok" } else { "FAILED" };
        write!(f, "{} {word}: {}", self.probe, self.detail)
    }
}

/// ICMP echo, sharing one socket for every target.
pub struct Icmp {
    client: Client,
}

impl Icmp {
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            client: Client::new(&Config::default()).map_err(Error::Socket)?,
        })
    }

    /// Echoes leave from `source`: peer probes go out of the ENI, so what they test is the path
    /// the zone's traffic takes, and a partition between ENIs shows as one.
    pub fn bound(source: Ipv4Addr) -> Result<Self, Error> {
        let config = Config::builder()
            .bind(std::net::SocketAddr::new(IpAddr::V4(source), 0))
            .build();
        Ok(Self {
            client: Client::new(&config).map_err(Error::Socket)?,
        })
    }

    /// One echo: its round trip, or why none came back within `timeout`. Each echo carries a
    /// fresh random identifier and sequence ([`nonce`]), and only a reply from `target` with
    /// both counts: a host that sees no request cannot answer it for a hung peer.
    pub async fn echo(&self, target: Ipv4Addr, timeout: Duration) -> Result<Duration, String> {
        let (ident, seq) = nonce();
        let mut pinger = self
            .client
            .pinger(IpAddr::V4(target), PingIdentifier(ident))
            .await;
        pinger.timeout(timeout);
        pinger
            .ping(PingSequence(seq), &payload())
            .await
            .map(|(_, rtt)| rtt)
            .map_err(|e| e.to_string())
    }

    /// Up to `attempts` echoes, `timeout` each; passes on the first reply.
    pub async fn check(&self, target: Ipv4Addr, timeout: Duration, attempts: u32) -> Verdict {
        let mut last = String::new();
        for _ in 0..attempts {
            match self.echo(target, timeout).await {
                Ok(rtt) => {
                    return Verdict {
                        probe: format!("icmp {target}"),
                        ok: true,
                        detail: format!("echo reply in {:.1} ms", rtt.as_secs_f64() * 1e3),
                    };
                }
                Err(error) => last = error,
            }
        }
        Verdict {
            probe: format!("icmp {target}"),
            ok: false,
            detail: format!("{attempts} echoes unanswered ({timeout:?} each); last: {last}"),
        }
    }
}

use crate::decide::route::Probe;

/// Rise/fall counting: `fall` failures in a row make a target down, `rise` successes in a row
/// make it up; anything in between changes nothing, so one lost packet never decides anything.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    state: Probe,
    ok_streak: u32,
    bad_streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Probe::Unknown,
            ok_streak: 0,
            bad_streak: 0,
        }
    }

    pub fn state(&self) -> Probe {
        self.state
    }

    /// Failures in a row so far (0 after a success).
    pub fn bad_streak(&self) -> u32 {
        self.bad_streak
    }

    /// Counts one result; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<Probe> {
        if ok {
            self.ok_streak += 1;
            self.bad_streak = 0;
        } else {
            self.bad_streak += 1;
            self.ok_streak = 0;
        }
        let next = if self.ok_streak >= self.rise {
            Probe::Up
        } else if self.bad_streak >= self.fall {
            Probe::Down
        } else {
            self.state
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

/// One probe round, as [`probe_loop`] hands it to its owner.
pub struct Round<'a> {
    pub result: &'a Result<std::time::Duration, String>,
    /// When the echo was sent.
    pub sent: tokio::time::Instant,
    pub state: Probe,
    /// The new state, when this round changed it.
    pub change: Option<Probe>,
    pub bad_streak: u32,
}

/// Probes `ip` every `period` forever (the caller aborts the task) with rise/fall counting,
/// and hands each round to `round`.
pub async fn probe_loop(
    icmp: std::sync::Arc<Icmp>,
    ip: Ipv4Addr,
    (period, timeout): (std::time::Duration, std::time::Duration),
    (rise, fall): (u32, u32),
    mut round: impl FnMut(Round<'_>) + Send,
) {
    let mut rf = RiseFall::new(rise, fall);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sent = tokio::time::Instant::now();
        let result = icmp.echo(ip, timeout).await;
        let change = rf.record(result.is_ok());
        round(Round {
            result: &result,
            sent,
            state: rf.state(),
            change,
            bad_streak: rf.bad_streak(),
        });
    }
}

/// A random (identifier, sequence) for one echo: 32 bits a reply must match (surge-ping
/// matches replies on source, identifier and sequence). Predictable ones (the pid, a counter)
/// would let a host with source/dest check off answer for a hung peer without seeing the
/// requests. Should the kernel's random source fail, the clock's nanoseconds still differ per
/// echo.
pub fn nonce() -> (u16, u16) {
    let n = getrandom::u32().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    });
    let [a, b, c, d] = n.to_be_bytes();
    (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
}

/// The echo's payload: random too, so a reply is not a canned packet (surge-ping 0.9 does not
/// hand the reply's payload back, so the identifier and sequence are what is checked).
fn payload() -> [u8; 16] {
    let mut p = [0u8; 16];
    let _ = getrandom::fill(&mut p);
    p
}

/// `systemctl is-active <unit>`: a unit that must run for this gateway to be useful (the VPN
/// daemon, a proxy). systemctl is the stable interface here; the D-Bus API would add a
/// dependency for one property read.
pub async fn unit_active(unit: &str) -> Verdict {
    let probe = format!("unit {unit}");
    let output = Command::new("systemctl")
        .args(["is-active", "--", unit])
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Ok(out) => {
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            Verdict {
                probe,
                ok: out.status.success() && state == "active",
                detail: if state.is_empty() {
                    String::from_utf8_lossy(&out.stderr).trim().to_owned()
                } else {
                    state
                },
            }
        }
        Err(error) => Verdict {
            probe,
            ok: false,
            detail: format!("cannot run systemctl: {error}"),
        },
    }
}

/// The whole self-check: every target and every unit, concurrently.
pub async fn self_check(config: &crate::config::SelfCheck) -> Result<Vec<Verdict>, Error> {
    let targets = config.targets();
    let mut verdicts = Vec::new();
    if !targets.is_empty() {
        let icmp = Icmp::new()?;
        let checks = targets
            .iter()
            .map(|t| icmp.check(*t, config.timeout(), config.attempts));
        verdicts.extend(futures::future::join_all(checks).await);
    }
    let units = config.units.iter().map(|u| unit_active(u));
    verdicts.extend(futures::future::join_all(units).await);
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_fall_needs_streaks() {
        let mut rf = RiseFall::new(3, 3);
        let seq = |rf: &mut RiseFall, results: &[bool]| -> Vec<Option<Probe>> {
            results.iter().map(|ok| rf.record(*ok)).collect()
        };
        assert_eq!(
            seq(&mut rf, &[true, true, true]),
            [None, None, Some(Probe::Up)]
        );
        // One loss, or two, change nothing; an answer resets the count.
        assert_eq!(
            seq(&mut rf, &[false, false, true, false, false]),
            [None, None, None, None, None]
        );
        assert_eq!(rf.state(), Probe::Up);
        assert_eq!(seq(&mut rf, &[false]), [Some(Probe::Down)]);
        assert_eq!(rf.bad_streak(), 3);
        assert_eq!(
            seq(&mut rf, &[true, false, true, true, true]),
            [None, None, None, None, Some(Probe::Up)]
        );
        // Down is reachable from Unknown too (a peer dead before we started).
        let mut rf = RiseFall::new(3, 2);
        assert_eq!(seq(&mut rf, &[false, false]), [None, Some(Probe::Down)]);
    }

    #[test]
    fn every_echo_gets_its_own_random_nonce() {
        let nonces: std::collections::BTreeSet<(u16, u16)> = (0..1000).map(|_| nonce()).collect();
        // 1000 draws of 32 random bits: a repeat has odds of about 1 in 10,000.
        assert!(nonces.len() >= 999, "{} distinct", nonces.len());
        assert_ne!(payload(), payload());
    }

    #[tokio::test]
    async fn loopback_answers_and_a_missing_unit_fails() {
        let icmp = Icmp::new().expect("ICMP socket (tests run as root)");
        let v = icmp
            .check(Ipv4Addr::LOCALHOST, Duration::from_secs(1), 2)
            .await;
        assert!(v.ok, "{v}");
        // Unanswered echoes are tested in the lab (tests/boot.rs), inside its namespaces:
        // traffic only ever goes to loopback or to namespaces the tests made.
        let v = unit_active("gateway-agent-no-such-unit.service").await;
        assert!(!v.ok, "{v}");
    }
}
