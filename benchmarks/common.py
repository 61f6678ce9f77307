"""Shared pieces of the benchmark scripts: the command line, the header, interleaved timing and a tiny world.

Every script prints ratios measured in one process. Timings on shared machines drift by tens of percent
between runs, so the variants of one comparison are timed in interleaved rounds (noise hits all alike) and
summarised by their medians. ``--threads`` sets PyTorch's intra-op threads: on a CPU that other jobs also
load, OpenMP threads spin-wait on each other and one thread gives steadier numbers than two.

The world is the digits world's shapes without its data: canvases 1 x 8 x 16, 16 text tokens of 384 dims
(MiniLM), a pooled 384-vector and a source canvas; the student and teacher are fieldkit's MMDiT with the
digits teachers' config (about 1.1 M parameters, ``examples/digits/teachers/t2i/config.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fieldkit import Cond, loads_graph
from fieldkit.data import Batch
from fieldkit.distill.engine import Engine
from fieldkit.plugins import Params, get_host, hookimpl

SHAPE = (1, 8, 16)
TOKENS, WIDTH = 16, 384
# The digits student and teachers (examples/digits/teachers/t2i/config.json): 1.09 M parameters.
DIGITS_MODEL = (
    "{in_channels: 1, sample_size: [8, 16], patch_size: 2, hidden: 96, depth: 4, heads: 4, use_source: true}"
)


# -- command line and header ------------------------------------------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every script shares: --quick, --threads, --device, --bf16."""
    p = argparse.ArgumentParser(
        description=(doc or "").splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer configurations and repeats")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (gpu.sh runs the scripts with cuda)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (run.precision: bf16)")
    return p


def setup(args: argparse.Namespace, what: str = "") -> torch.device:
    """Apply ``--threads``, print the header line (date, machine, torch, threads, device) and return the
    device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = f"{os.cpu_count()} cores, {platform.machine()}"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, {where}"
    precision = "bf16 autocast" if getattr(args, "bf16", False) else "fp32"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"{stamp}  torch {torch.__version__}, {torch.get_num_threads()} threads, {device.type} ({where}), "
        f"{precision}{'  ' + what if what else ''}"
    )
    return device


def autocast(args: argparse.Namespace, device: torch.device) -> Callable[[], Any]:
    """A factory of the autocast context ``--bf16`` asks for (a no-op context without it)."""
    if getattr(args, "bf16", False):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# -- timing -----------------------------------------------------------------------------------------------


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued device work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(
    fn: Callable[[], Any],
    device: torch.device | str | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds ``fn()`` takes, device work included, on ``timer`` (wall-clock; ``time.process_time`` for the
    CPU time of this process, steadier on a loaded machine)."""
    sync(device)
    start = timer()
    fn()
    sync(device)
    return timer() - start


def interleaved(
    steps: dict[str, Callable[[], Any]],
    rounds: int,
    *,
    warmup: int = 2,
    device: torch.device | str | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each step in ``rounds`` interleaved rounds (each round runs every step once, in turn), on
    ``timer`` (see :func:`clock`)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(clock(step, device, timer))
    return times


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of ``numerator[i] / denominator[i]`` (robust to load that drifts between
    rounds)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


# -- the benchmark world ------------------------------------------------------------------------------------


class TextBucket:
    """Random conditions with the digits world's shapes: token states, mask, pooled vector, source canvas."""

    shape = SHAPE

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return Batch(text_cond(batch_size, generator))


def text_cond(batch_size: int, generator: torch.Generator | None = None) -> Cond:
    """A Cond of ``batch_size`` random digits-world conditions (with nulls for guidance)."""
    gen = generator or torch.Generator().manual_seed(0)
    text = torch.randn((batch_size, TOKENS, WIDTH), generator=gen)
    mask = torch.ones((batch_size, TOKENS), dtype=torch.bool)
    pooled = torch.randn((batch_size, WIDTH), generator=gen)
    source = torch.zeros((batch_size, *SHAPE))
    nulls = {"text": torch.zeros(1, TOKENS, WIDTH), "pooled": torch.zeros(1, WIDTH)}
    return Cond(text=text, text_mask=mask, pooled=pooled, source=source, nulls=nulls)


class BenchPlugin:
    @hookimpl
    def fieldkit_register_datasets(self, register):
        register("bench.text", lambda p, ctx: TextBucket(), Params)


@contextlib.contextmanager
def bench_plugin() -> Iterator[None]:
    """Register the ``bench.text`` data bucket for the duration of the block."""
    host = get_host()
    host.register(BenchPlugin(), "bench")
    try:
        yield
    finally:
        host.unregister("bench")


def graph_text(
    *,
    steps: int = 1000,
    batch: int = 16,
    guidance: float = 1.0,
    method: str = "{type: danceopd, query: low, k: 1}",
    rollout_steps: int = 16,
    model: str = DIGITS_MODEL,
    device: str = "cpu",
    bf16: bool = False,
    train: str = "full",
    init: str = "init",
) -> str:
    """A one-route DanceOPD graph: a random MMDiT teacher (guided when ``guidance != 1``), a student copy of a
    second random MMDiT (``init="teacher"``: a copy of the teacher, as the digits graph does),
    ``rollout_steps`` Euler steps on SD3's shift-3 schedule."""
    target = "guided" if guidance != 1.0 else "teacher"
    precision = "bf16" if bf16 else "fp32"
    return f"""
fields:
  teacher: {{type: fieldkit.mmdit, seed: 1, config: {model}}}
  guided: {{type: guidance, field: teacher, w: {guidance}}}
  init: {{type: fieldkit.mmdit, seed: 2, config: {model}}}
routes:
  t2i: {{field: {target}, data: {{type: bench.text}}}}
student: {{init: {init}, train: {train}}}
method: {method}
flow: {{steps: {rollout_steps}, shift: 3.0}}
run: {{steps: {steps}, batch_size: {batch}, lr: 1.0e-4, device: {device}, precision: {precision}}}
"""


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Give the zero-initialised output layers weights, so every pass does real work."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=gen) * 0.02).to(p))


def make_engine(text: str, overrides: Sequence[str] = (), out: Path | None = None) -> Engine:
    """An Engine over ``text`` with ``--set`` style ``overrides``, its teacher and student given non-zero
    outputs; it writes into ``out`` (a run folder) when given, else nothing.

    Call inside :func:`bench_plugin`."""
    engine = Engine(loads_graph(text, overrides), out, write=out is not None, show_progress=False)
    perturb(engine.session.student, 0)
    perturb(engine.session.ctx.field("teacher"), 1)
    return engine


class PassLog:
    """Records every forward of the student and the teacher (batch size, with or without grad) via hooks."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.recording = True
        for name, module in modules.items():
            module.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args):
            if self.recording:
                self.calls.append((name, int(args[0].shape[0]), torch.is_grad_enabled()))

        return hook

    def take(self) -> list[tuple[str, int, bool]]:
        """The passes recorded since the last take; recording pauses until :meth:`resume`."""
        calls, self.calls, self.recording = self.calls, [], False
        return calls

    def resume(self) -> None:
        self.recording = True


def replay(
    models: dict[str, torch.nn.Module],
    calls: list[tuple[str, int, bool]],
    make_inputs: Callable[[int], tuple[Any, ...]],
    autocast: Callable[[], Any] = contextlib.nullcontext,
    device: torch.device | str | None = None,
    rollout: Callable[[], Any] = contextlib.nullcontext,
) -> float:
    """Seconds to replay recorded passes bare: the same models, batch sizes and grad modes, nothing else.

    ``rollout`` is entered once around each run of consecutive no-grad student passes (the engine rolls a
    LoRA student out inside ``merged_lora``, so its bare passes are the merged ones). Inputs are made before
    the clock starts; gradients are dropped after it stops."""
    inputs = {n: make_inputs(n) for _, n, _ in calls}
    sync(device)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        in_rollout = False
        for name, n, grad in calls:
            rolling = name == "student" and not grad
            if rolling and not in_rollout:
                stack.enter_context(torch.inference_mode())
                stack.enter_context(rollout())
            elif not rolling and in_rollout:
                stack.close()
            in_rollout = rolling
            if grad:  # as the engine: the forward under autocast, the backward after it
                with autocast():
                    out = models[name](*inputs[n])
                out.float().square().mean().backward()
            else:
                with torch.inference_mode(), autocast():
                    models[name](*inputs[n])
    sync(device)
    seconds = time.perf_counter() - start
    for model in models.values():
        model.zero_grad(set_to_none=True)
    return seconds


def engine_autocast(engine: Engine) -> Callable[[], Any]:
    """A factory of the autocast context the engine runs its forwards in (``run.precision``)."""
    from fieldkit.distill.session import precision_context

    return lambda: precision_context(engine.session.run_spec.precision, engine.session.accelerator.device)


def param_bytes(module: torch.nn.Module, trainable: bool | None = None) -> int:
    """Bytes of ``module``'s parameters (only the trainable or frozen ones when ``trainable`` is set)."""
    return sum(
        p.numel() * p.element_size()
        for p in module.parameters()
        if trainable is None or p.requires_grad == trainable
    )
