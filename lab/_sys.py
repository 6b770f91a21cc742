"""The few Linux system calls the lab needs that Python 3.11 does not wrap: setns, prctl."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent thread exits."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace ``name``.

    Sockets created inside stay in that namespace after the block ends, so a test can open a
    socket in a lab namespace and use it from its own asyncio loop.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(home)
        raise
    try:
        setns(target)
        yield
    finally:
        setns(home)
        os.close(home)
        os.close(target)
