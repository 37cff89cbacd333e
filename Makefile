# Every set-up step lives here so that a fresh machine (and CI) needs only `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
GEN_DIR   := shared/_gen
PYTEST_ARGS ?=
# grpc's C core logs transport events (GOAWAYs at shutdown) at INFO by default.
export GRPC_VERBOSITY ?= ERROR

.PHONY: system-deps help venv proto proto-check test test-unit test-integration test-e2e lint typecheck check demo serve clean stop-latency model-stop-latency deploy-check node-deps buf-lint buf-breaking interop conformance conformance-self bench bench-quick

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project with its dev extras

proto: $(STAMP)  ## regenerate shared/_gen from proto/ (never edit the output by hand)
	rm -rf $(GEN_DIR)
	$(PY) scripts/gen_proto.py $(GEN_DIR)

proto-check: $(STAMP)  ## fail when the committed generated code is stale
	$(PY) scripts/check_generated.py

test: $(STAMP)  ## run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: $(STAMP)
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check shared commander dispatcher dispatcherctl conformance gateway tests scripts

typecheck: $(STAMP)  ## mypy --strict on our packages
	$(BIN)/mypy

check: proto-check lint typecheck deploy-check test buf-lint buf-breaking conformance-self  ## what CI runs

deploy-check: $(STAMP)  ## promtool check rules on deploy/prometheus, the Grafana dashboards parsed (CI needs promtool)
	$(PY) scripts/check_deploy.py

demo: $(STAMP)  ## a dispatcher and two commander sessions (one finishes, one is stopped mid-answer)
	$(PY) scripts/demo.py

stop-latency: $(STAMP)  ## operator stops via the control API: stop->confirm p50/p99 (real processes)
	$(PY) -m scripts.stop_latency $(STOP_LATENCY_ARGS)

model-stop-latency: $(STAMP)  ## a stop aborting a model request: stop->abort p50/p99 (real processes, local test server)
	$(PY) -m scripts.model_stop_latency $(MODEL_STOP_LATENCY_ARGS)

BENCH_ARGS ?=

bench: $(STAMP)  ## dispatcher vs a bare grpc.aio server, real processes (~20 min): bench/results/latest.md
	$(PY) -m scripts.bench $(BENCH_ARGS)

bench-quick: $(STAMP)  ## the same benchmark with small sizes, about three minutes: bench/results/latest-quick.md
	$(PY) -m scripts.bench --quick $(BENCH_ARGS)

CHAOS_ARGS ?=

.PHONY: chaos
chaos: $(STAMP)  ## the fault-injection suite: resets, blackholes, kill -9, bystanders (~1 min; CHAOS_ARGS='--full' for the issue's sizes)
	$(PY) -m scripts.chaos.run $(CHAOS_ARGS)

serve: $(STAMP)  ## run a dispatcher on 127.0.0.1:50051
	$(BIN)/dispatcher serve --listen 127.0.0.1:50051

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# -- contract CI: buf and the Node.js interop client (docs/contract-ci.md) ------------------------
NODE_DIR   := interop/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
BUF        := $(NODE_DIR)/node_modules/.bin/buf

# npm ci deletes node_modules first, so the stamp inside it also goes when the deps go.
# --ignore-scripts: nothing we use needs an install script (npm 11 blocks them anyway).
$(NODE_STAMP): $(NODE_DIR)/package-lock.json $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $(NODE_STAMP)

# Debian packages the tests drive, installed only when missing (CI runs as root on a fresh machine):
# chromium for the gateway console's browser test (Playwright cannot download a browser here),
# promtool (package prometheus) for deploy-check, redis-server for the replica tests (started by
# the tests themselves on a free port; its service is not needed).
APT_INSTALL = env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

system-deps:  ## apt-get install the Debian packages the tests need (chromium, prometheus, redis-server) when missing
	@as_root=""; [ "$$(id -u)" -eq 0 ] || as_root="sudo"; updated=""; \
	for tool in chromium:chromium promtool:prometheus redis-server:redis-server; do \
		command -v $${tool%%:*} >/dev/null && continue; \
		[ -n "$$updated" ] || { $$as_root apt-get update -qq && updated=1; }; \
		if [ $${tool##*:} = prometheus ]; then extra=--no-install-recommends; else extra=""; fi; \
		$$as_root $(APT_INSTALL) $$extra $${tool##*:}; \
	done

node-deps: $(NODE_STAMP)  ## npm ci in interop/node (buf, @grpc/grpc-js); reruns when the lockfile changes

# `make test` installs the Node deps when npm is there; without npm the interop test skips (fails in CI).
NODE_DEPS_IF_NPM := $(if $(shell command -v npm 2>/dev/null),$(NODE_STAMP))
test test-e2e: $(NODE_DEPS_IF_NPM)

buf-lint: $(NODE_STAMP)  ## buf lint (STANDARD, see buf.yaml) and buf format check of proto/
	$(BUF) lint
	$(BUF) format -d --exit-code

buf-breaking: $(NODE_STAMP)  ## proto/ vs the original contract and every committed state of proto/
	bash scripts/check_breaking.sh

interop: $(STAMP) $(NODE_STAMP)  ## the Node.js client against a `dispatcher serve` subprocess
	$(PY) -m pytest tests/e2e/test_node_interop.py $(PYTEST_ARGS)

# -- the conformance kit (docs/contract.md) -----------------------------------------------------
TARGET ?=
CONFORMANCE_ARGS ?=

conformance: $(STAMP)  ## grade any server: make conformance TARGET=HOST:PORT [CONFORMANCE_ARGS='--junit-xml out.xml']
	@test -n "$(TARGET)" || { echo "usage: make conformance TARGET=HOST:PORT [CONFORMANCE_ARGS='...']" >&2; exit 2; }
	$(PY) -m conformance --target $(TARGET) $(CONFORMANCE_ARGS)

conformance-self: $(STAMP)  ## the kit against a `dispatcher serve` subprocess (JUnit: build/conformance.xml)
	$(PY) scripts/conformance_self.py $(CONFORMANCE_ARGS)
