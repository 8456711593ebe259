"""The synthetic generator's hard preset (`make data PRESET=hard`), and the default preset left as it was."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from shelfdet.commands import cli
from shelfdet.commands import data as data_command
from shelfdet.data import stats, synthetic

ROOT = Path(__file__).resolve().parents[1]

# The default preset (6/3/3 images, 320x256, seed 0) as written by the code before the hard preset existed
# (commit be75d36): the main job's AP depends on these bytes. CSVs depend on the random stream only; the
# JPEG bytes also on OpenCV's drawing and encoder, so they are compared on the OpenCV they were recorded with.
DEFAULT_CSV_SHA256 = "be7953b3ab306b89c34322d93569a80a97cbd77e2deee3949de92803542aae46"
DEFAULT_JPG_SHA256 = "dbd5827573c2c9afe572c93b89daf199bafabefdda0c3ae09634da59032a666f"
DEFAULT_JPG_OPENCV = "5.0.0"


def _tree_hash(root: str, ext: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(root)):
        dirnames.sort()
        for f in sorted(files):
            if f.endswith(ext):
                p = os.path.join(dirpath, f)
                h.update(os.path.relpath(p, root).encode())
                h.update(open(p, "rb").read())
    return h.hexdigest()


def test_default_preset_output_is_unchanged(tmp_path):
    g = synthetic.generate(str(tmp_path), {"train": 6, "val": 3, "test": 3}, workers=1)
    assert g.corrupted == ["train_0.jpg", "train_1.jpg", "test_0.jpg"]
    assert _tree_hash(g.root, ".csv") == DEFAULT_CSV_SHA256
    if cv2.__version__ == DEFAULT_JPG_OPENCV:
        assert _tree_hash(g.root, ".jpg") == DEFAULT_JPG_SHA256
    # Same thing through the preset name.
    h = synthetic.generate(str(tmp_path / "named"), {"train": 6, "val": 3, "test": 3}, workers=1, preset="default")
    assert _tree_hash(h.root, ".csv") == DEFAULT_CSV_SHA256


def test_default_options_have_no_preset_so_old_data_folders_stay_current():
    opts = data_command.options(data_command.parser().parse_args(["--data-dir", "d"]))
    assert "preset" not in opts["synthetic"]
    assert opts["synthetic"]["images"] == synthetic.DEFAULT_IMAGES
    assert opts["synthetic"]["image_size"] == list(synthetic.DEFAULT_SIZE)
    hard = data_command.options(data_command.parser().parse_args(["--data-dir", "d", "--preset", "hard"]))
    assert hard["synthetic"]["preset"] == "hard" and hard["synthetic"]["images"] == synthetic.HARD_IMAGES
    assert hard["synthetic"]["image_size"] == list(synthetic.HARD_SIZE)
    with pytest.raises(SystemExit):
        data_command.parser().parse_args(["--data-dir", "d", "--preset", "nope"])


def test_hard_count_is_long_tailed_around_140():
    rng = np.random.default_rng(1)
    n = np.array([synthetic.hard_count(rng) for _ in range(4000)])
    assert 125 <= np.median(n) <= 155
    assert np.mean(n) > np.median(n) * 1.05  # skewed right
    assert 0.003 <= np.mean(n > 400) <= 0.05  # a few above 400, as SKU-110K has
    assert np.percentile(n, 90) > 1.6 * np.median(n)


@pytest.fixture(scope="module")
def hard_scenes():
    out = []
    for i in range(8):
        rng = np.random.default_rng([7, i])
        w, h = (750, 1000) if i % 2 else (1000, 750)
        out.append((w, h) + synthetic.draw_hard_scene(rng, w, h))
    return out


def test_hard_boxes_lie_inside_the_image_and_inside_their_unclipped_extent(hard_scenes):
    for w, h, image, boxes, raw, info in hard_scenes:
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        b, r = np.array(boxes), np.array(raw)
        assert len(b) == len(r) == len(info["occluded"]) > 0
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] - b[:, 0] >= synthetic.MIN_VISIBLE).all() and (b[:, 3] - b[:, 1] >= synthetic.MIN_VISIBLE).all()
        assert (r[:, :2] <= b[:, :2]).all() and (r[:, 2:] >= b[:, 2:]).all()
    # Products cut by the border are there, as in photos.
    assert sum(int((np.array(raw) != np.array(boxes)).any(axis=1).sum()) for _, _, _, boxes, raw, _ in hard_scenes) > 0


def test_hard_boxes_are_tilted_bounds_that_overlap_their_neighbours(hard_scenes):
    # Touching facings seen through the homography have overlapping axis-aligned bounds; without
    # the tilt they would only share an edge.
    shares = []
    for _, _, _, boxes, _, _ in hard_scenes:
        b = np.array(boxes, np.float64)
        ix = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
        iy = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
        inter = (ix > 0) & (iy > 0)
        np.fill_diagonal(inter, False)
        shares.append(inter.any(axis=1).mean())
    assert np.mean(shares) > 0.5


def test_hard_occlusion_keeps_partly_hidden_products_and_drops_mostly_hidden_ones(hard_scenes):
    occluded = np.concatenate([info["occluded"] for *_, info in hard_scenes])
    assert occluded.max() <= synthetic.HARD_MAX_OCCLUDED
    assert (occluded > 0.15).sum() >= 10  # partly hidden by rails and tags, still annotated with their full box
    assert sum(info["dropped_occluded"] for *_, info in hard_scenes) >= 5


@pytest.fixture(scope="module")
def hard_data(tmp_path_factory):
    """A small hard set built as `make data PRESET=hard` builds it."""
    out = tmp_path_factory.mktemp("hard-data")
    rc = data_command.main(["--data-dir", str(out), "--preset", "hard", "--train-images", "24", "--val-images", "4",
                     "--test-images", "4", "--workers", "2"])
    assert rc == 0
    return out


def test_hard_set_statistics_land_in_range(hard_data):
    s = stats.of_data_dir(str(hard_data))
    o = s["objects_per_image"]
    assert s["images"] == 24 + 4 + 4 - 3  # 2 train and 1 test truncated JPEGs dropped
    assert 90 <= o["median"] <= 200
    assert o["max"] >= 1.8 * o["median"] and o["mean"] > o["median"]  # the long tail
    assert o["min"] < 0.6 * o["median"]
    assert s["image_size"]["portrait"] >= 5 and s["image_size"]["landscape"] >= 5
    assert s["image_size"]["long_side_median"] == 1000
    a = s["aspect_w_over_h"]
    assert a["p5"] < 0.45 and a["p95"] > 1.6  # tall bottles and wide flat packs
    assert s["tall_share"] > 0.12 and s["wide_share"] > 0.12
    # Small objects: a few percent of the image side, as in SKU-110K photos.
    assert 0.02 <= s["box_side_fraction"]["median"] <= 0.09


def test_hard_set_reports_truncated_images_and_bad_rows(hard_data):
    report = json.loads((hard_data / "report.json").read_text())
    assert report["options"]["synthetic"]["preset"] == "hard"
    assert report["options"]["synthetic"]["preset_version"] == synthetic.PRESETS["hard"]["version"]
    assert sorted(c["image"] for c in report["images"]["corrupted"]) == ["test_0.jpg", "train_0.jpg", "train_6.jpg"]
    assert report["boxes"]["dropped_by_reason"]["image_corrupted"] > 0
    kinds = {p["kind"] for p in report["problems"]}
    assert {"degenerate", "clipped", "size_mismatch", "image_corrupted"} <= kinds
    for p in report["problems"]:
        assert p["file"].endswith(".csv") and p["line"] >= 1
    mismatch = [p for p in report["problems"] if p["kind"] == "size_mismatch"]
    assert sorted(p["image"] for p in mismatch) == ["test_3.jpg", "train_23.jpg", "val_3.jpg"]
    assert all("swapped" in p["message"] for p in mismatch)
    clipped = {p["image"] for p in report["problems"] if p["kind"] == "clipped"}
    assert {"train_1.jpg", "val_0.jpg", "test_1.jpg"} <= clipped
    assert report["boxes"]["dropped_by_reason"]["degenerate"] == 3


def test_data_stats_command(hard_data, capsys):
    assert cli.main(["data-stats", str(hard_data)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["objects_per_image"]["max"] >= s["objects_per_image"]["p90"] >= s["objects_per_image"]["median"]
    assert cli.main(["data-stats", str(hard_data), "--markdown"]) == 0
    assert capsys.readouterr().out.count("\n") == 2
    assert cli.main(["data-stats", str(hard_data / "nothing")]) == 2


def test_make_data_passes_the_preset():
    def dry(*args: str) -> str:
        out = subprocess.run(["make", "-n", "--no-print-directory", "data", "DATA_DIR=d-hard"] + list(args), cwd=str(ROOT),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if " -m shelfdet data " in line][-1]

    line = dry("PRESET=hard")
    assert data_command.parser().parse_args(line.split(" data ", 1)[1].split()).preset == "hard"
    assert "--preset" not in dry()


def test_the_hard_preset_never_replaces_the_main_jobs_data():
    def data_dir(*args: str) -> str:
        out = subprocess.run(["make", "-n", "--no-print-directory", "data"] + list(args), cwd=str(ROOT),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        line = [line for line in out.stdout.splitlines() if " -m shelfdet data " in line][-1]
        return data_command.parser().parse_args(line.split(" data ", 1)[1].split()).data_dir

    assert data_dir("PRESET=hard") == "data-hard"
    assert data_dir() == "data"
    assert data_dir("PRESET=hard", "DATA_DIR=elsewhere") == "elsewhere"


def test_hard_lighting_is_an_uneven_smooth_field():
    spreads = []
    for i in range(12):
        field = synthetic._hard_lighting(np.random.default_rng([3, i]), 200, 150)
        assert field.shape == (150, 200, 3) and (field > 0).all()
        grey = field.mean(axis=2)
        spreads.append(grey.max() / grey.min())
        assert np.abs(np.diff(grey, axis=1)).max() < 0.05  # a gradient, not texture
    assert np.median(spreads) > 1.15
