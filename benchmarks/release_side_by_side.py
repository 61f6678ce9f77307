"""The authors' release (worldbench/DanceOPD 4440ab5) and fieldkit, side by side, each run by its own command.

Both train the same LoRA student on the same tiny SD3 pipeline (``sd3.py``'s: 2 joint blocks x 64 wide,
16 x 32 x 32 latents, the plugin's tiny text encoders, 77 + ``--t5-tokens`` text tokens), fp32, batch 1,
K = 1 from Beta(5, 2), LoRA rank 4 on SD3's eight attention projections, a 16-step rollout on the
scheduler's sigmas, AdamW at lr 1e-4, clipping at 1, a log line every step. The release is run unpatched,
by its documented command, from the virtual environment it is installed in (``--release-python``; it is
never copied into this repository)::

    python -m accelerate.commands.launch --cpu --num_processes 1 -m danceopd.cli.train --config release.yaml

and fieldkit by ``python -m fieldkit distill graph.yaml --out DIR``. Each round runs both, one after the
other (the order alternates), at the same thread count (``OMP_NUM_THREADS``). While a program runs, each of
its per-step log lines (the release's ``[DanceOPD] step=`` on stdout, fieldkit's ``metrics.jsonl`` line)
is timed, and the CPU seconds of its process tree are read from the kernel's own accounting
(``/proc/PID/task/*/schedstat``) at that moment: on a loaded machine a step's CPU time stays steady where
its wall-clock time does not. The first ``--drop`` steps of each run are dropped. Printed: per round the
median seconds per step (wall and CPU) of each program and their ratio; the medians pooled over every kept
step; the ratio's median and interquartile range over rounds; the peak RSS of each run (``ru_maxrss`` of
its process tree); launch to the end of step 1 and the last step's line to the exit; and sign tests over
the rounds as the table prints them (the CPU ratio against 2.0; fieldkit sooner or later at launch and at
exit), with each median's interval (``side_by_side_results.py``). ``--results FILE`` appends the run, its
rows as printed, to a JSON-lines file that ``side_by_side_results.py`` summarises over runs. A warm-up
round (not counted) fills the OS page cache and fieldkit's prompt-embedding cache, as a user's earlier run
would::

    python benchmarks/release_side_by_side.py --release-python PATH/bin/python \\
        [--rounds 33] [--steps 30] [--drop 3] [--threads 1] [--t5-tokens 256] [--work DIR] \\
        [--fieldkit-python F/bin/python] [--fieldkit-set run.grid_samples=0] [--results FILE]

fieldkit runs from ``--fieldkit-python`` (default: the interpreter running this script). Compare memory
from two venvs that each hold only their program: a library another imports when it is installed counts
in a run's peak (transformers imports scipy when scipy is there: scipy put into the release's venv adds
57 MiB to its peak, and fieldkit's development venv 71 MiB to fieldkit's; docs/performance.md, section
11). Make fieldkit's with ``python3 -m venv F && F/bin/pip install torch==2.13.0``, then ``F/bin/pip
install -e CHECKOUT -e CHECKOUT/plugins/fieldkit-plugin-sd3``. The first line of the output gives both
venvs' number of packages.

``--fieldkit-set`` overrides fieldkit's graph: ``run.grid_samples=0`` gives it the release's outputs (its
weights, no sample grid), for the time after the last step like for like.

Without ``--release-python`` (nor ``FIELDKIT_RELEASE_PYTHON``) the script says so and exits 0. The release's
venv needs its ``sd35`` extra: ``python3 -m venv V && V/bin/pip install torch==2.13.0`` first (a CPU wheel),
then ``V/bin/pip install -e 'CHECKOUT[sd35]'`` from a checkout of the release at 4440ab5.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from side_by_side_results import append_run, record, results_problem, run_table, sign_lines

ROLLOUT_STEPS = 16
LORA_RANK = 4
LR = 1.0e-4
RESOLUTION = 256  # the release's latents are resolution / 8 = 32 x 32, as sd3.py's
RELEASE_STEP = re.compile(rb"^\[DanceOPD\] step=(\d+)/")
RELEASE_CHECK = """
import sys, yaml
from danceopd.core.config import DEFAULT_CONFIG, load_config, validate_config

def unknown(raw, default, path=""):
    if isinstance(raw, list):
        template = default[0] if isinstance(default, list) and default else {}
        return [u for item in raw for u in unknown(item, template, path + "[]")]
    if not isinstance(raw, dict) or not isinstance(default, dict):
        return []
    out = []
    for key, value in raw.items():
        if key not in default:
            out.append(path + key)
        else:
            out += unknown(value, default[key], path + key + ".")
    return out

with open(sys.argv[1], encoding="utf-8") as fh:
    raw = yaml.safe_load(fh)
keys = unknown(raw, DEFAULT_CONFIG)
keys = [k for k in keys if k not in ("teachers[].name", "routing.routes[].dataset")]
if keys:
    sys.exit("keys the release does not know: " + ", ".join(keys))
validate_config(load_config(sys.argv[1]))
print("ok")
"""


# -- the two configurations ---------------------------------------------------------------------------------


def release_config(root: Path, steps: int, t5_tokens: int, out: Path) -> dict[str, Any]:
    """The release's config (its own keys, ``danceopd/core/config.py``) for the tiny pipeline in ``root``."""
    return {
        "backend": "sd35",
        "model": {"pretrained_model": str(root / "sd3")},
        "student": {"init": "base", "lora_rank": LORA_RANK, "lora_alpha": LORA_RANK},
        "teachers": [{"name": "base", "base_ckpt": None, "lora_dir": None, "weight": 1.0}],
        "routing": {"routes": [{"teacher": "base", "dataset": "default", "weight": 1.0}]},
        "data": {"prompts_csv": str(root / "prompts.csv"), "prompt_column": "prompt"},
        "training": {
            "method": "danceopd",
            "output_dir": str(out),
            "resolution": RESOLUTION,
            "rollout_steps": ROLLOUT_STEPS,
            "k": 1,
            "query_bias": "low_t",
            "lr": LR,
            "weight_decay": 0.0,
            "grad_accum": 1,
            "max_train_steps": steps,
            "save_steps": steps,
            "mixed_precision": "no",
            "gradient_clip": 1.0,
            "max_sequence_length": t5_tokens,
            "log_every": 1,
        },
    }


def add_tiny_vae(folder: Path) -> None:
    """A tiny VAE in the pipeline folder: the release loads the whole pipeline, which refuses one without a
    VAE (neither program runs it; the release moves it to the CPU, fieldkit does not load it)."""
    from diffusers import AutoencoderKL

    AutoencoderKL(
        latent_channels=16, block_out_channels=(8,), layers_per_block=1, norm_num_groups=8
    ).save_pretrained(str(folder / "vae"))
    index = json.loads((folder / "model_index.json").read_text())
    index["vae"] = ["diffusers", "AutoencoderKL"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def fieldkit_graph(root: Path, steps: int, t5_tokens: int) -> dict[str, Any]:
    """fieldkit's graph with the same settings: ``sd3.py``'s graph, ``steps`` updates, a log line each."""
    from sd3 import graph_text

    graph = yaml.safe_load(graph_text(root, t5_tokens))
    assert graph["flow"]["steps"] == ROLLOUT_STEPS and graph["student"]["lora"]["rank"] == LORA_RANK
    graph["run"].update(steps=steps, log_every=1, lr=LR)
    return graph


def write_configs(root: Path, steps: int, t5_tokens: int) -> tuple[Path, Path]:
    """Write ``release.yaml`` (its output folder: ``root/release-out``) and ``graph.yaml`` into ``root``."""
    release = root / "release.yaml"
    release.write_text(yaml.safe_dump(release_config(root, steps, t5_tokens, root / "release-out")))
    graph = root / "graph.yaml"
    graph.write_text(yaml.safe_dump(fieldkit_graph(root, steps, t5_tokens)))
    return release, graph


def check_release(python: str, config: Path) -> str | None:
    """Why ``python`` cannot run the release on ``config``, or None: it imports the release, every key of
    ``config`` is one the release's defaults have, and the release's validation passes."""
    return problem([python, "-c", RELEASE_CHECK, str(config)], release_env(1))


def check_fieldkit(python: str) -> str | None:
    """Why ``python`` cannot run fieldkit on the tiny SD3 pipeline, or None: it imports this checkout's
    fieldkit, its SD3 plugin and the libraries the run loads."""
    code = "import fieldkit, fieldkit_sd3, diffusers, peft, transformers, accelerate; print('ok')"
    return problem([python, "-c", code], fieldkit_env(1))


def problem(check: list[str], env: dict[str, str]) -> str | None:
    """None if ``check`` exits 0 printing ``ok``; else the last line of its stderr (what went wrong)."""
    result = subprocess.run(check, capture_output=True, text=True, env=env)
    if result.returncode == 0 and result.stdout.strip() == "ok":
        return None
    return (result.stderr.strip().splitlines() or ["no output"])[-1]


#: Counts the distributions a venv holds: installed libraries that another imports when present (scipy,
#: beside transformers) are part of a run's memory, so a comparison names both venvs' sizes.
COUNT_PACKAGES = (
    "import importlib.metadata as m; print(len({d.metadata['Name'].lower() for d in m.distributions()}))"
)


def packages(python: str, env: dict[str, str]) -> int:
    """How many distributions the venv of ``python`` holds."""
    out = subprocess.run([python, "-c", COUNT_PACKAGES], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# -- running one program and reading its accounting --------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task ended meanwhile
                pids += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU seconds run so far by the live threads of ``pid``'s process tree (``schedstat``: nanoseconds)."""
    total = 0
    for p in tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, IndexError, ValueError):  # the task ended meanwhile
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


@dataclass
class Run:
    """One program's run: the wall-clock and CPU seconds at each step line, and what it cost around them."""

    launch: float
    steps: list[tuple[float, float]] = field(default_factory=list)
    exit: float = 0.0
    max_rss_mib: float = 0.0

    def kept(self, drop: int) -> list[tuple[float, float]]:
        """The step marks from the end of step ``drop`` on (step 1 also holds the start-up)."""
        return self.steps[max(drop, 1) - 1 :]

    def wall_per_step(self, drop: int) -> list[float]:
        """Wall-clock seconds of each step after the first ``drop``."""
        return [b[0] - a[0] for a, b in itertools.pairwise(self.kept(drop))]

    def cpu_kept(self, drop: int) -> tuple[float, int]:
        """CPU seconds of the steps after the first ``drop``, and their number. Only as a total: the kernel
        brings a running task's CPU time up to date at its scheduler ticks (every 4 ms at 250 Hz), so one
        step's share is whole ticks (5% of a 0.08 s step); over all the kept steps it is within a tick."""
        marks = self.kept(drop)
        return marks[-1][1] - marks[0][1], len(marks) - 1

    def cpu_per_step(self, drop: int) -> float:
        """CPU seconds per step after the first ``drop``: their total over their number."""
        seconds, steps = self.cpu_kept(drop)
        return seconds / steps

    def raw(self) -> dict[str, Any]:
        """The run's marks from its launch (wall and CPU seconds at each step line, the exit) and its peak
        RSS, as kept in the results file."""
        return {
            "steps": [[round(w - self.launch, 4), round(c, 4)] for w, c in self.steps],
            "exit": round(self.exit - self.launch, 4),
            "max_rss_mib": round(self.max_rss_mib, 1),
        }

    @property
    def to_first_step(self) -> float:
        return self.steps[0][0] - self.launch

    @property
    def after_last_step(self) -> float:
        return self.exit - self.steps[-1][0]


def run(cmd: list[str], env: dict[str, str], steps: int, metrics: Path | None, log: Path) -> Run:
    """Run ``cmd`` and time its step lines: the release's on stdout, or fieldkit's lines of ``metrics``."""
    with log.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=sink)
        assert proc.stdout is not None
        result, pending, seen, offset = Run(launch=start), b"", 0, 0
        fd = proc.stdout.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], 0.005)
            chunk = os.read(fd, 65536) if ready else b""
            now = time.perf_counter()
            if ready and not chunk:
                break  # stdout closed: the program is exiting
            sink.write(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if metrics is None:
                seen += sum(1 for line in lines if RELEASE_STEP.match(line))
            elif metrics.exists():
                with metrics.open("rb") as fh:
                    fh.seek(offset)
                    new = fh.read()
                complete = new[: new.rfind(b"\n") + 1]
                offset += len(complete)
                seen += sum(1 for line in complete.splitlines() if b'"step"' in line)
            while len(result.steps) < min(seen, steps):
                result.steps.append((now, cpu_seconds(proc.pid)))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        result.exit = time.perf_counter()
        result.max_rss_mib = usage.ru_maxrss / 1024  # KiB on Linux; the largest process of the tree
    if proc.returncode != 0 or len(result.steps) < steps:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        fail(
            f"{' '.join(cmd[:4])} ... exited {proc.returncode} after {len(result.steps)} of {steps} "
            "step lines; its output ends:\n  " + "\n  ".join(tail)
        )
    return result


def release_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def fieldkit_env(threads: int) -> dict[str, str]:
    checkout = Path(__file__).resolve().parents[1]
    path = [
        str(checkout),
        str(checkout / "plugins" / "fieldkit-plugin-sd3"),
        os.environ.get("PYTHONPATH", ""),
    ]
    return release_env(threads) | {"PYTHONPATH": os.pathsep.join(p for p in path if p)}


# -- the rounds and the summary -----------------------------------------------------------------------------


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--release-python",
        default=os.environ.get("FIELDKIT_RELEASE_PYTHON"),
        help="python of the venv the release is installed in (default: $FIELDKIT_RELEASE_PYTHON)",
    )
    p.add_argument(
        "--fieldkit-python",
        default=os.environ.get("FIELDKIT_PYTHON", sys.executable),
        help="python of the venv fieldkit runs from (default: $FIELDKIT_PYTHON, else this one); for memory, "
        "one with only fieldkit and its SD3 plugin installed, as the release's holds only the release",
    )
    p.add_argument("--rounds", type=int, default=33, help="counted rounds, each runs both programs once")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument(
        "--drop", type=int, default=3, help="first steps of each run left out of the per-step figures"
    )
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both programs")
    p.add_argument("--t5-tokens", type=int, default=256, help="T5 tokens of the prompt (SD3's default 256)")
    p.add_argument(
        "--work", type=Path, default=None, help="folder for the pipeline and runs (default: temporary)"
    )
    p.add_argument(
        "--fieldkit-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of fieldkit's graph (repeatable), e.g. run.grid_samples=0: the release's outputs "
        "(no sample grid)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="FILE",
        help="append this run (its header and per-round rows) to a JSON-lines results file, which "
        "side_by_side_results.py summarises with the runs before it",
    )
    args = p.parse_args(argv)
    if not args.release_python:
        print(
            "skipped: the authors' release is not given; pass --release-python PATH/bin/python (a venv with "
            "the release installed, see this script's --help)"
        )
        return
    if not (args.rounds >= 1 and args.steps >= args.drop + 3 and args.drop >= 1 and args.threads >= 1):
        fail("need --rounds >= 1, --drop >= 1, --steps >= --drop + 3 and --threads >= 1")
    for flag, python in (
        ("--release-python", args.release_python),
        ("--fieldkit-python", args.fieldkit_python),
    ):
        if not shutil.which(python):
            fail(f"{flag} {python} is not an executable")
    if args.results is not None and (why := results_problem(args.results)):
        fail(f"--results {args.results} {why}; give a new file or one this script wrote")
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.work or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        compare(args, root)


def compare(args: argparse.Namespace, root: Path) -> None:
    from sd3 import make_pipeline

    if not (root / "sd3" / "vae").is_dir():
        add_tiny_vae(make_pipeline(root))
    release_cfg, graph = write_configs(root, args.steps, args.t5_tokens)
    if problem := check_release(args.release_python, release_cfg):
        fail(f"{args.release_python} cannot run the release on {release_cfg.name}: {problem}")
    if problem := check_fieldkit(args.fieldkit_python):
        fail(f"--fieldkit-python {args.fieldkit_python} cannot run fieldkit: {problem}")
    commands = {
        "release": [
            args.release_python,
            "-m",
            "accelerate.commands.launch",
            "--cpu",
            "--num_processes",
            "1",
            "-m",
            "danceopd.cli.train",
            "--config",
            str(release_cfg),
        ],
        "fieldkit": [
            args.fieldkit_python,
            "-m",
            "fieldkit",
            "distill",
            str(graph),
            "--out",
            str(root / "fieldkit-out"),
            *(f"--set={override}" for override in args.fieldkit_set),
        ],
    }
    envs = {"release": release_env(args.threads), "fieldkit": fieldkit_env(args.threads)}
    outs = {"release": root / "release-out", "fieldkit": root / "fieldkit-out"}
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (
        f"{stamp}  {os.cpu_count()} cores ({platform.machine()}), {args.threads} thread(s) each, tiny SD3, "
        f"fp32, batch 1, K 1, LoRA r {LORA_RANK}, {ROLLOUT_STEPS}-step rollout, {args.steps} steps per run, "
        f"first {args.drop} dropped, {args.rounds} rounds + 1 warm-up"
        + (f", fieldkit with {' '.join(args.fieldkit_set)}" if args.fieldkit_set else "")
        + f"; venvs of {packages(args.release_python, envs['release'])} (release) and "
        f"{packages(args.fieldkit_python, envs['fieldkit'])} (fieldkit) packages"
    )
    print(header)
    runs: dict[str, list[Run]] = {"release": [], "fieldkit": []}
    rows: list[str] = []  # the per-round table's rows, as printed
    raw: list[dict[str, Any]] = []  # each round's marks, for the results file
    print(
        "| round | load 1 min | release s/step | fieldkit s/step | ratio | release CPU s/step (mean) | "
        "fieldkit CPU s/step (mean) | CPU ratio | RSS MiB (rel / fk) | to step 1 s | after last s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in range(args.rounds + 1):
        order = ["release", "fieldkit"] if r % 2 else ["fieldkit", "release"]
        load = os.getloadavg()[0]
        done = {}
        for name in order:
            shutil.rmtree(outs[name], ignore_errors=True)
            metrics = outs[name] / "metrics.jsonl" if name == "fieldkit" else None
            done[name] = run(commands[name], envs[name], args.steps, metrics, root / f"{name}.log")
        if r == 0:
            continue  # the warm-up round
        rel, fk = done["release"], done["fieldkit"]
        rw, fw = (statistics.median(x.wall_per_step(args.drop)) for x in (rel, fk))
        rc, fc = (x.cpu_per_step(args.drop) for x in (rel, fk))
        for name in runs:
            runs[name].append(done[name])
        raw.append({name: done[name].raw() for name in runs})
        rows.append(
            f"| {r} | {load:.1f} | {rw:.4f} | {fw:.4f} | {rw / fw:.2f} | "
            f"{rc:.4f} | {fc:.4f} | {rc / fc:.2f} | "
            f"{rel.max_rss_mib:.0f} / {fk.max_rss_mib:.0f} | "
            f"{rel.to_first_step:.2f} / {fk.to_first_step:.2f} | "
            f"{rel.after_last_step:.2f} / {fk.after_last_step:.2f} |"
        )
        print(rows[-1], flush=True)
    summarise(runs, args.drop)
    print("\n".join(sign_lines(rows)))
    run_record = record(header, args.fieldkit_set, rows, raw)
    print("\n" + "\n".join(run_table([run_record])))
    if args.results is not None:
        append_run(args.results, run_record)
        print(f"\nthis run is the last line of {args.results}")


def summarise(runs: dict[str, list[Run]], drop: int) -> None:
    """The table of pooled figures and ratios over every counted round."""
    names = ("release", "fieldkit")
    wall = {n: [s for r in runs[n] for s in r.wall_per_step(drop)] for n in names}
    kept = {n: [r.cpu_kept(drop) for r in runs[n]] for n in names}
    cpu = {n: sum(s for s, _ in kept[n]) / sum(k for _, k in kept[n]) for n in names}  # all rounds together
    pairs = list(zip(runs["release"], runs["fieldkit"], strict=True))
    wall_ratios = [
        statistics.median(r.wall_per_step(drop)) / statistics.median(f.wall_per_step(drop)) for r, f in pairs
    ]
    cpu_ratios = [r.cpu_per_step(drop) / f.cpu_per_step(drop) for r, f in pairs]

    def row(label: str, rel: float, fk: float, per_round: list[float]) -> None:
        lo, hi = quartiles(per_round)
        print(
            f"| {label} | {rel:.4f} | {fk:.4f} | **{rel / fk:.2f}** (per round median "
            f"{statistics.median(per_round):.2f}, IQR {lo:.2f}-{hi:.2f}) |"
        )

    print("\n| | release | fieldkit | release / fieldkit |\n|---|---|---|---|")
    row("s/step, pooled median (wall)", *(statistics.median(wall[n]) for n in names), wall_ratios)
    row("CPU s/step, mean over every kept step", cpu["release"], cpu["fieldkit"], cpu_ratios)
    for label, attr in (
        ("peak RSS MiB, median (min-max)", "max_rss_mib"),
        ("launch to end of step 1, s, median (min-max)", "to_first_step"),
        ("after the last step to exit, s, median (min-max)", "after_last_step"),
    ):
        cells = []
        for name in ("release", "fieldkit"):
            values = [getattr(r, attr) for r in runs[name]]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        meds = [statistics.median(getattr(r, attr) for r in runs[n]) for n in ("release", "fieldkit")]
        print(f"| {label} | {cells[0]} | {cells[1]} | {meds[0] / meds[1]:.2f} |")
    print("load average at the end (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
