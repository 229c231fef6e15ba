"""The cores this process may use: what its scheduler allotted, not what the machine has.

`os.cpu_count()` counts the machine's cores. A Slurm task given 8 CPUs of a 128-core node, a `taskset`, or a
Kubernetes pod with a CPU limit may use far fewer, and a decoding thread per machine core, or CPU workers
splitting the machine's cores between them, would oversubscribe them. The CPU set (Slurm, taskset, a pinned
container) and the CPU quota of the process's cgroup or any cgroup above it (a container's or pod's limit,
systemd's CPUQuota) each cap the count.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

PROC_CGROUP = Path("/proc/self/cgroup")  # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_cores(quota: str, period: str) -> Optional[int]:
    if quota in ("max", "-1"):
        return None
    try:
        # rounded down, as Go's automaxprocs does: 2.5 cores' quota on 3 busy threads would be throttled
        return max(1, int(quota) // int(period))
    except (ValueError, ZeroDivisionError):  # a format this does not know: no cap rather than a wrong one
        return None


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _levels(mount: Path, path: str) -> Iterator[Path]:
    """The cgroup's folder and every folder above it, up to the mount (in a container, often just the mount)."""
    yield mount
    parts = [p for p in path.split("/") if p]
    for depth in range(1, len(parts) + 1):
        yield mount.joinpath(*parts[:depth])


def cpu_quota(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> Optional[int]:
    """The cores the tightest CPU quota on this process's cgroup or its ancestors allows, or None where there
    is none (or no cgroup to read)."""
    lines = _read(proc_cgroup)
    limits = []
    for line in (lines or "").splitlines():
        try:
            _, controllers, path = line.split(":", 2)
        except ValueError:
            continue
        if controllers == "":  # cgroup v2: one hierarchy, cpu.max = "<quota|max> <period>"
            for level in _levels(root, path):
                fields = (_read(level / "cpu.max") or "").split()
                if len(fields) == 2:
                    limits.append(_quota_cores(*fields))
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's own hierarchy
            mount = next((m for m in (root / controllers, root / "cpu") if m.is_dir()), None)
            for level in _levels(mount, path) if mount else ():
                quota, period = _read(level / "cpu.cfs_quota_us"), _read(level / "cpu.cfs_period_us")
                if quota is not None and period is not None:
                    limits.append(_quota_cores(quota, period))
    caps = [limit for limit in limits if limit is not None]
    return min(caps) if caps else None


def usable_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no CPU sets
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(cores, quota) if quota else cores)
