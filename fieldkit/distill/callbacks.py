"""Callbacks: what happens around the engine's loop, and what they tell each other.

A callback subclasses :class:`Callback` and overrides the hooks it needs. Every hook gets a :class:`RunView`
(the run as a callback sees it, not the engine), runs on every process (write when ``run.is_main`` only, and
decide the same way on every process when a hook calls a collective such as ``run.save_checkpoint()``), and
may call ``run.request_stop(reason)``.

The loop's events:

- ``on_run_start(run)``: before the first update of :meth:`Engine.steps`.
- ``on_update_end(run, report)``: after every optimizer update, applied or skipped (``report.applied``);
  ``report.means`` holds the interval's means when this update ends a ``run.log_every`` interval.
- ``on_run_end(run)``: when the loop reached ``run.steps`` or a stop was requested (not on errors, and not
  when the caller breaks out of the iterator).
- ``teardown(run)``: always, last, also after an error (close files, stop progress bars).

What callbacks made, published to every callback (``run.publish_*``), whichever published it:

- ``on_samples(run, grids)``: sample grids were drawn (by :class:`~fieldkit.distill.outputs.SampleGrids`).
- ``on_checkpoint(run, path)``: a checkpoint of this step exists at ``path``.
- ``on_evaluation(run, scores)``: the fields were scored on the routes' metrics.

A callback with state to keep across ``--resume`` returns it (JSON) from :meth:`Callback.state_dict`: it is
saved in every checkpoint (read when the checkpoint is written) and handed back to
:meth:`Callback.load_state_dict` before ``on_run_start`` of a resumed run. The default callbacks are in
:mod:`fieldkit.distill.outputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn

    from fieldkit.distill.engine import Update
    from fieldkit.eval.report import Score
    from fieldkit.graph.loader import Graph
    from fieldkit.graph.schema import RunSpec
    from fieldkit.protocols import Route


@dataclass(frozen=True)
class StepReport:
    """One optimizer update as the loop saw it: ``step`` counts applied updates so far; ``applied`` is False
    for an update skipped for a non-finite loss or gradient (then ``bad_steps`` counted it); ``update`` is
    its typed result and ``record`` its log record (what ``metrics.jsonl`` would hold for it alone);
    ``means`` the means of the logging interval this update ends (None when it ends none)."""

    step: int
    applied: bool
    bad_steps: int
    update: Update
    record: dict[str, Any]
    means: dict[str, Any] | None = None


@dataclass(frozen=True)
class SampleGrid:
    """One route's sample grid: the image (``[H, W, 3]`` uint8) and where it was written (None: not
    written)."""

    route: str
    step: int
    image: np.ndarray
    path: Path | None = None


class RunView(Protocol):
    """The run as a callback sees it: what it trains, where it writes, and what it may ask of the run."""

    @property
    def graph(self) -> Graph:
        """The graph being trained (``--set`` overrides applied)."""
        ...

    @property
    def run_spec(self) -> RunSpec:
        """The graph's ``run`` section."""
        ...

    @property
    def out(self) -> Path | None:
        """The run folder (None: the run writes nothing)."""
        ...

    @property
    def step(self) -> int:
        """Optimizer updates applied so far."""
        ...

    @property
    def bad_steps(self) -> int:
        """Updates skipped for a non-finite loss or gradient so far."""
        ...

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes."""
        ...

    @property
    def sharded(self) -> bool:
        """Whether the student is sharded (FSDP): its forwards are collectives every process runs."""
        ...

    @property
    def replays(self) -> bool:
        """Whether no-grad passes may be replayed from recordings (``run.trace``:
        :func:`fieldkit.backbones.traced.replayed_passes`); off with ``run.compile`` and FSDP."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the student lives."""
        ...

    @property
    def show_progress(self) -> bool:
        """Whether the console shows anything (off: ``--quiet``, or a library caller's choice)."""
        ...

    @property
    def processes(self) -> int:
        """How many processes train the run."""
        ...

    @property
    def parameters(self) -> tuple[int, int]:
        """The student's trained and total parameter counts (this process's shards under FSDP)."""
        ...

    @property
    def routes(self) -> Sequence[Route]:
        """The routes, in graph order."""
        ...

    def field_name(self, route: str) -> str | None:
        """The graph's name of the field that supervises ``route`` (None for a data-only route)."""
        ...

    def sigmas(self, route: str) -> Tensor:
        """The rollout schedule of ``route`` (computed for its data shape)."""
        ...

    def inference_model(self) -> nn.Module:
        """A plain copy of the student as exported (EMA weights, LoRA merged, eval mode); a collective
        under FSDP. Built once per step and shared by that step's callbacks (read it, do not change it);
        freed when they are done."""
        ...

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of this step (a collective); its path, or None without a run folder. It
        does not publish it: the caller does (``publish_checkpoint``)."""
        ...

    def barrier(self) -> None:
        """Wait for every process."""
        ...

    def request_stop(self, reason: str = "stop requested") -> None:
        """End the loop after the current update, as if ``run.steps`` were reached."""
        ...

    def publish_samples(self, grids: Sequence[SampleGrid]) -> None:
        """Tell every callback (``on_samples``) that ``grids`` were drawn."""
        ...

    def publish_checkpoint(self, path: Path) -> None:
        """Tell every callback (``on_checkpoint``) that the checkpoint at ``path`` exists."""
        ...

    def publish_scores(self, scores: Sequence[Score]) -> None:
        """Tell every callback (``on_evaluation``) the fields' scores."""
        ...


class Callback:
    """Hooks around the engine's loop; every hook does nothing unless overridden."""

    def on_run_start(self, run: RunView) -> None:
        """Before the first update."""

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        """After each optimizer update (applied or skipped)."""

    def on_samples(self, run: RunView, grids: Sequence[SampleGrid]) -> None:
        """After a callback drew sample grids."""

    def on_checkpoint(self, run: RunView, path: Path) -> None:
        """After a checkpoint of the current step exists at ``path``."""

    def on_evaluation(self, run: RunView, scores: Sequence[Score]) -> None:
        """After the fields were scored on the routes' metrics."""

    def on_run_end(self, run: RunView) -> None:
        """When the loop finished normally (``run.steps`` reached or a stop requested)."""

    def teardown(self, run: RunView) -> None:
        """Always, after everything else, also after an error."""

    def state_dict(self) -> dict[str, Any] | None:
        """What to keep in checkpoints (JSON); None: nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, from the checkpoint a run resumes from."""


def state_key(callback: Callback) -> str:
    """The name a callback's state is kept under in checkpoints: its class's qualified name."""
    return f"{type(callback).__module__}.{type(callback).__qualname__}"


def every(step: int, period: int | None) -> bool:
    """Whether ``step`` is a multiple of ``period`` (never for a period of None or 0)."""
    return period is not None and period > 0 and step % period == 0
