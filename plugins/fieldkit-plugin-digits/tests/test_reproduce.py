"""examples/digits/reproduce.py: every comparison is planned, and ``--quick`` runs end to end and reports."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "digits" / "reproduce.py"


def load_script(path: Path, name: str) -> ModuleType:
    """An example script loaded as module ``name`` (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load() -> ModuleType:
    return load_script(SCRIPT, "digits_reproduce")


def test_every_comparison_is_planned_and_references_precede_their_twins():
    repro = _load()
    table = repro.comparisons()
    assert {
        "composition",
        "routing",
        "query",
        "queries_k",
        "states",
        "cfg",
        "realism",
        "init",
        "rollout",
    } <= set(table)
    todo = repro.plan(list(table), [0], ["steps", "compute"])
    seen: set[str] = set()
    for run, seed, matched in todo:
        if matched == "compute":
            assert repro.run_key(repro._run_named(run.ref), seed, "steps", repro.QUICK, "w", "c") in seen
        seen.add(repro.run_key(run, seed, matched, repro.QUICK, "w", "c"))
    names = {run.name for run, _, _ in todo}
    for pair in ("t2i_edit", "local_global", "t2i_edit_specialist"):  # Table 2A / 2B: every baseline
        for method in (
            *("danceopd", "dense", "dense-uniform", "flowopd", "flowopd-release", "merge", "merge-ta"),
            *("joint-a", "joint-b", "offpolicy-a", "offpolicy-b"),
        ):
            assert f"{pair}/{method}" in names
    assert "k/g-all-matched" in names  # G = M at the samples per update of G = 1
    assert len(todo) == len(seen)
    assert repro.plan(["composition"], list(repro.SEEDS), ["steps"])[-1][1] == 4  # five seeds, fixed


def test_the_key_covers_the_resolved_graph_world_and_code():
    """A changed setting of the graph (here the EMA the YAML gained after study v2), world or code is
    another run; the stated settings make the YAML's EMA irrelevant to the resolved graph."""
    repro = _load()
    run = repro._run_named("diagnostic/danceopd")
    key = repro.run_key(run, 0, "steps", repro.QUICK, "w", "c")
    assert key != repro.run_key(run, 0, "steps", repro.QUICK, "w2", "c")
    assert key != repro.run_key(run, 0, "steps", repro.QUICK, "w", "c2")
    ema = repro.replace(repro.QUICK, extra=("student.ema=0.995",))
    assert key != repro.run_key(run, 0, "steps", ema, "w", "c")
    overrides = repro.overrides_of(run, 0, "steps", repro.QUICK)
    assert "student.ema=null" in overrides and "run.seed=0" in overrides


def test_a_committed_run_reruns_from_head_to_its_scores():
    """tests/data/quick-run.jsonl holds one run of the study as the driver wrote it (the quick settings): run
    again from HEAD it gives the same scores to the last bit, the same steps and the same model passes.
    Regenerate it only when a change is meant to change the numbers: ``python examples/digits/reproduce.py
    --quick --only composition --runs local_global/danceopd --matched steps --out DIR``, then copy
    ``DIR/results.jsonl`` here."""
    repro = _load()
    record = json.loads((Path(__file__).parent / "data" / "quick-run.jsonl").read_text())
    run = repro._run_named(record["name"])
    assert record["overrides"] == repro.overrides_of(run, record["seed"], record["matched"], repro.QUICK)
    again = repro.execute(run, record["seed"], record["matched"], repro.QUICK, None)
    assert again["scores"] == record["scores"]
    assert (again["steps"], again["passes"]) == (record["steps"], record["passes"])


@pytest.mark.slow
def test_quick_study_runs_every_comparison_and_reports(tmp_path: Path):
    """The whole --quick study (every run, 4 steps, 8 samples), in the default suite so it cannot rot."""
    repro = _load()
    repro.main(["--quick", "--out", str(tmp_path), "--report"])
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["comparison"] for r in records} >= set(repro.comparisons())
    for r in records:
        assert r["scores"], r["name"]
        for values in r["scores"].values():
            assert all(math.isfinite(v) for v in values.values()), r["name"]
        if r["kind"] == "train":
            assert r["steps"] >= 1 and math.isfinite(r["train_seconds"]) and r["sec_per_step"] > 0
            assert r["loss_curve"], r["name"]
    assert any(r["matched"] == "compute" for r in records)
    by_key = {(r["name"], r["seed"], r["matched"]): r for r in records}
    for r in records:
        if r["kind"] == "train":  # passes per sample: rollout and teacher forwards 1, gradient rows 3
            rows = {"danceopd": 4, "dense": 4 * 16, "flowopd": 4 * 16}.get(r["name"].split("/")[-1])
            if r["name"].startswith(("t2i_edit/", "local_global/")) and rows is not None:
                expected = r["rollout_samples_per_step"] + r["teacher_forwards_per_step"] + 3 * rows
                assert r["passes_per_step"] == pytest.approx(expected), r["name"]
        if r["matched"] == "compute":  # a twin trains until it has spent its reference's passes
            ref = by_key[
                (
                    next(run.ref for run in repro.comparisons()[r["comparison"]] if run.name == r["name"]),
                    r["seed"],
                    "steps",
                )
            ]
            assert r["passes"] >= ref["passes"] > r["passes"] - r["passes_per_step"] * 1.5, r["name"]
        if r["kind"] == "merge":  # the task-arithmetic coefficient is chosen on validation conditions
            assert r["merge_lambda"] in repro.MERGE_GRID
            assert r["validation"][f"{r['merge_lambda']:g}"] == max(r["validation"].values())
    report = (tmp_path / "report.md").read_text()
    for comparison in repro.comparisons():
        assert f"### {comparison}" in report
    # Plots (matplotlib is a dev dependency): one loss figure per comparison, metric curves where recorded.
    assert (tmp_path / "composition-loss.png").stat().st_size > 0
    assert (tmp_path / "query-metric.png").stat().st_size > 0
    # Resuming skips what is done: a second call runs nothing new.
    repro.main(["--quick", "--out", str(tmp_path)])
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(records)


def test_claims_share_the_plan_between_processes(tmp_path):
    """A run held by a live process is not taken; one left by a dead process is; release frees it."""
    import subprocess

    repro = _load()
    assert repro._claim(tmp_path, "a")
    assert repro._claim(tmp_path, "b")  # another key is free
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        repro._claim_path(tmp_path, "held").write_text(str(other.pid))
        assert not repro._claim(tmp_path, "held")  # a live holder keeps it
    finally:
        other.kill()
        other.wait()
    assert repro._claim(tmp_path, "held")  # its holder is gone: taken over
    assert repro._claim_path(tmp_path, "held").read_text() == str(os.getpid())
    repro._release(tmp_path, "a")
    assert not repro._claim_path(tmp_path, "a").exists()
    assert repro._claim(tmp_path, "a")


def test_report_without_results_says_so_and_writes_nothing(tmp_path: Path):
    repro = _load()
    with pytest.raises(SystemExit) as err:
        repro.main(["report", "--out", str(tmp_path / "nothing")])
    assert "no results in" in str(err.value) and "run the study" in str(err.value)
    assert not (tmp_path / "nothing").exists()


def test_the_reproduction_page_holds_exactly_the_tables_the_report_prints():
    """docs/reproduction.md's tables are regenerated from the committed results.jsonl, verdicts included."""
    repro = _load()
    root = SCRIPT.parents[2]
    page = (root / "docs" / "reproduction.md").read_text()
    tables = repro.all_page_tables(root / "docs" / "reproduction")
    assert set(tables) >= {"summary", "specialist", *repro.comparisons()}
    for name, table in tables.items():
        assert table in page, f"docs/reproduction.md lacks the {name} table as the report prints it"
    # No verdict on the page that the rule did not give: every verdict cell comes from a printed table.
    printed = "\n".join(tables.values())
    for line in page.splitlines():
        if line.startswith("| ") and line.rstrip().endswith(
            ("| agrees |", "| disagrees |", "| within noise |")
        ):
            assert line in printed, line


def test_verdicts_follow_the_rule_on_the_committed_results():
    """Every decided verdict on the page: at least 3 seeds, a Holm-adjusted p-value below 0.05 over the
    page's claims, the p-value recomputed from the differences, and (t-test) an interval that excludes 0."""
    from fieldkit.eval.verdict import AGREES, DISAGREES, LEVEL, MIN_SEEDS, holm, t_two_sided_p

    repro = _load()
    results = repro.read_results(SCRIPT.parents[2] / "docs" / "reproduction" / "results.jsonl")
    rows = [(c, d, w) for c, d, w in repro.verdict_rows(results) if d is not None]
    assert rows
    for _claim, dec, _word in rows:
        if dec.test == "t" and dec.diff.stderr > 0:
            t = dec.diff.mean / dec.diff.stderr
            assert dec.p == pytest.approx(t_two_sided_p(t, dec.diff.n - 1))
    assert [d.adjusted for _, d, _ in rows] == pytest.approx(holm([d.p for _, d, _ in rows]))
    for _claim, dec, word in rows:
        if word in (AGREES, DISAGREES):
            assert dec.diff.n >= MIN_SEEDS and dec.adjusted < LEVEL
            lo, hi = dec.interval
            assert lo > 0 or hi < 0


# -- the code fingerprint -----------------------------------------------------------------------------------

MODULE = '''"""A module docstring."""

import math


class Scale:
    """A class docstring."""

    factor = 2.0

    def apply(self, x: float) -> float:
        """A method docstring."""
        return math.sqrt(x) * self.factor


async def later(x: float) -> float:
    """An async docstring."""
    return x + 1


def label(x: float) -> str:
    return "value " + str(x)
'''


def _tree(root: Path, module: str, console: str = "def show(x):\n    print(x)\n") -> Path:
    """A module tree like fieldkit's: one module that runs and one that only prints (its console)."""
    (root / "distill").mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text("")
    (root / "ops.py").write_text(module)
    (root / "distill" / "console.py").write_text(console)
    return root


def test_the_code_fingerprint_ignores_docstrings_comments_formatting_and_reporting_modules(
    tmp_path: Path,
) -> None:
    """Docstring, comment and formatting edits keep the fingerprint (runs keep their keys); so does any edit
    of a module that only prints; a one-token change of code that runs changes it."""
    repro = _load()
    before = repro.code_fingerprint(_tree(tmp_path / "a", MODULE))
    edited = (
        MODULE.replace("A module docstring.", "The module, described at length.")
        .replace('"""A class docstring."""', "'''Reworded,\n    over two lines.'''")
        .replace("A method docstring.", "sqrt(x) times the factor.")
        .replace('    """An async docstring."""\n', "")
        .replace("import math\n", "import math  # the square root\n\n# a comment line\n")
        .replace(
            "return math.sqrt(x) * self.factor",
            "return (\n            math.sqrt(x)\n            * self.factor\n        )",
        )
        .replace("factor = 2.0", "factor=2.0")
    )
    same = repro.code_fingerprint(_tree(tmp_path / "b", edited, console="def show(y):\n    print('y', y)\n"))
    assert same == before
    tokens = (("2.0", "3.0"), ("x + 1", "x - 1"), ('"value "', '"value: "'), ("sqrt", "exp"))
    for i, (old, new) in enumerate(tokens):
        changed = repro.code_fingerprint(_tree(tmp_path / f"c{i}", MODULE.replace(old, new, 1)))
        assert changed != before, (old, new)
    assert repro.code_fingerprint() == repro.code_fingerprint()  # the imported package, deterministic
