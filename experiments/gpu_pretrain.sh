#!/usr/bin/env bash
# DINO with ResNet-18 (CIFAR stem) on CIFAR-10 on one GPU, in under 8 minutes: images/s and the k-NN
# top-1 per epoch (monitor: 10,000-image bank, 2,000 test images; k = 20, T = 0.07), then the full
# k-NN (50,000 bank -> 10,000 test) against the same network at random init.
#
#   bash experiments/gpu_pretrain.sh            # on the device machine, from the repository root
#
# Anchor (REFERENCES.md 6.3): lightly's CIFAR-10 benchmark, DINO ResNet-18, batch 128, 200 epochs:
# 84.0% k-NN (k = 200) in ~120 min, i.e. ~36 s/epoch; from its 800-epoch plot ~35-45% after 10 epochs.
# memret matches the recipe's batch (128) and head (2048-d hidden, 256 bottleneck, 2048 outputs, BN),
# makes the views on the GPU (no DataLoader workers) and trains in bfloat16 autocast, channels-last.
# EPOCHS (default 8) x ~40 s must fit the 8 minutes with the evaluations; the timeout guards it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then PY=python; [[ -x .venv/bin/python ]] && PY=.venv/bin/python; fi
ROOT=${CIFAR_ROOT:-}
for cand in "$ROOT" shared/data/cifar10 ../shared/data/cifar10 data/cifar10; do
  if [[ -n "$cand" && -f "$cand/train.npz" ]]; then ROOT=$cand; break; fi
done
[[ -f "$ROOT/train.npz" ]] || { echo "no CIFAR-10 (train.npz/test.npz): set CIFAR_ROOT" >&2; exit 2; }
"$PY" -c "import torch, faiss, timm, memret; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
OUT=${OUT:-${OUT_DIR:-runs/gpu_pretrain}}
EPOCHS=${EPOCHS:-8}
mkdir -p "$OUT"
rm -rf "$OUT/dino_resnet18"   # a fresh run (train_state.pt would resume)
timeout 450 "$PY" -m memret.pretrain --objective dino --encoder resnet18_cifar --data cifar10 --root "$ROOT" \
  --device cuda --epochs "$EPOCHS" --batch-size 128 --lr 5e-4 --warmup-frac 0.1 --local-crops 6 --local-size 16 \
  --channels-last --set out_dim=2048 --set hidden=2048 --set bottleneck=256 --set batch_norm_head=True \
  --set momentum_teacher=0.996 --knn-every 1 --knn-bank 10000 --knn-test 2000 --compare-random-init \
  --out "$OUT/dino_resnet18" --no-progress 2>&1 | grep -v Warning | tee "$OUT/dino_resnet18.log" | tail -40
"$PY" - "$OUT/dino_resnet18/result.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"images/s (training, all views): {r['images_per_second']:.0f}   epochs {r['epochs']}   train s {r['seconds_train']}")
for e, a in r["knn_history"]:
    print(f"epoch {e:5.2f}  k-NN top-1 (monitor) {100 * a:5.1f}%")
print(f"full k-NN: trained {100 * r['knn_top1']:.1f}%  random init {100 * r['knn_top1_random_init']:.1f}%")
PYEOF
