"""Runs a command under a seccomp filter that kills the process (SIGSYS) on any chown call, as
the shipped unit's SystemCallFilter=~@privileged does, without booting systemd:
`python3 deny_chown.py PROGRAM ARGS...`. x86_64 and aarch64."""

import ctypes
import os
import platform
import struct
import sys

# The chown family per architecture (chown, fchown, lchown, fchownat; aarch64 has only the
# *at and f* forms), and the audit architecture the filter checks first.
CHOWN = {"x86_64": (0xC000003E, [92, 93, 94, 260]), "aarch64": (0xC00000B7, [54, 55])}
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
KILL_PROCESS, ALLOW = 0x80000000, 0x7FFF0000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2

arch, numbers = CHOWN[platform.machine()]
prog = [(LD_W_ABS, 0, 0, 4), (JEQ_K, 1, 0, arch), (RET_K, 0, 0, KILL_PROCESS), (LD_W_ABS, 0, 0, 0)]
for nr in numbers:
    prog += [(JEQ_K, 0, 1, nr), (RET_K, 0, 0, KILL_PROCESS)]
prog.append((RET_K, 0, 0, ALLOW))
raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
buf = ctypes.create_string_buffer(raw)


class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


libc = ctypes.CDLL(None, use_errno=True)
fprog = Fprog(len(prog), ctypes.addressof(buf))
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit(f"deny_chown: no_new_privs: {os.strerror(ctypes.get_errno())}")
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit(f"deny_chown: seccomp: {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[1], sys.argv[1:])
