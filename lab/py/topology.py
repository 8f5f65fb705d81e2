"""The lab's data plane: network namespaces that follow the moto state.

Layout (every name carries the lab id, so several labs can run side by side):
  <p>-rtr     the VPC router: one veth per ENI and per client subnet; a kernel table per moto route
              table; `ip rule iif <veth> lookup <table of that subnet>`; `to <vpc cidr> lookup main`
  <p>-inet    the internet: 198.51.100.1 (echo/sink host) and 198.51.100.2 (the EC2/ASG API)
  <p>-park    where a detached ENI's instance-side veth waits (down), with the MAC moto reports
  <p>-i-...   one per running instance: its primary ENI (configured, as the OS's DHCP would),
              attached ENIs (left for the agent), IMDS on 169.254.169.254:80 (on lo)
  <p>-cli-... one client per private subnet (.10), default route via the subnet router

`reconcile()` is level-triggered: it computes the whole desired state from moto, and applies the
difference. Kernel routes and rules are read back and diffed, so a mirror never drifts.
"""

import ipaddress
import json
import os
import signal
import socket
import threading
import time

import mends
import netns
import profile
from imds import ImdsServer, ImdsState

INET_HOST = "198.51.100.1"
API_ADDR = "198.51.100.2"
LINK_RTR = "100.64.255.1"
LINK_INET = "100.64.255.2"
TABLE_BASE = 10000
PREF_CUT = 40
PREF_PARTITION = 50
PREF_LOCAL = 100
PREF_SUBNET = 200


def _eni_ips(eni):
    ips = [eni.private_ip_address]
    for entry in eni.private_ip_addresses or []:
        addr = entry.get("PrivateIpAddress") if isinstance(entry, dict) else None
        if addr and addr not in ips:
            ips.append(addr)
    return ips


def short(resource_id):
    return resource_id.split("-", 1)[1][-8:]


class Topology:
    def __init__(self, lab_id, ec2, asg, lock, run_dir, log):
        self.lab_id = lab_id
        self.ec2 = ec2  # callables returning the moto backends (they change on reset)
        self.asg = asg
        self.lock = lock
        self.run_dir = run_dir
        self.log = log
        self.rtr = f"gl-{lab_id}-rtr"
        self.inet = f"gl-{lab_id}-inet"
        self.park = f"gl-{lab_id}-park"
        self.instances = {}  # instance id -> {"ns", "imds", "imds_state"}
        self.enis = {}  # eni id -> {"mac", "where": ns}
        self.clients = {}  # subnet id -> {"ns", "ip", "rif"}
        self.tables = {}  # route table id -> kernel table number
        self.cuts = {}  # instance id -> set of "uplink"/"eni"
        self.partitions = set()  # frozenset({ip_a, ip_b})
        self.hung = set()
        self.imds_states = {}  # instance id -> ImdsState (kept across relaunch of a namespace)
        self.last_desired = None
        self.mirror_lag_ms = []
        self.processes = []  # (instance id, Popen)
        # aws profile: route changes reach the router DATAPLANE_LAG_S after the API answered;
        # IMDS shows a new ENI or lifecycle state IMDS_LAG_S after the change.
        self.route_applied = {}  # (table, dst) -> spec the router has
        self.route_due = {}  # (table, dst) -> (spec, monotonic time it applies)
        self.dataplane_lag = profile.bounds("DATAPLANE_LAG_S")[1] > 0
        self.imds_seen = {}  # (instance id, key) -> (value shown, pending value, visible at)
        self.netutils_every = profile.draw("NETUTILS_REFRESH_S")  # read once: reconcile is hot

    # --- life of the lab -----------------------------------------------------------------------

    def up(self):
        for ns in (self.rtr, self.inet, self.park):
            netns.ip("netns", "add", ns)
            netns.ip("link", "set", "lo", "up", ns=ns)
        for key, value in (
            ("net.ipv4.ip_forward", 1),
            ("net.ipv4.conf.all.rp_filter", 0),
            ("net.ipv4.conf.default.rp_filter", 0),
            ("net.ipv4.conf.default.proxy_arp", 1),
            ("net.ipv6.conf.default.disable_ipv6", 1),
        ):
            netns.sysctl(self.rtr, key, value)
        netns.batch(
            [
                f"link add rinet type veth peer name inet0 netns {self.inet}",
                f"addr add {LINK_RTR}/30 dev rinet",
                "link set rinet up",
            ],
            ns=self.rtr,
        )
        netns.batch(
            [
                f"addr add {LINK_INET}/30 dev inet0",
                f"addr add {INET_HOST}/32 dev lo",
                f"addr add {API_ADDR}/32 dev lo",
                "link set inet0 up",
                f"route add default via {LINK_RTR}",
            ],
            ns=self.inet,
        )

    def down(self):
        for _, proc in self.processes:
            if proc.poll() is None:
                proc.kill()
        for inst in list(self.instances.values()):
            if inst.get("imds"):
                inst["imds"].close()
        prefix = f"gl-{self.lab_id}-"
        for ns in netns.netns_list():
            if ns.startswith(prefix):
                netns.netns_delete(ns)

    # --- desired state from moto ---------------------------------------------------------------

    def _desired(self):
        ec2 = self.ec2()
        instances = {}
        for reservation in ec2.reservations.values():
            for inst in reservation.instances:
                # A dying instance keeps its namespace (and its attached ENIs) until it is
                # terminated.
                if inst.state in ("pending", "running", "shutting-down"):
                    instances[inst.id] = inst
        enis = {}
        for eni in ec2.enis.values():
            attached = eni.instance.id if eni.instance is not None else None
            if mends.TRANSITIONS.status(eni.id) == "attaching":
                attached = None  # hot-plugged only once EC2 says `attached`
            where = self.park
            if attached in instances:
                where = self.instance_ns(attached)
            enis[eni.id] = {
                "mac": eni.mac_address,
                "where": where,
                "device_index": eni.device_index if attached in instances else None,
                "instance": attached if attached in instances else None,
                "ips": _eni_ips(eni),
                "subnet": eni.subnet.id,
                "cidr": eni.subnet.cidr_block,
            }
        subnet_table = {}
        vpc_cidrs = []
        for vpc in ec2.vpcs.values():
            if vpc.cidr_block and not vpc.is_default:
                vpc_cidrs.append(vpc.cidr_block)
        main_tables = {}
        for rt in ec2.route_tables.values():
            if rt.main_association_id:
                main_tables[rt.vpc_id] = rt.id
            for target in rt._associations.values():
                if target.startswith("subnet-"):
                    subnet_table[target] = rt.id
        for subnet_id in set(e["subnet"] for e in enis.values()) | set(self.clients):
            if subnet_id not in subnet_table:
                subnet = ec2.get_subnet(subnet_id)
                if subnet.vpc_id in main_tables:
                    subnet_table[subnet_id] = main_tables[subnet.vpc_id]
        for rtb in sorted(ec2.route_tables):
            if rtb not in self.tables:
                self.tables[rtb] = TABLE_BASE + len(self.tables) + 1
        routes = set()
        for rtb_id, rt in ec2.route_tables.items():
            if ec2.vpcs[rt.vpc_id].is_default:
                continue
            table = self.tables[rtb_id]
            for route in rt._routes.values():
                dst = route.destination_cidr_block
                if route.local or not dst:
                    continue
                routes.add(self._kernel_route(table, dst, route, enis))
        rules = set()
        for cidr in vpc_cidrs:
            rules.add((PREF_LOCAL, f"to {cidr} lookup main"))
        for eni_id, e in enis.items():
            if e["instance"] and e["subnet"] in subnet_table:
                rules.add((PREF_SUBNET, f"iif r{short(eni_id)} lookup {self.tables[subnet_table[e['subnet']]]}"))
        for subnet_id, c in self.clients.items():
            if subnet_id in subnet_table:
                rules.add((PREF_SUBNET, f"iif {c['rif']} lookup {self.tables[subnet_table[subnet_id]]}"))
        for instance_id, which in self.cuts.items():
            for eni_id, e in enis.items():
                if e["instance"] != instance_id:
                    continue
                kind = "uplink" if e["device_index"] == 0 else "eni"
                if kind in which:
                    rules.add((PREF_CUT, f"iif r{short(eni_id)} blackhole"))
                    for addr in e["ips"]:
                        rules.add((PREF_CUT, f"to {addr} blackhole"))
        for pair in self.partitions:
            a, b = sorted(pair)
            rules.add((PREF_PARTITION, f"from {a} to {b} blackhole"))
            rules.add((PREF_PARTITION, f"from {b} to {a} blackhole"))
        return {"instances": instances, "enis": enis, "routes": routes, "rules": rules}

    def _kernel_route(self, table, dst, route, enis):
        state = route.state
        if route.gateway is not None and route.gateway.id.startswith("igw-"):
            return (table, dst, f"via {LINK_INET} dev rinet onlink")
        eni = route.interface
        if eni is None and route.instance is not None:
            eni = route.instance.nics.get(0)
        if eni is not None and state == "active" and eni.id in enis and enis[eni.id]["instance"]:
            return (table, dst, f"via {eni.private_ip_address} dev r{short(eni.id)} onlink")
        return (table, dst, "blackhole")

    # --- applying it ---------------------------------------------------------------------------

    def reconcile(self, started=None):
        """Bring the namespaces in line with moto. Call with self.lock held."""
        self._apply_shutdowns()
        self._networkd_timer()
        desired = self._desired()
        desired["routes"] = self._lagged(desired["routes"])
        key = (
            frozenset(desired["instances"]),
            frozenset((k, v["where"], v["mac"]) for k, v in desired["enis"].items()),
            frozenset(desired["routes"]),
            frozenset(desired["rules"]),
            frozenset(self.clients),
        )
        if key == self.last_desired and not self.route_due:
            return False
        self._apply_instances(desired)
        self._apply_enis(desired)
        self._apply_routes(desired["routes"])
        self._apply_rules(desired["rules"])
        self.last_desired = key
        if started is not None:
            self.mirror_lag_ms.append((time.monotonic() - started) * 1000.0)
            del self.mirror_lag_ms[:-10000]
        return True

    def _lagged(self, routes):
        """The routes the router holds now: a change applies DATAPLANE_LAG_S after it was seen."""
        if not self.dataplane_lag:
            return routes
        now = time.monotonic()
        want = {(t, d): spec for t, d, spec in routes}
        out = set()
        for key, spec in want.items():
            have = self.route_applied.get(key)
            if have is None or have == spec:
                self.route_due.pop(key, None)
                self.route_applied[key] = spec
            else:
                due = self.route_due.get(key)
                if due is None or due[0] != spec:
                    due = self.route_due[key] = (spec, now + profile.draw("DATAPLANE_LAG_S"))
                if due[1] <= now:
                    self.route_applied[key] = spec
                    del self.route_due[key]
            out.add((key[0], key[1], self.route_applied[key]))
        for key in list(self.route_applied):
            if key not in want:
                del self.route_applied[key]
                self.route_due.pop(key, None)
        return out

    def _apply_shutdowns(self):
        """An instance `shutting-down`: its OS stops its services (SIGTERM), then powers off."""
        now = time.monotonic()
        for instance_id, sd in list(mends.SHUTDOWNS.pending.items()):
            entry = self.instances.get(instance_id)
            if entry is None:
                continue
            if not sd["signalled"]:
                sd["signalled"] = True
                self._signal_all(entry["ns"], signal.SIGTERM)
                self.log(f"instance {instance_id} shutting down: SIGTERM to its processes")
            if not sd["off"] and now >= sd["poweroff_at"]:
                sd["off"] = True
                self._signal_all(entry["ns"], signal.SIGKILL)
                self.cuts.setdefault(instance_id, set()).update({"uplink", "eni"})
                self.log(f"instance {instance_id} powered off (still shutting-down, ENIs attached)")

    def _networkd_timer(self):
        """net-utils' refresh timer: 30 s after boot, then every NETUTILS_REFRESH_S, rewrite
        each ENI's files and reload networkd if one changed."""
        every = self.netutils_every
        if every <= 0:
            return
        now = time.monotonic()
        for instance_id, entry in self.instances.items():
            if entry.get("networkd") is None:
                continue
            due = entry.setdefault("netutils_due", now + min(30.0, every))
            if now >= due:
                entry["netutils_due"] = now + every
                self._networkd_follow(instance_id, "timer")

    def _signal_all(self, ns, sig):
        for pid in netns.netns_pids(ns):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _imds_lagged(self, instance_id, key, value, initial):
        """What IMDS shows for `key`: a new value only IMDS_LAG_S after it first appeared."""
        now = time.monotonic()
        shown, pending, at = self.imds_seen.get((instance_id, key), (initial, initial, now))
        if value == shown:
            pending, at = shown, now
        elif value != pending:
            pending, at = value, now + profile.draw("IMDS_LAG_S")
        if at <= now:
            shown = pending
        self.imds_seen[(instance_id, key)] = (shown, pending, at)
        return shown

    def instance_ns(self, instance_id):
        return f"gl-{self.lab_id}-{instance_id}"

    def _apply_instances(self, desired):
        want = desired["instances"]
        for instance_id in list(self.instances):
            if instance_id not in want:
                self._remove_instance(instance_id)
        for instance_id, inst in want.items():
            if instance_id not in self.instances:
                self._add_instance(inst)

    def _add_instance(self, inst):
        ns = self.instance_ns(inst.id)
        netns.ip("netns", "add", ns)
        netns.batch(["link set lo up", "addr add 169.254.169.254/32 dev lo"], ns=ns)
        state = self.imds_states.setdefault(inst.id, ImdsState())
        sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM, bind=("169.254.169.254", 80))
        server = ImdsServer(sock, lambda iid=inst.id: self.imds_tree(iid), state)
        self.instances[inst.id] = {"ns": ns, "imds": server, "configured": set()}
        if profile.flag("NETWORKD"):
            import networkd

            nd = networkd.Networkd(inst.id, ns, self.run_dir, self.log)
            self.processes.append((inst.id, nd.start()))
            self.instances[inst.id]["networkd"] = nd
        self.log(f"instance {inst.id} up in namespace {ns}")

    def _remove_instance(self, instance_id):
        entry = self.instances.pop(instance_id)
        # Move every ENI end out first: deleting a namespace destroys the veths inside it.
        for eni_id, e in self.enis.items():
            if e["where"] == entry["ns"]:
                self._move_eni(eni_id, self.park)
        entry["imds"].close()
        if entry.get("networkd"):
            entry["networkd"].stop()  # netns_delete would kill it too; this logs it
        netns.netns_delete(entry["ns"])
        self.hung.discard(instance_id)
        self.cuts.pop(instance_id, None)
        self.log(f"instance {instance_id} down (namespace {entry['ns']} removed)")

    def _apply_enis(self, desired):
        want = desired["enis"]
        for eni_id in list(self.enis):
            if eni_id not in want:
                netns.ip("link", "del", f"r{short(eni_id)}", ns=self.rtr, check=False)
                del self.enis[eni_id]
        for eni_id, w in want.items():
            s = short(eni_id)
            if eni_id not in self.enis:
                netns.batch(
                    [
                        f"link add r{s} type veth peer name e{s} netns {self.park}",
                        f"link set r{s} up",
                    ],
                    ns=self.rtr,
                )
                netns.ip("link", "set", f"e{s}", "address", w["mac"], ns=self.park)
                self.enis[eni_id] = {"mac": w["mac"], "where": self.park, "rtr": set()}
            cur = self.enis[eni_id]
            if cur["where"] != w["where"]:
                name = f"ens{5 + int(w['device_index'])}" if w["instance"] else f"e{s}"
                self._move_eni(eni_id, w["where"], name)
                if w["instance"] and w["device_index"] == 0:
                    self._configure_primary(w)
            self._apply_router_side(eni_id, w)

    def _move_eni(self, eni_id, where, name=None):
        cur = self.enis[eni_id]
        s = short(eni_id)
        name = name or f"e{s}"
        netns.ip("link", "set", cur.get("name", f"e{s}"), "down", ns=cur["where"], check=False)
        netns.ip("link", "set", cur.get("name", f"e{s}"), "netns", where, "name", name, ns=cur["where"])
        left = cur["where"]
        cur["where"], cur["name"] = where, name
        # amazon-ec2-net-utils' udev hook: (re)write networkd's files and reload, on hot-plug and
        # on unplug, once this reconcile is over (the primary is up as at boot by then).
        for instance_id, entry in self.instances.items():
            if entry.get("networkd") and entry["ns"] in (where, left):
                self._networkd_follow(instance_id, "attach" if entry["ns"] == where else "detach")

    def _configure_primary(self, w):
        """What the instance's OS does for its primary interface at boot (DHCP)."""
        net = ipaddress.ip_network(w["cidr"])
        gw = net.network_address + 1
        name = self.enis_name_in(w)
        netns.batch(
            [
                f"addr add {w['ips'][0]}/{net.prefixlen} dev {name}",
                f"link set {name} up",
                f"route add default via {gw} dev {name}",
            ],
            ns=w["where"],
        )

    def enis_name_in(self, w):
        return f"ens{5 + int(w['device_index'])}"

    def _apply_router_side(self, eni_id, w):
        """The VPC router knows every attached ENI's addresses and MAC: no ARP needed."""
        s = short(eni_id)
        cur = self.enis[eni_id]
        net = ipaddress.ip_network(w["cidr"])
        gw = f"{net.network_address + 1}/32"
        want = set()
        if w["instance"]:
            want.add(f"addr replace {gw} dev r{s}")
            for addr in w["ips"]:
                want.add(f"route replace {addr}/32 dev r{s}")
                want.add(f"neigh replace {addr} lladdr {w['mac']} dev r{s} nud permanent")
        if want == cur["rtr"]:
            return
        cmds = []
        for cmd in cur["rtr"] - want:
            cmds.append(cmd.replace(" replace ", " del ", 1).replace(f" lladdr {w['mac']}", "").replace(" nud permanent", ""))
        cmds += sorted(want - cur["rtr"], key=lambda c: (not c.startswith("addr"), c))
        netns.batch(cmds, ns=self.rtr, force=True)
        cur["rtr"] = want

    def _apply_routes(self, routes):
        out = netns.ip("-j", "route", "show", "table", "all", ns=self.rtr)
        have = set()
        for r in json.loads(out or "[]"):
            table = r.get("table")
            if not str(table).isdigit() or int(table) < TABLE_BASE:
                continue
            dst = r["dst"] if r["dst"] != "default" else "0.0.0.0/0"
            if "/" not in dst:
                dst += "/32"
            if r.get("type") == "blackhole":
                spec = "blackhole"
            else:
                spec = f"via {r['gateway']} dev {r['dev']} onlink"
            have.add((int(table), dst, spec))
        cmds = []
        # A route whose target changes is swapped by `replace` alone, atomically, as AWS's
        # ReplaceRoute is: deleting it first would leave the table without it for a moment and
        # drop a packet now and then.
        replaced = {(table, dst) for table, dst, _ in routes - have}
        for table, dst, spec in have - routes:
            if (table, dst) in replaced:
                continue
            cmds.append(f"route del {dst} table {table}" if spec != "blackhole" else f"route del blackhole {dst} table {table}")
        for table, dst, spec in routes - have:
            if spec == "blackhole":
                cmds.append(f"route replace blackhole {dst} table {table}")
            else:
                cmds.append(f"route replace {dst} {spec} table {table}")
        netns.batch(cmds, ns=self.rtr, force=True)

    def _apply_rules(self, rules):
        out = netns.ip("-j", "rule", "show", ns=self.rtr)
        have = set()
        for r in json.loads(out or "[]"):
            pref = r.get("priority")
            if pref not in (PREF_CUT, PREF_PARTITION, PREF_LOCAL, PREF_SUBNET):
                continue
            parts = []
            if r.get("src") and r["src"] != "all":
                parts.append(f"from {r['src']}" + (f"/{r['srclen']}" if r.get("srclen") not in (None, 32) else ""))
            if r.get("dst"):
                parts.append(f"to {r['dst']}" + (f"/{r['dstlen']}" if r.get("dstlen") not in (None, 32) else ""))
            if r.get("iif"):
                parts.append(f"iif {r['iif']}")
            if r.get("action") == "blackhole":
                parts.append("blackhole")
            else:
                parts.append(f"lookup {r.get('table')}")
            have.add((pref, " ".join(parts)))
        cmds = [f"rule del pref {p} {spec}" for p, spec in have - rules]
        cmds += [f"rule add pref {p} {spec}" for p, spec in rules - have]
        netns.batch(cmds, ns=self.rtr, force=True)

    # --- clients, streams, faults ---------------------------------------------------------------

    def add_client(self, subnet_id, cidr):
        net = ipaddress.ip_network(cidr)
        ip = str(net.network_address + 10)
        gw = str(net.network_address + 1)
        ns = f"gl-{self.lab_id}-cli-{short(subnet_id)}"
        rif = f"c{short(subnet_id)}"
        netns.ip("netns", "add", ns)
        netns.batch(
            [
                f"link add {rif} type veth peer name eth0 netns {ns}",
                f"addr add {gw}/32 dev {rif}",
                f"link set {rif} up",
                f"route add {ip}/32 dev {rif}",
            ],
            ns=self.rtr,
        )
        netns.batch(
            [
                "link set lo up",
                f"addr add {ip}/{net.prefixlen} dev eth0",
                "link set eth0 up",
                f"route add default via {gw}",
            ],
            ns=ns,
        )
        self.clients[subnet_id] = {"ns": ns, "ip": ip, "rif": rif}
        return self.clients[subnet_id]

    def kernel_routes(self, rtb_id):
        table = self.tables.get(rtb_id)
        if table is None:
            return None
        out = netns.ip("-j", "route", "show", "table", str(table), ns=self.rtr)
        result = []
        for r in json.loads(out or "[]"):
            dst = r["dst"] if r["dst"] != "default" else "0.0.0.0/0"
            entry = {"destination": dst, "type": r.get("type", "unicast")}
            if r.get("dev"):
                entry["dev"] = r["dev"]
                entry["via"] = r.get("gateway")
                for eni_id in self.enis:
                    if f"r{short(eni_id)}" == r["dev"]:
                        entry["eni"] = eni_id
            result.append(entry)
        return result

    def set_hung(self, instance_id, hung):
        entry = self.instances.get(instance_id)
        if entry is None:
            raise KeyError(instance_id)
        self._signal_all(entry["ns"], signal.SIGSTOP if hung else signal.SIGCONT)
        if hung:
            self.hung.add(instance_id)
            self.cuts.setdefault(instance_id, set()).update({"uplink", "eni"})
        else:
            self.hung.discard(instance_id)
            self.cuts.pop(instance_id, None)

    # --- IMDS ----------------------------------------------------------------------------------

    def imds_tree(self, instance_id):
        with self.lock:
            ec2 = self.ec2()
            try:
                inst = ec2.get_instance(instance_id)
            except Exception:  # noqa: BLE001 - gone after a reset
                return None
            region = ec2.region_name
            az = inst.placement.zone
            zone_id = next(
                (z.zone_id for zones in ec2.zones.values() for z in zones if z.name == az), ""
            )
            macs = {}
            for index, eni in sorted(inst.nics.items()):
                # A hot-plugged ENI shows in IMDS once attached, IMDS_LAG_S later.
                live = None if mends.TRANSITIONS.status(eni.id) == "attaching" else eni.attachment_id
                if index != 0 and self._imds_lagged(instance_id, f"eni:{eni.id}", live, None) is None:
                    continue
                subnet = eni.subnet
                vpc = ec2.vpcs[subnet.vpc_id]
                ips = _eni_ips(eni)
                macs[eni.mac_address] = {
                    "device-number": str(index),
                    "interface-id": eni.id,
                    "local-hostname": f"ip-{eni.private_ip_address.replace('.', '-')}.ec2.internal",
                    "local-ipv4s": "\n".join(ips),
                    "mac": eni.mac_address,
                    "owner-id": ec2.account_id,
                    "security-group-ids": "\n".join(g.id for g in eni.group_set),
                    "subnet-id": subnet.id,
                    "subnet-ipv4-cidr-block": subnet.cidr_block,
                    "vpc-id": vpc.id,
                    "vpc-ipv4-cidr-block": vpc.cidr_block,
                    "vpc-ipv4-cidr-blocks": vpc.cidr_block,
                }
            primary = inst.nics[0]
            meta = {
                "ami-id": inst.image_id,
                "instance-id": inst.id,
                "instance-type": inst.instance_type,
                "local-ipv4": primary.private_ip_address,
                "mac": primary.mac_address,
                "hostname": f"ip-{primary.private_ip_address.replace('.', '-')}.ec2.internal",
                "placement": {"availability-zone": az, "availability-zone-id": zone_id, "region": region},
                "network": {"interfaces": {"macs": macs}},
                "events": {"maintenance": {"scheduled": "[]"}},
            }
            target = mends.target_lifecycle_state(self.asg(), instance_id)
            target = self._imds_lagged(instance_id, "target-lifecycle-state", target, target)
            if target is not None:
                meta["autoscaling"] = {"target-lifecycle-state": target}
            document = {
                "accountId": ec2.account_id,
                "availabilityZone": az,
                "imageId": inst.image_id,
                "instanceId": inst.id,
                "instanceType": inst.instance_type,
                "privateIp": primary.private_ip_address,
                "region": region,
                "version": "2017-09-30",
                "architecture": "x86_64",
            }
            return {
                "latest": {
                    "meta-data": meta,
                    "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}},
                    "user-data": "",
                }
            }

    # --- systemd-networkd in instances (profile flag NETWORKD) ------------------------------------

    def _networkd_links(self, instance_id):
        """The instance's interfaces as net-utils would configure them (from moto, not IMDS)."""
        ns = self.instance_ns(instance_id)
        links = []
        for eni in self.ec2().enis.values():
            cur = self.enis.get(eni.id)
            if eni.instance is None or eni.instance.id != instance_id or not cur or cur["where"] != ns:
                continue
            net = ipaddress.ip_network(eni.subnet.cidr_block)
            links.append({"name": cur["name"], "mac": eni.mac_address, "device_index": eni.device_index,
                          "ips": _eni_ips(eni), "cidr": eni.subnet.cidr_block,
                          "gateway": str(net.network_address + 1)})
        return sorted(links, key=lambda x: x["device_index"])

    def _networkd_follow(self, instance_id, why):
        """Refresh networkd's files after an ENI moved, from a thread that waits for the lock."""
        entry = self.instances[instance_id]

        def run():
            entry["networkd"].wait_ready()
            with self.lock:
                if self.instances.get(instance_id) is not entry:
                    return
                try:
                    self.networkd_action(instance_id, "refresh", why=why)
                except Exception as e:  # noqa: BLE001 - logged; the verb can retry
                    self.log(f"networkd {instance_id}: {why} refresh failed: {e!r}")

        threading.Thread(target=run, daemon=True).start()

    def networkd_action(self, instance_id, action, why=None):
        """`status`; `refresh` (net-utils' timer: rewrite the files, reload if one changed);
        `reload` (rewrite, then reload in any case); `restart`. Call with self.lock held."""
        entry = self.instances.get(instance_id)
        if entry is None:
            raise KeyError(f"running instance {instance_id}")
        nd = entry.get("networkd")
        if nd is None:
            raise ValueError("networkd is off: GATEWAY_LAB_PROFILE=aws or GATEWAY_LAB_AWS_NETWORKD=1")
        result = {"instance_id": instance_id, "action": action}
        if action in ("refresh", "reload"):
            result["changed"] = nd.configure(self._networkd_links(instance_id))
            if result["changed"] or action == "reload":
                result["reload"] = nd.reload(why or action)
                if nd.proc is not None and all(p is not nd.proc for _, p in self.processes):
                    self.processes.append((instance_id, nd.proc))
        elif action == "restart":
            proc, ready = nd.restart()
            self.processes.append((instance_id, proc))
            result["ready"] = ready
        elif action != "status":
            raise ValueError("action: status, refresh, reload or restart")
        result["status"] = nd.status()
        return result


class Streams:
    """Fixed-rate UDP streams from a client namespace to the internet host, measured on arrival."""

    PORT = 9999

    def __init__(self, inet_ns):
        self.lock = threading.Lock()
        self.streams = {}
        self.next_id = 1
        self.sock = netns.socket_in(inet_ns, socket.AF_INET, socket.SOCK_DGRAM, bind=(INET_HOST, self.PORT))
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self):
        while True:
            try:
                data, _ = self.sock.recvfrom(64)
            except OSError:
                return
            now = time.monotonic()
            if len(data) < 16:
                continue
            sid = int.from_bytes(data[:8], "big")
            seq = int.from_bytes(data[8:16], "big")
            with self.lock:
                s = self.streams.get(sid)
                if s is None or seq in s["seen"]:
                    continue
                s["seen"].add(seq)
                s["arrivals"].append(time.time())
                gap = now - s["last"]
                if gap > s["max_gap"]:
                    s["max_gap"] = gap
                s["last"] = now

    def start(self, ns, rate):
        with self.lock:
            sid = self.next_id
            self.next_id += 1
        sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        now = time.monotonic()
        s = {"id": sid, "ns": ns, "rate": rate, "sent": 0, "seen": set(), "start": now, "last": now,
             "max_gap": 0.0, "stop": threading.Event(), "stopped_at": None,
             # Wall-clock arrival of each delivered packet (the clock of route_changes' `at`).
             "started_wall": time.time(), "arrivals": []}
        with self.lock:
            self.streams[sid] = s

        def send():
            interval = 1.0 / rate
            t0 = time.monotonic()
            while not s["stop"].is_set():
                payload = sid.to_bytes(8, "big") + s["sent"].to_bytes(8, "big")
                try:
                    sock.sendto(payload, (INET_HOST, self.PORT))
                except OSError:
                    pass  # a blackhole route answers EINVAL/ENETUNREACH locally: still a lost packet
                s["sent"] += 1
                wait = t0 + s["sent"] * interval - time.monotonic()
                if wait > 0:
                    s["stop"].wait(wait)
            sock.close()

        threading.Thread(target=send, daemon=True).start()
        return sid

    def timeline(self, sid):
        """When each packet arrived, and when the stream started, in wall-clock seconds."""
        s = self.streams[sid]
        with self.lock:
            return {"id": sid, "rate": s["rate"], "started": s["started_wall"],
                    "arrivals": [round(t, 4) for t in s["arrivals"]]}

    def report(self, sid, stop=False):
        s = self.streams[sid]
        if stop and not s["stop"].is_set():
            s["stopped_at"] = time.monotonic()
            s["stop"].set()
            time.sleep(0.2)  # let the packets in flight land
        with self.lock:
            end = s["stopped_at"] or time.monotonic()
            tail = max(0.0, end - s["last"])
            delivered = len(s["seen"])
            return {
                "id": sid,
                "rate": s["rate"],
                "sent": s["sent"],
                "delivered": delivered,
                "lost": s["sent"] - delivered,
                "longest_gap_ms": round(max(s["max_gap"], tail) * 1000.0, 1),
                "running": not s["stop"].is_set(),
            }
