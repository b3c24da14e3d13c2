#!/usr/bin/env bash
# Campfire study at one sparsity (window, 70%) on the quick budget (20k-image subset, 4 epochs):
# pruning duration (end of the ramp) and learning-rate configuration at mask freeze.
# Reproduce: bash bench/campfire_study.sh   (about 3 minutes a run alone on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=recipes/resnet20_fmnist_campfire_window_70.yaml
D=recipes/resnet20_fmnist_dense.yaml
G=(.venv/bin/python bench/grid.py --quick --jobs 1 --threads "${THREADS:-2}" --results bench/results/campfire_study.json)
"${G[@]}" "$D"
# pruning duration: ramp from epoch 0.4 to 1.2 (short), 2.4 (default, scaled), 3.6 (long)
"${G[@]}" --tag _end1.2 --set sparsity.end=1.2 "$R"
"${G[@]}" "$R"
"${G[@]}" --tag _end3.6 --set sparsity.end=3.6 "$R"
# learning rate: step decay instead of cosine; cosine restarted at freeze; boosted at freeze
"${G[@]}" --tag _step --set train.schedule=multistep --set "train.milestones=[2.4,3.2]" "$R"
"${G[@]}" --tag _restart --set train.lr_at_freeze=restart "$R"
"${G[@]}" --tag _boost --set train.lr_at_freeze=boost --set train.freeze_lr=0.03 "$R"
