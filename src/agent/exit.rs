//! Planned exits: noticed in IMDS (or a SIGTERM), turned into a drain that hands every route
//! to a healthy peer *before* this gateway stops forwarding (make-before-break).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tracing::{debug, info, warn};

use crate::events::{self, Exit, Kind};
use crate::imds;

/// IMDS paths of planned exits, under `latest/meta-data/`.
const LIFECYCLE: &str = "latest/meta-data/autoscaling/target-lifecycle-state";
const SPOT: &str = "latest/meta-data/spot/instance-action";
const REBALANCE: &str = "latest/meta-data/events/recommendations/rebalance";
const MAINTENANCE: &str = "latest/meta-data/events/maintenance/scheduled";
/// A drain with a hard deadline (spot, maintenance) plans to be done this much before it:
/// the instance may go a little early, and the grace period and hook need time too.
const DEADLINE_MARGIN: Duration = Duration::from_secs(20);
/// IMDS trouble while polling is logged once a minute, not every poll.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Polls IMDS every `poll` and sends each kind of planned exit once, when it appears.
/// The latest `autoscaling/target-lifecycle-state` IMDS gave (for `gateway-agent status`).
pub type LifecycleState = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// What the IMDS watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A planned exit or advisory notice appeared.
    Announced(Exit),
    /// A notice that leaves the instance running (a rebalance recommendation, a scheduled
    /// event) is gone from IMDS while the instance still runs: the reason is over.
    Ended(Kind),
}

/// Notices whose end matters: the instance outlives them.
const ENDING: [Kind; 3] = [Kind::Rebalance, Kind::Advisory, Kind::Maintenance];

pub fn watch_imds(
    client: imds::Client,
    poll: Duration,
    maintenance_lead: Duration,
    tx: mpsc::Sender<Notice>,
    state: LifecycleState,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = interval(poll);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sent: Vec<Kind> = Vec::new();
        let mut last_error: Option<Instant> = None;
        loop {
            ticker.tick().await;
            let (lifecycle, spot, rebalance, maintenance) = tokio::join!(
                client.get(LIFECYCLE),
                client.get(SPOT),
                client.get(REBALANCE),
                client.get(MAINTENANCE)
            );
            if let Ok(seen) = &lifecycle {
                *state.lock().unwrap_or_else(|e| e.into_inner()) =
                    seen.as_ref().map(|t| t.trim().to_owned());
            }
            let lead = i64::try_from(maintenance_lead.as_secs()).unwrap_or(i64::MAX);
            let mut found = Vec::new();
            let mut errors = Vec::new();
            // An unreadable notice is acted on only while IMDS's other answers read well: then
            // the notice is real and merely in a format we do not know. When several paths
            // answer malformed text at once, IMDS (or something in front of it) is broken, and
            // leaving on its word would take a healthy gateway out of service for nothing.
            let mut malformed = 0;
            let mut unreadable = Vec::new();
            for (result, parse) in [
                (lifecycle, events::lifecycle as fn(&str) -> Option<Exit>),
                (spot, events::spot),
                (rebalance, events::rebalance),
            ] {
                match result {
                    Ok(Some(text)) => {
                        let exit = parse(&text);
                        if !events::well_formed(&text) {
                            malformed += 1;
                            unreadable.extend(exit.as_ref().map(|e| e.kind));
                        }
                        found.extend(exit);
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if let Ok(Some(text)) = &maintenance
                && !events::well_formed(text)
            {
                malformed += 1;
            }
            if malformed > 1 && !unreadable.is_empty() {
                found.retain(|e| !unreadable.contains(&e.kind));
                errors.push(format!(
                    "{malformed} notice paths answer malformed text: not leaving on an unreadable notice"
                ));
            }
            match maintenance {
                Ok(Some(text)) => match events::maintenance(&text, unix_now(), lead) {
                    Ok(exit) => found.extend(exit),
                    Err(e) => errors.push(e),
                },
                Ok(None) => {}
                Err(e) => errors.push(e.to_string()),
            }
            if !errors.is_empty() {
                crate::metrics::inc("gateway_agent_imds_errors_total", &[]);
            }
            if !errors.is_empty() && last_error.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                warn!(errors = %errors.join("; "), "IMDS: cannot read the planned-exit notices; retrying every poll");
                last_error = Some(Instant::now());
            }
            // Only a clean read of every path can say a notice is gone.
            if errors.is_empty() {
                let ended: Vec<Kind> = sent
                    .iter()
                    .copied()
                    .filter(|k| ENDING.contains(k) && !found.iter().any(|e| e.kind == *k))
                    .collect();
                for kind in ended {
                    sent.retain(|k| *k != kind);
                    info!(
                        kind = kind.as_str(),
                        "notice gone from IMDS while the instance runs: its reason is over"
                    );
                    if tx.send(Notice::Ended(kind)).await.is_err() {
                        return;
                    }
                }
            }
            for exit in found {
                if sent.contains(&exit.kind) {
                    continue;
                }
                sent.push(exit.kind);
                info!(kind = exit.kind.as_str(), reason = %exit.reason, "planned exit announced");
                if tx.send(Notice::Announced(exit)).await.is_err() {
                    return;
                }
            }
            debug!("planned-exit notices polled");
        }
    })
}

/// When the drain must be done: the exit's own time less a margin, or `default` from now.
pub fn deadline(exit: &Exit, default: Duration) -> Instant {
    let now = Instant::now();
    let Some(at) = exit.at_unix else {
        return now + default;
    };
    let left = u64::try_from(at - unix_now()).unwrap_or(0);
    let left = Duration::from_secs(left).saturating_sub(DEADLINE_MARGIN);
    // Even a notice already past its time gets a few seconds: handing over beats dropping.
    now + left.clamp(Duration::from_secs(5), default)
}

/// What a SIGTERM drain is, in the same terms.
pub fn on_stop() -> Exit {
    Exit {
        kind: Kind::Stop,
        reason: "stop requested (SIGTERM: systemctl stop, shutdown)".into(),
        at_unix: None,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_leave_a_margin_and_never_vanish() {
        let default = Duration::from_secs(90);
        let none = Exit {
            kind: Kind::Rebalance,
            reason: String::new(),
            at_unix: None,
        };
        let d = deadline(&none, default) - Instant::now();
        assert!(d > Duration::from_secs(89) && d <= default, "{d:?}");
        let spot = Exit {
            kind: Kind::Spot,
            reason: String::new(),
            at_unix: Some(unix_now() + 60),
        };
        let d = deadline(&spot, default) - Instant::now();
        assert!(
            d > Duration::from_secs(38) && d <= Duration::from_secs(40),
            "{d:?}"
        );
        // Never later than the configured drain timeout.
        let far = Exit {
            at_unix: Some(unix_now() + 3600),
            ..spot.clone()
        };
        assert!(deadline(&far, default) - Instant::now() <= default);
        let late = Exit {
            at_unix: Some(unix_now() - 10),
            ..spot
        };
        let d = deadline(&late, default) - Instant::now();
        assert!(
            d > Duration::from_secs(4) && d <= Duration::from_secs(5),
            "{d:?}"
        );
    }
}
