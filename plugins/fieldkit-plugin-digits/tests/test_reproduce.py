"""examples/digits/reproduce.py: every comparison is planned, and ``--quick`` runs end to end and reports."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

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


def test_every_comparison_is_planned_and_references_precede_their_twins() -> None:
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


def test_the_key_covers_the_resolved_graph_world_and_code() -> None:
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


def test_a_setting_added_after_the_study_keeps_its_keys_at_the_value_it_ran_with(monkeypatch) -> None:
    """``run.grid_samples`` came after study v3 keyed its runs: at 8 (what every run drew) it is left out of
    the key, so the key is the one it had before the setting existed; at another value it re-keys the run."""
    repro = _load()
    run = repro._run_named("diagnostic/danceopd")

    def key(*extra: str) -> str:
        repro.run_key.cache_clear()
        return str(repro.run_key(run, 0, "steps", repro.replace(repro.QUICK, extra=extra), "w", "c"))

    plain = key()
    assert key("run.grid_samples=8") == plain
    assert key("run.grid_samples=0") != plain
    monkeypatch.setattr(repro, "KEYED_BEFORE", {})
    assert key() != plain  # without the rule the new setting would re-key every run


def test_a_committed_run_reruns_from_head_to_its_scores() -> None:
    """tests/data/quick-run.jsonl holds one run of the study as the driver wrote it (the quick settings): run
    again from HEAD it gives the same success rates, the same steps and the same model passes, and the same
    PSNRs and scores to 1e-5 (relative): the last bits of a float result differ between CPUs (MKL picks its
    kernels by CPU: on an AMD EPYC the record's PSNRs come back ~3e-6 off), while another seed moves them by
    1.6e-2 (global PSNR) to 1.6 (combined score). On one machine a rerun is equal to the last bit. Regenerate
    it only when a change is meant to change the numbers: ``python examples/digits/reproduce.py --quick
    --only composition --runs local_global/danceopd --matched steps --out DIR``, then copy
    ``DIR/results.jsonl`` here."""
    repro = _load()
    record = json.loads((Path(__file__).parent / "data" / "quick-run.jsonl").read_text())
    run = repro._run_named(record["name"])
    assert record["overrides"] == repro.overrides_of(run, record["seed"], record["matched"], repro.QUICK)
    again = repro.execute(run, record["seed"], record["matched"], repro.QUICK, None)
    assert again["scores"].keys() == record["scores"].keys()
    for who, scores in record["scores"].items():
        assert again["scores"][who].keys() == scores.keys()
        for name, value in scores.items():
            if name.endswith("/success"):
                assert again["scores"][who][name] == value, name
            else:
                assert again["scores"][who][name] == pytest.approx(value, rel=1e-5), name
    assert (again["steps"], again["passes"]) == (record["steps"], record["passes"])


@pytest.mark.slow
def test_quick_study_runs_every_comparison_and_reports(tmp_path: Path) -> None:
    """The whole --quick study (every run, 4 steps, 8 samples), in the default suite so it cannot rot."""
    repro = _load()
    repro.main(["--quick", "--out", str(tmp_path), "--report"])
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    runnable = repro.comparisons().items()
    assert {r["comparison"] for r in records} >= {
        name
        for name, runs in runnable
        if any(r.comparison == name and not repro.unavailable(r) for r in runs)
    }
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


def test_claims_share_the_plan_between_processes(tmp_path: Path) -> None:
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


def test_processes_committing_results_at_once_take_turns_and_a_failed_commit_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Study processes sharing a plan commit results.jsonl as their runs land: at once, they take turns
    (without the lock one met the other's git index lock and the study stopped), every line ends up
    committed; outside a git repository a commit is a warning and the study goes on."""
    import subprocess
    import threading

    repro = _load()
    for name, value in (("NAME", "study"), ("EMAIL", "study@example.org")):
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    results = repo / "out" / "results.jsonl"
    results.parent.mkdir()
    results.write_text("")
    errors: list[BaseException] = []

    def land(i: int) -> None:
        try:
            with results.open("a") as fh:
                fh.write(f'{{"run": {i}}}\n')
            repro._git_commit(results, f"run/{i}|seed=0|steps|k{i}")
        except BaseException as exc:  # any failure of a thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=land, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert "warning" not in capsys.readouterr().out
    committed = subprocess.run(
        ["git", "show", "HEAD:out/results.jsonl"], capture_output=True, text=True, check=True
    ).stdout
    assert sorted(committed.splitlines()) == sorted(f'{{"run": {i}}}' for i in range(6))
    elsewhere = tmp_path / "not-a-repo" / "results.jsonl"
    elsewhere.parent.mkdir()
    elsewhere.write_text("{}\n")
    monkeypatch.chdir(elsewhere.parent)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repro._git_commit(elsewhere, "run/x|seed=0|steps|kx")
    assert "warning: git add failed" in capsys.readouterr().out


def test_report_without_results_says_so_and_writes_nothing(tmp_path: Path) -> None:
    repro = _load()
    with pytest.raises(SystemExit) as err:
        repro.main(["report", "--out", str(tmp_path / "nothing")])
    assert "no results in" in str(err.value) and "run the study" in str(err.value)
    assert not (tmp_path / "nothing").exists()


def test_the_reproduction_page_holds_exactly_the_tables_the_report_prints() -> None:
    """docs/reproduction.md's tables are regenerated from the committed results.jsonl, verdicts included."""
    repro = _load()
    root = SCRIPT.parents[2]
    page = (root / "docs" / "reproduction.md").read_text()
    out = root / "docs" / "reproduction"
    tables = repro.page_tables(repro.read_results(out / "results.jsonl"), f"{out.name}/")
    assert set(tables) >= {"summary", "specialist", "choice", *repro.comparisons()}
    concepts = (root / "docs" / "concepts.md").read_text()
    assert f"<!-- table:choice -->\n{tables.pop('choice')}\n<!-- /table:choice -->" in concepts
    for name, table in tables.items():
        assert table in page, f"docs/reproduction.md lacks the {name} table as the report prints it"
    # No verdict on the page that the rule did not give: every verdict cell comes from a printed table.
    printed = "\n".join(tables.values())
    for line in page.splitlines():
        if line.startswith("| ") and line.rstrip().endswith(
            ("| agrees |", "| disagrees |", "| within noise |")
        ):
            assert line in printed, line


def test_the_method_guidance_follows_the_committed_results() -> None:
    """docs/concepts.md's "Choosing a method" rests on these facts of the committed study; if a rerun
    changes one, the guidance must change with it. At matched compute: every method that reads no targets
    is decided above joint SFT in (b) on Local + Global, and none above it in (a); no method is decided
    above off-policy distillation, nor any no-target method apart from it; off-policy costs fewer passes
    per sample than every other distillation method, and reuse4 and the buffer about half of DanceOPD's."""
    from fieldkit.eval.verdict import WITHIN_NOISE

    repro = _load()
    results = repro.read_results(SCRIPT.parents[2] / "docs" / "reproduction" / "results.jsonl")
    decisions = repro._decisions(results)
    no_targets = [o for o, (_, reads) in repro.frontier_options("local_global").items() if not reads]
    index = repro._by_seed(results)
    lines = repro.frontier_lines("local_global", "b")
    for label in ("danceopd", *no_targets):
        dec = decisions[(lines[label], lines["joint"])]
        assert dec.verdict != WITHIN_NOISE and dec.diff.mean > 0, label
    for pair in repro.FRONTIER_PAIRS:
        for setting in repro.SETTINGS:
            lines = repro.frontier_lines(pair, setting)
            for label, run in lines.items():
                for a, b in ((run, lines["offpolicy"]), (lines["offpolicy"], run)):
                    dec = decisions.get((a, b))
                    if dec is None or dec.verdict == WITHIN_NOISE:
                        continue
                    above = a if dec.diff.mean > 0 else b
                    assert above == lines["offpolicy"], (pair, setting, label)
                    assert label not in ("danceopd", *no_targets), (pair, setting, label)
            if setting == "a":  # with clean data no method is decided above joint SFT
                for label, run in lines.items():
                    dec = decisions.get((run, lines["joint"]))
                    assert dec is None or dec.verdict == WITHIN_NOISE or dec.diff.mean < 0, (pair, label)
                    dec = decisions.get((lines["joint"], run))
                    assert dec is None or dec.verdict == WITHIN_NOISE or dec.diff.mean > 0, (pair, label)
            cost = {
                label: statistics.fmean(r["passes_per_sample"] for r in index[run].values())
                for label, run in lines.items()
            }
            assert all(
                cost["offpolicy"] < c for label, c in cost.items() if label not in ("offpolicy", "joint")
            )
            for label in ("reuse4", "buffer"):
                assert 0.4 < cost[label] / cost["danceopd"] < 0.6, (pair, label)


def test_verdicts_follow_the_rule_on_the_committed_results() -> None:
    """Every decided verdict on the page: at least 3 seeds, a Holm-adjusted p-value below 0.05 over the
    page's claims, the p-value recomputed from the differences, and (t-test) an interval that excludes 0."""
    from fieldkit.eval.verdict import AGREES, DISAGREES, LEVEL, MIN_SEEDS, holm, t_two_sided_p

    repro = _load()
    results = repro.read_results(SCRIPT.parents[2] / "docs" / "reproduction" / "results.jsonl")
    rows = [(c, d, w) for c, d, w in repro.verdict_rows(results) if d is not None]
    assert rows
    for _claim, dec, _word in rows:
        if dec.diff.n < MIN_SEEDS:  # too few seeds to test: nothing decided
            assert dec.p == 1.0
        elif dec.test == "t" and dec.diff.stderr > 0:
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


# -- the frontier and many teachers -------------------------------------------------------------------------

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student's t two-sided 95% quantiles, from tables


def _trained(name: str, seed: int, matched: str, combined: float, **extra: Any) -> dict[str, Any]:
    """A synthetic record of a trained run on Local + Global (both routes at the combined score)."""
    scores = {"combined": combined, "local/score": combined + 0.05, "global/score": combined - 0.05}
    return {
        "comparison": "synthetic",
        "name": name,
        "seed": seed,
        "matched": matched,
        "kind": "train",
        "graph": "local_global",
        "overrides": [],
        "steps": 150,
        "passes": 1000.0,
        "passes_per_sample": 14.9,
        "scores": {"student": scores},
        **extra,
    }


def _curve(values: list[float], passes: list[float]) -> list[dict[str, float]]:
    return [
        {"step": i, "passes": p, "combined": v, "local/score": v + 0.05, "global/score": v - 0.05}
        for i, (v, p) in enumerate(zip(values, passes, strict=True))
    ]


def test_the_frontier_plot_draws_each_method_over_passes_with_its_seed_interval(tmp_path: Path) -> None:
    """Each method's band: at point i the mean passes and the mean score over seeds, and the score's
    interval mean +- t_{0.975, n-1} s / sqrt(n); one panel per score, axes named, the PNG written."""
    from fieldkit.eval.report_plots import band_figure

    repro = _load()
    base, offsets = [0.1, 0.5, 0.8], [-0.01, 0.0, 0.01]
    results = [
        _trained(
            name,
            s,
            matched,
            0.8,
            metric_curve=_curve([b + lift + d for b in base], [0.0, 500.0 + s, 1000.0 + 2 * s]),
        )
        for name, matched, lift in (
            ("local_global/danceopd", "steps", 0.0),
            ("local_global/offpolicy-a", "compute", 0.05),
        )
        for s, d in enumerate(offsets)
    ]
    results.append(
        _trained("local_global/reuse4", 0, "compute", 0.9, metric_curve=_curve(base, [0, 400, 900]))
    )
    results.append(_trained("local_global/coarse8", 0, "compute", 0.9))  # no curve: no line
    panels = repro.frontier_bands(results, "local_global", "a")
    assert list(panels) == ["combined", "local/score", "global/score"]
    bands = {b.label: b for b in panels["combined"]}
    assert list(bands) == ["danceopd", "offpolicy", "reuse4"]
    half = T_975[2] * 0.01 / math.sqrt(3)
    ref = bands["danceopd"]
    assert ref.x == pytest.approx((0.0, 501.0, 1002.0))
    assert ref.mean == pytest.approx(tuple(base))
    assert ref.low == pytest.approx(tuple(b - half for b in base))
    assert ref.high == pytest.approx(tuple(b + half for b in base))
    assert bands["offpolicy"].mean == pytest.approx(tuple(b + 0.05 for b in base))
    assert all(math.isnan(v) for v in (*bands["reuse4"].low, *bands["reuse4"].high))  # one seed: no band
    assert panels["local/score"][0].mean == pytest.approx(tuple(b + 0.05 for b in base))

    figure = band_figure(panels, xlabel=repro.PASSES_LABEL, title="t")
    axes = figure.axes
    assert [ax.get_ylabel() for ax in axes] == list(panels)
    assert all(ax.get_xlabel() == repro.PASSES_LABEL for ax in axes)
    for ax, bands_of in zip(axes, panels.values(), strict=True):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [b.label for b in bands_of]
        assert list(lines[0].get_ydata()) == pytest.approx(list(bands_of[0].mean))
        assert len(ax.collections) == 2  # shaded intervals: the two methods with three seeds
    # Setting (b) shares the runs that read no data (DanceOPD, reuse4); the specialist pair has no curve.
    paths = repro.frontier_plots(results, tmp_path)
    assert paths == [tmp_path / "frontier-local_global-a.png", tmp_path / "frontier-local_global-b.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [b.label for b in repro.frontier_bands(results, "local_global", "b")["combined"]] == [
        "danceopd",
        "reuse4",
    ]
    table = repro.frontier_tables(results, "v3/")
    assert "![frontier local_global (a)](v3/frontier-local_global-a.png)" in table
    assert "frontier-t2i_edit_specialist" not in table


def test_the_frontier_table_gives_the_rules_verdicts_and_pending_cells() -> None:
    """At the end point: each method's mean and 95% interval, and each cheaper option's verdicts by the rule
    (paired over seeds, Holm over the results' claims) where the answer is known: far above off-policy
    (agrees), level with joint SFT (within noise), far above DanceOPD at matched steps where the claim is
    "level" (disagrees); "pending" for what has not run."""
    repro = _load()
    jitter = [0.001, -0.001, 0.002, -0.002, 0.0]
    spread = [0.01, -0.01, 0.02, -0.02, 0.005]
    results = []
    for s in range(5):
        ref, off = 0.8 + 0.01 * s, 0.7 + 0.013 * s
        cheap = off + 0.1 + jitter[s]
        results += [
            _trained("local_global/danceopd", s, "steps", ref),
            _trained("local_global/reuse4", s, "steps", ref + 0.2 + jitter[s]),
            _trained("local_global/offpolicy-a", s, "compute", off),
            _trained("local_global/reuse4", s, "compute", cheap),
            _trained("local_global/joint-a", s, "compute", cheap - spread[s]),
        ]

    def cell(diffs: list[float], word: str) -> str:
        mean = math.fsum(diffs) / 5
        half = T_975[4] * statistics.stdev(diffs) / math.sqrt(5)
        return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]: {word}"

    rows = {
        line.split(" | ")[0][2:]: line
        for line in repro.frontier_table(results, "local_global", "a").splitlines()
    }
    reuse = rows["reuse4"].rstrip(" |").split(" | ")
    assert reuse[-3] == cell([0.1 + j for j in jitter], "agrees")
    assert reuse[-2] == cell(spread, "within noise")
    assert reuse[-1] == cell([0.2 + j for j in jitter], "disagrees")
    combined = [0.8 + 0.01 * s for s in range(5)]
    half = T_975[4] * statistics.stdev(combined) / math.sqrt(5)
    mean = statistics.fmean(combined)
    assert f"| 5 | 150 | 14.9 | {mean:.3f} [{mean - half:.3f}, {mean + half:.3f}] |" in rows["danceopd"]
    assert rows["buffer"].endswith("| 0 | pending" + " | pending" * 7 + " |")
    assert rows["coarse8"].count("pending") == 8
    assert "pending" in repro.frontier_table(results, "local_global", "b").split("\n")[4]  # off-policy (b)


def test_the_frontier_says_which_methods_serve_both_data_settings_with_one_run() -> None:
    """The methods the frontier's note names are exactly those whose run is the same in settings (a) and
    (b); a method that reads the buckets' data is not named."""
    repro = _load()
    note = repro.frontier_tables([]).split("\n")[0]
    assert note.startswith("DanceOPD, reuse4, coarse8 and buffer read no data")
    for pair in repro.FRONTIER_PAIRS:
        for option in repro.frontier_options(pair):
            same = repro.frontier_run(pair, option, "a") == repro.frontier_run(pair, option, "b")
            assert same == (f" {option} " in note.replace(",", " ")), option
    assert "partial" not in note and "handover" not in note


def _frontier_results(repro: ModuleType, margin: dict[str, float]) -> list[dict[str, Any]]:
    """Five seeds of every frontier run on Local + Global: each option ``margin[option]`` above off-policy
    and joint SFT (both at 0.7 + 0.01 s) in both settings, and level with DanceOPD at matched steps."""
    jitter = [0.001, -0.001, 0.002, -0.002, 0.0]
    out = []
    for s in range(5):
        base, ref = 0.7 + 0.01 * s, 0.8 + 0.01 * s
        out.append(_trained("local_global/danceopd", s, "steps", ref))
        for setting in ("a", "b"):
            out += [
                _trained(f"local_global/{b}-{setting}", s, "compute", base) for b in ("offpolicy", "joint")
            ]
        for option in repro.frontier_options("local_global"):
            for name in {repro.frontier_run("local_global", option, setting) for setting in ("a", "b")}:
                out.append(_trained(name, s, "compute", base + margin.get(option, -0.05) + jitter[s]))
                out.append(_trained(name, s, "steps", ref + jitter[(s + 1) % 5]))
    return out


def test_the_frontier_says_whether_an_option_meets_the_goal_or_which_came_closest() -> None:
    repro = _load()
    met = repro.frontier_goal(_frontier_results(repro, {"partial": 0.1}), "local_global")
    assert met == "Goal (issue 21) on Local + Global: met by partial."
    close = repro.frontier_goal(_frontier_results(repro, {"reuse4": -0.01}), "local_global")
    assert close.startswith("Goal (issue 21) on Local + Global: not met;")
    assert "Closest: reuse4, whose worst margin at matched compute is -0.010 [" in close
    assert "pending (0 of 5 options" in repro.frontier_goal([], "local_global")


def test_list_prints_every_frontier_and_many_teachers_run_with_its_overrides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`list` names every new run with its overrides: with its key where this checkout can run it, else as
    skipped with the reason (the method options, or the many-teachers graphs and LoRAs, not there yet)."""
    repro = _load()
    repro.main(["list", "--seeds", "0"])
    lines = capsys.readouterr().out.splitlines()

    def line_of(name: str) -> str:
        found = [ln for ln in lines if ln.startswith((f"{name}|seed=0|", f"skip {name} "))]
        assert found, name
        return found[0]

    scarce = "routes.local.data.targets={limit: 64, noise: 0.2}"
    expected = {
        "local_global/buffer": ["method.reuse=4 method.buffer=4 method.staleness=8"],
        "local_global/partial-a": ["method.start_sigma=0.6"],
        "local_global/partial-b": ["method.start_sigma=0.6", scarce],
        "local_global/handover-b": ["method.handover=50 method.on_policy=1.0", scarce],
        "t2i_edit_specialist/partial-a": ["method.start_sigma=0.6"],
        "t2i_edit_specialist/handover-a": ["method.handover=50 method.on_policy=1.0"],
        "local_global/reuse4": ["method.reuse=4"],
        "t2i_edit_specialist/coarse8": ["method.rollout_steps=8"],
        "caps4/offpolicy": ["method={type: offpolicy}"],
        "caps8/joint": ["method={type: sft}"],
    }
    for name, overrides in expected.items():
        line = line_of(name)
        assert all(o in line for o in overrides), line
        if line.startswith("skip"):
            assert "needs " in line and ("method." in line or "reproduce/caps" in line), line
    for n in repro.CAPS:
        for method in ("teachers", "danceopd", "merge-ta"):
            line_of(f"caps{n}/{method}")
    # The frontier pairs' references and baselines are comparison 1's runs: each listed once.
    assert sum(ln.startswith("local_global/danceopd|seed=0|steps|") for ln in lines) == 1


def test_many_teachers_waits_for_its_graphs_and_scores_the_worst_route(tmp_path: Path) -> None:
    """A many-teachers run is skipped, with what is missing, while its graph or a teacher it names is
    missing; its table reads each route against its own teacher and prints "pending" until runs land."""
    repro = _load()
    graph = tmp_path / "caps2.yaml"
    repro.GRAPHS["caps2"] = graph
    why = repro.unavailable(repro._run_named("caps2/danceopd"))
    assert why is not None and "caps2.yaml" in why and "--only many" in why
    graph.write_text(
        "fields:\n  t2i: {type: fieldkit.checkpoint, path: teachers/t2i}\n"
        "  rot: {type: fieldkit.checkpoint, path: teachers/rot}\n"
        "routes: {t2i: {field: t2i}, rot: {field: rot}}\n"
    )
    (tmp_path / "teachers" / "t2i").mkdir(parents=True)
    repro.unavailable.cache_clear()
    why = repro.unavailable(repro._run_named("caps2/danceopd"))
    assert why is not None and "teachers/rot" in why and "teachers/t2i" not in why
    (tmp_path / "teachers" / "rot").mkdir()
    repro.unavailable.cache_clear()
    assert repro.unavailable(repro._run_named("caps2/danceopd")) is None
    assert repro.merged_fields("caps2") == ("t2i", "rot")
    assert "routes.rot.data.eval_split=test" in repro.stated("caps2")

    teachers = {
        "name": "caps2/teachers",
        "seed": 0,
        "matched": "steps",
        "kind": "eval",
        "scores": {"t2i_teacher": {"t2i/score": 0.9}, "rot_teacher": {"rot/score": 0.8}},
    }
    student = {"combined": 0.705, "t2i/score": 0.81, "rot/score": 0.6}
    run = {**_trained("caps2/danceopd", 0, "steps", 0.0), "teacher_bytes": 2**21}
    run["scores"] = {"student": student}
    table = repro.many_table([teachers, run]).splitlines()
    assert (
        "| 2 | DanceOPD | caps2/danceopd (steps) | 1 | 0.705 (1 seed) | 0.750 (1 seed) | 14.9 | 2.0 |"
        in table
    )
    assert "| 4 | tuned merge | caps4/merge-ta | 0 | pending | pending | pending | pending |" in table


def test_the_many_teachers_plot_has_a_band_per_method_over_the_seeds_run_at_every_n() -> None:
    """DanceOPD ran at N = 2, 4, 8 on seeds 0 and 1 (seed 2 only at N = 2: left out of the band); each
    point is the seeds' mean, combined and worst route / its teacher. Nothing else ran at every N: no band."""
    repro = _load()
    records = []
    for n in repro.CAPS:
        for seed in (0, 1, 2) if n == 2 else (0, 1):
            teachers = {"t2i_teacher": {"t2i/score": 1.0}, "rot_teacher": {"rot/score": 0.5}}
            records.append(
                {
                    "name": f"caps{n}/teachers",
                    "seed": seed,
                    "matched": "steps",
                    "kind": "eval",
                    "scores": teachers,
                }
            )
            run = _trained(f"caps{n}/danceopd", seed, "steps", 0.0)
            run["scores"] = {
                "student": {"combined": n / 10 + seed, "t2i/score": 0.5, "rot/score": 0.1 * seed}
            }
            records.append(run)
    records.append(_trained("caps2/offpolicy", 0, "steps", 0.0))  # at N = 2 only
    panels = repro.many_bands(records)
    assert {k: [b.label for b in v] for k, v in panels.items()} == {
        "combined": ["DanceOPD (steps)"],
        "worst route / its teacher": ["DanceOPD (steps)"],
    }
    combined, worst = panels["combined"][0], panels["worst route / its teacher"][0]
    assert list(combined.x) == [2.0, 4.0, 8.0]
    assert list(combined.mean) == pytest.approx([n / 10 + 0.5 for n in repro.CAPS])  # seeds 0 and 1
    assert list(worst.mean) == pytest.approx([0.1, 0.1, 0.1])  # rot: (0 + 0.2) / 2, below t2i's 0.5
    assert repro.many_bands([records[0], records[1]]) == {}


def test_a_frontier_run_records_its_curve_with_the_passes_spent() -> None:
    """At matched compute a frontier run scores the student at the start, at each fraction of its budget
    (the first update whose passes reach it) and at its end, each point with the training passes spent."""
    repro = _load()
    run = repro._run_named("local_global/offpolicy-a")
    assert run.curve == ("compute",)
    budget = 200.0
    record = repro.execute(run, 0, "compute", repro.QUICK, budget)
    curve = record["metric_curve"]
    assert curve[0]["passes"] == 0 and curve[-1]["passes"] == record["passes"] >= budget
    assert curve[-1]["step"] == record["steps"]
    per_update = record["passes_per_step"]  # off-policy: the same passes every update
    inner = curve[1:-1]
    assert len(inner) == repro.QUICK.curve_points - 1
    for i, point in enumerate(inner, 1):  # the first update at or past i / points of the budget
        mark = budget * i / repro.QUICK.curve_points
        assert mark <= point["passes"] < mark + per_update
    assert all(math.isfinite(p["combined"]) for p in curve)
    assert record["passes_per_sample"] == pytest.approx(4.0)  # a data state, a teacher forward, a row


def test_a_retrained_lora_rekeys_the_runs_of_the_graphs_that_read_it_and_no_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weight files a graph's fields name enter its runs' keys; another graph's key is untouched."""
    repro = _load()
    lora = tmp_path / "caps" / "local"
    lora.mkdir(parents=True)
    (lora / "adapter_model.safetensors").write_bytes(b"first")
    (tmp_path / "base.safetensors").write_bytes(b"base")
    reads = tmp_path / "reads.yaml"
    reads.write_text("fields:\n  t2i: {path: base.safetensors}\n  local: {base: t2i, path: caps/local}\n")
    other = tmp_path / "other.yaml"
    other.write_text("fields:\n  t2i: {path: base.safetensors}\n")
    monkeypatch.setitem(repro.GRAPHS, "reads", reads)
    monkeypatch.setitem(repro.GRAPHS, "other", other)

    def keys() -> tuple[str, str]:
        repro.inputs_fingerprint.cache_clear()
        return repro.inputs_fingerprint("reads"), repro.inputs_fingerprint("other")

    before = keys()
    (lora / "adapter_model.safetensors").write_bytes(b"second")
    after = keys()
    assert after[0] != before[0] and after[1] == before[1]
    (tmp_path / "base.safetensors").write_bytes(b"new base")
    assert all(a != b for a, b in zip(keys(), after, strict=True))


def test_a_run_rerun_under_a_new_key_replaces_its_earlier_line(tmp_path: Path) -> None:
    """Two lines of one (name, seed, budget): the later one counts (once); other runs are kept."""
    repro = _load()
    rows = [
        {"name": "p/danceopd", "seed": 0, "matched": "steps", "key": "old", "code": "a"},
        {"name": "p/danceopd", "seed": 1, "matched": "steps", "key": "s1", "code": "a"},
        {"name": "p/danceopd", "seed": 0, "matched": "compute", "key": "c0", "code": "a"},
        {"name": "p/danceopd", "seed": 0, "matched": "steps", "key": "new", "code": "b"},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = repro.read_results(path)
    assert sorted(r["key"] for r in kept) == ["c0", "new", "s1"]


# -- code versions verified to rerun the study -----------------------------------------------------------


def test_study_code_follows_recorded_equivalences_to_the_first_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repro = _load()
    monkeypatch.setattr(repro, "code_fingerprint", lambda root=None: "c3")
    assert repro.study_code(tmp_path) == "c3"  # nothing recorded: the checkout's own version
    lines = [{"code": "c2", "same_as": "c1"}, {"code": "c3", "same_as": "c2"}, {"code": "x", "same_as": "y"}]
    (tmp_path / repro.SAME_CODE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert repro.study_code(tmp_path) == "c1"
    lines.append({"code": "c3", "same_as": None})  # a later verify found c3 to differ: its last line decides
    (tmp_path / repro.SAME_CODE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert repro.study_code(tmp_path) == "c3"
    (tmp_path / repro.SAME_CODE).write_text(json.dumps({"code": "c3", "same_as": "c3"}) + "\n")
    assert repro.study_code(tmp_path) == "c3"  # a loop ends where it started


def test_verify_records_a_code_version_only_when_its_reruns_are_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study run at code version A; this checkout is version B. ``verify`` reruns one run per method with
    B, and only if every field but the timings is the same records B as rerunning A, so that the study keeps
    its keys (a rerun of the study then runs nothing). A method that lands later is checked by the next
    ``verify``, the others not again. A run that differs (here a tampered score) records that the version
    re-keys, and ``verify`` says so without rerunning."""
    repro = _load()
    study = ["--quick", "--matched", "steps", "--out", str(tmp_path)]
    monkeypatch.setattr(repro, "code_fingerprint", lambda root=None: "version-a")
    repro.main([*study, "--runs", "local_global/teachers,local_global/offpolicy-a"])
    results = tmp_path / "results.jsonl"
    committed = results.read_text()
    assert {json.loads(line)["code"] for line in committed.splitlines()} == {"version-a"}

    monkeypatch.setattr(repro, "code_fingerprint", lambda root=None: "version-b")
    assert repro.verify(tmp_path, repro.QUICK)
    recorded = [json.loads(line) for line in (tmp_path / repro.SAME_CODE).read_text().splitlines()]
    assert [(r["code"], r["same_as"], len(r["runs"])) for r in recorded] == [("version-b", "version-a", 2)]
    assert repro.study_code(tmp_path) == "version-a"
    repro.main([*study, "--runs", "local_global/teachers,local_global/offpolicy-a"])  # nothing left to run
    assert results.read_text() == committed

    monkeypatch.setattr(repro, "code_fingerprint", lambda root=None: "version-a")
    repro.main([*study, "--runs", "local_global/joint-a"])  # a new method lands, at version A
    committed = results.read_text()
    monkeypatch.setattr(repro, "code_fingerprint", lambda root=None: "version-b")
    assert repro.verify(tmp_path, repro.QUICK)
    recorded = [json.loads(line) for line in (tmp_path / repro.SAME_CODE).read_text().splitlines()]
    assert [r["runs"][0].split("|")[0] for r in recorded[1:]] == ["local_global/joint-a"]  # only the new one
    assert len(recorded) == 2 and repro.verify(tmp_path, repro.QUICK)  # nothing left: nothing appended
    assert len((tmp_path / repro.SAME_CODE).read_text().splitlines()) == 2

    tampered = [json.loads(line) for line in committed.splitlines()]
    train = next(r for r in tampered if r["name"] == "local_global/offpolicy-a")
    train["scores"]["student"]["combined"] += 1e-9
    results.write_text("".join(json.dumps(r) + "\n" for r in tampered))
    monkeypatch.setattr(repro, "code_fingerprint", lambda root=None: "version-c")
    assert not repro.verify(tmp_path, repro.QUICK)
    last = json.loads((tmp_path / repro.SAME_CODE).read_text().splitlines()[-1])
    assert last == {"code": "version-c", "same_as": None, "runs": [train["key"]]}
    assert repro.study_code(tmp_path) == "version-c"  # it re-keys
    monkeypatch.setattr(repro, "execute", lambda *a: pytest.fail("a version known to differ is not rerun"))
    assert not repro.verify(tmp_path, repro.QUICK)
    assert repro.differences(train, {**train, "wall_seconds": 0.0, "sec_per_step": 9.0}) == []
    assert repro.differences(train, {**train, "passes": train["passes"] + 1}) == ["passes"]


def test_the_choice_block_names_the_higher_run_first_with_its_interval() -> None:
    """Five seeds of reuse4 (matched compute) 0.3 below off-policy (a): the block lists the claim decided,
    off-policy first, the difference and its interval positive (the claim's own a - b is negative)."""
    repro = _load()
    records = []
    for seed in range(5):
        records.append(_trained("local_global/reuse4", seed, "compute", 0.5 + 0.013 * seed))
        records.append(_trained("local_global/offpolicy-a", seed, "compute", 0.8 + 0.01 * seed))
    block = repro.choice_table(records)
    decided = [line for line in block.splitlines() if line.startswith("- ")]
    assert len(decided) == 1
    line = decided[0]
    assert line.startswith(
        "- offpolicy on Local + Global (a) above reuse4 on Local + Global (both settings): 0.29"
    )
    low, high = (float(v) for v in line.rsplit("[", 1)[1].rstrip("]").split(", "))
    assert 0 < low < 0.294 < high
    assert "| reuse4 | no | 14.9 | 0.526 [" in block  # the synthetic records' passes per sample, its mean
