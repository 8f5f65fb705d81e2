//! What the loop remembers about one zone between cycles: its lease and carrier as last seen
//! (and since when, on this gateway's monotonic clock), recent changes of carrier, the epoch
//! this gateway claimed it with, why it last waited, the API's word on its gateway, and the
//! decision under way.

use std::time::Duration;

use tokio::time::Instant;

use crate::decide::failover::WaitKind;

#[derive(Debug, Default, Clone)]
pub struct ZoneState {
    /// The lease tags of its tables, and when that value was first seen.
    pub lease: Option<(String, Instant)>,
    /// The ENI its routes point at (or "blackhole"), and since when.
    pub carrier: Option<(String, Instant)>,
    /// When its carrier changed, within the damping window.
    pub changes: Vec<Instant>,
    /// Another carrier some read showed, and when reads began to agree on it: a move until
    /// reads settle on it, a lagging or early read if one shows the old carrier again.
    pub pending: Option<(String, Instant)>,
    /// The epoch this gateway claimed it with.
    pub epoch: Option<u64>,
    /// The highest epoch seen on the zone's tables or written here: a claim goes above it even
    /// when a lagging read shows an older lease.
    pub epoch_high: u64,
    /// A newer claim this gateway gave the zone up to (logged once).
    pub let_go: Option<u64>,
    /// The last wait, logged when it changes, not each cycle.
    pub wait: Option<(WaitKind, String)>,
    /// For a peer zone: what the API said about its gateway, and when it was asked.
    pub api_says: Option<(Option<String>, Instant)>,
    /// When the decision under way was first made (until its writes are confirmed).
    pub deciding: Option<Instant>,
    /// This gateway's witness on the zone's first table, written while it judges a suspected
    /// carrier's lease and not yet seen in a read: its value, and when it was sent.
    pub witness_sent: Option<(String, Instant)>,
    /// When the newest witness a read has shown was sent: that read (and every later one)
    /// covers every write to the table made before then.
    pub witnessed: Option<Instant>,
    /// Since when reads have shown the zone's routes blackhole without a break. Not `carrier`
    /// or `pending`: a settled carrier outlives a read that disagrees, this ends with it.
    pub blackhole_since: Option<Instant>,
}

/// How long reads must agree on a new carrier, without one showing the old carrier again,
/// before the move counts: EC2's reads lag and need not move forward, so a read behind the
/// others is no move (and two flickers are no doubled hold-down, no false hand-back).
pub const SETTLE: Duration = Duration::from_secs(2);

/// A change of carrier seen in a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub from: String,
    pub held_for: Duration,
}

impl ZoneState {
    /// Records the lease value just read; its age restarts only when it changes.
    pub fn see_lease(&mut self, value: String, now: Instant) {
        if self.lease.as_ref().is_none_or(|(old, _)| *old != value) {
            self.lease = Some((value, now));
        }
    }

    /// Records whether the read just made shows the zone's routes blackhole.
    pub fn see_blackhole(&mut self, blackhole: bool, now: Instant) {
        if !blackhole {
            self.blackhole_since = None;
        } else if self.blackhole_since.is_none() {
            self.blackhole_since = Some(now);
        }
    }

    /// How long reads have shown the zone's routes blackhole (zero if the last did not).
    pub fn blackhole_for(&self, now: Instant) -> Duration {
        self.blackhole_since
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    /// Records the carrier just read; a change is counted (within `window`) and returned once
    /// reads have agreed on it for [`SETTLE`], dated from the first of them.
    pub fn see_carrier(
        &mut self,
        carrier: String,
        now: Instant,
        window: Duration,
    ) -> Option<Moved> {
        let (old, since) = match &self.carrier {
            None => {
                self.carrier = Some((carrier, now));
                return None;
            }
            Some((old, _)) if *old == carrier => {
                self.pending = None;
                return None;
            }
            Some((old, since)) => (old.clone(), *since),
        };
        let first = match &self.pending {
            Some((p, first)) if *p == carrier => *first,
            _ => {
                self.pending = Some((carrier, now));
                return None;
            }
        };
        if now.saturating_duration_since(first) < SETTLE {
            return None;
        }
        self.pending = None;
        self.changes.push(first);
        self.changes
            .retain(|at| now.saturating_duration_since(*at) < window);
        self.carrier = Some((carrier, first));
        Some(Moved {
            from: old,
            held_for: first.saturating_duration_since(since),
        })
    }

    /// Since when reads show the zone on `eni` (pending or settled), if they do.
    pub fn on_since(&self, eni: &str) -> Option<Instant> {
        match (&self.pending, &self.carrier) {
            (Some((c, at)), _) if c == eni => Some(*at),
            (_, Some((c, at))) if c == eni => Some(*at),
            _ => None,
        }
    }

    /// This gateway's own write moved the zone to `carrier` (confirmed): a move at once.
    pub fn moved_by_own_write(&mut self, carrier: String, now: Instant, window: Duration) {
        self.pending = None;
        if self.carrier.as_ref().is_some_and(|(c, _)| *c == carrier) {
            return;
        }
        self.changes.push(now);
        self.changes
            .retain(|at| now.saturating_duration_since(*at) < window);
        self.carrier = Some((carrier, now));
    }

    pub fn lease_unchanged_for(&self, now: Instant) -> Duration {
        self.lease
            .as_ref()
            .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at))
    }

    /// How long the lease is known (not merely seen) to have gone unrenewed, judged from
    /// `suspected` (when this gateway began suspecting the carrier) or from when the current
    /// value was first seen, whichever is later, up to the newest witness a read has shown.
    /// Zero until a witness sent after that start has been read back.
    pub fn lease_unrenewed_for(&self, suspected: Instant) -> Duration {
        let from = self
            .lease
            .as_ref()
            .map_or(suspected, |(_, seen)| (*seen).max(suspected));
        self.witnessed
            .map_or(Duration::ZERO, |w| w.saturating_duration_since(from))
    }

    /// When the judgement of a carrier suspected since `suspected` needs a witness: `lease_ttl`
    /// after the later of the suspicion and the current lease value's first sighting.
    pub fn lease_due(&self, suspected: Instant, ttl: Duration) -> Instant {
        let from = self
            .lease
            .as_ref()
            .map_or(suspected, |(_, seen)| (*seen).max(suspected));
        from + ttl
    }

    pub fn recent_changes(&self, now: Instant, window: Duration) -> u32 {
        let n = self
            .changes
            .iter()
            .filter(|at| now.saturating_duration_since(**at) < window)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Since the last change of carrier, or since reads began to show another one (not yet
    /// settled): a gateway that wakes to find its zone elsewhere waits its hold-down from then.
    pub fn since_last_change(&self, now: Instant) -> Option<Duration> {
        let last = self.changes.last().copied();
        let pending = self.pending.as_ref().map(|(_, at)| *at);
        last.into_iter()
            .chain(pending)
            .max()
            .map(|at| now.saturating_duration_since(at))
    }

    /// Records this cycle's wait (or none); `true` when it differs from the last one.
    pub fn set_wait(&mut self, wait: Option<(WaitKind, String)>) -> bool {
        let changed = wait.as_ref().map(|(_, r)| r) != self.wait.as_ref().map(|(_, r)| r);
        self.wait = wait;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn carrier_changes_are_counted_within_the_window_and_lease_age_restarts_on_change() {
        let window = Duration::from_secs(60);
        let mut z = ZoneState::default();
        let t0 = Instant::now();
        assert_eq!(z.see_carrier("eni-a".into(), t0, window), None);
        z.see_lease("i-a/1/0".into(), t0);
        tokio::time::advance(Duration::from_secs(10)).await;
        let t1 = Instant::now();
        z.see_lease("i-a/1/0".into(), t1);
        assert_eq!(z.lease_unchanged_for(t1), Duration::from_secs(10));
        // A move counts once reads agree on it for SETTLE, dated from the first of them.
        assert_eq!(z.see_carrier("eni-b".into(), t1, window), None);
        let moved = z.see_carrier("eni-b".into(), t1 + SETTLE, window).unwrap();
        assert_eq!(moved.from, "eni-a");
        assert_eq!(moved.held_for, Duration::from_secs(10));
        assert_eq!(z.see_carrier("eni-b".into(), t1 + SETTLE, window), None);
        assert_eq!(z.recent_changes(t1 + SETTLE, window), 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        let t2 = Instant::now();
        assert_eq!(z.recent_changes(t2, window), 0);
        z.see_lease("i-b/2/0".into(), t2);
        assert_eq!(z.lease_unchanged_for(t2), Duration::ZERO);
        assert!(z.set_wait(Some((WaitKind::HoldDown, "x".into()))));
        assert!(!z.set_wait(Some((WaitKind::HoldDown, "x".into()))));
        assert!(z.set_wait(None));
    }

    #[tokio::test(start_paused = true)]
    async fn reads_that_flicker_between_two_carriers_count_one_move_not_three() {
        let window = Duration::from_secs(60);
        let mut z = ZoneState::default();
        let t0 = Instant::now();
        z.see_carrier("eni-b".into(), t0, window);
        // b's zone moved to a; for 2 s reads answer from before or after the write at random.
        let mut moves = Vec::new();
        for (i, c) in [
            "eni-a", "eni-b", "eni-a", "eni-b", "eni-b", "eni-a", "eni-a",
        ]
        .iter()
        .enumerate()
        {
            let at = t0 + Duration::from_millis(250 * (i as u64 + 1));
            moves.extend(z.see_carrier((*c).into(), at, window));
        }
        assert!(moves.is_empty(), "{moves:?}");
        // Reads settle on a: one move, no move back, one change for the damping.
        let mut at = t0 + Duration::from_secs(2);
        for _ in 0..8 {
            at += Duration::from_millis(250);
            moves.extend(z.see_carrier("eni-a".into(), at, window));
        }
        // One late read of the old carrier is no move back.
        moves.extend(z.see_carrier("eni-b".into(), at, window));
        moves.extend(z.see_carrier("eni-a".into(), at + Duration::from_millis(250), window));
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].from, "eni-b");
        assert_eq!(z.recent_changes(at, window), 1);
    }
}
