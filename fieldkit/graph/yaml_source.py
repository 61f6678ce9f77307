"""Safe YAML reading that remembers the line of every key, so errors can point into the file.

Only the safe loader is used: tags such as ``!!python/object`` are refused, and so are duplicate keys
(which a plain loader would silently overwrite). Booleans are YAML 1.2's, ``true`` and ``false`` only:
``yes``, ``no``, ``on`` and ``off`` stay words (YAML 1.1 made them booleans, so a route named ``on`` became
``True`` and ``steps: on`` a 1). Reading is bounded: the file's size, how deep values nest,
and how many values the document holds once aliases are expanded (a few hundred bytes of nested aliases
would otherwise expand to billions of values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fieldkit.errors import GraphError
from fieldkit.files import MiB, read_text

Loc = tuple[str | int, ...]

MAX_BYTES = 2 * MiB
"""The largest graph file read (graphs are a few kilobytes; data lives in the files they name)."""
MAX_VALUES = 50_000
"""The most values (mappings, lists and scalars, aliases counted at every use) a document may hold."""
MAX_DEPTH = 64
"""The deepest nesting of mappings and lists."""


@dataclass
class YamlSource:
    """A parsed YAML document and where each of its keys and items sits (1-based lines)."""

    data: Any
    path: str
    lines: dict[Loc, int] = field(default_factory=dict)
    overrides: dict[Loc, str] = field(default_factory=dict)
    """``--set`` texts by the key path they set: errors there point at the override, not into the file."""

    def line(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest ancestor that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)

    def where(self, loc: Loc) -> str:
        """``file:line`` for a location (just ``file`` when the line is unknown, ``file (--set ...)`` when the
        value there, or the key itself, came from a ``--set`` override)."""
        loc = tuple(loc)
        in_file = loc
        while in_file and in_file not in self.lines:
            in_file = in_file[:-1]
        step = len(in_file) + 1  # the first key of ``loc`` that the file does not have
        for path, text in self.overrides.items():
            if loc[: len(path)] == path or (in_file != loc and path[:step] == loc[:step]):
                return f"{self.path} (--set {text})"
        line = self.line(loc)
        return f"{self.path}:{line}" if line is not None else self.path


_PLAIN_TAGS: dict[type[yaml.Node], str] = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


MERGE_TAG = "tag:yaml.org,2002:merge"
BOOL_TAG = "tag:yaml.org,2002:bool"


def _refuse_tag(node: yaml.Node, path: str) -> GraphError:
    return GraphError(
        f"{path}:{node.start_mark.line + 1}: the tag {node.tag!r} is not allowed",
        hint="graphs are plain YAML data; fieldkit never constructs Python objects from YAML tags",
    )


class _Budget:
    """Counts the values built so far; raises a GraphError past :data:`MAX_VALUES`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.left = MAX_VALUES
        self.scalars = yaml.SafeLoader("")  # one constructor for every scalar of the document

    def spend(self, node: yaml.Node, depth: int) -> None:
        self.left -= 1
        if self.left < 0:
            raise GraphError(
                f"{self.path}: the graph expands to more than {MAX_VALUES:,} values (aliases of aliases?)",
                hint="a graph is small; write values out instead of nesting YAML aliases",
            )
        if depth > MAX_DEPTH:
            raise GraphError(
                f"{self.path}:{node.start_mark.line + 1}: values nest more than {MAX_DEPTH} levels deep",
                hint="a graph nests a few levels; check the brackets there",
            )


def _to_python(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: str, budget: _Budget | None = None
) -> Any:
    budget = budget or _Budget(path)
    budget.spend(node, len(loc))
    lines[loc] = node.start_mark.line + 1
    plain_tag = _PLAIN_TAGS.get(type(node))
    if plain_tag is not None and node.tag != plain_tag:
        raise _refuse_tag(node, path)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        merged: dict[Any, tuple[Any, int]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *anchor`: the anchor's keys, where this mapping has none
                _merge(value_node, loc, lines, path, budget, merged)
                continue
            key = _to_python(key_node, (*loc, "<key>"), {}, path, budget)
            if not isinstance(key, str | int):
                raise GraphError(
                    f"{path}:{key_node.start_mark.line + 1}: mapping keys must be strings, got {key!r}"
                )
            if key in out:
                raise GraphError(
                    f"{path}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
                    f" (first at line {lines[(*loc, key)]})",
                    hint="each key may appear once in a mapping; remove or rename one of them",
                )
            out[key] = _to_python(value_node, (*loc, key), lines, path, budget)
            lines[(*loc, key)] = key_node.start_mark.line + 1
        for key, (value, line) in merged.items():
            if key not in out:
                out[key] = value
                lines.setdefault((*loc, key), line)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*loc, i), lines, path, budget) for i, item in enumerate(node.value)]
    if node.tag == BOOL_TAG and node.value.lower() not in ("true", "false"):
        return node.value  # YAML 1.2: yes, no, on and off are words, not booleans
    try:
        return budget.scalars.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError:
        raise _refuse_tag(node, path) from None


def _merge(
    node: yaml.Node,
    loc: Loc,
    lines: dict[Loc, int],
    path: str,
    budget: _Budget,
    into: dict[Any, tuple[Any, int]],
) -> None:
    """The keys of a merge key's mapping (or of each mapping in its list, the first one winning) into
    ``into``, with the line each was written on; anything else there is refused."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            raise GraphError(
                f"{path}:{source.start_mark.line + 1}: a merge key '<<' takes a mapping or a list of "
                "mappings (usually an alias such as *defaults)",
                hint="write `<<: *anchor` where &anchor names a mapping",
            )
        own = lines.get(loc)
        value = _to_python(source, loc, lines, path, budget)
        if own is not None:
            lines[loc] = own
        for key, item in value.items():
            into.setdefault(key, (item, lines.get((*loc, key), source.start_mark.line + 1)))


def parse_value(text: str, where: str) -> Any:
    """One YAML value (a ``--set`` value), read with the same bounds as a graph; blank text is ``None``."""
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    try:
        return parse_yaml(text, where).data
    except GraphError as exc:
        if "malformed YAML" not in exc.message:
            raise
        raise GraphError(
            f"{where}: the value is not valid YAML", hint="quote strings with ':' or '#'"
        ) from None


def parse_yaml(text: str, path: str = "<string>") -> YamlSource:
    """Parse one YAML document safely, keeping line numbers; any YAML error becomes a GraphError."""
    if len(text) > MAX_BYTES:
        raise GraphError(
            f"{path}: the graph is {len(text):,} characters, more than the {MAX_BYTES:,} allowed",
            hint="a graph is small; data belongs in the files its buckets read",
        )
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise GraphError(
            f"{path}: values nest too deeply to read", hint="a graph nests a few levels; check the brackets"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise GraphError(
            f"{path}{line}: malformed YAML: {problem}", hint="fix the YAML syntax there"
        ) from None
    except yaml.YAMLError as exc:
        raise GraphError(f"{path}: malformed YAML: {exc}") from None
    if node is None:
        raise GraphError(f"{path}: the file is empty", hint="a graph needs at least a 'fields' section")
    lines: dict[Loc, int] = {}
    data = _to_python(node, (), lines, path)
    return YamlSource(data=data, path=path, lines=lines)


def read_yaml(path: str | Path) -> YamlSource:
    """Read and parse a YAML file; a missing, unreadable, irregular or oversized file is a GraphError."""
    return parse_yaml(read_text(path, MAX_BYTES, "graph file", GraphError), str(Path(path)))
