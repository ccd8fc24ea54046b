"""Which process owns something (a scratch directory, a run), and whether that process is gone.

An owner is written as `host/boot/pid/start`: the boot id and the process start time make a
reused pid (after a reboot, or pids wrapping around) read as a different process. No Dagster here.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Optional


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "-"


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks after boot ("-" where /proc is not there), or
    None if no such live process exists (a zombie is as good as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:  # no /proc here: only whether the pid exists can be known
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "-"
    except OSError:
        return "-"
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return None if fields[0] in ("Z", "X") else fields[19]


def current() -> str:
    """This process, as an owner string."""
    return of(os.getpid())


def of(pid: int) -> str:
    """The live process `pid` (e.g. a child just started), as an owner string."""
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{_start_time(pid)}"


def is_gone(owner: str) -> bool:
    """True only when sure: the owner ran on this host, and since then the machine rebooted or
    that process exited. An owner of another host, or in an unknown format, is never gone."""
    try:
        host, boot, pid, start = owner.strip().split("/")
        number = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if boot != _boot_id():
        return True
    found = _start_time(number)
    if found is None:
        return True
    return "-" not in (found, start) and found != start
