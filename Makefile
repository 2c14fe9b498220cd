# The two commands of the README. Both install everything first (idempotent, fast the second time).
PY ?= python3

.PHONY: demo test setup bench
demo: setup
	$(PY) -m memret.demo
test: setup
	$(PY) -m pytest -q
setup:
	PYTHON=$(PY) bash scripts/setup.sh
