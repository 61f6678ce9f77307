"""Gradient checkpointing (``student.gradient_checkpointing: true``): what it costs per DanceOPD step and
what it saves.

For each student, two engines are built from the same graph, the second with
``--set student.gradient_checkpointing=true``, and step in interleaved rounds; printed: the median ms per
step of each, the median per-round ratio (checkpointing / plain) with its interquartile range, and the bytes
of the activations autograd keeps for the backward during one step (saved-tensor hooks, parameters
excluded; ``memory.py``'s count): the part of the step's memory that checkpointing cuts (section 6 of
docs/performance.md: the step's transient memory equals it). The rollout and the teacher run without
gradients and are not affected; only the student's one forward + backward is. Students: the digits
student (full and LoRA r = 8, batch 32, 16-step rollout) and the tiny SD3 student of ``sd3.py`` (LoRA
r = 4, batch 1)::

    python benchmarks/checkpointing.py [--threads 1] [--rounds 20] [--students digits,digits-lora,sd3]
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import bench_plugin, graph_text, interleaved, make_engine, median_ms, paired_ratio, parser, setup
from memory import saved_activation_bytes

from fieldkit.distill.engine import Engine
from fieldkit.testing import quiet_diffusers

ON = ["student.gradient_checkpointing=true"]
MB = 2**20


def students(names: list[str], root: Path) -> dict[str, Callable[[list[str]], Engine]]:
    """A maker of each named student's engine, given the overrides."""
    makers: dict[str, Callable[[list[str]], Engine]] = {}
    for name in names:
        if name in ("digits", "digits-lora"):
            train = "lora" if name == "digits-lora" else "full"
            text = graph_text(batch=32, train=train, init="teacher")
            makers[f"{name} (batch 32)"] = lambda o, text=text: make_engine(text, o)
        elif name == "sd3":
            from sd3 import graph_text as sd3_graph
            from sd3 import make_pipeline, sd3_plugin

            quiet_diffusers()
            sd3_plugin()
            make_pipeline(root)
            text = sd3_graph(root, 256)
            makers["tiny SD3, LoRA r = 4 (batch 1)"] = lambda o, text=text: make_engine(text, o)
        else:
            raise SystemExit(f"error: unknown student {name!r}; choose from digits, digits-lora, sd3")
    return makers


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=None, help="interleaved steps of each engine (default 20)")
    p.add_argument("--students", default="digits,digits-lora,sd3", help="which students, comma-separated")
    args = p.parse_args()
    setup(args, "student.gradient_checkpointing: plain / on, interleaved steps")
    rounds = args.rounds or (6 if args.quick else 20)
    print(
        "| student | plain ms / step | checkpointing ms / step | checkpointing / plain (IQR) | "
        "saved activations plain MB | checkpointing MB | saved |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, bench_plugin():
        for label, make in students(args.students.split(","), Path(tmp)).items():
            plain, ckpt = make([]), make(ON)
            saved = [saved_activation_bytes(e) for e in (plain, ckpt)]
            t = interleaved({"plain": plain.update, "on": ckpt.update}, rounds, warmup=2)
            ratios = [a / b for a, b in zip(t["on"], t["plain"], strict=True)]
            q = statistics.quantiles(ratios, n=4, method="inclusive")
            print(
                f"| {label} | {median_ms(t['plain']):.1f} | {median_ms(t['on']):.1f} | "
                f"{paired_ratio(t['on'], t['plain']):.3f} ({q[0]:.2f}-{q[2]:.2f}) | {saved[0] / MB:.2f} | "
                f"{saved[1] / MB:.2f} | {1 - saved[1] / saved[0]:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
