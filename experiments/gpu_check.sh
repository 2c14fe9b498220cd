#!/usr/bin/env bash
# memret's GPU paths, one short prepared run (< 5 minutes on one GPU): FAISS on the GPU against the CPU oracle
# (sharded over all GPUs present), the text encoder's bf16 autocast path, and one NCCL data-parallel step.
#   bash experiments/gpu_check.sh            # installs memret with faiss-gpu into .venv first (MEMRET_GPU=1)
# Prints one JSON line per part; exits non-zero if any part fails. Results are recorded in experiments/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
MEMRET_GPU=1 bash scripts/setup.sh || exit 1
PY=.venv/bin/python
[ -n "${VIRTUAL_ENV:-}" ] && PY=python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
ngpu=$($PY -c 'import torch; print(torch.cuda.device_count())')
fail=0
timeout 180 $PY experiments/gpu_check.py faiss   || fail=1
timeout 120 $PY experiments/gpu_check.py encoder || fail=1
timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node "${ngpu:-1}" experiments/gpu_check.py nccl || fail=1
exit $fail
