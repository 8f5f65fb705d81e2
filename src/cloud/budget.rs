//! The agent's own API budget: one token bucket per EC2 action (and one for Auto Scaling), a
//! share of the account's, spent in priority order. Pure and clock-injected: [`Buckets::ask`]
//! takes the time, so tests run it on tokio's paused clock; [`super::budgeted`] is the shell
//! that sleeps, logs and counts.
//!
//! EC2 throttles each API action per account and region with a token bucket, and every tool of
//! the account (every gateway of every group, Terraform, the ASG's own tagging) spends the same
//! buckets. The agent keeps a bucket of its own per action, `aws.api_share` times AWS's
//! documented size and refill rate, and spends it in the order of [`Priority`]:
//!
//! 1. **takeover writes** (a dead peer's routes, a conditional route whose target failed, and
//!    the lease tag written with them): they may wait for a token but never behind anything
//!    else, and they may spend the whole documented bucket (borrowing past the share), so the
//!    agent's own budget never delays a takeover beyond what AWS itself would;
//! 2. **hand-backs** (a recovered owner reclaiming, a drain handing over, boot): wait for a
//!    token within the share;
//! 3. **confirmations** (the reads that confirm a death or a write, reads while something is
//!    moving, a lease witness): wait, keeping a small reserve for the two above;
//! 4. **renewals** of the lease and 5. **drift reads** at steady state: spend only while the
//!    bucket is above a reserve kept for the priorities above them, and otherwise are *skipped*
//!    (the caller tries again next cycle), never queued: a throttled renewal never blocks a
//!    takeover write.
//!
//! Reserves are fractions of the bucket above its last token, so a full bucket admits every
//! priority however small the share.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Why a call is made, most urgent first (the derived order: `Takeover < HandBack < ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Takeover,
    HandBack,
    Confirm,
    Renew,
    Drift,
}

impl Priority {
    pub const ALL: [Priority; 5] = [
        Self::Takeover,
        Self::HandBack,
        Self::Confirm,
        Self::Renew,
        Self::Drift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Takeover => "takeover",
            Self::HandBack => "hand-back",
            Self::Confirm => "confirmation",
            Self::Renew => "renewal",
            Self::Drift => "drift-read",
        }
    }

    /// Whether a call of this priority waits for a token (`true`) or is skipped (`false`).
    pub fn waits(self) -> bool {
        self <= Self::Confirm
    }

    /// The fraction of the bucket (above its last token) this priority leaves to the ones
    /// above it. Renewals and drift reads leave half and more: the write that matters most
    /// comes right after a renewal (a takeover follows suspicion), and a skipped drift read
    /// costs nothing but a little latency on a foreign change.
    fn reserve(self) -> f64 {
        match self {
            Self::Takeover | Self::HandBack => 0.0,
            Self::Confirm => 0.1,
            Self::Renew => 0.5,
            Self::Drift => 0.6,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bucket's size and refill rate, as AWS documents it for a whole account and region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_second: f64,
}

impl Rate {
    const fn new(burst: f64, per_second: f64) -> Self {
        Self { burst, per_second }
    }
}

// EC2's request token buckets, per account and region: EC2 developer guide, "Request throttling
// for the Amazon EC2 API" (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html),
// "Request token bucket sizes and refill rates", as read 2026-11-30 (burst / refill per second):
// CreateTags 100/10; ModifyNetworkInterfaceAttribute 100/5 (both listed as uncategorized actions);
// other mutating actions (ReplaceRoute, CreateRoute, DeleteRoute, Attach/DetachNetworkInterface)
// 50/5; non-mutating actions (filtered or paginated Describe*) 100/20; unfiltered and unpaginated
// non-mutating actions 50/10. The page does not say whether a list of IDs counts as a filter, so
// the Describe* calls the agent makes by ID get the smaller bucket.
/// `CreateTags` (the lease and its witnesses).
pub const CREATE_TAGS: Rate = Rate::new(100.0, 10.0);
/// `ModifyNetworkInterfaceAttribute` (source/dest check, at boot).
pub const MODIFY_ENI: Rate = Rate::new(100.0, 5.0);
/// Mutating actions without a bucket of their own: the route writes, attach and detach.
pub const MUTATING: Rate = Rate::new(50.0, 5.0);
/// Filtered or paginated Describe* (`DescribeRouteTables` by tag or ID list).
pub const DESCRIBE: Rate = Rate::new(100.0, 20.0);
/// Describe* the agent makes by ID (`DescribeInstances`, `DescribeNetworkInterfaces`).
pub const DESCRIBE_BY_ID: Rate = Rate::new(50.0, 10.0);
/// Auto Scaling throttles "based on a shared API bucket" per account and region (API
/// reference, Welcome) and publishes no size: assumed 50 / 10 per second, shared by every
/// action (the lab's `aws` profile assumes the same).
pub const AUTOSCALING: Rate = Rate::new(50.0, 10.0);

/// The account-wide bucket `action` spends (`service` is `ec2` or `autoscaling`), and the key
/// of the agent's own bucket for it (one per action; one for all of Auto Scaling).
pub fn documented(service: &str, action: &'static str) -> (&'static str, Rate) {
    if service == "autoscaling" {
        return ("autoscaling:*", AUTOSCALING);
    }
    let rate = match action {
        "CreateTags" => CREATE_TAGS,
        "ModifyNetworkInterfaceAttribute" => MODIFY_ENI,
        "DescribeInstances" | "DescribeNetworkInterfaces" => DESCRIBE_BY_ID,
        a if a.starts_with("Describe") => DESCRIBE,
        _ => MUTATING,
    };
    (action, rate)
}

/// What a call may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A token was taken: call now.
    Go,
    /// Ask again after this long (priorities that wait).
    Wait(Duration),
    /// Not now: skip the call and try next cycle (renewals, drift reads).
    Skip,
}

#[derive(Debug, Clone)]
struct Bucket {
    /// The agent's size: the documented burst times the share (at least one token).
    capacity: f64,
    per_second: f64,
    /// How far a takeover may borrow below zero: the rest of the documented bucket.
    overdraft: f64,
    /// May be negative after a takeover borrowed.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: Rate, share: f64, now: Instant) -> Self {
        let capacity = (rate.burst * share).max(1.0);
        Self {
            capacity,
            per_second: (rate.per_second * share).max(f64::MIN_POSITIVE),
            overdraft: (rate.burst - capacity).max(0.0),
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// The fewest tokens a call of `p` must leave behind.
    fn floor(&self, p: Priority) -> f64 {
        match p {
            Priority::Takeover => -self.overdraft,
            _ => p.reserve() * (self.capacity - 1.0),
        }
    }
}

/// The agent's buckets, made on first use of each action.
#[derive(Debug, Clone)]
pub struct Buckets {
    share: f64,
    buckets: HashMap<&'static str, Bucket>,
}

impl Buckets {
    /// `share` (0 < share <= 1, checked by the config) of every documented bucket.
    pub fn new(share: f64) -> Self {
        Self {
            share,
            buckets: HashMap::new(),
        }
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// Whether a call of `action` for `p` may go now; takes its token when it may.
    pub fn ask(
        &mut self,
        service: &str,
        action: &'static str,
        p: Priority,
        now: Instant,
    ) -> Verdict {
        let (key, rate) = documented(service, action);
        let share = self.share;
        let b = self
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(rate, share, now));
        b.refill(now);
        let floor = b.floor(p);
        if b.tokens - 1.0 >= floor {
            b.tokens -= 1.0;
            Verdict::Go
        } else if p.waits() {
            let missing = floor + 1.0 - b.tokens;
            // Rounded up by a millisecond, so the token is there when the caller asks again.
            let wait = Duration::from_secs_f64(missing / b.per_second);
            Verdict::Wait(wait + Duration::from_millis(1))
        } else {
            Verdict::Skip
        }
    }

    /// The tokens `service`'s `action` bucket holds at `now` (for tests and `status`).
    pub fn tokens(&mut self, service: &str, action: &'static str, now: Instant) -> f64 {
        let (key, rate) = documented(service, action);
        let share = self.share;
        let b = self
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(rate, share, now));
        b.refill(now);
        b.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;
    use Verdict::*;

    const S: Duration = Duration::from_secs(1);

    /// Spends `action` at `p` until it no longer says Go; answers how many went.
    fn drain(b: &mut Buckets, action: &'static str, p: Priority, now: Instant) -> usize {
        let mut n = 0;
        while b.ask("ec2", action, p, now) == Go {
            n += 1;
            assert!(n < 1000, "{action} never runs dry for {p}");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn sizes_are_the_documented_ones_times_the_share() {
        let now = Instant::now();
        let mut b = Buckets::new(0.25);
        assert_eq!(b.tokens("ec2", "CreateTags", now), 25.0);
        assert_eq!(b.tokens("ec2", "ReplaceRoute", now), 12.5);
        assert_eq!(b.tokens("ec2", "DescribeRouteTables", now), 25.0);
        assert_eq!(b.tokens("ec2", "DescribeInstances", now), 12.5);
        assert_eq!(b.tokens("autoscaling", "SetInstanceHealth", now), 12.5);
        // One Auto Scaling bucket for every action.
        assert_eq!(
            b.ask("autoscaling", "DescribeAutoScalingInstances", Drift, now),
            Go
        );
        assert_eq!(b.tokens("autoscaling", "SetInstanceHealth", now), 11.5);
        // Refill at the share of the documented rate: CreateTags 10/s * 0.25.
        drain(&mut b, "CreateTags", HandBack, now);
        assert!(b.tokens("ec2", "CreateTags", now) < 1.0);
        let before = b.tokens("ec2", "CreateTags", now);
        assert_eq!(b.tokens("ec2", "CreateTags", now + 2 * S), before + 5.0);
    }

    /// How many calls of each priority a full bucket admits before it stops them, and what it
    /// does then: the higher the priority, the deeper it may spend.
    #[tokio::test(start_paused = true)]
    async fn each_priority_spends_down_to_its_reserve_only() {
        // (priority, calls a full CreateTags bucket of share 0.25 (25 tokens) admits, then)
        let table = [
            (Takeover, 100, Wait(Duration::from_millis(400))),
            (HandBack, 25, Wait(Duration::from_millis(400))),
            (Confirm, 22, Wait(Duration::from_millis(400))),
            (Renew, 13, Skip),
            (Drift, 10, Skip),
        ];
        for (p, admitted, then) in table {
            let now = Instant::now();
            let mut b = Buckets::new(0.25);
            assert_eq!(drain(&mut b, "CreateTags", p, now), admitted, "{p}");
            match (b.ask("ec2", "CreateTags", p, now), then) {
                (Wait(got), Wait(want)) => assert!(
                    got <= want + Duration::from_millis(1) && got > Duration::ZERO,
                    "{p}: {got:?}"
                ),
                (got, want) => assert_eq!(got, want, "{p}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_is_skipped_while_a_takeover_write_goes_at_once() {
        let now = Instant::now();
        let mut b = Buckets::new(0.25);
        // Renewals (and a witness) have spent the bucket down to the renewals' reserve.
        drain(&mut b, "CreateTags", Renew, now);
        assert_eq!(b.ask("ec2", "CreateTags", Renew, now), Skip);
        // The takeover's lease tag and its route writes go now, without waiting.
        assert_eq!(b.ask("ec2", "CreateTags", Takeover, now), Go);
        for _ in 0..50 {
            assert_eq!(b.ask("ec2", "ReplaceRoute", Takeover, now), Go);
        }
        // ... and a hand-back's route write waits until the takeover's debt is paid back.
        assert!(matches!(
            b.ask("ec2", "ReplaceRoute", HandBack, now + S),
            Wait(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn drift_reads_are_skipped_before_confirmations_wait() {
        let now = Instant::now();
        let mut b = Buckets::new(0.25);
        // Confirmations (reads while something moves) spend the read bucket...
        drain(&mut b, "DescribeRouteTables", Confirm, now);
        // ... a drift read is skipped, never queued, while a confirmation waits its turn.
        assert_eq!(b.ask("ec2", "DescribeRouteTables", Drift, now), Skip);
        let Wait(wait) = b.ask("ec2", "DescribeRouteTables", Confirm, now) else {
            panic!("a confirmation waits");
        };
        assert_eq!(b.ask("ec2", "DescribeRouteTables", Confirm, now + wait), Go);
        // Once the bucket is back above the drift reserve, drift reads go again.
        assert_eq!(b.ask("ec2", "DescribeRouteTables", Drift, now + 5 * S), Go);
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_waits_only_at_the_documented_limit() {
        let now = Instant::now();
        let mut b = Buckets::new(0.25);
        // The whole documented ReplaceRoute bucket (50) goes at once...
        assert_eq!(drain(&mut b, "ReplaceRoute", Takeover, now), 50);
        // ... the 51st waits for AWS's own refill (5/s * 0.25 = 1.25/s: 0.8 s), and a
        // hand-back waits behind it until the debt is paid.
        assert_eq!(
            b.ask("ec2", "ReplaceRoute", Takeover, now),
            Wait(Duration::from_millis(801))
        );
        let Wait(hand_back) = b.ask("ec2", "ReplaceRoute", HandBack, now) else {
            panic!("a hand-back waits");
        };
        assert!(hand_back > 30 * S, "{hand_back:?}");
        assert_eq!(
            b.ask(
                "ec2",
                "ReplaceRoute",
                Takeover,
                now + Duration::from_millis(801)
            ),
            Go
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_admits_every_priority_however_small_the_share() {
        for share in [0.001, 0.01, 0.1, 1.0] {
            for p in Priority::ALL {
                let now = Instant::now();
                let mut b = Buckets::new(share);
                assert_eq!(b.ask("ec2", "ReplaceRoute", p, now), Go, "{share} {p}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_are_per_action() {
        let now = Instant::now();
        let mut b = Buckets::new(0.25);
        drain(&mut b, "CreateTags", HandBack, now);
        assert_eq!(b.ask("ec2", "CreateTags", Drift, now), Skip);
        assert_eq!(b.ask("ec2", "DescribeRouteTables", Drift, now), Go);
        assert_eq!(b.ask("ec2", "ReplaceRoute", Renew, now), Go);
    }
}
