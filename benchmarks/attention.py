"""Attention speed: fieldkit's ``sdpa`` backend against the ``naive`` softmax and a bare PyTorch call.

Forward + backward of ``attention(q, k, v, mask)`` over several shapes, the median of repeated timings,
every ratio measured in this one process (timings on shared machines drift between runs; ratios hold)::

    python benchmarks/attention.py            # full sweep
    python benchmarks/attention.py --quick    # a few shapes, fewer repeats

``naive / sdpa`` is the speed-up of the fused kernel; ``sdpa / torch`` is fieldkit's dispatch overhead
against calling ``F.scaled_dot_product_attention`` directly (1.00 = none).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fieldkit.attention import attention

QUICK = [(1, 1, 16, 32), (8, 4, 64, 32), (8, 4, 256, 32), (4, 4, 1024, 64)]
FULL = [*QUICK, (32, 4, 64, 32), (8, 4, 128, 64), (8, 8, 256, 64), (2, 4, 2048, 64)]


def median_ms(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time in ms of each step, timed in interleaved rounds so machine noise hits all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def fwd_bwd(
    fn: Callable[..., torch.Tensor], shape: tuple[int, int, int, int], masked: bool
) -> Callable[[], None]:
    """A closure running ``fn(q, k, v, mask).sum().backward()`` on fixed random inputs."""
    b, h, length, d = shape
    q, k, v = (torch.randn(b, h, length, d, requires_grad=True) for _ in range(3))
    mask = None
    if masked:  # key padding: sample i keeps its first length - i * length / (2b) keys
        keep = length - torch.arange(b) * length // (2 * b)
        mask = (torch.arange(length) < keep[:, None])[:, None, None, :]

    def step() -> None:
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v, mask).sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement")
    args = parser.parse_args()
    shapes = QUICK if args.quick else FULL
    repeats = args.repeats or (15 if args.quick else 40)

    console = Console(width=120)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} repeats, fwd+bwd, fp32"
    )
    table = Table("B, H, L, D", "mask", "torch ms", "sdpa ms", "naive ms", "naive / sdpa", "sdpa / torch")
    backends = {
        "torch": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        "sdpa": lambda q, k, v, m: attention(q, k, v, m, backend="sdpa"),
        "naive": lambda q, k, v, m: attention(q, k, v, m, backend="naive"),
    }
    for shape in shapes:
        for masked in (False, True):
            ms = median_ms({name: fwd_bwd(fn, shape, masked) for name, fn in backends.items()}, repeats)
            table.add_row(
                ", ".join(map(str, shape)),
                "key pad" if masked else "-",
                f"{ms['torch']:.3f}",
                f"{ms['sdpa']:.3f}",
                f"{ms['naive']:.3f}",
                f"{ms['naive'] / ms['sdpa']:.2f}x",
                f"{ms['sdpa'] / ms['torch']:.2f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
