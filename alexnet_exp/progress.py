"""What a person watching a sweep sees: trial k of N, epoch e of E, the current and best metric, elapsed and
estimated time (tqdm's), or with `quiet` plain log lines that suit files and CI logs."""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

from tqdm import tqdm


class SweepProgress:
    def __init__(self, total: int, done: int, epochs: int, metric: str, quiet: bool = False, prefix: str = ""):
        self.total, self.epochs, self.metric, self.quiet, self.prefix = total, epochs, metric, quiet, prefix
        self.started = time.monotonic()
        self.best: Optional[float] = None
        self.trial_epochs: dict[int, int] = {}  # a trial's own epoch budget (baselines and sampled epochs differ)
        self.bar = None if quiet else tqdm(total=total, initial=done, unit="trial", dynamic_ncols=True,
                                           file=sys.stderr, desc="sweep")

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(f"[{time.monotonic() - self.started:7.1f}s] {self.prefix}{text}", flush=True)

    def trial_started(self, number: int, values: dict) -> None:
        shown = ", ".join(f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
                          for k, v in values.items())
        self.trial_epochs[number] = int(values.get("train.epochs", self.epochs))
        epochs = self.trial_epochs[number]
        self._say(f"trial {number} started ({epochs} epoch{'' if epochs == 1 else 's'}): {shown}")

    def epoch(self, number: int, epoch: int, value: float) -> None:
        best = "-" if self.best is None else f"{self.best:.4f}"
        text = (f"trial {number} epoch {epoch}/{self.trial_epochs.get(number, self.epochs)} {self.metric}={value:.4f} "
                f"best={best}")
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        else:
            self._say(text)

    def trial_finished(self, number: int, state: str, value: Optional[float], note: str, best: Optional[float],
                       counts: bool) -> None:
        self.best = best
        shown = "" if value is None else f" {self.metric}={value:.4f}"
        self._say(f"trial {number} {state}{shown}{f' ({note})' if note else ''}"
                  f"{'' if best is None else f'; best so far {best:.4f}'}")
        if self.bar is not None and counts:
            self.bar.update(1)

    def extend(self, more: int, why: str) -> None:
        """More trials to run than the search budget (the repeats): the bar's total grows, and says why."""
        self.total += more
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()
        self._say(why)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def warn(what: str, exc: Optional[BaseException] = None) -> None:
    """One line on stderr for a problem that does not stop the work (secrets masked)."""
    from .redaction import redact_text

    cause = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    print(redact_text(f"{worker_label()}warning: {what}{cause}"), file=sys.stderr, flush=True)


def worker_label() -> str:
    """`[worker i] ` in a worker process started by the launcher (which sets ALEXNET_EXP_WORKER), else ''."""
    index = os.environ.get("ALEXNET_EXP_WORKER")
    return f"[worker {index}] " if index is not None else ""
