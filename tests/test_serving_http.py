"""The hosting app over real HTTP: a real server process with a small real model, driven with httpx."""
from __future__ import annotations

import base64
import io
import json
import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import messages
from _serving_support import ServerProcess, encode, make_tiny_model, png_bomb, shelf_image

PAYLOAD_MB = 1  # small, so the 413 cases send little
LIMIT = PAYLOAD_MB * 1024 * 1024


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = ServerProcess(model_dir, tmp_path_factory.mktemp("serve") / "server.log",
                        env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": str(PAYLOAD_MB), "OMP_NUM_THREADS": "1",
                             "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "2", "SAGEMAKER_BATCH_STRATEGY": "MultiRecord",
                             # Stalled uploads stay held however slow the machine (the 408 has its own server).
                             "SHELFDET_BODY_TIMEOUT": "3600"})
    with srv.running():
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def detector(model_dir):
    from shelfdet.core.inference import Detector

    return Detector.from_model_dir(model_dir, "cpu")


JPEG = encode(shelf_image(1))
PNG = encode(shelf_image(2), "PNG")


def _as(fmt: str) -> bytes:
    """The shelf photo in a format the server must never decode."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(shelf_image(1, 64, 48)).save(buf, fmt)
    return buf.getvalue()


WEBP, TIFF, ICO = _as("WEBP"), _as("TIFF"), _as("ICO")


def direct(detector, data, **kw):
    from shelfdet.core import photos

    return detector.predict([photos.decode(data)], **kw)[0]


def assert_same(served, expected, box_atol=1e-3):
    assert served["image_height"] == expected["image_height"] and served["image_width"] == expected["image_width"]
    assert served["pred_classes"] == expected["pred_classes"]
    assert served["pred_class_names"] == expected["pred_class_names"] == ["SKU"] * len(expected["scores"])
    np.testing.assert_allclose(served["scores"], expected["scores"], atol=1e-5)
    np.testing.assert_allclose(np.reshape(served["pred_boxes"], (-1, 4)), np.reshape(expected["pred_boxes"], (-1, 4)),
                               atol=box_atol)


def test_ping_and_execution_parameters(client):
    assert client.get("/ping").status_code == 200
    r = client.get("/execution-parameters")
    assert r.status_code == 200
    assert r.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": PAYLOAD_MB}


@pytest.mark.parametrize("ctype,data", [("application/x-image", JPEG), ("image/jpeg", JPEG), ("image/png", PNG),
                                        ("image/jpeg; charset=binary", JPEG)])
def test_one_image(client, detector, ctype, data):
    r = client.post("/invocations", content=data, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert isinstance(body, dict) and len(body["scores"]) > 0
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert min(body["scores"]) >= detector.min_score
    assert_same(body, direct(detector, data))


def test_per_request_limits_query_and_custom_attributes(client, detector):
    full = direct(detector, JPEG)
    thr = full["scores"][len(full["scores"]) // 2]
    r = client.post("/invocations?score_threshold={}&max_detections=3".format(thr), content=JPEG,
                    headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert_same(r.json(), direct(detector, JPEG, score_thr=thr, max_detections=3))
    assert len(r.json()["scores"]) == 3
    # The header is how invoke_endpoint passes them; unknown keys there belong to other tools.
    r = client.post("/invocations", content=JPEG, headers={
        "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "trace=1;max_detections=2"})
    assert r.status_code == 200 and len(r.json()["scores"]) == 2
    r = client.post("/invocations?max_detections=1", content=JPEG, headers={
        "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "max_detections=2"})
    assert len(r.json()["scores"]) == 1  # the query wins


@pytest.mark.parametrize("wrap", ["instances", "list", "b64-objects"])
def test_batch(client, detector, wrap):
    images = [JPEG, PNG, encode(shelf_image(3, 120, 80))]
    b64 = [base64.b64encode(d).decode() for d in images]
    doc = {"instances": b64} if wrap == "instances" else b64 if wrap == "list" else [{"b64": s} for s in b64]
    r = client.post("/invocations", json=doc)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, list) and len(body) == 3
    for served, data in zip(body, images):
        assert_same(served, direct(detector, data))


# Width x height. Detectron2's own resize turns a short side of 1-3 px into 0 px here (the test size is
# 64, capped at 128): these were 500s.
ODD_SIZES = [(2000, 1), (1, 3000), (1, 1), (3, 20000)]


def _odd_image(width: int, height: int, fmt: str) -> bytes:
    """A horizontal and vertical colour ramp, so every pixel row and column differs."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], -1)
    return encode(rgb.astype(np.uint8), fmt)


def _inside(result, width, height):
    boxes = np.reshape(result["pred_boxes"], (-1, 4))
    return bool(np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= width) and np.all(boxes[:, [1, 3]] <= height))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("width,height", ODD_SIZES, ids=["{}x{}".format(*s) for s in ODD_SIZES])
def test_an_elongated_or_one_pixel_image_is_served(client, detector, width, height, fmt):
    data = _odd_image(width, height, fmt)
    r = client.post("/invocations", content=data, headers={"Content-Type": "image/" + fmt.lower()})
    assert r.status_code == 200, r.text[:300]
    assert (r.json()["image_width"], r.json()["image_height"]) == (width, height)
    assert _inside(r.json(), width, height), r.json()["pred_boxes"][:5]
    # Boxes are scaled back by up to 20000/128 here: float noise of the forward pass scales with them.
    assert_same(r.json(), direct(detector, data), box_atol=1e-3 * max(width, height) / 128)


def test_odd_shapes_in_one_json_batch_as_batch_transform_sends_them(client):
    images = [_odd_image(w, h, fmt) for w, h in ODD_SIZES for fmt in ("PNG", "JPEG")]
    r = client.post("/invocations", json={"instances": [base64.b64encode(d).decode() for d in images]})
    assert r.status_code == 200, r.text[:300]
    sizes = [(p["image_width"], p["image_height"]) for p in r.json()]
    assert sizes == [s for s in ODD_SIZES for _ in range(2)]


def _sizes_under_the_cap(count: int, seed: int = 20):
    """Log-uniform widths and heights from 1 px up, every one under photos.MAX_PIXELS, plus the cap's corners."""
    from shelfdet.core import photos

    cap = photos.MAX_PIXELS
    rng = np.random.default_rng(seed)
    sizes = [(cap, 1), (1, cap), (7745, 7746), (65500, 1)]
    while len(sizes) < count:
        w, h = (int(v) for v in np.exp(rng.uniform(0, np.log(65500), 2)))
        if w * h <= cap:
            sizes.append((w, h))
    return sizes


def test_no_decodable_image_under_the_pixel_cap_gets_a_5xx(client):
    """Any size that decodes is answered 200, or 400 naming its size: never a server error."""
    from PIL import Image

    wrong = []
    for i, (width, height) in enumerate(_sizes_under_the_cap(28)):
        # JPEG stops at 65535 px a side; PNG has no such limit.
        fmt = "JPEG" if i % 2 and max(width, height) <= 65500 else "PNG"
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (90 + i, 140, 200 - i)).save(buf, fmt)
        r = client.post("/invocations", content=buf.getvalue(), headers={"Content-Type": "image/" + fmt.lower()})
        named = r.status_code == 400 and "{}x{}".format(width, height) in r.json().get("error", "")
        if not (r.status_code == 200 or named):
            wrong.append((width, height, fmt, r.status_code, r.text[:120]))
    assert not wrong, wrong
    assert client.get("/ping").status_code == 200


def _truncated():
    return JPEG[: len(JPEG) // 2]


BAD = [
    # name, method, path, headers, body, expected status, substring of the error
    ("no content type", "POST", "/invocations", {}, JPEG, 415, "Content-Type"),
    ("text/plain", "POST", "/invocations", {"Content-Type": "text/plain"}, JPEG, 415, "text/plain"),
    ("csv", "POST", "/invocations", {"Content-Type": "text/csv"}, b"1,2,3", 415, "unsupported"),
    ("garbage", "POST", "/invocations", {"Content-Type": "application/x-image"}, b"not an image at all", 415,
     "image: not a JPEG or PNG image (unrecognised data)"),
    ("webp as jpeg", "POST", "/invocations", {"Content-Type": "image/jpeg"}, WEBP, 415,
     "image: not a JPEG or PNG image (WebP image)"),
    ("tiff as jpeg", "POST", "/invocations", {"Content-Type": "image/jpeg"}, TIFF, 415,
     "image: not a JPEG or PNG image (TIFF image)"),
    ("ico as jpeg", "POST", "/invocations", {"Content-Type": "image/jpeg"}, ICO, 415,
     "image: not a JPEG or PNG image (ICO image)"),
    ("webp in a batch", "POST", "/invocations", {"Content-Type": "application/json"},
     json.dumps([base64.b64encode(JPEG).decode(), base64.b64encode(WEBP).decode()]).encode(), 415,
     "instance 1: not a JPEG or PNG image (WebP image)"),
    ("jpeg header cut short", "POST", "/invocations", {"Content-Type": "image/jpeg"}, JPEG[:12], 400,
     "not a decodable image"),
    ("truncated jpeg", "POST", "/invocations", {"Content-Type": "image/jpeg"}, _truncated(), 400, "truncated"),
    ("zero length", "POST", "/invocations", {"Content-Type": "image/jpeg"}, b"", 400, "empty"),
    ("too large", "POST", "/invocations", {"Content-Type": "image/jpeg"}, b"\xff" * (LIMIT + 1), 413, "exceeds"),
    ("bomb", "POST", "/invocations", {"Content-Type": "image/png"}, png_bomb(), 400, "pixel"),
    ("bomb under PIL's limit", "POST", "/invocations", {"Content-Type": "image/png"}, png_bomb(10000, 9000), 400,
     "exceeds the"),
    ("threshold > 1", "POST", "/invocations?score_threshold=1.5", {"Content-Type": "image/jpeg"}, JPEG, 400,
     "score_threshold"),
    ("threshold below model's", "POST", "/invocations?score_threshold=0.01", {"Content-Type": "image/jpeg"}, JPEG,
     400, "model's threshold"),
    ("threshold nan", "POST", "/invocations?score_threshold=nan", {"Content-Type": "image/jpeg"}, JPEG, 400,
     "score_threshold"),
    ("max detections 0", "POST", "/invocations?max_detections=0", {"Content-Type": "image/jpeg"}, JPEG, 400,
     "max_detections"),
    ("max detections over cap", "POST", "/invocations?max_detections=301", {"Content-Type": "image/jpeg"}, JPEG, 400,
     "[1, 300]"),
    ("max detections text", "POST", "/invocations?max_detections=all", {"Content-Type": "image/jpeg"}, JPEG, 400,
     "not an integer"),
    ("bad header attribute", "POST", "/invocations",
     {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "score_threshold=x"}, JPEG, 400,
     "not a number"),
    ("unknown query", "POST", "/invocations?treshold=0.5", {"Content-Type": "image/jpeg"}, JPEG, 400, "treshold"),
    ("bad json", "POST", "/invocations", {"Content-Type": "application/json"}, b"{nope", 400, "not valid JSON"),
    ("json not a list", "POST", "/invocations", {"Content-Type": "application/json"}, b'{"x": 1}', 400,
     "instances"),
    ("empty batch", "POST", "/invocations", {"Content-Type": "application/json"}, b'{"instances": []}', 400,
     "1 to 64"),
    ("bad base64", "POST", "/invocations", {"Content-Type": "application/json"}, b'["%%%"]', 400, "base64"),
    ("number instance", "POST", "/invocations", {"Content-Type": "application/json"}, b"[1]", 400, "base64 string"),
    ("bad image in batch", "POST", "/invocations", {"Content-Type": "application/json"},
     json.dumps([base64.b64encode(JPEG).decode(), base64.b64encode(JPEG[:12]).decode()]).encode(), 400,
     "instance 1: not a decodable image"),
    ("junk in a batch", "POST", "/invocations", {"Content-Type": "application/json"},
     json.dumps([base64.b64encode(JPEG).decode(), base64.b64encode(b"junk").decode()]).encode(), 415,
     "instance 1: not a JPEG or PNG image (unrecognised data)"),
    ("wrong accept", "POST", "/invocations", {"Content-Type": "image/jpeg", "Accept": "text/csv"}, JPEG, 406,
     "application/json"),
    ("unknown path", "GET", "/nope", {}, None, 404, "Not Found"),
    ("wrong method", "GET", "/invocations", {}, None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("name,method,path,headers,body,status,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input(client, name, method, path, headers, body, status, needle):
    r = client.request(method, path, headers=headers, content=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"], r.json()
    assert client.get("/ping").status_code == 200
    if status not in (404, 405):  # Starlette's own words for a wrong path or method
        said = r.json()["error"]
        assert messages.on_page(said), "{!r} is not on docs/troubleshooting.md as sent".format(said)


def _documented_json():
    page = (messages.ROOT / "docs" / "serving.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", page, re.S)
    return [json.loads(line) for line in blocks[-1].splitlines()], [json.loads(b) for b in blocks[:-1]]


def test_the_answers_and_errors_serving_md_shows_are_what_the_server_sends(client):
    errors, answers = _documented_json()
    one, batch = answers
    real = client.post("/invocations", content=JPEG, headers={"Content-Type": "image/jpeg"}).json()
    assert list(one) == list(real)
    real_batch = client.post("/invocations", json=[base64.b64encode(JPEG).decode()] * 2).json()
    assert [list(a) for a in batch] == [list(a) for a in real_batch]
    r = client.post("/invocations", content=JPEG, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json() == errors[0]
    r = client.post("/invocations", json=[base64.b64encode(JPEG).decode(), base64.b64encode(_truncated()).decode()])
    assert r.status_code == 400 and set(r.json()) == set(errors[1]) and r.json()["index"] == errors[1]["index"]
    assert r.json()["error"].split(" (")[0] == errors[1]["error"].split(" (")[0]
    assert "truncated" in r.json()["error"].split(" (", 1)[1] and "truncated" in errors[1]["error"].split(" (", 1)[1]


def test_batch_error_names_the_instance(client):
    doc = [base64.b64encode(JPEG).decode(), base64.b64encode(_truncated()).decode()]
    r = client.post("/invocations", json={"instances": doc})
    assert r.status_code == 400 and r.json()["index"] == 1


def test_too_large_without_content_length(client):
    """A chunked upload has no Content-Length; the app counts while streaming and stops at the limit."""
    sent = []

    def chunks():
        for _ in range(2 * PAYLOAD_MB * 16):
            sent.append(65536)
            yield b"\xff" * 65536

    r = client.post("/invocations", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413, r.text
    assert "over" in r.json()["error"]
    assert client.get("/ping").status_code == 200


def _flat_png(width: int, height: int) -> bytes:
    """A grey PNG: tens of megapixels in tens of kilobytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 200).save(buf, "PNG")
    return buf.getvalue()


def test_batch_over_the_decoded_pixel_limit_is_413_naming_the_instance(client, detector):
    from shelfdet.core import photos
    from shelfdet.serving.app import MAX_BATCH_PIXELS

    # Four images at just over a quarter of the batch limit, each half of photos.MAX_PIXELS: the fourth
    # crosses it (the server holds three decoded, about 270 MB, before it refuses).
    width = 6000
    height = MAX_BATCH_PIXELS // 4 // width + 1
    assert width * height < photos.MAX_PIXELS and 3 * width * height <= MAX_BATCH_PIXELS < 4 * width * height
    flat = _flat_png(width, height)
    body = json.dumps({"instances": [base64.b64encode(flat).decode()] * 4}).encode()
    assert len(body) < LIMIT, "the batch must pass the payload limit to reach the pixel count"
    r = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, "expected 413, got {}: {}".format(r.status_code, r.text[:200])
    assert r.json()["index"] == 3 and "at instance 3" in r.json()["error"], r.json()
    assert str(MAX_BATCH_PIXELS) in r.json()["error"], r.json()
    assert client.get("/ping").status_code == 200
    r = client.post("/invocations", content=JPEG, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert_same(r.json(), direct(detector, JPEG))
    # Alone, the same image is served: what refused the batch was the sum.
    r = client.post("/invocations", content=flat, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text[:300]
    assert (r.json()["image_width"], r.json()["image_height"]) == (width, height)


def _mixed_requests():
    b64 = base64.b64encode
    good = [
        ("POST", "/invocations", {"Content-Type": "image/jpeg"}, JPEG, 200),
        ("POST", "/invocations", {"Content-Type": "application/x-image"}, PNG, 200),
        ("POST", "/invocations?max_detections=5&score_threshold=0.5", {"Content-Type": "image/jpeg"}, JPEG, 200),
        ("POST", "/invocations", {"Content-Type": "application/json"},
         json.dumps({"instances": [b64(JPEG).decode(), b64(PNG).decode()]}).encode(), 200),
    ]
    cheap = [("GET", "/ping", {}, None, 200), ("GET", "/execution-parameters", {}, None, 200)]
    bad = [(m, p, h, b, s) for _, m, p, h, b, s, _ in BAD]
    return good, cheap, bad


def test_1000_mixed_requests_from_concurrent_clients(server):
    good, cheap, bad = _mixed_requests()
    rng = random.Random(7)
    # About a quarter run the model: the rest exercise every error path at full speed.
    plan = [rng.choice(good) if rng.random() < 0.25 else rng.choice(cheap if rng.random() < 0.3 else bad)
            for _ in range(1000)]
    local = threading.local()
    failures = []

    def send(req):
        method, path, headers, body, expected = req
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=60)
        try:
            r = local.client.request(method, path, headers=headers, content=body)
        except httpx.HTTPError as err:
            return (path, "transport error {!r}".format(err))
        if r.status_code != expected:
            return (path, r.status_code, expected, r.text[:200])
        if r.status_code != 200 and "error" not in r.json():
            return (path, "no JSON error body", r.text[:200])
        return None

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(send, plan))
    failures = [r for r in results if r is not None]
    assert not failures, "{} of 1000 requests failed, e.g. {}".format(len(failures), failures[:5])
    assert server.proc.poll() is None, server.log()
    assert httpx.get(server.url + "/ping").status_code == 200
    log = server.log(tail=None)
    assert '" 500' not in log and "Traceback" not in log, log[-4000:]


def test_the_test_resize_is_detectron2s_wherever_that_gives_a_pixel():
    from shelfdet.core.inference import inference_resize  # applies compat before Detectron2 imports PIL names

    from detectron2.data import transforms as T

    rng = np.random.default_rng(3)
    checked = 0
    for min_size, max_size in [(64, 128), (800, 1333), (750, 1000)]:
        theirs = T.ResizeShortestEdge([min_size] * 2, max_size)
        for w, h in [(int(v) for v in np.exp(rng.uniform(0, 9, 2))) for _ in range(300)]:
            ours = inference_resize(h, w, min_size, max_size)
            try:
                t = theirs.get_transform(np.zeros((h, w, 1), np.uint8))
            except ValueError:  # newer Detectron2 refuses 0 px itself
                continue
            if t.new_h >= 1 and t.new_w >= 1:
                assert (ours.new_h, ours.new_w, ours.interp) == (t.new_h, t.new_w, t.interp), (w, h)
                checked += 1
            else:
                assert min(ours.new_h, ours.new_w) == 1
    assert checked > 500


def test_damaged_jpegs_are_answered_with_warnings_and_clean_ones_without(client, detector):
    from _jpeg_damage import clean_jpeg, extraneous, premature_end, trailing_zeros

    clean = clean_jpeg()
    cases = [(premature_end(clean), ["corrupt JPEG data: premature end of data segment"]),
             (extraneous(clean), ["corrupt JPEG data: extraneous bytes before marker 0xd9"]),
             (clean, None), (trailing_zeros(clean), None), (PNG, None)]
    for data, warnings in cases:
        r = client.post("/invocations", content=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text[:300]
        # The answer's keys plus an optional one: only a damaged image's answer has it.
        assert r.json().get("warnings") == warnings
        assert ("warnings" in r.json()) == bool(warnings)
        assert_same(r.json(), direct(detector, data))
    r = client.post("/invocations", json={"instances": [base64.b64encode(d).decode() for d, _ in cases]})
    assert r.status_code == 200, r.text[:300]
    assert [p.get("warnings") for p in r.json()] == [w for _, w in cases]


def test_other_formats_never_reach_a_decoder(client, monkeypatch):
    """WebP, TIFF and ICO bodies (sent as image/jpeg) are refused before Pillow opens them: its WebP,
    TIFF and ICO openers are never asked, here or in the server (same code)."""
    from PIL import Image

    from shelfdet.core import photos

    Image.init()
    asked = []
    for fmt in ("WEBP", "TIFF", "ICO"):
        factory, accept = Image.OPEN[fmt]
        monkeypatch.setitem(Image.OPEN, fmt, (lambda *a, _f=factory, _n=fmt, **k: asked.append(_n) or _f(*a, **k),
                                              lambda prefix, _a=accept, _n=fmt: asked.append(_n) or _a(prefix)))
    for data, kind in ((WEBP, "WebP image"), (TIFF, "TIFF image"), (ICO, "ICO image")):
        with pytest.raises(photos.FormatNotAccepted) as err:
            photos.decode_scaled(data, 64, 128)
        assert err.value.kind == kind
        r = client.post("/invocations", content=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 415 and r.json() == {"error": "image: not a JPEG or PNG image ({})".format(kind),
                                                      "supported": ["JPEG", "PNG"]}, r.text
    assert asked == []
    assert Image.open(io.BytesIO(WEBP)).format == "WEBP"  # what an unrestricted open does: asks them
    assert asked


def _stalled_upload(port: int, declared: int = 200000) -> socket.socket:
    """An upload that sends its headers, waits until the app reads its body (uvicorn answers
    ``Expect: 100-continue`` then), sends a part of the body and then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall("POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                 "Content-Length: {}\r\nExpect: 100-continue\r\n\r\n".format(declared).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before 100 Continue: {!r}".format(head)
        head += chunk
    assert head.startswith(b"HTTP/1.1 100"), head
    sock.sendall(JPEG[:1000])
    return sock


def _answer(sock: socket.socket) -> tuple:
    """(status, JSON body, whether the server closed the connection after it), read as it arrives."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "closed without an answer: {!r}".format(data)
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    length = int(next(v for k, _, v in (line.partition(": ") for line in lines[1:]) if k.lower() == "content-length"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed mid-answer"
        body += chunk
    closed = sock.recv(1) == b""
    return int(lines[0].split()[1]), json.loads(body[:length]), closed


def test_30_stalled_uploads_do_not_keep_a_normal_request_from_its_answer(server, client, detector):
    """Each stalled upload is inside the app, reading its body, before the normal request is sent
    (it got its 100 Continue). The server has 4 threads and at most 16 waiting places: had a body
    taken its place before it arrived, the 21st upload would have got 503."""
    held = []
    try:
        for _ in range(30):
            held.append(_stalled_upload(server.port))
        r = client.post("/invocations", content=JPEG, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        assert_same(r.json(), direct(detector, JPEG))
        for sock in held:  # still held: no answer, not closed
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in held:
            sock.close()
    assert client.get("/ping").status_code == 200


@pytest.fixture(scope="module")
def impatient(model_dir, tmp_path_factory):
    """A server whose body timeout is short, so a stalled upload gets its 408 soon."""
    srv = ServerProcess(model_dir, tmp_path_factory.mktemp("impatient") / "server.log",
                        env={"OMP_NUM_THREADS": "1"}, extra_args=["--body-timeout", "5"])
    with srv.running():
        yield srv


def test_a_body_not_arrived_in_time_gets_408_and_its_connection_closed(impatient):
    stalled = [_stalled_upload(impatient.port) for _ in range(3)]
    try:
        for sock in stalled:
            status, body, closed = _answer(sock)  # the socket's own 120 s timeout is the deadline
            assert status == 408 and closed, (status, body)
            assert body == {"error": "the request body did not arrive within 5 s (SHELFDET_BODY_TIMEOUT or serve "
                                     "--body-timeout)"}
            assert messages.on_page(body["error"]), "{!r} is not on docs/troubleshooting.md".format(body["error"])
    finally:
        for sock in stalled:
            sock.close()
    # And the server goes on serving, a whole body as fast as ever.
    r = httpx.post(impatient.url + "/invocations", content=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=120)
    assert r.status_code == 200, r.text
    assert "Traceback" not in impatient.log(tail=None)
