# Every target installs what it needs on a fresh machine: a .venv from the pinned requirements,
# and the pinned CDK CLI from package-lock.json. Re-running is cheap (stamp files).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

# Keep synth quiet, fast and offline: no instance metadata lookups, no version or notice checks.
export AWS_EC2_METADATA_DISABLED := true
export CDK_DISABLE_VERSION_CHECK := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1

# Tests run side by side (pytest-xdist): most of them wait on real workers, not on the CPU. The
# quick ones are CPU-bound, where each extra pytest worker costs its own start (moto, CDK's node
# runtime) and 2 beat 3 or 4 on 2 cores.
TEST_WORKERS ?= 4
FAST_WORKERS ?= 2

.PHONY: help install image-engine test test-fast synth deploy destroy demo reliability bench clean

help:
	@echo "make demo         run the whole loop locally on moto server (no AWS account needed)"
	@echo "make test         run the test suite (installs everything it needs)"
	@echo "make test-fast    the tests without the long worker and fault scenarios (after make test)"
	@echo "make synth        synthesize the CloudFormation template into cdk.out/"
	@echo "make deploy       bootstrap (once per account/region) and deploy the stack to AWS"
	@echo "make destroy      delete the deployed stack"
	@echo "make reliability  run the fault scenarios and print lost/duplicated tasks"
	@echo "make bench        print the scaling simulator and worker cost figures"

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt batch_celery_container/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# checkov gets a venv of its own (its pins would fight ours); built beside the others (-j).
$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

# The image tests (tests/image/) build the worker images and run them as their job definitions do,
# with podman: installed here from Debian's packages (as root, where missing), with a stand-in for
# the images' base image, since no container registry can be reached (harness/image_engine.sh).
# No stamp: the script looks at what is installed and built, in 0.1 s once all is there.
image-engine:
	@harness/image_engine.sh prepare

$(NODE_STAMP): package.json package-lock.json
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null || \
		{ echo "make: Node.js 20 or newer is needed (the pinned CDK supports 22 and 24); found: $$(node --version 2>/dev/null || echo none)"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The installs run side by side: they wait on the package indexes and disk more than the CPU.
test:
	@$(MAKE) --no-print-directory -j4 $(PY_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP) image-engine
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# No install step: for a checkout where `make test` has run once.
test-fast:
	@test -f $(PY_STAMP) || { echo "make test-fast: nothing installed yet; run make test once (it installs everything)"; exit 1; }
	$(BIN)/python -m pytest -n $(FAST_WORKERS) --dist loadgroup -m "not slow" -q

synth: $(PY_STAMP) $(NODE_STAMP)
	npx cdk synth --no-notices --quiet
	@echo "template written to cdk.out/"

deploy: $(PY_STAMP) $(NODE_STAMP)
	npx cdk bootstrap --no-notices
	npx cdk deploy --no-notices

destroy: $(PY_STAMP) $(NODE_STAMP)
	npx cdk destroy --no-notices

demo: $(PY_STAMP)
	$(BIN)/python -m batch_celery_local $(DEMO_ARGS)

reliability: $(PY_STAMP)
	$(BIN)/python -m bench.reliability

bench: $(PY_STAMP)
	$(BIN)/python -m bench.scaling
	$(BIN)/python -m bench.worker

clean:
	rm -rf cdk.out .pytest_cache $(CHECKOV_VENV)
