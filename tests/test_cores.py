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


def _cgroup_files(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_tightest_quota_of_the_cgroup_and_its_ancestors_caps_the_cores_rounded_down(tmp_path):
    proc, root = tmp_path / "cgroup", tmp_path / "fs"
    proc.write_text("0::/user.slice/job.scope\n")  # cgroup v2, not namespaced: the process's own folder
    _cgroup_files(root, {"cpu.max": "max 100000\n", "user.slice/cpu.max": "400000 100000\n",
                         "user.slice/job.scope/cpu.max": "250000 100000\n"})
    assert cpu_quota(proc, root) == 2  # 2.5 cores -> 2, under the slice's 4
    (root / "user.slice/cpu.max").write_text("150000 100000\n")
    assert cpu_quota(proc, root) == 1  # the parent is tighter
    (root / "user.slice/cpu.max").write_text("max 100000\n")
    (root / "user.slice/job.scope/cpu.max").write_text("max 100000\n")
    assert cpu_quota(proc, root) is None

    proc.write_text("12:memory:/slurm/job_7\n4:cpu,cpuacct:/slurm/job_7\n")  # cgroup v1, as Slurm sets it
    _cgroup_files(root, {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                         "cpu,cpuacct/slurm/job_7/cpu.cfs_quota_us": "800000\n",
                         "cpu,cpuacct/slurm/job_7/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(proc, root) == 8
    proc.write_text("4:cpu,cpuacct:/\n")  # a container with its own namespace: the mount is its cgroup
    assert cpu_quota(proc, root) is None
    assert cpu_quota(tmp_path / "none", root) is None  # no /proc/self/cgroup at all
    assert usable_cores() >= 1
