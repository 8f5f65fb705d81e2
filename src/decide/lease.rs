//! The lease tag: who carries a zone's route tables, since which claim, renewed when.
//!
//! `gateway-agent:lease = <instance-id>/<epoch>/<unix-ms>` on every route table of a zone. The
//! carrier of the zone rewrites it every `failover.lease_renew_ms`; a claim writes it with an
//! epoch larger than any seen on the zone: a boot reclaim *before* its route writes, a takeover
//! with its second wave of writes (after the tables that carry traffic), so a reader that finds
//! routes and lease disagreeing knows a claim is in flight and who made it.
//! Peers judge freshness by whether the value *changes* (on their own monotonic clock), never
//! by comparing `unix-ms` with their clock: the timestamp is for operators.

use std::fmt;

/// The tag key.
pub const LEASE_TAG: &str = "gateway-agent:lease";

/// The key of the witness a gateway writes on a suspected carrier's zone before it judges that
/// carrier's lease: `gateway-agent:witness:<judge's zone>` (one key per judging zone, so judges
/// never overwrite each other, and the number of keys is bounded by the group's zones).
///
/// EC2's reads lag its writes by an unpublished amount, so a lease that *looks* unchanged for
/// `lease_ttl` may have been renewed behind the lag. A read that shows the judge's own witness,
/// written after the lease would have lapsed, shows every write to that table made before it
/// too: only then is "not renewed for `lease_ttl`" a fact rather than a lagging view.
pub fn witness_tag(judge_zone: &str) -> String {
    format!("gateway-agent:witness:{judge_zone}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: u64,
    pub unix_ms: u64,
}

impl Lease {
    /// `None` for anything that is not exactly `<holder>/<epoch>/<unix-ms>`: a hand-edited or
    /// foreign tag is ignored (it only delays a lease-confirmed takeover, never causes one).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('/');
        let holder = parts.next()?;
        let epoch = parts.next()?.parse().ok()?;
        let unix_ms = parts.next()?.parse().ok()?;
        let valid_holder = !holder.is_empty()
            && holder.len() <= 64
            && holder
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        (parts.next().is_none() && valid_holder).then(|| Self {
            holder: holder.to_owned(),
            epoch,
            unix_ms,
        })
    }
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.holder, self.epoch, self.unix_ms)
    }
}

/// The newest lease among a zone's tables: the largest epoch (then the latest renewal).
pub fn newest<'a>(tags: impl IntoIterator<Item = &'a str>) -> Option<Lease> {
    tags.into_iter()
        .filter_map(Lease::parse)
        .max_by_key(|l| (l.epoch, l.unix_ms))
}

/// What a carrier does with a zone's lease this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Rewrite the lease with this epoch.
    Renew(u64),
    /// Someone claimed the zone since with a newer epoch: stop renewing, let them have it.
    LetGo { holder: String, epoch: u64 },
}

/// The epoch a carrier renews a zone's lease with, from the newest lease on the zone's tables
/// and the epoch this gateway claimed it with (if it remembers one).
pub fn renewal(me: &str, newest: Option<&Lease>, mine: Option<u64>) -> Renewal {
    match (newest, mine) {
        (Some(l), Some(e)) if l.holder != me && l.epoch > e => Renewal::LetGo {
            holder: l.holder.clone(),
            epoch: l.epoch,
        },
        (_, Some(e)) => Renewal::Renew(e),
        // A hand-over names its receiver as the holder: the receiver adopts that epoch.
        (Some(l), None) if l.holder == me => Renewal::Renew(l.epoch),
        (Some(l), None) => Renewal::Renew(l.epoch + 1),
        (None, None) => Renewal::Renew(1),
    }
}

/// The epoch a claim (a takeover, a reclaim, a hand-over) is written with: larger than any
/// seen on the zone, so a reader that finds routes and lease disagreeing knows who claimed last.
pub fn claim_epoch(newest: Option<&Lease>) -> u64 {
    newest.map_or(1, |l| l.epoch + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_keeps_its_epoch_adopts_a_handover_and_lets_go_of_newer_claims() {
        let l = |holder: &str, epoch| Lease {
            holder: holder.into(),
            epoch,
            unix_ms: 0,
        };
        let cases: Vec<(&str, Option<Lease>, Option<u64>, Renewal)> = vec![
            ("nothing known: epoch 1", None, None, Renewal::Renew(1)),
            (
                "own claim remembered",
                Some(l("i-me", 4)),
                Some(4),
                Renewal::Renew(4),
            ),
            (
                "an older foreign lease does not move a remembered claim",
                Some(l("i-peer", 3)),
                Some(4),
                Renewal::Renew(4),
            ),
            (
                "a newer foreign claim: let go",
                Some(l("i-peer", 5)),
                Some(4),
                Renewal::LetGo {
                    holder: "i-peer".into(),
                    epoch: 5,
                },
            ),
            (
                "a hand-over to this gateway: adopt its epoch",
                Some(l("i-me", 7)),
                None,
                Renewal::Renew(7),
            ),
            (
                "routes here under someone else's lease, no claim remembered: one above",
                Some(l("i-peer", 7)),
                None,
                Renewal::Renew(8),
            ),
        ];
        for (name, newest, mine, want) in cases {
            assert_eq!(renewal("i-me", newest.as_ref(), mine), want, "{name}");
        }
        assert_eq!(claim_epoch(None), 1);
        assert_eq!(claim_epoch(Some(&l("i-peer", 9))), 10);
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let l = Lease::parse("i-0abc/7/1700000000000").unwrap();
        assert_eq!(l.holder, "i-0abc");
        assert_eq!(l.epoch, 7);
        assert_eq!(Lease::parse(&l.to_string()), Some(l));
        for bad in [
            "",
            "i-1",
            "i-1/2",
            "i-1/x/3",
            "i-1/2/3/4",
            "/2/3",
            "i 1/2/3",
            "i-1/-2/3",
        ] {
            assert_eq!(Lease::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn newest_takes_the_largest_epoch() {
        let n = newest(["i-a/3/100", "junk", "i-b/4/50", "i-a/3/200"]).unwrap();
        assert_eq!((n.holder.as_str(), n.epoch), ("i-b", 4));
        assert_eq!(newest(["junk"]), None);
    }
}
