"""Experiment trackers through accelerate's tracker API, chosen by ``run.report_to: [tensorboard, wandb]``.

What they get (main process only): the graph as hyperparameters (flattened to ``run.lr``-style keys), the
means of every ``run.log_every`` updates (the same records as ``metrics.jsonl``), each sample grid as an
image (``samples/ROUTE``), and the end-of-run metrics (``eval/ROUTE/FIELD/METRIC``). tensorboard writes to
``RUN/trackers/``; wandb follows its own settings (``WANDB_MODE=offline``, ``WANDB_DIR``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from fieldkit.distill.callbacks import Callback, StepReport, _every, log_now
from fieldkit.distill.interval import IntervalMeans
from fieldkit.errors import FieldkitError
from fieldkit.eval.report import Score

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker

    from fieldkit.distill.engine import Engine

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def flat_hparams(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"run": {"lr": 1e-3}}`` -> ``{"run.lr": 1e-3}``; lists and None become strings, as trackers want."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat_hparams(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, bool | int | float | str):
        return {prefix: value}
    return {prefix: str(value)}


def make_trackers(names: list[str], run_name: str, logging_dir: Path) -> list[GeneralTracker]:
    """Start accelerate's trackers of ``names`` (as ``Accelerator.init_trackers`` does)."""
    import importlib.util

    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    trackers = []
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise FieldkitError(
                f"run.report_to has {name!r} but the {PACKAGES[name]} package is not installed",
                hint="pip install 'fieldkit[trackers]', or remove it from run.report_to",
            )
        cls = LOGGER_TYPE_TO_CLASS[name]
        tracker = cls(run_name, logging_dir) if cls.requires_logging_directory else cls(run_name)
        tracker.start()
        trackers.append(tracker)
    return trackers


class Trackers(Callback):
    """Feeds ``run.report_to``'s trackers (see the module docstring)."""

    def __init__(self) -> None:
        self.trackers: list[GeneralTracker] = []
        self.interval = IntervalMeans()
        self.grids_step = -1  # the step whose grids were last sent (the end of a run may repeat it)

    def on_run_start(self, engine: Engine) -> None:
        names = engine.run_spec.report_to
        if not names or not engine.accelerator.is_main_process or engine.out is None:
            return
        self.trackers = make_trackers(list(names), engine.graph.name, engine.out / "trackers")
        hparams = flat_hparams(engine.graph.spec.model_dump(mode="json"))
        for tracker in self.trackers:
            tracker.store_init_configuration(hparams)

    def _log(self, values: dict[str, Any], step: int) -> None:
        scalars = {
            k: float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"
        }
        for tracker in self.trackers:
            tracker.log(scalars, step=step)

    def _log_grids(self, engine: Engine) -> None:
        assert engine.out is not None
        if self.grids_step == engine.step:
            return
        self.grids_step = engine.step
        for png in sorted((engine.out / "samples").glob(f"step-{engine.step:08d}-*.png")):
            route = png.stem.split("-", 2)[2]
            image = np.asarray(Image.open(png).convert("RGB"))
            for tracker in self.trackers:
                extra = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
                tracker.log_images({f"samples/{route}": image[None]}, step=engine.step, **extra)

    def on_update_end(self, engine: Engine, report: StepReport) -> None:
        if not self.trackers or not report.applied:
            return
        self.interval.add(report.record)
        if log_now(engine, report) and (means := self.interval.flush()) is not None:
            self._log(means, report.step)
        if _every(report.step, engine.run_spec.sample_every):  # SampleGrids ran before this callback
            self._log_grids(engine)

    def on_evaluation(self, engine: Engine, scores: list[Score]) -> None:
        values = {f"eval/{s.route}/{s.field}/{k}": v for s in scores for k, v in s.values.items()}
        if self.trackers and values:
            self._log(values, engine.step)

    def on_run_end(self, engine: Engine) -> None:
        if self.trackers:
            self._log_grids(engine)

    def teardown(self, engine: Engine) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
