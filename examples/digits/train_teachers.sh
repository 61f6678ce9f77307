#!/usr/bin/env bash
# Train the digits world's teachers from data and store them (half precision) where the graphs read them.
#   examples/digits/train_teachers.sh            # all of them, in order (the edit teachers need t2i)
#   examples/digits/train_teachers.sh local      # only some
# Run from the repository root; runs land in runs/teachers/NAME (metrics, grids, checkpoints).
set -euo pipefail
BIN=${BIN:-.venv/bin}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(t2i local global realism edit)
for name in "${names[@]}"; do
  rm -rf "runs/teachers/$name"
  "$BIN/fieldkit" train "examples/digits/teachers/$name.yaml" --out "runs/teachers/$name" --no-progress
  "$BIN/fieldkit" digits-pack "runs/teachers/$name/student" "examples/digits/teachers/$name"
done
