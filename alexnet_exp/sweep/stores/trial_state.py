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

from .. import keys
from ..progress import warn as _warn
from .tracking import Tracker

CHECKPOINT_ARTIFACTS = "checkpoint"  # artifact folder of a trial's run: its latest per-epoch state
WEIGHTS_ARTIFACTS = "weights"  # artifact folder of a trial's run: its final weights, when it was the best


class _WholeWrites:
    """The file torch.save writes into: each write whole or an OSError, which it keeps. On a full disk torch's
    zip writer swallows the OSError of a write and raises "unexpected pos 704 vs 598" (no errno, no path);
    save_atomically raises the kept OSError instead."""

    def __init__(self, raw):
        self.raw = raw
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += self.raw.write(view[done:])  # unbuffered: a short write, then ENOSPC asked for the rest
        except OSError as exc:
            self.error = exc
            raise
        return len(view)

    def flush(self) -> None:
        pass  # unbuffered: every write is with the OS already


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save to a temp file beside `path`, then rename: a reader never sees half a file. A failed write
    (a full disk, a read-only or vanished folder) raises OSError naming `path` (torch.save given a file name
    raises "unexpected pos 704 vs 598" instead, see _WholeWrites)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path.parent)) from None
    writer = None
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            writer = _WholeWrites(f)
            torch.save(obj, writer)
        os.replace(tmp, path)
    except Exception as exc:
        failed = writer.error if writer is not None and writer.error is not None else exc
        if isinstance(failed, OSError):
            raise OSError(failed.errno, failed.strerror, str(path)) from None
        raise
    finally:
        try:
            os.unlink(tmp)
        except OSError:  # renamed into place, or its folder is gone: nothing to clean
            pass


FINGERPRINT_KEY = "config_fingerprint"
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "schedule", "rng_cpu", "rng_generator", "history", "stalled_for",
                   "global_step")  # what train.fit writes and reads back


def _checkpoint_problem(state: Any, fingerprint: str) -> Optional[str]:
    """Why a loaded object is not a checkpoint this trial may resume, or None."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a training state"
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    # Checkpoints written before fingerprints were recorded carry none: they are tried as they are.
    if state.get(FINGERPRINT_KEY, fingerprint) != fingerprint:
        return "was trained with another configuration"
    return None


class TrialStateStore:
    def __init__(self, checkpoints_dir: Optional[Path], weights_dir: Path, shared: Optional[Tracker] = None):
        self.checkpoints_dir = checkpoints_dir  # None: no per-epoch checkpoints
        self.weights_dir = weights_dir
        self.shared = shared  # the tracker whose artifact store every machine reads; None: local only
        self._upload_failed: set[Path] = set()  # warned about, until an upload of it works again

    # ---- per-epoch checkpoints (keyed by the first trial of a retry chain) ----------------------------------

    def checkpoint_path(self, chain_root: int) -> Optional[Path]:
        return None if self.checkpoints_dir is None else self.checkpoints_dir / f"trial_{chain_root:05d}.pt"

    def save_checkpoint(self, state: dict, path: Path, run_id: str, fingerprint: str) -> None:
        """`fingerprint`: what the state was trained with (objective.training_fingerprint); a checkpoint is only
        resumed by a trial with the same."""
        save_atomically({**state, FINGERPRINT_KEY: fingerprint}, path)
        self._upload(run_id, path, CHECKPOINT_ARTIFACTS, "this machine resumes from it; a retry on another machine "
                                                         "starts from an earlier upload or from epoch 1")

    def load_checkpoint(self, path: Optional[Path], earlier_runs: Iterable[str],
                        fingerprint: str) -> tuple[Optional[dict], list[str]]:
        """The local checkpoint, else (shared store) the newest one an earlier run of the chain uploaded; None
        when there is none that loads. A file that does not load (truncated, not a checkpoint, trained with
        another configuration) is not trusted: it is renamed `*.corrupt` (kept to look at), named in a warning,
        and the next candidate is tried. Returns the state and what was moved aside (one line each)."""
        if path is None:
            return None, []
        moved_aside: list[str] = []
        state = self._load_valid(path, fingerprint, moved_aside)
        if state is None and self.shared is not None:
            for run_id in earlier_runs:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    # beside the destination: os.replace cannot cross filesystems (a node-local /tmp)
                    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                        got = self.shared.download(run_id, f"{CHECKPOINT_ARTIFACTS}/{path.name}", Path(tmp))
                        os.replace(got, path)
                except Exception:  # that run died before its first checkpoint: try the one before it
                    continue
                state = self._load_valid(path, fingerprint, moved_aside, f" (from MLflow run {run_id})")
                if state is not None:
                    break
        return state, moved_aside

    @staticmethod
    def _load_valid(path: Path, fingerprint: str, moved_aside: list[str], origin: str = "") -> Optional[dict]:
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            problem = _checkpoint_problem(state, fingerprint)
        except Exception as exc:  # truncated, not a zip archive, unpickling refused: all say "do not trust it"
            state, problem = None, f"does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        if problem is None:
            return state
        corrupt = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, corrupt)
            where = f"moved aside to {corrupt.name}"
        except OSError as exc:
            where = f"could not be moved aside ({exc}); it is ignored"
        line = f"checkpoint {path.resolve()}{origin} {problem}: {where}; the trial restarts from epoch 1"
        _warn(line)
        moved_aside.append(line)
        return None

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

    def discard_leftover_checkpoints(self, run_ids: Iterable[Optional[str]]) -> None:
        """Remove every checkpoint file of the study, and those `run_ids` uploaded (best effort, as above)."""
        if self.checkpoints_dir is not None and self.checkpoints_dir.is_dir():
            for path in self.checkpoints_dir.glob("trial_*.pt"):  # *.pt.corrupt ones stay, to be looked at
                self.discard_checkpoint(path, [])
        if self.shared is not None:
            for run_id in filter(None, run_ids):
                try:
                    self.shared.delete_artifacts(run_id, CHECKPOINT_ARTIFACTS)
                except Exception:  # that run uploaded none
                    pass

    # ---- the best trial's weights -------------------------------------------------------------------------

    def save_weights(self, state_dict: dict, trial_number: int, run_id: str) -> None:
        path = keys.weights_path(self.weights_dir, trial_number)
        save_atomically(state_dict, path)
        self._upload(run_id, path, WEIGHTS_ARTIFACTS, "a finish step on this machine finds them; elsewhere the "
                                                      "process that trained them evaluates them on the test split")

    def _upload(self, run_id: str, path: Path, artifact_path: str, fallback: str) -> None:
        """Copy a file written here to the run's artifacts (shared store only). A failed upload (the artifact
        store full, unwritable or away) is a warning, not a failed trial: the file is safe on this machine and
        the training goes on. Said once per file and process, not at every epoch."""
        if self.shared is None:
            return
        try:
            self.shared.log_file(run_id, path, artifact_path)
        except Exception as exc:
            if path not in self._upload_failed:
                self._upload_failed.add(path)
                _warn(f"could not upload {path} to the artifacts of run {run_id} ({fallback})", exc)
        else:
            self._upload_failed.discard(path)

    def fetch_weights(self, trial_number: int, run_id: Optional[str]) -> Optional[Path]:
        """The trial's weights on this machine, downloaded from its run when they are not here yet."""
        path = keys.weights_path(self.weights_dir, trial_number)
        if not path.is_file() and self.shared is not None and run_id:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    got = self.shared.download(run_id, f"{WEIGHTS_ARTIFACTS}/{path.name}", Path(tmp))
                    os.replace(got, path)
            except Exception as exc:
                _warn(f"could not download the weights of trial {trial_number} from run {run_id}", exc)
        return path if path.is_file() else None
