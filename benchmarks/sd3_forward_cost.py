"""What one forward of the tiny SD3 transformer costs, and which part of it a trainer could still remove.

A DanceOPD step on the tiny SD3 student is about 15 forward-equivalents of its transformer (the rollout's
10.9 forwards, the teacher's, the student's forward and backward: docs/performance.md, section 12), so the
step's speed is the forward's. This script times no-grad forwards of the transformer of ``sd3.py`` (two
joint blocks of width 64, fp32, 256 image tokens) in interleaved rounds, in CPU seconds of this process (a
loaded machine still gives steady figures), at batch 1 and 2 with the side-by-side benchmark's 77 + 256
text tokens, and at batch 1 with 77 and with 1 text token. Two differences of those medians split it:

- per-call cost, ``2 T(batch 1) - T(batch 2)``: the work that does not grow with the batch (Python and
  dispatch through diffusers' modules, launch of tiny ops), which batching or compiling removes;
- text stream, ``T(333 tokens) - T(1 token)``: the prompt's tokens through every joint block, which
  neither trainer can drop without changing the transformer's output (SD3 attends to the padded T5
  tokens).

    python benchmarks/sd3_forward_cost.py [--threads 1] [--rounds 15] [--calls 20]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from common import interleaved, parser, setup
from sd3 import TINY_SD3

CASES = {  # name: (batch, text tokens)
    "batch 1, 77 + 256 text tokens": (1, 333),
    "batch 2, 77 + 256 text tokens": (2, 333),
    "batch 1, 77 text tokens": (1, 77),
    "batch 1, 1 text token": (1, 1),
}


def forwards(model: torch.nn.Module, batch: int, tokens: int, calls: int) -> Callable[[], None]:
    """``calls`` no-grad forwards at ``batch`` rows and ``tokens`` text tokens (fixed random inputs)."""
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(batch, 16, 32, 32, generator=gen),
        "encoder_hidden_states": torch.randn(batch, tokens, TINY_SD3["joint_attention_dim"], generator=gen),
        "pooled_projections": torch.randn(batch, TINY_SD3["pooled_projection_dim"], generator=gen),
        "timestep": torch.full((batch,), 500.0),
    }

    def run() -> None:
        with torch.no_grad():
            for _ in range(calls):
                model(**inputs, return_dict=False)

    return run


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=20, help="forwards per case in a round")
    args = p.parse_args()
    setup(args, "tiny SD3 transformer, no-grad forwards, CPU time of this process")
    from fieldkit_sd3.field import SD3Field

    model = SD3Field.build_transformer(TINY_SD3, seed=0).eval()
    runs = {name: forwards(model, *shape, args.calls) for name, shape in CASES.items()}
    rounds = interleaved(runs, args.rounds, warmup=1, timer=time.process_time)
    times = {name: [1e3 * t / args.calls for t in ts] for name, ts in rounds.items()}  # ms per forward
    med = {name: statistics.median(t) for name, t in times.items()}
    print("\n| forward | CPU ms (median) | IQR |\n|---|---|---|")
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        print(f"| {name} | {med[name]:.3f} | {q[0]:.3f}-{q[2]:.3f} |")
    one, two = med["batch 1, 77 + 256 text tokens"], med["batch 2, 77 + 256 text tokens"]
    per_call = 2 * one - two
    text = one - med["batch 1, 1 text token"]
    print(f"\nper-call cost, 2 T(batch 1) - T(batch 2): {per_call:.3f} ms, {per_call / one:.0%} of a forward")
    print(f"text stream, T(333 tokens) - T(1 token): {text:.3f} ms, {text / one:.0%} of a forward")


if __name__ == "__main__":
    main()
