"""Fixtures every test of the repository shares (fieldkit's own and the plugins')."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

from fieldkit.plugins.manager import ALLOW_ENV, reset_host

# No wall-clock limit on a property test's examples (hypothesis's default is 200 ms each): on a loaded 2-core
# machine one slow example failed a correct test as "flaky".
settings.register_profile("fieldkit", deadline=None)
settings.load_profile("fieldkit")


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with a fresh plugin host that loads no installed plugin (``FIELDKIT_LOAD_PLUGINS``
    empty), so only fieldkit's own types exist; a test opts in by registering a plugin inline or through
    the ``use_plugins`` fixture."""
    monkeypatch.setenv(ALLOW_ENV, "")
    reset_host()
    yield
    reset_host()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The tests' models are tiny, and tiny ops run fastest on one thread: with two, each small matmul waits
    on the other core (a busy 2-core machine measured 12 ms instead of 15 us for a 32-wide linear)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
