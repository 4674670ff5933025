# contentiqa — the two commands a new user needs: `make run` and `make test`.
# `make install` is the full development environment (PyTorch, training, tests); scoring and
# serving alone need no PyTorch: `pip install .` (see README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch/torchvision are pinned to the builds this project is developed and tested with;
# pip takes them from the local wheel cache when one exists.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast bench clean

install: $(STAMP)

# torch's wheels take about 6 GB unpacked (the CUDA build pip picks on x86_64): say so up front
# rather than let pip fail half-way with "No space left on device".
DISK_NOTE := import shutil; free = shutil.disk_usage('.').free / 2**30; \
	print(f'note: {free:.1f} GB free here; installing torch takes about 6 GB') if free < 7 else None

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c "$(DISK_NOTE)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(VENV)/bin/contentiqa score examples/images --output examples/scores.csv --sort --force

test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: install
	$(PY) -m pytest -q -x -m "not slow"

bench: install
	$(PY) benchmarks/floor.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
