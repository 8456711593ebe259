"""The SageMaker training program (the image runs it as ``sm-train``; ``make train`` runs it locally).

Reads the job from /opt/ml (or another root), trains with periodic
checkpoints (a restarted spot job resumes), and on global rank 0 writes the
model folder: weights, resolved config, class names, metrics, plots and
``artefacts.json``. Any error ends in one line handed to the caller's
``report`` (stderr), the same line in ``output/failure``, and a non-zero exit.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
from typing import Any, Callable, Dict, Optional

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from shelfdet.core import artefacts, catalog, compat, evaluation, hyperparameters, photos, runtime, safeweights
from shelfdet.core.config import ConfigError, build_config, pretrained_file
from shelfdet.core.hyperparameters import Hyperparameters
from shelfdet.core.inference import Detector, load_config, options_of
from shelfdet.data.crops import crop_of
from shelfdet.training import report
from shelfdet.training.distributed import broadcast_buffers, launch, timeout_for
from shelfdet.training.environment import ContractError, Environment, check_channels, load, use_warmpool_cache
from shelfdet.training.tracking import mlflow_run as start_mlflow
from shelfdet.training.trainer import Trainer

log = logging.getLogger("shelfdet.training")

# Errors that are the user's to fix: reported in one line, no traceback.
USER_ERRORS = (ContractError, catalog.ManifestError, hyperparameters.HyperparameterError, artefacts.ArtefactError)


def _setup_logging(rank: int = 0) -> None:
    setup_logger(distributed_rank=rank, name="detectron2", abbrev_name="d2")
    setup_logger(distributed_rank=rank, name="shelfdet", abbrev_name="shelfdet")
    setup_logger(distributed_rank=rank, name="fvcore")


def _channel_photo_dirs(env: Environment) -> Dict[str, str]:
    return {c: env.channels[c] for c in catalog.CHANNELS if c in env.channels}


def _register(env: Environment, hp: Hyperparameters) -> Dict[str, Any]:
    """Registers every present channel; returns names, class names and the dicts hooks need."""
    names = catalog.register_channels(hp.dataset_name, env.channels["annotation"], _channel_photo_dirs(env),
                                      hp.label_name, list(hp.classes) if hp.classes else None)
    classes = MetadataCatalog.get(names["training"]).thing_classes
    val = DatasetCatalog.get(names["validation"])
    return {"names": names, "classes": classes, "val": val}


def _log_loader(hp: Hyperparameters, cfg: Any) -> None:
    if hp.crop_size:
        log.info("crop training: %d px crops of the image resized by %s (log-uniform), each around a random box; "
                 "boxes kept when >= %g of their area is inside; test size %d/%d%s", hp.crop_size,
                 "x-".join("{:g}".format(s) for s in hp.crop_scales) + "x", hp.crop_min_visible,
                 cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, " (auto: median training photo times the middle "
                 "scale)" if "auto" in (hp.min_size, hp.max_size) else "")
    log.info("data loader: %d worker(s) per process (num-workers=%s; %d CPUs, %d process(es) on this host)",
             cfg.DATALOADER.NUM_WORKERS, hp.num_workers, runtime.available_cpus(), comm.get_local_size())


def train_worker(env: Environment, hp: Hyperparameters) -> Optional[Dict[str, float]]:
    """Runs in every process of the job."""
    # With GPUs, each process is one Detectron2's launch spawned: this is where it starts.
    compat.apply()
    rank = comm.get_rank()
    _setup_logging(rank)
    log.info("host %s, world size %d, rank %d", env.current_host, comm.get_world_size(), rank)
    reg = _register(env, hp)
    device = "cuda" if env.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    fitted = hp.anchors == "auto" or "auto" in (hp.min_size, hp.max_size)
    train_dicts = DatasetCatalog.get(reg["names"]["training"]) if fitted else None
    cfg = build_config(hp, reg["classes"], reg["names"]["training"], reg["names"]["validation"],
                       env.checkpoint_dir, device=device, world_size=comm.get_world_size(),
                       procs_per_host=comm.get_local_size(), train_dicts=train_dicts)
    cfg.freeze()
    _log_loader(hp, cfg)
    seed_all_rng(None if hp.seed < 0 else hp.seed + rank)
    os.makedirs(env.checkpoint_dir, exist_ok=True)

    val_sample = reg["val"][: hp.val_samples]
    mlflow = mlflow_run(env, hp) if comm.is_main_process() else None
    trainer = Trainer(cfg, reg["classes"], val_sample, reg["val"] if hp.val_ap else None, hp.log_period,
                      fast_eval=hp.evaluation_type != "coco", options=options_of(hp), crop=crop_of(hp),
                      tensorboard_dir=os.path.join(env.output_dir, "tensorboard"), mlflow=mlflow)
    # Resumes from the newest checkpoint in the checkpoint dir if there is one (spot restarts).
    trainer.resume_or_load(resume=True)
    starts = comm.all_gather(trainer.start_iter)
    if len(set(starts)) > 1:
        # Each host resumes from its own /opt/ml/checkpoints (SageMaker syncs one S3 URI to all).
        raise ContractError("hosts would resume from different iterations {}: their checkpoint folders differ".format(starts))
    if trainer.start_iter > 0:
        log.info("resuming from iteration %d of %d", trainer.start_iter, trainer.max_iter)
    start = time.time()
    try:
        trainer.train()
        train_seconds = time.time() - start
        result = finish(env, hp, cfg, trainer, reg, train_seconds)
    except BaseException as err:
        if mlflow:  # a resumed run sets it RUNNING again
            mlflow.end(status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    if mlflow:
        mlflow.end(result, env.model_dir)
    # The others wait here while rank 0 scores and writes: the timeout run() gave the job covers it.
    comm.synchronize()
    return result


def mlflow_run(env: Environment, hp: Hyperparameters) -> Any:
    """The run's MLflow run when MLFLOW_TRACKING_URI is set (see tracking.mlflow_run)."""
    # SageMaker sets TRAINING_JOB_NAME and TRAINING_JOB_ARN in the container; a local run is its folder.
    name = os.environ.get("TRAINING_JOB_NAME") or os.path.basename(os.path.abspath(env.root))
    tags = {"shelfdet.algorithm": hp.model_type, "shelfdet.recipe": hp.recipe, "shelfdet.run_folder": env.root}
    tags.update({"sagemaker." + k.lower(): os.environ[k] for k in ("TRAINING_JOB_NAME", "TRAINING_JOB_ARN")
                 if os.environ.get(k)})
    params = dict(hyperparameters.as_strings(hp), environment=runtime.summary(env.hosts, env.current_host))
    return start_mlflow(os.environ.get("MLFLOW_TRACKING_URI"), env.checkpoint_dir, name, params, tags)


def _save_model(env: Environment, cfg: Any, trainer: Any) -> str:
    """Rank 0 writes the weights and the config; returns the weights' path."""
    weights = os.path.join(env.model_dir, artefacts.WEIGHTS)
    if comm.is_main_process():
        os.makedirs(env.model_dir, exist_ok=True)
        # safetensors, not torch.save: whoever serves the model must not have to unpickle it.
        safeweights.save(trainer.bare_model().state_dict(), weights)
        with open(os.path.join(env.model_dir, artefacts.CONFIG), "w") as f:
            f.write(cfg.dump())
    return weights


def _final_detector(env: Environment, hp: Hyperparameters, cfg: Any, trainer: Any, reg: Dict[str, Any],
                    weights: str, changed_keys: Any) -> Detector:
    broadcast_buffers(trainer.bare_model())
    if comm.is_main_process():
        # Built from the saved files, exactly as serving will load them.
        return Detector(load_config(os.path.join(env.model_dir, artefacts.CONFIG), cfg.MODEL.DEVICE, changed_keys),
                        weights, reg["classes"], options=options_of(hp))
    # Rank 0's model folder is on its host's disk, not this one's: this replica, now with rank 0's
    # buffers, is the saved model, and cfg the saved config (as in the validation AP hook).
    return Detector.from_model(cfg, trainer.bare_model(), reg["classes"], options=options_of(hp))


def _count_threshold(detector: Detector, reg: Dict[str, Any], metrics: Dict[str, Any]) -> Optional[float]:
    """The count threshold fit on validation, to apply to test as a user would use it (rank 0; None elsewhere)."""
    val_preds = evaluation.predict_shared(detector, reg["val"])
    if not comm.is_main_process():
        return None
    val_counts = evaluation.count_metrics(reg["val"], val_preds)
    metrics.update({"validation_count_mae": val_counts["count_mae"],
                    "validation_count_rel_error": val_counts["count_rel_error"]})
    log.info("validation_count_mae: %.6f  validation_count_rel_error: %.6f  "
             "(score >= %.4f, the lowest MAE here)", val_counts["count_mae"],
             val_counts["count_rel_error"], val_counts["count_threshold"])
    return val_counts["count_threshold"]


def _final_evaluation(env: Environment, hp: Hyperparameters, cfg: Any, detector: Detector, reg: Dict[str, Any],
                      eval_channel: str, metrics: Dict[str, Any]) -> bool:
    """Every rank predicts its share of ``eval_channel``; rank 0 scores, logs and plots into ``metrics``.
    Returns whether this is rank 0."""
    dicts = DatasetCatalog.get(reg["names"][eval_channel])
    start = time.time()
    # Without a test channel the evaluation below fits the count threshold on validation itself.
    count_threshold = _count_threshold(detector, reg, metrics) if eval_channel == "test" else None
    scores, preds = evaluation.evaluate(detector, dicts, reg["classes"], cfg.TEST.DETECTIONS_PER_IMAGE,
                                        fast=hp.evaluation_type == "fast", count_threshold=count_threshold)
    if not comm.is_main_process():
        return False
    metrics.update(scores)
    metrics.update({"eval_channel": eval_channel, "eval_images": len(dicts), "max_dets": cfg.TEST.DETECTIONS_PER_IMAGE,
                    "eval_seconds": round(time.time() - start, 1)})
    metrics["count_threshold_fit"] = "validation"
    log.info("%s_ap: %.6f  %s_ap50: %.6f", eval_channel, scores["AP"], eval_channel, scores["AP50"])
    log.info("evaluation on %s (%d images, maxDets %d): %s", eval_channel, len(dicts),
             cfg.TEST.DETECTIONS_PER_IMAGE, evaluation.format_metrics(scores))
    log.info("%s_count_mae: %.6f  %s_count_rel_error: %.6f  (score >= %.4f, fit on validation)", eval_channel,
             scores["count_mae"], eval_channel, scores["count_rel_error"], scores["count_threshold"])
    report.prediction_pngs(dicts[:4], preds, os.path.join(env.model_dir, "plots"),
                           score_threshold=scores["count_threshold"])
    return True


def finish(env: Environment, hp: Hyperparameters, cfg: Any, trainer: Any, reg: Dict[str, Any],
           train_seconds: float) -> Optional[Dict[str, float]]:
    """Every rank predicts its share of the final evaluation; rank 0 alone scores it and writes the
    model folder, metrics and plots, and returns the metrics (the others None)."""
    weights = _save_model(env, cfg, trainer)
    d2 = {"version": compat.detectron2_version(), "changed_config_keys": compat.changed_config_keys(cfg)}

    metrics: Dict[str, Any] = {"train_seconds": round(train_seconds, 1), "iterations": cfg.SOLVER.MAX_ITER}
    history = trainer.validation.history if trainer.validation else []
    if history:
        metrics["final_val_loss"] = history[-1]["total_val_loss"]
    ap_history = trainer.validation_ap.history if trainer.validation_ap else []
    if ap_history and ap_history[-1]["iteration"] == cfg.SOLVER.MAX_ITER:
        metrics["validation_ap"] = ap_history[-1]["AP"]
    if hp.evaluation_type != "none":
        detector = _final_detector(env, hp, cfg, trainer, reg, weights, d2["changed_config_keys"])
        eval_channel = "test" if "test" in reg["names"] else "validation"
        if not _final_evaluation(env, hp, cfg, detector, reg, eval_channel, metrics):
            return None
    if not comm.is_main_process():
        return None
    _write_records(env, hp, reg, metrics, history, d2)
    if hp.export != "none":
        _export(env, hp, reg, metrics)
    return metrics


def _export(env: Environment, hp: Hyperparameters, reg: Dict[str, Any], metrics: Dict[str, Any]) -> None:
    """``export=<format>``: the model folder's export, checked on a few validation photos (core.export)."""
    from shelfdet.core import export

    checked = [photos.read(d["file_name"]) for d in reg["val"][:export.CHECK_PHOTOS]]
    try:
        _, agreement = export.export(env.model_dir, hp.export, checked)
    except export.ExportError as err:
        # The trained model is the job's result and is kept: the export can be made again from it.
        log.warning("export=%s failed, the model folder has no export (make export retries it): %s", hp.export, err)
        metrics["export"] = {"format": hp.export, "error": str(err)}
    else:
        metrics["export"] = {"format": hp.export, "agreement": agreement}
    with open(os.path.join(env.model_dir, artefacts.METRICS), "w") as f:
        json.dump(metrics, f, indent=2)


def _write_records(env: Environment, hp: Hyperparameters, reg: Dict[str, Any], metrics: Dict[str, Any],
                   history: Any, d2: Dict[str, Any]) -> None:
    """Rank 0: metrics.json, the loss curve, the hyperparameters (the record a model is read back from)
    and artefacts.json."""
    with open(os.path.join(env.model_dir, artefacts.METRICS), "w") as f:
        json.dump(metrics, f, indent=2)
    report.loss_curve(os.path.join(env.checkpoint_dir, "metrics.json"), history,
                      os.path.join(env.model_dir, "plots", "loss_curve.png"))
    resolved = hyperparameters.as_strings(hp)
    with open(os.path.join(env.model_dir, "hyperparameters.json"), "w") as f:
        json.dump(resolved, f, indent=2)
    artefacts.write_manifest(env.model_dir, reg["classes"], hp.model_type, resolved,
                             extra_files={"hyperparameters": "hyperparameters.json"}, detectron2=d2)


def fail(env_root: str, message: str, report_line: Callable[[str], None]) -> int:
    """Hands the one-line error to ``report_line`` and writes it to output/failure (SageMaker's failure
    reason); the exit status."""
    report_line("error: " + message)
    out = os.path.join(env_root, "output")
    try:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "failure"), "w") as f:
            f.write(message[:1000] + "\n")
    except OSError:
        pass
    return 1


def _pretrained(env: Environment, hp: Hyperparameters) -> Hyperparameters:
    """``weights=zoo`` with a pretrained channel: the zoo's file from the channel (the job may have no
    network: NETWORK_ISOLATION=1)."""
    if hp.weights != "zoo" or "pretrained" not in env.channels:
        return hp
    try:
        return dataclasses.replace(hp, weights=pretrained_file(hp, env.channels["pretrained"]))
    except ConfigError as err:
        raise ContractError(str(err)) from None


def _check_before_launch(env: Environment, hp: Hyperparameters) -> int:
    """What can fail before any process starts, failed now: every manifest (a bad line fails in a
    second, not after setup), the model's config, the scorer. Returns the validation and test images."""
    eval_images = 0
    # Class maps too (read_channels): with GPUs, registration runs again in each spawned process.
    for c, (_, records, _) in catalog.read_channels(env.channels["annotation"], _channel_photo_dirs(env),
                                                    hp.label_name).items():
        if c in ("validation", "test"):
            eval_images += len(records)
    try:  # the algorithm/backbone/weights combination, before any process starts
        build_config(hp, list(hp.classes) if hp.classes else ["SKU"], "train", "val", env.checkpoint_dir)
    except ConfigError as err:
        raise ContractError(str(err)) from None
    try:  # the scorer, now rather than after training: the final evaluation, and validation AP
        # (which scores like fast unless evaluation-type=coco; see train_worker)
        evaluation.require_backend(hp.evaluation_type == "fast" or (hp.evaluation_type == "none" and hp.val_ap))
    except evaluation.BackendError as err:
        raise ContractError(str(err)) from None
    if hp.export != "none":  # export= after hours of training would fail on a missing package: fail now
        from shelfdet.core import export

        missing = export.missing_packages(hp.export)
        if missing:
            raise ContractError("export={} needs {}, which this image lacks (the cu101 stack's Python 3.8 has no "
                                "OpenVINO or ONNX release): train with export=none and run `make export` on the "
                                "model folder".format(hp.export, " and ".join(missing)))
    return eval_images


def _log_start(env: Environment, hp: Hyperparameters, cache: Optional[str], pretrained: bool) -> None:
    log.info(runtime.summary(env.hosts, env.current_host))
    if cache:
        log.info("warm pool: download caches (model zoo weights, torch, pip) kept in %s", cache)
    if pretrained:
        log.info("weights=zoo read from the pretrained channel: %s", hp.weights)
    log.info("Detectron2 environment:\n%s", runtime.details())
    log.info("training %s %s for %d iterations; model dir %s, checkpoints %s", hp.model_type, hp.backbone,
             hp.num_iter, env.model_dir, env.checkpoint_dir)
    if hp.recipe != "none":
        log.info(hyperparameters.recipe_line(hp))


def run(root: Optional[str], report_line: Callable[[str], None]) -> int:
    """The job in ``root`` (default: SHELFDET_ML_ROOT or /opt/ml); the exit status. An error's one line
    goes to ``report_line``."""
    root = root or os.environ.get("SHELFDET_ML_ROOT", "/opt/ml")
    try:
        cache = use_warmpool_cache()
        env = load(root)
        check_channels(env)
        given = hyperparameters.parse(env.hyperparameters)
        hp = _pretrained(env, given)
        eval_images = _check_before_launch(env, hp)
        _setup_logging()
        _log_start(env, hp, cache, hp is not given)
        # The other processes wait while rank 0 scores the validation and test images: a process group
        # timeout sized from them, not a fixed 30 minutes (distributed.timeout_for says why).
        launch(train_worker, env.hosts, env.machine_rank, env.num_gpus, hp.dist_port, args=(env, hp),
               timeout=timeout_for(eval_images))
    except USER_ERRORS as err:
        return fail(root, str(err), report_line)
    except KeyboardInterrupt:
        return fail(root, "interrupted; rerun to resume from the last checkpoint", report_line)
    except Exception as err:  # a bug or an environment problem: keep the traceback for the log
        traceback.print_exc()
        return fail(root, "{}: {}".format(type(err).__name__, err), report_line)
    return 0
