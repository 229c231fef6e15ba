"""The cores this process may use: what its scheduler allotted, not what the machine has.

`os.cpu_count()` counts the machine's cores. A Slurm task given 8 CPUs of a 128-core node, a `taskset`, or a
Kubernetes pod with a CPU limit may use far fewer, and a decoding thread per machine core, or CPU workers
splitting the machine's cores between them, would oversubscribe them. The CPU set (Slurm, taskset, a pinned
container) and the cgroup CPU quota (a container's or pod's limit) each cap the count.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")  # "max 100000", or "200000 100000" for 2 cores
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")  # cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us


def cpu_quota(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> Optional[int]:
    """The cores the cgroup CPU quota allows (rounded up), or None where there is no quota."""
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):  # a format this does not know: no cap rather than a wrong one
        return None


def usable_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no CPU sets
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(cores, quota) if quota else cores)
