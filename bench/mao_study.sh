#!/usr/bin/env bash
# Mao et al.'s granularity study (arXiv 1705.08922) on Fashion-MNIST ResNet-20 at 70% sparsity,
# quick budget (20k-image subset, 4 epochs, Campfire schedule scaled to it): fine, vector, kernel,
# filter, plus Campfire's window and kernel-quota; then `sparsegrain analyze` of every run
# (accuracy, storage with index overhead, SCNN-like memory references) and robustness of dense
# vs window 70%.
# Reproduce: bash bench/mao_study.sh      (THREADS=1 when sharing the machine)
set -euo pipefail
cd "$(dirname "$0")/.."
R=recipes/resnet20_fmnist_campfire_window_70.yaml
G=(.venv/bin/python bench/grid.py --quick --jobs 1 --threads "${THREADS:-2}"
   --results bench/results/mao_study.json)
"${G[@]}" recipes/resnet20_fmnist_dense.yaml
"${G[@]}" "$R"   # window (the same run as the Campfire study's)
for st in fine vector kernel filter kernel-quota; do
  "${G[@]}" --tag "_$st" --set "sparsity.structure=$st" "$R"
done
Q=runs/grid/quick
RUNS=("$Q"/resnet20_fmnist_dense "$Q"/resnet20_fmnist_campfire_window_70)
for st in fine vector kernel filter kernel-quota; do RUNS+=("$Q/resnet20_fmnist_campfire_window_70_$st"); done
for run in "${RUNS[@]}"; do
  [ -f "$run/analysis.json" ] || .venv/bin/sparsegrain analyze --run "$run" --no-progress >/dev/null
done
.venv/bin/sparsegrain analyze --run "$Q/resnet20_fmnist_campfire_window_70" \
  --attacks fgsm,pgd --epsilons 0,0.01,0.02,0.05 --baseline "$Q/resnet20_fmnist_dense" \
  --max-batches 2 --no-progress --out "$Q/robustness_window70.json" > "$Q/robustness_window70.txt"
.venv/bin/python bench/mao_table.py "${RUNS[@]}"
