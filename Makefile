# One short recipe per target; the work is in `python -m shelfdet <command>`.
# `make help` lists targets and variables.
SHELL := /bin/bash
.DEFAULT_GOAL := help
include versions.env
export

VENV        ?= .venv
PY          := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.stamp
SHELFDET    := $(PY) -m shelfdet

# ---- variables (defaults) ----------------------------------------------------
ALGO           ?= faster_rcnn
# Passed to `train` only when set: a resumed run (RUN_DIR=) keeps its own algorithm.
ALGO_GIVEN      = $(filter-out default file,$(origin ALGO))
# The hard preset gets its own folder: `make data PRESET=hard` never replaces the main job's set.
DATA_DIR       ?= $(if $(filter hard,$(PRESET)),data-hard,data)
# Passed to `train` only when set (PRESET= sets it too): a resumed run (RUN_DIR=) trains on its own channels' data.
DATA_DIR_GIVEN  = $(or $(filter-out default file,$(origin DATA_DIR)),$(PRESET))
SRC            ?=
# make data SRC=<folder> FORMAT=coco|voc|yolo|gt: labels exported from CVAT, Label Studio, Roboflow or Ground Truth.
FORMAT         ?=
MAX_SIDE       ?=
PRESET         ?=
BUCKET         ?=
PREFIX         ?= detectron2/data
REGION         ?= $(or $(AWS_REGION),$(AWS_DEFAULT_REGION),us-east-2)
INSTANCE_TYPE  ?=
INSTANCE_COUNT ?= 1
SPOT           ?=
WAIT           ?= 0
DRY_RUN        ?= 0
HP             ?=
# SageMaker jobs: INPUT_MODE=FastFile streams the channels; NETWORK_ISOLATION=1 (weights=zoo then from
# PRETRAINED=s3://..., what `make weights` prints); VPC_SUBNETS/VPC_SECURITY_GROUPS (comma-separated); KEEP_ALIVE=<s>: warm pool.
INPUT_MODE     ?= File
NETWORK_ISOLATION ?=
PRETRAINED     ?=
VPC_SUBNETS    ?=
VPC_SECURITY_GROUPS ?=
KEEP_ALIVE     ?=
# KMS_KEY=<key id, ARN or alias/name>: training/tuning volumes and output, endpoint storage and async output,
# transform output and volume, make upload/weights (SSE-KMS). ENCRYPT_TRAFFIC=0: no inter-container
# encryption for INSTANCE_COUNT>1 (on by default). VPC_*/NETWORK_ISOLATION also apply to deploy and transform.
KMS_KEY        ?=
ENCRYPT_TRAFFIC ?=
# make policy / bootstrap-policy: ACCOUNT (default: the credentials' account), CODEBUILD_ROLE (default: bootstrap's).
ACCOUNT        ?=
CODEBUILD_ROLE ?=
# tensorboard: RUNS="<run> ..." (default: every run), JOB=<training job> (its event files from s3://BUCKET), on TB_PORT.
RUNS           ?=
JOB            ?=
TB_PORT        ?= 6006
# runs: REMOTE=1 adds SageMaker training jobs (ListTrainingJobs, DescribeTrainingJob) in REGION.
REMOTE         ?=
RECIPE         ?=
WEIGHTS        ?=
RUN_DIR        ?=
# The newest *complete* model: an interrupted run has no model/artefacts.json.
MODEL_DIR      ?= $(patsubst %/artefacts.json,%,$(shell ls -t runs/*/model/artefacts.json 2>/dev/null | head -n 1))
IMAGE          ?=
ENDPOINT       ?=
# deploy: ASYNC=1 asynchronous endpoint (S3 in/out under BUCKET, scales to zero); MIN_/MAX_INSTANCES: autoscaling.
# SERVERLESS=1: serverless endpoint on the slim image (an exported model), MEMORY MB (1024-6144) and MAX_CONCURRENCY.
ASYNC          ?=
SERVERLESS     ?=
MEMORY         ?=
MAX_CONCURRENCY ?=
MIN_INSTANCES  ?=
MAX_INSTANCES  ?=
SNS_SUCCESS    ?=
SNS_ERROR      ?=
# predict ENDPOINT=: RESIZE=1 sends photos at the model's test scale, TEST_SIZE=min/max or MODEL_DIR= given here.
RESIZE         ?=
TEST_SIZE      ?=
PREDICTIONS    ?=
MANIFEST       ?= $(DATA_DIR)/annotations/test.manifest
CHANNEL        ?= validation
N              ?= 4
SCORE          ?=
COUNT_THRESHOLD ?=
# Inference hyperparameters over the model's own, e.g. INFER='--tile-size 512 --nms soft' (serve, predict, evaluate, deploy, transform).
INFER          ?=
# What runs the model in serve, predict and evaluate (SHELFDET_RUNTIME): auto (the folder's export, OpenVINO
# first, then ONNX; else the eager model) | openvino | onnx | torch.
RUNTIME        ?=
EVAL_OUT       ?=
BENCH          ?=
ROLE           ?=
MODEL          ?=
STACK          ?=
# docker: build and push from this machine; codebuild: the same push run on AWS CodeBuild (push-* only).
BUILDER        ?= docker
# Read, not repeated: launch/image_names.py's CARD_STACK is the one place push's default is set.
unexport CARD_STACK
CARD_STACK      = $(shell sed -n 's/^CARD_STACK = "\([a-z0-9]*\)".*/\1/p' shared/shelfdet/launch/image_names.py)
PORT           ?= 8080
# make serve listens on this machine only unless HOST= is given on the command line (HOST=0.0.0.0: every
# interface, with no authentication). A HOST in the environment, which some shells set to the machine's
# name, is not taken for it.
SERVE_HOST      = $(if $(filter command line,$(origin HOST)),$(HOST),127.0.0.1)
OBJECTIVE      ?= validation:ap
MAX_JOBS       ?= 8
MAX_PARALLEL   ?= 2
PYTEST_ARGS    ?=

NET_FLAGS = $(if $(filter 1 true yes,$(NETWORK_ISOLATION)),--network-isolation) \
  $(if $(VPC_SUBNETS),--vpc-subnets '$(VPC_SUBNETS)') $(if $(VPC_SECURITY_GROUPS),--vpc-security-groups '$(VPC_SECURITY_GROUPS)')
JOB_FLAGS = --input-mode $(INPUT_MODE) $(if $(PRETRAINED),--pretrained $(PRETRAINED)) $(NET_FLAGS) $(if $(filter 0 false no,$(ENCRYPT_TRAFFIC)),--no-encrypt-traffic)
RUNTIME_ENV = $(if $(RUNTIME),SHELFDET_RUNTIME='$(RUNTIME)')
AWS_FLAGS = --region $(REGION) $(if $(filter 1 true yes,$(DRY_RUN)),--dry-run) $(if $(ROLE),--role $(ROLE)) $(if $(BUCKET),--bucket $(BUCKET)) --prefix $(PREFIX) $(if $(KMS_KEY),--kms-key '$(KMS_KEY)')

.PHONY: help setup lock data upload visualize train tensorboard runs compare weights serve predict evaluate convert-model export tune deploy undeploy transform \
        build build-base build-training build-serving tag doctor push-base push-training push-serving \
        policy bootstrap-policy bootstrap test targets-doc bench clean

help: ## this list
	@echo "Targets:"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (default):"
	@echo "  ALGO=$(ALGO) (faster_rcnn | retinanet | cascade_rcnn)  DATA_DIR=$(DATA_DIR) (data-hard with PRESET=hard)  SRC=$(SRC) (folder, tarball or URL; empty: the synthetic set)  FORMAT=$(FORMAT) (make data: coco | voc | yolo | gt, empty: SKU-110K's CSVs; make export: openvino | onnx | torchscript, empty: openvino)"
	@echo "  PRESET=$(PRESET) (hard: the SKU-110K-like synthetic set, in data-hard)  MAX_SIDE=$(MAX_SIDE) (empty: images as they are)  BUCKET=$(BUCKET)  PREFIX=$(PREFIX)  REGION=$(REGION)"
	@echo "  INSTANCE_TYPE=$(INSTANCE_TYPE) (empty: train locally)  INSTANCE_COUNT=$(INSTANCE_COUNT)  SPOT=$(SPOT)  WAIT=$(WAIT)  DRY_RUN=$(DRY_RUN)"
	@echo "  HP='$(HP)' (e.g. HP='--lr 0.01 --num-iter 500')  RECIPE=$(RECIPE) (dense: crop training at native scale; each value overridable in HP)  WEIGHTS=$(WEIGHTS)  RUN_DIR=$(RUN_DIR) (resume that run)  ROLE=$(ROLE)  MODEL=$(MODEL)"
	@echo "  INPUT_MODE=$(INPUT_MODE) (FastFile: stream from S3)  NETWORK_ISOLATION=$(NETWORK_ISOLATION)  PRETRAINED=$(PRETRAINED) (s3:// zoo weights, from make weights)  VPC_SUBNETS=$(VPC_SUBNETS)  VPC_SECURITY_GROUPS=$(VPC_SECURITY_GROUPS)  KEEP_ALIVE=$(KEEP_ALIVE) (warm pool seconds, <= 3600)"
	@echo "  KMS_KEY=$(KMS_KEY) (KMS key: job volumes and outputs, endpoints, transform, uploads)  ENCRYPT_TRAFFIC=$(ENCRYPT_TRAFFIC) (0: no inter-container encryption when INSTANCE_COUNT>1)"
	@echo "  RUNS=$(RUNS)  JOB=$(JOB)  TB_PORT=$(TB_PORT) (make tensorboard, make compare)  REMOTE=$(REMOTE) (make runs: SageMaker jobs too)"
	@echo "  INFER='$(INFER)' (inference hyperparameters over the model's, e.g. INFER='--tile-size 512 --nms soft')  EVAL_OUT=$(EVAL_OUT) (make evaluate without PREDICTIONS: its output folder)  RUNTIME=$(RUNTIME) (serve, predict, evaluate: auto | openvino | onnx | torch; empty: auto, the export when the model folder has one)  TRUST_PICKLE=$(TRUST_PICKLE) (make convert-model: 1 says you trust the .pth)"
	@echo "  MODEL_DIR=$(MODEL_DIR) (default: the newest complete runs/*/model)  IMAGE=$(IMAGE)  ENDPOINT=$(ENDPOINT)  PORT=$(PORT)  HOST=$(SERVE_HOST) (make serve: 127.0.0.1 unless HOST= is on the command line)  PREDICTIONS=$(PREDICTIONS)  MANIFEST=$(MANIFEST)  COUNT_THRESHOLD=$(COUNT_THRESHOLD) (empty: fit on PREDICTIONS)"
	@echo "  ASYNC=$(ASYNC)  MIN_INSTANCES=$(MIN_INSTANCES)  MAX_INSTANCES=$(MAX_INSTANCES)  SNS_SUCCESS=$(SNS_SUCCESS)  SNS_ERROR=$(SNS_ERROR) (deploy)  SERVERLESS=$(SERVERLESS) (deploy: serverless, slim image, an exported model)  MEMORY=$(MEMORY) (serverless MB, 1024-6144 in 1024 steps; empty: 6144)  MAX_CONCURRENCY=$(MAX_CONCURRENCY) (serverless, 1-200; empty: 5)  RESIZE=$(RESIZE)  TEST_SIZE=$(TEST_SIZE) (predict ENDPOINT=, e.g. 800/1333)"
	@echo "  CHANNEL=$(CHANNEL)  N=$(N)  SCORE=$(SCORE) (empty: count_threshold of PREDICTIONS/metrics.json, else 0.5)  STACK=$(STACK) (cpu | cu101 | cu12 | cu101cpu | cpu-slim (a serving image only, for exported models); default: cpu to build, $(CARD_STACK) to push, from INSTANCE_TYPE to launch)  OBJECTIVE=$(OBJECTIVE)  MAX_JOBS=$(MAX_JOBS)  MAX_PARALLEL=$(MAX_PARALLEL)"
	@echo "  BUILDER=$(BUILDER) (push-*: docker builds here; codebuild builds on AWS CodeBuild, zip in s3://BUCKET or sagemaker-<region>-<account>/shelfdet/codebuild, ROLE= its service role)"
	@echo "  ACCOUNT=$(ACCOUNT)  CODEBUILD_ROLE=$(CODEBUILD_ROLE) (make policy, bootstrap-policy: default the credentials' account, shelfdet-codebuild)"
	@echo "  PARENT=$(PARENT) (make build: debootstrap: stand-in parents; nvidia: cu12 on NVIDIA's CUDA images)  BASE_IMAGE=$(BASE_IMAGE) (make build: on a base pushed earlier, make push-base)"
	@echo "  BENCH=$(BENCH) (make bench: one of bench/bench_<name>.py)  PYTEST_ARGS=$(PYTEST_ARGS) (make test: passed to pytest, e.g. PYTEST_ARGS='-k serving')  VENV=$(VENV) (the local stack's folder)"
	@echo "Hyperparameters: $(PY) -m shelfdet hp-table (also in docs/training.md)"

# ---- local environment -------------------------------------------------------
setup: $(SETUP_STAMP) ## create .venv with the pinned stack (implicit in every target)

$(SETUP_STAMP): versions.env tools/setup_venv.sh shared/pyproject.toml
	@bash tools/setup_venv.sh
	@touch $@

lock: $(SETUP_STAMP) ## locks/<stack>.txt from versions.env: every Python package each image installs, by sha256 (after any pin change)
	$(PY) tools/lock.py

# ---- data --------------------------------------------------------------------
data: $(SETUP_STAMP) ## build DATA_DIR from SRC (folder, tarball or URL; FORMAT=coco|voc|yolo|gt: those labels) or synthetic (PRESET=hard: SKU-110K-like); MAX_SIDE=1333 resizes the images once
	$(SHELFDET) data --data-dir $(DATA_DIR) $(if $(SRC),--src "$(SRC)") $(if $(FORMAT),--format $(FORMAT)) $(if $(BUCKET),--bucket $(BUCKET) --prefix $(PREFIX)) $(if $(MAX_SIDE),--max-side $(MAX_SIDE)) $(if $(PRESET),--preset $(PRESET))

$(DATA_DIR)/report.json:
	@$(MAKE) --no-print-directory data DATA_DIR=$(DATA_DIR)

upload: $(SETUP_STAMP) ## upload DATA_DIR to s3://BUCKET/PREFIX (resumable)
	$(SHELFDET) upload --data-dir $(DATA_DIR) $(AWS_FLAGS)

visualize: $(SETUP_STAMP) $(DATA_DIR)/report.json ## PNGs of N images of CHANNEL (PREDICTIONS=: TP/FP/FN at score >= SCORE)
	$(SHELFDET) visualize --data-dir $(DATA_DIR) --channel $(CHANNEL) -n $(N) $(if $(PREDICTIONS),--predictions $(PREDICTIONS)) $(if $(SCORE),--score-threshold $(SCORE))

# ---- training ----------------------------------------------------------------
train: $(SETUP_STAMP) ## train ALGO locally (no INSTANCE_TYPE) or on SageMaker
	$(SHELFDET) train $(if $(ALGO_GIVEN),--algo $(ALGO)) $(if $(DATA_DIR_GIVEN),--data-dir $(DATA_DIR)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(RUN_DIR),--run-dir $(RUN_DIR)) \
	  $(if $(INSTANCE_TYPE),--instance-type $(INSTANCE_TYPE) --instance-count $(INSTANCE_COUNT) $(if $(filter 1 true yes,$(SPOT)),--spot) $(if $(filter 1 true yes,$(WAIT)),--wait) $(if $(STACK),--stack $(STACK)) $(JOB_FLAGS) $(if $(KEEP_ALIVE),--keep-alive $(KEEP_ALIVE)) $(AWS_FLAGS)) \
	  $(if $(RECIPE)$(HP),-- $(if $(RECIPE),--recipe $(RECIPE)) $(HP))

tensorboard: $(SETUP_STAMP) ## TensorBoard on 127.0.0.1:TB_PORT over every local run (RUNS="a b": those), or JOB=<training job> from s3://BUCKET
	$(SHELFDET) tensorboard $(if $(RUNS),--runs $(RUNS)) $(if $(JOB),--job $(JOB) --region $(REGION) $(if $(BUCKET),--bucket $(BUCKET))) --port $(TB_PORT)

runs: $(SETUP_STAMP) ## table of local runs: algorithm, recipe, iterations, AP, AP50, count MAE, wall time, status, resume (REMOTE=1: SageMaker jobs too, with the bill)
	$(SHELFDET) runs $(if $(filter 1 true yes,$(REMOTE)),--remote --region $(REGION))

compare: $(SETUP_STAMP) ## RUNS="a b": their loss and validation curves on one PNG (runs/compare.png), and results.csv in each run
	$(if $(RUNS),,$(error make compare needs RUNS="<run> <run> ..."; make runs lists them))
	$(SHELFDET) compare $(RUNS)

weights: $(SETUP_STAMP) ## the model zoo's checkpoints of ALGO (several: ALGO="faster_rcnn retinanet") into s3://BUCKET/detectron2/weights/ for NETWORK_ISOLATION=1; prints PRETRAINED=
	$(SHELFDET) weights --algo $(ALGO) $(AWS_FLAGS) $(if $(RECIPE)$(HP),-- $(if $(RECIPE),--recipe $(RECIPE)) $(HP))

tune: $(SETUP_STAMP) ## SageMaker hyperparameter tuning job
	$(SHELFDET) tune --algo $(ALGO) --instance-type $(or $(INSTANCE_TYPE),ml.p3.2xlarge) --objective $(OBJECTIVE) --max-jobs $(MAX_JOBS) --max-parallel $(MAX_PARALLEL) \
	  $(if $(filter 0 false no,$(SPOT)),,--spot) $(if $(STACK),--stack $(STACK)) $(JOB_FLAGS) $(AWS_FLAGS) $(if $(RECIPE)$(HP),-- $(if $(RECIPE),--recipe $(RECIPE)) $(HP))

# ---- serving -----------------------------------------------------------------
serve: $(SETUP_STAMP) ## serve MODEL_DIR on 127.0.0.1:PORT, or HOST:PORT (the serving image's app)
	SHELFDET_INFER="$(INFER)" $(RUNTIME_ENV) $(SHELFDET) serve --model-dir "$(MODEL_DIR)" --host '$(SERVE_HOST)' --port $(PORT)

predict: $(SETUP_STAMP) ## predict IMAGE with MODEL_DIR or ENDPOINT (also a folder; RESIZE=1): predictions/<image file>.json + .png
	$(RUNTIME_ENV) $(SHELFDET) predict --image "$(IMAGE)" $(if $(ENDPOINT),--endpoint $(ENDPOINT) --region $(REGION),--model-dir "$(MODEL_DIR)") $(if $(INFER),--infer="$(INFER)") $(if $(SCORE),--score $(SCORE)) \
	  $(if $(filter 1 true yes,$(RESIZE)),--resize $(if $(TEST_SIZE),--test-size "$(TEST_SIZE)",$(if $(filter-out default file,$(origin MODEL_DIR)),--test-size "$(MODEL_DIR)")))

evaluate: $(SETUP_STAMP) ## score PREDICTIONS (dir), or MODEL_DIR run with INFER, against MANIFEST: COCO AP and count error
	$(RUNTIME_ENV) $(SHELFDET) evaluate $(if $(PREDICTIONS),--predictions "$(PREDICTIONS)",--model-dir "$(MODEL_DIR)" $(if $(INFER),--infer="$(INFER)")) --manifest "$(MANIFEST)" $(if $(COUNT_THRESHOLD),--count-threshold $(COUNT_THRESHOLD)) $(if $(EVAL_OUT),--out-dir $(EVAL_OUT))

export: $(SETUP_STAMP) ## MODEL_DIR as a graph serving runs without torch: MODEL_DIR/export/<FORMAT>/ (openvino | onnx | torchscript), checked on DATA_DIR/test
	$(SHELFDET) export --model-dir "$(MODEL_DIR)" --format $(or $(FORMAT),openvino) --photos "$(DATA_DIR)/test"

convert-model: $(SETUP_STAMP) ## rewrite an old MODEL_DIR's model_final.pth (a pickle) as model_final.safetensors; TRUST_PICKLE=1 says you trust it
	$(SHELFDET) convert-model "$(MODEL_DIR)" $(if $(filter 1 true yes,$(TRUST_PICKLE)),--trust-pickle)

deploy: $(SETUP_STAMP) ## SageMaker endpoint from MODEL (S3 URI or training job name); ASYNC=1 asynchronous, MIN_/MAX_INSTANCES autoscaling, SERVERLESS=1 serverless
	$(SHELFDET) deploy $(if $(MODEL),--model $(MODEL)) $(if $(ENDPOINT),--endpoint $(ENDPOINT)) $(if $(filter 1 true yes,$(SERVERLESS)),$(if $(INSTANCE_TYPE),--instance-type $(INSTANCE_TYPE)),--instance-type $(or $(INSTANCE_TYPE),ml.g4dn.xlarge)) $(if $(STACK),--stack $(STACK)) $(if $(INFER),--env "SHELFDET_INFER=$(INFER)") $(AWS_FLAGS) $(NET_FLAGS) \
	  $(if $(filter 1 true yes,$(ASYNC)),--async) $(if $(MIN_INSTANCES),--min-instances $(MIN_INSTANCES)) $(if $(MAX_INSTANCES),--max-instances $(MAX_INSTANCES)) $(if $(SNS_SUCCESS),--sns-success $(SNS_SUCCESS)) $(if $(SNS_ERROR),--sns-error $(SNS_ERROR)) \
	  $(if $(filter 1 true yes,$(SERVERLESS)),--serverless) $(if $(MEMORY),--memory $(MEMORY)) $(if $(MAX_CONCURRENCY),--max-concurrency $(MAX_CONCURRENCY))

undeploy: $(SETUP_STAMP) ## delete the endpoint, its config, model and scaling
	$(SHELFDET) undeploy $(if $(ENDPOINT),--endpoint $(ENDPOINT)) $(AWS_FLAGS)

transform: $(SETUP_STAMP) ## SageMaker batch transform over the test channel, then evaluate
	$(SHELFDET) transform $(if $(MODEL),--model $(MODEL)) --instance-type $(or $(INSTANCE_TYPE),ml.p3.2xlarge) $(if $(STACK),--stack $(STACK)) --manifest "$(MANIFEST)" $(if $(INFER),--env "SHELFDET_INFER=$(INFER)") $(AWS_FLAGS) $(NET_FLAGS)

# ---- images ------------------------------------------------------------------
build: $(if $(filter cpu-slim,$(STACK)),,build-training) build-serving ## all images for STACK (cpu-slim: its serving image)

build-base: ## the base image for STACK (after a preflight of everything its build fetches)
	bash tools/images.sh build base $(or $(STACK),cpu)

build-training: build-base ## training image for STACK
	bash tools/images.sh build training $(or $(STACK),cpu)

build-serving: $(if $(filter cpu-slim,$(STACK)),,build-base) ## serving image for STACK (STACK=cpu-slim: no torch, exported models only)
	bash tools/images.sh build serving $(or $(STACK),cpu)

tag: ## print the image tags for STACK
	bash tools/images.sh tags $(or $(STACK),cpu)

# No .venv needed: without boto3 the AWS rows say so and the rest still runs.
doctor: ## Docker, AWS (credentials, REGION, ECR, ROLE) and what the builds of STACK (default: every pushable stack) fetch, as a table
	@PYTHONPATH=shared $(if $(wildcard $(PY)),$(PY),python3) -m shelfdet.commands.doctor $(if $(STACK),--stack "$(STACK)") --region $(REGION) $(if $(ROLE),--role $(ROLE))

push-base: $(SETUP_STAMP) ## push the base image of STACK (default: the card's) to ECR in REGION; later builds take BASE_IMAGE=<its URI>
	$(SHELFDET) push base $(if $(STACK),--stack $(STACK)) --builder $(BUILDER) $(AWS_FLAGS)

push-training: $(SETUP_STAMP) ## push the training image of STACK (default: the card's) to ECR in REGION (BUILDER=codebuild: built on CodeBuild)
	$(SHELFDET) push training $(if $(STACK),--stack $(STACK)) --builder $(BUILDER) $(AWS_FLAGS)

push-serving: $(SETUP_STAMP) ## push the serving image of STACK (default: the card's) to ECR in REGION (BUILDER=codebuild: built on CodeBuild)
	$(SHELFDET) push serving $(if $(STACK),--stack $(STACK)) --builder $(BUILDER) $(AWS_FLAGS)

# ---- permissions (docs/aws.md) ------------------------------------------------
POLICY_FLAGS = --region $(REGION) $(if $(ACCOUNT),--account $(ACCOUNT)) $(if $(BUCKET),--bucket $(BUCKET)) $(if $(ROLE),--role $(ROLE)) \
  $(if $(CODEBUILD_ROLE),--codebuild-role $(CODEBUILD_ROLE)) $(if $(KMS_KEY),--kms-key '$(KMS_KEY)')

# stdout is the policy alone (`make policy ... > policy.json`): a first-time setup talks on stderr.
policy: ## print the day-to-day IAM policy (docs/iam-policy.json) for BUCKET, ROLE (and KMS_KEY) on stdout
	@$(MAKE) --no-print-directory $(SETUP_STAMP) >&2
	@$(SHELFDET) policy --template docs/iam-policy.json $(POLICY_FLAGS)

bootstrap-policy: ## print the IAM policy an administrator needs for make bootstrap (docs/iam-bootstrap.json)
	@$(MAKE) --no-print-directory $(SETUP_STAMP) >&2
	@$(SHELFDET) policy --template docs/iam-bootstrap.json $(POLICY_FLAGS)

bootstrap: $(SETUP_STAMP) ## once, by an administrator: the CodeBuild service role (zips in BUCKET) and endpoint scaling's service-linked role
	$(SHELFDET) bootstrap $(AWS_FLAGS)

# ---- quality -----------------------------------------------------------------
test: $(SETUP_STAMP) ## the whole test suite (in the cpu images when Docker runs, else .venv)
	bash tools/run_tests.sh $(PYTEST_ARGS)

# No .venv needed (standard library only).
targets-doc: ## docs/targets.md's table of every target and variable, from this Makefile (as make help lists them)
	@$(if $(wildcard $(PY)),$(PY),python3) tools/targets_doc.py

bench: $(SETUP_STAMP) ## benchmarks -> bench/results/*.json and a table (BENCH=name: one of bench/bench_<name>.py)
	$(PY) bench/run.py $(BENCH)

# No .venv needed (standard library only). Only what the project's own records name goes.
clean: ## remove what make data wrote in DATA_DIR (by its written.json) and the run folders in runs/; keeps runs/deployments and files the project did not write
	@PYTHONPATH=shared $(if $(wildcard $(PY)),$(PY),python3) -m shelfdet clean --data-dir "$(DATA_DIR)" --runs-dir runs
