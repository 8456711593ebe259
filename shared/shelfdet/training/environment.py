"""The SageMaker training contract (the /opt/ml layout and SM_* variables), read from /opt/ml or a run folder shaped like it."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, NamedTuple, Optional

DEFAULT_ROOT = "/opt/ml"
REQUIRED_CHANNELS = ("training", "validation", "annotation")
OPTIONAL_CHANNELS = ("test",)
# Set by SageMaker on a job that keeps its instances warm (KEEP_ALIVE=): a folder the next job on them sees again.
WARMPOOL_CACHE = "SAGEMAKER_MANAGED_WARMPOOL_CACHE_DIRECTORY"
# The download caches moved there: the model zoo's weights (iopath reads FVCORE_CACHE), torch hub, pip.
CACHE_VARIABLES = (("FVCORE_CACHE", "fvcore"), ("TORCH_HOME", "torch"), ("PIP_CACHE_DIR", "pip"), ("XDG_CACHE_HOME", "xdg"))


class ContractError(ValueError):
    """The job's folders or config files break the SageMaker contract."""


class Environment(NamedTuple):
    root: str
    model_dir: str
    checkpoint_dir: str
    output_dir: str
    channels: Dict[str, str]
    hyperparameters: Dict[str, Any]
    hosts: List[str]
    current_host: str
    num_gpus: int

    @property
    def machine_rank(self) -> int:
        return self.hosts.index(self.current_host)


def _read_json(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ContractError("{}: not valid JSON ({})".format(path, err)) from None


def _count_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def load(root: Optional[str] = None) -> Environment:
    root = root or os.environ.get("SHELFDET_ML_ROOT", DEFAULT_ROOT)
    config = os.path.join(root, "input", "config")
    # SM_* variables (set by the SageMaker training toolkit) win over the file layout.
    model_dir = os.environ.get("SM_MODEL_DIR") if root == DEFAULT_ROOT else None
    model_dir = model_dir or os.path.join(root, "model")
    hps = _read_json(os.path.join(config, "hyperparameters.json"), {})
    if not isinstance(hps, dict):
        raise ContractError("{}: must be a JSON object".format(os.path.join(config, "hyperparameters.json")))
    data_root = os.path.join(root, "input", "data")
    declared = _read_json(os.path.join(config, "inputdataconfig.json"), {})
    names = set(declared) | (set(os.listdir(data_root)) if os.path.isdir(data_root) else set())
    channels = {n: os.path.join(data_root, n) for n in names if os.path.isdir(os.path.join(data_root, n))}
    if root == DEFAULT_ROOT:
        for key, value in os.environ.items():
            if key.startswith("SM_CHANNEL_"):
                channels[key[len("SM_CHANNEL_"):].lower()] = value
    resources = _read_json(os.path.join(config, "resourceconfig.json"), {})
    hosts = resources.get("hosts") or json.loads(os.environ.get("SM_HOSTS", "[]")) or ["algo-1"]
    current = resources.get("current_host") or os.environ.get("SM_CURRENT_HOST") or hosts[0]
    iface = resources.get("network_interface_name")
    if iface:
        # SageMaker names the interface hosts talk over; gloo and NCCL must use it too.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", iface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", iface)
    if current not in hosts:
        raise ContractError("current_host {!r} is not in hosts {}".format(current, hosts))
    gpus = os.environ.get("SM_NUM_GPUS")
    checkpoints = os.path.join(root, "checkpoints")
    job = os.environ.get("TRAINING_JOB_NAME")
    if job and root == DEFAULT_ROOT:
        # Tuning trials may share one checkpoint S3 URI: each resumes only its own
        # checkpoints (a spot restart keeps the job name).
        checkpoints = os.path.join(checkpoints, job)
    return Environment(
        root=root, model_dir=model_dir, checkpoint_dir=checkpoints,
        output_dir=os.path.join(root, "output"), channels=channels, hyperparameters=hps,
        hosts=list(hosts), current_host=current, num_gpus=int(gpus) if gpus else _count_gpus(),
    )


def check_channels(env: Environment) -> None:
    for name in REQUIRED_CHANNELS:
        if name not in env.channels:
            raise ContractError("missing channel '{}': expected {}".format(
                name, os.path.join(env.root, "input", "data", name)))
    for name in ("training", "validation") + OPTIONAL_CHANNELS:
        if name in env.channels:
            manifest = os.path.join(env.channels["annotation"], name + ".manifest")
            if not os.path.isfile(manifest):
                raise ContractError("channel '{}' has no manifest: {} not found".format(name, manifest))


def use_warmpool_cache() -> Optional[str]:
    """Points the download caches into the warm pool's folder, when the job has one (else None)."""
    root = os.environ.get(WARMPOOL_CACHE)
    if not root:
        return None
    for variable, name in CACHE_VARIABLES:
        path = os.path.join(root, "shelfdet", name)
        os.makedirs(path, exist_ok=True)
        os.environ[variable] = path
    return root
