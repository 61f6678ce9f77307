"""Means over a logging interval: what ``metrics.jsonl`` and the trackers get every ``run.log_every`` steps.

The mean of a key is over the updates of the interval that have it: ``loss/ROUTE`` over the updates that
routed to ROUTE, ``loss`` and timings over every update. ``step`` and ``lr`` are the last update's;
``updates`` counts the updates averaged; ``route`` joins the routes seen.
"""

from __future__ import annotations

from typing import Any

LAST = ("step", "lr", "finite", "bad_steps")


class IntervalMeans:
    """Collects log records with :meth:`add`; :meth:`flush` returns their mean record and starts anew."""

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        #: The interval's records so far (what a checkpoint keeps, so a resumed run logs the same means).
        self.records: list[dict[str, Any]] = list(records or [])

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def flush(self) -> dict[str, Any] | None:
        """The mean record of the interval (None when it is empty)."""
        records, self.records = self.records, []
        if not records:
            return None
        out: dict[str, Any] = {}
        keys = dict.fromkeys(k for r in records for k in r)
        for key in keys:
            values = [r[key] for r in records if key in r]
            numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            if key in LAST or not numeric:
                out[key] = values[-1]
            else:
                out[key] = sum(values) / len(values)
        routes = (name for r in records for name in str(r.get("route", "")).split("+") if name)
        out["route"] = "+".join(dict.fromkeys(routes))
        out["updates"] = len(records)
        return out
