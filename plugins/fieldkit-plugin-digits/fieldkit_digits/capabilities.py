"""The digits world's edits split into N = 2, 4 and 8 capabilities, each a refinement of the previous.

An edit is a cell ``(op, side)``: a local op on the left or right side, or a global op (side ``None``). A
capability is a set of cells that one bucket filter draws (``digits.local_edit`` with ``ops`` / ``sides``, or
``digits.global_edit`` with ``ops``); a partition's capabilities cover every cell exactly once:

- N = 2: local, global;
- N = 4: local_left, local_right, global_tone (invert, bold), global_shape (mirror, flip);
- N = 8: replace_left, remove_left, add_left, replace_right, remove_right, add_right, global_tone,
  global_shape.

A user holding one base and a LoRA per capability holds one of these partitions (examples/digits/teachers/
caps.py writes a LoRA recipe per capability and a student graph per partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fieldkit_digits.world import GLOBAL_OPS, LOCAL_OPS, SIDES

Cell = tuple[str, str | None]
#: Every edit of the world: each local op on each side, and each global op.
CELLS: frozenset[Cell] = frozenset(
    {(op, side) for op in LOCAL_OPS for side in SIDES} | {(op, None) for op in GLOBAL_OPS}
)


@dataclass(frozen=True)
class Capability:
    """The edits ``ops`` x ``sides`` of one kind (``None``: all of them; global edits have no side)."""

    name: str
    kind: str  # "local" or "global"
    ops: tuple[str, ...] | None = None
    sides: tuple[str, ...] | None = None

    def cells(self) -> frozenset[Cell]:
        """The edits this capability draws."""
        ops = self.ops or (LOCAL_OPS if self.kind == "local" else GLOBAL_OPS)
        sides: tuple[str | None, ...] = (self.sides or SIDES) if self.kind == "local" else (None,)
        return frozenset((op, side) for op in ops for side in sides)

    def data(self, **extra: Any) -> dict[str, Any]:
        """The graph's ``data`` of a bucket that draws exactly these edits (``extra``: its other keys)."""
        spec: dict[str, Any] = {"type": f"digits.{self.kind}_edit", **extra}
        if self.ops is not None:
            spec["ops"] = list(self.ops)
        if self.sides is not None:
            spec["sides"] = list(self.sides)
        return spec


def _local(op: str | None, side: str | None) -> Capability:
    name = "_".join(part for part in (op or "local", side) if part)
    return Capability(name, "local", None if op is None else (op,), None if side is None else (side,))


TONE = Capability("global_tone", "global", ("invert", "bold"))
SHAPE = Capability("global_shape", "global", ("mirror", "flip"))
#: N -> the capabilities of the N-way split, each partition a refinement of the one before.
PARTITIONS: dict[int, tuple[Capability, ...]] = {
    2: (_local(None, None), Capability("global", "global")),
    4: (*(_local(None, side) for side in SIDES), TONE, SHAPE),
    8: (*(_local(op, side) for side in SIDES for op in LOCAL_OPS), TONE, SHAPE),
}


def capabilities() -> dict[str, Capability]:
    """Every capability of every partition by name (one shared by two partitions is listed once)."""
    return {c.name: c for part in PARTITIONS.values() for c in part}
