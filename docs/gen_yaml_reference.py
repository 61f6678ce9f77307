"""Regenerate the tables of docs/yaml.md from the code: the graph sections and every built-in type.

The tables between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` are rewritten from the
pydantic models (GraphSpec and its sections) and from fieldkit's own plugin registrations, so the reference
cannot drift from what ``fieldkit validate`` accepts.

    python docs/gen_yaml_reference.py          # rewrite docs/yaml.md
    python docs/gen_yaml_reference.py --check  # exit 1 if docs/yaml.md is out of date (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fieldkit import __version__, builtin
from fieldkit.graph.refs import FieldRef
from fieldkit.graph.schema import (
    FlowSpec,
    FsdpSpec,
    GraphSpec,
    LoraSpec,
    OptimizerSpec,
    RouteSpec,
    RunSpec,
    StudentSpec,
    TypedSpec,
)
from fieldkit.plugins.manager import BUILTIN_NAME, PluginHost
from fieldkit.plugins.registry import KINDS

YAML_MD = Path(__file__).parent / "yaml.md"

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("top level", GraphSpec),
    ("routes.NAME", RouteSpec),
    ("student", StudentSpec),
    ("student.lora", LoraSpec),
    ("flow", FlowSpec),
    ("run", RunSpec),
    ("run.optimizer", OptimizerSpec),
    ("run.fsdp", FsdpSpec),
]

SECTION_OF = {model: where for where, model in SECTIONS}

_BOUNDS = ((at.Ge, ">=", "ge"), (at.Gt, ">", "gt"), (at.Le, "<=", "le"), (at.Lt, "<", "lt"))


def type_text(annotation: Any) -> str:
    """A short reader's name for a parameter's type: ``int``, ``list of field name``, ``a | b``."""
    if annotation is FieldRef:
        return "field name"
    if annotation is TypedSpec:
        return "{type: NAME, ...}"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_text(a) for a in args)
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"mapping of name to {type_text(args[1])}"
    if annotation in SECTION_OF:
        return f"mapping (see `{SECTION_OF[annotation]}`)"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(annotation.model_fields) + "}"
    return getattr(annotation, "__name__", str(annotation))


def constraints_text(info: FieldInfo) -> str:
    """``>= 0, < 1`` from a field's constraints."""
    parts = []
    for item in info.metadata:
        for kind, symbol, attr in _BOUNDS:
            if isinstance(item, kind):
                parts.append(f"{symbol} {getattr(item, attr)}")
        if isinstance(item, at.MinLen):
            parts.append(f"at least {item.min_length}")
    return ", ".join(parts)


def default_text(info: FieldInfo) -> str:
    """The default as it would be written in YAML, or ``required``."""
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if isinstance(value, TypedSpec):
        return f"`{{type: {value.type}}}`"
    if isinstance(value, BaseModel):
        return "all defaults"
    return f"`{json.dumps(value)}`"


def params_table(model: type[BaseModel]) -> str:
    """One markdown table row per key of ``model``."""
    if not model.model_fields:
        return "No parameters."
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        kind = type_text(info.annotation)
        bounds = constraints_text(info)
        if bounds:
            kind += f" ({bounds})"
        meaning = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | {default_text(info)} | {meaning} |")
    return "\n".join(rows)


def sections_block() -> str:
    parts = []
    for where, model in SECTIONS:
        doc = " ".join((model.__doc__ or "").split())
        parts.append(f"### `{where}`\n\n{doc}\n\n{params_table(model)}")
    return "\n\n".join(parts)


def types_block() -> str:
    host = PluginHost()
    host.register(builtin, BUILTIN_NAME, __version__)
    registry = host.registry
    parts = []
    for kind in KINDS:
        names = registry.names(kind)
        if not names:
            continue
        parts.append(f"### {kind.capitalize()}s")
        for name in names:
            reg = registry.get(kind, name)
            params_doc = " ".join((reg.params.__doc__ or "").split())
            doc = " ".join(d for d in dict.fromkeys((reg.description, params_doc)) if d)
            parts.append(f"#### `{name}` ({kind})\n\n{doc}\n\n{params_table(reg.params)}")
    return "\n\n".join(parts)


BLOCKS = {"sections": sections_block, "types": types_block}


def render(text: str) -> str:
    """``text`` with every generated block rewritten."""
    for name, make in BLOCKS.items():
        begin, end = f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{YAML_MD}: no '{begin}' ... '{end}' block")
        block = f"{begin}\n<!-- edit docs/gen_yaml_reference.py, not this block -->\n\n{make()}\n\n{end}"
        text = pattern.sub(lambda _, block=block: block, text)  # a function: no backslash escapes
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/yaml.md is out of date")
    args = parser.parse_args(argv)
    current = YAML_MD.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{YAML_MD} is out of date: run python docs/gen_yaml_reference.py", file=sys.stderr)
            return 1
        return 0
    YAML_MD.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
