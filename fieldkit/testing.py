"""Helpers for plugins' test suites: load no installed plugin, register a plugin inline, check what a plugin's
objects return as fieldkit checks it during a run (the ``check_*`` functions of
:mod:`fieldkit.plugin_outputs`), silence diffusers, and ask a fresh process what fieldkit loads through the
entry points. Nothing here is imported by fieldkit itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fieldkit.plugin_outputs import (
    check_batch,
    check_gradient_reaches,
    check_loss,
    check_metric_values,
    check_plan,
    check_velocity,
)
from fieldkit.plugins.manager import ALLOW_ENV, PluginHost, get_host, reset_host

if TYPE_CHECKING:
    import click
    from torch import Tensor, nn

    from fieldkit.cond import Cond

__all__ = [
    "HEAVY",
    "assert_follows_pipeline",
    "assert_shares_weights",
    "check_batch",
    "check_gradient_reaches",
    "check_loss",
    "check_metric_values",
    "check_plan",
    "check_velocity",
    "distill_tiny_graph",
    "entry_point_report",
    "image_fixture",
    "invoke",
    "make_tiny_example",
    "memory_rows_missing",
    "no_installed_plugins",
    "plugin_fixtures",
    "quiet_diffusers",
    "random_image",
    "random_lora_student",
    "recorded_calls",
    "registered",
    "run_script",
]

#: Modules a plugin must not import when fieldkit loads it (they take seconds).
HEAVY = ("diffusers", "transformers", "peft")


@contextmanager
def no_installed_plugins() -> Iterator[None]:
    """A fresh plugin host that loads no installed plugin (``FIELDKIT_LOAD_PLUGINS`` empty), only fieldkit's
    own types; a test then registers what it needs inline (:func:`registered`). Restored afterwards."""
    before = os.environ.get(ALLOW_ENV)
    os.environ[ALLOW_ENV] = ""
    reset_host()
    try:
        yield
    finally:
        if before is None:
            del os.environ[ALLOW_ENV]
        else:
            os.environ[ALLOW_ENV] = before
        reset_host()


@contextmanager
def registered(module: ModuleType, name: str) -> Iterator[PluginHost]:
    """The plugin host with ``module`` registered inline as plugin ``name`` (removed afterwards)."""
    host = get_host()
    host.register(module, name, getattr(module, "__version__", ""))
    try:
        yield host
    finally:
        host.unregister(name)


def quiet_diffusers() -> None:
    """No progress bars and errors only from diffusers and transformers."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def run_script(path: Path, args: list[str]) -> None:
    """Run the script at ``path`` (a benchmark's ``main(argv)``) in this process, with ``args``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(args)


def memory_rows_missing(out: str, docs: Path, rows: int) -> list[str]:
    """What a memory benchmark printed (``out``: ``rows`` table lines and two ``N bytes`` figures, each
    checked) that the page ``docs`` does not hold."""
    import re

    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(lines) == rows, f"the script printed {len(lines)} table lines, not {rows}"
    measured = re.findall(r"[\d,]{6,} bytes", out)
    assert len(measured) == 2, f"the script printed {len(measured)} byte counts, not 2"
    text = docs.read_text(encoding="utf-8")
    return [row for row in [*lines, *measured] if row not in text]


def random_lora_student(base: Any, rank: int = 4, alpha: float = 8, seed: int = 5, std: float = 0.1) -> Any:
    """A LoRA student (``rank``, ``alpha``) of the field ``base`` whose LoRA weights are random (``std``,
    drawn from ``seed``), in eval mode: a student whose adapter changes the velocity, for export tests."""
    import torch

    from fieldkit.distill.student import make_student
    from fieldkit.graph.schema import LoraSpec, StudentSpec

    lora = LoraSpec(rank=rank, alpha=alpha)
    student = make_student(base, StudentSpec(init="base", train="lora", lora=lora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    student.eval()
    return student


def assert_shares_weights(fields: list[Any], at_most: float = 0.4) -> None:
    """That ``fields`` (a base and adapters over it) hold under ``at_most`` of the bytes of their copies."""
    import copy

    import torch

    from fieldkit.backbones.field import parameter_bytes

    shared = parameter_bytes(torch.nn.ModuleList(fields))
    copies = parameter_bytes(torch.nn.ModuleList(copy.deepcopy(f) for f in fields))
    assert shared < at_most * copies, f"{shared} shared bytes, {copies} in copies"


@contextmanager
def recorded_calls(module: nn.Module) -> Iterator[list[tuple[dict[str, Any], Any]]]:
    """Every forward of ``module`` inside the block, in order: its keyword arguments and its output (a
    pipeline's transformer calls, for :func:`assert_follows_pipeline`)."""
    calls: list[tuple[dict[str, Any], Any]] = []
    handle = module.register_forward_hook(
        lambda _m, _a, kwargs, out: calls.append((kwargs, out)), with_kwargs=True
    )
    try:
        yield calls
    finally:
        handle.remove()


def assert_follows_pipeline(
    field: Any,
    calls: list[tuple[dict[str, Any], Any]],
    sigmas: Tensor,
    conds: list[Cond],
    packed: tuple[int, int] | None = None,
) -> None:
    """That ``field`` casts where the pipeline casts: on every one of the pipeline's transformer ``calls``
    (:func:`recorded_calls`; ``len(conds)`` a step, the step's ``j``-th with ``conds[j]`` at
    ``sigmas[step]``), ``field(x, sigma, cond)`` at the pipeline's own state ``x`` returns the transformer's
    velocity to the bit, ``|v_fieldkit - v_pipeline| = 0``.

    ``x`` and the velocity are the call's ``hidden_states`` and output, or for a packed transformer (FLUX,
    Qwen-Image: ``packed`` the latent's ``(H, W)``) their first ``(H / 2)(W / 2)`` tokens unpacked (an
    edit's source tokens follow them). Equality holds when every input the field hands the transformer
    (state, timestep, guidance, text, ids, source) is the pipeline's bit for bit; a cast that rounds
    elsewhere (the timestep as ``sigma`` instead of ``1000 sigma``) moves the velocity by a bfloat16 step
    of its inputs.
    """
    import torch

    from fieldkit.backbones.packing import unpack

    def latent(t: Tensor) -> Tensor:
        if packed is None:
            return t.float()
        h, w = packed
        return unpack(t[:, : (h // 2) * (w // 2)].float(), h, w)

    steps = sigmas.numel() - 1
    assert len(calls) == steps * len(conds), f"{len(calls)} transformer calls, not {steps} x {len(conds)}"
    for i, (kwargs, out) in enumerate(calls):
        step, branch = divmod(i, len(conds))
        x, want = latent(kwargs["hidden_states"]), latent(out[0])
        with torch.inference_mode():
            got = field(x, sigmas[step].expand(x.shape[0]), conds[branch])
        assert torch.equal(got, want), (
            f"step {step}, call {branch}: fieldkit's velocity differs from the pipeline's by "
            f"{(got - want).abs().max():.3g}; a cast differs from the pipeline's"
        )


def plugin_fixtures(module: ModuleType, name: str) -> tuple[Any, Any]:
    """The two fixtures a diffusers plugin's conftest starts with: ``<name>_plugin``, the host with
    ``module`` registered inline as plugin ``name`` (removed afterwards), and ``_quiet_diffusers``, session
    wide and autouse (:func:`quiet_diffusers`). A conftest binds both:
    ``sd3_plugin, _quiet_diffusers = plugin_fixtures(fieldkit_sd3, "sd3")``."""
    import pytest

    def plugin() -> Iterator[PluginHost]:
        """The host with this plugin registered inline (removed afterwards)."""
        with registered(module, name) as host:
            yield host

    def quiet() -> None:
        quiet_diffusers()

    return (
        pytest.fixture(plugin, name=f"{name}_plugin"),
        pytest.fixture(quiet, scope="session", autouse=True, name="_quiet_diffusers"),
    )


def random_image(seed: int, size: tuple[int, int] = (96, 64)) -> Any:
    """A random RGB PIL image of ``size`` (width, height), drawn from ``seed``."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_fixture(size: tuple[int, int] = (96, 64)) -> Any:
    """A session fixture ``make_image``: :func:`random_image` with ``size`` (width, height) by default. A
    conftest binds it: ``make_image = image_fixture((64, 64))``."""
    import pytest

    def make_image() -> Callable[..., Any]:
        """:func:`random_image` with this plugin's image size by default, for tests."""
        return lambda seed, size=size: random_image(seed, size)

    return pytest.fixture(make_image, scope="session", name="make_image")


def entry_point_report(name: str) -> dict[str, Any]:
    """In a fresh process with ``FIELDKIT_LOAD_PLUGINS=name``: the types plugin ``name`` registered, the load
    failures, and which of :data:`HEAVY` importing fieldkit and loading the plugin imported."""
    code = (
        "import sys, json\n"
        "import fieldkit, fieldkit.cli\n"
        "from fieldkit.plugins import get_host\n"
        "host = get_host()\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        f"print(json.dumps({{'types': host.registry.by_plugin().get({name!r}), 'failures': [str(f) for f in "
        "host.failures], 'heavy': heavy}))\n"
    )
    env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": name}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def make_tiny_example(examples: Path, out: Path) -> Path:
    """Run ``examples/<backbone>/make_tiny.py OUT`` (the tiny random copy of a backbone's examples)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny", examples / "make_tiny.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([str(out)])
    return out


def invoke(cli: click.Group, *args: str) -> str:
    """``cli ARGS`` (the ``fieldkit`` click group, which a test passes in) through click's runner; its
    output, after asserting it exited 0."""
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def distill_tiny_graph(cli: click.Group, graph: Path, run: Path) -> None:
    """What a user does with a tiny example graph through ``cli`` (the ``fieldkit`` group), each step
    asserted: validate it, build it (``validate --build``, before any feature cache exists), dry-run it
    (neither writes a file, a feature cache included),
    train it into ``run`` (two finite steps, the student folder written), sample the student from its folder,
    and export its LoRA for the pipelines' ``load_lora_weights``."""
    invoke(cli, "validate", str(graph))
    before = sorted(str(p) for p in graph.parent.rglob("*"))
    assert "built on" in invoke(cli, "validate", str(graph), "--build")
    invoke(cli, "distill", str(graph), "--dry-run", "--no-progress")
    written = sorted(set(str(p) for p in graph.parent.rglob("*")) - set(before))
    assert not written, f"validate --build and --dry-run wrote {written} (a feature cache?)"
    invoke(cli, "distill", str(graph), "--out", str(run), "--no-progress")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["finite"] for r in records)
    assert (run / "student" / "config.json").is_file()
    grid = run / "student.png"
    invoke(cli, "sample", str(graph), "--checkpoint", str(run / "student"), "-n", "2", "-o", str(grid))
    assert grid.is_file()
    invoke(cli, "export", str(run), "--format", "peft", "-o", str(run / "lora"))
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()


def assert_make_tiny_refuses(cli: click.Group, command: str, tmp_path: Path, subfolder: str) -> None:
    """A plugin's ``make-tiny`` ``command`` writes nothing into a folder holding a user's file (at
    ``FOLDER/subfolder/model_index.json``, where it would write) and refuses a seed torch cannot take."""
    from click.testing import CliRunner

    mine = tmp_path / "m" / subfolder / "model_index.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    refused = CliRunner().invoke(cli, [command, str(tmp_path / "m")])
    assert refused.exit_code == 2 and "already exists and is not empty" in refused.output, refused.output
    assert mine.read_text() == "mine" and len(list(tmp_path.rglob("*"))) == 3  # m, its folder, the file
    seed = CliRunner().invoke(cli, [command, "--seed", str(2**64), str(tmp_path / "new")])
    assert seed.exit_code == 2 and "0<=x<=9223372036854775807" in seed.output, seed.output
    assert not (tmp_path / "new").exists()
