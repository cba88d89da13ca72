# Two commands do everything: `make serve` and `make test`. Both create .venv and install on first use;
# afterwards the install step is skipped until pyproject.toml changes.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# llama.cpp's default native build crashes on CPUs that report AMX; a portable AVX2 build is safe and fast.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
export FORCE_CMAKE := 1

HOST  ?= 127.0.0.1
PORT  ?= 8080
MODEL ?= qwen2.5-coder-0.5b-instruct
PYTEST_ARGS ?=

.PHONY: install serve test lint fmt bench clean proto browser

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip wheel
	# torch first, by its exact pin, so that no dependency pulls a CUDA build
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/edgeinfer serve --host $(HOST) --port $(PORT) --model $(MODEL)

test: $(STAMP) browser
	$(BIN)/ruff check edgeinfer tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the dashboard's browser tests drive Debian's chromium through chromium-driver: installed when missing and we
# are root with apt-get; otherwise (or if the install fails) those tests skip and say why
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
	      || echo "chromium could not be installed: the dashboard's browser tests will skip"; \
	  else echo "no /usr/bin/chromium and not root: the dashboard's browser tests will skip"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check edgeinfer tests benchmarks
	$(BIN)/ruff format --check edgeinfer tests benchmarks

fmt: $(STAMP)
	$(BIN)/ruff check --fix edgeinfer tests
	$(BIN)/ruff format edgeinfer tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
