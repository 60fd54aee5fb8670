# make demo | make test | make bench -- each builds .venv itself.
# BACKEND: auto (Metal on macOS arm64, CPU elsewhere), cpu, cuda12 or cuda13.
# OUT: where demo and bench write their reports; out/ is git-ignored, so runs leave the
# committed reports/ untouched (`make bench OUT=reports` refreshes those on purpose).
PYTHON ?= python3
BACKEND ?= auto
OUT ?= out
VENV := .venv
BIN := $(VENV)/bin
UNAME_S := $(shell uname -s)

ifeq ($(BACKEND),auto)
  ifeq ($(UNAME_S),Darwin)
    MLX_EXTRA :=
  else
    MLX_EXTRA := cpu
  endif
else
  MLX_EXTRA := $(BACKEND)
endif
comma := ,
EXTRAS = $(subst $(eval) ,$(comma),$(strip $(MLX_EXTRA) $(1)))

.PHONY: demo test bench blas browser clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(call EXTRAS,$*)]"
	touch $@

# On Linux, MLX's CPU wheel links reference BLAS; install OpenBLAS where we may (root + apt).
blas:
ifeq ($(UNAME_S),Linux)
	@ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing Debian's libopenblas0-pthread for MLX's CPU backend"; \
	      (apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 || \
	       (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread)) >/dev/null 2>&1 || \
	       echo "could not install OpenBLAS: MLX keeps its slow reference BLAS"; \
	    else echo "note: install libopenblas0-pthread (Debian/Ubuntu) for a fast CPU backend"; fi; }
endif

# The gallery test opens compare's HTML page in a headless Chromium: Debian's where we may.
browser:
ifeq ($(UNAME_S),Linux)
	@command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing Debian's chromium-headless-shell for the gallery test"; \
	      (apt-get install -y -qq chromium-headless-shell >/dev/null 2>&1 || \
	       (apt-get update -qq && apt-get install -y -qq chromium-headless-shell)) >/dev/null 2>&1 || \
	       echo "could not install chromium-headless-shell: the gallery test needs a headless Chromium"; \
	    else echo "note: install chromium-headless-shell for the gallery test"; fi; }
endif

demo: $(VENV)/.installed-plot blas
	mkdir -p $(OUT)
	$(BIN)/mlx-imgen profile --json $(OUT)/profile.json --markdown $(OUT)/profile.md

test: $(VENV)/.installed-dev blas browser
	$(BIN)/python -m mlx_imgen.blas $(BIN)/python -m pytest

bench: $(VENV)/.installed-dev blas
	mkdir -p $(OUT)
	$(BIN)/python -m mlx_imgen.blas $(BIN)/python benchmarks/bench.py --out $(OUT)

clean:
	rm -rf $(VENV) .pytest_cache
