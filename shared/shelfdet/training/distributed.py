"""One process per GPU on every host (Detectron2's launch), one process per host on CPU (gloo)."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Callable, Sequence

from .. import compat

compat.apply()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from detectron2.engine import launch as d2_launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

log = logging.getLogger("shelfdet.training")
TIMEOUT = timedelta(minutes=30)


def dist_url(hosts: Sequence[str], port: int) -> str:
    return "tcp://{}:{}".format(hosts[0], port)


def _cpu_worker(main: Callable[..., Any], world_size: int, rank: int, url: str, args: tuple) -> Any:
    dist.init_process_group(backend="gloo", init_method=url, world_size=world_size, rank=rank, timeout=TIMEOUT)
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


def launch(main: Callable[..., Any], hosts: Sequence[str], machine_rank: int, num_gpus: int, port: int,
           args: tuple = ()) -> Any:
    """Runs ``main(*args)`` on every process of the job; master = the first host."""
    url = dist_url(hosts, port)
    if num_gpus > 0 and torch.cuda.is_available():
        log.info("launch: %d host(s) x %d GPU(s), NCCL, master %s", len(hosts), num_gpus, url)
        return d2_launch(main, num_gpus, num_machines=len(hosts), machine_rank=machine_rank,
                         dist_url="auto" if len(hosts) == 1 else url, args=args, timeout=TIMEOUT)
    if len(hosts) == 1:
        return main(*args)
    log.info("launch: %d hosts x 1 CPU process, gloo, master %s, this is rank %d", len(hosts), url, machine_rank)
    return _cpu_worker(main, len(hosts), machine_rank, url, args)
