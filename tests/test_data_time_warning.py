"""The starved-loader warning: one line, with the measured share of iterations spent waiting for data."""
from __future__ import annotations

import types

import pytest
from detectron2.utils.events import EventStorage

from shelfdet.training import hooks


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(monkeypatch, data_s, step_s, iters=80, warmup=20, window=20, record=True, start_iter=0):
    """Drives the hook like Detectron2's loop: data_time recorded in run_step, between before and after_step."""
    lines = []
    monkeypatch.setattr(hooks.log, "warning", lambda msg, *args: lines.append(msg % args))
    clock = Clock()
    hook = hooks.DataTimeWarning(num_workers=3, warmup=warmup, window=window, clock=clock)
    trainer = types.SimpleNamespace(iter=start_iter, start_iter=start_iter)
    hook.trainer = trainer
    with EventStorage(start_iter) as storage:
        trainer.storage = storage
        for it in range(start_iter, start_iter + iters):
            trainer.iter = storage.iter = it
            hook.before_step()
            data = data_s(it) if callable(data_s) else data_s
            if record:
                storage.put_scalar("data_time", data)
            clock.now += step_s
            hook.after_step()
    return lines


def test_a_starved_loader_warns_once_with_its_share(monkeypatch):
    lines = run(monkeypatch, data_s=0.5, step_s=1.0)
    assert len(lines) == 1
    assert lines[0].startswith("data loader too slow: 50% of iterations 21-40 went waiting for data (3 worker(s)")
    assert "num-workers" in lines[0] and "MAX_SIDE" in lines[0] and "\n" not in lines[0]


@pytest.mark.parametrize("data_s,warns", [(0.0, False), (0.2, False), (0.29, False), (0.31, True)])
def test_the_line_is_drawn_at_30_percent(monkeypatch, data_s, warns):
    assert len(run(monkeypatch, data_s=data_s, step_s=1.0)) == warns


def test_slow_start_of_the_workers_is_not_a_warning(monkeypatch):
    # The first iterations wait for the workers to start; only the windows after them count.
    assert run(monkeypatch, data_s=lambda it: 5.0 if it < 20 else 0.1, step_s=5.5) == []
    # Counted from the iteration the run (or its resumption) started at.
    lines = run(monkeypatch, data_s=lambda it: 5.0 if it < 120 else 4.0, step_s=5.0, start_iter=100)
    assert len(lines) == 1 and lines[0].startswith("data loader too slow: 80% of iterations 121-140")


def test_no_data_time_recorded_no_warning(monkeypatch):
    # Detectron2 records data_time on the main process only.
    assert run(monkeypatch, data_s=0.9, step_s=1.0, record=False) == []


def test_the_trainer_runs_it_before_the_validation_hooks(tmp_path):
    import types

    from detectron2.engine import hooks as d2_hooks

    from shelfdet.core import hyperparameters
    from shelfdet.core.config import build_config
    from shelfdet.training.trainer import Trainer

    hp = hyperparameters.parse({"num-workers": "3"}, profile="local")
    cfg = build_config(hp, ["SKU"], "train", "val", str(tmp_path))
    fake = types.SimpleNamespace(cfg=cfg, val_dicts=[], ap_dicts=[{"file_name": "x"}], class_names=["SKU"],
                                 fast_eval=True, checkpointer=types.SimpleNamespace(path_manager=None), log_period=10, max_iter=cfg.SOLVER.MAX_ITER,
                                 validation=None, validation_ap=None, build_writers=lambda: [], options=None)
    kinds = [type(h) for h in Trainer.build_hooks(fake)]
    assert kinds[:3] == [d2_hooks.IterationTimer, d2_hooks.LRScheduler, hooks.DataTimeWarning]
    assert kinds.index(hooks.DataTimeWarning) < kinds.index(hooks.ValidationAP)
    warning = next(h for h in Trainer.build_hooks(fake) if isinstance(h, hooks.DataTimeWarning))
    assert warning.num_workers == 3
