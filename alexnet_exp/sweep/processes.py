"""The launcher's worker processes: start them (one GPU each), supervise them, stop them.

- A worker that dies (killed by a signal, or ended by an unexpected exception) while budget remains is replaced,
  a bounded number of times; its trial is failed by its stale heartbeat and retried by another worker.
- Ctrl-C or SIGTERM on the launcher is passed on as SIGTERM, so each worker fails its running trial cleanly.
- A launcher that dies without a word (SIGKILL, a crash) closes the pipe it holds on each worker's stdin:
  `watch_launcher` in the worker sees the end of that pipe and stops the worker as SIGTERM would, instead of
  letting it finish the budget unsupervised.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

from ..cores import usable_cores
from . import keys

REPLACEMENTS_PER_WORKER = 3  # a worker that keeps dying is a bug, not bad luck: stop replacing it
GRACE_SECONDS = 60.0  # after SIGTERM, how long workers get to record their trials before they are killed
# Ends that are a worker's own decision, not a death: budget met, bad input, too many errors, interrupted.
DELIBERATE_EXITS = (keys.EXIT_OK, keys.EXIT_BAD_INPUT, keys.EXIT_ERRORS, keys.EXIT_INTERRUPTED)


def worker_env(index: int, gpus: list[str], n_workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ALEXNET_EXP_WORKER"] = str(index)
    env["PYTHONUNBUFFERED"] = "1"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]  # one process sees one GPU, round-robin
    else:
        # CPU workers share the cores instead of each starting a thread per core.
        env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // n_workers))
    return env


def start_worker(command: list[str], index: int, gpus: list[str], n_workers: int) -> subprocess.Popen:
    # stdin is a pipe whose write end only the launcher holds: its end tells the worker the launcher is gone.
    return subprocess.Popen(command, env=worker_env(index, gpus, n_workers), stdin=subprocess.PIPE)


def supervise(command: list[str], n_workers: int, gpus: list[str], budget_left: Callable[[], bool],
              poll_seconds: float = 0.5) -> Optional[list[int]]:
    """Run `n_workers` workers until each has ended on its own; replace those that die while `budget_left()`.
    Returns their exit codes, or None when interrupted (Ctrl-C, SIGTERM: passed on to the workers)."""
    workers = {i: start_worker(command, i, gpus, n_workers) for i in range(n_workers)}
    print(f"started {n_workers} workers (pids {', '.join(str(w.pid) for w in workers.values())})"
          f"{'; GPUs ' + ','.join(gpus) if gpus else ''}", flush=True)
    replaced = {i: 0 for i in workers}
    codes: list[int] = []
    try:
        while workers:
            for i, w in list(workers.items()):
                code = w.poll()
                if code is None:
                    continue
                del workers[i]
                if code not in DELIBERATE_EXITS and replaced[i] < REPLACEMENTS_PER_WORKER and budget_left():
                    replaced[i] += 1
                    workers[i] = start_worker(command, i, gpus, n_workers)
                    print(f"worker {i} (pid {w.pid}) died ({_describe(code)}) with budget left; replaced by pid "
                          f"{workers[i].pid}; its trial is retried once its heartbeat is stale", file=sys.stderr,
                          flush=True)
                else:
                    codes.append(code)
            time.sleep(poll_seconds)
        return codes
    except KeyboardInterrupt:
        stop(list(workers.values()))
        return None


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def stop(workers: list[subprocess.Popen], grace_seconds: float = GRACE_SECONDS) -> None:
    """SIGTERM to each live worker, so each fails its running trial cleanly (Optuna and MLflow); workers
    still alive after `grace_seconds` are killed."""
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for w in workers:
        try:
            w.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()


def watch_launcher() -> threading.Event:
    """In a worker: when the launcher's end of stdin closes (the launcher died), set the returned event and
    SIGTERM this process, which then stops like a worker told to stop. Only for workers the launcher started."""
    gone = threading.Event()

    def watch() -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside the buffered reader holds
        # its lock, and the interpreter's shutdown then aborts on it ("could not acquire lock for <stdin>").
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        gone.set()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    return gone


def gpu_list(flag: Optional[str]) -> list[str]:
    if flag:
        return [g.strip() for g in flag.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def python_command(module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", module, *args]
