"""What the benchmarks' coordinators share: a free loopback port, and the CPU time a set
of processes used (psutil, user + system). The scripts run as `python bench/X.py`, so
this folder is on their path: `from procs import cpu_seconds, free_port`."""

from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (all threads); a gone one counts 0."""
    import psutil  # type: ignore[import-untyped]

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total
