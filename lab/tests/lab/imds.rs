//! The IMDS emulator speaks IMDSv2 as EC2 does, from inside the instance's namespace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use gateway_lab::in_netns;

use crate::{WAIT, attach, lab_with, no_hooks};

pub struct Reply {
    pub code: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request to 169.254.169.254:80 from inside `ns`.
pub fn request(ns: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    let raw = in_netns(ns, move || {
        let mut s = TcpStream::connect("169.254.169.254:80")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    })
    .expect("thread in the namespace")
    .expect("IMDS answers");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        code,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

pub fn token(ns: &str, ttl: &str) -> String {
    let r = request(
        ns,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
    );
    assert_eq!(r.code, 200, "token: {}", r.headers);
    r.body
}

/// GET with a fresh token: (status, body).
pub fn get(ns: &str, path: &str) -> (u16, String) {
    let t = token(ns, "60");
    let r = request(ns, "GET", path, &[("X-aws-ec2-metadata-token", &t)]);
    (r.code, r.body)
}

#[tokio::test(flavor = "multi_thread")]
async fn token_protocol_is_imdsv2_only() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let inst = lab.wait_instance(&sc.zone("a").az, WAIT).await.unwrap();
    let ns = inst.ns.as_deref().unwrap();

    assert_eq!(
        request(ns, "PUT", "/latest/api/token", &[]).code,
        400,
        "TTL header required"
    );
    for bad in ["0", "21601", "-1", "soon"] {
        let r = request(
            ns,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", bad)],
        );
        assert_eq!(r.code, 400, "TTL {bad}");
    }
    let r = request(
        ns,
        "PUT",
        "/latest/api/token",
        &[
            ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("X-Forwarded-For", "10.0.0.9"),
        ],
    );
    assert_eq!(r.code, 403, "a forwarded token request is refused");

    let r = request(
        ns,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
    );
    assert_eq!(r.code, 200);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 21600"),
        "TTL echoed: {}",
        r.headers
    );
    let t = r.body;

    let path = "/latest/meta-data/instance-id";
    assert_eq!(
        request(ns, "GET", path, &[]).code,
        401,
        "no IMDSv1 fallback"
    );
    assert_eq!(
        request(ns, "GET", path, &[("X-aws-ec2-metadata-token", "forged")]).code,
        401
    );
    let r = request(ns, "GET", path, &[("X-aws-ec2-metadata-token", &t)]);
    assert_eq!((r.code, r.body.as_str()), (200, inst.instance_id.as_str()));
    assert_eq!(
        request(
            ns,
            "GET",
            "/latest/meta-data/no-such-thing",
            &[("X-aws-ec2-metadata-token", &t)]
        )
        .code,
        404
    );

    let short = token(ns, "1");
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        request(ns, "GET", path, &[("X-aws-ec2-metadata-token", &short)]).code,
        401,
        "expired token"
    );
    assert_eq!(
        request(ns, "GET", path, &[("X-aws-ec2-metadata-token", &t)]).code,
        200,
        "the long one still works"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_follows_moto_and_test_events() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let ns = inst.ns.clone().unwrap();

    let (code, listing) = get(&ns, "/latest/meta-data/");
    assert_eq!(code, 200);
    for entry in [
        "instance-id",
        "placement/",
        "network/",
        "mac",
        "autoscaling/",
    ] {
        assert!(
            listing.lines().any(|l| l == entry),
            "{entry} in listing:\n{listing}"
        );
    }
    assert_eq!(
        get(&ns, "/latest/meta-data/placement/availability-zone"),
        (200, a.az.clone())
    );
    assert_eq!(
        get(&ns, "/latest/meta-data/placement/region"),
        (200, "us-east-1".into())
    );
    let (_, zone_id) = get(&ns, "/latest/meta-data/placement/availability-zone-id");
    assert!(zone_id.starts_with("use1-az"), "{zone_id}");
    assert_eq!(
        get(&ns, "/latest/meta-data/autoscaling/target-lifecycle-state"),
        (200, "InService".into())
    );

    // Attaching the persistent ENI makes it appear under its MAC, as on EC2.
    attach(&lab, &a.eni_id, &inst.instance_id).await;
    let (_, macs) = get(&ns, "/latest/meta-data/network/interfaces/macs/");
    assert!(
        macs.lines().any(|l| l == format!("{}/", a.eni_mac)),
        "{macs}"
    );
    let base = format!("/latest/meta-data/network/interfaces/macs/{}", a.eni_mac);
    assert_eq!(
        get(&ns, &format!("{base}/device-number")),
        (200, "1".into())
    );
    assert_eq!(
        get(&ns, &format!("{base}/interface-id")),
        (200, a.eni_id.clone())
    );
    assert_eq!(
        get(&ns, &format!("{base}/local-ipv4s")),
        (200, a.eni_ip.clone())
    );
    assert_eq!(
        get(&ns, &format!("{base}/subnet-id")),
        (200, a.public_subnet_id.clone())
    );
    assert_eq!(
        get(&ns, &format!("{base}/subnet-ipv4-cidr-block")),
        (200, "10.0.0.0/24".into())
    );
    assert_eq!(
        get(&ns, &format!("{base}/vpc-id")),
        (200, sc.vpc_id.clone())
    );

    // Interruption notices appear when a test sets them, and go when it clears them.
    assert_eq!(get(&ns, "/latest/meta-data/spot/instance-action").0, 404);
    let notice = r#"{"action": "terminate", "time": "2026-11-24T15:00:00Z"}"#;
    lab.imds_set(&inst.instance_id, "spot/instance-action", Some(notice))
        .await
        .unwrap();
    assert_eq!(
        get(&ns, "/latest/meta-data/spot/instance-action"),
        (200, notice.to_string())
    );
    lab.imds_set(
        &inst.instance_id,
        "events/recommendations/rebalance",
        Some(r#"{"noticeTime": "2026-11-24T14:58:00Z"}"#),
    )
    .await
    .unwrap();
    assert_eq!(
        get(&ns, "/latest/meta-data/events/recommendations/rebalance").0,
        200
    );
    lab.imds_set(&inst.instance_id, "spot/instance-action", None)
        .await
        .unwrap();
    assert_eq!(get(&ns, "/latest/meta-data/spot/instance-action").0, 404);
    assert_eq!(
        get(&ns, "/latest/meta-data/events/maintenance/scheduled"),
        (200, "[]".into())
    );

    // Fault modes for the agent's error paths.
    lab.imds_fault(&inst.instance_id, "500", 0).await.unwrap();
    assert_eq!(
        request(
            &ns,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")]
        )
        .code,
        500
    );
    lab.imds_fault(&inst.instance_id, "ok", 0).await.unwrap();
    assert_eq!(get(&ns, "/latest/meta-data/instance-id").0, 200);
}
