"""Attention speed: fieldkit's ``sdpa`` backend against the ``naive`` softmax and a bare PyTorch call.

The forward alone and the forward + backward of ``attention(q, k, v, mask)`` over several shapes, the median
of repeated timings, every ratio measured in this one process (timings on shared machines drift between
runs; ratios hold); backends are timed in interleaved rounds::

    python benchmarks/attention.py            # full sweep
    python benchmarks/attention.py --quick    # a few shapes, fewer repeats
    python benchmarks/attention.py --device cuda --dtype bf16   # + the pinned kernels and xformers

``naive / sdpa`` is the speed-up of the fused kernel; ``sdpa / torch`` is fieldkit's dispatch overhead
against calling ``F.scaled_dot_product_attention`` directly (1.00 = none). On CUDA every backend that can
run (``fieldkit.attention.available_backends``: flash, efficient, cuDNN, math, xformers when installed) gets
a column of its own. The SD3 student's attention processor is compared with diffusers' in
``benchmarks/sd3.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import interleaved, median_ms, parser, setup
from rich.console import Console
from rich.table import Table

from fieldkit.attention import attention, available_backends

QUICK = [(1, 1, 16, 32), (8, 4, 64, 32), (8, 4, 256, 32), (4, 4, 1024, 64)]
FULL = [*QUICK, (32, 4, 64, 32), (8, 4, 128, 64), (8, 8, 256, 64), (2, 4, 2048, 64)]
# SD3-medium's heads (24 x 64) at 512 px (1024 latent tokens + 154 text tokens) and 1024 px (4096 + 154).
CUDA = [(8, 4, 256, 32), (2, 24, 1178, 64), (2, 24, 4250, 64), (1, 24, 4250, 64)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_step(
    fn: Callable[..., torch.Tensor],
    shape: tuple[int, int, int, int],
    masked: bool,
    backward: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[], None]:
    """A closure running ``fn(q, k, v, mask)`` (and ``.sum().backward()``) on fixed random inputs."""
    b, h, length, d = shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(b, h, length, d, generator=gen).to(device, dtype).requires_grad_(backward)
        for _ in range(3)
    )
    mask = None
    if masked:  # key padding: sample i keeps its first length - i * length / (2b) keys
        keep = length - torch.arange(b) * length // (2 * b)
        mask = (torch.arange(length) < keep[:, None])[:, None, None, :].to(device)

    def step() -> None:
        if backward:
            for t in (q, k, v):
                t.grad = None
            fn(q, k, v, mask).float().sum().backward()
        else:
            with torch.inference_mode():
                fn(q, k, v, mask)

    return step


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--no-mask", action="store_true", help="only the unmasked case")
    args = p.parse_args()
    device = setup(args)
    dtype = DTYPES[args.dtype]
    shapes = CUDA if device.type == "cuda" else QUICK if args.quick else FULL
    repeats = args.repeats or (15 if args.quick else 40)

    backends: dict[str, Callable[..., torch.Tensor]] = {
        "torch": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
    }
    names = ["sdpa", "naive"]
    if device.type == "cuda":
        extra = [n for n in available_backends(device, dtype) if n not in ("sdpa", "naive", "sdpa-math")]
        names = ["sdpa", *extra, "naive"]
    for name in names:
        backends[name] = lambda q, k, v, m, name=name: attention(q, k, v, m, backend=name)

    console = Console(width=160)
    console.print(f"{repeats} repeats, {args.dtype}; each cell: forward ms / forward + backward ms")
    table = Table("B, H, L, D", "mask", *backends, "naive / sdpa fwd", "naive / sdpa f+b", "sdpa / torch f+b")
    for shape in shapes:
        for masked in (False,) if args.no_mask else (False, True):
            cells, ms = [], {}
            for backward in (False, True):
                steps = {}
                for name, fn in backends.items():
                    try:
                        steps[name] = make_step(fn, shape, masked, backward, device, dtype)
                        steps[name]()
                    except Exception as err:
                        # A pinned kernel that refuses this shape or mask: say so in its cell.
                        steps.pop(name, None)
                        ms[(name, backward)] = str(err).splitlines()[0][:12] or "refused"
                t = interleaved(steps, repeats, warmup=2, device=device)
                ms.update({(name, backward): median_ms(v) for name, v in t.items()})
            for name in backends:
                fwd, both = ms.get((name, False)), ms.get((name, True))
                cells.append(
                    f"{fwd:.3f} / {both:.3f}"
                    if isinstance(fwd, float) and isinstance(both, float)
                    else f"n/a ({fwd if isinstance(fwd, str) else both})"
                )

            def ratio(a, b, backward, ms=ms):
                x, y = ms.get((a, backward)), ms.get((b, backward))
                return f"{x / y:.2f}" if isinstance(x, float) and isinstance(y, float) else "-"

            table.add_row(
                ", ".join(map(str, shape)),
                "key pad" if masked else "-",
                *cells,
                ratio("naive", "sdpa", False) + "x",
                ratio("naive", "sdpa", True) + "x",
                ratio("sdpa", "torch", True),
            )
    console.print(table)


if __name__ == "__main__":
    main()
