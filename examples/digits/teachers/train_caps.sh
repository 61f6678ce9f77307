#!/usr/bin/env bash
# Train the capability teachers of the many-teachers study (issue 21) and export each as a LoRA over the T2I
# base, unmerged (a peft folder that the `fieldkit.lora` fields of examples/digits/reproduce/capsN.yaml load).
#   examples/digits/teachers/train_caps.sh                 # every capability (N = 2, 4, 8; shared ones once)
#   examples/digits/teachers/train_caps.sh replace_left    # only some
# Run from the repository root; runs land in runs/teachers/caps/NAME (metrics, grids, checkpoints). The
# recipes teachers/caps/NAME.yaml are written by teachers/caps.py (`caps.py --names` lists them).
# TRAIN_ARGS is handed to `fieldkit train` (a smoke test: TRAIN_ARGS="--set run.steps=4").
set -euo pipefail
BIN=${BIN:-.venv/bin}
HERE=examples/digits/teachers
read -ra extra <<< "${TRAIN_ARGS:-}"
names=("$@")
[ ${#names[@]} -gt 0 ] || mapfile -t names < <("$BIN/python" "$HERE/caps.py" --names)
for name in "${names[@]}"; do
  rm -rf "runs/teachers/caps/$name" "$HERE/caps/$name"
  "$BIN/fieldkit" train "$HERE/caps/$name.yaml" --out "runs/teachers/caps/$name" --no-progress "${extra[@]}"
  "$BIN/fieldkit" export "runs/teachers/caps/$name" --format peft -o "$HERE/caps/$name"
  "$BIN/python" "$HERE/caps.py" --half "$HERE/caps/$name"  # float16: half the bytes in the repository
done
