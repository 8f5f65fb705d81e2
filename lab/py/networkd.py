"""The real systemd-networkd inside a lab instance, configured as amazon-ec2-net-utils does.

On Amazon Linux 2023 and Debian 12 AMIs, amazon-ec2-net-utils writes, for every attached ENI
(udev hot-plug, then again from its refresh timer), a systemd-networkd configuration in
/run/systemd/network and runs `networkctl reload` when a file changed:
- `07-<if>.network` (Debian; `70-` on AL2023), matching the ENI, with DHCP;
- `07-<if>.network.d/eni.conf`: the main-table default route with metric 512 + device-number,
  and a table of its own, 10000 + device-number, with the default route and the subnet's route;
- `07-<if>.network.d/ec2net_policy_4.conf`, for device-number > 0 only: one rule per local
  address, `from <ip> lookup 10000+n`, priority 10000 + n;
- `07-<if>.network.d/ec2net_alias.conf`: the ENI's secondary addresses as /32s.
(From lib/lib.sh and bin/setup-policy-routes.sh of github.com/amazonlinux/amazon-ec2-net-utils.)

The lab has no DHCP server, so the address and gateway DHCP would give are written statically;
the rule/table shape is net-utils'. networkd.conf is left alone (ManageForeignRoutes and
ManageForeignRoutingPolicyRules keep their default, yes) unless GATEWAY_LAB_NETWORKD_CONF_D names
a directory of networkd.conf drop-ins (the package's packaging/networkd.conf.d) to apply.

networkd runs in the instance's network namespace with a mount namespace of its own: tmpfs on
/run/systemd (its state), this lab's config directory bound on /run/systemd/network, /sys
read-only (so it does not wait for udev, as in a container), and a private system D-Bus on
/run/dbus so that `networkctl reload` works: systemd 252's networkd reloads only over D-Bus
(SIGHUP kills it). Everything dies with the namespace.
"""

import os
import re
import shlex
import signal
import subprocess
import time

NETWORKD = "/lib/systemd/systemd-networkd"
# A directory of networkd.conf drop-ins every instance's networkd reads (empty: networkd's defaults).
CONF_D = os.environ.get("GATEWAY_LAB_NETWORKD_CONF_D", "")
RULE_BASE = 10000
METRIC_BASE = 512
PREFIX = "07-"


def unit_files(link):
    """net-utils' files for one interface: {relative path: text}.

    `link`: {"name", "mac", "device_index", "ips" (primary first), "cidr", "gateway"}.
    """
    import ipaddress

    n = int(link["device_index"])
    table = RULE_BASE + n
    prefixlen = ipaddress.ip_network(link["cidr"]).prefixlen
    base = f"{PREFIX}{link['name']}.network"
    files = {
        base: (
            f"# {link['name']}: amazon-ec2-net-utils' shape; the lab gives statically what DHCP would\n"
            "[Match]\n"
            f"MACAddress={link['mac']}\n"
            "\n[Network]\n"
            f"Address={link['ips'][0]}/{prefixlen}\n"
            "LLMNR=no\n"
            "# lab: no IPv6 in the VPC\n"
            "LinkLocalAddressing=no\n"
            "IPv6AcceptRA=no\n"
        ),
        f"{base}.d/eni.conf": (
            f"# Configuration for {link['name']} (device-number {n})\n"
            "# the DHCPv4 default route, RouteMetric=512+device-number\n"
            "[Route]\n"
            f"Gateway={link['gateway']}\n"
            f"Metric={METRIC_BASE + n}\n"
            "\n[Route]\n"
            f"Gateway={link['gateway']}\n"
            f"Table={table}\n"
            "\n[Route]\n"
            f"Table={table}\n"
            f"Destination={link['cidr']}\n"
        ),
    }
    if n > 0:
        # net-utils installs rules for secondary interfaces only (its issue #97).
        files[f"{base}.d/ec2net_policy_4.conf"] = "".join(
            f"[RoutingPolicyRule]\nFrom={ip}\nPriority={table}\nTable={table}\n" for ip in link["ips"]
        )
    if len(link["ips"]) > 1:
        files[f"{base}.d/ec2net_alias.conf"] = "".join(
            f"[Address]\nAddress={ip}/32\nAddPrefixRoute=false\n" for ip in link["ips"][1:]
        )
    return files


class Networkd:
    """systemd-networkd of one lab instance. Call with the topology lock held."""

    def __init__(self, instance_id, ns, run_dir, log):
        self.instance_id = instance_id
        self.ns = ns
        self.log = log
        self.state_dir = os.path.join(run_dir, f"{instance_id}-networkd")
        self.conf_dir = os.path.join(self.state_dir, "network")
        self.logfile = os.path.join(run_dir, f"{instance_id}-networkd.log")
        self.proc = None
        self.events = []  # what the lab asked of networkd: {"at", "action", ...}
        self.links = {}  # interface name -> the link dict its files were written from

    # --- process ---------------------------------------------------------------------------------

    def start(self):
        os.makedirs(self.conf_dir, exist_ok=True)
        # networkd.conf drop-ins to try (the package's), read from /run as /etc's would be.
        q = shlex.quote(CONF_D)
        conf_d = "true"
        if CONF_D:
            conf_d = f"mkdir -p /run/systemd/networkd.conf.d && cp {q}/*.conf /run/systemd/networkd.conf.d/"
        script = "\n".join(
            [
                "set -e",
                "mount --make-rprivate /",
                "mount -t tmpfs -o mode=0755 tmpfs /run/systemd",
                "mkdir -p /run/systemd/network",
                f"mount --bind {shlex.quote(self.conf_dir)} /run/systemd/network",
                "if [ -d /etc/systemd/network ]; then mount -t tmpfs tmpfs /etc/systemd/network; fi",
                "mkdir -p /run/dbus",
                "mount -t tmpfs -o mode=0755 tmpfs /run/dbus",
                # `ip netns exec` mounted a sysfs of this namespace; read-only: no udev to wait for
                "mount -o remount,bind,ro /sys",
                conf_d,
                "dbus-daemon --system --fork --nopidfile",
                f"exec {NETWORKD}",
            ]
        )
        env = dict(os.environ)
        env.update({
            "SYSTEMD_LOG_TARGET": "console",
            "SYSTEMD_LOG_LEVEL": os.environ.get("GATEWAY_LAB_NETWORKD_LOG_LEVEL", "debug"),
            "SYSTEMD_LOG_TIME": "1",
        })
        out = open(self.logfile, "ab")
        # `ip netns exec` and `unshare` exec in place: the Popen pid is networkd's.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "-m", "sh", "-c", script],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        out.close()
        self._event("start", pid=self.proc.pid)
        return self.proc

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _bus_up(self):
        try:
            with open(f"/proc/{self.proc.pid}/cmdline", "rb") as f:
                started = f.read().split(b"\0")[0].endswith(b"systemd-networkd")
        except OSError:
            return False
        return started and self._nsenter(["networkctl", "list", "--no-legend"]).returncode == 0

    def _nsenter(self, argv, timeout=10):
        return subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", "-n"] + argv,
            capture_output=True, text=True, timeout=timeout,
        )

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                return False
            if self._bus_up():
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        """Stop networkd and its bus (the namespace's deletion does this too)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        pids = []
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        for pid in (int(x) for x in out.stdout.split()):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() in ("dbus-daemon", "systemd-network"):
                        pids.append(pid)
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._event("stop")

    def restart(self):
        self.stop()
        proc = self.start()
        ready = self.wait_ready()
        return proc, ready

    # --- configuration ---------------------------------------------------------------------------

    def configure(self, links):
        """Write net-utils' files for `links` (the attached interfaces), remove the files of
        interfaces no longer attached. Returns the names whose files changed."""
        want = {}
        for link in links:
            for rel, text in unit_files(link).items():
                want[rel] = text
        changed = set()
        have = set()
        for root, _, files in os.walk(self.conf_dir):
            for name in files:
                have.add(os.path.relpath(os.path.join(root, name), self.conf_dir))
        for rel in have - set(want):
            os.unlink(os.path.join(self.conf_dir, rel))
            changed.add(_ifname(rel))
        for rel, text in want.items():
            path = os.path.join(self.conf_dir, rel)
            try:
                with open(path) as f:
                    if f.read() == text:
                        continue
            except FileNotFoundError:
                pass
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".new", "w") as f:
                f.write(text)
            os.replace(path + ".new", path)
            changed.add(_ifname(rel))
        for root, dirs, _ in os.walk(self.conf_dir, topdown=False):
            for d in dirs:
                try:
                    os.rmdir(os.path.join(root, d))
                except OSError:
                    pass
        self.links = {link["name"]: link for link in links}
        return sorted(changed)

    def reload(self, why):
        """`networkctl reload`, over the namespace's own D-Bus. Falls back to a restart if the
        bus does not answer (and says so)."""
        if not self.running():
            proc, ready = self.restart()
            return self._event("reload", why=why, method="restart (networkd was not running)",
                               ok=ready, pid=proc.pid)
        self.wait_ready(timeout=5.0)
        p = self._nsenter(["networkctl", "reload"])
        if p.returncode == 0:
            return self._event("reload", why=why, method="networkctl reload (D-Bus)", ok=True)
        err = (p.stderr or p.stdout).strip()
        proc, ready = self.restart()
        return self._event("reload", why=why, method=f"restart (networkctl reload failed: {err})",
                           ok=ready, pid=proc.pid)

    def _event(self, action, **kw):
        ev = {"at": time.time(), "action": action, **kw}
        self.events.append(ev)
        del self.events[:-200]
        self.log(f"networkd {self.instance_id}: {action} {kw}")
        return ev

    # --- reading back ----------------------------------------------------------------------------

    def status(self):
        files = {}
        for root, _, names in os.walk(self.conf_dir):
            for name in sorted(names):
                path = os.path.join(root, name)
                with open(path) as f:
                    files[os.path.relpath(path, self.conf_dir)] = f.read()
        links = None
        if self.running():
            try:
                p = self._nsenter(["networkctl", "list", "--no-legend", "--no-pager"], timeout=5)
                links = p.stdout if p.returncode == 0 else p.stderr
            except subprocess.TimeoutExpired:
                links = "networkctl list: timed out"
        removed = []
        try:
            with open(self.logfile, errors="replace") as f:
                for line in f:
                    if re.search(r"Removing foreign|Removing .*routing policy rule|Reconfiguring with|"
                                 r"Configuring with|Found (new|updated|removed) \.network", line):
                        removed.append(line.rstrip())
        except FileNotFoundError:
            pass
        return {
            "instance_id": self.instance_id,
            "running": self.running(),
            "pid": self.proc.pid if self.proc else None,
            "log": self.logfile,
            "config_dir": self.conf_dir,
            "files": files,
            "networkctl": links,
            "events": list(self.events),
            # what networkd logged about (re)configuring links and removing what it did not own
            "journal": removed[-200:],
        }


def _ifname(rel):
    first = rel.split("/", 1)[0]
    return first[len(PREFIX):].split(".network", 1)[0]
