"""The lab's profile: how much like AWS the lab behaves.

`GATEWAY_LAB_PROFILE=fast` (the default) is the kind lab the tests were written in: calls answer
in milliseconds, one at a time, every read sees the last write, nothing is throttled unless a
test injects it, ENIs attach at once and a terminated instance is gone at once.

`GATEWAY_LAB_PROFILE=aws` turns on every mechanism below with the figures AWS documents (or, where
AWS publishes none, the stated assumption). Each parameter can be overridden on its own, in
either profile, with `GATEWAY_LAB_AWS_<NAME>` (e.g. `GATEWAY_LAB_AWS_ATTACH_S=2..5`); a range
`a..b` is drawn uniformly per event, a single number is fixed. `GATEWAY_LAB_SEED` makes the
draws repeatable. The README's "Lab profiles" table lists every parameter with its source; keep
the two in step (`python3 lab/py/profile.py --markdown` prints it).
"""

import os
import random
import sys

PROFILES = ("fast", "aws")
ENV_PREFIX = "GATEWAY_LAB_AWS_"

# EC2's request-rate buckets: (burst, refill per second), one bucket per action per account and
# region; the category only sets the size. Source: EC2 developer guide, "Request throttling for
# the Amazon EC2 API" (docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html), tables
# "Request token bucket sizes and refill rates" (categories) and the uncategorized actions.
EC2_CATEGORIES = {
    "non-mutating": (100, 20),
    "unfiltered-non-mutating": (50, 10),
    "mutating": (50, 5),
}
EC2_ACTIONS = {  # the uncategorized actions the agent, the ASG or the lab call
    "CreateTags": (100, 10),
    "DeleteTags": (100, 10),
    "ModifyNetworkInterfaceAttribute": (100, 5),
    "CreateNetworkInterface": (100, 5),
    "DeleteNetworkInterface": (100, 5),
    "TerminateInstances": (100, 5),
    "RunInstances": (5, 2),
    "StartInstances": (5, 2),
}
# The actions whose unfiltered, unpaginated calls spend the smaller bucket.
EC2_UNFILTERED_SMALL = {"DescribeInstances", "DescribeInstanceStatus", "DescribeNetworkInterfaces",
                        "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSpotInstanceRequests",
                        "DescribeVolumes"}
# Auto Scaling: "throttles API requests based on a shared API bucket" per account and region (API
# reference, Welcome); no size is published. Assumption: 50 burst, 10/s, shared by every action.
ASG_SHARED = (50, 10)


class Param:
    def __init__(self, name, fast, aws, unit, source):
        self.name, self.fast, self.aws, self.unit, self.source = name, fast, aws, unit, source


PARAMS = [
    Param("THROTTLE", "0", "1", "on/off",
          "EC2 developer guide, \"Request throttling for the Amazon EC2 API\": one token bucket "
          "per action per account and region (non-mutating 100/20 per s, unfiltered "
          "DescribeInstances/NetworkInterfaces 50/10, mutating incl. ReplaceRoute and "
          "Attach/DetachNetworkInterface 50/5, CreateTags 100/10, "
          "ModifyNetworkInterfaceAttribute 100/5, TerminateInstances 100/5); Auto Scaling API "
          "reference: one shared bucket, size unpublished (assumption 50/10 per s)"),
    Param("BUCKETS", "", "", "Action=burst/refill,...",
          "overrides of the documented buckets, e.g. CreateTags=100/10"),
    Param("BACKGROUND", "", "", "Action=tokens/s,...",
          "other tools of the account spending tokens, e.g. DescribeRouteTables=5,CreateTags=2"),
    Param("READ_MS", "0", "40..150", "ms",
          "assumption: regional EC2 Describe* round trips from inside the region (no AWS figure)"),
    Param("WRITE_MS", "0", "80..400", "ms",
          "assumption: ReplaceRoute/CreateTags/Attach answer in a few hundred ms (no AWS figure)"),
    Param("LAG_S", "0", "0.2..2", "s",
          "EC2 developer guide, \"Eventual consistency in the Amazon EC2 API\": a write \"might "
          "not be immediately visible to all subsequent commands\"; no bound is published "
          "(assumption 0.2-2 s, drawn per write and per kind)"),
    Param("NONMONOTONIC", "0", "0", "0/1",
          "same page: no promise that reads only move forward (off by default; "
          "GATEWAY_LAB_AWS_NONMONOTONIC=1 serves each read from a view drawn anew)"),
    Param("ATTACH_S", "0", "2..5", "s",
          "assumption: an attachment reads `attaching` for seconds (hot-plug to the guest)"),
    Param("DETACH_S", "0", "2..10", "s",
          "assumption: `detaching` lasts seconds; a force-detach (Force=true) ends at once"),
    Param("SHUTDOWN_S", "0", "20..60", "s",
          "EC2 user guide, \"Troubleshoot instance termination\": `shutting-down` lasting "
          "\"longer than a few minutes\" is abnormal; no typical figure (assumption 20-60 s, the "
          "OS powering off after ~5 s, attached ENIs attached until `terminated`)"),
    Param("LAUNCH_S", "0", "30..90", "s",
          "assumption from ASG activity histories: a replacement's instance appears 30-90 s "
          "after the ASG decides (pending, boot, then the agent starts)"),
    Param("BOOT_S", "0", "2..5", "s",
          "assumption: from the instance's network and IMDS being up to systemd starting the "
          "agent (PUT /lab/boot); the OS's earlier boot is part of LAUNCH_S"),
    Param("IMDS_LAG_S", "0", "1..5", "s",
          "assumption: IMDS shows a hot-plugged ENI's keys and a new target-lifecycle-state a "
          "few seconds after the change"),
    Param("DATAPLANE_LAG_S", "0", "0.2..2", "s",
          "assumption: the VPC's routers apply a route change within a second or two of "
          "ReplaceRoute's answer"),
    Param("NETWORKD", "0", "1", "0/1",
          "amazon-ec2-net-utils: systemd-networkd configures every ENI of AL2023/Debian gateways"),
    Param("NETUTILS_REFRESH_S", "0", "60", "s",
          "amazon-ec2-net-utils' refresh-policy-routes timer (30 s after boot, then every 60 s): "
          "rewrites each ENI's networkd files, reloads networkd when one changed"),
    Param("MAINTENANCE_POLICY", "terminate-and-launch", "launch-before-terminate", "policy",
          "Auto Scaling user guide, \"Instance maintenance policies\""),
    Param("CAPACITY_REBALANCE", "0", "1", "0/1",
          "Auto Scaling user guide, \"Capacity Rebalancing\""),
]


def profile():
    name = os.environ.get("GATEWAY_LAB_PROFILE", "fast") or "fast"
    if name not in PROFILES:
        raise SystemExit(f"GATEWAY_LAB_PROFILE={name!r}: must be one of {', '.join(PROFILES)}")
    return name


def raw(name):
    """The text value of parameter `name` under the current profile and overrides."""
    param = next((p for p in PARAMS if p.name == name), None)
    if param is None:
        raise KeyError(f"no lab parameter {name}")
    override = os.environ.get(ENV_PREFIX + name)
    if override is not None:
        return override
    return param.aws if profile() == "aws" else param.fast


def _range(name):
    text = raw(name).strip()
    try:
        if ".." in text:
            lo, hi = (float(x) for x in text.split("..", 1))
        else:
            lo = hi = float(text or 0)
    except ValueError:
        raise SystemExit(f"{ENV_PREFIX}{name}={text!r}: a number or a range like 2..5")
    if lo < 0 or hi < lo:
        raise SystemExit(f"{ENV_PREFIX}{name}={text!r}: want 0 <= low <= high")
    return lo, hi


_rng = random.Random(int(os.environ["GATEWAY_LAB_SEED"]) if os.environ.get("GATEWAY_LAB_SEED") else None)


def draw(name):
    """One draw of a duration/latency parameter (0 when off)."""
    lo, hi = _range(name)
    return lo if lo == hi else _rng.uniform(lo, hi)


def bounds(name):
    return _range(name)


def flag(name):
    return raw(name).strip() not in ("", "0", "false", "off", "no")


def pairs(name):
    """`A=x,B=y` as a dict of text values."""
    out = {}
    for item in filter(None, (s.strip() for s in raw(name).split(","))):
        if "=" not in item:
            raise SystemExit(f"{ENV_PREFIX}{name}: {item!r} is not Action=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def summary():
    """What labd reports in /lab/info: the profile and every parameter's value."""
    return {"profile": profile(), "params": {p.name: raw(p.name) for p in PARAMS}}


def markdown():
    lines = ["| parameter (`GATEWAY_LAB_AWS_…`) | fast | aws | unit | source |",
             "|---|---|---|---|---|"]
    for p in PARAMS:
        lines.append(f"| `{p.name}` | {p.fast or '—'} | {p.aws or '—'} | {p.unit} | {p.source} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(markdown())
    else:
        print(summary())
