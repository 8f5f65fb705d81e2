"""Mends to moto 5.2.5 so that it behaves like AWS where gateway-agent depends on it.

Each mend is a patch applied in the moto server's own process (`apply()`), so the agent talks to
an unmodified moto HTTP server with AWS's semantics restored. Every mend is proven against the
running server by the lab's tests (lab/tests/lab/mends.rs, asg.rs, awsprofile.rs):

1. a route to an ENI reads `blackhole` while the ENI is detached or its instance is not running;
2. terminating an instance detaches its DeleteOnTermination=false ENIs (they become `available`);
3. `CreateRoute` onto an existing destination fails with `RouteAlreadyExists`;
4. `AttachNetworkInterface` refuses an ENI in use, another zone, a terminated instance and a taken
   device index, with AWS's error codes;
5. Auto Scaling lifecycle hooks hold launches in `Pending:Wait` and terminations in
   `Terminating:Wait` until `CompleteLifecycleAction` or the heartbeat timeout applies the
   DefaultResult; `RecordLifecycleActionHeartbeat` extends the wait; `SetInstanceHealth Unhealthy`
   replaces the instance like an ASG health check does;
6. anything moto has not implemented (a filter, an action) answers an AWS-shaped 400 error
   instead of an HTML 500 page, so the SDK reports a code instead of retrying a 500 three times.

7. private IPs handed out avoid AWS's reserved addresses (the first four and the last of a subnet)
   and never repeat, so an instance never lands on the subnet router's address.
8. `StopInstances` and `StartInstances` refuse a terminated (or shutting-down) instance with
   `IncorrectInstanceState` instead of bringing it back (nat_monitor.sh stops a dead peer).
9. the group's own timing and policies: a launch appears `LAUNCH_S` after the group decides (and
   counts toward capacity meanwhile); launches and terminations are scaling activities
   (`DescribeScalingActivities`); `StartInstanceRefresh` / `DescribeInstanceRefreshes` /
   `CancelInstanceRefresh` replace instances under the maintenance policy; Capacity Rebalancing
   (labd's rebalance verb) launches a replacement before terminating through the hook.
10. the aws profile's slow attachments and deaths (awsmodel.py): an attachment reads
   `attaching` for ATTACH_S (the route blackhole meanwhile); a detach reads `detaching` for
   DETACH_S, still attached, and only then takes effect in moto (at once with Force=true; a
   second detach meanwhile is `IncorrectState`); TerminateInstances leaves the instance
   `shutting-down` for SHUTDOWN_S with its ENIs attached and their routes active.

Fault injection (throttling, 5xx, latency) lives in labd's WSGI middleware, not here.
"""

import copy
import datetime
import ipaddress
import random
import threading
import time
import uuid

from moto.autoscaling import models as asg_models
from moto.autoscaling.exceptions import AutoscalingClientError, ValidationError
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult, BaseResponse, EmptyResult
from moto.ec2.exceptions import EC2ClientError, RouteAlreadyExistsError
from moto.ec2.models import elastic_network_interfaces as eni_models
from moto.ec2.models import instances as instance_models
from moto.ec2.models import route_tables as rt_models
from moto.ec2.models.instances import InstanceState

import awsmodel
import profile

ASG_NAME_TAG = "aws:autoscaling:groupName"
LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
# AWS states an instance can be in while it still counts toward the group's capacity.
COUNTED_STATES = {"Pending", "Pending:Wait", "Pending:Proceed", "InService"}


class Lifecycle:
    """Open lifecycle actions, their deadlines, and a record of how each one ended."""

    def __init__(self):
        self.lock = threading.RLock()
        self.open = {}  # instance_id -> action dict
        self.history = []  # finished actions, oldest first
        # Section 9: the group's own timing and policies.
        self.pending = []  # launches the group decided on, not yet visible (LAUNCH_S)
        self.activities = []  # scaling activities, oldest first
        self.tasks = []  # replacements in progress: instance refresh steps, rebalancing
        self.refreshes = []  # instance refreshes, oldest first
        # Set while labd builds a scenario: the fleet a test starts from is already there.
        self.immediate = False

    def reset(self):
        with self.lock:
            self.open.clear()
            self.history.clear()
            self.pending.clear()
            self.activities.clear()
            self.tasks.clear()
            self.refreshes.clear()


LIFECYCLE = Lifecycle()
# The aws profile's slow attachments and slow deaths (awsmodel.py); idle under `fast`.
TRANSITIONS = awsmodel.Transitions()
SHUTDOWNS = awsmodel.Shutdowns()


# --- 1. route state ---------------------------------------------------------------------------


def _route_state(route):
    target_eni = route.interface
    if target_eni is None and route.instance is not None:
        return "active" if route.instance.state == "running" else "blackhole"
    if target_eni is None:
        return "active"
    inst = target_eni.instance
    if inst is None or target_eni.attachment_id is None:
        return "blackhole"
    if TRANSITIONS.status(target_eni.id) == "attaching":
        return "blackhole"
    # A dying instance keeps its attached ENIs until it is terminated: the route reads
    # blackhole only once the ENI detaches.
    return "active" if inst.state in ("running", "shutting-down") else "blackhole"


# --- 2. terminate releases persistent ENIs ----------------------------------------------------

_orig_terminate = instance_models.Instance.terminate


def _terminate(self):
    if self.state in ("shutting-down", "terminated") and self.id in SHUTDOWNS.pending:
        return copy.copy(self._state)
    seconds = profile.draw("SHUTDOWN_S")
    if seconds > 0 and self.state in ("pending", "running", "stopping", "stopped"):
        previous = copy.copy(self._state)
        self._state = InstanceState("shutting-down", 32)
        SHUTDOWNS.begin(self.id, seconds)
        return previous
    return _terminate_now(self)


def _terminate_now(self):
    # The primary interface (device 0) goes with the instance; attached ones stay behind.
    keep = [nic for index, nic in self.nics.items() if index != 0 and not nic.delete_on_termination]
    previous = _orig_terminate(self)
    for nic in keep:
        if nic.instance is self:
            self.detach_eni(nic)
    return previous


# --- 3. CreateRoute never overwrites ----------------------------------------------------------

_orig_create_route = rt_models.RouteBackend.create_route


def _create_route(self, route_table_id, destination_cidr_block, *args, **kwargs):
    destination_ipv6 = args[0] if args else kwargs.get("destination_ipv6_cidr_block")
    if not kwargs.get("local"):
        table = self.get_route_table(route_table_id)
        for route in table._routes.values():
            if route.local:
                continue
            if destination_cidr_block and route.destination_cidr_block == destination_cidr_block:
                raise RouteAlreadyExistsError(destination_cidr_block)
            if destination_ipv6 and route.destination_ipv6_cidr_block == destination_ipv6:
                raise RouteAlreadyExistsError(destination_ipv6)
    return _orig_create_route(self, route_table_id, destination_cidr_block, *args, **kwargs)


# --- 4. AttachNetworkInterface validation -----------------------------------------------------

_orig_attach = eni_models.NetworkInterfaceBackend.attach_network_interface


def _attach_network_interface(self, eni_id, instance_id, device_index):
    eni = self.get_network_interface(eni_id)
    instance = self.get_instance(instance_id)
    if eni.instance is not None:
        raise EC2ClientError("InvalidNetworkInterface.InUse", f"Interface: [{eni_id}] in use.")
    if instance.state in ("terminated", "shutting-down"):
        raise EC2ClientError(
            "IncorrectInstanceState",
            f"The instance '{instance_id}' is not in a valid state for this operation.",
        )
    if eni.availability_zone != instance.placement.zone:
        raise EC2ClientError(
            "InvalidParameterCombination",
            "You may not attach a network interface to an instance if they are not in the same "
            "availability zone",
        )
    if int(device_index) in instance.nics:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"Instance '{instance_id}' already has an interface attached at device index "
            f"'{device_index}'.",
        )
    if TRANSITIONS.status(eni_id):
        raise EC2ClientError("InvalidNetworkInterface.InUse", f"Interface: [{eni_id}] in use.")
    attachment = _orig_attach(self, eni_id, instance_id, device_index)
    seconds = profile.draw("ATTACH_S")
    if seconds > 0:
        TRANSITIONS.begin(eni, "attaching", seconds)
    return attachment


_orig_detach = eni_models.NetworkInterfaceBackend.detach_network_interface


def _detach_network_interface(self, attachment_id):
    """Detach takes DETACH_S (`detaching`, still attached) unless forced, as EC2 does."""
    eni = next((e for e in self.enis.values() if e.attachment_id == attachment_id), None)
    if eni is None:
        return _orig_detach(self, attachment_id)
    busy = TRANSITIONS.status(eni.id)
    if TRANSITIONS.force:
        TRANSITIONS.pending.pop(eni.id, None)
        eni._lab_attach_status = "attached"
        return _orig_detach(self, attachment_id)
    if busy:
        raise EC2ClientError(
            "IncorrectState",
            f"Interface '{eni.id}' is {busy}: the attachment '{attachment_id}' cannot be detached now.",
        )
    seconds = profile.draw("DETACH_S")
    if seconds <= 0:
        return _orig_detach(self, attachment_id)
    TRANSITIONS.begin(eni, "detaching", seconds)
    return None


def aws_tick(ec2):
    """Ends the attachments and shutdowns whose time has come (labd's ticker, lock held);
    `True` when it ended any (EC2's state changed: the lagging views must record it now)."""
    changed = False
    for eni_id in TRANSITIONS.due():
        changed = True
        eni = TRANSITIONS.finish(eni_id)
        if eni is not None and eni.instance is not None:
            eni.instance.detach_eni(eni)
    for instance_id in SHUTDOWNS.due():
        SHUTDOWNS.pending.pop(instance_id, None)
        try:
            inst = ec2.get_instance(instance_id)
        except Exception:  # noqa: BLE001 - gone with a reset
            continue
        changed = True
        _terminate_now(inst)
    return changed


# --- 5. Auto Scaling lifecycle hooks ----------------------------------------------------------


def _hook(group, transition):
    backend = group.autoscaling_backend
    for hook in backend.lifecycle_hooks.values():
        if hook.auto_scaling_group_name == group.name and hook.lifecycle_transition == transition:
            return hook
    return None


def _open_action(state, hook, transition, replace=False):
    now = time.monotonic()
    action = {
        "token": str(uuid.uuid4()),
        "instance_id": state.instance.id,
        "group": state.auto_scaling_group_name,
        "hook": hook.name,
        "transition": transition,
        "heartbeat_timeout": int(hook.heartbeat_timeout),
        "default_result": hook.default_result,
        "deadline": now + int(hook.heartbeat_timeout),
        "global_deadline": now + min(100 * int(hook.heartbeat_timeout), 172800),
        "replace": replace,
        "opened_at": time.time(),
        "heartbeats": 0,
    }
    with LIFECYCLE.lock:
        LIFECYCLE.open[state.instance.id] = action
    return action


def _active_instances(self):
    return [s for s in self.instance_states if s.lifecycle_state in COUNTED_STATES]


_orig_replace_instances = asg_models.FakeAutoScalingGroup.replace_autoscaling_group_instances


def _replace_instances(self, count_needed, propagated_tags, cause=None):
    """The group decided to launch `count_needed` instances: each appears LAUNCH_S later (9)."""
    if count_needed <= 0:
        return []
    if cause is None:
        have = len(self.active_instances()) + len(_pending_of(self))
        cause = (f"At {_iso()} an instance was started in response to a difference between desired "
                 f"and actual capacity, increasing the capacity from {have} to {have + count_needed}.")
    acts = [_activity(self.name, "launch", "Launching a new EC2 instance", cause) for _ in range(count_needed)]
    return _schedule_launches(self, acts)


def _launch_now(group, activities, task_id=None):
    """RunInstances for the group now, one instance per activity, through the launch hook."""
    before = {s.instance.id for s in group.instance_states}
    _orig_replace_instances(group, len(activities), group.get_propagated_tags())
    hook = _hook(group, LAUNCHING)
    new = [s for s in group.instance_states if s.instance.id not in before]
    for state, act in zip(new, activities):
        act["instance_id"] = state.instance.id
        act["description"] = f"Launching a new EC2 instance: {state.instance.id}"
        act["appeared_at"] = time.time()
        if hook is None:
            state.lifecycle_state = "InService"
            _end_activity(act, "Successful")
        else:
            state.lifecycle_state = "Pending:Wait"
            act["status"] = "MidLifecycleAction"
            _open_action(state, hook, LAUNCHING)
    task = _task(task_id)
    if task is not None and new:
        task["new"] = new[0].instance.id
    return new


def _begin_termination(group, state, replace, cause=None):
    """Start terminating `state` the way an ASG does: through the termination hook if any."""
    iid = state.instance.id
    act = _activity(group.name, "terminate", f"Terminating EC2 instance: {iid}",
                    cause or f"At {_iso()} instance {iid} was taken out of service in response to a user request.",
                    instance_id=iid)
    hook = _hook(group, TERMINATING)
    if hook is None:
        _finish_termination(group, state, replace)
        return
    state.lifecycle_state = "Terminating:Wait"
    act["status"] = "MidLifecycleAction"
    _open_action(state, hook, TERMINATING, replace=replace)
    if replace:
        _fill(group)


def _finish_termination(group, state, replace):
    backend = group.autoscaling_backend
    group.instance_states = [s for s in group.instance_states if s is not state]
    if state.instance.state not in ("terminated",):
        backend.ec2_backend.terminate_instances([state.instance.id])
    state.lifecycle_state = "Terminated"
    _end_activity(_instance_activity(state.instance.id, "terminate"), "Successful")
    if replace:
        _fill(group)


def _fill(group):
    # A launch the group already decided on counts: it must not launch twice (9).
    missing = (group.desired_capacity or 0) - len(group.active_instances()) - len(_pending_of(group))
    if missing > 0:
        group.replace_autoscaling_group_instances(missing, group.get_propagated_tags())


_orig_set_desired = asg_models.FakeAutoScalingGroup.set_desired_capacity


def _set_desired_capacity(self, new_capacity):
    pending = _pending_of(self)
    if (_hook(self, TERMINATING) is None and not pending) or self.mixed_instances_policy:
        return _orig_set_desired(self, new_capacity)
    self.desired_capacity = self.min_size if new_capacity is None else new_capacity
    active = self.active_instances()
    delta = (self.desired_capacity or 0) - len(active) - len(pending)
    if delta > 0:
        self.replace_autoscaling_group_instances(delta, self.get_propagated_tags())
    elif delta < 0:
        # Launches not made yet are called off first (the latest first); a refresh's are kept.
        for p in [p for p in reversed(pending) if p["task_id"] is None][: -delta]:
            with LIFECYCLE.lock:
                LIFECYCLE.pending = [q for q in LIFECYCLE.pending if q is not p]
            _end_activity(p["activity"], "Cancelled", "the desired capacity was lowered")
            delta += 1
        victims = [s for s in active if not s.protected_from_scale_in][: max(0, -delta)]
        for state in victims:
            _begin_termination(self, state, replace=False)


def _find_state(backend, instance_id):
    for group in backend.autoscaling_groups.values():
        for state in group.instance_states:
            if state.instance.id == instance_id:
                return group, state
    return None, None


def _terminate_instance(self, instance_id, should_decrement):
    group, state = _find_state(self, instance_id)
    if state is None:
        raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
    original_size = group.desired_capacity
    if should_decrement:
        group.desired_capacity = (group.desired_capacity or 0) - 1
    activity = asg_models.TerminateInstanceActivity(state.instance, original_size)
    _begin_termination(group, state, replace=not should_decrement, cause=activity.cause)
    return activity


def _set_instance_health(self, instance_id, health_status):
    group, state = _find_state(self, instance_id)
    if state is None:
        raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
    state.health_status = health_status
    # An ASG replaces an unhealthy instance at once; one already leaving is left alone.
    if health_status == "Unhealthy" and state.lifecycle_state in COUNTED_STATES:
        with LIFECYCLE.lock:
            LIFECYCLE.open.pop(instance_id, None)
        _end_activity(_instance_activity(instance_id, "launch"), "Cancelled", "the instance was marked Unhealthy")
        _begin_termination(group, state, replace=True,
                           cause=f"At {_iso()} an instance was taken out of service in response to a user health-check.")


def _close(backend, action, result, how):
    """End an open action with CONTINUE/ABANDON, exactly as AWS does for its transition."""
    with LIFECYCLE.lock:
        LIFECYCLE.open.pop(action["instance_id"], None)
        done = dict(action, result=result, how=how, closed_at=time.time())
        done.pop("deadline", None)
        done.pop("global_deadline", None)
        LIFECYCLE.history.append(done)
    group, state = _find_state(backend, action["instance_id"])
    if state is None:
        return
    if action["transition"] == LAUNCHING:
        if result == "CONTINUE":
            state.lifecycle_state = "InService"
            _end_activity(_instance_activity(state.instance.id, "launch"), "Successful")
        else:
            # ABANDON on launch: the instance is terminated and the group launches another.
            _end_activity(_instance_activity(state.instance.id, "launch"), "Failed",
                          f"Instance failed to complete user's Lifecycle Action: Lifecycle Action with "
                          f"token {action['token']} was abandoned: {how} with ABANDON Result")
            _finish_termination(group, state, replace=True)
    else:
        _finish_termination(group, state, replace=False)


def _lookup_action(params):
    instance_id = params.get("InstanceId")
    token = params.get("LifecycleActionToken")
    group = params.get("AutoScalingGroupName")
    hook = params.get("LifecycleHookName")
    if not instance_id and not token:
        raise ValidationError("Either InstanceId or LifecycleActionToken must be specified.")
    with LIFECYCLE.lock:
        for action in LIFECYCLE.open.values():
            if action["group"] != group or action["hook"] != hook:
                continue
            if instance_id and action["instance_id"] != instance_id:
                continue
            if token and action["token"] != token:
                continue
            return action
    if token:
        raise ValidationError(f"No active Lifecycle Action found with token {token}")
    raise ValidationError(f"No active Lifecycle Action found with instance ID {instance_id}")


def _complete_lifecycle_action(self):
    params = self._get_params()
    result = params.get("LifecycleActionResult")
    if result not in ("CONTINUE", "ABANDON"):
        raise ValidationError(
            f"Value '{result}' at 'lifecycleActionResult' failed to satisfy constraint: "
            "Member must be one of [CONTINUE, ABANDON]"
        )
    action = _lookup_action(params)
    _close(self.autoscaling_backend, action, result, "CompleteLifecycleAction")
    return EmptyResult()


def _record_lifecycle_action_heartbeat(self):
    action = _lookup_action(self._get_params())
    with LIFECYCLE.lock:
        action["heartbeats"] += 1
        action["deadline"] = min(
            time.monotonic() + action["heartbeat_timeout"], action["global_deadline"]
        )
    return EmptyResult()


def expire_lifecycle_actions(backend):
    """Apply the DefaultResult to every action whose heartbeat timeout has passed."""
    now = time.monotonic()
    with LIFECYCLE.lock:
        expired = [a for a in LIFECYCLE.open.values() if min(a["deadline"], a["global_deadline"]) <= now]
    for action in expired:
        _close(backend, action, action["default_result"], "HeartbeatTimeout")
    return len(expired)


def target_lifecycle_state(backend, instance_id):
    """What IMDS `autoscaling/target-lifecycle-state` says for this instance (None: not in an ASG)."""
    _, state = _find_state(backend, instance_id)
    if state is None:
        return None
    if state.lifecycle_state.startswith("Terminating") or state.lifecycle_state == "Terminated":
        return "Terminated"
    if state.lifecycle_state.startswith("Standby"):
        return "Standby"
    return "InService"


# --- 9. the group's own timing and policies ---------------------------------------------------
#
# Under the `aws` profile a launch the group decides on appears LAUNCH_S later (pending, not yet
# visible, but counted toward the desired capacity so the group never launches twice); every
# launch and termination is a scaling activity (DescribeScalingActivities); StartInstanceRefresh,
# DescribeInstanceRefreshes and CancelInstanceRefresh run a rolling replacement under the instance
# maintenance policy (launch-before-terminate or terminate-and-launch); labd's rebalance verb runs
# a Capacity Rebalancing replacement. The ticker drives it all through `asg_tick` (lock held).

LBT = "launch-before-terminate"
TAL = "terminate-and-launch"
POLICIES = (LBT, TAL)
REASONS = {"refresh": "an instance refresh", "rebalance": "an EC2 instance rebalance recommendation"}
FINAL = ("Successful", "Failed", "Cancelled")


def _iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def _activity(group_name, kind, description, cause, instance_id=None):
    act = {"activity_id": str(uuid.uuid4()), "group": group_name, "kind": kind,
           "instance_id": instance_id, "description": description, "cause": cause,
           "status": "InProgress", "status_message": None, "start_time": time.time(),
           "end_time": None, "progress": 0}
    with LIFECYCLE.lock:
        LIFECYCLE.activities.append(act)
        del LIFECYCLE.activities[:-5000]
    return act


def _end_activity(act, status, message=None):
    if act is None or act["end_time"] is not None:
        return
    act.update(status=status, status_message=message, end_time=time.time(), progress=100)


def _instance_activity(instance_id, kind):
    """The newest unfinished activity of `kind` about `instance_id`, if any."""
    with LIFECYCLE.lock:
        for act in reversed(LIFECYCLE.activities):
            if act["instance_id"] == instance_id and act["kind"] == kind and act["end_time"] is None:
                return act
    return None


def _pending_of(group):
    with LIFECYCLE.lock:
        return [p for p in LIFECYCLE.pending if p["group"] == group.name]


def _task(task_id):
    if task_id is None:
        return None
    with LIFECYCLE.lock:
        return next((t for t in LIFECYCLE.tasks if t["task_id"] == task_id), None)


def _schedule_launches(group, activities, task_id=None):
    """Launch now (LAUNCH_S 0: the fast profile) or when each one's LAUNCH_S has passed."""
    delays = [profile.draw("LAUNCH_S") for _ in activities]
    if not any(delays) or LIFECYCLE.immediate:
        return _launch_now(group, activities, task_id)
    now = time.monotonic()
    with LIFECYCLE.lock:
        for act, delay in zip(activities, delays):
            act["status"] = "WaitingForInstanceId"
            act["launch_delay_s"] = round(delay, 3)
            LIFECYCLE.pending.append({"group": group.name, "due": now + delay, "delay_s": delay,
                                      "decided_at": time.time(), "activity": act, "task_id": task_id})
    return []


def _launch_due(backend):
    now = time.monotonic()
    with LIFECYCLE.lock:
        due = [p for p in LIFECYCLE.pending if p["due"] <= now]
        if not due:
            return
        LIFECYCLE.pending = [p for p in LIFECYCLE.pending if p["due"] > now]
    for p in due:
        group = backend.autoscaling_groups.get(p["group"])
        if group is None:
            _end_activity(p["activity"], "Cancelled", "the group was deleted")
            continue
        _launch_now(group, [p["activity"]], p["task_id"])


def _new_task(group, old_id, kind, policy, refresh_id=None):
    task = {"task_id": str(uuid.uuid4()), "kind": kind, "group": group.name, "old": old_id,
            "new": None, "policy": policy, "phase": "start", "status": "InProgress", "reason": None,
            "refresh_id": refresh_id, "started_at": time.time(), "ended_at": None,
            "new_in_service_at": None, "old_terminating_at": None, "old_gone_at": None}
    with LIFECYCLE.lock:
        LIFECYCLE.tasks.append(task)
        del LIFECYCLE.tasks[:-1000]
    return task


def _end_task(task, status, reason=None):
    task.update(status=status, reason=reason, ended_at=time.time())


def _task_launch(group, task):
    why = REASONS[task["kind"]]
    act = _activity(group.name, "launch", "Launching a new EC2 instance",
                    f"At {_iso()} an instance was launched in response to {why}.")
    _schedule_launches(group, [act], task["task_id"])
    task["phase"] = "launching"


def _task_terminate_old(group, task, old):
    if old is not None and old.lifecycle_state in COUNTED_STATES:
        with LIFECYCLE.lock:
            LIFECYCLE.open.pop(old.instance.id, None)
        why = REASONS[task["kind"]]
        _begin_termination(group, old, replace=False,
                           cause=f"At {_iso()} instance {old.instance.id} was taken out of service in "
                                 f"response to {why}.")
    task["old_terminating_at"] = time.time()
    task["phase"] = "terminating"


def _step_task(backend, task):
    group = backend.autoscaling_groups.get(task["group"])
    if group is None:
        return _end_task(task, "Failed", "the group was deleted")
    _, old = _find_state(backend, task["old"])
    _, new = _find_state(backend, task["new"]) if task["new"] else (None, None)
    phase, lbt = task["phase"], task["policy"] == LBT
    if phase == "start":
        if lbt:
            _task_launch(group, task)
        else:
            _task_terminate_old(group, task, old)
    elif phase == "launching":
        if task["new"] is None:
            return None  # the launch is still pending
        if new is not None and new.lifecycle_state == "InService":
            task["new_in_service_at"] = time.time()
            if lbt:
                _task_terminate_old(group, task, old)
            else:
                _end_task(task, "Successful")
        elif new is None or new.lifecycle_state not in COUNTED_STATES:
            _end_task(task, "Failed", f"the new instance {task['new']} did not reach InService")
    elif phase == "terminating":
        if old is None or old.lifecycle_state == "Terminated":
            task["old_gone_at"] = time.time()
            if lbt:
                _end_task(task, "Successful")
            else:
                _task_launch(group, task)
    return None


def policy_of(preferences):
    """The maintenance policy a refresh's Preferences ask for; the profile's when they say none."""
    prefs = preferences or {}
    high, low = prefs.get("MaxHealthyPercentage"), prefs.get("MinHealthyPercentage")
    if high is not None and int(high) > 100:
        return LBT
    if high is not None or low is not None:
        return TAL
    return profile.raw("MAINTENANCE_POLICY")


def start_refresh(backend, group_name, policy=None, preferences=None):
    """Replace every instance of the group, one at a time, under `policy`."""
    group = backend.autoscaling_groups.get(group_name)
    if group is None:
        raise ValidationError(f"AutoScalingGroup name not found - AutoScalingGroup {group_name} not found")
    policy = policy or policy_of(preferences)
    if policy not in POLICIES:
        raise ValidationError(f"maintenance policy {policy!r}: one of {', '.join(POLICIES)}")
    with LIFECYCLE.lock:
        if any(r["group"] == group_name and r["status"] not in FINAL for r in LIFECYCLE.refreshes):
            raise AutoscalingClientError(
                "InstanceRefreshInProgress",
                "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.")
        todo = [s.instance.id for s in group.instance_states if s.lifecycle_state in COUNTED_STATES]
        refresh = {"id": str(uuid.uuid4()), "group": group_name, "policy": policy, "status": "Pending",
                   "status_reason": None, "start_time": time.time(), "end_time": None,
                   "instances_to_update": len(todo), "todo": todo, "done": [], "task_id": None,
                   "preferences": {k: int(v) for k, v in (preferences or {}).items()
                                   if k in ("MinHealthyPercentage", "MaxHealthyPercentage")}}
        LIFECYCLE.refreshes.append(refresh)
    return refresh


def _step_refresh(backend, refresh):
    task = _task(refresh["task_id"])
    if task is not None and task["status"] == "InProgress":
        return
    if task is not None:
        refresh["done"].append(task["old"])
        if task["status"] != "Successful":
            refresh.update(status="Failed", status_reason=task["reason"], end_time=time.time())
            return
    group = backend.autoscaling_groups.get(refresh["group"])
    while refresh["todo"]:
        old_id = refresh["todo"].pop(0)
        _, state = _find_state(backend, old_id)
        if group is not None and state is not None and state.lifecycle_state in COUNTED_STATES:
            refresh["status"] = "InProgress"
            refresh["task_id"] = _new_task(group, old_id, "refresh", refresh["policy"], refresh["id"])["task_id"]
            return
    refresh.update(status="Successful", end_time=time.time())


def cancel_refresh(group_name):
    with LIFECYCLE.lock:
        refresh = next((r for r in reversed(LIFECYCLE.refreshes)
                        if r["group"] == group_name and r["status"] not in FINAL), None)
    if refresh is None:
        raise AutoscalingClientError(
            "ActiveInstanceRefreshNotFound",
            f"No in progress or pending Instance Refresh found for Auto Scaling group {group_name}")
    task = _task(refresh["task_id"])
    if task is not None and task["status"] == "InProgress":
        _end_task(task, "Cancelled", "the instance refresh was cancelled")
    refresh.update(status="Cancelled", end_time=time.time())
    return refresh


def start_rebalance(backend, instance_id):
    """Capacity Rebalancing: a replacement first, then the old instance through its hook."""
    group, state = _find_state(backend, instance_id)
    if state is None or state.lifecycle_state not in COUNTED_STATES:
        raise ValueError(f"{instance_id} is not an in-service instance of an Auto Scaling group")
    with LIFECYCLE.lock:
        for t in LIFECYCLE.tasks:
            if t["old"] == instance_id and t["status"] == "InProgress":
                return t
    return _new_task(group, instance_id, "rebalance", LBT)


def asg_tick(backend):
    """Due launches, then one step of every replacement and refresh. Call with labd's lock held."""
    _launch_due(backend)
    with LIFECYCLE.lock:
        tasks = [t for t in LIFECYCLE.tasks if t["status"] == "InProgress"]
        refreshes = [r for r in LIFECYCLE.refreshes if r["status"] not in FINAL]
    for task in tasks:
        _step_task(backend, task)
    for refresh in refreshes:
        _step_refresh(backend, refresh)


def _public(entry):
    return {k: v for k, v in entry.items() if k not in ("due", "activity")}


def activities_view():
    """What labd's GET /lab/activities answers: activities, pending launches, replacements."""
    with LIFECYCLE.lock:
        now = time.monotonic()
        return {"activities": [dict(a) for a in LIFECYCLE.activities],
                "pending": [dict(_public(p), activity_id=p["activity"]["activity_id"],
                                 due_in_s=round(max(0.0, p["due"] - now), 3)) for p in LIFECYCLE.pending],
                "tasks": [dict(t) for t in LIFECYCLE.tasks],
                "refreshes": [dict(r) for r in LIFECYCLE.refreshes]}


def _utc(t):
    return datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc) if t is not None else None


def _describe_scaling_activities(self):
    name = self._get_param("AutoScalingGroupName")
    ids = self._get_param("ActivityIds", [])
    with LIFECYCLE.lock:
        acts = [a for a in reversed(LIFECYCLE.activities)
                if (not name or a["group"] == name) and (not ids or a["activity_id"] in ids)]
    start = int(self._get_param("NextToken") or 0)
    size = self._get_int_param("MaxRecords") or 100
    page = acts[start:start + size]
    out = []
    for a in page:
        item = {"ActivityId": a["activity_id"], "AutoScalingGroupName": a["group"],
                "Description": a["description"], "Cause": a["cause"], "StartTime": _utc(a["start_time"]),
                "StatusCode": a["status"], "Progress": a["progress"], "Details": "{}"}
        if a["end_time"] is not None:
            item["EndTime"] = _utc(a["end_time"])
        if a["status_message"]:
            item["StatusMessage"] = a["status_message"]
        out.append(item)
    result = {"Activities": out}
    if start + size < len(acts):
        result["NextToken"] = str(start + size)
    return ActionResult(result)


def _refresh_api(r):
    total = r["instances_to_update"]
    out = {"InstanceRefreshId": r["id"], "AutoScalingGroupName": r["group"], "Status": r["status"],
           "StartTime": _utc(r["start_time"]), "InstancesToUpdate": max(0, total - len(r["done"])),
           "PercentageComplete": int(100 * len(r["done"]) / total) if total else 100}
    if r["status"] == "Successful":
        out["PercentageComplete"], out["InstancesToUpdate"] = 100, 0
    if r["end_time"] is not None:
        out["EndTime"] = _utc(r["end_time"])
    if r["status_reason"]:
        out["StatusReason"] = r["status_reason"]
    if r["preferences"]:
        out["Preferences"] = dict(r["preferences"])
    return out


def _start_instance_refresh(self):
    params = self._get_params()
    refresh = start_refresh(self.autoscaling_backend, params.get("AutoScalingGroupName"),
                            preferences=params.get("Preferences"))
    return ActionResult({"InstanceRefreshId": refresh["id"]})


def _describe_instance_refreshes(self):
    name = self._get_param("AutoScalingGroupName")
    ids = self._get_param("InstanceRefreshIds", [])
    with LIFECYCLE.lock:
        found = [_refresh_api(r) for r in reversed(LIFECYCLE.refreshes)
                 if r["group"] == name and (not ids or r["id"] in ids)]
    return ActionResult({"InstanceRefreshes": found})


def _cancel_instance_refresh(self):
    return ActionResult({"InstanceRefreshId": cancel_refresh(self._get_param("AutoScalingGroupName"))["id"]})


# --- 7. private IPs like AWS hands them out --------------------------------------------------

USED_IPS = set()
_orig_random_private_ip = eni_models.random_private_ip


def _random_private_ip(cidr=None, ipv6=False):
    if not cidr or ipv6:
        return _orig_random_private_ip(cidr, ipv6)
    net = ipaddress.IPv4Network(cidr)
    for _ in range(1000):
        addr = str(net.network_address + random.randint(4, net.num_addresses - 2))
        if addr not in USED_IPS:
            USED_IPS.add(addr)
            return addr
    raise EC2ClientError("InsufficientFreeAddressesInSubnet", f"no free address left in {cidr}")


# --- 6. AWS-shaped errors instead of HTML 500 -------------------------------------------------

_orig_call_action = BaseResponse.call_action


def _call_action(self):
    try:
        return _orig_call_action(self)
    except NotImplementedError as e:
        message = str(e)
        if "filter" in message.lower():
            code, text = "InvalidParameterValue", f"The filter is invalid (not supported by the lab): {message}"
        else:
            code, text = "InvalidAction", f"The action is not valid for this web service (lab): {message}"
        return self._lab_error(code, text)
    except ValueError as e:
        return self._lab_error("ValidationError", str(e))


# --- 8. a terminated instance stays terminated ------------------------------------------------

_orig_stop_instances = instance_models.InstanceBackend.stop_instances
_orig_start_instances = instance_models.InstanceBackend.start_instances


def _refuse_terminated(backend, instance_ids, verb):
    # Checked for every instance before any changes: AWS fails the whole call.
    for instance in backend.get_multi_instances_by_id(instance_ids):
        if instance.state in ("terminated", "shutting-down"):
            raise EC2ClientError(
                "IncorrectInstanceState",
                f"This instance '{instance.id}' is not in a state from which it can be {verb}.",
            )


def _stop_instances(self, instance_ids, *args, **kwargs):
    _refuse_terminated(self, instance_ids, "stopped")
    return _orig_stop_instances(self, instance_ids, *args, **kwargs)


def _start_instances(self, instance_ids, *args, **kwargs):
    _refuse_terminated(self, instance_ids, "started")
    return _orig_start_instances(self, instance_ids, *args, **kwargs)


def _lab_error(self, code, text):
    err = EC2ClientError(code, text)
    status, headers, body = self.serialized(ActionResult(err))
    return 400, headers, body


_orig_attachment_init = eni_models.Attachment.__init__


def _attachment_init(self, eni):
    _orig_attachment_init(self, eni)
    self.status = getattr(eni, "_lab_attach_status", "attached")


def apply():
    rt_models.Route.state = property(_route_state)
    eni_models.random_private_ip = _random_private_ip
    instance_models.Instance.terminate = _terminate
    instance_models.InstanceBackend.stop_instances = _stop_instances
    instance_models.InstanceBackend.start_instances = _start_instances
    rt_models.RouteBackend.create_route = _create_route
    eni_models.NetworkInterfaceBackend.attach_network_interface = _attach_network_interface
    eni_models.NetworkInterfaceBackend.detach_network_interface = _detach_network_interface
    eni_models.Attachment.__init__ = _attachment_init
    asg_models.FakeAutoScalingGroup.active_instances = _active_instances
    asg_models.FakeAutoScalingGroup.replace_autoscaling_group_instances = _replace_instances
    asg_models.FakeAutoScalingGroup.set_desired_capacity = _set_desired_capacity
    asg_models.AutoScalingBackend.terminate_instance = _terminate_instance
    asg_models.AutoScalingBackend.set_instance_health = _set_instance_health
    AutoScalingResponse.complete_lifecycle_action = _complete_lifecycle_action
    AutoScalingResponse.record_lifecycle_action_heartbeat = _record_lifecycle_action_heartbeat
    AutoScalingResponse.describe_scaling_activities = _describe_scaling_activities
    AutoScalingResponse.start_instance_refresh = _start_instance_refresh
    AutoScalingResponse.describe_instance_refreshes = _describe_instance_refreshes
    AutoScalingResponse.cancel_instance_refresh = _cancel_instance_refresh
    BaseResponse.call_action = _call_action
    BaseResponse._lab_error = _lab_error
