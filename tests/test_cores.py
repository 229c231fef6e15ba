"""The cores a process may use: its CPU set and its cgroup's CPU quota, not the machine's count."""
import os
import subprocess
import sys

import pytest

from alexnet_exp.cores import cpu_quota, usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2, reason="needs CPU sets, 2 cores")
def test_a_process_pinned_to_one_core_uses_one():
    """As a Slurm task or `taskset` would start it: the machine has more cores, the process may use one."""
    one = sorted(os.sched_getaffinity(0))[0]
    done = subprocess.run([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{one}}}); "
                           "from alexnet_exp.cores import usable_cores; "
                           "from alexnet_exp.sweep.processes import worker_env; "
                           "print(usable_cores(), os.cpu_count(), worker_env(0, [], 1)['OMP_NUM_THREADS'])"],
                          capture_output=True, text=True, check=True)
    usable, machine, worker_threads = map(int, done.stdout.split())
    assert usable == 1 and machine >= 2
    assert worker_threads == 1  # a CPU sweep's one worker: a thread on its one core, not one per machine core
    assert usable_cores() == min(len(os.sched_getaffinity(0)), cpu_quota() or 10**6)


def test_the_cgroup_quota_caps_the_cores_rounded_up(tmp_path):
    v2, v1 = tmp_path / "cpu.max", tmp_path / "v1"
    v1.mkdir()
    v2.write_text("250000 100000\n")  # cgroup v2: 2.5 cores -> 3
    assert cpu_quota(v2, v1) == 3
    v2.write_text("max 100000\n")
    assert cpu_quota(v2, v1) is None
    v2.unlink()  # cgroup v1
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(v2, v1) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v2, v1) is None
    assert cpu_quota(tmp_path / "none", tmp_path / "none") is None  # no cgroup files at all
