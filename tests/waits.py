"""Waits that follow progress instead of guessing wall time.

A loaded CI machine (both cores busy, `stress-ng --cpu 8` beside the suite) runs a sweep five times slower
than an idle one, so a fixed timeout either fails healthy tests there or is so long that it means nothing.
These waits fail only when nothing has moved for `STALL_S` seconds: no new line from the process, no new
state of what the caller watches (trials, jobs, files). A hung process still fails, with what it printed.
"""
import os
import subprocess
import threading
import time

# Long enough for the slowest silent step under load (a first import of torch and MLflow, a set-up under the
# study lock), short enough that a hang is reported in minutes. Overridable for a slower machine.
STALL_S = float(os.environ.get("ALEXNET_TEST_STALL_S", "300"))


class Stalled(AssertionError):
    pass


def until(check, what, *, progress=lambda: None, stall=None, poll=0.3, detail=lambda: ""):
    """Poll `check()` until it returns something truthy and return that. Fail when the snapshot `progress()`
    returns (anything comparable) has not changed for `stall` seconds; with the default `progress`, that is
    `stall` seconds in all."""
    stall = STALL_S if stall is None else stall
    seen, moved_at = progress(), time.monotonic()
    while True:
        found = check()
        if found:
            return found
        now = progress()
        if now != seen:
            seen, moved_at = now, time.monotonic()
        elif time.monotonic() - moved_at > stall:
            raise Stalled(f"nothing moved for {stall:.0f} s while waiting for {what}{detail()}")
        time.sleep(poll)


class Launched:
    """A process whose stdout and stderr (merged) a thread collects line by line as they come, so that waits on
    it count each line as progress, and its output is at hand when a wait fails."""

    def __init__(self, args, **popen_kwargs):
        self.args = [str(a) for a in args]
        self._proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      **popen_kwargs)
        self._lines: list[str] = []
        self._closed = threading.Event()  # every holder of the pipe (its children too) closed it
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self._proc.stdout:
            self._lines.append(line)
        self._closed.set()

    @property
    def pid(self):
        return self._proc.pid

    @property
    def returncode(self):
        return self._proc.returncode

    def poll(self):
        return self._proc.poll()

    def send_signal(self, sig):
        self._proc.send_signal(sig)

    def kill(self):
        self._proc.kill()

    def terminate(self):
        self._proc.terminate()

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def _tail(self) -> str:
        return f"; it printed:\n{self.output[-6000:]}"

    def finish(self, stall=None) -> str:
        """Wait until the process has exited and the pipe is closed (children that inherited it included);
        return everything it printed."""
        until(lambda: self._closed.is_set() and self._proc.poll() is not None,
              f"{' '.join(self.args[1:4])} ... to finish", progress=lambda: len(self._lines), stall=stall,
              detail=self._tail)
        return self.output

    def exit_code(self, stall=None) -> int:
        self.finish(stall)
        return self._proc.returncode

    def until(self, check, what, stall=None, progress=None):
        """Like `until`, for something this process is doing: its lines count as progress (with `progress`'s
        snapshot, if given), and its end before `check` holds is an error that shows its output."""
        def checked():
            found = check()
            if not found and self._proc.poll() is not None:
                raise AssertionError(f"the process ended (code {self._proc.returncode}) before {what}{self._tail()}")
            return found
        return until(checked, what, progress=lambda: (len(self._lines), progress and progress()), stall=stall,
                     detail=self._tail)
