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

/// The largest epoch a lease may carry. A claim adds one, so a real group never comes near
/// (a claim a second for a million years); a tag above it was written by someone else, and
/// believing it would make every later claim overflow.
pub const MAX_EPOCH: u64 = 1 << 48;

/// The most a zone's epoch may move past the one this gateway last knew for it and still be
/// believed as a peer's claim: each claim adds one, and claims come one at a time, minutes
/// apart at most, per zone. A larger jump is a foreign or hand-edited tag: it wins nothing.
pub const MAX_EPOCH_JUMP: u64 = 1000;

/// Whether `holder` may stand in a lease: an EC2 instance or ENI ID's shape (letters, digits,
/// `-`, at most 64). Anything else (a `/` above all) would make the tag unreadable.
pub fn valid_holder(holder: &str) -> bool {
    !holder.is_empty()
        && holder.len() <= 64
        && holder
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: u64,
    pub unix_ms: u64,
}

impl Lease {
    /// `None` for anything that is not exactly `<holder>/<epoch>/<unix-ms>` with an epoch up to
    /// [`MAX_EPOCH`]: a hand-edited or foreign tag is ignored (it only delays a lease-confirmed takeover, never causes one).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('/');
        let holder = parts.next()?;
        let epoch = parts.next()?.parse().ok().filter(|e| *e <= MAX_EPOCH)?;
        let unix_ms = parts.next()?.parse().ok()?;
        (parts.next().is_none() && valid_holder(holder)).then(|| Self {
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
///
/// A newer claim wins only when it is plausible: at most [`MAX_EPOCH_JUMP`] past this
/// gateway's own. A tag that jumps further was not written by a peer's claim; the carrier keeps
/// renewing its own epoch (and the tag stays for an operator to read).
pub fn renewal(me: &str, newest: Option<&Lease>, mine: Option<u64>) -> Renewal {
    match (newest, mine) {
        (Some(l), Some(e)) if l.holder != me && l.epoch > e && l.epoch - e <= MAX_EPOCH_JUMP => {
            Renewal::LetGo {
                holder: l.holder.clone(),
                epoch: l.epoch,
            }
        }
        (_, Some(e)) => Renewal::Renew(e),
        // A hand-over names its receiver as the holder: the receiver adopts that epoch.
        (Some(l), None) if l.holder == me => Renewal::Renew(l.epoch),
        (Some(l), None) => Renewal::Renew(next(l.epoch)),
        (None, None) => Renewal::Renew(1),
    }
}

/// One past `epoch`, never past [`MAX_EPOCH`]: no tag can make a claim overflow.
pub fn next(epoch: u64) -> u64 {
    epoch.saturating_add(1).min(MAX_EPOCH)
}

/// The epoch a claim (a takeover, a reclaim, a hand-over) is written with: larger than any
/// seen on the zone, so a reader that finds routes and lease disagreeing knows who claimed last.
pub fn claim_epoch(newest: Option<&Lease>) -> u64 {
    newest.map_or(1, |l| next(l.epoch))
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
            (
                "a foreign claim at the largest plausible jump: let go",
                Some(l("i-peer", 4 + MAX_EPOCH_JUMP)),
                Some(4),
                Renewal::LetGo {
                    holder: "i-peer".into(),
                    epoch: 4 + MAX_EPOCH_JUMP,
                },
            ),
            (
                "a foreign tag one past the largest jump: kept renewing the own epoch",
                Some(l("i-peer", 5 + MAX_EPOCH_JUMP)),
                Some(4),
                Renewal::Renew(4),
            ),
            (
                "a foreign tag at the largest epoch: kept renewing",
                Some(l("i-peer", MAX_EPOCH)),
                Some(4),
                Renewal::Renew(4),
            ),
            (
                "nothing remembered under a lease at the largest epoch: no overflow",
                Some(l("i-peer", MAX_EPOCH)),
                None,
                Renewal::Renew(MAX_EPOCH),
            ),
        ];
        for (name, newest, mine, want) in cases {
            assert_eq!(renewal("i-me", newest.as_ref(), mine), want, "{name}");
        }
        assert_eq!(claim_epoch(None), 1);
        assert_eq!(claim_epoch(Some(&l("i-peer", 9))), 10);
        assert_eq!(claim_epoch(Some(&l("i-peer", MAX_EPOCH))), MAX_EPOCH);
        assert_eq!(next(u64::MAX), MAX_EPOCH);
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let l = Lease::parse("i-0abc/7/1700000000000").unwrap();
        assert_eq!(l.holder, "i-0abc");
        assert_eq!(l.epoch, 7);
        assert_eq!(Lease::parse(&l.to_string()), Some(l));
        assert_eq!(
            Lease::parse("i-1/281474976710656/3").map(|l| l.epoch),
            Some(MAX_EPOCH)
        );
        for bad in [
            "",
            "i-1",
            "i-1/2",
            "i-1/x/3",
            "i-1/2/3/4",
            "/2/3",
            "i 1/2/3",
            "i-1/-2/3",
            // Epochs no claim could reach: u64::MAX (and past it) would overflow the next claim.
            "i-1/18446744073709551615/3",
            "i-1/18446744073709551616/3",
            "i-1/281474976710657/3",
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
