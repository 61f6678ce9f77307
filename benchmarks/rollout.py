"""Early-stopped rollout: the rollout NFEs a DanceOPD step needs against a full 16-step rollout, and the time
it saves.

A query at index ``i`` (``i ~ Beta(5, 2)`` over the N = 16 pre-step states, ``i = min(floor(u N), N - 1)``)
needs the state after ``i`` Euler steps: ``i`` forwards of the student. ``fieldkit.flow.rollout_states``
stops at the batch's last queried index and drops each sample from the batch once its own last index is
reached. So with batch B:

- sequential NFE (forwards in a row) = ``max_b i_b``: the step's latency on a device that is not full;
- sample-forwards (rows pushed through the model) = ``sum_b i_b``: the work on a device that is full (a CPU).

Counted three ways: the exact expectation from the binned Beta(5, 2) probabilities, the mean over many
draws of ``fieldkit.distill.queries.sample_indices``, and the NFE / rows the rollouts below actually run.
Then the time of ``rollout_states`` (the student under inference mode) against a full rollout of the same
batch and a rollout that stops at the last index but keeps every sample, interleaved::

    python benchmarks/rollout.py [--quick] [--threads 1]
"""

from __future__ import annotations

import statistics

import torch
from common import (
    DIGITS_MODEL,
    SHAPE,
    autocast,
    interleaved,
    median_ms,
    paired_ratio,
    parser,
    perturb,
    setup,
    text_cond,
)
from rich.console import Console
from rich.table import Table

from fieldkit.distill.queries import BETA, index_probabilities, sample_indices
from fieldkit.flow import euler_sample, rollout_states, sigma_schedule
from fieldkit.models.mmdit import MMDiT, MMDiTConfig

STEPS = 16


def expected_max(probs: torch.Tensor, batch: int) -> float:
    """``E[max of batch iid indices]`` from the index distribution: ``sum_i P(max > i)``."""
    cdf = probs.cumsum(0).clamp(max=1.0)
    return float((1 - cdf.pow(batch))[:-1].sum())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 40; 12 with --quick)")
    args = p.parse_args()
    device = setup(args, f"{STEPS}-step rollout, query index ~ Beta(5, 2)")
    rounds = args.rounds or (12 if args.quick else 40)
    console = Console(width=120)

    probs = index_probabilities(STEPS, *BETA["low"])
    mean_index = float((torch.arange(STEPS, dtype=torch.float64) * probs).sum())
    print(
        f"E[u N] = 16 * 5/7 = {16 * 5 / 7:.2f} (the continuous index); "
        f"E[i] = E[min(floor(u N), N - 1)] = {mean_index:.2f} forwards per sample"
    )
    counts = Table("batch B", "", "sequential NFE", "sample-forwards", "per sample", "full rollout", "saved")
    gen = torch.Generator().manual_seed(0)
    draws = 20000
    for batch in (1, 16):
        exact_seq, exact_rows = expected_max(probs, batch), batch * mean_index
        idx = sample_indices(STEPS, batch * draws, 1, "low", gen).view(draws, batch)
        seq = idx.max(1).values.double().mean().item()
        rows = idx.sum(1).double().mean().item()
        for label, s, r in (("exact", exact_seq, exact_rows), (f"{draws} draws", seq, rows)):
            counts.add_row(
                str(batch),
                label,
                f"{s:.2f} of {STEPS}",
                f"{r:.1f} of {batch * STEPS}",
                f"{r / batch:.2f}",
                f"{STEPS} / {batch * STEPS}",
                f"{1 - s / STEPS:.0%} / {1 - r / (batch * STEPS):.0%}",
            )
    console.print("rollout forwards per DanceOPD step (K = 1)")
    console.print(counts)

    torch.manual_seed(0)
    model = MMDiT(MMDiTConfig.model_validate(_yaml(DIGITS_MODEL))).to(device).eval()
    perturb(model, 0)
    sigmas = sigma_schedule(STEPS, 3.0).to(device)
    amp = autocast(args, device)
    timing = Table(
        "batch B",
        "full ms",
        "stop at max ms",
        "early-stopped ms",
        "NFE run",
        "rows run",
        "early / full",
        "time saved",
    )
    for batch in (1, 16):
        cond = text_cond(batch).to(device)
        noise = torch.randn((batch, *SHAPE), device=device)
        draws_gen = torch.Generator().manual_seed(1)
        state = {"idx": sample_indices(STEPS, batch, 1, "low", draws_gen)}
        nfe, rows = [], []

        def full(cond=cond, noise=noise):
            with torch.inference_mode(), amp():
                euler_sample(model, noise, cond, sigmas)

        def stop_at_max(cond=cond, noise=noise, state=state):
            with torch.inference_mode(), amp():
                euler_sample(model, noise, cond, sigmas, stop_at=int(state["idx"].max()))

        def early(cond=cond, noise=noise, state=state, nfe=nfe, rows=rows, batch=batch, gen=draws_gen):
            with torch.inference_mode(), amp():
                _, n = rollout_states(model, noise, cond, sigmas, state["idx"])
            nfe.append(n)
            rows.append(int(state["idx"].max(1).values.sum()))
            state["idx"] = sample_indices(STEPS, batch, 1, "low", gen)  # the next round's draw

        t = interleaved({"full": full, "stop": stop_at_max, "early": early}, rounds, warmup=2, device=device)
        ratio = paired_ratio(t["early"], t["full"])
        timing.add_row(
            str(batch),
            f"{median_ms(t['full']):.1f}",
            f"{median_ms(t['stop']):.1f}",
            f"{median_ms(t['early']):.1f}",
            f"{statistics.mean(nfe):.2f}",
            f"{statistics.mean(rows):.1f}",
            f"{ratio:.2f}",
            f"{1 - ratio:.0%}",
        )
    console.print(f"time of the rollout (student forwards under inference mode, {rounds} interleaved rounds)")
    console.print(timing)


def _yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    main()
