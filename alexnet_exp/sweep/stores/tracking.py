"""The only writer to MLflow: one experiment per study, one parent run per study, one child run per trial.

Uses `MlflowClient` with explicit run ids (no fluent "active run" state), so a worker can hold runs of
different trials without one leaking into the other. Logging is batched: one call per epoch.

Trial runs also carry system metrics (`system/cpu_utilization_percentage`, memory, and `system/gpu_<i>_*` where
NVML sees a GPU) from MLflow's own `SystemMetricsMonitor`, attached to the run id, so that the runs of
`--trials-per-gpu 1` and `2` show whether sharing a GPU pays.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from ...locks import file_lock, sqlite_path
from ...redaction import redact_text, redact_url
from .. import keys
from ..progress import warn
from .interrupts import whole_write

MAX_BATCH = 900  # MLflow accepts at most 1000 metrics in one log_batch call
# System metrics: sampled every 2 s and logged as the mean of 5 samples, one point per 10 s; a trial's last,
# partial window is logged when its run ends. Trials of seconds get a point or two, trials of an hour 360 points
# per metric (MLflow's default, one unaveraged sample per 10 s, would show nothing for most smoke trials).
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL / _SAMPLES_BEFORE_LOGGING override both, as MLflow documents.
SYSTEM_METRICS_INTERVAL_S = 2.0
SYSTEM_METRICS_SAMPLES_PER_POINT = 5


# The experiment's kind, as the MLflow UI (3.x) records it when a person picks one; without it the UI infers
# one. (Its GenAI / Model training switch at the top left is the browser's own setting, not this tag.)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

SQLITE_LOCK_PATIENCE_S = 180.0  # how long a call waits, in all, for a SQLite store locked by another process


class _PatientClient:
    """An MlflowClient whose calls wait for a SQLite store's write lock instead of failing. MLflow gives each
    session a 20 s busy timeout: a worker paused while it holds the lock (a frozen VM, a swap storm) made
    another worker's trial fail with "database is locked". A locked call was rolled back, so calling it again
    is safe. Optuna's storage waits likewise (study_store.open_storage)."""

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def patient(*args, **kwargs):
            deadline = time.monotonic() + SQLITE_LOCK_PATIENCE_S
            said = False
            while True:
                try:
                    with whole_write():  # a signal waits for the write's end, not cut it with the lock held
                        return attr(*args, **kwargs)
                except Exception as exc:
                    if "database is locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    if not said:  # once per call: MLflow's session already waited 20 s before each of these
                        print(f"MLflow's database is locked by another process; waiting ({name})",
                              file=sys.stderr, flush=True)
                        said = True
                    time.sleep(1.0)
        return patient


def ui_runs_address(host: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment on `host`; a run's page is this address + `/<run id>`."""
    return f"{host.rstrip('/')}/#/experiments/{experiment_id}/runs"


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


def _check_system_metrics() -> None:
    try:
        import psutil  # noqa: F401  (MLflow's CPU and memory monitor reads it; mlflow does not require it)
    except ImportError:
        raise RuntimeError("system metrics need psutil: pip install psutil (a dependency of alexnet_exp), or turn "
                           "them off (Tracker(system_metrics=False))") from None
    # psutil's CPU percentage is measured since its previous call; the first call returns 0.0. Call it once
    # here so that a worker's first trial's first sample measures something.
    psutil.cpu_percent()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return str(value)[:6000]  # MLflow's limit on a param/tag value


def _is_duplicate_key(exc: Exception) -> bool:
    """A database's unique-key violation, as MLflow passes it on (SQLite's or PostgreSQL's wording, or a server's
    INTERNAL_ERROR carrying either)."""
    text = str(exc)
    return "UNIQUE constraint failed" in text or "duplicate key value" in text or "IntegrityError" in text


def check_model_name(name: str) -> None:
    """MLflow's own rule for registered model names (mlflow.utils.validation._validate_model_name), checked
    before a sweep trains rather than when it registers."""
    if not name.strip() or "/" in name or ":" in name:
        raise RuntimeError(f"--register-model {name!r}: a registered model's name must be non-empty and hold "
                           f"no '/' or ':'")


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str, system_metrics: bool = True,
                 registered_model: Optional[str] = None):
        """`system_metrics`: attach MLflow's system-metrics monitor to each trial run (needs psutil).
        `registered_model`: register each model `log_model` logs (the best trial's) under this name in the
        model registry of the tracking URI (MLFLOW_REGISTRY_URI when set); checked here, before any work."""
        # The sweep prints the runs table's link itself; MLflow would print one per finished run.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = tracking_uri
        self.system_metrics = system_metrics
        self.registered_model = registered_model
        self._monitors: dict[str, Any] = {}  # run id -> its SystemMetricsMonitor, while the run is open here
        if system_metrics:
            _check_system_metrics()
            # MLflow's monitor says "Started/Stopping ... monitoring" at INFO for every run: 4 lines per trial
            # between the sweep's own. Its warnings (a point that could not be logged) still show.
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        if registered_model is not None:
            check_model_name(registered_model)
        if tracking_uri.startswith(("http://", "https://")):
            check_server(tracking_uri)
        db = sqlite_path(tracking_uri)
        self._sqlite = db is not None  # a signal cut inside a write could leave its lock held (interrupts.py)
        if db is None:
            self.client = MlflowClient(tracking_uri)
            self.experiment_id = self._ensure_experiment(experiment_name)
            if registered_model is not None:
                self._check_registry()
        else:
            # Processes that first touch a fresh mlflow.db at the same moment crash in MLflow's schema migration
            # and can leave the file unusable: the first touch (the client's store, which migrates) and the
            # experiment's creation happen one process at a time.
            with file_lock(db.with_name(db.name + ".lock")):
                self.client = _PatientClient(MlflowClient(tracking_uri))
                self.experiment_id = self._ensure_experiment(experiment_name)
                if registered_model is not None:
                    self._check_registry()  # opens the registry's store on the same file: under the lock too

    def _check_registry(self) -> None:
        """A registry that cannot be written (a file store without MLFLOW_ALLOW_FILE_STORE, a server without
        one) would fail only after the sweep; ask it now."""
        try:
            self.client.search_registered_models(max_results=1)
        except Exception as exc:
            raise RuntimeError(
                f"--register-model {self.registered_model!r}: the model registry of {self.shown_uri} cannot be used "
                f"({type(exc).__name__}: {redact_text(str(exc)).splitlines()[0] if str(exc) else ''}); use a "
                f"database tracking URI (--tracking-uri sqlite:///mlflow.db, the default) or a tracking server "
                f"with a database backend, or point MLFLOW_REGISTRY_URI at one") from None

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
            if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older version: say what it is now
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self._artifact_location(),
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
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

    def ui_link(self) -> str:
        """The experiment's runs table: on the tracking server itself when there is one (its URL without a
        password), else where `mlflow ui` started in the store's folder serves it."""
        host = redact_url(self.tracking_uri) if self.is_server else "http://127.0.0.1:5000"
        return ui_runs_address(host, self.experiment_id)

    def run_link(self, run_id: str) -> str:
        """A run's own page in the MLflow UI (on the server, or under `mlflow ui` in the store's folder)."""
        return f"{self.ui_link()}/{run_id}"

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
                                     tags={keys.ROLE_TAG: keys.ROLE_STUDY, **{k: _text(v) for k, v in tags.items()}})
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
            "mlflow.parentRunId": parent_id, keys.ROLE_TAG: keys.ROLE_TRIAL,
            **{k: _text(v) for k, v in tags.items()}})
        run_id = run.info.run_id
        self.log_params(run_id, params)
        if self.system_metrics:
            self._start_monitor(run_id)
        return run_id

    def _start_monitor(self, run_id: str) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                       samples_before_logging=SYSTEM_METRICS_SAMPLES_PER_POINT,
                                       tracking_uri=self.tracking_uri)
        monitor.start()
        self._monitors[run_id] = monitor

    def _stop_monitor(self, run_id: str) -> None:
        """Stop the run's monitor (if this process started one) and log what it sampled since its last point.
        MLflow's own `finish` drops the samples of the last, partial window; a trial shorter than one window
        would get no point at all. A monitor stopped before its thread took a sample takes one here, so every
        monitored run has at least one point."""
        monitor = self._monitors.pop(run_id, None)
        if monitor is None:
            return
        with whole_write() if self._sqlite else contextlib.nullcontext():  # MLflow's own client, not ours
            monitor.finish()  # stops and joins its thread, then flushes the points it queued
            if not any(m.metrics for m in monitor.monitors):
                monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()

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
        for attempt in range(3):
            try:
                self.client.log_inputs(run_id, inputs)
                return
            except mlflow.exceptions.MlflowException as exc:
                # Runs that log the same new dataset at once (parallel first trials) race to insert it: MLflow
                # looks for the dataset, then inserts it, and the loser's insert breaks the unique key. The
                # dataset exists now, so the next call finds it and only links it to this run.
                if attempt == 2 or not _is_duplicate_key(exc):
                    raise

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
        """status: FINISHED, FAILED or KILLED (MLflow has no 'pruned': pruned trials are KILLED + tag).
        Every way a trial's run ends comes here, so its system-metrics monitor stops here too (before the run is
        closed, so its last points land on an open run)."""
        try:
            self._stop_monitor(run_id)
        except Exception as exc:  # a chart of CPU load is not worth leaving the run RUNNING
            print(f"warning: could not log the last system metrics of MLflow run {run_id}: "
                  f"{type(exc).__name__}: {redact_text(str(exc))}", file=sys.stderr)
        self.set_tags(run_id, tags or {})
        self.client.set_terminated(run_id, status=status, end_time=_now_ms())

    def log_model(self, run_id: str, model, input_example, name: str = "model",
                  metrics: Optional[dict[str, float]] = None, step: int = 0,
                  tags: Optional[dict[str, Any]] = None, link_metrics: tuple[str, ...] = ()) -> Optional[str]:
        """Log `model` on the run with a signature (float32 batch of NCHW images -> logits) and `input_example`
        (a few images as the model receives them: after the eval transform, resized and normalised), with
        `metrics` logged on the run and linked to the model (its page and `search_logged_models` show them,
        not the CPU's), the last point of each of the run's `link_metrics` linked too, and register it under
        `registered_model` if set, the version tagged with `tags`.
        The run keeps its own end time and status: reopened for this, its duration would include the finish
        step. Returns the logged model's URI (`models:/<id>`)."""
        import torch
        from mlflow.models import infer_signature

        model = model.cpu().eval()
        example = input_example.detach().float().cpu().contiguous()
        with torch.no_grad():
            logits = model(example).float()
        # infer_signature makes the batch dimension -1: any batch size is valid input.
        signature = infer_signature(example.numpy(), logits.numpy())
        before = self.client.get_run(run_id).info
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            return self._log_model_on(run_id, model, example, signature, name, metrics, step, tags, link_metrics)
        finally:
            # whatever happened (an export that failed ends the `with` below FAILED): the run keeps its own
            if before.status != "RUNNING" and before.end_time:
                self.client.set_terminated(run_id, status=before.status, end_time=before.end_time)

    def _log_model_on(self, run_id, model, example, signature, name, metrics, step, tags, link_metrics) -> str:
        import torch

        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            # Explicit requirements: inferring them would load the model in a subprocess (seconds).
            # `pt2` (torch.export, the batch dimension dynamic from the signature): loading it runs no pickled
            # code, so MLflow's warning about pickle is gone; load_model gives a GraphModule for inference.
            # Training it further starts from the weights (sweeps/<study>/weights) and build_model instead.
            # step=-1: log_model links every run metric logged at its `step` to the model, and the system
            # metrics' sample indices (0, 1, ...) would be among them; no metric is logged at -1.
            info = mlflow.pytorch.log_model(model, name=name, serialization_format="pt2", signature=signature,
                                            input_example=example.numpy(), tags={k: str(v) for k, v in
                                                                                 (tags or {}).items()},
                                            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                            step=-1)
            if metrics:
                mlflow.log_metrics(metrics, step=step, model_id=info.model_id)
            try:
                self._link_last_points(run_id, link_metrics, info.model_id)
            except Exception as exc:  # the model and its test metrics stand without these links
                warn("could not link the validation metrics to the logged model", exc)
        if self.registered_model is not None:
            self.register_model(run_id, tags)
        return info.model_uri

    def _link_last_points(self, run_id: str, keys: tuple[str, ...], model_id: str) -> None:
        """Link the run's last point of each metric in `keys` to the logged model. Logged again as it is (same
        step, value and time), the run's own history gains no point: MLflow's store skips a metric row it
        already has and adds only the model's link."""
        from mlflow.entities import Metric

        points = []
        for key in keys:
            history = self.client.get_metric_history(run_id, key)
            if history:
                last = max(history, key=lambda m: (m.step, m.timestamp))
                points.append(Metric(key, last.value, last.timestamp, last.step, model_id=model_id))
        if points:
            self.client.log_batch(run_id, metrics=points)

    def register_model(self, run_id: str, tags: Optional[dict[str, Any]] = None) -> Optional[int]:
        """Register the latest model logged by `run_id` under `registered_model`, unless a version of that name
        already holds it (a sweep run again with --register-model after its test evaluation); the version gets
        `tags` (where it came from, what it scores) and the alias `best`. Returns the version number, or None
        when no name is set. Raises when the run logged no model."""
        if self.registered_model is None:
            return None
        models = self.client.search_logged_models(experiment_ids=[self.experiment_id],
                                                  filter_string=f"source_run_id = '{run_id}'",
                                                  order_by=[{"field_name": "creation_time", "ascending": False}])
        if not models:
            raise RuntimeError(f"run {run_id} logged no model to register as {self.registered_model!r}")
        source = f"models:/{models[0].model_id}"
        # `source`, not `model_id`: the SQL registry's search leaves a version's model_id empty (MLflow 3.17).
        for version in self.client.search_model_versions(f"name = '{self.registered_model}'"):
            if version.source == source:
                return int(version.version)
        mlflow.set_tracking_uri(self.tracking_uri)
        version = mlflow.register_model(source, self.registered_model, tags={k: str(v) for k, v in
                                                                              (tags or {}).items()})
        # the registry alone says which version is the study's choice
        self.client.set_registered_model_alias(self.registered_model, "best", version.version)
        return int(version.version)

    def child_runs(self, parent_id: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                       max_results=50000)

    def close_stale(self, parent_id: str, live_trials: set[int]) -> list[str]:
        """Mark as FAILED the RUNNING child runs whose trial is not running any more (a killed process)."""
        closed = []
        for run in self.child_runs(parent_id):
            trial = run.data.tags.get(keys.TRIAL_TAG)
            if run.info.status == "RUNNING" and (trial is None or int(trial) not in live_trials):
                why = "stale: its process ended without closing it"
                self.finish(run.info.run_id, "FAILED", {keys.STATE_TAG: "FAIL", keys.FAIL_REASON: why})
                closed.append(run.info.run_id)
        return closed
