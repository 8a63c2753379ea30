# The README's commands. Each target creates the virtual environment and
# installs what is missing first; a second call reinstalls nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo demo-heal lint test bench stack stop install services rules dashboards clean docker-engine image deploy

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "planflow needs Python 3.11 (found %d.%d); set PYTHON=python3.11" % v)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# grafana-client brings urllib3-future, whose wheel replaces urllib3 at every start;
	# built from source with URLLIB3_NO_OVERRIDE it leaves urllib3 alone.
	URLLIB3_NO_OVERRIDE=1 $(BIN)/pip install $(PIP_QUIET) --no-binary urllib3-future -c constraints.txt -e '.[test,workers]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -c 'import prefect, pulp, planflow'
	@touch $(STAMP)

install: $(STAMP)

# Prometheus, Alertmanager, the Pushgateway and PostgreSQL from Debian (only what is missing).
# Without root the monitoring parts are skipped with the command to run.
services:
	-@bash scripts/install-services.sh

demo: $(STAMP) services
	$(BIN)/planflow demo

# Self-healing on the embedded stack: a failover and a rescale (about 3 minutes).
demo-heal: $(STAMP) services
	$(BIN)/planflow demo heal

# Lint first (seconds): ruff's checks and format, and the one-way import contract.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Two pytest-xdist workers, each with its own Prefect server and services (tests/conftest.py
# keeps a folder's tests on one worker); TEST_WORKERS=1 runs them one after another.
TEST_WORKERS ?= 2
test: lint services
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

bench: $(STAMP) services
	$(BIN)/python -m bench

stack: $(STAMP) services
	$(BIN)/planflow stack up --profile fast

stop:
	@test -x $(BIN)/planflow && $(BIN)/planflow stack down || true

# Docker engine from Debian, started in the background (no systemd needed).
docker-engine:
	bash scripts/install-docker.sh

# The image of the Docker pool, built here without a registry (planflow:dev).
image: docker-engine
	bash scripts/build-image.sh

# Work pools with their job templates, then every deployment in deployments/prefect.yaml.
deploy: $(STAMP)
	$(BIN)/planflow workpools apply
	eval "$$($(BIN)/planflow env)" && $(BIN)/prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all

dashboards: $(STAMP)
	$(BIN)/planflow grafana check

rules: $(STAMP)
	$(BIN)/python -m planflow.monitoring.rules --check

clean: stop
	rm -rf $(VENV) .planflow .pytest_cache
