"""Where a trial's per-epoch checkpoint and the best trial's weights live.

Always in a local folder (`sweeps/<study>/checkpoints/`, `.../weights/`): the fast path on one machine. With the
shared store (`study.state_store: mlflow`, the default when MLflow is a tracking server), each is also an
artifact of the trial's MLflow run, which every machine can read: a trial retried on another machine resumes
from its last epoch, and the finish step can evaluate the best trial anywhere.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from . import names
from .progress import warn as _warn
from .tracking import Tracker

CHECKPOINT_ARTIFACTS = "checkpoint"  # artifact folder of a trial's run: its latest per-epoch state
WEIGHTS_ARTIFACTS = "weights"  # artifact folder of a trial's run: its final weights, when it was the best


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save to a temp file beside `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class TrialStateStore:
    def __init__(self, checkpoints_dir: Optional[Path], weights_dir: Path, shared: Optional[Tracker] = None):
        self.checkpoints_dir = checkpoints_dir  # None: no per-epoch checkpoints
        self.weights_dir = weights_dir
        self.shared = shared  # the tracker whose artifact store every machine reads; None: local only

    # ---- per-epoch checkpoints (keyed by the first trial of a retry chain) ----------------------------------

    def checkpoint_path(self, chain_root: int) -> Optional[Path]:
        return None if self.checkpoints_dir is None else self.checkpoints_dir / f"trial_{chain_root:05d}.pt"

    def save_checkpoint(self, state: dict, path: Path, run_id: str) -> None:
        save_atomically(state, path)
        if self.shared is not None:
            self.shared.log_file(run_id, path, CHECKPOINT_ARTIFACTS)

    def load_checkpoint(self, path: Optional[Path], earlier_runs: Iterable[str]) -> Optional[dict]:
        """The local checkpoint, else (shared store) the newest one an earlier run of the chain uploaded."""
        if path is None:
            return None
        if not path.is_file() and self.shared is not None:
            for run_id in earlier_runs:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    # beside the destination: os.replace cannot cross filesystems (a node-local /tmp)
                    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                        got = self.shared.download(run_id, f"{CHECKPOINT_ARTIFACTS}/{path.name}", Path(tmp))
                        os.replace(got, path)
                    break
                except Exception:  # that run died before its first checkpoint: try the one before it
                    continue
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def discard_checkpoint(self, path: Optional[Path], run_ids: Iterable[Optional[str]]) -> None:
        """Remove the chain's checkpoint, here and from its runs (`run_ids`: this one and those it retried).
        Best effort: a checkpoint that cannot be removed is left behind, not an error that would hide how the
        trial ended."""
        if path is None:
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            _warn(f"could not remove the checkpoint {path}", exc)
        if self.shared is None:
            return
        for run_id in filter(None, run_ids):
            try:
                self.shared.delete_artifacts(run_id, CHECKPOINT_ARTIFACTS)
            except Exception as exc:
                _warn(f"could not remove the checkpoint artifact of run {run_id}", exc)

    # ---- the best trial's weights -------------------------------------------------------------------------

    def save_weights(self, state_dict: dict, trial_number: int, run_id: str) -> None:
        path = names.weights_path(self.weights_dir, trial_number)
        save_atomically(state_dict, path)
        if self.shared is not None:
            self.shared.log_file(run_id, path, WEIGHTS_ARTIFACTS)

    def fetch_weights(self, trial_number: int, run_id: Optional[str]) -> Optional[Path]:
        """The trial's weights on this machine, downloaded from its run when they are not here yet."""
        path = names.weights_path(self.weights_dir, trial_number)
        if not path.is_file() and self.shared is not None and run_id:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    got = self.shared.download(run_id, f"{WEIGHTS_ARTIFACTS}/{path.name}", Path(tmp))
                    os.replace(got, path)
            except Exception as exc:
                _warn(f"could not download the weights of trial {trial_number} from run {run_id}", exc)
        return path if path.is_file() else None
