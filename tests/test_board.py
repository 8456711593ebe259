"""`make tensorboard`: a real TensorBoard on 127.0.0.1 over a run's event files, its scalars read over HTTP;
and a SageMaker job's event files copied from (moto's) S3 first."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from conftest import ROOT, free_port, stop_group
from test_launch_support import BUCKET, REGION, account, client, fast_sessions  # noqa: F401


def _events(folder, values):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, value in enumerate(values):
        writer.add_scalar("total_loss", value, step)
    writer.close()


def _scalars(port, run, tag, proc, deadline=180.0):
    """TensorBoard's scalars once it answers and has loaded the run (it reads the files in the background)."""
    url = "http://127.0.0.1:{}/data/plugin/scalars/scalars?{}".format(port, urllib.parse.urlencode({"run": run, "tag": tag}))
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError("TensorBoard did not serve {} of run {} within {} s".format(tag, run, deadline))


def _serve(cmd, **kw):
    env = dict(os.environ, **kw.pop("env", {}))
    for key in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(key, None)
    return subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def test_make_tensorboard_serves_a_runs_scalars(tmp_path):
    run = tmp_path / "my-run"
    _events(run / "output" / "tensorboard" / "train", [3.0, 2.0, 1.5])
    port = free_port()
    proc = _serve(["make", "-s", "--no-print-directory", "-o", ".venv/.stamp", "tensorboard",
                   "RUNS=" + str(run), "TB_PORT={}".format(port)])
    try:
        points = _scalars(port, "my-run/train", "total_loss", proc)
    finally:
        stop_group(proc)
    assert [(p[1], p[2]) for p in points] == [(0, 3.0), (1, 2.0), (2, 1.5)]


def test_a_run_without_event_files_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "shelfdet", "tensorboard", "--runs", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "has no TensorBoard event files" in out.stderr and "Traceback" not in out.stderr


def test_a_sagemaker_jobs_event_files_are_copied_from_s3_and_served(account, tmp_path):
    job = "detectron2-faster-rcnn-20261203-000000-000"
    synced = tmp_path / "synced"
    _events(synced / "train", [4.0, 1.0])
    (name,) = os.listdir(synced / "train")
    client("s3").upload_file(str(synced / "train" / name), BUCKET, "detectron2/tensorboard/{}/train/{}".format(job, name))
    port = free_port()
    runs = tmp_path / "runs"
    proc = _serve([sys.executable, "-m", "shelfdet", "tensorboard", "--job", job, "--bucket", BUCKET,
                   "--region", REGION, "--runs-dir", str(runs), "--port", str(port)])
    try:
        points = _scalars(port, job + "/train", "total_loss", proc)
    finally:
        stop_group(proc)
    assert [(p[1], p[2]) for p in points] == [(0, 4.0), (1, 1.0)]
    assert (runs / "sagemaker" / job / "output" / "tensorboard" / "train" / name).is_file()
