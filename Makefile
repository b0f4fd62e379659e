# Front door. `make help` lists the targets; every target runs `setup` first, so a fresh clone
# needs nothing else.
SHELL := /bin/bash
PY := .venv/bin/python
# Every target below is one subcommand of the project's console command (yolo-triton --help).
YT := .venv/bin/yolo-triton
# Variables: `make help` lists each one whose line carries a `## ` comment.
WEIGHTS ?= yolov8n.pt## checkpoint for build-engines/demo (.pt or .yaml); bench-cpu: build a fresh repository from it
IMGSZ ?=## input size of the export (default: the checkpoint's)
GRPC_PORT ?= 8001## serve: gRPC port
HTTP_PORT ?= 8000## serve: HTTP port (nginx), with HTTP=1
METRICS_PORT ?= 8002## serve: Prometheus metrics port
HOST ?= 127.0.0.1## serve: address to listen on
MODEL ?= yolov8n## perf/eval: served ensemble(s) to measure
REPO ?= model_repository## model repository folder
HTTP ?=## HTTP=1: serve also HTTP, behind nginx with request limits (docs/security.md)
URL ?=## HOST:PORT (gRPC) of a running server for perf, locust, compare, eval (bench-cpu: always its own server, and it says why)
VARIANTS ?=## serve: comma-separated variant keys to load (default: every one this machine can)
DATA ?=## eval: YOLO data YAML (default: the shapes val split)
CONCURRENCY ?=## perf: concurrency levels, e.g. 1,2,4
USERS ?=## locust: simulated users
SPAWN_RATE ?=## locust: users started per second
DURATION ?=## locust: run time, e.g. 60s
# e.g. TRT_ARGS="--trt-precision int8 --calib-images DIR" (see yolo-triton build --help)
TRT_ARGS ?=## extra options of build-engines for TensorRT
CALIB_IMAGES ?=## build-engines: INT8 calibration images (default: the demo train split for its classes, else assets/samples)
export GRPC_PORT HTTP_PORT METRICS_PORT HOST HTTP

IMGSZ_ARG := $(if $(IMGSZ),--imgsz $(IMGSZ),)
# One pattern for every measurement target: a running server when URL= is given.
URL_ARG := $(if $(URL),--url $(URL),)

.PHONY: help setup build-engines serve demo test lint eval perf locust compare report bench-cpu bench-gpu scale clean

help: ## list targets and variables
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16
	@echo; echo "variables (make TARGET VAR=value):"
	@grep -hE '^[A-Z_]+ \?=.*## ' $(MAKEFILE_LIST) | sed -E 's/^([A-Z_]+) \?= ?([^#]*)## (.*)/\1\t\3 [\2]/; s/ \[\]$$//' | expand -t 16

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
	@$(YT) eval $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL),) $(if $(DATA),--data $(DATA),) $(URL_ARG)

perf: setup ## perf_analyzer concurrency + request-rate sweeps per variant -> runs/perf/<timestamp>/
	@$(YT) perf $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL),) $(if $(CONCURRENCY),--concurrency $(CONCURRENCY),) $(URL_ARG)

locust: setup ## Locust gRPC load test (USERS, SPAWN_RATE, DURATION) -> runs/locust/<timestamp>/
	@$(YT) locust $(if $(USERS),--users $(USERS),) $(if $(SPAWN_RATE),--spawn-rate $(SPAWN_RATE),) $(if $(DURATION),--duration $(DURATION),) $(URL_ARG)

compare: setup ## YOLOv8n vs YOLOv5n stage by stage, plus every variant served (URL= or its own) -> runs/compare/<timestamp>/
	@$(YT) compare $(URL_ARG)

report: setup ## one Markdown report with plots from the latest perf, locust and compare runs -> runs/report/
	@$(YT) report

bench-cpu: setup ## raw ONNX Runtime vs served vs Ultralytics, on the same cores: always its own server (it says so to URL=)
	@$(YT) bench-cpu $(if $(filter command line environment,$(origin WEIGHTS)),--weights $(WEIGHTS),) $(IMGSZ_ARG) $(URL_ARG)

bench-gpu: setup ## GPU ensemble vs raw FP16 CUDA-graph network vs Ultralytics predict (on a GPU machine)
	@$(YT) bench-gpu

scale: setup ## REPLICAS (3) tritonservers behind nginx, one killed and restarted under DURATION (60) s of Locust; Prometheus vs Triton queue time
	@test -f $(REPO)/artefact.json || $(YT) build --weights $(WEIGHTS) --repo $(REPO) $(IMGSZ_ARG) $(if $(filter command line,$(origin WEIGHTS)),,--fallback)
	@$(YT) scale --repo $(REPO) $(if $(REPLICAS),--replicas $(REPLICAS),) $(if $(DURATION),--duration $(DURATION),)

clean: ## remove generated artefacts (model files, configs, runs/), keep .venv
	@git clean -fdX model_repository runs >/dev/null; echo "clean: model_repository artefacts and runs/ removed"
