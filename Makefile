# pacsflow: `make demo` and `make test` install what they need on first use (Debian packages, a .venv).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := orthanc dcmtk postgresql dicom3tools e2fsprogs unzip

.PHONY: demo test lint bench system venv bytecode clean

demo: system $(STAMP) bytecode
	$(VENV)/bin/pacsflow demo

test: system $(STAMP) bytecode
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# every benchmark, one process each; e.g. `make bench BENCH_ARGS=--quick` to see that they all run
bench: system $(STAMP) bytecode
	$(PY) bench/run_all.py $(BENCH_ARGS)

# pacsflow's own modules compiled, as pip compiles an installed package's: an editable install is not, and
# where PYTHONDONTWRITEBYTECODE is set every command would compile them anew (0.3 s at each start)
bytecode: $(STAMP)
	@$(PY) -m compileall -q src/pacsflow

# Debian packages, installed only when a binary is missing (fast when already set up).
system:
	@if [ ! -x /usr/sbin/Orthanc ] || ! command -v storescu >/dev/null || ! command -v dciodvfy >/dev/null || ! command -v chattr >/dev/null || ! command -v unzip >/dev/null || ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3 python3-venv; }
	@[ -x $(PY) ] || python3 -m venv $(VENV) || { $(SUDO) apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

clean:
	rm -rf .pacsflow/demo
