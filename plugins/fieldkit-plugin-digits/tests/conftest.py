"""Tests of the digits plugin: only this plugin loads (through its entry point), nothing else installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fieldkit.plugins.manager import ALLOW_ENV, reset_host


@pytest.fixture(autouse=True)
def _only_digits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(ALLOW_ENV, "digits")
    reset_host()
    yield
    reset_host()
