"""Shared test helpers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from torch import Tensor
from toy_world import DistillWorld

from fieldkit.cond import Cond
from fieldkit.field import FunctionField
from fieldkit.plugins.manager import ALLOW_ENV, PluginHost, get_host, reset_host


class CountingField(FunctionField):
    """Wraps a field and records every call: ``calls``, the batch size and the Cond each call saw."""

    def __init__(self, fn) -> None:
        super().__init__(fn, name="counting")
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.conds: list[Cond] = []
        self.sigmas: list[Tensor] = []

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        self.calls += 1
        self.batch_sizes.append(int(x.shape[0]))
        self.conds.append(cond)
        self.sigmas.append(sigma.clone())
        return super().forward(x, sigma, cond)


@pytest.fixture(scope="session")
def counting():
    """The :class:`CountingField` class (stateless, safe under hypothesis): ``counting(fn)`` wraps fn."""
    return CountingField


# -- plugins: no test autoloads what happens to be installed ---------------------------------------------

PLUGIN_DISTS = Path(__file__).parent / "plugins"
PLUGIN_MODULES = ("fieldkit_plugin_example", "fieldkit_plugin_tempered")


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tests/plugins/fieldkit-plugin-{example,tempered,broken}, pip-installed into a folder on ``sys.path``.

    A real ``pip install`` (wheel build, dist-info, entry points) found through ``importlib.metadata`` as
    any installed plugin is, while the venv itself is left alone: these plugins exist for the tests and are
    never installed into a user's environment. Built from copies, so no build files land in the repo.
    Subprocesses see the plugins with ``PYTHONPATH`` set to this folder.
    """
    src = tmp_path_factory.mktemp("plugin-src")
    site = tmp_path_factory.mktemp("plugin-site")
    names = ("fieldkit-plugin-example", "fieldkit-plugin-tempered", "fieldkit-plugin-broken")
    for name in names:
        shutil.copytree(PLUGIN_DISTS / name, src / name)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    cmd += ["--disable-pip-version-check", "--target", str(site)]
    cmd += [str(src / name) for name in names]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"pip install of the test plugins failed:\n{result.stderr}"
    sys.path.insert(0, str(site))
    for module in [m for m in sys.modules if m.split(".")[0] in PLUGIN_MODULES]:
        del sys.modules[module]  # an older copy installed in the environment must not stand in for these
    yield site
    sys.path.remove(str(site))
    for module in [m for m in sys.modules if m.split(".")[0] in PLUGIN_MODULES]:
        del sys.modules[module]


@pytest.fixture
def use_plugins(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], PluginHost]:
    """``use_plugins("example,broken")`` loads those installed plugins (``None``: every installed one, the
    :func:`plugin_site` ones included) into a fresh host and returns it."""

    def use(names: str | None) -> PluginHost:
        if names is None:
            monkeypatch.delenv(ALLOW_ENV, raising=False)
        else:
            monkeypatch.setenv(ALLOW_ENV, names)
        reset_host()
        return get_host()

    return use


# -- distillation engine: the closed-form world of tests/toy_world.py -------------------------------


@pytest.fixture
def distill_world() -> Iterator[PluginHost]:
    """The host with the :class:`DistillWorld` plugin registered inline (removed afterwards)."""
    host = get_host()
    host.register(DistillWorld(), "distill-world")
    try:
        yield host
    finally:
        host.unregister("distill-world")


@pytest.fixture(scope="session")
def quickstart_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two short runs of the quickstart world through the CLI (the first with grids at steps 2 and 4, the
    second shorter, with a cosine schedule), shared by the report and export tests (read-only)."""
    from test_cli_run import DISTILL, invoke

    root = tmp_path_factory.mktemp("runs")
    graph = root / "graph.yaml"
    graph.write_text(DISTILL)
    cosine = ["--set", "run.lr_schedule=cosine", "--set", "run.steps=2"]
    # A session fixture is set up before the tests' own autouse fixtures: load no installed plugin here too.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ALLOW_ENV, "")
        reset_host()
        for name, extra in (("constant", ["--set", "run.sample_every=2"]), ("cosine", cosine)):
            result = invoke("distill", str(graph), "--out", str(root / name), "--no-progress", *extra)
            assert result.exit_code == 0, result.output
    reset_host()
    return root / "constant", root / "cosine"
