"""Mends to moto 5.2.5 so that it behaves like AWS where gateway-agent depends on it.

Each mend is a patch applied in the moto server's own process (`apply()`), so the agent talks to
an unmodified moto HTTP server with AWS's semantics restored. Every mend is proven against the
running server by the lab's tests (lab/tests/moto_mends.rs):

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

Fault injection (throttling, 5xx, latency) lives in labd's WSGI middleware, not here.
"""

import ipaddress
import random
import threading
import time
import uuid

from moto.autoscaling import models as asg_models
from moto.autoscaling.exceptions import ValidationError
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult, BaseResponse, EmptyResult
from moto.ec2.exceptions import EC2ClientError, RouteAlreadyExistsError
from moto.ec2.models import elastic_network_interfaces as eni_models
from moto.ec2.models import instances as instance_models
from moto.ec2.models import route_tables as rt_models

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

    def reset(self):
        with self.lock:
            self.open.clear()
            self.history.clear()


LIFECYCLE = Lifecycle()


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
    return "active" if inst.state == "running" else "blackhole"


# --- 2. terminate releases persistent ENIs ----------------------------------------------------

_orig_terminate = instance_models.Instance.terminate


def _terminate(self):
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
    return _orig_attach(self, eni_id, instance_id, device_index)


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


def _replace_instances(self, count_needed, propagated_tags):
    before = {s.instance.id for s in self.instance_states}
    _orig_replace_instances(self, count_needed, propagated_tags)
    hook = _hook(self, LAUNCHING)
    for state in self.instance_states:
        if state.instance.id in before:
            continue
        if hook is None:
            state.lifecycle_state = "InService"
        else:
            state.lifecycle_state = "Pending:Wait"
            _open_action(state, hook, LAUNCHING)


def _begin_termination(group, state, replace):
    """Start terminating `state` the way an ASG does: through the termination hook if any."""
    hook = _hook(group, TERMINATING)
    if hook is None:
        _finish_termination(group, state, replace)
        return
    state.lifecycle_state = "Terminating:Wait"
    _open_action(state, hook, TERMINATING, replace=replace)
    if replace:
        _fill(group)


def _finish_termination(group, state, replace):
    backend = group.autoscaling_backend
    group.instance_states = [s for s in group.instance_states if s is not state]
    if state.instance.state not in ("terminated",):
        backend.ec2_backend.terminate_instances([state.instance.id])
    state.lifecycle_state = "Terminated"
    if replace:
        _fill(group)


def _fill(group):
    missing = (group.desired_capacity or 0) - len(group.active_instances())
    if missing > 0:
        group.replace_autoscaling_group_instances(missing, group.get_propagated_tags())


_orig_set_desired = asg_models.FakeAutoScalingGroup.set_desired_capacity


def _set_desired_capacity(self, new_capacity):
    if _hook(self, TERMINATING) is None or self.mixed_instances_policy:
        return _orig_set_desired(self, new_capacity)
    self.desired_capacity = self.min_size if new_capacity is None else new_capacity
    active = self.active_instances()
    delta = (self.desired_capacity or 0) - len(active)
    if delta > 0:
        self.replace_autoscaling_group_instances(delta, self.get_propagated_tags())
    elif delta < 0:
        victims = [s for s in active if not s.protected_from_scale_in][: -delta]
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
    _begin_termination(group, state, replace=not should_decrement)
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
        _begin_termination(group, state, replace=True)


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
        else:
            # ABANDON on launch: the instance is terminated and the group launches another.
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


def apply():
    rt_models.Route.state = property(_route_state)
    eni_models.random_private_ip = _random_private_ip
    instance_models.Instance.terminate = _terminate
    instance_models.InstanceBackend.stop_instances = _stop_instances
    instance_models.InstanceBackend.start_instances = _start_instances
    rt_models.RouteBackend.create_route = _create_route
    eni_models.NetworkInterfaceBackend.attach_network_interface = _attach_network_interface
    asg_models.FakeAutoScalingGroup.active_instances = _active_instances
    asg_models.FakeAutoScalingGroup.replace_autoscaling_group_instances = _replace_instances
    asg_models.FakeAutoScalingGroup.set_desired_capacity = _set_desired_capacity
    asg_models.AutoScalingBackend.terminate_instance = _terminate_instance
    asg_models.AutoScalingBackend.set_instance_health = _set_instance_health
    AutoScalingResponse.complete_lifecycle_action = _complete_lifecycle_action
    AutoScalingResponse.record_lifecycle_action_heartbeat = _record_lifecycle_action_heartbeat
    BaseResponse.call_action = _call_action
    BaseResponse._lab_error = _lab_error
