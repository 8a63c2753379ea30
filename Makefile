# The README's commands. Each target creates the virtual environment and
# installs what is missing first; a second call reinstalls nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo test bench stack stop install clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "planflow needs Python 3.11 (found %d.%d); set PYTHON=python3.11" % v)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) -c constraints.txt -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -c 'import prefect, pulp, planflow' 
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/planflow demo

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

stack: $(STAMP)
	$(BIN)/planflow server up

stop:
	@test -x $(BIN)/planflow && $(BIN)/planflow server down || true

clean: stop
	rm -rf $(VENV) .planflow .pytest_cache
