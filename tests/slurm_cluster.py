"""A real single-node Slurm cluster on this machine, for tests that submit real job arrays.

``start_slurm(workdir)`` starts a private munged, slurmctld and slurmd (no systemd, no cgroups, no slurmdbd)
with fake GPUs, and returns a ``SlurmCluster``: ``env`` for the Slurm client commands, ``submit``,
``wait_all``, ``jobs`` and ``stop``. Tested with Debian 12's slurm-wlm 22.05.8 and munge 0.5.15 as root.

Layout: every file the cluster needs (slurm.conf, gres.conf, munge key and socket, state, spool, logs, the fake
GPU device links) lives in a fresh ``tempfile.mkdtemp`` folder under /tmp, NOT under ``workdir``, because
  * munged refuses a socket whose parent folders are not all world-executable (pytest's /tmp/pytest-of-root
    is 0700: "Socket is inaccessible: execute permissions for all required on ..."), and
  * slurmstepd puts unix sockets in the spool folder, and those paths must stay short (108 bytes).
``workdir`` is where ``submit`` runs sbatch (so relative ``--output`` paths and the jobs' working folder land
there), and where ``stop()`` copies the daemons' logs (``workdir/slurm-logs-<n>/``) before removing the rest.

Nothing uses the machine's default paths: the munge key/socket/pid/log are private (``AuthInfo=socket=`` in
slurm.conf points the daemons and the client commands at that socket), ports are free ones, so a system
munged or Slurm on the same machine is not touched.

Fake GPUs: ``gres.conf`` lists ``File=`` entries that are symlinks to /dev/null (slurmd rejects regular files:
"is not a valid character or block device"; mknod is not needed). With ``File=`` Slurm binds the devices and
sets ``CUDA_VISIBLE_DEVICES``, ``SLURM_JOB_GPUS`` and ``GPU_DEVICE_ORDINAL`` (``0``, ``1``, ...) in each job.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from waits import until

INSTALL_HINT = "apt-get install slurm-wlm munge"
REQUIRED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
# States after which a job never changes again (DependencyNeverSatisfied jobs are handled separately).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
# Variables of an enclosing Slurm job (e.g. CI that runs inside one) would leak into sbatch; drop them.
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCANCEL_", "SACCT_",
                        "SCONTROL_")
KILL_WAIT = 5
MIN_JOB_AGE = 86400  # finished jobs stay known while a slow test reads them (0, "never purge" in the manual, lost
# a finished job at once on Slurm 22.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"<{exc}>"


def parse_scontrol_line(line: str) -> dict[str, str]:
    """One ``scontrol show -o`` record as a dict; words without ``=`` belong to the previous value."""
    fields: dict[str, str] = {}
    key = None
    for word in line.split():
        name, eq, value = word.partition("=")
        if eq and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:/]*", name):
            key = name
            fields[key] = value
        elif key is not None:
            fields[key] += " " + word
    return fields


@dataclass
class SlurmCluster:
    folder: Path            # the private temp folder with conf, state, spool, logs, munge files
    workdir: Path
    node: str               # NodeName (the short host name)
    gpus: int
    cpus: int
    conf: Path              # slurm.conf; env["SLURM_CONF"] points at it
    env: dict               # environment for sbatch/squeue/scontrol/scancel/sinfo
    kill_invalid_depend: bool = True
    _procs: list = field(default_factory=list, repr=False)
    _munged_pid: int | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # --- client commands ---------------------------------------------------------------------------------
    def run(self, args: list[str], check: bool = True, timeout: float = 300,
            **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm client command (``["squeue", ...]``) against this cluster; text output captured. The
        timeout only guards against a hang: slurmctld on a loaded machine answers slowly, not never."""
        args = [str(a) for a in args]  # job ids may be ints
        kwargs.setdefault("cwd", self.workdir)
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stdout.strip()} {proc.stderr.strip()}")
        return proc

    def submit(self, args: list[str]) -> int:
        """``sbatch --parsable *args`` (run in ``workdir``); returns the job id (the array's id for arrays)."""
        out = self.run(["sbatch", "--parsable", *args]).stdout.strip()
        return int(out.split(";")[0])  # --parsable prints "id" or "id;cluster"

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows (finished ones too: MinJobAge is a day), one dict per record
        of ``scontrol show job -o``: one per array task once it has started, plus one for the array's
        still-pending tasks (``ArrayTaskId=2-3``)."""
        proc = self.run(["scontrol", "show", "job", "-o"], check=False)
        if proc.returncode != 0 and "No jobs in the system" not in proc.stdout + proc.stderr:
            raise RuntimeError(f"scontrol show job failed: {proc.stdout} {proc.stderr}")
        return [parse_scontrol_line(line) for line in proc.stdout.splitlines() if line.startswith("JobId=")]

    def job_records(self, job_ids) -> dict[str, dict[str, str]]:
        """Records of the given jobs keyed ``"<id>"``, or ``"<arrayid>_<task>"`` for array tasks (a pending
        remainder of an array is keyed like ``"12_[2-3]"``)."""
        wanted = {str(j) for j in job_ids}
        found = {}
        for rec in self.jobs():
            array_id, task = rec.get("ArrayJobId"), rec.get("ArrayTaskId")
            if array_id and task is not None and array_id in wanted:
                key = f"{array_id}_{task}" if re.fullmatch(r"\d+", task) else f"{array_id}_[{task}]"
                found[key] = rec
            elif rec["JobId"] in wanted:
                found[rec["JobId"]] = rec
        return found

    def wait_all(self, job_ids, stall: float | None = None, poll: float = 0.5) -> dict[str, str]:
        """Wait until none of ``job_ids`` (array tasks included) is pending or running; return their final
        states, e.g. ``{"5_0": "COMPLETED", "5_1": "FAILED", "6": "CANCELLED"}``. A job left pending
        because its dependency can never be satisfied counts as final, as ``"PENDING:DependencyNeverSatisfied"``
        only with ``kill_invalid_depend=False``; by default Slurm cancels such jobs (state ``CANCELLED``).
        Fails only when neither a job's state nor its log has moved for ``stall`` seconds (waits.STALL_S)."""
        job_ids = [str(j) for j in job_ids]
        seen: dict[str, str] = {}

        def final_states():
            recs = self.job_records(job_ids)
            states = {}
            for key, rec in recs.items():
                state = rec.get("JobState", "?")
                if (state == "PENDING" and rec.get("Reason") == "DependencyNeverSatisfied"
                        and not self.kill_invalid_depend):
                    state = "PENDING:DependencyNeverSatisfied"
                states[key] = state
            missing = [j for j in job_ids if j not in states and not any(k.startswith(j + "_") for k in states)]
            if missing:
                raise RuntimeError(f"jobs {missing} unknown to slurmctld (never submitted?)")
            seen.clear()
            seen.update(states)
            if all(s in FINAL_STATES or s.startswith("PENDING:") for s in states.values()):
                return dict(sorted(states.items()))
            return None

        def progress():  # the jobs' states and how much their logs have grown
            logs = self.workdir / "slurm-logs"
            return dict(seen), sorted((p.name, p.stat().st_size) for p in logs.glob("*")) if logs.exists() else []

        return until(final_states, f"jobs {job_ids} to finish", progress=progress, stall=stall, poll=poll,
                     detail=lambda: f" (states {seen})\n{self.logs()}")

    def exit_codes(self, job_ids) -> dict[str, str]:
        """``ExitCode`` (``"status:signal"``) of each job/array task, keyed like ``wait_all``."""
        return {k: r.get("ExitCode", "?") for k, r in sorted(self.job_records(job_ids).items())}

    def logs(self, chars: int = 3000) -> str:
        """The tails of the daemons' logs (for error messages)."""
        return "\n".join(f"--- {name} (tail) ---\n{_tail(self.folder / name, chars)}"
                         for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out", "munged.log")
                         if (self.folder / name).exists())

    # --- teardown ----------------------------------------------------------------------------------------
    def _our_pids(self) -> list[int]:
        """Processes started by this cluster's daemons: slurmstepd and the jobs inherit our SLURM_CONF (they
        are re-parented away from us). This process, its ancestors and its own children are left alone."""
        marker = b"\0" + f"SLURM_CONF={self.conf}".encode() + b"\0"
        parents, hits = {}, []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if marker in b"\0" + (entry / "environ").read_bytes():
                    hits.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
        me = os.getpid()
        spared, pid = {me}, me
        while pid in parents and parents[pid] > 1:  # ancestors
            pid = parents[pid]
            spared.add(pid)

        def descends_from_me(pid):
            seen = set()
            while pid > 1 and pid not in seen:
                if pid == me:
                    return True
                seen.add(pid)
                pid = parents.get(pid, 0)
            return False

        return [p for p in hits if p not in spared and not descends_from_me(p)]

    def stop(self, keep_logs: bool = True) -> None:
        """Cancel all jobs, stop slurmd, slurmctld and munged, kill any stray job processes, copy the logs to
        ``workdir/slurm-logs-<n>/`` (unless keep_logs=False) and remove the temp folder. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            active = {r.get("ArrayJobId") or r["JobId"] for r in self.jobs() if r.get("JobState") not in FINAL_STATES}
            if active:
                self.run(["scancel", *sorted(active)], check=False)
                deadline = time.monotonic() + KILL_WAIT + 5
                while time.monotonic() < deadline and any(
                        r.get("JobState") not in FINAL_STATES for r in self.jobs()):
                    time.sleep(0.3)
        except Exception:  # the controller may already be gone
            pass
        for proc in reversed(self._procs):  # slurmd first, then slurmctld
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        if self._munged_pid:
            _kill_pid(self._munged_pid)
        for pid in self._our_pids():  # leftover slurmstepd / job processes
            _kill_pid(pid, grace=2)
        if keep_logs:
            n = 0
            while (self.workdir / f"slurm-logs-{n}").exists():
                n += 1
            dest = self.workdir / f"slurm-logs-{n}"
            dest.mkdir(parents=True)
            for name in ("slurm.conf", "gres.conf", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out",
                         "munged.log"):
                if (self.folder / name).exists():
                    shutil.copy(self.folder / name, dest / name)
        shutil.rmtree(self.folder, ignore_errors=True)


def _kill_pid(pid: int, grace: float = 5) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap it if it is our child (otherwise a zombie keeps answering kill(pid, 0)).
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _hardware() -> dict[str, int]:
    """CPUs and RealMemory as slurmd sees them (``slurmd -C``)."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, env=env).stdout
    found = {k: int(v) for k, v in re.findall(r"\b(CPUs|RealMemory)=(\d+)", out)}
    found.setdefault("CPUs", os.cpu_count() or 1)
    found.setdefault("RealMemory", 1000)
    return found


def start_slurm(workdir: Path, gpus: int = 2, *, cpus: int | None = None, kill_invalid_depend: bool = True,
                extra_conf: str = "", start_timeout: float = 300) -> SlurmCluster:
    """Start munged + slurmctld + slurmd for one node (this host) with ``gpus`` fake GPUs; wait until the
    node is idle. ``cpus`` defaults to max(real CPUs, gpus) so every GPU can get a task on a small machine
    (``SlurmdParameters=config_overrides`` lets the config claim more than the hardware has).
    ``kill_invalid_depend``: cancel jobs whose dependency can never be met (e.g. ``afterok`` on a failed
    job) instead of leaving them pending forever, which is Slurm's default."""
    missing = [b for b in REQUIRED if not shutil.which(b)]
    if missing:
        pytest.skip(f"Slurm/munge binaries not found ({', '.join(missing)}): `{INSTALL_HINT}`; "
                    f"the Slurm tests need a real single-node cluster")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster runs its daemons as root (SlurmUser=SlurmdUser=root); run as root")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="alexnet_exp_slurm_"))
    folder.chmod(0o755)  # munged wants every folder above its socket world-executable
    cluster = None
    try:
        node = socket.gethostname().split(".")[0]  # = `hostname -s`; slurmctld only runs on SlurmctldHost
        hw = _hardware()
        cpus = cpus or max(hw["CPUs"], gpus)
        for sub in ("state", "spool", "gpu"):
            (folder / sub).mkdir()
        # munge: private key, socket, pid, log, seed.
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = folder / "munge.sock"
        munged = subprocess.run(
            ["munged", f"--socket={sock}", f"--key-file={key}", f"--log-file={folder / 'munged.log'}",
             f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}"],
            capture_output=True, text=True, timeout=30)  # forks; returns once the socket is ready
        if munged.returncode != 0:
            raise RuntimeError(f"munged failed: {munged.stderr.strip()}\n{_tail(folder / 'munged.log')}")
        munged_pid = int((folder / "munged.pid").read_text().split()[0])
        # Fake GPUs: symlinks to /dev/null (a character device, which is all slurmd checks).
        for i in range(gpus):
            (folder / "gpu" / f"nvidia{i}").symlink_to("/dev/null")
        conf = folder / "slurm.conf"
        node_hw = f"CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={hw['RealMemory']}"
        gres_line = f" Gres=gpu:{gpus}" if gpus else ""
        dep_params = "DependencyParameters=kill_invalid_depend\n" if kill_invalid_depend else ""
        conf.write_text(f"""\
ClusterName=alexnettest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={folder / 'plugstack.conf'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1
{dep_params}SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
KillWait={KILL_WAIT}
InactiveLimit=0
SlurmdTimeout=300
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 {node_hw}{gres_line} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
{extra_conf}""")
        (folder / "plugstack.conf").write_text("")  # not /etc/slurm's
        gres = "AutoDetect=off\n"
        if gpus:
            gres += f"NodeName={node} Name=gpu File={folder / 'gpu'}/nvidia[0-{gpus - 1}]\n"
        (folder / "gres.conf").write_text(gres)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(conf)
        cluster = SlurmCluster(folder=folder, workdir=workdir, node=node, gpus=gpus, cpus=cpus, conf=conf,
                               env=env, kill_invalid_depend=kill_invalid_depend, _munged_pid=munged_pid)
        for name, args in (("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(conf)]),
                           ("slurmd", ["slurmd", "-D", "-N", node, "-f", str(conf)])):
            with open(folder / f"{name}.out", "wb") as out:
                cluster._procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                                       cwd=folder))
        deadline = time.monotonic() + start_timeout
        state = ""
        while True:
            for proc in cluster._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} during start-up\n"
                                       f"{cluster.logs()}")
            probe = cluster.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], check=False)
            state = probe.stdout.strip()
            if probe.returncode == 0 and state == "idle":
                return cluster
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm node {node} not idle after {start_timeout} s (sinfo: {state!r} "
                                   f"{probe.stderr.strip()})\n{cluster.logs()}")
            time.sleep(0.3)
    except BaseException:
        if cluster is not None:
            cluster.stop(keep_logs=True)
        else:
            pid_file = folder / "munged.pid"
            if pid_file.exists():
                _kill_pid(int(pid_file.read_text().split()[0]))
            shutil.rmtree(folder, ignore_errors=True)
        raise
