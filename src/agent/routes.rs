//! The one route executor: every route write the agent makes (boot reclaim, takeover,
//! hand-back, hand-over, conditional routes, a manual failover, a drain) goes through
//! [`execute`], so each is made the same careful way:
//!
//! 1. re-read the tables (unless the caller has just read them) and drop every write whose
//!    route no longer reads as the decision expected: a route that changed since belongs to
//!    whoever changed it;
//! 2. write, tables that carry traffic (associated with a subnet) first, the rest after;
//! 3. the lease tag: before the writes for a boot claim (a peer that sees it lets go instead of
//!    repairing "drift"), alongside the second wave for a takeover (it informs; the carrying
//!    tables' traffic should not wait for it);
//! 4. confirm by reading again: success codes are not evidence enough; but a read that still
//!    shows a written route as it was before is a lagging read, read again with backoff, never
//!    a reason to write the same route again.
//!
//! It returns what was written and confirmed; callers record metrics, events and history.

use std::time::Duration;

use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use crate::cloud::{CloudError, Ec2, Priority, RouteTable, spend_as};
use std::collections::HashMap;

use crate::decide::route::{Op, RouteFact, RouteWrite, TableFact};

/// The first pause before reading again when a confirming read does not show a write yet.
const CONFIRM_FIRST_PAUSE: Duration = Duration::from_millis(100);
const CONFIRM_MAX_PAUSE: Duration = Duration::from_secs(1);
/// How long the confirmation waits for lagging reads to show the writes (AWS publishes no
/// bound on the lag; seconds are typical). Past it the caller decides again from a new read.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(6);

/// When the lease tag is written, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAt {
    /// Before any route write; a failure stops the batch (the claim must be visible first).
    Before,
    /// With the second wave of writes; a failure is logged, the routes go anyway.
    Alongside,
}

/// One batch of writes for one zone (or one conditional rule).
pub struct Batch<'a> {
    /// For the log: the zone or rule the writes are for.
    pub label: &'a str,
    /// The tables to re-read, confirm and tag: every table the writes touch (and, for a zone,
    /// all of its tables, so the lease covers them all).
    pub tables: &'a [&'a str],
    /// The lease tag value and when to write it.
    pub lease: Option<(&'a str, LeaseAt)>,
    /// The tables as the caller read them just now: no re-read before writing.
    pub fresh: Option<&'a [RouteTable]>,
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct Executed<'w> {
    /// Writes dropped because their route changed since the decision (with what it reads now).
    pub skipped: Vec<(&'w RouteWrite, String)>,
    /// Writes the API accepted.
    pub written: Vec<&'w RouteWrite>,
    pub failed: Vec<(&'w RouteWrite, CloudError)>,
    /// Of the attempted writes, how many the confirming read shows in effect.
    pub confirmed: usize,
    /// The confirming read, for the caller's view of the tables.
    pub after: Vec<RouteTable>,
    /// The lease tag write failed (alongside: logged, not fatal).
    pub lease_error: Option<CloudError>,
}

impl Executed<'_> {
    /// Every write that was still wanted is written and confirmed.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.confirmed == self.attempted()
    }

    pub fn attempted(&self) -> usize {
        self.written.len() + self.failed.len()
    }
}

/// Why a batch stopped before its confirming read.
#[derive(Debug)]
pub enum Stopped {
    /// The re-read before writing failed: nothing was written.
    Reread(CloudError),
    /// The lease tag (`LeaseAt::Before`) failed: nothing was written.
    Lease(CloudError),
    /// The confirming read failed: the writes went out, their effect is unknown.
    Confirm(CloudError),
}

impl Stopped {
    pub fn error(&self) -> &CloudError {
        match self {
            Self::Reread(e) | Self::Lease(e) | Self::Confirm(e) => e,
        }
    }

    pub fn into_error(self) -> CloudError {
        match self {
            Self::Reread(e) | Self::Lease(e) | Self::Confirm(e) => e,
        }
    }

    /// What the executor was doing, for the caller's log.
    pub fn doing(&self) -> &'static str {
        match self {
            Self::Reread(_) => "re-reading before a route write",
            Self::Lease(_) => "writing the lease tag before the route writes",
            Self::Confirm(_) => "confirming route writes",
        }
    }
}

pub async fn execute<'w, E: Ec2>(
    ec2: &E,
    batch: &Batch<'_>,
    writes: &'w [RouteWrite],
) -> Result<Executed<'w>, Stopped> {
    let reread;
    let fresh: &[RouteTable] = match batch.fresh {
        Some(f) => f,
        None => {
            reread = ec2
                .describe_route_tables(batch.tables)
                .await
                .map_err(Stopped::Reread)?;
            &reread
        }
    };
    let mut out = Executed::default();
    let mut wanted = Vec::new();
    // Each table converted once per read, not once per write (a zone may hold 100 writes).
    let facts = facts_by_id(fresh);
    for w in writes {
        let table = facts.get(w.table.as_str());
        let current = table.and_then(|t| t.route(&w.destination));
        if table.is_some() && w.expect.holds(current) {
            wanted.push(w);
        } else {
            let now = current.map_or("missing", RouteFact::reads).to_owned();
            info!(for_ = %batch.label, table = %w.table, destination = %w.destination, expected = %w.expect, now = %now, "route changed since the decision: left alone");
            out.skipped.push((w, now));
        }
    }
    let tag = |value| tag(ec2, batch.tables, value);
    if let Some((value, LeaseAt::Before)) = batch.lease
        && !wanted.is_empty()
    {
        tag(value).await.map_err(Stopped::Lease)?;
        info!(for_ = %batch.label, lease = %value, "zone claimed: lease written before the route writes");
    }
    let carrying = |w: &&RouteWrite| {
        fresh
            .iter()
            .find(|t| t.id == w.table)
            .is_some_and(|t| t.associated)
    };
    let (first, rest): (Vec<&RouteWrite>, Vec<&RouteWrite>) =
        wanted.iter().copied().partition(carrying);
    let mut results = futures::future::join_all(first.into_iter().map(|w| write(ec2, w))).await;
    let alongside = match batch.lease {
        Some((value, LeaseAt::Alongside)) if !wanted.is_empty() => Some(value),
        _ => None,
    };
    let (tagged, rest) = tokio::join!(
        async {
            match alongside {
                Some(value) => tag(value).await,
                None => Ok(()),
            }
        },
        futures::future::join_all(rest.into_iter().map(|w| write(ec2, w)))
    );
    if let Err(e) = tagged {
        warn!(for_ = %batch.label, error = %e, "lease tag not written; the routes are written anyway (the lease only informs)");
        out.lease_error = Some(e);
    }
    results.extend(rest);
    for (w, r) in results {
        match r {
            Ok(()) => {
                info!(for_ = %batch.label, table = %w.table, destination = %w.destination, target = %w.to.as_deref().unwrap_or("-"), was = %w.expect, reason = %w.reason, "{}", if w.op() == Op::Delete { "route removed" } else { "route switched" });
                out.written.push(w);
            }
            Err(e) => {
                warn!(for_ = %batch.label, table = %w.table, destination = %w.destination, error = %e, "route write failed; the next cycle decides again");
                out.failed.push((w, e));
            }
        }
    }
    if wanted.is_empty() {
        return Ok(out);
    }
    // A success code is evidence: while a read still shows a written route as it was, the
    // read is lagging (EC2's reads are eventually consistent), so it is read again with backoff
    // rather than written again. A route that reads as neither was changed by someone since.
    let written: Vec<&RouteWrite> = out.written.clone();
    let started = Instant::now();
    let mut pause = CONFIRM_FIRST_PAUSE;
    let after = loop {
        // The confirming read spends as a confirmation, whatever the writes' priority.
        let after = spend_as(Priority::Confirm, ec2.describe_route_tables(batch.tables))
            .await
            .map_err(Stopped::Confirm)?;
        let shown = facts_by_id(&after);
        let lagging = written
            .iter()
            .filter(|w| {
                let route = shown.get(w.table.as_str()).map(|t| t.route(&w.destination));
                route.is_some_and(|r| !w.done(r) && w.expect.holds(r))
            })
            .count();
        if lagging == 0 || started.elapsed() + pause > CONFIRM_PATIENCE {
            if lagging > 0 {
                warn!(for_ = %batch.label, lagging, waited_ms = started.elapsed().as_millis() as u64, "reads still show the routes as they were before the writes; leaving them to the next cycle");
            }
            break after;
        }
        sleep(pause).await;
        pause = (pause * 2).min(CONFIRM_MAX_PAUSE);
    };
    let shown = facts_by_id(&after);
    out.confirmed = wanted
        .iter()
        .filter(|w| {
            shown
                .get(w.table.as_str())
                .is_some_and(|t| w.done(t.route(&w.destination)))
        })
        .count();
    out.after = after;
    Ok(out)
}

async fn tag<E: Ec2>(ec2: &E, tables: &[&str], value: &str) -> Result<(), CloudError> {
    ec2.create_tags(tables, &[(crate::decide::lease::LEASE_TAG, value)])
        .await
}

fn facts_by_id(tables: &[RouteTable]) -> HashMap<&str, TableFact> {
    tables.iter().map(|t| (t.id.as_str(), t.fact())).collect()
}

async fn write<'w, E: Ec2>(ec2: &E, w: &'w RouteWrite) -> (&'w RouteWrite, Result<(), CloudError>) {
    let to = w.to.as_deref().unwrap_or_default();
    let r = match w.op() {
        Op::Create => ec2.create_route(&w.table, &w.destination, to).await,
        Op::Replace => ec2.replace_route(&w.table, &w.destination, to).await,
        Op::Delete => ec2.delete_route(&w.table, &w.destination).await,
    };
    (w, r)
}

/// Wall-clock milliseconds for the lease tag and the decision history, which operators read;
/// no decision uses it.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::RouteTarget;
    use crate::cloud::fake::{DEFAULT_ROUTE, FakeCloud, Fault};
    use crate::decide::route::Expect;

    fn batch<'a>(
        label: &'a str,
        tables: &'a [&'a str],
        lease: Option<(&'a str, LeaseAt)>,
    ) -> Batch<'a> {
        Batch {
            label,
            tables,
            lease,
            fresh: None,
        }
    }

    fn takeover(cloud: &FakeCloud, zone: &str, expect: Expect) -> RouteWrite {
        RouteWrite::point(
            &cloud.table_of(zone),
            DEFAULT_ROUTE,
            expect,
            &cloud.eni_of("a"),
            "takeover",
        )
    }

    #[tokio::test]
    async fn a_route_changed_since_the_decision_is_left_alone() {
        let cloud = FakeCloud::two_zones();
        let table = cloud.table_of("b");
        cloud.kill(&cloud.instance_of("b"));
        // Decided on a blackhole; a third party pointed the route elsewhere since.
        cloud.set_route_target(&table, DEFAULT_ROUTE, RouteTarget::Other("igw-1".into()));
        let writes = [takeover(&cloud, "b", Expect::Blackhole)];
        let tables = [table.as_str()];
        let batch = batch("b", &tables, Some(("i-a/2/0", LeaseAt::Alongside)));
        let done = execute(&cloud, &batch, &writes).await.unwrap();
        assert_eq!(done.skipped.len(), 1);
        assert_eq!(done.attempted(), 0);
        assert_eq!(cloud.count("ReplaceRoute", &table), 0);
        assert_eq!(
            cloud.count("CreateTags", &table),
            0,
            "no claim without a write"
        );
        assert_eq!(
            cloud.route_target(&table, DEFAULT_ROUTE),
            Some(RouteTarget::Other("igw-1".into()))
        );
    }

    #[tokio::test]
    async fn writes_are_confirmed_by_a_read_and_the_lease_goes_first_when_asked() {
        let cloud = FakeCloud::two_zones();
        let table = cloud.table_of("b");
        let writes = [takeover(&cloud, "b", Expect::Eni(cloud.eni_of("b")))];
        let tables = [table.as_str()];
        let batch = batch("b", &tables, Some(("i-a/2/0", LeaseAt::Before)));
        let done = execute(&cloud, &batch, &writes).await.unwrap();
        assert!(done.complete());
        assert_eq!(done.confirmed, 1);
        let ops: Vec<String> = cloud
            .calls()
            .into_iter()
            .map(|c| c.operation.to_string())
            .collect();
        assert_eq!(
            ops,
            [
                "DescribeRouteTables",
                "CreateTags",
                "ReplaceRoute",
                "DescribeRouteTables"
            ]
        );
    }

    /// The agent's own budget: renewals have spent CreateTags down to their reserve and
    /// drift reads DescribeRouteTables to theirs; a takeover still goes through at once, its
    /// lease tag and confirming read included, while a renewal is skipped.
    #[tokio::test(start_paused = true)]
    async fn a_takeover_is_not_delayed_by_a_budget_exhausted_for_renewals() {
        use crate::cloud::{Budget, Budgeted, Priority, spend_as};
        let cloud = FakeCloud::two_zones();
        let ec2 = Budgeted::new(cloud.clone(), Budget::new(0.25));
        let (a, b) = (cloud.table_of("a"), cloud.table_of("b"));
        let (ids, tags) = ([a.as_str()], [(crate::decide::lease::LEASE_TAG, "i-a/1/1")]);
        let renew = || spend_as(Priority::Renew, ec2.create_tags(&ids, &tags));
        while renew().await.is_ok() {}
        while spend_as(Priority::Drift, ec2.describe_route_tables(&[a.as_str()]))
            .await
            .is_ok()
        {}
        let started = Instant::now();
        cloud.kill(&cloud.instance_of("b"));
        let writes = [takeover(&cloud, "b", Expect::Blackhole)];
        let tables = [b.as_str()];
        let batch = batch("b", &tables, Some(("i-a/2/0", LeaseAt::Alongside)));
        let done = spend_as(Priority::Takeover, execute(&ec2, &batch, &writes))
            .await
            .unwrap();
        assert!(done.complete());
        assert!(done.lease_error.is_none());
        assert_eq!(cloud.count("CreateTags", &b), 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "nothing waited");
        assert!(renew().await.unwrap_err().is_deferred());
    }

    #[tokio::test]
    async fn a_failed_lease_before_the_writes_stops_the_batch() {
        let cloud = FakeCloud::two_zones();
        let table = cloud.table_of("b");
        cloud.fail_next("CreateTags", 1, Fault::Throttle);
        let writes = [takeover(&cloud, "b", Expect::Eni(cloud.eni_of("b")))];
        let tables = [table.as_str()];
        let batch = batch("b", &tables, Some(("i-a/2/0", LeaseAt::Before)));
        let stopped = execute(&cloud, &batch, &writes).await.unwrap_err();
        assert!(matches!(stopped, Stopped::Lease(_)));
        assert_eq!(cloud.count("ReplaceRoute", &table), 0);
    }

    /// The re-read is current; the confirming reads lag behind the write (`lag` reads, or all
    /// of them when `None`).
    async fn lagging_takeover(cloud: &FakeCloud, lag: Option<u32>) -> (usize, usize, bool) {
        let table = cloud.table_of("b");
        let writes = [takeover(cloud, "b", Expect::Eni(cloud.eni_of("b")))];
        let tables = [table.as_str()];
        let reread = cloud.describe_route_tables(&tables).await.unwrap();
        let batch = Batch {
            fresh: Some(&reread),
            ..batch("b", &tables, None)
        };
        match lag {
            Some(n) => cloud.lag_reads(n),
            None => cloud.freeze_reads(true),
        }
        let done = execute(cloud, &batch, &writes).await.unwrap();
        assert_eq!(done.attempted(), 1);
        (
            cloud.count("ReplaceRoute", &table),
            cloud.count("DescribeRouteTables", &table),
            done.complete(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_reads_do_not_show_yet_is_read_again_not_written_again() {
        let cloud = FakeCloud::two_zones();
        let (writes, reads, complete) = lagging_takeover(&cloud, Some(3)).await;
        assert_eq!(writes, 1);
        assert_eq!(
            reads,
            1 + 4,
            "the caller's read, three lagging, one that shows it"
        );
        assert!(complete);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_that_never_catch_up_leave_the_write_unconfirmed_after_the_patience() {
        let cloud = FakeCloud::two_zones();
        let started = Instant::now();
        let (writes, reads, complete) = lagging_takeover(&cloud, None).await;
        assert_eq!(writes, 1);
        assert!(!complete);
        assert!((4..=10).contains(&reads), "{reads} reads");
        let waited = started.elapsed();
        assert!(waited <= CONFIRM_PATIENCE, "{waited:?}");
    }

    #[tokio::test]
    async fn deletes_and_creates_are_confirmed_by_absence_and_presence() {
        let cloud = FakeCloud::two_zones();
        let table = cloud.table_of("a");
        let eni = cloud.eni_of("a");
        let writes = [
            RouteWrite::point(&table, "10.99.0.0/16", Expect::Missing, &eni, "conditional"),
            RouteWrite::delete(&table, DEFAULT_ROUTE, &eni, "gone"),
        ];
        let tables = [table.as_str()];
        let batch = batch("a", &tables, None);
        let done = execute(&cloud, &batch, &writes).await.unwrap();
        assert!(done.complete(), "{done:?}");
        assert_eq!(done.confirmed, 2);
        assert_eq!(cloud.route_target(&table, DEFAULT_ROUTE), None);
        assert_eq!(
            cloud.route_target(&table, "10.99.0.0/16"),
            Some(RouteTarget::Eni(eni))
        );
    }
}
