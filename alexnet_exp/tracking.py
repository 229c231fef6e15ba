"""The only writer to MLflow: one experiment per study, one parent run per study, one child run per trial.

Uses `MlflowClient` with explicit run ids (no fluent "active run" state), so a worker can hold runs of
different trials without one leaking into the other. Logging is batched: one call per epoch.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from . import names
from .locks import file_lock, sqlite_path
from .redaction import redact_url

MAX_BATCH = 900  # MLflow accepts at most 1000 metrics in one log_batch call


def resolve_tracking_uri(configured: Optional[str]) -> str:
    """Flag or YAML, else MLFLOW_TRACKING_URI, else MLflow's own default (sqlite:///mlflow.db in this folder)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return mlflow.get_tracking_uri()


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail fast with a clear message: MLflow's client would retry an unreachable server for minutes."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"cannot reach the MLflow tracking server at {redact_url(uri)} ({exc}); start it "
                           f"(see README, Scaling out) or fix --tracking-uri / MLFLOW_TRACKING_URI") from None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return str(value)[:6000]  # MLflow's limit on a param/tag value


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str):
        # The sweep prints the runs table's link itself; MLflow would print one per finished run.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = tracking_uri
        if tracking_uri.startswith(("http://", "https://")):
            check_server(tracking_uri)
        db = sqlite_path(tracking_uri)
        if db is None:
            self.client = MlflowClient(tracking_uri)
            self.experiment_id = self._ensure_experiment(experiment_name)
        else:
            # Processes that first touch a fresh mlflow.db at the same moment crash in MLflow's schema migration
            # and can leave the file unusable: the first touch (the client's store, which migrates) and the
            # experiment's creation happen one process at a time.
            with file_lock(db.with_name(db.name + ".lock")):
                self.client = MlflowClient(tracking_uri)
                self.experiment_id = self._ensure_experiment(experiment_name)

    @property
    def is_server(self) -> bool:
        """A tracking server: its artifact store is shared by every machine that uses it."""
        return self.tracking_uri.startswith(("http://", "https://"))

    @property
    def shown_uri(self) -> str:
        """The tracking URI fit to print or record (no password)."""
        return redact_url(self.tracking_uri)

    def _ensure_experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self._artifact_location())
        except mlflow.exceptions.MlflowException as exc:
            # Another process (of another study with the same experiment, on a tracking server) was first.
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise exc
            return found.experiment_id

    def _artifact_location(self) -> Optional[str]:
        db = sqlite_path(self.tracking_uri)
        # Keep artifacts beside the database (MLflow would use ./mlruns of whatever folder we run in).
        return (db.resolve().parent / "mlruns").as_uri() if db is not None else None

    def ui_link(self, host: str = "http://127.0.0.1:5000") -> str:
        return f"{host}/#/experiments/{self.experiment_id}/runs"

    # ---- runs ---------------------------------------------------------------------------------------------

    def run_exists(self, run_id: Optional[str]) -> bool:
        if not run_id:
            return False
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise  # a server that is away is not a run that is gone: never make a second parent run
        return run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active"

    def start_parent(self, study_name: str, tags: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=study_name,
                                     tags={names.ROLE_TAG: names.ROLE_STUDY, **{k: _text(v) for k, v in tags.items()}})
        return run.info.run_id

    def run_status(self, run_id: str) -> Optional[str]:
        try:
            return self.client.get_run(run_id).info.status
        except mlflow.exceptions.MlflowException:
            return None

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def start_trial(self, parent_id: str, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={
            "mlflow.parentRunId": parent_id, names.ROLE_TAG: names.ROLE_TRIAL, **{k: _text(v) for k, v in tags.items()}})
        run_id = run.info.run_id
        self.log_params(run_id, params)
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int,
                    series: Iterable[tuple[str, int, float]] = ()) -> None:
        """One epoch's scalars at `step`, plus (name, step, value) series such as per-step losses."""
        now = _now_ms()
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        items += [Metric(name, float(v), now, s) for name, s, v in series]
        for start in range(0, len(items), MAX_BATCH):
            self.client.log_batch(run_id, metrics=items[start:start + MAX_BATCH])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, _text(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, _text(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, profiles: dict[str, str]) -> None:
        """The dataset's splits as the run's inputs, one per context (`training`, `validation`, `test`)."""
        inputs = [DatasetInput(Dataset(name=name, digest=f"{digest}-{context}"[:36], source_type="local",
                                       source=source, profile=profile),
                               [InputTag("mlflow.data.context", context)])
                  for context, profile in profiles.items()]
        self.client.log_inputs(run_id, inputs)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_file(self, run_id: str, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def download(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
        """One artifact of a run, copied into `dst_dir`; raises when the run has no such artifact."""
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst_dir)))

    def delete_artifacts(self, run_id: str, artifact_path: str) -> None:
        """Remove a folder of a run's artifacts (a checkpoint no longer needed). Not every artifact store can."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(self.client.get_run(run_id).info.artifact_uri, tracking_uri=self.tracking_uri)
        repo.delete_artifacts(artifact_path)

    def finish(self, run_id: str, status: str, tags: Optional[dict[str, Any]] = None) -> None:
        """status: FINISHED, FAILED or KILLED (MLflow has no 'pruned': pruned trials are KILLED + tag)."""
        self.set_tags(run_id, tags or {})
        self.client.set_terminated(run_id, status=status, end_time=_now_ms())

    def log_model(self, run_id: str, model, name: str = "model") -> None:
        import torch

        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            # Explicit requirements: inferring them would load the model in a subprocess (seconds).
            # `pickle`: MLflow 3.17's default `pt2` format needs an input example to trace the graph.
            mlflow.pytorch.log_model(model.cpu(), name=name, serialization_format="pickle",
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def child_runs(self, parent_id: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                       max_results=50000)

    def close_stale(self, parent_id: str, live_trials: set[int]) -> list[str]:
        """Mark as FAILED the RUNNING child runs whose trial is not running any more (a killed process)."""
        closed = []
        for run in self.child_runs(parent_id):
            trial = run.data.tags.get(names.TRIAL_TAG)
            if run.info.status == "RUNNING" and (trial is None or int(trial) not in live_trials):
                self.finish(run.info.run_id, "FAILED", {names.STATE_TAG: "FAIL",
                                                       "fail_reason": "stale: its process ended without closing it"})
                closed.append(run.info.run_id)
        return closed
