# Pagewire: `make run` starts the suite, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto' | sort)
STUBS := pagewire/proto/.generated

.PHONY: install protos run test lint clean

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

test: install
	$(BIN)/ruff check pagewire services tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check pagewire services tests
	$(BIN)/ruff format --check pagewire services tests

clean:
	rm -rf $(VENV) pagewire/proto/pagewire $(STUBS)
