//! Peer failover in the lab (as root): real agents in every zone's instance, moto behind the
//! VPC, packets through the kernel. Each test kills, hangs or cuts off gateways and asserts what
//! a user sees: where the routes point, whether the client stream flows, how many writes.

mod support;

use support::*;

/// Every gateway's agent, ready.
struct Fleet {
    e: Env,
    agents: Vec<(String, Instance, Agent)>,
}

impl Fleet {
    async fn start(zones: &[&str], extra: &str) -> Self {
        let e = env(ScenarioOptions {
            zones: zones.iter().map(|z| (*z).to_owned()).collect(),
            ..ScenarioOptions::default()
        })
        .await;
        let mut agents = Vec::new();
        for z in zones {
            let inst = e.instance(z).await;
            let agent = e.start_agent(&inst, &format!("agent-{z}"), extra);
            agents.push(((*z).to_owned(), inst, agent));
        }
        for (_, _, agent) in &agents {
            agent.wait_ready().await;
        }
        Self { e, agents }
    }

    fn agent(&self, zone: &str) -> &Agent {
        &self.agents.iter().find(|(z, ..)| z == zone).unwrap().2
    }

    fn instance(&self, zone: &str) -> &Instance {
        &self.agents.iter().find(|(z, ..)| z == zone).unwrap().1
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|(z, _, a)| format!("--- agent {z} ---\n{}", a.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// With `GATEWAY_TEST_LOGS=1`, prints every agent's log (to read timings after a pass).
    fn show_logs(&self) {
        if std::env::var_os("GATEWAY_TEST_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
    }

    /// Waits until `zone`'s default route points at `target_zone`'s ENI and is active.
    async fn wait_route(&self, zone: &str, target_zone: &str, timeout: Duration) {
        let want = self.e.sc.zone(target_zone).eni_id.clone();
        let got = wait_for(timeout, &format!("{zone} routed via {target_zone}"), || {
            let want = want.clone();
            async move {
                let (eni, state) = self.e.route(zone, "0.0.0.0/0").await;
                (eni == want && state == "active").then_some(())
            }
        })
        .await;
        if got.is_err() {
            panic!(
                "{zone}'s route is {:?}, not via {target_zone} ({want})\n{}",
                self.e.route(zone, "0.0.0.0/0").await,
                self.logs()
            );
        }
    }

    /// The route writes (ReplaceRoute/CreateRoute) the API saw so far.
    async fn route_writes(&self) -> usize {
        self.e
            .api_calls()
            .await
            .iter()
            .filter(|c| *c == "ReplaceRoute" || *c == "CreateRoute")
            .count()
    }
}

async fn steady(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_peer_is_taken_over_and_handed_back_when_replaced() {
    let mut f = Fleet::start(&["a", "b"], "").await;
    steady(2).await;
    let stream = f.e.lab.stream_start("b", 100).await.unwrap();
    steady(1).await;
    let b = f.instance("b").instance_id.clone();
    f.e.lab.terminate(&b).await.unwrap();
    f.wait_route("b", "a", Duration::from_secs(10)).await;
    // The client's packets flow again, through a.
    steady(2).await;
    let mid = f.e.lab.stream_report(stream).await.unwrap();
    let log_a = f.agent("a").log();
    assert!(log_a.contains("takeover complete"), "{log_a}");
    assert!(
        mid.longest_gap_ms < 5000.0,
        "outage {} ms\n{}",
        mid.longest_gap_ms,
        f.logs()
    );

    // The ASG replaces b; its agent boots, reclaims, and a lets go.
    let new_b = wait_for(WAIT, "b's replacement", || async {
        f.e.lab
            .instance_in("b")
            .await
            .ok()
            .filter(|i| i.instance_id != b)
    })
    .await
    .unwrap();
    let agent = f.e.start_agent(&new_b, "agent-b2", "");
    agent.wait_ready().await;
    f.wait_route("b", "b", Duration::from_secs(5)).await;
    f.agents.push(("b2".into(), new_b, agent));
    let before = f.route_writes().await;
    steady(4).await;
    let after = f.e.lab.stream_stop(stream).await.unwrap();
    // Nobody fights over it afterwards.
    assert_eq!(f.route_writes().await, before, "{}", f.logs());
    f.wait_route("b", "b", Duration::from_secs(1)).await;
    let log_a = f.agent("a").log();
    assert!(log_a.contains("zone handed back"), "{log_a}");
    // Packets delivered through b again at the end of the stream.
    assert!(after.delivered > mid.delivered, "{after:?}");
    f.show_logs();
}
