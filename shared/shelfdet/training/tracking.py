"""Where a run's numbers go besides the log.

- TensorBoard event files in ``<run>/output/tensorboard`` (SageMaker's /opt/ml/output/tensorboard, which
  TensorBoardOutputConfig syncs to S3 while the job runs). Two sub-runs, ``train`` and ``validation``,
  with the same tag for the same quantity (``total_loss``, ``loss_cls``, ...), so TensorBoard draws
  training and validation loss on one chart.
- An MLflow run when ``MLFLOW_TRACKING_URI`` is set (an http URL, a local path, or a SageMaker MLflow
  tracking server ARN through the sagemaker-mlflow plugin): hyperparameters and the environment line as
  params, the same scalars per iteration, the final metrics, the model folder as artefacts. Tracking
  never stops training: the first failure is one warning line and tracking is off for the run."""
from __future__ import annotations

import json
import logging
import numbers
import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

from detectron2.utils.events import EventWriter, TensorboardXWriter, get_event_storage

from shelfdet.core import redact

# mlflow (and its SageMaker plugin) and TensorBoard's writer are imported where a run turns them on:
# optional, slow to import, and a run without MLFLOW_TRACKING_URI never needs mlflow at all.
log = logging.getLogger("shelfdet.training")

# The validation hooks on the trainer; they keep their results out of the event storage so the printed
# lines SageMaker's metric regexes read keep their form.
VALIDATION_HOOKS = ("validation", "validation_ap")


def _validation_rows(trainer: Any, written: Dict[str, int]) -> List[Tuple[int, str, float]]:
    """(step, name, value) of the validation hooks' entries not yet written."""
    rows = []
    for attribute in VALIDATION_HOOKS:
        hook = getattr(trainer, attribute, None)
        entries = getattr(hook, "history", None) or []
        for entry in entries[written.get(attribute, 0):]:
            step = int(entry["iteration"]) - 1
            for key, value in entry.items():
                if key != "iteration" and isinstance(value, numbers.Number):
                    rows.append((step, key.replace("total_val_loss", "total_loss"), float(value)))
        written[attribute] = len(entries)
    return rows


def _photos_per_second(photos_per_batch: int, after: int) -> Optional[Tuple[int, float]]:
    """(step, images/s over the last 20 iterations) when the storage has a step past ``after``."""
    storage = get_event_storage()
    if "time" not in storage.histories():
        return None
    history = storage.history("time")
    step, seconds = int(history.values()[-1][1]), history.median(20)
    return (step, photos_per_batch / seconds) if step > after and seconds > 0 else None


class TensorBoard(EventWriter):
    """Detectron2's TensorboardXWriter for what the event storage holds (losses, lr, time, data_time), plus
    images/s beside it in ``train``, and the validation hooks' losses and AP in ``validation``."""

    def __init__(self, log_dir: str, trainer: Any, photos_per_batch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.training = TensorboardXWriter(os.path.join(log_dir, "train"))
        self.rate = SummaryWriter(os.path.join(log_dir, "train"), filename_suffix=".images_per_second")
        self.validation = SummaryWriter(os.path.join(log_dir, "validation"))
        self.trainer = trainer
        self.photos_per_batch = photos_per_batch
        self.written: Dict[str, int] = {}
        self.last_rate = -1

    def write(self) -> None:
        self.training.write()
        rate = _photos_per_second(self.photos_per_batch, self.last_rate)
        if rate:
            self.rate.add_scalar("images_per_second", rate[1], rate[0])
            self.last_rate = rate[0]
        for step, key, value in _validation_rows(self.trainer, self.written):
            self.validation.add_scalar(key, value, step)
        self.rate.flush()
        self.validation.flush()

    def close(self) -> None:
        self.training.close()
        self.rate.close()
        self.validation.close()


def tensorboard(log_dir: Optional[str], trainer: Any, photos_per_batch: int) -> Optional[TensorBoard]:
    """The writer, or None with one warning where the release's SummaryWriter cannot be imported."""
    if not log_dir:
        return None
    try:
        writer = TensorBoard(log_dir, trainer, photos_per_batch)
    except ImportError as err:
        log.warning("no TensorBoard event files: %s (the tensorboard package is missing)", err)
        return None
    log.info("TensorBoard event files in %s", log_dir)
    return writer


# A run resumed from its checkpoints continues its MLflow run: the id lives beside the checkpoints
# (on SageMaker, /opt/ml/checkpoints is synced to S3 and comes back after a spot interruption).
MLFLOW_STATE = "mlflow_run.json"


class MLflow(EventWriter):
    """One MLflow run per training run, through ``MlflowClient`` only (the fluent API's global active run
    would leak between the trainer and anything else in the process)."""

    def __init__(self, client: Any, run_id: str, uri: str, trainer: Any = None) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = redact.uri(uri)  # what the log shows: the client alone holds the credentials
        self.trainer = trainer
        self.last_step = -1
        self.written: Dict[str, int] = {}
        self.off = False

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        if self.off:
            return False
        try:
            fn(*args, **kwargs)
            return True
        except Exception as err:  # tracking never stops training
            self.off = True
            log.warning("MLflow tracking off for this run: %s at %s failed: %s: %s", what, self.uri,
                        type(err).__name__, _reason(err))
            return False

    def _log(self, what: str, metrics: List[Tuple[int, str, float]] = (), params: Dict[str, str] = None,
             tags: Dict[str, str] = None) -> bool:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for step, key, value in metrics]
        params = [Param(k, v) for k, v in (params or {}).items()]
        tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        # log_batch takes at most 1000 metrics, 100 params and 100 tags per call.
        calls = max(-(-len(batch) // 1000), -(-len(params) // 100), -(-len(tags) // 100), 1)
        ok = True
        for i in range(calls):
            ok = self._call(what, self.client.log_batch, self.run_id, metrics=batch[i * 1000:(i + 1) * 1000],
                            params=params[i * 100:(i + 1) * 100], tags=tags[i * 100:(i + 1) * 100]) and ok
        return ok

    def write(self) -> None:
        if self.off:
            return
        storage = get_event_storage()
        # Smoothed as Detectron2's JSONWriter and TensorboardXWriter write them (median of 20 for losses).
        rows = [(int(step), name, float(value)) for name, (value, step) in storage.latest_with_smoothing_hint(20).items()
                if int(step) > self.last_step and isinstance(value, numbers.Number)]
        rate = _photos_per_second(self.trainer.cfg.SOLVER.IMS_PER_BATCH, self.last_step)
        if rate:
            rows.append((rate[0], "images_per_second", rate[1]))
        rows += [(step, "validation_" + key, value) for step, key, value in _validation_rows(self.trainer, self.written)]
        if rows:
            self.last_step = max([self.last_step] + [step for step, name, _ in rows if not name.startswith("validation_")])
            self._log("logging metrics", rows)

    def close(self) -> None:
        pass  # the run ends in end(), after the final evaluation

    def end(self, metrics: Optional[Dict[str, Any]] = None, model_dir: Optional[str] = None,
            status: str = "FINISHED") -> None:
        """Final metrics (at the last iteration), the model folder as artefacts under ``model/``, the status."""
        if metrics:
            step = int(metrics.get("iterations", 0))
            self._log("logging the final metrics", [(step, k, float(v)) for k, v in metrics.items()
                                                     if isinstance(v, numbers.Number) and not isinstance(v, bool)])
        if model_dir and os.path.isdir(model_dir):
            if self._call("uploading the model folder", self.client.log_artifacts, self.run_id, model_dir, "model"):
                log.info("MLflow: model folder logged as artefacts of run %s", self.run_id)
        self._call("ending the run", self.client.set_terminated, self.run_id, status)


def _reason(err: BaseException) -> str:
    """The first line of an error, without the credentials of any URL it quotes (MLflow's name the URL called)."""
    return redact.text(str(err).splitlines()[0][:300]) if str(err) else ""


def mlflow_run(uri: Optional[str], state_dir: str, run_name: str, params: Dict[str, str], tags: Dict[str, str],
               trainer: Any = None) -> Optional[MLflow]:
    """The MLflow run for this training run (a resumed run continues its own), or None: no URI, or
    one warning line saying why tracking is off."""
    if not uri:
        return None
    # Logged and stored without a user, password or token: MlflowClient alone gets the URI as given.
    shown = redact.uri(uri)
    if shown != uri:
        # MLflow prints "View run ... at <its host URL>" when a run ends, credentials and all; our own
        # "MLflow: run ... at" line already names it without them. Overridden, not defaulted: "false" would leak.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    # MLflow retries an unreachable server 7 times with backoff (minutes); one short retry is enough
    # for a tracker that must not hold training up.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if "://" not in uri or uri.startswith("file:"):
        # A folder: MLflow 3 keeps its file store but refuses it unless asked; a folder is what was asked for.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        log.warning("MLflow tracking off: Python %s here cannot import mlflow (%s); MLFLOW_TRACKING_URI=%s is ignored",
                    platform.python_version(), err, shown)
        return None
    if uri.startswith("arn:"):
        try:
            import sagemaker_mlflow  # noqa: F401  (registers the arn tracking store)
        except ImportError:
            log.warning("MLflow tracking off: MLFLOW_TRACKING_URI is a SageMaker MLflow ARN, and its plugin "
                        "sagemaker-mlflow is not installed here")
            return None
    else:
        # sagemaker-mlflow's header provider runs on every request and fails (one warning per request)
        # on any URI that is not an ARN: only ARN URIs need it.
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)
    # MLflow appends its API paths to the URI, so a query-string token could never reach the server (it
    # would end up inside the query, and in urllib3's retry warnings): the client gets the URI without it,
    # and user:password@ stays (MLflow's HTTP client sends it as basic auth).
    client_uri = redact.uri(uri, keep_user=True) or uri
    if client_uri != uri:
        log.warning("MLflow: the credential in MLFLOW_TRACKING_URI's query string is not sent (MLflow adds its API "
                    "paths after it); set MLFLOW_TRACKING_TOKEN, or user:password@ in the URI")
    client = MlflowClient(tracking_uri=client_uri)
    tracker = MLflow(client, "", uri, trainer)
    state_file = os.path.join(state_dir, MLFLOW_STATE)
    state = {}
    if os.path.isfile(state_file):
        with open(state_file) as f:
            state = json.load(f)
    try:
        if redact.uri(state.get("tracking_uri")) == shown and state.get("run_id"):
            tracker.run_id = state["run_id"]
            client.update_run(tracker.run_id, status="RUNNING")
            log.info("MLflow: continuing run %s at %s", tracker.run_id, shown)
            return tracker  # params are immutable in MLflow, and already there
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "shelfdet")
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    except Exception as err:
        log.warning("MLflow tracking off: %s unreachable or refused the run: %s: %s", shown, type(err).__name__,
                    _reason(err))
        return None
    tracker.run_id = run.info.run_id
    os.makedirs(state_dir, exist_ok=True)
    with open(state_file, "w") as f:
        json.dump({"tracking_uri": shown, "run_id": tracker.run_id}, f)
    tracker._log("logging the hyperparameters", params={k: str(v)[:6000] for k, v in params.items()})
    log.info("MLflow: run %s (%s) in experiment %s at %s", tracker.run_id, run_name, name, shown)
    return tracker
