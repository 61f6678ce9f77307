"""How long a ``fieldkit distill`` process takes to exit after its last line: the console script
(``python -m fieldkit``: ``fieldkit.cli.main``, which puts every object into gc's permanent generation at
exit) against the same command run through the click group alone, without that exit handler.

Each round runs the command once each way, the order alternating, as fresh processes with the same
environment. The seconds from the command's last line on stdout ("outputs in ...") to the process's end are
what the interpreter spends tearing down torch, diffusers and everything else the run imported; the run's
own work is done by then. Prints every round, the medians and their ratio::

    python benchmarks/exit_cost.py [--graph examples/quickstart/graph.yaml] [--rounds 7] [--set KEY=VALUE ...]

The default graph is the quickstart with 2 steps and its outputs kept (samples, checkpoint, export, report).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the console script, and the same command through the click group alone (no exit handler)
GROUP_ALONE = "import sys; from fieldkit.cli import cli; cli(sys.argv[1:], prog_name='fieldkit')"
VARIANTS = {"console script": ["-m", "fieldkit"], "click group alone": ["-c", GROUP_ALONE]}


def after_last_line(command: list[str], env: dict[str, str]) -> float:
    """Seconds from the last line ``command`` writes on stdout to its exit (it must succeed)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    last = time.perf_counter()
    for _ in proc.stdout:
        last = time.perf_counter()
    code = proc.wait()
    end = time.perf_counter()
    if code != 0:
        raise SystemExit(f"error: {' '.join(command)} exited with {code}")
    return end - last


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", default=str(ROOT / "examples" / "quickstart" / "graph.yaml"))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--set", dest="overrides", action="append", default=["run.steps=2"])
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    graph = Path(args.graph).resolve()
    shown = graph.relative_to(ROOT) if graph.is_relative_to(ROOT) else graph
    print(f"{shown}, {' '.join(args.overrides)}; seconds from the last line to the end of the process")
    print("| round | " + " | ".join(VARIANTS) + " |\n|---|" + "---|" * len(VARIANTS))
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):  # round 0 warms the page cache and is not counted
            names = list(VARIANTS) if r % 2 else list(reversed(VARIANTS))
            row = {}
            for name in names:
                out = Path(tmp) / f"run-{r}-{len(row)}"
                sets = [f"--set={o}" for o in args.overrides]
                command = [sys.executable, *VARIANTS[name], "distill", args.graph, "--out", str(out), *sets]
                row[name] = after_last_line(command, env)
            if r == 0:
                continue
            for name in VARIANTS:
                times[name].append(row[name])
            print(f"| {r} | " + " | ".join(f"{row[name]:.2f}" for name in VARIANTS) + " |", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    with_freeze, without = medians["console script"], medians["click group alone"]
    print(
        f"\nmedians: console script {with_freeze:.2f} s, click group alone {without:.2f} s "
        f"(console script / click group alone: {with_freeze / without:.2f})"
    )


if __name__ == "__main__":
    main()
