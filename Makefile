# The two commands of the README. Both install everything first (idempotent, fast the second time),
# into the active virtual environment or else the project's own .venv (created with $(PY)).
PY ?= python3

.PHONY: demo test setup
demo:
	PYTHON=$(PY) bash scripts/setup.sh -m memret.demo
test:
	PYTHON=$(PY) bash scripts/setup.sh -m pytest -q
setup:
	PYTHON=$(PY) bash scripts/setup.sh
