"""The standard lab VPC, built through the real API (boto3 against labd's own endpoint).

Per zone i (a, b, c...):
  public subnet  10.0.i.0/24     gateways' primary interfaces and the zone's persistent ENI (.50);
                                 routed by the public table: 0.0.0.0/0 -> internet gateway
  private subnet 10.0.(100+i).0/24  one client (.10); its own route table, tagged
                                 gateway-agent:group / gateway-agent:zone, 0.0.0.0/0 -> the ENI
                                 (and every CIDR of `destinations` -> the ENI)
  `extra_tables` more private route tables, tagged and routed like that one but associated with
                                 no subnet: what a zone with many tables (one per team, per tier)
                                 gives the agent to move
  an Auto Scaling group <group>-<az> (min=max=desired=capacity) launching into the public subnet,
  with launch and termination lifecycle hooks (heartbeat timeout, default result configurable).
"""

import ipaddress

import boto3
import mends
from botocore.config import Config

GROUP_TAG = "gateway-agent:group"
ZONE_TAG = "gateway-agent:zone"
VPC_CIDR = "10.0.0.0/16"
# AWS's default quota is 200 route tables per VPC: a zone with more is no user's case.
MAX_EXTRA_TABLES = 199


def _tags(kind, **tags):
    return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


def _destinations(destinations, vpc_cidr=VPC_CIDR):
    """The managed CIDRs: 0.0.0.0/0 first, then `destinations`, checked like AWS would."""
    out = ["0.0.0.0/0"]
    vpc = ipaddress.ip_network(vpc_cidr)
    for d in destinations:
        try:
            net = ipaddress.ip_network(d)
        except ValueError as e:
            raise ValueError(f"destinations: {d!r} is not an IPv4 CIDR ({e}), e.g. \"10.200.0.0/16\"")
        if net.version != 4:
            raise ValueError(f"destinations: {d!r}: the lab's VPC router is IPv4 only")
        if str(net) in out:
            raise ValueError(f"destinations: {net} is listed twice (0.0.0.0/0 is always managed)")
        if net.overlaps(vpc):
            # The VPC router looks up the VPC CIDR in its main table before any route table.
            raise ValueError(f"destinations: {net} overlaps the VPC's {vpc}; use one outside it")
        out.append(str(net))
    return out


def build(lab, zones=("a", "b"), group="lab", capacity=1, hooks=True, heartbeat_timeout=300,
          default_result="ABANDON", instance_type="t3.micro", extra_tables=0, destinations=(),
          vpc_octet=0, extra=False):
    """`extra`: one more gateway group beside the scenario (labd's POST /lab/groups), in a VPC
    of its own, 10.<vpc_octet>.0.0/16 (1 to 99: distinct per group), with its own tags, ENIs,
    route tables and Auto Scaling groups: several groups in one account share its buckets."""
    if lab.scenario and not extra:
        raise ValueError("a scenario already exists: POST /lab/reset first")
    if extra and not lab.scenario:
        raise ValueError("no scenario: POST /lab/scenario first, then add groups")
    if not isinstance(vpc_octet, int) or not (1 <= vpc_octet <= 99 if extra else vpc_octet == 0):
        raise ValueError(f"vpc_octet: {vpc_octet!r}: 0 for the scenario, 1 to 99 for an extra group")
    vpc_cidr = f"10.{vpc_octet}.0.0/16"
    if not 1 <= len(zones) <= 6:
        raise ValueError("zones: 1 to 6 zone letters, e.g. [\"a\", \"b\"]")
    if not isinstance(extra_tables, int) or not 0 <= extra_tables <= MAX_EXTRA_TABLES:
        raise ValueError(f"extra_tables: {extra_tables!r}: a count from 0 to {MAX_EXTRA_TABLES}")
    if isinstance(destinations, str):
        raise ValueError("destinations: a list of CIDRs, e.g. [\"10.200.0.0/16\"]")
    managed = _destinations(destinations, vpc_cidr)
    kw = dict(endpoint_url=f"http://127.0.0.1:{lab.port}", region_name=lab.ec2().region_name,
              aws_access_key_id="lab", aws_secret_access_key="lab",
              config=Config(retries={"max_attempts": 1}))
    ec2 = boto3.client("ec2", **kw)
    asg = boto3.client("autoscaling", **kw)
    region = kw["region_name"]

    vpc = ec2.create_vpc(CidrBlock=vpc_cidr, TagSpecifications=_tags("vpc", Name=f"{group}-vpc"))["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    public_rt = ec2.create_route_table(VpcId=vpc, TagSpecifications=_tags("route-table", Name=f"{group}-public"))
    public_rt = public_rt["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=public_rt, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{group}-gateway",
        LaunchTemplateData={"ImageId": image, "InstanceType": instance_type},
    )["LaunchTemplate"]["LaunchTemplateId"]

    out = {"group": group, "vpc_id": vpc, "internet_gateway_id": igw, "public_route_table_id": public_rt,
           "launch_template_id": template, "zones": []}
    for i, letter in enumerate(zones):
        az = f"{region}{letter}"
        public = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{vpc_octet}.{i}.0/24", AvailabilityZone=az,
                                   TagSpecifications=_tags("subnet", Name=f"{group}-public-{letter}"))["Subnet"]
        private = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{vpc_octet}.{100 + i}.0/24", AvailabilityZone=az,
                                    TagSpecifications=_tags("subnet", Name=f"{group}-private-{letter}"))["Subnet"]
        ec2.associate_route_table(RouteTableId=public_rt, SubnetId=public["SubnetId"])
        private_tags = _tags("route-table", Name=f"{group}-private-{letter}", **{GROUP_TAG: group, ZONE_TAG: az})
        rt = ec2.create_route_table(VpcId=vpc, TagSpecifications=private_tags)["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=rt, SubnetId=private["SubnetId"])
        eni_ip = f"10.{vpc_octet}.{i}.50"
        mends.USED_IPS.add(eni_ip)
        eni = ec2.create_network_interface(
            SubnetId=public["SubnetId"], PrivateIpAddress=eni_ip, Description=f"{group} gateway {az}",
            TagSpecifications=_tags("network-interface", Name=f"{group}-gateway-{letter}",
                                    **{GROUP_TAG: group, ZONE_TAG: az}))["NetworkInterface"]
        tables = [rt]
        for _ in range(extra_tables):
            tables.append(ec2.create_route_table(VpcId=vpc, TagSpecifications=private_tags)["RouteTable"]["RouteTableId"])
        for table in tables:
            for cidr in managed:
                ec2.create_route(RouteTableId=table, DestinationCidrBlock=cidr,
                                 NetworkInterfaceId=eni["NetworkInterfaceId"])
        name = f"{group}-{az}"
        asg.create_auto_scaling_group(
            AutoScalingGroupName=name, MinSize=0, MaxSize=1, DesiredCapacity=0,
            LaunchTemplate={"LaunchTemplateId": template}, VPCZoneIdentifier=public["SubnetId"],
            Tags=[{"Key": GROUP_TAG, "Value": group, "PropagateAtLaunch": True},
                  {"Key": ZONE_TAG, "Value": az, "PropagateAtLaunch": True}],
        )
        if hooks:
            for hook, transition in (("launch", "autoscaling:EC2_INSTANCE_LAUNCHING"),
                                     ("terminate", "autoscaling:EC2_INSTANCE_TERMINATING")):
                asg.put_lifecycle_hook(AutoScalingGroupName=name, LifecycleHookName=f"gateway-{hook}",
                                       LifecycleTransition=transition, HeartbeatTimeout=int(heartbeat_timeout),
                                       DefaultResult=default_result)
        with lab.lock:
            client = lab.topo.add_client(private["SubnetId"], private["CidrBlock"])
        out["zones"].append({
            "name": letter, "az": az, "public_subnet_id": public["SubnetId"],
            "private_subnet_id": private["SubnetId"], "route_table_id": rt, "route_table_ids": tables,
            "eni_id": eni["NetworkInterfaceId"], "eni_ip": eni_ip, "eni_mac": eni["MacAddress"],
            "asg_name": name, "client_ns": client["ns"], "client_ip": client["ip"],
        })
    # Launch only once every zone exists, so the zones come up together.
    for z in out["zones"]:
        asg.update_auto_scaling_group(AutoScalingGroupName=z["asg_name"], MinSize=capacity,
                                      DesiredCapacity=capacity)
    return out
