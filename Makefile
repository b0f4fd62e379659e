# Front door. `make help` lists the targets; every target runs `setup` first, so a fresh clone
# needs nothing else.
SHELL := /bin/bash
PY := .venv/bin/python
# Every target below is one subcommand of the project's console command (yolo-triton --help).
YT := .venv/bin/yolo-triton
WEIGHTS ?= yolov8n.pt
IMGSZ ?=
GRPC_PORT ?= 8001
HTTP_PORT ?= 8000
METRICS_PORT ?= 8002
HOST ?= 127.0.0.1
MODEL ?= yolov8n
REPO ?= model_repository
# HTTP=1: also serve HTTP, behind nginx with request limits (docs/security.md); gRPC only otherwise
HTTP ?=
export GRPC_PORT HTTP_PORT METRICS_PORT HOST HTTP

IMGSZ_ARG := $(if $(IMGSZ),--imgsz $(IMGSZ),)
# INT8 calibration images (default: the demo data set's train split for its classes, assets/samples otherwise)
CALIB_IMAGES ?=
# e.g. TRT_ARGS="--trt-precision int8 --calib-images DIR" (see yolo-triton build --help)
TRT_ARGS ?=

.PHONY: help setup build-engines serve demo test lint eval perf locust compare report bench-cpu bench-gpu clean

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

setup: ## create .venv with the pinned dependencies (quick when done)
	@bash build/setup.sh

build-engines: setup ## export WEIGHTS (default yolov8n.pt) to ONNX (+ TensorRT where present) into model_repository/
	@$(YT) build --weights $(WEIGHTS) --repo $(REPO) $(IMGSZ_ARG) $(if $(CALIB_IMAGES),--calib-images $(CALIB_IMAGES),) $(TRT_ARGS)

serve: setup ## run tritonserver in the foreground on HOST (127.0.0.1), GRPC_PORT/METRICS_PORT (HTTP=1: HTTP_PORT via nginx); Ctrl-C drains
	@$(YT) serve --repo $(REPO)

demo: setup ## the main job: build, serve, detect on assets/samples, per-stage times, annotated images in runs/demo
	@$(YT) build --weights $(WEIGHTS) --repo $(REPO) $(IMGSZ_ARG) $(if $(filter command line,$(origin WEIGHTS)),,--fallback)
	@$(YT) demo

test: setup ## run the test suite (starts real tritonservers on free ports)
	@$(PY) -m pytest -q -rs

lint: setup ## ruff
	@$(PY) -m ruff check .

eval: setup ## served vs Ultralytics mAP on a YOLO dataset (DATA=data.yaml, default the shapes val split)
	@$(YT) eval $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL),) $(if $(DATA),--data $(DATA),)

perf: setup ## perf_analyzer concurrency + request-rate sweeps per variant -> runs/perf/<timestamp>/
	@$(YT) perf $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL),) $(if $(CONCURRENCY),--concurrency $(CONCURRENCY),) $(if $(URL),--url $(URL),)

locust: setup ## Locust gRPC load test (USERS, SPAWN_RATE, DURATION) -> runs/locust/<timestamp>/
	@$(YT) locust $(if $(USERS),--users $(USERS),) $(if $(SPAWN_RATE),--spawn-rate $(SPAWN_RATE),) $(if $(DURATION),--duration $(DURATION),) $(if $(URL),--url $(URL),)

compare: setup ## YOLOv8n vs YOLOv5n stage by stage, plus every served variant -> runs/compare/<timestamp>/
	@$(YT) compare

report: setup ## one Markdown report with plots from the latest perf, locust and compare runs -> runs/report/
	@$(YT) report

bench-cpu: setup ## raw ONNX Runtime vs served ensemble vs Ultralytics predict, with ratios (WEIGHTS=, IMGSZ=: a fresh repository)
	@$(YT) bench-cpu $(if $(filter command line environment,$(origin WEIGHTS)),--weights $(WEIGHTS),) $(IMGSZ_ARG)

bench-gpu: setup ## GPU ensemble vs raw FP16 CUDA-graph network vs Ultralytics predict (on a GPU machine)
	@$(YT) bench-gpu

clean: ## remove generated artefacts (model files, configs, runs/), keep .venv
	@git clean -fdX model_repository runs >/dev/null; echo "clean: model_repository artefacts and runs/ removed"
