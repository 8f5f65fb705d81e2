"""labd: the gateway-agent lab daemon.

One process runs, for one lab:
- moto 5.2.5 (EC2 + Auto Scaling) with the mends of mends.py, served on 127.0.0.1:<port> for the
  host (tests, the lab CLI) and on 198.51.100.2:80 inside the lab's "internet" namespace, which is
  where instances reach it, over the VPC, through their own uplink;
- fault injection on that API (per action: throttling, 5xx, latency);
- the data plane (topology.py): namespaces that follow the moto state, mirrored synchronously after
  every mutating call and re-checked every 100 ms;
- one IMDSv2 emulator per running instance (imds.py);
- the control API under /lab/ (host side only) that tests and the CLI drive.

It prints one JSON line on stdout when ready and tears everything down on SIGTERM/SIGINT, or when
its parent dies (--die-with-parent).
"""

import argparse
import ctypes
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "false")

import awsmodel  # noqa: E402
import mends  # noqa: E402
import profile  # noqa: E402
import netns  # noqa: E402
import topology  # noqa: E402
from moto.autoscaling.models import autoscaling_backends  # noqa: E402
from moto.ec2.models import ec2_backends  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

ACCOUNT = "123456789012"
REGION = "us-east-1"
# Actions after which the data plane must follow before the caller gets its answer.
MUTATING_PREFIXES = (
    "Create", "Delete", "Replace", "Associate", "Disassociate", "Attach", "Detach", "Terminate",
    "Stop", "Start", "Run", "Reboot", "Modify", "Update", "Set", "Complete", "Put", "Execute",
    "Assign", "Unassign",
)


def log(msg):
    print(f"labd: {msg}", file=sys.stderr, flush=True)


class Lab:
    def __init__(self, lab_id, run_dir):
        self.lab_id = lab_id
        self.run_dir = run_dir
        self.lock = threading.RLock()
        self.faults = {}  # action or "*" -> {"kind", "count", "latency_ms", "status"}
        self.api_calls = []  # (action, ms)
        # Every route write that succeeded, with the wall-clock time its answer left (the mirror
        # already applied): when a client's path changed, to the millisecond, without polling.
        self.route_changes = []
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.topo = topology.Topology(lab_id, self.ec2, self.asg, self.lock, run_dir, log)
        self.streams = None
        self.scenario = None
        self.groups = []  # gateway groups added beside the scenario (POST /lab/groups)
        self.port = None
        self.stopping = threading.Event()
        self.building = False  # a scenario build is running: its API calls skip the mirror
        # The aws profile (profile.py, awsmodel.py): shared token buckets, other tools' load,
        # eventually consistent reads; all idle under `fast`.
        self.buckets = awsmodel.Buckets()
        self.background = awsmodel.Background(self.buckets)
        self.views = awsmodel.Views()
        self.last_view = 0.0
        # What systemd starts when an instance boots (PUT /lab/boot): the spec, the instances
        # that were up when it was set (left alone), and one record per booted instance.
        self.boot_spec = None
        self.boot_skip = set()
        self.boots = {}  # instance id -> record (the latest boot)

    def ec2(self):
        return ec2_backends[ACCOUNT][REGION]

    def asg(self):
        return autoscaling_backends[ACCOUNT][REGION]

    # --- the API the instances and tests call ---------------------------------------------------

    def api_app(self, environ, start_response):
        started = time.monotonic()
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        params = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            params.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
        action = (params.get("Action") or [""])[0]
        service = "autoscaling" if "/autoscaling/" in environ.get("HTTP_AUTHORIZATION", "") else "ec2"

        fault = self._take_fault(action)
        if fault and fault.get("latency_ms"):
            time.sleep(fault["latency_ms"] / 1000.0)
        if fault and fault["kind"] in ("throttle", "5xx"):
            return self._fault_response(start_response, service, fault)
        stuck = fault["kind"][len("stuck-"):] if fault and fault["kind"].startswith("stuck-") else None
        # AWS's own latency, spent outside the lock: callers are served side by side, as AWS
        # serves them; only moto's bookkeeping is one at a time.
        read = awsmodel.is_read(action)
        # Other tools spend continuously: what they owe since the last tick goes first, so a
        # call never finds the tokens a late tick has not spent yet.
        if action:
            self.background.tick()
        if action and not self.buckets.admit(service, action, {k: v[0] for k, v in params.items()}):
            # Not in api_calls (a refused call wrote nothing, as with an injected throttle);
            # the buckets count it.
            time.sleep(profile.draw("READ_MS") / 1000.0)
            return self._fault_response(start_response, service, {"kind": "throttle"})
        if action:
            wait = profile.draw("READ_MS" if read else "WRITE_MS")
            if wait:
                time.sleep(wait / 1000.0)

        with self.lock:
            captured = {}

            def capture(status, headers, exc_info=None):
                captured["status"], captured["headers"] = status, headers

            if action == "DetachNetworkInterface":
                mends.TRANSITIONS.force = (params.get("Force") or ["false"])[0].lower() == "true"
            try:
                if read and service == "ec2" and not environ.get("PATH_INFO", "").startswith("/moto-api"):
                    chunks = self.views.answer(self.ec2(), lambda: b"".join(self.moto(environ, capture)))
                else:
                    chunks = b"".join(self.moto(environ, capture))
            finally:
                mends.TRANSITIONS.force = False
            if (not read and action and captured["status"].startswith("200")):
                if action == "TerminateInstances" and (params.get("SkipOsShutdown") or [""])[0] == "true":
                    for key, ids in params.items():
                        if key.startswith("InstanceId"):
                            mends.SHUTDOWNS.hard(ids[0])
                self.record_view()
            if stuck and action == "DescribeNetworkInterfaces":
                chunks = _stuck(chunks, stuck)
            if environ.get("PATH_INFO", "").startswith("/moto-api/reset"):
                self._after_reset()
            elif (action.startswith(MUTATING_PREFIXES) and captured["status"].startswith("200")
                  and not self.building):
                try:
                    self.topo.reconcile(started)
                except Exception:  # noqa: BLE001 - the API answer stands; the ticker retries
                    log("reconcile failed after " + action + ":\n" + traceback.format_exc())
            done_at = time.time()
        if action:
            self.api_calls.append((action, (time.monotonic() - started) * 1000.0))
            del self.api_calls[:-20000]
        if action in ("ReplaceRoute", "CreateRoute") and captured["status"].startswith("200"):
            def first(*keys):
                return next((params[k][0] for k in keys if params.get(k)), None)

            self.route_changes.append({
                "at": done_at, "action": action, "table": first("RouteTableId"),
                "destination": first("DestinationCidrBlock", "DestinationIpv6CidrBlock"),
                "target": first("NetworkInterfaceId", "GatewayId", "InstanceId"),
                # Who wrote it: an instance's primary address, or 127.0.0.1 for the host.
                "source": environ.get("REMOTE_ADDR"),
            })
            del self.route_changes[:-20000]
        if fault and fault["kind"] == "lost" and captured["status"].startswith("200"):
            # The call took effect; its answer never reached the caller, who sees a 5xx and
            # retries (as after a timeout or a reset connection).
            return self._fault_response(start_response, service, {"kind": "5xx"})
        start_response(captured["status"], captured["headers"])
        return [chunks]

    def _take_fault(self, action):
        with self.lock:
            fault = self.faults.get(action) or self.faults.get("*")
            if not fault:
                return None
            if fault.get("count") is not None:
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.faults = {k: v for k, v in self.faults.items() if v is not fault}
            fault["hits"] = fault.get("hits", 0) + 1
            return dict(fault)

    def _fault_response(self, start_response, service, fault):
        rid = str(uuid.uuid4())
        if fault["kind"] == "throttle":
            status = "503 Service Unavailable" if service == "ec2" else "400 Bad Request"
            code = "RequestLimitExceeded" if service == "ec2" else "Throttling"
            msg = "Request limit exceeded." if service == "ec2" else "Rate exceeded"
        else:
            status, code, msg = "503 Service Unavailable", "Unavailable", "The service is unavailable."
            if fault.get("status") == 500:
                status, code, msg = "500 Internal Server Error", "InternalError", "An internal error has occurred."
        if service == "ec2":
            body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>"
                    f"<Message>{msg}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>")
        else:
            body = (f"<ErrorResponse xmlns=\"https://autoscaling.amazonaws.com/doc/2011-01-01/\"><Error>"
                    f"<Type>Sender</Type><Code>{code}</Code><Message>{msg}</Message></Error>"
                    f"<RequestId>{rid}</RequestId></ErrorResponse>")
        start_response(status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)])
        return [body.encode()]

    def _after_reset(self):
        mends.LIFECYCLE.reset()
        self.boot_spec = None
        self.boot_skip = set()
        self.boots.clear()
        mends.TRANSITIONS.pending.clear()
        mends.SHUTDOWNS.pending.clear()
        self.views.views.clear()
        mends.USED_IPS.clear()
        for client in list(self.topo.clients.values()):
            netns.netns_delete(client["ns"])
            netns.ip("link", "del", client["rif"], ns=self.topo.rtr, check=False)
        self.topo.clients.clear()
        self.topo.tables.clear()
        self.topo.imds_states.clear()
        self.topo.cuts.clear()
        self.topo.partitions.clear()
        self.faults.clear()
        self.scenario = None
        self.groups = []
        self.topo.reconcile()

    # --- the host-side app: the API plus /lab/ ------------------------------------------------

    def host_app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/lab/"):
            return self.api_app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            body = json.loads(raw) if raw else {}
            code, result = self.control(environ["REQUEST_METHOD"], path[len("/lab/"):].strip("/"), body)
        except KeyError as e:
            code, result = 404, {"error": f"not found: {e}"}
        except (ValueError, TypeError) as e:
            code, result = 400, {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - reported to the caller, and logged
            log(traceback.format_exc())
            code, result = 500, {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(result).encode()
        start_response(f"{code} {'OK' if code == 200 else 'Error'}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def control(self, method, path, body):
        parts = path.split("/")
        if path == "info" and method == "GET":
            return 200, self.info()
        if path == "scenario" and method == "POST":
            import scenario

            # Each of the build's calls would otherwise wait for its own mirror pass, which
            # doubles the time of a scenario with many route tables; nothing in the VPC can act
            # on the mirror before the build answers, so one pass at its end is enough.
            self.building = True
            # Its groups' first instances launch at once (no LAUNCH_S): the fleet exists before
            # the test begins; every later launch (replacement, scale-out, refresh) waits.
            mends.LIFECYCLE.immediate = True
            try:
                self.scenario = scenario.build(self, **body)
            finally:
                self.building = False
                mends.LIFECYCLE.immediate = False
                with self.lock:
                    # The VPC was built long before any gateway boots: every read sees it whole.
                    self.views.settle(self.ec2())
                    self.topo.reconcile()
            return 200, self.scenario
        if path == "scenario" and method == "GET":
            return 200, self.scenario
        if path == "groups" and method == "POST":
            # One more gateway group in a VPC of its own beside the scenario's (a fleet of
            # groups in one account); built like the scenario, its first instances at once.
            import scenario

            self.building = True
            mends.LIFECYCLE.immediate = True
            try:
                group = scenario.build(self, extra=True, **body)
            finally:
                self.building = False
                mends.LIFECYCLE.immediate = False
                with self.lock:
                    self.views.settle(self.ec2())
                    self.topo.reconcile()
            self.groups.append(group)
            return 200, group
        if path == "groups" and method == "GET":
            return 200, self.groups
        if path == "instances" and method == "GET":
            return 200, self.instances()
        if parts[0] == "instances" and len(parts) == 3:
            return 200, self.instance_verb(parts[1], parts[2], method, body)
        if path == "faults":
            with self.lock:
                if method == "PUT":
                    fault = {"kind": body["kind"], "count": body.get("count"),
                             "latency_ms": body.get("latency_ms", 0), "status": body.get("status")}
                    if fault["kind"] not in FAULT_KINDS:
                        raise ValueError("kind must be one of " + ", ".join(FAULT_KINDS))
                    self.faults[body.get("action") or "*"] = fault
                elif method == "DELETE":
                    self.faults.clear()
                return 200, self.faults
        if path == "partition":
            pair = frozenset((body["a"], body["b"]))
            with self.lock:
                (self.topo.partitions.add if method == "POST" else self.topo.partitions.discard)(pair)
                self.topo.reconcile()
            return 200, {"partitions": [sorted(p) for p in self.topo.partitions]}
        if path == "streams" and method == "POST":
            ns = body.get("ns") or self._client_ns(body["zone"])
            return 200, {"id": self.streams.start(ns, float(body.get("rate", 100)))}
        if parts[0] == "streams" and len(parts) == 3 and parts[2] == "timeline":
            return 200, self.streams.timeline(int(parts[1]))
        if parts[0] == "streams" and len(parts) >= 2:
            sid = int(parts[1])
            return 200, self.streams.report(sid, stop=len(parts) == 3 and parts[2] == "stop")
        if path == "kernel-routes" and method == "GET":
            raise ValueError("use kernel-routes/<route table id>")
        if parts[0] == "kernel-routes":
            with self.lock:
                routes = self.topo.kernel_routes(parts[1])
            if routes is None:
                raise KeyError(parts[1])
            return 200, routes
        if path == "lifecycle" and method == "GET":
            with mends.LIFECYCLE.lock:
                return 200, {"open": [dict((k, v) for k, v in a.items() if "deadline" not in k)
                                      for a in mends.LIFECYCLE.open.values()],
                             "history": list(mends.LIFECYCLE.history)}
        if path == "boot":
            if method in ("PUT", "DELETE"):
                return 200, self.set_boot(body if method == "PUT" else {})
            with self.lock:
                return 200, {"spec": self.boot_spec, "skip": sorted(self.boot_skip),
                             "instances": {i: self.boot_view(i) for i in self.boots}}
        if path == "activities" and method == "GET":
            return 200, mends.activities_view()
        if parts[0] == "groups" and len(parts) == 3 and parts[2] == "refresh" and method == "POST":
            with self.lock:
                try:
                    refresh = mends.start_refresh(self.asg(), parts[1], policy=body.get("policy"),
                                                  preferences=body.get("preferences"))
                except mends.AutoscalingClientError as e:
                    raise ValueError(f"{e.code}: {e.message}")
            return 200, dict(refresh)
        if path == "stats" and method == "GET":
            return 200, {"mirror_lag_ms": list(self.topo.mirror_lag_ms),
                         "api_calls": [{"action": a, "ms": ms} for a, ms in self.api_calls],
                         "throttling": self.buckets.report(),
                         "views": self.views.report(),
                         "attachments": [{"eni": e, "status": s, "s": d} for e, s, d in mends.TRANSITIONS.done],
                         "route_changes": list(self.route_changes)}
        if path == "background" and method == "PUT":
            # Other tools of the account: {"rates": {"DescribeRouteTables": 5, ...}} tokens/s.
            with self.lock:
                self.background.set(body.get("rates") or {})
            return 200, {"rates": self.background.rates}
        if path == "reset" and method == "POST":
            with self.lock:
                for backend in (ec2_backends, autoscaling_backends):
                    backend.reset()
                self._after_reset()
            return 200, {}
        if path == "down" and method == "POST":
            threading.Thread(target=self.shutdown, daemon=True).start()
            return 200, {}
        raise KeyError(path)

    def _client_ns(self, zone):
        if not self.scenario:
            raise ValueError("no scenario: POST /lab/scenario first, or give `ns`")
        for z in self.scenario["zones"]:
            if zone in (z["az"], z["az"][-1:], z["name"]):
                return z["client_ns"]
        raise KeyError(f"zone {zone}")

    def info(self):
        return {
            "lab_id": self.lab_id,
            "pid": os.getpid(),
            "region": REGION,
            "account": ACCOUNT,
            "endpoint": f"http://127.0.0.1:{self.port}",
            "vpc_endpoint": f"http://{topology.API_ADDR}",
            "internet_host": topology.INET_HOST,
            "namespaces": {"router": self.topo.rtr, "internet": self.topo.inet, "park": self.topo.park},
            "run_dir": self.run_dir,
            "profile": profile.summary(),
        }

    def instances(self):
        with self.lock:
            out = []
            for reservation in self.ec2().reservations.values():
                for inst in reservation.instances:
                    _, state = mends._find_state(self.asg(), inst.id)
                    out.append({
                        "instance_id": inst.id,
                        "state": inst.state,
                        "az": inst.placement.zone,
                        "private_ip": inst.nics[0].private_ip_address if 0 in inst.nics else None,
                        "ns": self.topo.instances.get(inst.id, {}).get("ns"),
                        "asg": state.auto_scaling_group_name if state else None,
                        "lifecycle_state": state.lifecycle_state if state else None,
                        "hung": inst.id in self.topo.hung,
                        "cuts": sorted(self.topo.cuts.get(inst.id, ())),
                        "boot": self.boot_view(inst.id),
                    })
            return out

    def instance_verb(self, instance_id, verb, method, body):
        ec2 = self.ec2()
        if verb == "boot":
            with self.lock:
                view = self.boot_view(instance_id)
            if view is None:
                raise KeyError(f"boot record of {instance_id}")
            return view
        if verb == "rebalance":
            return self.rebalance(instance_id, body)
        if verb in ("terminate", "stop", "start"):
            with self.lock:
                if verb == "terminate":
                    ec2.terminate_instances([instance_id])
                    # A death, as the lab's terminate has always meant: no OS shutdown (the
                    # agent gets no SIGTERM); under aws still `shutting-down` for a while.
                    # {"graceful": true} is EC2's default: the OS stops its services first.
                    if not body.get("graceful"):
                        mends.SHUTDOWNS.hard(instance_id)
                    self.asg().notify_terminate_instances([instance_id])
                elif verb == "stop":
                    ec2.stop_instances([instance_id])
                else:
                    ec2.start_instances([instance_id])
                # The verb stands for the API call (TerminateInstances, StopInstances,
                # StartInstances): a write, whose lag runs from now like any other write's,
                # not from the ticker's next view up to a second later.
                self.record_view()
                self.topo.reconcile()
            return {"instance_id": instance_id, "verb": verb}
        with self.lock:
            entry = self.topo.instances.get(instance_id)
        if entry is None:
            raise KeyError(f"running instance {instance_id}")
        if verb in ("hang", "unhang"):
            with self.lock:
                self.topo.set_hung(instance_id, verb == "hang")
                self.topo.reconcile()
            return {"instance_id": instance_id, "hung": verb == "hang"}
        if verb in ("cut", "restore"):
            which = set(body.get("links") or ["uplink", "eni"])
            if not which <= {"uplink", "eni"}:
                raise ValueError("links: a list of uplink and/or eni")
            with self.lock:
                cur = self.topo.cuts.setdefault(instance_id, set())
                if verb == "cut":
                    cur.update(which)
                else:
                    cur.difference_update(which)
                self.topo.reconcile()
            return {"instance_id": instance_id, "cuts": sorted(cur)}
        if verb == "exec":
            logfile = os.path.join(self.run_dir, f"{instance_id}-{len(self.topo.processes)}.log")
            proc = self._spawn(instance_id, entry["ns"], body["argv"], body.get("env") or {}, logfile)
            return {"pid": proc.pid, "log": logfile}
        if verb == "forwarding":
            # The lab's stand-in for a configured gateway, for the lab's own data-plane tests:
            # every attached interface up, forwarding on, no reverse-path filter.
            enabled = 1 if body.get("enabled", True) else 0
            netns.sysctl(entry["ns"], "net.ipv4.ip_forward", enabled)
            netns.sysctl(entry["ns"], "net.ipv4.conf.all.rp_filter", 0)
            for line in netns.ip("-o", "link", "show", ns=entry["ns"]).splitlines():
                name = line.split(":")[1].strip().split("@")[0]
                if name.startswith("ens"):
                    netns.sysctl(entry["ns"], f"net.ipv4.conf.{name}.rp_filter", 0)
                    netns.ip("link", "set", name, "up", ns=entry["ns"])
            return {"instance_id": instance_id, "forwarding": bool(enabled)}
        if verb == "imds":
            state = self.topo.imds_states[instance_id]
            if method == "PUT":
                for path, value in (body.get("set") or {}).items():
                    state.overrides[path.strip("/")] = value
                if body.get("expire_tokens"):
                    state.tokens.clear()
                if "fault" in body:
                    state.fault = {"mode": body["fault"].get("mode", "ok"),
                                   "delay_ms": body["fault"].get("delay_ms", 0)}
            return {"overrides": state.overrides, "fault": state.fault, "requests": state.requests}
        if verb == "networkd":
            # systemd-networkd in the instance (profile flag NETWORKD): status, reload (what
            # net-utils' refresh does, reloading in any case), refresh (reload only on a change),
            # restart.
            with self.lock:
                return self.topo.networkd_action(instance_id, body.get("action", "status"))
        raise KeyError(verb)

    # --- boot: what systemd starts when an instance comes up (PUT /lab/boot) -------------------

    def set_boot(self, body):
        """Run `argv` (after writing `files`) in every instance that comes up from now on."""
        argv = body.get("argv")
        if argv is not None and (not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)):
            raise ValueError("argv: a list of strings")
        for key in ("env", "files"):
            if not isinstance(body.get(key) or {}, dict):
                raise ValueError(f"{key}: an object of strings")
        with self.lock:
            self.boot_spec = {"argv": argv, "env": dict(body.get("env") or {}),
                              "files": dict(body.get("files") or {})} if argv else None
            # Instances that exist now are left alone (the tests started their agents).
            self.boot_skip |= {i.id for r in self.ec2().reservations.values() for i in r.instances}
            return {"spec": self.boot_spec, "skip": sorted(self.boot_skip)}

    def boot_tick(self):
        """With the lock held, after a reconcile: boot what came up, note what exited or went."""
        now = time.monotonic()
        for instance_id, rec in self.boots.items():
            if instance_id not in self.topo.instances and not rec["down"]:
                rec["down"] = True  # the namespace (and the process with it) is gone
        if self.boot_spec is None:
            return
        for instance_id, entry in list(self.topo.instances.items()):
            if instance_id in self.boot_skip:
                continue
            rec = self.boots.get(instance_id)
            if rec is None or rec["down"]:
                rec = self.boots[instance_id] = {
                    "state": "booting", "due": now + profile.draw("BOOT_S"), "up_at": time.time(),
                    "boots": (rec["boots"] + 1) if rec else 1, "down": False, "proc": None,
                    "log": os.path.join(self.run_dir, f"{instance_id}-boot.log"),
                    "notify_socket": os.path.join(self.run_dir, f"{instance_id}.notify"),
                    "notify": [], "ready_at": None, "status": None, "started_at": None, "error": None}
            if rec["state"] == "booting" and now >= rec["due"]:
                try:
                    self._boot(instance_id, entry, rec)
                except Exception as e:  # noqa: BLE001 - reported in the boot record
                    rec["state"], rec["error"] = "failed", f"{type(e).__name__}: {e}"
                    log(f"boot of {instance_id} failed:\n" + traceback.format_exc())

    def _boot(self, instance_id, entry, rec):
        spec = self.boot_spec
        inst = self.ec2().get_instance(instance_id)
        subs = {"{instance_id}": instance_id, "{zone}": inst.placement.zone, "{ns}": entry["ns"],
                "{run_dir}": self.run_dir,
                "{primary_ip}": inst.nics[0].private_ip_address if 0 in inst.nics else ""}

        def fill(text):
            for key, value in subs.items():
                text = text.replace(key, value)
            return text

        for path, content in spec["files"].items():
            path = fill(path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as f:
                f.write(fill(content))
        # NOTIFY_SOCKET, as systemd gives a Type=notify service: one datagram socket per instance.
        if os.path.exists(rec["notify_socket"]):
            os.unlink(rec["notify_socket"])
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(rec["notify_socket"])
        sock.settimeout(0.5)
        threading.Thread(target=self._notify_reader, args=(rec, sock), daemon=True).start()
        env = {k: fill(str(v)) for k, v in spec["env"].items()}
        env["NOTIFY_SOCKET"] = rec["notify_socket"]
        proc = self._spawn(instance_id, entry["ns"], [fill(a) for a in spec["argv"]], env, rec["log"])
        rec.update(state="started", proc=proc, started_at=time.time())
        log(f"booted {instance_id}: pid {proc.pid}, log {rec['log']}")

    def _spawn(self, instance_id, ns, argv, env, logfile):
        """`argv` inside the instance's namespace, its output appended to `logfile`; it dies
        with the instance (topology reaps it)."""
        full_env = dict(os.environ)
        full_env.update(env)
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns] + list(argv), env=full_env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.topo.processes.append((instance_id, proc))
        return proc

    def _notify_reader(self, rec, sock):
        with sock:
            while not rec["down"] and not self.stopping.is_set():
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                at, text = time.time(), data.decode("utf-8", "replace")
                rec["notify"].append({"at": at, "message": text})
                for line in text.splitlines():
                    if line == "READY=1" and rec["ready_at"] is None:
                        rec["ready_at"] = at
                    elif line.startswith("STATUS="):
                        rec["status"] = line[len("STATUS="):]

    def boot_view(self, instance_id):
        rec = self.boots.get(instance_id)
        if rec is None:
            return None
        proc = rec["proc"]
        code = proc.poll() if proc is not None else None
        return {"state": rec["state"], "boots": rec["boots"], "pid": proc.pid if proc else None,
                "log": rec["log"], "running": proc is not None and code is None, "exit_code": code,
                "up_at": rec["up_at"], "started_at": rec["started_at"], "error": rec["error"],
                "notify_socket": rec["notify_socket"], "notify": [m["message"] for m in rec["notify"]],
                "notify_at": [m["at"] for m in rec["notify"]], "ready": rec["ready_at"] is not None,
                "ready_at": rec["ready_at"], "status": rec["status"], "down": rec["down"]}

    def rebalance(self, instance_id, body):
        """A rebalance recommendation in IMDS; with Capacity Rebalancing on, a replacement."""
        with self.lock:
            state = self.topo.imds_states.get(instance_id)
            if state is None or instance_id not in self.topo.instances:
                raise KeyError(f"running instance {instance_id}")
            notice = body.get("notice_time") or mends._iso()
            state.overrides["events/recommendations/rebalance"] = json.dumps({"noticeTime": notice})
            group, _ = mends._find_state(self.asg(), instance_id)
            enabled = body.get("capacity_rebalance")
            if enabled is None:
                enabled = profile.flag("CAPACITY_REBALANCE") or bool(group and group.capacity_rebalance)
            task = mends.start_rebalance(self.asg(), instance_id) if enabled and group else None
            return {"instance_id": instance_id, "notice_time": notice, "capacity_rebalance": bool(enabled),
                    "group": group.name if group else None, "task": dict(task) if task else None}

    # --- running -------------------------------------------------------------------------------

    def record_view(self):
        """A view of EC2's state now for the lagging reads (lock held): after every write, an
        API call's or one of the lab's own verbs', and from the ticker."""
        self.views.record(self.ec2())
        self.last_view = time.monotonic()

    def ticker(self):
        while not self.stopping.wait(0.1):
            try:
                with self.lock:
                    mends.expire_lifecycle_actions(self.asg())
                    mends.asg_tick(self.asg())
                    ended = mends.aws_tick(self.ec2())
                    self.background.tick()
                    # What changed without an API call reaches the lagging views: an attachment
                    # or a shutdown ending at once (else reads would show it at once, then go
                    # back to before it once a view was recorded), anything else (a lifecycle
                    # timeout, a launch) within a second.
                    if ended or time.monotonic() - self.last_view >= 1.0:
                        self.record_view()
                    self.topo.reconcile()
                    self.boot_tick()
                    # Reap what exited (killed with its instance), so no zombie outlives it.
                    self.topo.processes = [(i, p) for i, p in self.topo.processes if p.poll() is None]
            except Exception:  # noqa: BLE001 - keep the lab alive; say what broke
                log("tick failed:\n" + traceback.format_exc())
                time.sleep(1)

    def shutdown(self, *_):
        if self.stopping.is_set():
            return
        self.stopping.set()
        log("tearing down")
        with self.lock:
            self.topo.down()
        if not os.environ.get("GATEWAY_LAB_KEEP_LOGS"):
            shutil.rmtree(self.run_dir, ignore_errors=True)
        log("down")
        os._exit(0)


FAULT_KINDS = ("throttle", "5xx", "lost", "latency", "stuck-attaching", "stuck-detaching")


def _stuck(body, status):
    """An ENI attachment that EC2 never finishes: in a DescribeNetworkInterfaces answer, every
    attached ENI and its attachment read `status` (`attaching` or `detaching`), while moto
    itself finished the call. Unattached ENIs stay `available`."""
    text = body.decode()
    text = re.sub(r"<status>(in-use|attached)</status>", f"<status>{status}</status>", text)
    return text.encode()


def serve(app, sock):
    server = make_server(sock.getsockname()[0], sock.getsockname()[1], app, threaded=True, fd=sock.fileno())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab-id", default=uuid.uuid4().hex[:4])
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--die-with-parent", action="store_true")
    args = parser.parse_args()

    if args.die_with_parent:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    run_dir = args.run_dir or f"/run/gateway-lab/{args.lab_id}"
    os.makedirs(run_dir, exist_ok=True)
    # Written before any namespace exists, so `gwlab down --all` never mistakes a lab that is
    # still starting for one whose labd died.
    with open(os.path.join(run_dir, "pid"), "w") as f:
        f.write(str(os.getpid()))

    mends.apply()
    lab = Lab(args.lab_id, run_dir)
    signal.signal(signal.SIGTERM, lab.shutdown)
    signal.signal(signal.SIGINT, lab.shutdown)
    try:
        lab.topo.up()
        host_sock = netns.socket_in(None, netns.socket.AF_INET, netns.socket.SOCK_STREAM, bind=("127.0.0.1", args.port))
        host_sock.listen(128)
        lab.port = host_sock.getsockname()[1]
        vpc_sock = netns.socket_in(lab.topo.inet, netns.socket.AF_INET, netns.socket.SOCK_STREAM,
                                   bind=(topology.API_ADDR, 80))
        vpc_sock.listen(128)
        serve(lab.host_app, host_sock)
        serve(lab.api_app, vpc_sock)
        lab.streams = topology.Streams(lab.topo.inet)
        threading.Thread(target=lab.ticker, daemon=True).start()
        # Warm moto up: its first EC2 call loads the AMI catalogue (~1 s).
        with lab.lock:
            lab.ec2().describe_images()
    except Exception:
        log("failed to start:\n" + traceback.format_exc())
        lab.topo.down()
        shutil.rmtree(run_dir, ignore_errors=True)
        sys.exit(1)
    info = lab.info()
    with open(os.path.join(run_dir, "lab.json"), "w") as f:
        json.dump(info, f)
    print(json.dumps(info), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
