"""``--set a.b=c`` overrides applied to a graph's data before validation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from fieldkit.errors import GraphError
from fieldkit.graph.yaml_source import parse_value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"run.lr=1e-3"`` -> ``(["run", "lr"], 0.001)``; the value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    path = [part for part in key.strip().split(".")]
    if not sep or not all(path):
        raise GraphError(f"--set {text!r}: expected KEY.PATH=VALUE", hint="for example --set run.steps=100")
    if not raw.strip():
        return path, ""
    return path, parse_value(raw, f"--set {text!r}")


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """A copy of ``data`` with every override applied in order (missing mappings are created)."""
    if not overrides:
        return data
    if not isinstance(data, dict):
        raise GraphError("--set needs a graph whose top level is a mapping")
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise GraphError(
                    f"--set {text!r}: {where} is not a mapping, so it has no key {path[i + 1]!r}"
                )
            node = child
        node[path[-1]] = value
    return out
