"""A short CPU time slice for the processes a shopper waits on.

Why: on cores shared with catch-up work (a draining aggregation, a busy
neighbour), a reservation waits each time the coupon server or the broker
wakes up and finds a core taken. Linux's scheduler (EEVDF, since 6.6) runs
the eligible task with the earliest virtual deadline, its virtual runtime
plus its time slice, and since Linux 6.12 a task may ask for a slice of its
own (``sched_setattr``'s ``sched_runtime``, 0.1 to 100 ms, no privilege
needed): a waking task with a shorter slice than the running one takes the
core at once instead of waiting for that one's slice to end. It changes no
share of the CPU, only who goes first, so it costs the busy processes
nothing but a few more context switches.

Older kernels ignore the request: :func:`request_slice` then says so by
returning None, and everything runs as before. The slice belongs to a
thread; threads and processes started afterwards inherit it, so a process
asks before it starts any, and :func:`slice_for_children` covers a child
(the broker's JVM) without touching the rest of its parent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct
from collections.abc import Iterator
from contextlib import contextmanager

_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
"""(sched_setattr, sched_getattr) by machine; Python's os module has neither."""
_ATTR = struct.Struct("IIQiIQQQII")
"""struct sched_attr as of Linux 5.3 (SCHED_ATTR_SIZE_VER1, 56 bytes)."""
SCHED_OTHER = 0
MIN_MS, MAX_MS = 0.1, 100.0
"""What the kernel accepts; it clamps anything else into this range."""


def _syscalls() -> tuple[int, int] | None:
    if platform.system() != "Linux":
        return None
    return _SYSCALLS.get(platform.machine())


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _get(tid: int) -> tuple[int, ...] | None:
    calls = _syscalls()
    if calls is None:
        return None
    buf = ctypes.create_string_buffer(_ATTR.size)
    if _libc().syscall(calls[1], tid, buf, _ATTR.size, 0) != 0:
        return None
    return _ATTR.unpack(buf.raw)


def slice_ms(tid: int = 0) -> float | None:
    """The slice thread ``tid`` (0: the calling thread) runs with, in ms: its
    own or the kernel's default.

    None where the kernel keeps no slice per thread (not Linux, older than
    6.12) or for a thread that is not scheduled as an ordinary one.
    """
    attr = _get(tid)
    if attr is None or attr[1] != SCHED_OTHER or not attr[5]:
        return None
    return attr[5] / 1e6


def request_slice(ms: float) -> float | None:
    """Ask for a time slice of ``ms`` for the calling thread; the slice it got.

    None when the kernel does not support slices of one's own (nothing has
    changed then). The thread's niceness is kept.
    """
    calls = _syscalls()
    if calls is None or not MIN_MS <= ms <= MAX_MS:
        return None
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    attr = _ATTR.pack(_ATTR.size, SCHED_OTHER, 0, nice, 0, round(ms * 1e6), 0, 0, 0, 0)
    if _libc().syscall(calls[0], 0, ctypes.create_string_buffer(attr, _ATTR.size), 0) != 0:
        return None
    granted = slice_ms()
    # a kernel before 6.12 accepts the call and keeps no slice: it reads back as 0
    return granted if granted is not None and abs(granted - ms) < 1e-6 else None


def _drop_slice() -> None:
    """Back to the kernel's default slice (a runtime of 0), keeping the niceness."""
    calls = _syscalls()
    assert calls is not None
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    attr = _ATTR.pack(_ATTR.size, SCHED_OTHER, 0, nice, 0, 0, 0, 0, 0, 0)
    _libc().syscall(calls[0], 0, ctypes.create_string_buffer(attr, _ATTR.size), 0)


@contextmanager
def slice_for_children(ms: float) -> Iterator[float | None]:
    """Processes started inside the block inherit a slice of ``ms``; the calling
    thread goes back to the kernel's default after (callers are launchers,
    which ask for no slice of their own). Yields what :func:`request_slice` got."""
    granted = request_slice(ms) if ms else None
    try:
        yield granted
    finally:
        if granted is not None:
            _drop_slice()
