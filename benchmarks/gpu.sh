#!/usr/bin/env bash
# The benchmarks on one CUDA GPU (an H100 or H200): the same scripts as on CPU, run with bf16 autocast; every
# SDPA kernel fieldkit can pin (flash, cuDNN, efficient) and xformers when it is installed; torch.compile on
# and off; and the achieved TFLOP/s (MFU) of a student training step of an SD3-medium-width transformer with
# random weights; run.compile (fieldkit.compile) on the small students: CUDA graphs against eager for the
# digits rollout, compiled steps, and a DanceOPD step against a joint-SFT step. Each part runs under its own
# time limit inside one overall budget (BUDGET seconds, 570 by default), so the whole script ends in under
# 10 minutes; a part that fails or runs out of time is reported and the next one runs.
#
#   bash benchmarks/gpu.sh             # on the GPU machine, from anywhere in the checkout
#   bash benchmarks/gpu.sh --dry-run   # the same plumbing on CPU, tiny settings (checks the script here)
#
# Needs python3 with a CUDA build of torch. fieldkit (and the SD3 plugin, when present) are used from this
# checkout through PYTHONPATH: nothing is pip-installed. Python packages fieldkit needs that such a machine
# may lack (pydantic, diffusers) travel as wheels in .whl/ at the repository root. The wheels are never
# committed (`echo /.whl/ >> .git/info/exclude`); make them once on a machine with pip access:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 importlib-metadata==10.2.0
#
# A wheel is installed (into a temporary folder put first on PYTHONPATH) only when its module is missing.
# Everything printed also goes to $OUT/gpu-bench.txt (OUT defaults to runs/gpu-bench).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY="${PYTHON:-python3}"
if ((DRY)) && [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then
    PY=.venv/bin/python  # the dry run checks the plumbing with the project's CPU venv
fi
BUDGET="${BUDGET:-$((DRY ? 2400 : 570))}"
OUT="${OUT:-runs/gpu-bench}"
mkdir -p "$OUT"
LOG="$OUT/gpu-bench.txt"
: >"$LOG"
START=$SECONDS
export PYTHONUNBUFFERED=1

say() { echo "$@" | tee -a "$LOG"; }

# -- packages: wheels carried in .whl/ for modules this python lacks ------------------------------------------
if [[ -d .whl ]]; then
    SITE="$(mktemp -d /tmp/fieldkit-site.XXXX)"
    missing=()
    for wheel in .whl/*.whl; do
        module="$(basename "$wheel" | cut -d- -f1)"
        "$PY" -c "import $module" 2>/dev/null || missing+=("$wheel")
    done
    if ((${#missing[@]})); then
        say "installing carried wheels: ${missing[*]}"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${missing[@]}" \
            2>&1 | tee -a "$LOG"
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$ROOT:$ROOT/plugins/fieldkit-plugin-sd3${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import pydantic, diffusers, fieldkit" 2>>"$LOG"; then
    say "fieldkit cannot be imported here (pydantic or diffusers missing?): carry the wheels named at the top"
    say "of benchmarks/gpu.sh in .whl/ and run again."
    exit 1
fi

COMPILED="cudagraphs,regional-dynamic"  # run.compile's variants on the GPU (benchmarks/compile.py)
if ((DRY)); then
    DEV=(--device cpu --threads 1)
    GPU_ARGS=(--dry-run --no-compile --threads 1)
    COMPILED="regional-dynamic"  # CUDA graphs need CUDA
else
    if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        say "no CUDA device visible to $PY (use --dry-run to check the script on CPU)"
        exit 1
    fi
    DEV=(--device cuda)
    GPU_ARGS=()
fi

say "== environment"
{
    date -u '+%Y-%m-%d %H:%M UTC'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" - <<'EOF'
import importlib.util, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"cudnn {torch.backends.cudnn.version()}")
for name in ("diffusers", "xformers", "triton", "accelerate", "peft"):
    spec = importlib.util.find_spec(name)
    if spec is None:
        print(f"{name}: not installed")
    else:
        mod = __import__(name)
        print(f"{name}: {getattr(mod, '__version__', '?')}")
EOF
} 2>&1 | tee -a "$LOG"

# part NAME LIMIT_S COMMAND...: run under min(LIMIT_S, what is left of BUDGET); report failures, go on.
part() {
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    ((limit > left)) && limit=$left
    if ((limit < 15)); then
        say "== $name: skipped (the ${BUDGET} s budget is spent)"
        return
    fi
    say "== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    if ((rc == 124 || rc == 137)); then
        say "-- $name: stopped at its ${limit} s limit"
    elif ((rc != 0)); then
        say "-- $name: failed (exit $rc)"
    else
        say "-- $name: $((SECONDS - t0)) s"
    fi
}

# The headline first: MFU of the SD3-medium-width training step, eager and compiled (run.compile's path,
# with a profile of the compiled step), per SDPA kernel.
part "MFU: SD3-medium-width student step" 220 "$PY" benchmarks/gpu.py "${GPU_ARGS[@]}" --profile
# run.compile on the small students: CUDA graphs (reduce-overhead) against eager for the launch-bound digits
# rollout, whole steps of the digits and tiny SD3 students, and DanceOPD against joint SFT (its pass count).
part "digits rollout: CUDA graphs vs eager" 90 "$PY" benchmarks/compile.py "${DEV[@]}" --bf16 --quick \
    --parts rollout --variants "$COMPILED"
part "run.compile: digits and SD3 steps" 90 "$PY" benchmarks/compile.py "${DEV[@]}" --bf16 --quick \
    --parts compile --variants "$COMPILED"
part "DanceOPD vs joint-SFT step" 30 "$PY" benchmarks/compile.py "${DEV[@]}" --bf16 --quick --parts sft
part "attention kernels" 45 "$PY" benchmarks/attention.py "${DEV[@]}" --quick --dtype bf16
part "engine overhead" 40 "$PY" benchmarks/engine_overhead.py "${DEV[@]}" --bf16 --quick
part "guidance batching" 30 "$PY" benchmarks/guidance.py "${DEV[@]}" --bf16 --quick
part "early-stopped rollout" 30 "$PY" benchmarks/rollout.py "${DEV[@]}" --bf16 --quick
part "DanceOPD K=1 vs dense K=16" 30 "$PY" benchmarks/dense.py "${DEV[@]}" --bf16 --quick
part "memory" 75 "$PY" benchmarks/memory.py "${DEV[@]}" --bf16 --quick
part "scaling" 40 "$PY" benchmarks/scaling.py "${DEV[@]}" --bf16 --quick
if [[ -f benchmarks/sd3.py && -d plugins/fieldkit-plugin-sd3/fieldkit_sd3 ]]; then
    part "SD3 student" 60 "$PY" benchmarks/sd3.py "${DEV[@]}" --bf16 --quick
fi
say "== done in $((SECONDS - START)) s; log: $LOG"
