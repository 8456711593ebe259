"""One process per GPU on every host (Detectron2's launch), one process per host on CPU (gloo)."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

log = logging.getLogger("shelfdet.training")
TIMEOUT = timedelta(minutes=30)
# Per validation and test image, for rank 0 to score alone while the others wait in a barrier.
# pycocotools (evaluation-type=coco; faster-coco-eval takes 0.007 s) took 0.16 s an image at 300 detections
# on a busy 2-core machine; each wait scores one of the two sets, and both are counted.
SECONDS_PER_EVAL_IMAGE = 1.0


def timeout_for(eval_images: int) -> timedelta:
    """The process group's timeout: how long a process may wait in a collective before the job fails.

    The ranks share prediction, but scoring stays on rank 0 while the others wait in a barrier; with
    the default 30 minutes, NCCL's watchdog killed a trained job scoring thousands of photos before
    its model folder was written. Sized from the validation and test images (counted from the
    manifests before launch), never under Detectron2's 30 minutes, which still catch a hung job.
    """
    return max(TIMEOUT, timedelta(seconds=SECONDS_PER_EVAL_IMAGE * eval_images))


def dist_url(hosts: Sequence[str], port: int) -> str:
    return "tcp://{}:{}".format(hosts[0], port)


def _cpu_worker(main: Callable[..., Any], world_size: int, rank: int, url: str, args: tuple,
                timeout: timedelta) -> Any:
    dist.init_process_group(backend="gloo", init_method=url, world_size=world_size, rank=rank, timeout=timeout)
    # Detectron2's comm helpers need the per-machine group; on CPU each machine is one process.
    for r in range(world_size):
        group = dist.new_group([r])
        if r == rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        return main(*args)
    finally:
        dist.destroy_process_group()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copies rank 0's buffers into every rank's model; every rank must call it.

    DDP keeps the parameters equal, but with ``broadcast_buffers=False`` not BatchNorm's running
    statistics: each rank's follow its own batches (BN from scratch on CPU, where SyncBN cannot
    run). A rank predicting its share of an evaluation must predict as rank 0's model, the saved one.
    """
    if comm.get_world_size() == 1:
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def launch(main: Callable[..., Any], hosts: Sequence[str], machine_rank: int, num_gpus: int, port: int,
           args: tuple = (), timeout: timedelta = TIMEOUT) -> Any:
    """Runs ``main(*args)`` on every process of the job; master = the first host.
    ``timeout``: of the job's process group (:func:`timeout_for`)."""
    url = dist_url(hosts, port)
    if num_gpus > 0 and torch.cuda.is_available():
        log.info("launch: %d host(s) x %d GPU(s), NCCL, master %s, timeout %s", len(hosts), num_gpus, url, timeout)
        return d2_launch(main, num_gpus, num_machines=len(hosts), machine_rank=machine_rank,
                         dist_url="auto" if len(hosts) == 1 else url, args=args, timeout=timeout)
    if len(hosts) == 1:
        return main(*args)
    log.info("launch: %d hosts x 1 CPU process, gloo, master %s, this is rank %d, timeout %s", len(hosts), url,
             machine_rank, timeout)
    return _cpu_worker(main, len(hosts), machine_rank, url, args, timeout)
