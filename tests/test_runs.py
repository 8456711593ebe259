"""`make runs` and `make compare` over real run folders (a finished run, an interrupted one), and
`make runs REMOTE=1` against SageMaker jobs on moto."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import make_ml_root, pause_env, run_train, wait_for_checkpoint
from test_launch_support import (BUCKET, PREFIX, REGION, account, describes, fast_sessions, put_image,  # noqa: F401
                                 wire)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two_runs(tiny_dataset, tmp_path_factory):
    """runs/done: finished with validation AP every 2 iterations; runs/stopped: killed after iteration 4 of 8."""
    runs = tmp_path_factory.mktemp("runs")
    done = make_ml_root(runs / "done", tiny_dataset, val_ap="true")
    proc = run_train(done)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stopped = make_ml_root(runs / "stopped", tiny_dataset, algo="retinanet", num_iter="8", checkpoint_period="2",
                           eval_period="0", evaluation_type="none")
    log = runs / "stopped.log"
    with open(str(log), "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shelfdet", "sm-train", "--ml-root", str(stopped)], stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1", **pause_env(3)))
        try:
            wait_for_checkpoint(stopped / "checkpoints", 3, proc, output=log.read_text)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    log.unlink()
    return runs


def _table(text: str):
    """The tabulate 'simple' table as dicts (columns split at the header's dashes)."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    spans, start = [], 0
    for part in lines[rule].split("  "):
        if part:
            begin = lines[rule].index(part, start)
            spans.append((begin, begin + len(part)))
            start = begin + len(part)
    spans[-1] = (spans[-1][0], None)
    cut = lambda line: [line[a:b].strip() for a, b in spans]  # noqa: E731
    header = cut(lines[rule - 1])
    rows = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        rows.append(dict(zip(header, cut(line))))
    return rows


def test_runs_lists_each_run_with_its_numbers_status_and_how_to_resume(two_runs):
    from shelfdet.commands import runs

    proc = subprocess.run([sys.executable, "-m", "shelfdet", "runs", "--runs-dir", str(two_runs)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in _table(proc.stdout)}
    assert set(rows) == {"done", "stopped"}
    final = json.loads((two_runs / "done" / "model" / "metrics.json").read_text())
    done = rows["done"]
    assert (done["algorithm"], done["recipe"], done["iterations"]) == ("faster_rcnn", "none", "4/4")
    assert done["AP"] == "{:.4f}".format(final["AP"]) and done["AP50"] == "{:.4f}".format(final["AP50"])
    assert done["count MAE"] == "{:.2f}".format(final["count_mae"])
    assert done["status"] == "complete" and done["resume"] == "complete"
    stopped = rows["stopped"]
    assert (stopped["algorithm"], stopped["iterations"], stopped["AP"]) == ("retinanet", "3/8", "-")
    assert stopped["wall time"].startswith("~")
    # "running" while its log moved within runs.RUNNING_WITHIN_S, then "stopped": judged at set clock
    # readings, not at however long this machine took to get here.
    moved = os.path.getmtime(str(two_runs / "stopped" / runs.LOG_FILE))
    assert runs.local_row(str(two_runs / "stopped"), now=moved + 1)["status"] == "running"
    later = runs.local_row(str(two_runs / "stopped"), now=moved + runs.RUNNING_WITHIN_S + 1)
    assert later["status"] == "stopped"
    assert later["resume"] == "RUN_DIR={} (from model_0000003.pth)".format(two_runs / "stopped")


def test_compare_draws_both_runs_and_writes_results_csv_per_logged_iteration(two_runs, tmp_path):
    out = tmp_path / "compare.png"
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "compare", "done", "stopped", "--runs-dir", str(two_runs),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20000
    logged = [json.loads(line) for line in (two_runs / "done" / "checkpoints" / "metrics.json").read_text().splitlines()]
    with open(str(two_runs / "done" / "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [r["iteration"] for r in logged] == [0, 1, 2, 3]
    for row, record in zip(rows, logged):
        assert float(row["total_loss"]) == pytest.approx(record["total_loss"])
    # Validation (every 2 iterations) from the run's TensorBoard event files, on the rows it ran at.
    assert [bool(r["validation_total_loss"]) for r in rows] == [False, True, False, True]
    final = json.loads((two_runs / "done" / "model" / "metrics.json").read_text())
    assert float(rows[-1]["validation_AP"]) == pytest.approx(final["validation_ap"])
    assert float(rows[-1]["validation_total_loss"]) == pytest.approx(final["final_val_loss"], rel=1e-6)
    with open(str(two_runs / "stopped" / "results.csv")) as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_compare_of_an_unknown_run_is_one_line(two_runs):
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "compare", "nope", "--runs-dir", str(two_runs)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: nope: nothing logged ({} missing or empty); runs: done, stopped".format(
        os.path.join(str(two_runs), "nope", "checkpoints", "metrics.json"))]


def test_make_compare_without_runs_says_what_it_needs():
    proc = subprocess.run(["make", "-s", "compare"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'make compare needs RUNS="<run> <run> ..."; make runs lists them' in proc.stderr


def test_runs_remote_adds_sagemaker_jobs_with_their_final_metrics_and_bill(account, describes, capsys, tmp_path):
    from shelfdet.commands import runs
    from shelfdet.commands import launch_train

    base = ["--data-dir", "data", "--instance-type", "ml.g5.xlarge", "--stack", "cpu", "--region", REGION,
            "--bucket", BUCKET, "--prefix", PREFIX]
    names = []
    for algo, spot in (("retinanet", ["--spot"]), ("faster_rcnn", [])):
        assert launch_train.main(base + ["--algo", algo, "--job-name", "detectron2-" + algo.replace("_", "-")] + spot) == 0
        names.append(capsys.readouterr().out.strip().splitlines()[-1])
    # moto ends each job at once with its own numbers: SageMaker's answers for these two, in the
    # order the listing gives them (newest first), which is the order they are described in.
    answers = {"detectron2-faster-rcnn": {"FinalMetricDataList": [], "BillableTimeInSeconds": 0,
                                          "TrainingTimeInSeconds": 0, "TrainingJobStatus": "Stopped"},
               "detectron2-retinanet": {"FinalMetricDataList": [{"MetricName": "test:ap", "Value": 0.62},
                                                                {"MetricName": "test:ap50", "Value": 0.91},
                                                                {"MetricName": "test:count_mae", "Value": 3.25}],
                                        "BillableTimeInSeconds": 900, "TrainingTimeInSeconds": 3600,
                                        "TrainingJobStatus": "Completed"}}
    from test_launch_support import client

    listed = client("sagemaker").list_training_jobs(NameContains="detectron2", SortBy="CreationTime",
                                                    SortOrder="Descending")["TrainingJobSummaries"]
    describes.script("DescribeTrainingJob", [answers[j["TrainingJobName"]] for j in listed])
    rc = runs.main_runs(["--remote", "--region", REGION, "--runs-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "no local runs in {}/".format(tmp_path) in out.out
    rows = {r["run"]: r for r in _table(out.out.split("SageMaker training jobs")[1].split("\n", 1)[1])}
    assert set(rows) == set(names)
    spot = rows["detectron2-retinanet"]
    assert (spot["algorithm"], spot["AP"], spot["AP50"], spot["count MAE"]) == ("retinanet", "0.6200", "0.9100", "3.25")
    assert (spot["billable s"], spot["instance-h"], spot["spot saved"], spot["wall time"]) == ("900", "0.250", "75%", "1h00m")
    assert spot["status"] == "completed" and spot["resume"] == "complete"
    plain = rows["detectron2-faster-rcnn"]
    assert plain["status"] == "stopped" and plain["spot saved"] == "-" and plain["AP"] == "-"
    assert plain["resume"] == "checkpoints in s3://{}/detectron2/checkpoints/detectron2-faster-rcnn/".format(BUCKET)
