#!/usr/bin/env bash
# The side-by-side quality table of BENCHMARKS.md: Fashion-MNIST ResNet-20 on the reference
# budget (DESIGN.md section 7), sparsegrain's methods and PyTorch's own pruning tools at each
# target sparsity; top-1 (mean and spread over seeds), achieved sparsity, wall time.
#
# Reproduce (about 13 minutes a run alone on 2 cores, 25-30 with two at a time, one thread each;
# finished runs are reused, so the command can be run again after a stop and targets or seeds
# added later):
#
#     bash bench/quality.sh                      # targets 0.9 0.7 0.5, seed 0
#     SEEDS="0 1" TARGETS="0.9" bash bench/quality.sh
#     QUICK=1 bash bench/quality.sh              # quick budget: a smoke check
#
# sparsegrain's side (bench/grid.py, results bench/results/quality.json): gradual magnitude
# pruning on Campfire's schedule (the window recipe of the same target: dense for epoch 1, cubic
# ramp to epoch 6, masks frozen after) with Mao et al.'s structures fine, vector, kernel, filter
# (fine also with one threshold over all layers, `scope: global`, as torch.nn.utils.prune's
# global pruning) and with the peers' structures block:1x4 (blocks ranked by L1, the default,
# and by L2 as torch.ao ranks them) and nm:2:4; Feather (fine, one global threshold) at
# 0.5 and 0.7 (0.9 is its own recipe); StructADMM filter, channel, shape at 0.7 and 0.9, from
# the dense run (trained first if missing). Dense, Campfire's structures, Feather 0.9 and ADMM
# 0.5 come from bench/results/campfire_fmnist.json and feather_admm.json (see BENCHMARKS.md).
# The peers (bench/peers.py, results bench/results/peers.json): PyTorch's own pruning tools as
# methods of the same loop, schedule and pruned layers: torch-ao (torch.ao.pruning
# WeightNormSparsifier) with 1x4 blocks and 2:4, torch-prune (torch.nn.utils.prune global L1).
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PYTHON:-.venv/bin/python}
TARGETS=${TARGETS:-"0.9 0.7 0.5"}
SEEDS=${SEEDS:-0}
Q=() RES=bench/results/quality.json COMPARE=(bench/results/campfire_fmnist.json
  bench/results/feather_admm.json)
if [ -n "${QUICK:-}" ]; then Q=(--quick) RES=bench/results/quality_quick.json COMPARE=(); fi
G=("$P" bench/grid.py --jobs 1 --threads 1 "${Q[@]}" --results "$RES")
PEER=("$P" bench/peers.py --jobs 1 --threads 1 "${Q[@]}")
DENSE=runs/grid/reference/resnet20_fmnist_dense ADMM=()
if [ -n "${QUICK:-}" ]; then  # 4 epochs: two ADMM periods of one epoch
  DENSE=runs/grid/quick/resnet20_fmnist_dense ADMM=(--set sparsity.admm_epochs=1
    --set sparsity.admm_periods=2)
fi
[ -f "$DENSE/model.safetensors" ] || "${G[@]}" recipes/resnet20_fmnist_dense.yaml
lane() {  # run "$@" in the background once fewer than two runs are going
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
  "$@" &
}
for seed in $SEEDS; do
  s=$([ "$seed" = 0 ] && echo "" || echo "_s$seed")
  for t in $TARGETS; do
    pct=$(printf '%.0f' "$(echo "$t * 100" | bc)")
    R=recipes/resnet20_fmnist_campfire_window_$pct.yaml
    for peer in prune-global ao-block1x4; do
      lane "${PEER[@]}" --seeds "$seed" --targets "$t" --peers "$peer"
    done
    for st in fine block:1x4 vector kernel filter; do
      lane "${G[@]}" --tag "_${st/:/}$s" --set train.seed="$seed" \
        --set sparsity.structure="$st" --set sparsity.fallback=error "$R"
    done
    lane "${G[@]}" --tag "_block1x4_l2$s" --set train.seed="$seed" --set sparsity.score=l2 \
      --set sparsity.structure=block:1x4 --set sparsity.fallback=error "$R"
    lane "${G[@]}" --tag "_fine_global$s" --set train.seed="$seed" --set sparsity.scope=global \
      --set sparsity.structure=fine --set sparsity.fallback=error "$R"
    if [ "$pct" != 90 ] || [ "$seed" != 0 ]; then
      lane "${G[@]}" --tag "_at$pct$s" --set train.seed="$seed" --set sparsity.target="$t" \
        recipes/resnet20_fmnist_feather_90.yaml
    fi
    if [ "$pct" != 50 ] || [ "$seed" != 0 ]; then
      for st in filter channel shape; do
        lane "${G[@]}" --tag "_at$pct$s" --set train.seed="$seed" --set sparsity.target="$t" \
          "${ADMM[@]}" --init "$DENSE" "recipes/resnet20_fmnist_admm_${st}_50.yaml"
      done
    fi
  done
  lane "${PEER[@]}" --seeds "$seed" --peers ao-nm2:4
  lane "${G[@]}" --tag "_nm24$s" --set train.seed="$seed" --set sparsity.structure=nm:2:4 \
    --set sparsity.fallback=error recipes/resnet20_fmnist_campfire_window_50.yaml
done
wait || true
"$P" bench/peers.py "${Q[@]}" --table-only --compare "$RES" "${COMPARE[@]}"
