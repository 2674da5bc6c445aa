# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: env setup-check demo test test-quick lint format clean

env:
	@bash tools/misc/setup_env.sh

# The cold path of the mmcv build (download, patch, metadata; no compile), which a cached wheel
# would otherwise hide. CI runs it every time.
setup-check: env
	@bash tools/misc/build_mmcv_wheel.sh --check $(PY)

demo: env
	$(PY) tools/misc/demo.py $(DEMO_ARGS)

lint: env
	$(PY) -m flake8 mmdccnext tools tests configs setup.py conftest.py
	$(PY) -m isort --check-only --diff mmdccnext tools tests setup.py conftest.py

# pytest's testpaths (setup.cfg): tests/, and every code block of README.md and docs/en.
test: env lint
	@bash tools/misc/install_slurm.sh
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop while developing: lint, then every test not marked `slow` (setup.cfg: training
# runs, launchers, packaging, the HTTP server, SIGKILL/resume). `make test` (CI) runs them all.
test-quick: env lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

format: env
	$(PY) -m isort mmdccnext tools tests setup.py conftest.py
	$(PY) -m yapf -i -r mmdccnext tools tests configs setup.py conftest.py

clean:
	rm -rf build *.egg-info mmdccnext/_ext*.so
