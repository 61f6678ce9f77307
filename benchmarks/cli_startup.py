"""How long the command line takes to start: `fieldkit --help` and `fieldkit validate GRAPH` (no torch on
these paths), against `python -c "import torch"` measured in the same run for scale.

Each command runs ``--repeats`` times as a fresh process; the median wall time is printed. Every installed
plugin loads (``FIELDKIT_LOAD_PLUGINS`` is cleared), as it does for a user: one plugin that imports torch
when registering shows here. The plugins that loaded are printed.

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --graph examples/digits/graph.yaml --repeats 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 1.0


def median_seconds(command: list[str], repeats: int) -> float:
    """The median wall time of ``command`` as a fresh process (its output is discarded; it must succeed)."""
    env = {k: v for k, v in os.environ.items() if k != "FIELDKIT_LOAD_PLUGINS"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default=str(ROOT / "examples" / "quickstart" / "graph.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    cli = [str(Path(sys.executable).parent / "fieldkit")]  # the console script, as a user runs it
    env = {k: v for k, v in os.environ.items() if k != "FIELDKIT_LOAD_PLUGINS"}
    listing = subprocess.run([*cli, "plugins", "--json"], check=True, capture_output=True, text=True, env=env)
    print(f"plugins loaded: {', '.join(p['name'] for p in json.loads(listing.stdout)['plugins'])}")
    rows = [
        ("fieldkit --help", median_seconds([*cli, "--help"], args.repeats)),
        (
            f"fieldkit validate {Path(args.graph).name}",
            median_seconds([*cli, "validate", args.graph], args.repeats),
        ),
        (
            "python -c 'import torch' (scale)",
            median_seconds([sys.executable, "-c", "import torch"], args.repeats),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:6.3f} s (median of {args.repeats})")
    slow = [name for name, seconds in rows[:2] if seconds >= LIMIT_S]
    print(f"under {LIMIT_S:g} s: {'no: ' + ', '.join(slow) if slow else 'yes'}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
