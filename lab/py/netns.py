"""Network-namespace plumbing for the lab: run `ip`, make sockets inside a namespace.

A socket keeps the namespace it was created in, so one process can serve IMDS inside every
instance namespace and the API inside the "internet" namespace: a thread enters the namespace,
creates and binds the socket, and comes back.
"""

import ctypes
import os
import socket
import subprocess
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_setns_lock = threading.Lock()


class IpError(RuntimeError):
    pass


def ip(*args, ns=None, check=True, input=None):
    """Run `ip` (optionally in a namespace). Returns stdout."""
    cmd = ["ip"]
    if ns:
        cmd += ["-n", ns]
    cmd += list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise IpError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


def batch(lines, ns=None, force=False):
    """Apply many `ip` commands in one process (one fork instead of dozens)."""
    if not lines:
        return
    args = ["-batch", "-"]
    if force:
        args = ["-force"] + args
    ip(*args, ns=ns, input="\n".join(lines) + "\n", check=not force)


def sysctl(ns, key, value):
    ip("netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def in_netns(ns, fn):
    """Run fn() with the calling thread inside namespace `ns`, then return to where it was.

    Runs on a fresh thread so the caller's own namespace can never be left changed by an error.
    """
    result = {}

    def runner():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            result["error"] = e

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def socket_in(ns, family, kind, bind=None, reuse=True):
    def make():
        s = socket.socket(family, kind)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind is not None:
            s.bind(bind)
        return s

    if ns is None:
        return make()
    return in_netns(ns, make)


def netns_list():
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def netns_pids(ns):
    out = ip("netns", "pids", ns, check=False)
    return [int(x) for x in out.split()]


def netns_delete(ns):
    import signal

    for pid in netns_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    ip("netns", "del", ns, check=False)
