"""What a person watching a sweep sees: trial k of N, epoch e of E, the current and best metric, elapsed and
estimated time (tqdm's), or with `quiet` plain log lines that suit files and CI logs."""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

from tqdm import tqdm


class SweepProgress:
    """What a sweep says while it runs: one line per trial start and end (and epoch, without a bar), and on a
    terminal a bar over the budget's epochs, so that its ETA moves with every epoch, not only when a trial
    ends. Written to a file (stderr not a terminal), it prints plain lines instead of the bar's frames."""

    def __init__(self, total: int, done: int, epochs: int, metric: str, quiet: bool = False, prefix: str = ""):
        self.total, self.epochs, self.metric, self.prefix = total, epochs, metric, prefix
        self.quiet = quiet or not sys.stderr.isatty()
        self.started = time.monotonic()
        self.best: Optional[float] = None
        self.trial_epochs: dict[int, int] = {}  # a trial's own epoch budget (baselines and sampled epochs differ)
        self.shown: dict[int, int] = {}  # epochs of each running trial counted in the bar
        self.bar = None if self.quiet else tqdm(total=total * epochs, initial=done * epochs, unit="epoch",
                                                dynamic_ncols=True, file=sys.stderr, desc="sweep")

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(f"[{time.monotonic() - self.started:7.1f}s] {self.prefix}{text}", flush=True)

    def _advance(self, number: int, epochs: int) -> None:
        """Count trial `number` as `epochs` epochs into its run in the bar (back, for a try that ends without a
        verdict: its retry counts them again)."""
        if self.bar is not None:
            self.bar.update(epochs - self.shown.get(number, 0))
        self.shown[number] = epochs

    def trial_started(self, number: int, values: dict) -> None:
        shown = ", ".join(f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
                          for k, v in values.items())
        self.trial_epochs[number] = int(values.get("train.epochs", self.epochs))
        epochs = self.trial_epochs[number]
        if self.bar is not None and epochs != self.epochs:  # a baseline or a sampled epoch count
            self.bar.total += epochs - self.epochs
            self.bar.refresh()
        self._say(f"trial {number} started ({epochs} epoch{'' if epochs == 1 else 's'}): {shown}")

    def trial_resumed(self, number: int, epoch: int, what: str) -> None:
        self._say(f"trial {number} resumes after epoch {epoch} of {self.trial_epochs.get(number, self.epochs)} "
                  f"({what})")
        self._advance(number, epoch)

    def epoch(self, number: int, epoch: int, value: float) -> None:
        best = "-" if self.best is None else f"{self.best:.4f}"
        text = (f"trial {number} epoch {epoch}/{self.trial_epochs.get(number, self.epochs)} {self.metric}={value:.4f} "
                f"best={best}")
        self._advance(number, epoch)
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
        # a verdict spends the trial's whole budget (a pruned trial's unrun epochs are saved time, not owed)
        self._advance(number, self.trial_epochs.get(number, self.epochs) if counts else 0)
        self.shown.pop(number, None)
        if self.bar is not None and best is not None:  # else the bar shows the last epoch's older best till the next
            self.bar.set_postfix_str(f"best={best:.4f}")

    def extend(self, more: int, why: str) -> None:
        """More trials to run than the search budget (the repeats): the bar's total grows, and says why."""
        self.total += more
        if self.bar is not None:
            self.bar.total += more * self.epochs
            self.bar.refresh()
        self._say(why)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def warn(what: str, exc: Optional[BaseException] = None) -> None:
    """One line on stderr for a problem that does not stop the work (secrets masked)."""
    from ..redaction import redact_text

    cause = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    print(redact_text(f"{worker_label()}warning: {what}{cause}"), file=sys.stderr, flush=True)


def worker_label() -> str:
    """`[worker i] ` in a worker process started by the launcher (which sets ALEXNET_EXP_WORKER), else ''."""
    index = os.environ.get("ALEXNET_EXP_WORKER")
    return f"[worker {index}] " if index is not None else ""
