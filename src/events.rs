//! Planned exits announced in IMDS, parsed: which one, why, and by when the gateway must be
//! out of the data path.
//!
//! Pure parsing of what IMDS returns (the watcher in `agent::exit` fetches it):
//! - `autoscaling/target-lifecycle-state`: `Terminated` while the ASG waits in
//!   `Terminating:Wait` (scale-in, instance refresh, `max_instance_lifetime`, health replacement);
//! - `spot/instance-action`: `{"action": "terminate", "time": "2026-11-25T10:00:00Z"}`, two minutes
//!   ahead;
//! - `events/recommendations/rebalance`: `{"noticeTime": "..."}`;
//! - `events/maintenance/scheduled`: a JSON list of events with `NotBefore` as
//!   `21 Jan 2026 09:00:43 GMT` and a `State` (`active`, `completed`, `canceled`).
//!
//! Times are wall-clock (what IMDS gives); the watcher converts them once into a monotonic
//! deadline.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The ASG terminates this instance (its termination hook waits for us).
    Lifecycle,
    Spot,
    Rebalance,
    Maintenance,
    /// A scheduled event that does not stop the instance (`system-maintenance`): published,
    /// never drained for.
    Advisory,
    /// SIGTERM: `systemctl stop`, a shutdown.
    Stop,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lifecycle => "asg-termination",
            Self::Spot => "spot-interruption",
            Self::Rebalance => "rebalance-recommendation",
            Self::Maintenance => "scheduled-maintenance",
            Self::Advisory => "maintenance-advisory",
            Self::Stop => "stop",
        }
    }
}

/// A planned exit: what, why, and the wall-clock time (unix seconds) it happens, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub kind: Kind,
    pub reason: String,
    pub at_unix: Option<i64>,
}

/// `autoscaling/target-lifecycle-state`.
pub fn lifecycle(text: &str) -> Option<Exit> {
    (text.trim() == "Terminated").then(|| Exit {
        kind: Kind::Lifecycle,
        reason: "the Auto Scaling group is terminating this instance (target-lifecycle-state \
                 Terminated: scale-in, instance refresh or replacement)"
            .into(),
        at_unix: None,
    })
}

#[derive(Deserialize)]
struct SpotAction {
    action: String,
    time: String,
}

/// `spot/instance-action`. An unreadable notice still drains (EC2 only writes it when it is
/// about to act), with the two minutes EC2 promises counted from now.
pub fn spot(text: &str) -> Option<Exit> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(match serde_json::from_str::<SpotAction>(text) {
        Ok(a) => Exit {
            kind: Kind::Spot,
            reason: format!("spot interruption notice: {} at {}", a.action, a.time),
            at_unix: rfc3339(&a.time),
        },
        Err(e) => Exit {
            kind: Kind::Spot,
            reason: format!("spot interruption notice (unreadable: {e}): {text:.100}"),
            at_unix: None,
        },
    })
}

/// Whether an answer of a notice path reads as IMDS writes them: a JSON document (spot,
/// rebalance, maintenance) or one state word such as `InService` or `Warmed:Pending`
/// (target-lifecycle-state).
pub fn well_formed(text: &str) -> bool {
    let text = text.trim();
    let word = !text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == ':');
    word || serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// `events/recommendations/rebalance`: no deadline, the instance is merely at risk.
pub fn rebalance(text: &str) -> Option<Exit> {
    let text = text.trim();
    (!text.is_empty()).then(|| Exit {
        kind: Kind::Rebalance,
        reason: format!("rebalance recommendation: {text:.100}"),
        at_unix: None,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Scheduled {
    #[serde(default)]
    code: String,
    #[serde(default)]
    description: String,
    not_before: String,
    #[serde(default)]
    state: String,
}

/// `events/maintenance/scheduled`: the earliest event still to come, once `now_unix` is within
/// `lead_s` of its start (a reboot scheduled for next week does not drain today).
pub fn maintenance(text: &str, now_unix: i64, lead_s: i64) -> Result<Option<Exit>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let events: Vec<Scheduled> =
        serde_json::from_str(text).map_err(|e| format!("events/maintenance/scheduled: {e}"))?;
    let mut next: Option<(i64, &Scheduled)> = None;
    for ev in &events {
        if matches!(ev.state.as_str(), "completed" | "canceled") {
            continue;
        }
        let Some(at) = imds_date(&ev.not_before) else {
            return Err(format!(
                "events/maintenance/scheduled: NotBefore {:?} is not a date",
                ev.not_before
            ));
        };
        if next.is_none_or(|(t, _)| at < t) {
            next = Some((at, ev));
        }
    }
    Ok(next
        .filter(|(at, _)| *at - now_unix <= lead_s)
        .map(|(at, ev)| Exit {
            // Only events that stop, reboot or retire the instance take it out of service;
            // `system-maintenance` (network, power) leaves it running.
            kind: if ev.code == "system-maintenance" {
                Kind::Advisory
            } else {
                Kind::Maintenance
            },
            reason: format!(
                "scheduled maintenance {} ({}) at {}",
                ev.code, ev.description, ev.not_before
            ),
            at_unix: Some(at),
        }))
}

/// `2026-11-25T10:00:00Z` (fractional seconds allowed) → unix seconds.
pub fn rfc3339(text: &str) -> Option<i64> {
    let text = text.trim().strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let time = time.split('.').next()?;
    let [y, mo, d] = fields::<3>(date, '-')?;
    let [h, mi, s] = fields::<3>(time, ':')?;
    unix(y, mo, d, h, mi, s)
}

/// Unix seconds → `2026-11-25T10:00:00Z` (the inverse of [`rfc3339`]).
pub fn rfc3339_text(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `21 Jan 2026 09:00:43 GMT` → unix seconds.
pub fn imds_date(text: &str) -> Option<i64> {
    let mut words = text.split_whitespace();
    let d: i64 = words.next()?.parse().ok()?;
    let month = words.next()?;
    let y: i64 = words.next()?.parse().ok()?;
    let [h, mi, s] = fields::<3>(words.next()?, ':')?;
    if words.next()? != "GMT" || words.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mo = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    unix(y, mo, d, h, mi, s)
}

fn fields<const N: usize>(text: &str, sep: char) -> Option<[i64; N]> {
    let mut out = [0i64; N];
    let mut parts = text.split(sep);
    for slot in &mut out {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Days from the civil calendar (Howard Hinnant's algorithm), then seconds.
fn unix(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339("2026-11-25T10:00:00Z"), Some(1_795_600_800));
        assert_eq!(rfc3339("2026-11-25T10:00:00.123Z"), Some(1_795_600_800));
        assert_eq!(imds_date("25 Nov 2026 10:00:00 GMT"), Some(1_795_600_800));
        assert_eq!(imds_date("29 Feb 2024 00:00:00 GMT"), Some(1_709_164_800));
        for secs in [0, 1_709_164_800, 1_795_600_800, 951_782_400, 4_102_444_799] {
            assert_eq!(rfc3339(&rfc3339_text(secs)), Some(secs));
        }
        assert_eq!(rfc3339_text(1_795_600_800), "2026-11-25T10:00:00Z");
        for bad in [
            "",
            "2026-11-25",
            "2026-13-01T00:00:00Z",
            "2026-11-25T10:00:00+01:00",
        ] {
            assert_eq!(rfc3339(bad), None, "{bad:?}");
        }
        for bad in [
            "25 Foo 2026 10:00:00 GMT",
            "25 Nov 2026 10:00:00",
            "x Nov 2026 10:00:00 GMT",
        ] {
            assert_eq!(imds_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn notices_parse() {
        assert_eq!(lifecycle("InService"), None);
        assert_eq!(lifecycle("Terminated\n").unwrap().kind, Kind::Lifecycle);
        let s = spot(r#"{"action": "terminate", "time": "2026-11-25T10:00:00Z"}"#).unwrap();
        assert_eq!((s.kind, s.at_unix), (Kind::Spot, Some(1_795_600_800)));
        // A notice we cannot read still means "leave".
        let s = spot("garbage").unwrap();
        assert_eq!((s.kind, s.at_unix), (Kind::Spot, None));
        assert!(s.reason.contains("unreadable"));
        assert_eq!(spot("  "), None);
        assert!(well_formed("InService") && well_formed("Warmed:Pending\n"));
        assert!(well_formed(r#"{"action": "stop", "time": "x"}"#) && well_formed("[]"));
        assert!(!well_formed("garbage!") && !well_formed("\u{1b}\u{fffd}") && !well_formed(""));
        assert_eq!(
            rebalance(r#"{"noticeTime": "2026-11-25T10:00:00Z"}"#)
                .unwrap()
                .kind,
            Kind::Rebalance
        );
    }

    #[test]
    fn system_maintenance_is_advice_and_stop_events_drain() {
        let now = 1_795_600_800 - 60;
        let event = |code: &str| {
            format!(
                r#"[{{"Code": "{code}", "Description": "x", "NotBefore": "25 Nov 2026 10:00:00 GMT", "State": "active"}}]"#
            )
        };
        for (code, kind) in [
            ("system-maintenance", Kind::Advisory),
            ("instance-stop", Kind::Maintenance),
            ("instance-retirement", Kind::Maintenance),
            ("system-reboot", Kind::Maintenance),
            ("instance-reboot", Kind::Maintenance),
        ] {
            let exit = maintenance(&event(code), now, 600).unwrap().unwrap();
            assert_eq!(exit.kind, kind, "{code}");
        }
    }

    #[test]
    fn maintenance_drains_only_within_the_lead_time() {
        let ev = |not_before: &str, state: &str| {
            format!(
                r#"[{{"Code": "system-reboot", "Description": "scheduled reboot", "EventId": "instance-event-1", "NotBefore": "{not_before}", "State": "{state}"}}]"#
            )
        };
        let at = 1_795_600_800;
        let text = ev("25 Nov 2026 10:00:00 GMT", "active");
        assert_eq!(maintenance(&text, at - 3600, 600), Ok(None));
        let e = maintenance(&text, at - 300, 600).unwrap().unwrap();
        assert_eq!((e.kind, e.at_unix), (Kind::Maintenance, Some(at)));
        assert!(e.reason.contains("system-reboot"));
        assert_eq!(
            maintenance(&ev("25 Nov 2026 10:00:00 GMT", "canceled"), at, 600),
            Ok(None)
        );
        assert_eq!(maintenance("[]", at, 600), Ok(None));
        assert!(maintenance("{", at, 600).is_err());
        assert!(maintenance(&ev("soon", "active"), at, 600).is_err());
    }
}
