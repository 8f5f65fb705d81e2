//! `gwlab bench`: the lab's own figures, so later measurements of the agent can be read against
//! what the lab itself costs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gateway_lab::{Lab, ScenarioOptions, in_netns, percentile};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn line(name: &str, samples: &[f64]) {
    println!(
        "{name:<44} n={:<5} p50={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        samples.len(),
        percentile(samples, 50.0),
        percentile(samples, 99.0),
        percentile(samples, 100.0)
    );
}

/// One raw HTTP/1.1 request; returns the status code.
fn http(addr: &str, req: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

pub async fn run(calls: usize) -> Result<(), String> {
    let s = |e: gateway_lab::LabError| e.to_string();
    let mut lab = Lab::start().map_err(s)?;
    let sc = lab
        .scenario(&ScenarioOptions {
            hooks: false,
            ..ScenarioOptions::default()
        })
        .await
        .map_err(s)?;
    let ec2 = lab.ec2();
    let (za, zb) = (sc.zone("a").clone(), sc.zone("b").clone());
    for z in [&za, &zb] {
        let inst = lab
            .wait_instance(&z.az, Duration::from_secs(10))
            .await
            .map_err(s)?;
        ec2.attach_network_interface()
            .network_interface_id(&z.eni_id)
            .instance_id(&inst.instance_id)
            .device_index(1)
            .send()
            .await
            .map_err(|e| format!("AttachNetworkInterface: {e:?}"))?;
    }

    let mut describe = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        ec2.describe_route_tables()
            .route_table_ids(&za.route_table_id)
            .send()
            .await
            .map_err(|e| format!("DescribeRouteTables: {e:?}"))?;
        describe.push(ms(t.elapsed()));
    }

    let before = lab.stats().await.map_err(s)?["mirror_lag_ms"]
        .as_array()
        .map_or(0, Vec::len);
    let mut replace = Vec::with_capacity(calls);
    let mut matched = 0usize;
    for i in 0..calls {
        let target = if i % 2 == 0 { &zb.eni_id } else { &za.eni_id };
        let t = Instant::now();
        ec2.replace_route()
            .route_table_id(&za.route_table_id)
            .destination_cidr_block("0.0.0.0/0")
            .network_interface_id(target)
            .send()
            .await
            .map_err(|e| format!("ReplaceRoute: {e:?}"))?;
        replace.push(ms(t.elapsed()));
        // The mirror is applied before the API answers: the kernel must already agree.
        let k = lab.kernel_routes(&za.route_table_id).await.map_err(s)?;
        if k.iter()
            .any(|r| r.destination == "0.0.0.0/0" && r.eni.as_deref() == Some(target.as_str()))
        {
            matched += 1;
        }
    }
    let stats = lab.stats().await.map_err(s)?;
    let lag: Vec<f64> = stats["mirror_lag_ms"]
        .as_array()
        .map(|a| a[before..].iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();

    let inst = lab.instance_in(&za.az).await.map_err(s)?;
    let ns = inst.ns.clone().unwrap_or_default();
    let n = calls;
    let imds = in_netns(&ns, move || {
        let mut out = Vec::with_capacity(n);
        let (_, token) = http(
            "169.254.169.254:80",
            "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n",
        )?;
        for _ in 0..n {
            let t = Instant::now();
            let (code, _) = http(
                "169.254.169.254:80",
                &format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"),
            )?;
            if code == 200 {
                out.push(ms(t.elapsed()));
            }
        }
        Ok::<_, std::io::Error>(out)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("IMDS: {e}"))?;

    println!(
        "gateway-lab bench ({calls} calls each; host -> 127.0.0.1, instance -> 169.254.169.254)"
    );
    line("moto DescribeRouteTables (SDK round trip)", &describe);
    line("moto ReplaceRoute incl. mirror (SDK)", &replace);
    line("route-mirror lag (request in -> kernel set)", &lag);
    println!("kernel already matched when ReplaceRoute answered: {matched}/{calls}");
    line("IMDS GET instance-id (in the instance)", &imds);
    Ok(())
}
