"""Dense-scene options on the hard preset (issue 13): `make bench BENCH=dense` (~45 min on 2 CPUs).

Trains each algorithm with the local defaults (same seed, same budget) twice,
anchors=zoo and anchors=auto, through `make train` (`runs/bench-dense-*`; a run
that already has its model is reused), then runs each model over the hard
test split with each inference option through `make evaluate` (INFER=...),
the count threshold fit on validation; then times the options on one model in
one process (8 test images, alternated, best of 2: the ratio column). Writes
bench/results/dense.json and
prints the README's markdown table (`--table` re-prints it from the JSON;
`--reuse` reads evaluations already in predictions/bench-dense/).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS, write_result  # noqa: E402

DATA = "data-hard"
ALGOS = ("faster_rcnn", "retinanet")
TRAININGS = (("zoo", ""), ("auto", "--anchors auto"))
# Inference options, each run on the models of both anchor settings.
# Every row names its NMS, so the rows mean the same whatever a model was trained with.
OPTIONS = (
    ("defaults", "--nms hard"),
    ("det-per-img 500", "--det-per-img 500 --nms hard"),
    ("proposals 2000", "--proposals 2000 --nms hard"),
    ("Soft-NMS", "--nms soft"),
    ("tiles 500 px", "--tile-size 500 --nms hard"),
    ("tiles 500 px + Soft-NMS", "--tile-size 500 --nms soft"),
)
OPTIONS_ON_AUTO = ("defaults", "tiles 500 px")


def make(*args: str) -> None:
    print("[dense] make " + " ".join(args), flush=True)
    subprocess.run(["make", *args], cwd=ROOT, check=True)


def train(algo: str, anchors: str, hp: str) -> str:
    run = os.path.join("runs", "bench-dense-{}-{}".format(algo, anchors))
    if not os.path.isfile(os.path.join(ROOT, run, "model", "artefacts.json")):
        make("train", "ALGO=" + algo, "PRESET=hard", "RUN_DIR=" + run, *(["HP=" + hp] if hp else []))
    return os.path.join(run, "model")


def _effective(model: str, infer) -> dict:
    """The inference hyperparameters a model runs with under ``infer`` (a string or a parsed dict)."""
    sys.path.insert(0, os.path.join(ROOT, "shared"))
    from shelfdet import hyperparameters
    from shelfdet.inference import inference_hyperparameters

    with open(os.path.join(ROOT, model, "artefacts.json")) as f:
        saved = json.load(f).get("hyperparameters") or {}
    overrides = hyperparameters.parse_inference(infer) if isinstance(infer, str) else infer
    return vars(inference_hyperparameters(saved, overrides))


def evaluate(model: str, infer: str, name: str, reuse: bool) -> dict:
    """``reuse``: an evaluation already in predictions/bench-dense/ (same model and INFER) is read, not rerun."""
    out = os.path.join("predictions", "bench-dense", name)
    done = os.path.join(ROOT, out, "metrics.json")
    if reuse and os.path.isfile(done):
        with open(done) as f:
            m = json.load(f)
        if m.get("model_dir") == model and _effective(model, m.get("inference") or {}) == _effective(model, infer):
            return m
    make("evaluate", "MODEL_DIR=" + model, "PRESET=hard", "INFER=" + infer, "EVAL_OUT=" + out)
    with open(os.path.join(ROOT, out, "metrics.json")) as f:
        return json.load(f)


def time_options(model: str, images: int = 8, rounds: int = 2) -> dict:
    """Seconds per image of each option on the same test images, in one process, options
    alternated ``rounds`` times, best of each: the ratios compare, whatever else the machine does."""
    sys.path.insert(0, os.path.join(ROOT, "shared"))
    from shelfdet import hyperparameters, imageio
    from shelfdet.inference import Detector

    folder = os.path.join(ROOT, DATA, "test")
    pictures = []
    for name in sorted(os.listdir(folder)):
        try:
            pictures.append(imageio.read(os.path.join(folder, name)))
        except imageio.ImageDecodeError:
            continue
        if len(pictures) == images:
            break
    detectors = {option: Detector.from_model_dir(os.path.join(ROOT, model), "cpu",
                                                 hyperparameters.parse_inference(infer))
                 for option, infer in OPTIONS}
    best = {option: float("inf") for option in detectors}
    for _ in range(rounds):
        for option, detector in detectors.items():
            start = time.perf_counter()
            for picture in pictures:
                detector.predict([picture])
            best[option] = min(best[option], (time.perf_counter() - start) / len(pictures))
    return best


def table(rows: list) -> str:
    lines = ["| model | anchors | inference | AP | AP50 | AP75 | AR (maxDets) | count MAE | count rel. | s / image | time vs defaults |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        ratio = "{:.2f}x".format(r["time_ratio"]) if r.get("time_ratio") else ""
        lines.append("| {} | {} | {} | {:.4f} | {:.4f} | {:.4f} | {:.4f} ({}) | {:.1f} | {:.3f} | {:.2f} | {} |".format(
            r["algo"], r["anchors"], r["option"], m["AP"], m["AP50"], m["AP75"], m["AR"], m["max_dets"],
            m["count_mae"], m["count_rel_error"], m["seconds_per_image"], ratio))
    return "\n".join(lines)


def update_readme(text: str) -> None:
    """The table between README's dense markers (as bench/run.py does with its own)."""
    readme = os.path.join(ROOT, "README.md")
    with open(readme) as f:
        body = f.read()
    start, end = "<!-- dense:start -->", "<!-- dense:end -->"
    if start in body and end in body:
        head, rest = body.split(start, 1)
        with open(readme, "w") as f:
            f.write(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv: list) -> int:
    path = os.path.join(RESULTS, "dense.json")
    if "--table" in argv:
        with open(path) as f:
            text = table(json.load(f)["rows"])
        print(text)
        update_readme(text)
        return 0
    algos = [a for a in argv if a in ALGOS] or list(ALGOS)
    if not os.path.isfile(os.path.join(ROOT, DATA, "report.json")):
        make("data", "PRESET=hard")
    rows = []
    for algo in algos:
        for anchors, hp in TRAININGS:
            model = train(algo, anchors, hp)
            with open(os.path.join(ROOT, model, "metrics.json")) as f:
                train_seconds = json.load(f)["train_seconds"]
            for option, infer in OPTIONS:
                if anchors == "auto" and option not in OPTIONS_ON_AUTO:
                    continue
                m = evaluate(model, infer, "{}-{}-{}".format(algo, anchors, option.replace(" ", "_")), "--reuse" in argv)
                rows.append({"algo": algo, "anchors": anchors, "option": option, "infer": infer,
                             "train_seconds": train_seconds, "metrics": m})
            if anchors == "zoo":
                timed = time_options(model)
                for r in rows:
                    if r["algo"] == algo and r["anchors"] == "zoo":
                        r["seconds_timed"] = round(timed[r["option"]], 4)
                        r["time_ratio"] = round(timed[r["option"]] / timed["defaults"], 2)
    text = table(rows)
    print(text)
    update_readme(text)
    best = {}
    for r in rows:
        key = r["algo"]
        if key not in best or r["metrics"]["AP"] > best[key]["metrics"]["AP"]:
            best[key] = r
    metrics = {"{} {} {} AP".format(r["algo"], r["anchors"], r["option"]): round(r["metrics"]["AP"], 4)
               for r in rows}
    write_result("dense", metrics,
                 "each option measured on the hard preset with the local defaults (same seed and budget); "
                 "best AP: " + "; ".join("{} {} anchors, {}: {:.4f}".format(k, v["anchors"], v["option"],
                                                                               v["metrics"]["AP"])
                                         for k, v in best.items()),
                 rows=rows, table=text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
