# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test check bench clean-outputs

run: $(STAMP)  ## the default sweep (+experiment=quickstart) on the synthetic benchmark
	$(PYTHON) run_sweep.py +experiment=quickstart

test: $(STAMP)  ## the test suite
	$(PYTHON) -m pytest -q

check: $(STAMP)  ## lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)  ## harness overhead benchmark (figures quoted in README)
	$(PYTHON) bench/harness_overhead.py

clean-outputs:  ## remove every sweep's records (outputs/)
	rm -rf outputs

# The venv is (re)built when it is missing or the pins changed. pip, not uv: pip takes the
# pinned torch/torchvision from this machine's local wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)
