"""Exported runtimes against the eager model (issue 35): `make bench BENCH=export`.

Trains Faster R-CNN and RetinaNet with the dense recipe (RECIPE=dense; Faster
R-CNN its local default of 120 iterations, RetinaNet 150 of its 300) on the
hard preset through `make train` (`runs/bench-export-<algo>`; a run that already has its model is reused, and
SHELFDET_BENCH_EXPORT_MODELS="faster_rcnn=DIR,retinanet=DIR" names other model
folders), exports each to OpenVINO, ONNX and TorchScript (`make export`), then
times eager Detectron2, TorchScript, ONNX Runtime, OpenVINO f32 and OpenVINO
bf16 (where the CPU lists BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES) at the
model's test size and at 800/1333.

Each runtime runs in its own process (eager PyTorch measured 1.3-1.5x slower in a
process shared with another runtime); the processes wait on a pipe, and this
one asks each in turn for one photo, the order rotated photo by photo, so a
change of the machine's load falls on every runtime alike, after one warm-up
call each; the timed pass's answers give the box agreement.
Time = decode excluded, forward + post-processing (the model's saved NMS) per
photo; speedup_vs_eager = eager median ms / runtime median ms. Agreement = the
share of the eager boxes (at the default score threshold) that a runtime finds
again at IoU >= 0.9 with the score within 0.01 (``exported.matched``). AP: each
runtime over the hard preset's test split at the model's test size, scored by
``core.evaluation`` (what `make evaluate` runs). Peak RSS: each process's
ru_maxrss. Photos: the real photos of ../shared/realdata (a damaged one is
skipped and named), else the hard preset's test photos.

Writes bench/results/export.json and the Export table of docs/benchmarks.md
(`--table` re-renders it from the JSON). `--photos N`: the first N photos only;
`--rounds N`: timed passes (default 1); `--no-ap`: no test-split AP; `--no-int8`: no NNCF
quantization; `--merge`: keep the stored rows of the models this run does not measure (each model's rows
come from one run, with that run's load averages).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import RESULTS, machine, update_readme, write_result  # noqa: E402

DATA = "data-hard"
REAL = os.path.join(os.path.dirname(ROOT), "shared", "realdata")
ALGOS = ("faster_rcnn", "retinanet")
# Training budget on 2 shared CPUs: Faster R-CNN the recipe's local default (120 iterations), RetinaNet
# half of its 300 (the other half did not fit beside the round's other work).
HP = {"faster_rcnn": "", "retinanet": "--num-iter 150"}
MODELS_ENV = "SHELFDET_BENCH_EXPORT_MODELS"
FORMATS = ("openvino", "onnx", "torchscript")
# name -> how the worker builds it
RUNTIMES = ("eager", "torchscript", "onnx", "openvino f32", "openvino bf16")
SIZES = ("test", "800/1333")
GRAPH_FILES = {"openvino": ("model.xml", "model.bin"), "onnx": ("model.onnx",), "torchscript": ("model.ts",)}
FORMAT_OF = {"torchscript": "torchscript", "onnx": "onnx", "openvino f32": "openvino", "openvino bf16": "openvino",
             "openvino int8": "openvino int8"}
# NNCF is not in the pinned stack: this run's Python must import it (PYTHONPATH=<pip install --target DIR nncf>).
INT8_MISSING = "not tried: nncf is not importable here (pip install nncf, then run again)"
CALIBRATION_PHOTOS = 32
# Issue 35's goals, at 800/1333 on this machine.
GOAL_SPEEDUP, GOAL_AP, GOAL_F32, GOAL_AGREEMENT = 3.0, 0.005, 1.5, 0.99


# ---- the worker: one runtime of one model at one size, in its own process -----------------------------

def _detector(model_dir: str, runtime: str):
    from shelfdet.core import exported

    if runtime == "eager":
        from shelfdet.core.inference import Detector

        return Detector.from_model_dir(model_dir, "cpu")
    if runtime == "openvino int8":
        from shelfdet.core import artefacts, hyperparameters

        saved = artefacts.read_manifest(model_dir).get("hyperparameters") or {}
        return exported.ExportedDetector.from_folder(int8_folder(model_dir), "openvino",
                                                     hyperparameters.inference_of(saved, None))
    if runtime.startswith("openvino"):
        # The precision is the record's to allow; the bench asks for each one whatever it says.
        wanted = ["bf16", "f32"] if runtime.endswith("bf16") else ["f32"]
        read = exported.read_record

        def record(folder):
            return dict(read(folder), precisions=wanted)

        exported.read_record = record
    det = exported.ExportedDetector.from_model_dir(model_dir, FORMAT_OF[runtime])
    if runtime.startswith("openvino") and det.runtime != runtime:
        raise RuntimeError("asked for {}, got {}".format(runtime, det.runtime))
    return det


def _test_ap(det) -> dict:
    from shelfdet.core import catalog, evaluation

    manifest = os.path.join(ROOT, DATA, "annotations", "test.manifest")
    gt, names = catalog.load_manifest(manifest, os.path.join(ROOT, DATA, "test"), "sku")
    start = time.perf_counter()
    metrics, preds = evaluation.evaluate(det, gt, names, evaluation._detections_per_image(det), True, log_every=10 ** 6)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    return {"metrics": metrics, "preds": {k: {"pred_boxes": v["pred_boxes"], "scores": v["scores"],
                                               "pred_classes": v["pred_classes"]} for k, v in preds.items()}}


def int8_folder(model_dir: str) -> str:
    """The int8 graph, beside the model's exports but not one of them (serving never picks it up)."""
    return os.path.join(ROOT, os.path.dirname(model_dir), "bench-export-int8")


def quantize(model_dir: str) -> dict:
    """NNCF post-training quantization of the OpenVINO f32 graph, calibrated on training photos at the
    test size (the record is copied: it runs as the f32 export does, with int8 weights and activations)."""
    import shutil

    import nncf
    import openvino
    from shelfdet.core import exported, photos

    source = os.path.join(ROOT, model_dir, exported.EXPORT_DIR, "openvino")
    record = exported.read_record(source)
    rule = exported.InputRule.of(record["input"])
    model = openvino.Core().read_model(os.path.join(source, "model.xml"))
    wanted = len(model.inputs)
    folder = os.path.join(ROOT, DATA, "training")
    items = []
    for name in sorted(os.listdir(folder)):
        try:
            with open(os.path.join(folder, name), "rb") as f:
                photo = photos.decode_scaled(f.read(), rule.min_size, rule.max_size, name)
        except photos.ImageDecodeError:
            continue
        if photo.warnings:
            continue
        items.append(exported.network_input(photo.image, rule)[:wanted])
        if len(items) == CALIBRATION_PHOTOS:
            break
    start = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(items, lambda item: list(item)), subset_size=len(items))
    seconds = time.perf_counter() - start
    out = int8_folder(model_dir)
    os.makedirs(out, exist_ok=True)
    openvino.save_model(quantized, os.path.join(out, "model.xml"))
    shutil.copy(os.path.join(source, exported.RECORD), os.path.join(out, exported.RECORD))
    return {"seconds": round(seconds, 1), "calibration_photos": len(items), "nncf": nncf.__version__,
            "folder": os.path.relpath(out, ROOT)}


def worker(spec: dict) -> int:
    """Answers one JSON line per request on the pipe it was given (stdout is moved to stderr, so a library's
    print cannot break the protocol)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.path.insert(0, os.path.join(ROOT, "shared"))
    start = time.perf_counter()
    det = _detector(spec["model_dir"], spec["runtime"])
    if spec["size"] != "test":
        det.min_size, det.max_size = (int(v) for v in spec["size"].split("/"))
    pictures = []
    for path in spec["photos"]:
        with open(path, "rb") as f:
            pictures.append(det.decode(f.read(), os.path.basename(path)))
    out.write(json.dumps({"ready": True, "runtime": "eager torch" if spec["runtime"] == "eager" else det.runtime,
                          "size": [det.min_size, det.max_size], "load_s": round(time.perf_counter() - start, 2)}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "run":
            t0 = time.perf_counter()
            pred = det.predict([pictures[req["i"]]])[0]
            ms = (time.perf_counter() - t0) * 1000
            answer = {"ms": ms, "pred": {"pred_boxes": pred["pred_boxes"], "scores": pred["scores"],
                                         "pred_classes": pred["pred_classes"]}}
        elif req["op"] == "ap":
            answer = _test_ap(det)
        else:
            answer = {"maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if req["op"] == "quit":
            break
    return 0


class Worker:
    def __init__(self, model_dir: str, runtime: str, size: str, photos: list):
        spec = {"model_dir": model_dir, "runtime": runtime, "size": size, "photos": photos}
        self.runtime = runtime
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the {} worker ended (exit {})".format(self.runtime, self.proc.wait()))
        return json.loads(line)

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> float:
        rss = self.ask(op="quit")["maxrss_mb"]
        self.proc.wait()
        return rss


# ---- the coordinator --------------------------------------------------------------------------------

def make(*args: str) -> None:
    print("[export] make " + " ".join(args), flush=True)
    subprocess.run(["make", *args], cwd=ROOT, check=True)


def models() -> dict:
    given = os.environ.get(MODELS_ENV, "")
    if given:
        return dict(part.split("=", 1) for part in given.split(",") if part)
    out = {}
    for algo in ALGOS:
        run = os.path.join("runs", "bench-export-" + algo)
        if not os.path.isfile(os.path.join(ROOT, run, "model", "artefacts.json")):
            if not os.path.isfile(os.path.join(ROOT, DATA, "report.json")):
                make("data", "PRESET=hard")
            make("train", "ALGO=" + algo, "PRESET=hard", "RUN_DIR=" + run, "RECIPE=dense",
                 *(["HP=" + HP[algo]] if HP[algo] else []))
        out[algo] = os.path.join(run, "model")
    return out


def photo_set(limit: int) -> tuple:
    """(paths, source, skipped): the real photos that decode clean, else the hard preset's test photos."""
    from shelfdet.core import photos

    skipped = {}
    if os.path.isdir(REAL) and any(n.endswith(".jpg") for n in os.listdir(REAL)):
        paths, source = [], "real photos of ../shared/realdata"
        for name in sorted(n for n in os.listdir(REAL) if n.endswith(".jpg")):
            with open(os.path.join(REAL, name), "rb") as f:
                data = f.read()
            try:
                warnings = photos.decode_scaled(data, 800, 1333, name).warnings
            except photos.ImageDecodeError as err:
                warnings = (str(err),)
            if warnings:
                skipped[name] = "; ".join(warnings)
            else:
                paths.append(os.path.join(REAL, name))
    else:
        folder = os.path.join(ROOT, DATA, "test")
        paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
        source = "synthetic hard-preset test photos ({} absent)".format(REAL)
    return paths[:limit] if limit else paths, source, skipped


def sizes_mb(model_dir: str) -> dict:
    def mb(paths):
        return round(sum(os.path.getsize(p) for p in paths) / 1e6, 1)

    weights = [os.path.join(model_dir, n) for n in ("model_final.safetensors", "model_final.pth")
               if os.path.isfile(os.path.join(model_dir, n))]
    out = {"eager": mb(weights[:1])}
    for fmt, files in GRAPH_FILES.items():
        out[fmt] = mb(os.path.join(model_dir, "export", fmt, n) for n in files)
    return out


def cpu_flags() -> dict:
    import openvino

    caps = list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")
    return {"openvino_optimization_capabilities": caps, "cpuinfo": {k: k in flags for k in wanted}}


def agreement(reference: list, other: list) -> float:
    from shelfdet.core import exported

    total = sum(len(r["scores"]) for r in reference)
    found = sum(exported.matched(r, o) for r, o in zip(reference, other))
    return round(found / total, 4) if total else 1.0


def measure(model_dir: str, size: str, runtimes: list, paths: list, rounds: int, with_ap: bool) -> dict:
    """Every runtime of one model at one size, in its own process, asked in rotating order."""
    workers = [Worker(model_dir, r, size, paths) for r in runtimes]
    try:
        n = len(paths)
        answers = {w.runtime: [None] * n for w in workers}
        times = {w.runtime: [[] for _ in range(n)] for w in workers}
        for w in workers:  # warm-up: the first call of a runtime pays for its allocations
            w.ask(op="run", i=0)
        for rnd in range(rounds):
            for i in range(n):
                k = (i + rnd) % len(workers)
                for w in workers[k:] + workers[:k]:
                    a = w.ask(op="run", i=i)
                    answers[w.runtime][i] = a["pred"]
                    times[w.runtime][i].append(a["ms"])
            print("[export] {} {}: pass {} done".format(os.path.basename(os.path.dirname(model_dir)), size, rnd),
                  flush=True)
        aps = {w.runtime: w.ask(op="ap") for w in workers} if with_ap else {}
        rss = {w.runtime: w.close() for w in workers}
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
    per_photo = {r: [min(t) for t in ts] for r, ts in times.items()}
    eager_ms = statistics.median(per_photo["eager"])
    rows = {}
    for w in workers:
        r = w.runtime
        med = statistics.median(per_photo[r])
        # The int8 graph runs under the f32 hint (its int8 layers stay int8): name it for what it is.
        row = {"runtime": "openvino int8 (NNCF)" if r == "openvino int8" else w.ready["runtime"], "input_size": w.ready["size"], "median_ms": round(med, 1),
               "speedup_vs_eager": round(eager_ms / med, 2),
               "median_photo_speedup": round(statistics.median(e / t for e, t in zip(per_photo["eager"], per_photo[r])), 2),
               "agreement": agreement(answers["eager"], answers[r]),
               "eager_boxes": sum(len(a["scores"]) for a in answers["eager"]),
               "boxes": sum(len(a["scores"]) for a in answers[r]),
               "peak_rss_mb": rss[r], "load_s": w.ready["load_s"], "ms_per_photo": [round(v, 1) for v in per_photo[r]]}
        if r in aps:
            m = aps[r]["metrics"]
            row["test_AP"] = round(m["AP"], 4)
            row["test_AP50"] = round(m["AP50"], 4)
            row["test_images"] = len(aps[r]["preds"])
            row["test_seconds"] = m["seconds"]
            names = sorted(aps["eager"]["preds"])
            row["test_agreement"] = agreement([aps["eager"]["preds"][k] for k in names], [aps[r]["preds"][k] for k in names])
        rows[r] = row
    return rows


def table(result: dict) -> str:
    lines = ["| model | size | runtime | files MB | median ms | speedup_vs_eager | agreement | test AP | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for algo, per_model in result["models"].items():
        for size, rows in per_model["sizes"].items():
            shown = "{}/{}".format(*next(iter(rows.values()))["input_size"])
            for name, r in rows.items():
                fmt = FORMAT_OF.get(name, "eager")
                lines.append("| {} | {} | {} | {} | {:,.0f} | {:.2f} | {:.4f} | {} | {:,.0f} |".format(
                    algo, shown, r["runtime"], per_model["sizes_mb"][fmt], r["median_ms"], r["speedup_vs_eager"],
                    r["agreement"], "{:.4f}".format(r["test_AP"]) if "test_AP" in r else "-", r["peak_rss_mb"]))
    lines.append("")
    for algo, per_model in result["models"].items():
        q = per_model.get("int8") or {}
        lines.append("int8 {}: {}".format(algo, q.get("note") or "NNCF {} post-training quantization of the OpenVINO "
                                          "graph, {} training photos, {} s".format(q["nncf"], q["calibration_photos"],
                                                                                   q["seconds"])))
    if result.get("bf16"):
        lines.append("bf16: " + result["bf16"] + " (it lists {})".format(
            ", ".join(result["cpu_flags"]["openvino_optimization_capabilities"])))
    lines.append("Photos: {} ({} of them{}); load average (1, 5, 15 min) {} at the start, {} at the end.".format(
        result["photos"], len(result["photo_names"]),
        "; skipped: " + ", ".join("{} ({})".format(k, v) for k, v in result["skipped_photos"].items())
        if result["skipped_photos"] else "", result["load_avg_start"], result["load_avg_end"]))
    lines += [""] + result["goals"]
    return "\n".join(lines)


def goals(result: dict) -> list:
    out = []
    for algo, per_model in result["models"].items():
        big = per_model["sizes"].get("800/1333")
        ap = {r: row.get("test_AP") for r, row in per_model["sizes"].get("test", {}).items()}
        if not big:
            continue
        fair = [r for r in big if r != "eager" and ap.get(r) is not None and ap.get("eager") is not None
                and ap["eager"] - ap[r] <= GOAL_AP]
        if fair:
            best = max(fair, key=lambda r: big[r]["speedup_vs_eager"])
            s = big[best]["speedup_vs_eager"]
            verdict = "met" if s >= GOAL_SPEEDUP else "missed by {:.2f}x".format(GOAL_SPEEDUP - s)
            out.append("- {}: fastest runtime within {} AP of eager at 800/1333: {} at {:.2f}x (goal >= {}x): {}".format(
                algo, GOAL_AP, big[best]["runtime"], s, GOAL_SPEEDUP, verdict))
        else:
            out.append("- {}: no runtime with a test AP within {} of eager was measured".format(algo, GOAL_AP))
        f32 = big.get("openvino f32")
        if f32:
            ok = f32["speedup_vs_eager"] >= GOAL_F32 and f32["agreement"] >= GOAL_AGREEMENT
            gap = [] if ok else [g for g in (
                "speed {:.2f}x short".format(GOAL_F32 - f32["speedup_vs_eager"]) if f32["speedup_vs_eager"] < GOAL_F32 else "",
                "agreement {:.4f} short".format(GOAL_AGREEMENT - f32["agreement"]) if f32["agreement"] < GOAL_AGREEMENT else "")
                if g]
            out.append("- {}: OpenVINO f32 at 800/1333: {:.2f}x, agreement {:.4f} (goal >= {}x and >= {}): {}".format(
                algo, f32["speedup_vs_eager"], f32["agreement"], GOAL_F32, GOAL_AGREEMENT,
                "met" if ok else "missed (" + ", ".join(gap) + ")"))
    return out


def int8(model_dir: str) -> dict:
    """Quantizes in a process of its own (nncf imports torch's and OpenVINO's backends); the note on failure."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--quantize", model_dir], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return {"note": INT8_MISSING if proc.returncode == 3 else "failed: exit {}".format(proc.returncode)}
    return json.loads(lines[-1])


def main(argv: list) -> int:
    if argv[:1] == ["--worker"]:
        return worker(json.loads(argv[1]))
    if argv[:1] == ["--quantize"]:
        try:
            import nncf  # noqa: F401
        except ImportError:
            return 3
        sys.path.insert(0, os.path.join(ROOT, "shared"))
        answer = quantize(argv[1])
        print(json.dumps(answer))
        return 0
    path = os.path.join(RESULTS, "export.json")
    if "--table" in argv:
        with open(path) as f:
            stored = json.load(f)
        text = table(stored)
        print(text)
        update_readme("export", text)
        return 0
    limit = int(argv[argv.index("--photos") + 1]) if "--photos" in argv else 0
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 1
    load_start = [round(v, 2) for v in os.getloadavg()]
    found = models()
    for model in found.values():
        for fmt in FORMATS:
            if not os.path.isfile(os.path.join(ROOT, model, "export", fmt, "record.json")):
                make("export", "MODEL_DIR=" + model, "FORMAT=" + fmt, "PRESET=hard")
    sys.path.insert(0, os.path.join(ROOT, "shared"))
    paths, source, skipped = photo_set(limit)
    flags = cpu_flags()
    runtimes = [r for r in RUNTIMES if r != "openvino bf16" or "BF16" in flags["openvino_optimization_capabilities"]]
    result = {"photos": source, "photo_names": [os.path.basename(p) for p in paths], "skipped_photos": skipped,
              "cpu_flags": flags, "rounds": rounds, "load_avg_start": load_start, "models": {}}
    if "--merge" in argv and os.path.isfile(path):
        # The models of the last run that this one does not measure again stay, with their own load averages.
        with open(path) as f:
            result["models"] = {k: v for k, v in json.load(f).get("models", {}).items() if k not in found}
    result["needs"] = {"openvino bf16": "BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES (avx512_bf16 or amx_bf16)",
                       "openvino int8": "runs anywhere; fast only with INT8 in OPTIMIZATION_CAPABILITIES "
                                        "(avx512_vnni / avx_vnni, amx_int8)",
                       "openvino f32": "nothing beyond OpenVINO's x86-64 baseline (SSE4.2)"}
    if "openvino bf16" not in runtimes:
        result["bf16"] = "not run: the CPU does not list BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES"
    for algo, model in found.items():
        with open(os.path.join(ROOT, model, "metrics.json")) as f:
            trained = json.load(f)
        per_model = {"model_dir": model, "iterations": trained.get("iterations"),
                     "load_avg_start": [round(v, 2) for v in os.getloadavg()],
                     "train_seconds": trained.get("train_seconds"), "sizes_mb": sizes_mb(os.path.join(ROOT, model)),
                     "sizes": {}}
        result["models"][algo] = per_model
        per_model["int8"] = int8(model) if "--no-int8" not in argv else {"note": "not tried: --no-int8"}
        mine = list(runtimes)
        if "note" not in per_model["int8"]:
            mine.append("openvino int8")
            per_model["sizes_mb"]["openvino int8"] = round(sum(
                os.path.getsize(os.path.join(int8_folder(model), n)) for n in GRAPH_FILES["openvino"]) / 1e6, 1)
        for size in SIZES:
            per_model["sizes"][size] = measure(model, size, mine, paths, rounds,
                                               size == "test" and "--no-ap" not in argv)
        per_model["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["goals"] = goals(result)
    text = table(result)
    print(text)
    update_readme("export", text)
    metrics = {}
    for algo, per_model in result["models"].items():
        for name, row in per_model["sizes"].get("800/1333", {}).items():
            if name != "eager":
                metrics["{} 800/1333 {} speedup_vs_eager".format(algo, name)] = row["speedup_vs_eager"]
    write_result("export", metrics, "; ".join(g[2:] for g in result["goals"]),
                 machine=machine(load_avg_start=load_start, load_avg_end=result["load_avg_end"]), **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
