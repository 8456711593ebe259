"""`make predict ENDPOINT=` on the endpoint kinds `make deploy` makes (moto): asynchronous (photos and
results through S3), real-time (the 6 MB limit, RESIZE=1).

moto stores the endpoints, S3 and the async invocation, but runs no model: a stand-in plays SageMaker.
For an async request it takes the input object moto was told about, POSTs it to a real
`shelfdet serve` (tests/_serving_support.ServerProcess) and writes the answer where
invoke_endpoint_async said the output (or failure) would be, one request per poll of the client.
For a real-time request it answers InvokeEndpoint with the tiny model's prediction of the bytes sent.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from _serving_support import ServerProcess, encode, make_tiny_model, shelf_image
from test_launch_support import (BUCKET, PREFIX, REGION, ROLE_ARN, account, cli, client,  # noqa: F401
                                 fast_sessions, one_error_line)

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.getbasetemp())


def big_photo(path: Path, megabytes: float, width: int = 4000, height: int = 3000, seed: int = 3) -> Path:
    """A shelf photo of at least ``megabytes``: noise over a scaled-up shelf (noise defeats JPEG; 4000x3000
    at quality 100 is 22 MB)."""
    shelf = np.asarray(Image.fromarray(shelf_image(seed, 400, 300)).resize((width, height), Image.NEAREST), np.int16)
    noisy = np.clip(shelf + np.random.default_rng(seed).integers(-128, 129, shelf.shape), 0, 255).astype(np.uint8)
    for quality in (75, 85, 90, 95, 98, 100):
        path.write_bytes(encode_q(noisy, quality))
        if path.stat().st_size >= megabytes * MB:
            return path
    raise AssertionError("could not make a {} MB photo".format(megabytes))


def encode_q(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class SageMaker:
    """Plays SageMaker's side of the invocations the client makes on moto (see the module docstring)."""

    def __init__(self):
        self.calls = []  # (operation, parameters) of every API call, as boto3 got them
        self.jobs = []  # async invocations not yet answered
        self.answer = None  # (body, content type, custom attributes) -> (status, response body)
        self.polls = 0

    def session_hooks(self, s):
        s.events.register("before-parameter-build", self._record)
        s.events.register("after-call.sagemaker-runtime.InvokeEndpointAsync", self._queued)
        s.events.register("before-send.sagemaker-runtime.InvokeEndpoint", self._realtime)

    def _record(self, params, model, **_):
        if model.name == "PutObject":  # botocore has made the body a file object by now: its size is kept
            body = params["Body"]
            params = dict(params, Body=body.getbuffer().nbytes if hasattr(body, "getbuffer") else len(body))
        self.calls.append((model.name, copy.deepcopy(params)))

    def sent(self, operation):
        return [p for op, p in self.calls if op == operation]

    def _queued(self, parsed, context=None, **_):
        # moto answers at once with its own object; SageMaker writes the output only when the model is done.
        bucket, key = parsed["OutputLocation"][5:].split("/", 1)
        client("s3").delete_object(Bucket=bucket, Key=key)
        self.jobs.append((dict(self.sent("InvokeEndpointAsync")[-1]), parsed["OutputLocation"], parsed["FailureLocation"]))

    def _realtime(self, request, **_):
        import urllib3
        from botocore.awsrequest import AWSResponse

        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        status, body = self.answer(request.body, headers["content-type"], headers.get("x-amzn-sagemaker-custom-attributes"))
        raw = urllib3.response.HTTPResponse(body=io.BytesIO(body), preload_content=False, status=status)
        return AWSResponse(request.url, status, {"Content-Type": "application/json"}, raw)

    @contextlib.contextmanager
    def at_work(self):
        """While the client runs: its wait between two polls is where SageMaker works; nothing really sleeps."""
        import time

        with pytest.MonkeyPatch.context() as m:
            m.setattr(time, "sleep", self.step)
            yield

    def step(self, _seconds=None):
        """One poll's worth of time: the oldest queued request is answered."""
        self.polls += 1
        if not self.jobs:
            return
        request, output, failure = self.jobs.pop(0)
        s3 = client("s3")
        bucket, key = request["InputLocation"][5:].split("/", 1)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        status, answer = self.answer(body, request["ContentType"], request.get("CustomAttributes"))
        where = output if status == 200 else failure
        bucket, key = where[5:].split("/", 1)
        s3.put_object(Bucket=bucket, Key=key, Body=answer)


@pytest.fixture
def sagemaker(monkeypatch, fast_sessions):
    from shelfdet.launch import aws

    stand_in = SageMaker()
    original = aws.make_session

    def session(region):
        s = original(region)
        stand_in.session_hooks(s)
        return s

    monkeypatch.setattr(aws, "make_session", session)
    return stand_in


def server_answer(url):
    """The container contract: the body POSTed to /invocations as SageMaker does."""
    def answer(body, content_type, attributes):
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
        r = httpx.post(url + "/invocations", content=body, headers=headers, timeout=300)
        return r.status_code, r.content
    return answer


@functools.lru_cache(maxsize=None)
def detector(model_dir):
    from shelfdet.core.inference import Detector

    return Detector.from_model_dir(model_dir, "cpu")


def detector_answer(model_dir):
    """What the serving app computes for one raw image (decoded as it decodes), in this process."""
    from shelfdet.serving import limits

    model = detector(model_dir)

    def answer(body, content_type, attributes):
        params = limits.parse_custom_attributes(attributes)
        thr, cap = limits.check_request_limits(params.get("score_threshold"), params.get("max_detections"),
                                               model.min_score, model.max_detections)
        return 200, json.dumps(model.predict([model.decode(body)], thr, cap)[0]).encode()
    return answer


def local_prediction(model_dir, path, out, capsys, *extra):
    rc, _, err = cli(capsys, "predict", "--image", str(path), "--model-dir", model_dir, "--out", str(out),
                     "--device", "cpu", *extra)
    assert rc == 0, err
    return json.loads((out / (path.name + ".json")).read_text())


def realtime_endpoint(name):
    """A real-time endpoint in moto, as `make deploy` leaves it."""
    sm = client("sagemaker")
    sm.create_model(ModelName=name + "-model", ExecutionRoleArn=ROLE_ARN,
                    PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-2.amazonaws.com/shelfdet-serving:t",
                                      "ModelDataUrl": "s3://{}/m/model.tar.gz".format(BUCKET)})
    sm.create_endpoint_config(EndpointConfigName=name + "-config", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name + "-model", "InstanceType": "ml.m5.large",
         "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name + "-config")


def assert_same_boxes(got, want, atol=1e-3):
    assert (got["image_width"], got["image_height"]) == (want["image_width"], want["image_height"])
    assert len(got["scores"]) == len(want["scores"]) > 0
    np.testing.assert_allclose(got["pred_boxes"], want["pred_boxes"], atol=atol)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4)
    assert got["pred_classes"] == want["pred_classes"]


# ---- asynchronous -----------------------------------------------------------------------

def test_async_predict_goes_through_s3_to_the_real_server_and_writes_what_a_local_run_does(
        account, sagemaker, model_dir, capsys, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, _, err = cli(capsys, "deploy", "--model", "s3://{}/m/model.tar.gz".format(BUCKET), "--endpoint", "shelf-async",
                     "--async", "--instance-type", "ml.m5.large", "--stack", "cpu", "--role", ROLE_ARN,
                     "--record-dir", str(tmp_path / "deployments"), "--region", REGION, "--bucket", BUCKET,
                     "--prefix", PREFIX)
    assert rc == 0, err
    (model,) = sagemaker.sent("CreateModel")
    env = model["PrimaryContainer"]["Environment"]

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "shelf.jpg").write_bytes(encode(shelf_image(9, 160, 120)))
    big = big_photo(photos / "big.jpg", 20)
    (photos / "notes.txt").write_text("not a photo: not sent")
    from shelfdet.serving import limits

    # A real-time endpoint's container refuses this photo; the one deploy made for async takes it.
    assert limits.settings_from_env({}).max_payload_bytes < big.stat().st_size < limits.settings_from_env(env).max_payload_bytes

    server = ServerProcess(model_dir, tmp_path / "server.log", env=dict(env, OMP_NUM_THREADS="1"))
    try:
        server.wait_ready()
        sagemaker.answer = server_answer(server.url)
        out = tmp_path / "predictions"
        with sagemaker.at_work():
            rc, stdout, err = cli(capsys, "predict", "--image", str(photos), "--endpoint", "shelf-async",
                                  "--region", REGION, "--out", str(out), "--max-detections", "40")
        assert rc == 0, err + server.log()
    finally:
        server.stop()

    # Each photo went to S3 beside the endpoint's outputs, then to invoke_endpoint_async.
    puts = sagemaker.sent("PutObject")
    assert [(p["Bucket"], p["Key"].rsplit("/", 1)[1], p["Body"], p["ContentType"]) for p in puts] == [
        (BUCKET, "big.jpg", big.stat().st_size, "image/jpeg"),
        (BUCKET, "shelf.jpg", (photos / "shelf.jpg").stat().st_size, "image/jpeg")]
    folder = puts[0]["Key"].rsplit("/", 1)[0]
    assert folder.startswith("detectron2/async/shelf-async/input/") and puts[1]["Key"].startswith(folder)
    assert sagemaker.sent("InvokeEndpointAsync") == [
        {"EndpointName": "shelf-async", "InputLocation": "s3://{}/{}".format(BUCKET, p["Key"]),
         "ContentType": "image/jpeg", "Accept": "application/json", "CustomAttributes": "max_detections=40"}
        for p in puts]
    stored = client("s3").get_object(Bucket=BUCKET, Key=puts[0]["Key"])["Body"].read()
    assert stored == big.read_bytes()
    # Waited for each result, saying so.
    assert "waiting for 2 of 2 results from endpoint shelf-async" in err
    assert "waiting for 1 of 2 results from endpoint shelf-async" in err
    assert sagemaker.polls == 2

    # The outputs are what a local run of the same model writes.
    local = tmp_path / "local"
    for photo in (big, photos / "shelf.jpg"):
        got = json.loads((out / (photo.name + ".json")).read_text())
        # Another process, other thread counts: float32 sums in another order (measured: 0.0045 px at 4000 px).
        assert_same_boxes(got, local_prediction(model_dir, photo, local, capsys, "--max-detections", "40"), atol=0.01)
        assert len(got["scores"]) == 40
        with Image.open(str(out / (photo.name + ".png"))) as png, Image.open(str(local / (photo.name + ".png"))) as want:
            assert png.size == want.size and png.text["Title"] == want.text["Title"]
        assert "{}: 40 boxes (endpoint shelf-async)".format(photo) in stdout
    assert sorted(os.listdir(str(out))) == ["big.jpg.json", "big.jpg.png", "shelf.jpg.json", "shelf.jpg.png"]


def test_async_failures_are_reported_and_the_rest_written(account, sagemaker, model_dir, capsys, tmp_path):
    client("sagemaker").create_model(ModelName="m", ExecutionRoleArn=ROLE_ARN, PrimaryContainer={
        "Image": "123456789012.dkr.ecr.us-east-2.amazonaws.com/shelfdet-serving:t", "ModelDataUrl": "s3://b/m.tgz"})
    client("sagemaker").create_endpoint_config(
        EndpointConfigName="c", ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "m",
                                                     "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://{}/elsewhere/out/".format(BUCKET),
                                               "S3FailurePath": "s3://{}/elsewhere/failed/".format(BUCKET)}})
    client("sagemaker").create_endpoint(EndpointName="theirs", EndpointConfigName="c")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.png"):
        Image.fromarray(shelf_image(len(name), 96, 72)).save(str(photos / name))
    served = detector_answer(model_dir)

    def answer(body, content_type, attributes):
        if content_type == "image/png":  # as SageMaker writes a container's error
            return 400, b'{"error": "b.png: the model said no"}'
        return served(body, content_type, attributes)

    sagemaker.answer = answer
    out = tmp_path / "predictions"
    with sagemaker.at_work():
        rc, stdout, err = cli(capsys, "predict", "--image", str(photos), "--endpoint", "theirs", "--region", REGION,
                              "--out", str(out))
    assert rc == 2
    assert one_error_line(err) == "error: 1 of 2 photos failed on endpoint theirs (first: {}); the reasons are above".format(
        photos / "b.png")
    assert '{}: failed on endpoint theirs: {{"error": "b.png: the model said no"}}'.format(photos / "b.png") in err
    assert sorted(os.listdir(str(out))) == ["a.jpg.json", "a.jpg.png"]
    # Inputs go beside the endpoint's own output folder.
    assert all(p["Key"].startswith("elsewhere/input/") for p in sagemaker.sent("PutObject"))


def test_async_results_not_there_in_time(account, sagemaker, capsys, monkeypatch, tmp_path):
    import time

    sm = client("sagemaker")
    sm.create_model(ModelName="m", ExecutionRoleArn=ROLE_ARN, PrimaryContainer={
        "Image": "123456789012.dkr.ecr.us-east-2.amazonaws.com/shelfdet-serving:t", "ModelDataUrl": "s3://b/m.tgz"})
    sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://{}/a/ep/output/".format(BUCKET)}})
    sm.create_endpoint(EndpointName="slow", EndpointConfigName="c")
    monkeypatch.setattr(time, "sleep", sagemaker.calls.append)  # an endpoint scaled to zero, still starting
    photo = tmp_path / "shelf.jpg"
    photo.write_bytes(encode(shelf_image(1, 96, 72)))
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "slow", "--region", REGION,
                     "--out", str(tmp_path / "o"), "--timeout", "0")
    assert rc == 2
    assert "1 of 1 results not there after" in one_error_line(err)
    assert "they will be written to s3://{}/a/ep/output/".format(BUCKET) in err


# ---- real-time ----------------------------------------------------------------------------

def test_realtime_refuses_a_photo_over_6_mb_in_one_line(account, sagemaker, capsys, tmp_path):
    realtime_endpoint("shelf-rt")
    photo = big_photo(tmp_path / "big.jpg", 6.5, 3000, 2250)
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-rt", "--region", REGION,
                     "--out", str(tmp_path / "o"))
    assert rc == 2
    assert one_error_line(err) == (
        "error: {} is {:.1f} MB, over the 6 MB a real-time endpoint takes: deploy with ASYNC=1 (asynchronous, up to "
        "1 GB), or pass RESIZE=1 to send them at the model's test scale".format(photo, photo.stat().st_size / MB))
    assert sagemaker.sent("InvokeEndpoint") == [] and not (tmp_path / "o").exists()
    # A folder: checked before the first photo is sent.
    (tmp_path / "a.jpg").write_bytes(encode(shelf_image(1, 96, 72)))
    rc, _, err = cli(capsys, "predict", "--image", str(tmp_path), "--endpoint", "shelf-rt", "--region", REGION,
                     "--out", str(tmp_path / "o"))
    assert rc == 2 and "1 of 2 photos are over the 6 MB a real-time endpoint takes (first: {}".format(photo) in err
    assert sagemaker.sent("InvokeEndpoint") == []


def test_realtime_resize_sends_the_test_scale_and_writes_the_boxes_of_the_whole_photo(
        account, sagemaker, model_dir, capsys, tmp_path):
    realtime_endpoint("shelf-rt")
    sagemaker.answer = detector_answer(model_dir)
    photo = big_photo(tmp_path / "big.jpg", 6.5, 3000, 2250)
    out = tmp_path / "predictions"
    rc, stdout, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-rt", "--region", REGION,
                          "--out", str(out), "--resize", "--test-size", model_dir)
    assert rc == 0, err
    (sent,) = sagemaker.sent("InvokeEndpoint")
    assert sent["ContentType"] == "image/png"
    with Image.open(io.BytesIO(sent["Body"])) as img:
        assert img.size == (85, 64)  # the tiny model's test size, 64/128
    assert len(sent["Body"]) < photo.stat().st_size / 100
    assert "sent at the test scale 85x64 as PNG" in err
    got = json.loads((out / "big.jpg.json").read_text())
    assert_same_boxes(got, local_prediction(model_dir, photo, tmp_path / "local", capsys))
    with Image.open(str(out / "big.jpg.png")) as png, Image.open(str(tmp_path / "local" / "big.jpg.png")) as want:
        assert png.size == want.size and png.text["Title"] == want.text["Title"]


def test_resize_sends_a_photo_smaller_than_its_test_scale_png_as_it_is(account, sagemaker, model_dir, capsys, tmp_path):
    realtime_endpoint("shelf-rt")
    sagemaker.answer = detector_answer(model_dir)
    photo = big_photo(tmp_path / "shelf.jpg", 0.1, 1200, 900)  # noise: its JPEG is smaller than an 800x600 PNG
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-rt", "--region", REGION,
                     "--out", str(tmp_path / "o"), "--resize", "--test-size", "600/800")
    assert rc == 0, err
    assert sagemaker.sent("InvokeEndpoint")[0]["Body"] == photo.read_bytes()
    assert "sent as it is" in err


def test_resize_refuses_what_is_over_6_mb_even_at_the_test_scale(account, sagemaker, capsys, tmp_path):
    realtime_endpoint("shelf-rt")
    photo = big_photo(tmp_path / "big.jpg", 6.5, 4000, 3000)
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-rt", "--region", REGION,
                     "--out", str(tmp_path / "o"), "--resize", "--test-size", "2000/2500")
    assert rc == 2
    assert "even at the model's test scale, over the 6 MB a real-time endpoint takes: deploy with ASYNC=1" in \
        one_error_line(err)
    assert sagemaker.sent("InvokeEndpoint") == []


@pytest.mark.parametrize("args, needle", [
    (["--resize"], "RESIZE=1 needs the endpoint model's test size: TEST_SIZE=<min>/<max> (e.g. 800/1333) or MODEL_DIR="),
    (["--resize", "--test-size", "big"], "not 'big'"),
    (["--resize", "--test-size", "1333/800"], "not '1333/800'"),
])
def test_resize_needs_the_model_test_size(account, sagemaker, capsys, tmp_path, args, needle):
    realtime_endpoint("shelf-rt")
    photo = tmp_path / "shelf.jpg"
    photo.write_bytes(encode(shelf_image(1, 96, 72)))
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-rt", "--region", REGION, *args)
    assert rc == 2 and needle in one_error_line(err), err
    assert sagemaker.calls == []  # refused before any AWS call


def test_resize_refuses_an_endpoint_that_tiles(account, sagemaker, capsys, tmp_path):
    sm = client("sagemaker")
    sm.create_model(ModelName="tiles", ExecutionRoleArn=ROLE_ARN, PrimaryContainer={
        "Image": "123456789012.dkr.ecr.us-east-2.amazonaws.com/shelfdet-serving:t", "ModelDataUrl": "s3://b/m.tgz",
        "Environment": {"SHELFDET_INFER": "--tile-size 500 --nms soft"}})
    sm.create_endpoint_config(EndpointConfigName="tiles-config", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "tiles", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName="tiles", EndpointConfigName="tiles-config")
    photo = tmp_path / "shelf.jpg"
    photo.write_bytes(encode(shelf_image(1, 96, 72)))
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "tiles", "--region", REGION,
                     "--resize", "--test-size", "800/1333")
    assert rc == 2 and "RESIZE=1 would change the tiles the endpoint's model cuts (tile-size 500" in one_error_line(err)
    assert sagemaker.sent("InvokeEndpoint") == []


def test_realtime_predict_sends_the_photo_and_writes_the_answer(account, sagemaker, capsys, tmp_path):
    realtime_endpoint("shelf-rt")
    served = {"image_height": 30, "image_width": 40, "pred_boxes": [[10.0, 10.0, 50.0, 60.0], [60, 20, 90, 100]],
              "scores": [0.9, 0.4], "pred_classes": [0, 0], "pred_class_names": ["SKU", "SKU"],
              "class_names": ["SKU"]}
    sagemaker.answer = lambda body, ctype, attributes: (200, json.dumps(served).encode())
    photo = tmp_path / "shelf.png"
    photo.write_bytes(encode(shelf_image(9, 40, 30), "PNG"))
    out = tmp_path / "preds"
    rc, stdout, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-rt", "--region", REGION,
                          "--out", str(out), "--score-threshold", "0.3")
    assert rc == 0, err
    (sent,) = sagemaker.sent("InvokeEndpoint")
    assert sent["Body"] == photo.read_bytes() and sent["ContentType"] == "image/png"
    assert "2 boxes (endpoint shelf-rt)" in stdout
    assert json.loads((out / "shelf.png.json").read_text()) == served
    assert (out / "shelf.png.png").stat().st_size > 1000


def test_an_endpoint_answer_that_is_not_a_prediction_is_a_clear_error(account, sagemaker, capsys, tmp_path):
    realtime_endpoint("shelf-rt")
    sagemaker.answer = lambda body, ctype, attributes: (200, b"hello")  # as a misconfigured endpoint might send
    photo = tmp_path / "shelf.jpg"
    photo.write_bytes(encode(shelf_image(9, 40, 30)))
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-rt", "--region", REGION,
                     "--out", str(tmp_path / "o"))
    assert rc == 2
    assert "not JSON" in one_error_line(err) or "without pred_boxes" in one_error_line(err), err


def test_a_photo_in_another_format_is_refused_before_it_is_sent(account, sagemaker, capsys, tmp_path):
    realtime_endpoint("shelf-rt")
    photo = tmp_path / "shelf.ppm"
    Image.fromarray(shelf_image(9, 40, 30)).save(str(photo), "PPM")
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-rt", "--region", REGION,
                     "--out", str(tmp_path / "o"))
    assert rc == 2
    assert one_error_line(err) == "error: {}: not a JPEG or PNG image (unrecognised data)".format(photo)
    assert sagemaker.sent("InvokeEndpoint") == []


def test_an_unknown_endpoint_is_one_line_naming_the_call(account, sagemaker, capsys, tmp_path):
    photo = tmp_path / "shelf.jpg"
    photo.write_bytes(encode(shelf_image(1, 96, 72)))
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "nope", "--region", REGION)
    assert rc == 2
    assert one_error_line(err).startswith("error: endpoint nope: DescribeEndpoint failed: ValidationException: ")


def test_payload_cap_reaches_async_sizes_and_batch_transform_keeps_its_own():
    from shelfdet.serving import limits

    s = limits.settings_from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": str(limits.ASYNC_MAX_PAYLOAD_MB)})
    assert s.max_payload_bytes == 200 * MB
    # /execution-parameters answers batch transform, whose maximum is 100 MB.
    assert s.execution_parameters()["MaxPayloadInMB"] == 100
    assert limits.settings_from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024"}).max_payload_bytes == 1024 * MB
    with pytest.raises(limits.LimitError, match=r"outside \(0, 1024\]"):
        limits.settings_from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1025"})


# ---- RESIZE on real photos -------------------------------------------------------------------

@pytest.mark.skipif(not REALDATA.is_dir(), reason="no real SKU-110K photos in {} (academic licence: never in the "
                    "repository)".format(REALDATA))
@pytest.mark.parametrize("name", ["test_0.jpg", "train_3021.jpg", "test_12.jpg", "test_22.jpg"])
def test_resize_of_a_real_photo_gives_the_boxes_of_the_whole_photo(model_dir, name, tmp_path):
    """The tiny model's forward pass at its test scale, from the resized upload and from the whole photo."""
    from shelfdet.launch import endpoint
    from shelfdet.serving.predict import Outputs

    photo = REALDATA / name
    model = detector(model_dir)
    whole = model.predict([model.read(str(photo))])[0]  # as the server takes the whole photo
    upload = endpoint.prepare(str(photo), (model.min_size, model.max_size, 0))
    assert upload.content_type == "image/png" and len(upload.body) < photo.stat().st_size / 20
    pred = json.loads(detector_answer(model_dir)(upload.body, upload.content_type, None)[1])
    upload_path = tmp_path / name
    upload_path.write_bytes(photo.read_bytes())
    endpoint.finish(Outputs(str(tmp_path / "o"), endpoint="x"), upload._replace(path=str(upload_path)), pred)
    got = json.loads((tmp_path / "o" / (name + ".json")).read_text())
    assert_same_boxes(got, whole)
    # test_22.jpg is damaged: what the server would say of the whole photo is said of the resized one.
    assert got.get("warnings") == whole.get("warnings")
    assert ("warnings" in got) == (name == "test_22.jpg")
