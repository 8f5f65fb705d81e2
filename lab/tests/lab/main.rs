//! The lab proves itself against the real parts: moto's server with the mends, the IMDS emulator
//! over real sockets inside instance namespaces, and packets through the kernel. Run as root.

mod asg;
mod awsprofile;
mod dataplane;
mod imds;
mod mends;
mod networkd;
mod scenario;
mod teardown;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gateway_lab::{Lab, Scenario, ScenarioOptions, in_netns};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the lab tests need root (network namespaces): run them with `make test` as root"
    );
}

/// A fresh lab with the standard VPC.
pub async fn lab_with(opts: ScenarioOptions) -> (Lab, Scenario) {
    require_root();
    let mut lab = Lab::start().expect("lab starts");
    let sc = lab.scenario(&opts).await.expect("scenario builds");
    (lab, sc)
}

pub fn no_hooks() -> ScenarioOptions {
    ScenarioOptions {
        hooks: false,
        ..ScenarioOptions::default()
    }
}

/// The SDK error code of a failed call, e.g. `RouteAlreadyExists`.
pub fn code<E, R>(err: &aws_sdk_ec2::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .map(str::to_string)
        .unwrap_or_else(|| format!("not a service error: {err:?}"))
}

/// Attach a zone's persistent ENI to an instance at device index 1.
pub async fn attach(lab: &Lab, eni: &str, instance: &str) {
    lab.attach_eni(eni, instance)
        .await
        .expect("AttachNetworkInterface");
}

/// ReplaceRoute of a table's 0.0.0.0/0 to `eni`, as a gateway's takeover does.
pub async fn point_default(lab: &Lab, rtb: &str, eni: &str) {
    lab.ec2()
        .replace_route()
        .route_table_id(rtb)
        .destination_cidr_block("0.0.0.0/0")
        .network_interface_id(eni)
        .send()
        .await
        .expect("ReplaceRoute");
}

/// A route table as DescribeRouteTables answers it.
pub async fn route_table(lab: &Lab, rtb: &str) -> aws_sdk_ec2::types::RouteTable {
    let out = lab
        .ec2()
        .describe_route_tables()
        .route_table_ids(rtb)
        .send()
        .await
        .expect("DescribeRouteTables");
    out.route_tables()
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no route table {rtb}"))
}

/// Does the lab's EC2 endpoint answer from inside `ns` (over the VPC)?
pub fn api_reachable(ns: &str) -> bool {
    in_netns(ns, || {
        let addr: SocketAddr = "198.51.100.2:80".parse().unwrap();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(700)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = s.write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: ec2\r\nConnection: close\r\n\r\n");
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
    })
    .unwrap()
}

/// The 0.0.0.0/0 route of a route table as moto reports it: (target ENI, state).
pub async fn default_route(lab: &Lab, rtb: &str) -> (Option<String>, String) {
    let route = route_table(lab, rtb)
        .await
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .expect("a default route")
        .clone();
    (
        route.network_interface_id().map(str::to_string),
        route
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
    )
}

/// The kernel's view of a route table's default route in the VPC router: "blackhole" or the ENI.
pub async fn kernel_default(lab: &Lab, rtb: &str) -> String {
    let routes = lab.kernel_routes(rtb).await.expect("kernel routes");
    let r = routes
        .iter()
        .find(|r| r.destination == "0.0.0.0/0")
        .expect("a kernel default route");
    if r.kind == "blackhole" {
        "blackhole".into()
    } else {
        r.eni.clone().unwrap_or_else(|| format!("{r:?}"))
    }
}
