#!/usr/bin/env bash
# Self-supervised pre-training on CIFAR-10 on this 2-core machine (issue 9, acceptance section 4).
#
#   bash experiments/pretrain_cifar10.sh [dino|msn|loca|swav|cl|all]
#
# DINO: resnet32_cifar (the registry's cheapest CIFAR encoder: 0.47M parameters, ~150 training img/s at 32 px
# on 2 free cores against ~120 for ViT-tiny at patch 8 and ~27 at patch 4; batch norm and convolutions also
# learn faster than a ViT in the few hundred steps a CPU affords). Budget DINO_MINUTES (default 15; the issue
# allows up to 30) of training; the full k-NN evaluation of the trained and the random-init encoder (2 x 60,000
# images) adds ~5-10 minutes on a shared machine, and the long lock must not be held > 35 minutes. MSN and LOCA need patch tokens: vit_tiny_cifar at patch 8 (16 tokens). SwAV: resnet32_cifar.
# Every run prints one JSON line (knn_top1 vs knn_top1_random_init, same run) and writes runs/pretrain/<name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${CIFAR_ROOT:-../shared/data/cifar10}
OUT=${OUT:-runs/pretrain}
what=${1:-all}
common=(--data cifar10 --root "$ROOT" --threads 2 --compare-random-init --knn-bank 10000 --knn-test 2000 --no-progress)

if [[ $what == dino || $what == all ]]; then
  flock /tmp/memret-long.lock nice -n 5 "$PY" -m memret.pretrain --objective dino --encoder resnet32_cifar \
    --minutes ${DINO_MINUTES:-15} --batch-size 64 --lr 1e-3 --local-crops 4 --local-size 16 --channels-last \
    --set out_dim=2048 --set hidden=512 --set bottleneck=64 --set batch_norm_head=True --set momentum_teacher=0.99 \
    --out "$OUT/dino_resnet32_${DINO_MINUTES:-15}min" "${common[@]}" | tail -1
fi
if [[ $what == msn || $what == all ]]; then
  flock /tmp/memret-long.lock nice -n 5 "$PY" -m memret.pretrain --objective msn --encoder vit_tiny_cifar \
    --encoder-kw '{"patch_size": 8}' --minutes 10 --batch-size 64 --lr 1e-3 --local-crops 2 --local-size 16 \
    --set hidden=512 --set n_prototypes=256 --set momentum_target=0.99 --set mask_ratio=0.3 \
    --out "$OUT/msn_vit_tiny_p8_10min" "${common[@]}" | tail -1
fi
if [[ $what == loca || $what == all ]]; then
  flock /tmp/memret-long.lock nice -n 5 "$PY" -m memret.pretrain --objective loca --encoder vit_tiny_cifar \
    --encoder-kw '{"patch_size": 8}' --minutes 10 --batch-size 64 --lr 1e-3 --local-crops 2 --local-size 16 \
    --set out_dim=1024 --set momentum_teacher=0.99 \
    --out "$OUT/loca_vit_tiny_p8_10min" "${common[@]}" | tail -1
fi
if [[ $what == swav || $what == all ]]; then
  flock /tmp/memret-long.lock nice -n 5 "$PY" -m memret.pretrain --objective swav --encoder resnet32_cifar \
    --minutes 10 --batch-size 64 --lr 1e-3 --local-crops 4 --local-size 16 --channels-last \
    --set n_prototypes=256 \
    --out "$OUT/swav_resnet32_10min" "${common[@]}" | tail -1
fi
if [[ $what == cl ]]; then
  # class-incremental run on the DINO checkpoint (Split CIFAR-10, 5 tasks, memory 2,000), beside the
  # label-free k-means patch encoder of experiments/RESULTS.md
  flock /tmp/memret-long.lock nice -n 5 "$PY" -m memret.incremental --dataset cifar10 --root "$ROOT" --tasks 5 \
    --encoder resnet32_cifar --checkpoint "$OUT/dino_resnet32_${DINO_MINUTES:-15}min/checkpoint.pt" --memory 2000 \
    --method replay icarl knn mtn --out "$OUT/cl_dino_resnet32" | tail -1
fi
