"""The SageMaker hosting app (``serve``, ``make serve``) and local prediction (``make predict``).

HTTP contract:

* ``GET /ping``: 200 once the model is loaded, 503 before (and if loading failed).
* ``GET /execution-parameters``: batch-transform settings from ``SAGEMAKER_*``.
* ``POST /invocations``:

  - ``application/x-image``, ``image/jpeg``, ``image/png``: the body is one
    photo; the answer is one JSON object (``pred_boxes``, ``scores``,
    ``pred_classes``, ...).
  - ``application/json``: ``{"instances": [<base64>, ...]}`` or
    ``[<base64>, ...]``; the answer is a JSON list, one object per photo.
  - Per-request ``score_threshold`` and ``max_detections``, as query
    parameters or in ``X-Amzn-SageMaker-Custom-Attributes``
    (``score_threshold=0.5;max_detections=100``), the only per-request channel
    that ``invoke_endpoint`` passes through. They can only tighten the
    model's own limits (its score threshold and detections per image).

Batch transform: with ``ContentType=application/x-image`` and ``SplitType``
``None`` SageMaker sends every S3 object as its own request, under both
``SingleRecord`` and ``MultiRecord`` (records are only concatenated when a
split type cuts the input into several records), so each body is one photo
and its output file ``<photo>.out`` is the JSON that ``make evaluate`` reads.
``MultiRecord`` with a ``SplitType`` of ``Line``/``RecordIO`` is not
supported for photos.
"""
