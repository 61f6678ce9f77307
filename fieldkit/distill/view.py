"""What callbacks see of a run: :class:`EngineView`, the :class:`~fieldkit.distill.callbacks.RunView` an
:class:`~fieldkit.distill.engine.Engine` hands its callbacks, instead of the engine itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fieldkit.distill.callbacks import SampleGrid
from fieldkit.eval.report import Score
from fieldkit.graph.loader import Graph
from fieldkit.graph.schema import RunSpec
from fieldkit.protocols import Route

if TYPE_CHECKING:
    from fieldkit.distill.engine import Engine


class EngineView:
    """The :class:`~fieldkit.distill.callbacks.RunView` of an engine's run: its session's state read live,
    checkpoints written with the loop's state, and what callbacks publish handed to every callback."""

    def __init__(self, engine: Engine) -> None:
        self._engine, self._s = engine, engine.session
        # (step, the inference copy that step's callbacks share), or None between steps
        self._copy: tuple[int, nn.Module] | None = None

    @property
    def graph(self) -> Graph:
        return self._s.graph

    @property
    def run_spec(self) -> RunSpec:
        return self._s.run_spec

    @property
    def out(self) -> Path | None:
        return self._s.out

    @property
    def step(self) -> int:
        return self._s.step

    @property
    def bad_steps(self) -> int:
        return self._s.bad_steps

    @property
    def is_main(self) -> bool:
        return bool(self._s.accelerator.is_main_process)

    @property
    def sharded(self) -> bool:
        return self._s.sharded

    @property
    def replays(self) -> bool:
        return self._s.replay

    @property
    def device(self) -> torch.device:
        device: torch.device = self._s.accelerator.device
        return device

    @property
    def show_progress(self) -> bool:
        return self._s.show_progress

    @property
    def processes(self) -> int:
        return int(self._s.accelerator.num_processes)

    @property
    def parameters(self) -> tuple[int, int]:
        return sum(p.numel() for p in self._s.params), sum(p.numel() for p in self._s.student.parameters())

    @property
    def routes(self) -> Sequence[Route]:
        return self._s.routes

    def field_name(self, route: str) -> str | None:
        return self._s.field_name(route)

    def sigmas(self, route: str) -> Tensor:
        return self._s.sigmas[route]

    def inference_model(self) -> nn.Module:
        """One copy per step, shared by every callback of that step (the grids, the export and the
        evaluation at the end of a run): built once, dropped by :meth:`drop_copy` when the step's
        callbacks are done. Read it; do not change it."""
        if self._copy is None or self._copy[0] != self._s.step:
            self._copy = None  # free the old copy before building the new one
            self._copy = (self._s.step, self._s.inference_model())
        return self._copy[1]

    def drop_copy(self) -> None:
        """Free the step's inference copy (the engine calls it after each step's callbacks and at the end)."""
        self._copy = None

    def save_checkpoint(self) -> Path | None:
        return self._s.save(self._engine.loop_state())

    def barrier(self) -> None:
        self._s.accelerator.wait_for_everyone()

    def request_stop(self, reason: str = "stop requested") -> None:
        self._engine.request_stop(reason)

    def publish_samples(self, grids: Sequence[SampleGrid]) -> None:
        self._engine.publish("on_samples", grids)

    def publish_checkpoint(self, path: Path) -> None:
        self._engine.publish("on_checkpoint", path)

    def publish_scores(self, scores: Sequence[Score]) -> None:
        self._engine.scores = list(scores)
        self._engine.publish("on_evaluation", scores)
