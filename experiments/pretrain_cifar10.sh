#!/usr/bin/env bash
# Self-supervised pre-training on CIFAR-10 on this 2-core machine (issue 9, acceptance section 4).
#
#   cpu2 bash experiments/pretrain_cifar10.sh acceptance   # trial, then dino (both cores)
#   cpu1 bash experiments/pretrain_cifar10.sh msn            # (and loca, swav: one core each, two at a time)
#   bash experiments/pretrain_cifar10.sh trial|dino|msn|loca|swav|cl|all
#
# Stages (each prints its run's JSON line; runs land in $OUT/<name>/ with result.json, knn.png, checkpoint.pt):
# - trial: two 3-minute DINO runs side by side (one core, one thread each): the CIFAR ResNet at depth 8 and 20,
#   same recipe, scored on a VALIDATION split (10,000-image bank, 2,000 held-out training images; the test split
#   is not read). The depth with the larger k-NN gain over its own initialisation is written to $OUT/depth and
#   used by dino and swav. (The time budget turns into a step count up front, so a 3-minute run is a miniature
#   of the long one: full warm-up and cosine schedules.)
# - dino: the acceptance run: DINO for DINO_MINUTES (default 30, the issue's limit) of training on both
#   cores, then k-NN (k = 20, T = 0.07) on the full test split with the full train split as bank, for the
#   trained encoder and for the same encoder at its initial weights (--compare-random-init), same process.
#   Recipe: 2 global 32-px crops at 0.14-1 of the area, no local crops (DINO's advice when multi-crop is off;
#   lightly's CIFAR-10 benchmark runs DINO without local crops), head 2048 / hidden 512 / bottleneck 64 with
#   batch norm (lightly's CIFAR head), teacher momentum 0.99 -> 1 (a short run), teacher temperature 0.04,
#   batch 128, AdamW lr 3e-3 per 256 images, weight decay 0.05, warm-up 10 %.
# - msn, loca: 10 minutes each on vit_tiny_cifar at patch 8 (they need patch tokens), run side by side on one
#   core each; k-NN on the monitor subsets (10,000 train bank, 2,000 test images), trained vs initial weights.
# - swav: 10 minutes on the DINO encoder (one core); k-NN as msn/loca.
# - cl: class-incremental Split CIFAR-10 on the DINO checkpoint.
# Every run measures its own random-init figure in the same process.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[[ -d $here/memret ]] && cd "$here"   # (a copy of this script run from elsewhere works in the caller's directory)
PY=${PY:-.venv/bin/python}
ROOT=${CIFAR_ROOT:-../shared/data/cifar10}
OUT=${OUT:-runs/pretrain}
DEADLINE=${DEADLINE:-}               # unix seconds: stages that cannot end before it are skipped
what=${1:-all}
mkdir -p "$OUT"
common=(--data cifar10 --root "$ROOT" --no-progress)
dino_recipe=(--objective dino --encoder resnet32_cifar --batch-size 128 --lr 3e-3 --weight-decay 0.05 0.05
  --warmup-frac 0.1 --local-crops 0 --global-scale 0.14 1.0 --channels-last
  --set out_dim=2048 --set hidden=512 --set bottleneck=64 --set batch_norm_head=True --set momentum_teacher=0.99
  --set teacher_temp=0.04 --set warmup_teacher_temp=0.04)
vit=(--encoder vit_tiny_cifar --encoder-kw '{"patch_size": 8}' --batch-size 64 --lr 1e-3 --local-crops 2
  --local-size 16)
monitor_eval=(--compare-random-init --knn-every 0 --knn-bank 10000 --knn-test 2000 --final-eval monitor)

# one core, one thread (inside a cpu2 allocation: the two cores are ours; elsewhere cpu1 does the pinning)
one_core() { local core=$1; shift; OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MEMRET_THREADS=1 taskset -c "$core" "$@"; }
fits() {  # fits MINUTES: true when a stage of MINUTES (plus evaluation) ends before $DEADLINE
  [[ -z $DEADLINE ]] || (( $(date +%s) + ${1%.*} * 60 + 150 < DEADLINE ))
}
depth() { cat "$OUT/depth" 2>/dev/null || echo "${DEPTH:-20}"; }
log() { echo "[pretrain_cifar10 $(date -u +%T)] $*" >&2; }

if [[ $what == trial || ( $what =~ ^(all|acceptance)$ && ! -f $OUT/depth ) ]] && fits 36; then
  pids=()
  for i in 0 1; do
    d=$([[ $i == 0 ]] && echo 8 || echo 20)
    rm -rf "$OUT/trial_dino_rn$d"
    one_core $i "$PY" -m memret.pretrain "${dino_recipe[@]}" --encoder-kw "{\"depth\": $d}" --minutes 3 --threads 1 \
      --monitor-split val --knn-bank 10000 --knn-test 2000 --knn-every 0 --final-eval monitor "${common[@]}" \
      --out "$OUT/trial_dino_rn$d" > "$OUT/trial_dino_rn$d.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
gains = {}
for d in (8, 20):
    p = out / f"trial_dino_rn{d}" / "result.json"
    if p.is_file():
        r = json.loads(p.read_text())
        gains[d] = r["knn_top1"] - r["knn_top1_random_init"]
        print(f"trial depth {d}: val k-NN {r['knn_top1_random_init']:.4f} -> {r['knn_top1']:.4f} "
              f"(gain {gains[d]:+.4f}), {r['epochs']} epochs, {r['images_per_second']} img/s", file=sys.stderr)
best = max(gains, key=gains.get) if gains else 20
(out / "depth").write_text(str(best))
print(json.dumps({"trial_gains": gains, "depth": best}))
EOF
fi

if [[ $what =~ ^(dino|all|acceptance)$ ]]; then
  m=${DINO_MINUTES:-30}; d=$(depth)
  if [[ -n $DEADLINE ]]; then  # leave ~6 minutes for the probe, the monitors and the final evaluation
    left=$(( (DEADLINE - $(date +%s)) / 60 - 6 )); (( left < m )) && m=$left
  fi
  log "dino: depth $d, $m minutes"
  "$PY" -m memret.pretrain "${dino_recipe[@]}" --encoder-kw "{\"depth\": $d}" --minutes "$m" --threads 2 \
    --compare-random-init --knn-every 1 --knn-bank 10000 --knn-test 2000 "${common[@]}" \
    --out "$OUT/dino_rn${d}_${m}min" 2> "$OUT/dino_rn${d}_${m}min.log" | tail -1
fi

if [[ $what == all || $what == msn || $what == loca ]]; then
  pids=(); core=0
  for obj in msn loca; do
    pin=""; [[ $what == all ]] && pin="one_core $core"   # both at once on our two cores; alone, cpu1 pins
    [[ $what == all || $what == "$obj" ]] || continue
    if ! fits 10; then log "$obj skipped: would end after the deadline"; continue; fi
    if [[ $obj == msn ]]; then
      extra=(--set hidden=512 --set n_prototypes=256 --set momentum_target=0.99 --set mask_ratio=0.3)
    else
      extra=(--set out_dim=1024 --set momentum_teacher=0.99)
    fi
    rm -rf "$OUT/${obj}_vit_tiny_p8_10min"
    $pin "$PY" -m memret.pretrain --objective $obj "${vit[@]}" "${extra[@]}" --minutes 10 --threads 1 \
      "${monitor_eval[@]}" "${common[@]}" --out "$OUT/${obj}_vit_tiny_p8_10min" \
      2> "$OUT/${obj}_vit_tiny_p8_10min.log" | tail -1 &
    pids+=($!); core=$((1 - core))
  done
  (( ${#pids[@]} )) && wait "${pids[@]}" || true
fi

if [[ $what == swav || $what == all ]]; then
  d=$(depth)
  if fits 10; then
    rm -rf "$OUT/swav_rn${d}_10min"
    "$PY" -m memret.pretrain --objective swav --encoder resnet32_cifar --encoder-kw "{\"depth\": $d}" --minutes 10 \
      --threads 1 --batch-size 128 --lr 3e-3 --weight-decay 0.05 0.05 --local-crops 0 --global-scale 0.14 1.0 \
      --channels-last --set n_prototypes=256 "${monitor_eval[@]}" "${common[@]}" --out "$OUT/swav_rn${d}_10min" \
      2> "$OUT/swav_rn${d}_10min.log" | tail -1
  else
    log "swav skipped: would end after the deadline"
  fi
fi

if [[ $what == cl ]]; then
  # class-incremental run on the DINO checkpoint (Split CIFAR-10, 5 tasks, memory 2,000), beside the
  # label-free patch encoders of experiments/RESULTS.md; resnet32_cifar reads depth and width from the checkpoint
  ck=$(ls -d "$OUT"/dino_rn*min | tail -1)/checkpoint.pt
  fits 8 || { log "cl skipped: would end after the deadline"; exit 0; }
  "$PY" -m memret.incremental --dataset cifar10 --root "$ROOT" --tasks 5 --encoder resnet32_cifar --checkpoint "$ck" \
    --memory 2000 --method replay icarl knn mtn --out "$OUT/cl_dino" | tail -1
fi
