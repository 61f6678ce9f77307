"""The results table: student / route-teacher ratios against the bar, combined, units and directions, one
number format, and the same table read back from results.json (older runs' bare rows included)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldkit.eval.results import Results, Score, layout, markdown, metric_label, number

TEACHERS = {"t2i": "t2i_teacher", "edit": "edit_teacher"}


def scores(student_t2i: float, student_edit: float) -> list[Score]:
    return [
        Score("t2i_teacher", "t2i", {"score": 0.8, "fd": 2.0}),
        Score("edit_teacher", "t2i", {"score": 0.6, "fd": 3.0}),
        Score("student", "t2i", {"score": student_t2i, "fd": 2.5}),
        Score("t2i_teacher", "edit", {"score": 0.1, "psnr": 12.0}),
        Score("edit_teacher", "edit", {"score": 0.5, "psnr": 25.0}),
        Score("student", "edit", {"score": student_edit, "psnr": 24.0}),
    ]


def test_each_route_is_judged_against_its_own_teacher_and_combined_against_their_mean():
    results = Results(scores(0.76, 0.45), TEACHERS, 0.95)
    t2i, edit, combined = results.verdicts
    assert (t2i.route, t2i.teacher, t2i.ratio, t2i.passed) == (
        "t2i",
        "t2i_teacher",
        pytest.approx(0.95),
        True,
    )
    assert (edit.teacher, edit.ratio, edit.passed) == ("edit_teacher", pytest.approx(0.9), False)
    # combined: (0.76 + 0.45) / 2 over (0.8 + 0.5) / 2, each teacher on its own route
    assert combined.route == "combined" and combined.ratio == pytest.approx(1.21 / 1.3)
    assert results.passed is False
    assert Results(scores(0.8, 0.5), TEACHERS, 1.0).passed is True


def test_no_student_or_no_teacher_means_nothing_to_judge():
    teachers_only = [s for s in scores(0.8, 0.5) if s.field != "student"]
    assert Results(teachers_only, TEACHERS).passed is None
    assert Results(scores(0.8, 0.5)).verdicts == []  # no route teachers known


def test_the_table_marks_units_directions_teachers_and_verdicts():
    table = layout([("run", Results(scores(0.76, 0.45), TEACHERS, 0.95))])
    assert [c.label for c in table.columns] == ["t2i_teacher", "edit_teacher", "student"]
    assert [c.serves for c in table.columns] == [("t2i",), ("edit",), ()]
    labels = [row.label for row in table.rows]
    assert labels == [
        "t2i: score ↑",
        "t2i: fd ↓",
        "t2i: student / t2i_teacher",
        "edit: score ↑",
        "edit: psnr (dB) ↑",
        "edit: student / edit_teacher",
        "combined: mean score ↑",
        "combined: student / route teachers",
    ]
    rows = {row.label: row.cells for row in table.rows}
    assert rows["t2i: student / t2i_teacher"] == ["", "", "0.950x pass"]
    assert rows["edit: student / edit_teacher"] == ["", "", "0.900x FAIL"]
    assert rows["combined: mean score ↑"] == ["0.450", "0.550", "0.605"]
    assert "0.95x the score of the route's teacher" in table.caption
    card = markdown([("run", Results(scores(0.76, 0.45), TEACHERS, 0.95))])
    assert "| route: metric | t2i_teacher (serves t2i) | edit_teacher (serves edit) | student |" in card


def test_a_comparison_shows_identical_teachers_once_and_one_student_per_run():
    a = Results(scores(0.76, 0.45), TEACHERS)
    b = Results(scores(0.7, 0.5), TEACHERS)
    table = layout([("a", a), ("b", b)])
    assert [c.label for c in table.columns] == ["t2i_teacher", "edit_teacher", "a: student", "b: student"]
    changed = Results([Score("t2i_teacher", "t2i", {"score": 0.9}), *a.scores[1:]], TEACHERS)
    assert "b: t2i_teacher" in [c.label for c in layout([("a", a), ("b", changed)]).columns]


def test_labels_and_numbers_have_one_format():
    assert metric_label("psnr") == "psnr (dB) ↑"
    assert metric_label("level_error") == "level_error ↓"
    assert metric_label("spread") == "spread"  # its good value is the teacher's, not a direction
    assert metric_label("mystery") == "mystery"
    assert [number(v) for v in (0.12345, 23.0, float("nan"))] == ["0.123", "23.000", "nan"]


finite = st.floats(0.01, 10, allow_nan=False)


@given(finite, finite, st.floats(0.5, 1.5))
def test_results_json_round_trips(student_t2i, student_edit, bar):
    results = Results(scores(student_t2i, student_edit), TEACHERS, bar)
    back = Results.from_json(json.loads(json.dumps(results.to_json())))
    assert back == results and back.verdicts == results.verdicts


def test_the_bare_rows_of_an_older_results_json_still_read():
    rows = [{"field": s.field, "route": s.route, **s.values} for s in scores(0.8, 0.5)]
    assert Results.from_json(rows).scores == scores(0.8, 0.5)
