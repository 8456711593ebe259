"""What a job or a server runs on, logged first thing: the first line anyone needs
when a SageMaker job misbehaves (wrong CUDA build, no GPU visible, a missing host)."""
from __future__ import annotations

import os
import platform
from collections import Counter
from typing import Optional, Sequence

from shelfdet.core import compat

# torch and Detectron2 where summary and details ask for them: the CPU and memory counts serve processes
# (the server before its model loads) that have not imported torch.


def summary(hosts: Optional[Sequence[str]] = None, current_host: Optional[str] = None) -> str:
    """``environment: python 3.11.2, torch 2.5.1+cu124, CUDA 12.4, cuDNN 90100, 8x NVIDIA H100 ..., ...``"""
    import torch

    parts = ["python " + platform.python_version(), "torch " + torch.__version__]
    if torch.cuda.is_available():
        names = Counter(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        parts += ["CUDA {}".format(torch.version.cuda), "cuDNN {}".format(torch.backends.cudnn.version()),
                  "GPUs " + ", ".join("{}x {}".format(n, name) for name, n in names.items())]
    elif torch.version.cuda:
        parts.append("CUDA {} build, no GPU visible".format(torch.version.cuda))
    else:
        parts.append("CPU-only torch")
    parts.append("detectron2 {} ({})".format(
        compat.detectron2_version(), "compiled ops" if compat.has_compiled_ops() else "no compiled ops"))
    parts.append("{} CPUs".format(available_cpus()))  # what num-workers=auto is sized from
    if hosts:
        parts.append("hosts {} (this is {})".format(",".join(hosts), current_host or platform.node()))
    else:
        parts.append("host " + platform.node())
    return "environment: " + ", ".join(parts)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (docker --cpus)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def available_memory() -> Optional[int]:
    """Bytes this process may still use: MemAvailable, capped by a cgroup v2 limit (docker --memory); None if unknown."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                left = int(limit) - int(f.read().strip())
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free


def details() -> str:
    """Detectron2's own environment table (compiler, CUDA archs, library versions)."""
    try:
        from detectron2.utils.collect_env import collect_env_info

        return collect_env_info()
    except Exception as err:  # it calls compiled ops that a pure-Python install lacks
        return "(Detectron2's collect_env_info is not available here: {})".format(str(err).split(". ")[0])
