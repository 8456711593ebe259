"""The inference decoder (photos.decode_scaled, Detector.decode): photos at the model's scale, damage reported.

Pixels are compared with the decode before issue 21, a full decode and then
Detectron2's test-time resize (``inference_resize`` on ``photos.decode``),
as the training mapper's tests compare with Detectron2's DatasetMapper.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from _jpeg_damage import (DAMAGED_PHOTO, PADDED_PHOTO, clean_jpeg, extraneous, garbled, libjpeg_warning,
                          premature_end, real_photo, real_photos, trailing_zeros)
from _serving_support import ServerProcess, make_tiny_model
from shelfdet.core import photos
from shelfdet.core import photo_files

# Mean absolute pixel difference to a full decode + resize (grey levels), as tests/test_data_mapper.py allows.
PIXEL_TOLERANCE = 1.0
SCALES = [(256, 320), (800, 1333)]  # the local default test size; SageMaker's (Detectron2's)
PREMATURE = "corrupt JPEG data: premature end of data segment"
EXTRANEOUS = "corrupt JPEG data: extraneous bytes before marker 0xd9"
# How libjpeg words them (it counts the extraneous bytes).
LIBJPEG = {PREMATURE: "Corrupt JPEG data: premature end of data segment",
           EXTRANEOUS: "extraneous bytes before marker 0xd9"}


def full_then_resized(data: bytes, min_size: int, max_size: int) -> np.ndarray:
    from shelfdet.core.inference import inference_resize

    image = photos.decode(data)
    return inference_resize(image.shape[0], image.shape[1], min_size, max_size).apply_image(image)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture
def drafts(monkeypatch):
    """Every JPEG draft: (stored size, decoded size)."""
    seen = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = real(self, mode, size)
        seen.append((before, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return seen


def rotated_photo() -> bytes:
    """Shown 2448x3264, stored 3264x2448 with EXIF orientation 6, as a phone held upright writes it."""
    exif = Image.Exif()
    exif[photo_files.EXIF_ORIENTATION] = 6
    return clean_jpeg(3264, 2448, seed=2, noise=3, cell=16, exif=exif.tobytes())


@pytest.mark.parametrize("min_size,max_size", SCALES)
@pytest.mark.parametrize("kind", ["upright", "exif6", "1920x2560"])
def test_a_photo_at_the_model_scale_is_a_full_decode_and_resize_within_a_grey_level(drafts, kind, min_size, max_size):
    data = {"upright": lambda: clean_jpeg(2448, 3264, seed=1, noise=3, cell=16), "exif6": rotated_photo,
            "1920x2560": lambda: clean_jpeg(1920, 2560, seed=3, noise=3, cell=16)}[kind]()
    photo = photos.decode_scaled(data, min_size, max_size)
    expected = full_then_resized(data, min_size, max_size)
    diff = mean_difference(photo.image, expected)
    print("{} at {}/{}: {:.3f} grey levels, decoded at {}".format(kind, min_size, max_size, diff, drafts[-1]))
    assert diff < PIXEL_TOLERANCE
    # The photo's own size, upright: the boxes come back in it.
    assert (photo.height, photo.width) == ((2560, 1920) if kind == "1920x2560" else (3264, 2448))
    assert photo.warnings == ()
    # Decoded at a reduced scale: where the time goes.
    assert [d for d in drafts if d[1][0] < d[0][0] and d[1][1] < d[0][1]], drafts


def test_the_real_photos_at_the_model_scale_are_within_a_grey_level():
    # Measured 0.19-0.80 grey levels (0.80: test_20.jpg at 800/1333).
    worst = []
    for path in real_photos():
        data = path.read_bytes()
        for min_size, max_size in SCALES:
            photo = photos.decode_scaled(data, min_size, max_size, path.name)
            diff = mean_difference(photo.image, full_then_resized(data, min_size, max_size))
            worst.append((diff, path.name, min_size))
            with Image.open(path) as im:
                assert (photo.width, photo.height) == im.size  # none of them is turned by its EXIF
    assert max(worst)[0] < PIXEL_TOLERANCE, sorted(worst)[-3:]


@pytest.mark.parametrize("damage,warning", [(premature_end, PREMATURE), (extraneous, EXTRANEOUS),
                                            (garbled, EXTRANEOUS)],
                         ids=["premature end", "extraneous bytes", "garbled scan"])
def test_damage_libjpeg_only_warns_about_is_reported(damage, warning):
    data = damage(clean_jpeg())
    # What libjpeg itself says of it, and that Pillow loads it anyway: the defect is the real one.
    assert LIBJPEG[warning] in libjpeg_warning(data)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
    for min_size, max_size in [(0, 0), (64, 128)]:
        assert photos.decode_scaled(data, min_size, max_size).warnings == (warning,)
    assert photo_files.load_checked(data, lambda fp: Image.open(fp).load())[1] == [warning]


@pytest.mark.parametrize("make", [clean_jpeg, lambda: trailing_zeros(clean_jpeg())],
                         ids=["clean", "156,340 zero bytes after the end-of-image marker"])
def test_clean_jpegs_have_no_warnings_and_their_own_pixels(make):
    data = make()
    assert libjpeg_warning(data) == ""
    photo = photos.decode_scaled(data, 0, 0)
    assert photo.warnings == ()
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(photo.image, np.asarray(im.convert("RGB"))[:, :, ::-1])


def test_a_progressive_jpeg_is_decoded_unchecked():
    # libjpeg reads every scan of a progressive file before its first row: how far it read says nothing.
    buf = io.BytesIO()
    Image.open(io.BytesIO(clean_jpeg())).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    assert photo_files.jpeg_scan(data) is None
    photo = photos.decode_scaled(data, 0, 0)
    assert photo.warnings == ()
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(photo.image, np.asarray(im.convert("RGB"))[:, :, ::-1])


def test_the_damaged_real_photo_is_reported_and_the_padded_one_is_not():
    assert photo_files.check(str(real_photo(DAMAGED_PHOTO))).error == PREMATURE
    assert photo_files.check(str(real_photo(PADDED_PHOTO))) == photo_files.Checked(2336, 4160, None)
    damaged, padded = real_photo(DAMAGED_PHOTO).read_bytes(), real_photo(PADDED_PHOTO).read_bytes()
    assert not padded.endswith(b"\xff\xd9")  # the naive check would call it corrupt
    for min_size, max_size in [(0, 0)] + SCALES:
        assert photos.decode_scaled(damaged, min_size, max_size).warnings == (PREMATURE,)
        assert photos.decode_scaled(padded, min_size, max_size).warnings == ()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.getbasetemp())


def test_boxes_come_back_in_the_photos_own_pixels(model_dir):
    from shelfdet.core.inference import Detector

    detector = Detector.from_model_dir(model_dir, "cpu")
    data = rotated_photo()
    photo = detector.decode(data)
    assert photo.image.shape == (85, 64, 3)  # the tiny model's test size, 64/128
    result = detector.predict([photo])[0]
    assert (result["image_height"], result["image_width"]) == (3264, 2448)
    boxes = np.reshape(result["pred_boxes"], (-1, 4))
    assert len(boxes) and boxes[:, [0, 2]].max() > 64 * 4 and boxes[:, [1, 3]].max() > 85 * 4
    assert boxes[:, [0, 2]].max() <= 2448 and boxes[:, [1, 3]].max() <= 3264
    assert "warnings" not in result
    damaged = detector.predict([detector.decode(premature_end(clean_jpeg()))])[0]
    assert damaged["warnings"] == [PREMATURE]


def test_a_tiled_model_decodes_the_whole_photo(model_dir):
    from shelfdet.core.inference import Detector

    tiled = Detector.from_model_dir(model_dir, "cpu", {"tile-size": "1024"})
    data = clean_jpeg(2448, 3264, seed=1, noise=3, cell=16)
    photo = tiled.decode(data)
    # Tiles are cut from the photo's own pixels, each then resized as a whole photo is.
    assert photo.image.shape == (3264, 2448, 3)
    assert np.array_equal(photo.image, photos.decode(data))
    assert tiled.predict([photo])[0]["image_width"] == 2448
    with pytest.raises(ValueError, match="full size"):
        tiled.predict([Detector.from_model_dir(model_dir, "cpu").decode(data)])


@pytest.fixture(scope="module")
def photo_server(model_dir, tmp_path_factory):
    real_photos()  # skips without them, before a server starts
    srv = ServerProcess(model_dir, tmp_path_factory.mktemp("photos") / "server.log", env={"OMP_NUM_THREADS": "1"})
    with srv.running():
        yield srv


def test_every_real_photo_is_served_in_its_own_pixels_and_only_the_damaged_one_warns(photo_server, model_dir):
    import httpx

    from shelfdet.core.inference import Detector

    served = {}
    with httpx.Client(base_url=photo_server.url, timeout=120) as client:
        for path in real_photos():
            r = client.post("/invocations", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200, (path.name, r.text[:300])
            served[path.name] = r.json()
    assert {n: s["warnings"] for n, s in served.items() if "warnings" in s} == {DAMAGED_PHOTO: [PREMATURE]}
    detector = Detector.from_model_dir(model_dir, "cpu")
    for path in real_photos():
        with Image.open(path) as im:
            assert (served[path.name]["image_width"], served[path.name]["image_height"]) == im.size
        expected = detector.predict([detector.decode(path.read_bytes())])[0]
        assert served[path.name]["scores"] == pytest.approx(expected["scores"], abs=1e-5)
        # Boxes come back scaled by about 40 (the test size is 64): float noise scales with them.
        np.testing.assert_allclose(served[path.name]["pred_boxes"], expected["pred_boxes"], atol=0.05)
