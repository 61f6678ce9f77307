"""Experiment trackers through accelerate's tracker API, chosen by ``run.report_to`` (a name, a list, or
``all``: every tracker accelerate supports whose package is installed).

What they get (main process only): the graph as hyperparameters (flattened to ``run.lr``-style keys), the
means of every ``run.log_every`` updates (the same records as ``metrics.jsonl``), each sample grid as an
image (``samples/ROUTE``), and the end-of-run metrics (``eval/ROUTE/FIELD/METRIC``). Where the run is filed
comes from ``run.tracker`` (project, name, tags, dir), else the tracker's own environment variables
(``WANDB_PROJECT``, ``WANDB_NAME``, ``WANDB_TAGS``, ``WANDB_DIR``, ``CLEARML_PROJECT``, ...), else project
``fieldkit``, the run folder's name and ``RUN/trackers``. Where each tracker writes is printed at the start.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from fieldkit.distill.callbacks import Callback, RunView, SampleGrid, StepReport
from fieldkit.distill.outputs import graph_as_run
from fieldkit.errors import FieldkitError
from fieldkit.eval.results import Score
from fieldkit.graph.schema import TRACKERS, TrackerSpec

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker

#: The package each tracker needs (``run.report_to: all`` takes those installed).
PACKAGES = {name: name for name in TRACKERS}
#: The environment variables a tracker reads for the project, the run's name, its tags and its folder: they
#: apply where ``run.tracker`` leaves a value unset (accelerate passes the project itself, so fieldkit reads
#: them and passes them on).
ENVIRONMENT: dict[str, dict[str, str]] = {
    "wandb": {"project": "WANDB_PROJECT", "name": "WANDB_NAME", "tags": "WANDB_TAGS", "dir": "WANDB_DIR"},
    "mlflow": {"project": "MLFLOW_EXPERIMENT_NAME"},
    "comet_ml": {"project": "COMET_PROJECT_NAME"},
    "clearml": {"project": "CLEARML_PROJECT", "name": "CLEARML_TASK"},
    "swanlab": {"project": "SWANLAB_PROJECT"},
}
DEFAULT_PROJECT = "fieldkit"


@dataclass(frozen=True)
class Where:
    """Where one tracker files the run: its project, the run's name and tags, and its local folder."""

    project: str
    name: str
    tags: tuple[str, ...]
    dir: Path


def where(tracker: str, spec: TrackerSpec, run_folder: Path) -> Where:
    """``run.tracker``'s values, else the tracker's environment variables, else the defaults."""
    env = {key: os.environ.get(var) or None for key, var in ENVIRONMENT.get(tracker, {}).items()}
    tags = spec.tags or [t.strip() for t in (env.get("tags") or "").split(",") if t.strip()]
    return Where(
        spec.project or env.get("project") or DEFAULT_PROJECT,
        spec.name or env.get("name") or run_folder.name,
        tuple(tags),
        Path(spec.dir or env.get("dir") or run_folder / "trackers"),
    )


def _tracker(name: str, at: Where) -> GeneralTracker:
    """accelerate's tracker ``name``, given what it supports of ``at`` (its constructor's arguments)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls: Any = LOGGER_TYPE_TO_CLASS[name]
    tags = list(at.tags) or None
    if name != "tensorboard":
        at.dir.mkdir(parents=True, exist_ok=True)
    made: GeneralTracker
    match name:
        case "tensorboard":  # the run's folder: DIR/PROJECT/NAME
            made = cls(at.name, at.dir / at.project)
        case "wandb":
            made = cls(at.project, name=at.name, tags=tags, dir=str(at.dir))
        case "mlflow":
            tag_map = {t: "true" for t in at.tags} or None
            made = cls(experiment_name=at.project, logging_dir=str(at.dir), run_name=at.name, tags=tag_map)
        case "aim":
            made = cls(at.name, str(at.dir), experiment=at.project)
        case "clearml":
            made = cls(at.project, project_name=at.project, task_name=at.name, tags=tags)
        case "dvclive":
            made = cls(None, dir=str(at.dir))
        case "swanlab":
            made = cls(at.project, experiment_name=at.name, logdir=str(at.dir))
        case "trackio":
            made = cls(at.project, name=at.name)
        case _:  # comet_ml: the project only
            made = cls(at.project)
    return made


def location(name: str, tracker: GeneralTracker, at: Where) -> str:
    """One line that says where a started tracker writes (and how to look at it)."""
    if name == "tensorboard":
        return f"tensorboard: {getattr(tracker, 'logging_dir', at.dir)} (view: tensorboard --logdir {at.dir})"
    run = getattr(tracker, "run", None)
    url = getattr(run, "url", None) if run is not None else None
    folder = getattr(run, "dir", None) if run is not None else None
    place = url or folder or at.dir
    return f"{name}: project {at.project}, run {at.name}: {place}"


def installed(names: list[str]) -> list[str]:
    """``names`` with ``all`` replaced by every tracker whose package is installed; a named tracker whose
    package is missing is one clear error."""
    import importlib.util

    if "all" in names:
        found = [n for n in TRACKERS if importlib.util.find_spec(PACKAGES[n]) is not None]
        if not found:
            raise FieldkitError(
                "run.report_to is 'all' but no tracker package is installed",
                hint="pip install 'fieldkit[trackers]' (tensorboard and wandb), or remove run.report_to",
            )
        names = list(dict.fromkeys([*(n for n in names if n != "all"), *found]))
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise FieldkitError(
                f"run.report_to has {name!r} but the {PACKAGES[name]} package is not installed",
                hint=f"pip install {PACKAGES[name]} ('fieldkit[trackers]' has tensorboard and wandb), or "
                "remove it from run.report_to",
            )
    return names


def check_logins(names: list[str]) -> None:
    """Refuse, before anything is built, a tracker of ``names`` that would stop the run at its start for a
    login it lacks: ``wandb`` online with no API key (``WANDB_API_KEY``, an identity token file, the key in
    wandb's settings file, or ``wandb login``'s .netrc entry for its host). Reads files and the environment
    only: nothing is sent over the network."""
    if "wandb" in names and importlib.util.find_spec("wandb") is not None:
        problem = _wandb_login_problem()
        if problem is not None:
            raise FieldkitError(
                f"run.report_to has 'wandb' but {problem}: wandb would stop the run at its start (or wait "
                "at a login prompt)",
                hint="run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to log locally "
                "and `wandb sync` later, or remove wandb from run.report_to",
            )


def _wandb_login_problem() -> str | None:
    """Why wandb would ask for a login (None: it is offline or disabled, or it has a key)."""
    import configparser

    settings: dict[str, str] = {}
    folder = os.environ.get("WANDB_CONFIG_DIR") or str(Path("~/.config/wandb").expanduser())
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(folder) / "settings")
        settings = dict(parser["default"]) if parser.has_section("default") else {}
    except (configparser.Error, OSError, UnicodeDecodeError):
        settings = {}
    mode = (os.environ.get("WANDB_MODE") or settings.get("mode") or "online").strip().lower()
    disabled = os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes")
    if mode in ("offline", "dryrun", "disabled") or disabled:
        return None
    if (
        os.environ.get("WANDB_API_KEY")
        or os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
        or settings.get("api_key")
    ):
        return None
    host = os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or "https://api.wandb.ai"
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth

        if read_netrc_auth(host=host):
            return None
    except ImportError:  # another wandb: read the .netrc entry itself
        import netrc
        from urllib.parse import urlparse

        try:
            path = os.environ.get("NETRC") or str(Path("~/.netrc").expanduser())
            if netrc.netrc(path).authenticators(urlparse(host).hostname or host):
                return None
        except (OSError, netrc.NetrcParseError):
            pass
    except Exception:  # an unreadable .netrc: wandb reports it itself
        return None
    return f"wandb has no API key for {host} and WANDB_MODE is {mode!r}"


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


def make_trackers(names: list[str], spec: TrackerSpec, run_folder: Path) -> list[tuple[GeneralTracker, str]]:
    """Start the trackers of ``names`` (``run.report_to``) filed as ``spec`` says; with each, the line that
    says where it writes."""
    started = []
    for name in installed(names):
        at = where(name, spec, run_folder)
        tracker = _tracker(name, at)
        tracker.start()
        started.append((tracker, location(name, tracker, at)))
    return started


class Trackers(Callback):
    """Feeds ``run.report_to``'s trackers (see the module docstring): the interval means the loop reports,
    the grids and scores other callbacks publish."""

    def __init__(self) -> None:
        self.trackers: list[GeneralTracker] = []

    def on_run_start(self, run: RunView) -> None:
        names = run.run_spec.report_to
        if not names or not run.is_main or run.out is None:
            return
        started = make_trackers(list(names), run.run_spec.tracker, run.out)
        self.trackers = [tracker for tracker, _ in started]
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            "\n".join(f"tracker {line}" for _, line in started), markup=False
        )
        hparams = flat_hparams(graph_as_run(run))
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

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        if self.trackers and report.applied and report.means is not None:
            self._log(report.means, report.step)

    def on_samples(self, run: RunView, grids: Sequence[SampleGrid]) -> None:
        for grid in grids:
            for tracker in self.trackers:
                extra = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
                tracker.log_images({f"samples/{grid.route}": grid.image[None]}, step=grid.step, **extra)

    def on_evaluation(self, run: RunView, scores: Sequence[Score]) -> None:
        values = {f"eval/{s.route}/{s.field}/{k}": v for s in scores for k, v in s.values.items()}
        if self.trackers and values:
            self._log(values, run.step)

    def teardown(self, run: RunView) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
