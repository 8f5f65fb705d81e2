"""What makes the lab behave like AWS under `GATEWAY_LAB_PROFILE=aws` (profile.py has the figures).

- `Buckets`: EC2's and Auto Scaling's request-rate token buckets, one per action (per account and
  region), shared by every caller of the lab: all instances and the host. `Background` spends
  tokens the way other tools of the same account would.
- `Views`: eventually consistent reads. After every successful write labd records a view of four
  kinds of state (routes, tags, ENI attachments, instance states); each view of each kind becomes
  visible to Describe* calls only after its own drawn lag. A read swaps the chosen views into
  moto's objects, lets moto answer, and swaps the present back, all under labd's lock.
- `Transitions`: an attachment stays `attaching` / `detaching` for a drawn time; a detach takes
  effect in moto only when it ends (unless forced).
- `Shutdowns`: a terminated instance stays `shutting-down`, its OS stopping its services and
  powering off, its attached ENIs still attached, until it is finally `terminated`.

Everything here is called with labd's lock held.
"""

import copy
import threading
import time
from collections import defaultdict

import profile

# --- throttling --------------------------------------------------------------------------------

_READ_PREFIXES = ("Describe", "Get", "List", "Search")


def is_read(action):
    return action.startswith(_READ_PREFIXES)


def _unfiltered(params):
    """AWS's 'unfiltered and unpaginated': no Filter.N and no MaxResults/NextToken. (Whether an
    ID list counts as a filter AWS does not say; the lab counts it as one.)"""
    for key in params:
        if key.startswith("Filter") or key in ("MaxResults", "NextToken") or ".1" in key:
            return False
    return True


class Buckets:
    def __init__(self):
        self.lock = threading.Lock()
        self.state = {}  # key -> [tokens, last refill (monotonic)]
        self.refused = defaultdict(int)  # "service:action" -> calls refused
        self.taken = defaultdict(int)
        self.overrides = {k: tuple(float(x) for x in v.split("/", 1))
                          for k, v in profile.pairs("BUCKETS").items()}
        self.enabled = profile.flag("THROTTLE")

    def spec(self, service, action, params):
        """(bucket key, burst, refill per second) of one call."""
        if service == "autoscaling":
            burst, refill = profile.ASG_SHARED
            key = "autoscaling:*"  # one bucket for every Auto Scaling action
        elif action in profile.EC2_ACTIONS:
            burst, refill = profile.EC2_ACTIONS[action]
            key = f"ec2:{action}"
        elif is_read(action):
            if action in profile.EC2_UNFILTERED_SMALL and _unfiltered(params):
                burst, refill = profile.EC2_CATEGORIES["unfiltered-non-mutating"]
                key = f"ec2:{action}:unfiltered"
            else:
                burst, refill = profile.EC2_CATEGORIES["non-mutating"]
                key = f"ec2:{action}"
        else:
            burst, refill = profile.EC2_CATEGORIES["mutating"]
            key = f"ec2:{action}"
        if action in self.overrides:
            burst, refill = self.overrides[action]
        return key, burst, refill

    def take(self, key, burst, refill, who="api"):
        """Spends one token; False when the bucket is empty (the call is throttled)."""
        now = time.monotonic()
        with self.lock:
            tokens, last = self.state.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * refill)
            ok = tokens >= 1.0
            if ok:
                tokens -= 1.0
                self.taken[f"{who}:{key}"] += 1
            else:
                self.refused[f"{who}:{key}"] += 1
            self.state[key] = (tokens, now)
            return ok

    def admit(self, service, action, params):
        if not self.enabled or not action:
            return True
        key, burst, refill = self.spec(service, action, params)
        return self.take(key, burst, refill)

    def report(self):
        with self.lock:
            return {"enabled": self.enabled, "taken": dict(self.taken), "refused": dict(self.refused),
                    "tokens": {k: round(v[0], 2) for k, v in self.state.items()}}


class Background:
    """Other tools in the same account: N tokens/s of chosen actions, spent every 100 ms."""

    def __init__(self, buckets, rates=None):
        self.buckets = buckets
        self.rates = {k: float(v) for k, v in (rates if rates is not None else profile.pairs("BACKGROUND")).items()}
        self.owed = defaultdict(float)
        self.last = time.monotonic()
        # Ticked by labd's ticker and before every admitted call, from several threads.
        self.lock = threading.Lock()

    def set(self, rates):
        self.rates = {k: float(v) for k, v in rates.items()}

    def tick(self):
        with self.lock:
            self._tick()

    def _tick(self):
        now = time.monotonic()
        dt, self.last = now - self.last, now
        if not self.buckets.enabled:
            return
        for action, rate in self.rates.items():
            self.owed[action] += rate * dt
            service = "autoscaling" if action in ("CompleteLifecycleAction", "DescribeAutoScalingGroups",
                                                  "DescribeAutoScalingInstances", "SetInstanceHealth",
                                                  "RecordLifecycleActionHeartbeat") else "ec2"
            # Other tools filter their reads: they spend the filtered bucket.
            key, burst, refill = self.buckets.spec(service, action, {"Filter.1.Name": "x"})
            while self.owed[action] >= 1.0:
                self.owed[action] -= 1.0
                self.buckets.take(key, burst, refill, who="background")


# --- eventually consistent reads ------------------------------------------------------------------

KINDS = ("routes", "tags", "enis", "instances")


def _capture(ec2):
    return {
        "routes": {rt.id: (rt, {rid: copy.copy(r) for rid, r in rt._routes.items()})
                   for rt in ec2.route_tables.values()},
        "tags": {rid: dict(tags) for rid, tags in ec2.tags.items()},
        "enis": (
            {eni.id: (eni, eni.instance, eni.attachment_id, eni.attach_time, eni.status, eni.device_index,
                      getattr(eni, "_lab_attach_status", "attached"))
             for eni in ec2.enis.values()},
            {inst.id: (inst, dict(inst.nics)) for res in ec2.reservations.values() for inst in res.instances},
        ),
        "instances": {inst.id: (inst, copy.copy(inst._state))
                      for res in ec2.reservations.values() for inst in res.instances},
    }


def _live(ec2):
    """The present, as object references to put back (no copies: exactly what moto holds)."""
    return {
        "routes": {rt.id: (rt, rt._routes) for rt in ec2.route_tables.values()},
        "tags": ec2.tags,
        "enis": (
            {eni.id: (eni, eni.instance, eni.attachment_id, eni.attach_time, eni.status, eni.device_index,
                      getattr(eni, "_lab_attach_status", "attached"))
             for eni in ec2.enis.values()},
            {inst.id: (inst, inst.nics) for res in ec2.reservations.values() for inst in res.instances},
        ),
        "instances": {inst.id: (inst, inst._state)
                      for res in ec2.reservations.values() for inst in res.instances},
    }


def _put(ec2, kind, data):
    if kind == "routes":
        for rt, routes in data.values():
            rt._routes = routes
    elif kind == "tags":
        if isinstance(data, defaultdict):
            ec2.tags = data
        else:
            fresh = defaultdict(dict)
            fresh.update({k: dict(v) for k, v in data.items()})
            ec2.tags = fresh
    elif kind == "enis":
        enis, nics = data
        for eni, inst, att, at, status, index, att_status in enis.values():
            eni.instance, eni.attachment_id, eni.attach_time = inst, att, at
            eni.status, eni.device_index, eni._lab_attach_status = status, index, att_status
        for inst, n in nics.values():
            inst.nics = n
    elif kind == "instances":
        for inst, state in data.values():
            inst._state = state


class Views:
    def __init__(self):
        lo, hi = profile.bounds("LAG_S")
        self.enabled = hi > 0
        self.max_lag = hi
        self.nonmonotonic = profile.flag("NONMONOTONIC")
        self.views = []  # [(t, data, {kind: visible_at})], oldest first
        self.stale_reads = defaultdict(int)  # kind -> reads answered from an older view

    def record(self, ec2):
        if not self.enabled:
            return
        now = time.monotonic()
        visible = {}
        for kind in KINDS:
            at = now + profile.draw("LAG_S")
            if self.views and not self.nonmonotonic:
                at = max(at, self.views[-1][2][kind])
            visible[kind] = at
        self.views.append((now, _capture(ec2), visible))
        # Keep what a read may still be shown: everything newer than the longest lag, and the
        # newest view older than that (the floor every read can fall back to).
        horizon = now - self.max_lag - 0.5
        while len(self.views) > 1 and self.views[1][0] < horizon and all(
                v <= now for v in self.views[1][2].values()):
            self.views.pop(0)

    def settle(self, ec2):
        """Everything written so far is visible to every read from now on."""
        if not self.enabled:
            return
        now = time.monotonic()
        self.views = [(now, _capture(ec2), {kind: now for kind in KINDS})]

    def _pick(self, kind, now):
        if self.nonmonotonic:
            target = now - profile.draw("LAG_S")
            chosen = None
            for t, data, _ in self.views:
                if t <= target:
                    chosen = data
            return chosen if chosen is not None else self.views[0][1]
        chosen = None
        for _, data, visible in self.views:
            if visible[kind] <= now:
                chosen = data
        return chosen if chosen is not None else self.views[0][1]

    def answer(self, ec2, fn):
        """Runs moto's answer `fn()` against the views due now; the present is put back after."""
        if not self.enabled or not self.views:
            return fn()
        now = time.monotonic()
        live = _live(ec2)
        newest = self.views[-1][1]
        swapped = []
        try:
            for kind in KINDS:
                data = self._pick(kind, now)[kind]
                if data is newest[kind]:
                    continue  # the newest view is the present
                self.stale_reads[kind] += 1
                _put(ec2, kind, data)
                swapped.append(kind)
            return fn()
        finally:
            for kind in swapped:
                _put(ec2, kind, live[kind])

    def report(self):
        return {"enabled": self.enabled, "views": len(self.views), "nonmonotonic": self.nonmonotonic,
                "stale_reads": dict(self.stale_reads)}


# --- slow attachments ------------------------------------------------------------------------------


class Transitions:
    def __init__(self):
        self.pending = {}  # eni id -> {"status", "until", "eni"}
        self.force = False  # set by labd around a DetachNetworkInterface with Force=true
        self.done = []  # (eni id, status, seconds)

    def begin(self, eni, status, seconds):
        self.pending[eni.id] = {"status": status, "until": time.monotonic() + seconds, "eni": eni,
                                "began": time.monotonic()}
        eni.status = status
        eni._lab_attach_status = status

    def status(self, eni_id):
        entry = self.pending.get(eni_id)
        return entry["status"] if entry else None

    def finish(self, eni_id):
        """Ends a transition; answers the ENI when it was detaching: the caller detaches it."""
        entry = self.pending.pop(eni_id, None)
        if entry is None:
            return None
        eni = entry["eni"]
        eni._lab_attach_status = "attached"
        self.done.append((eni_id, entry["status"], round(time.monotonic() - entry["began"], 2)))
        del self.done[:-1000]
        if entry["status"] == "detaching":
            return eni
        if eni.instance is not None:
            eni.status = "in-use"
        return None

    def due(self):
        now = time.monotonic()
        return [k for k, v in self.pending.items() if v["until"] <= now]


# --- slow deaths ----------------------------------------------------------------------------------


class Shutdowns:
    # The OS's own shutdown (systemd stopping services, then power-off) takes a few seconds of
    # the `shutting-down` time; after it nothing on the instance answers.
    POWEROFF_S = 5.0

    def __init__(self):
        self.pending = {}  # instance id -> {"until", "poweroff_at", "signalled", "off"}

    def begin(self, instance_id, seconds):
        now = time.monotonic()
        self.pending[instance_id] = {"until": now + seconds, "began": now,
                                     "poweroff_at": now + min(self.POWEROFF_S, seconds),
                                     "signalled": False, "off": False}

    def due(self):
        now = time.monotonic()
        return [k for k, v in self.pending.items() if v["until"] <= now]

    def hard(self, instance_id):
        """No OS shutdown (TerminateInstances SkipOsShutdown=true, or the lab's own terminate
        verb): the instance stops answering at once, still `shutting-down` with its ENIs."""
        sd = self.pending.get(instance_id)
        if sd is not None:
            sd["signalled"] = True
            sd["poweroff_at"] = time.monotonic()
