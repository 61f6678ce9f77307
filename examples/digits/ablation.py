"""The main job's ablation (docs/digits.md): what moves the student's global-edit score, and what does not.

Each variant is ``examples/digits/graph.yaml`` plus ``--set`` overrides, trained once (seed 0) with the
main job's settings. Besides the end-of-run scores it records, per variant, what explains the global route:
the global route's training loss over the steps, its share of the updates, and the student's scores on
every route at a few checkpoints, for the online weights and for EMA copies of them at several decays
(kept beside the run, so one run measures every decay). One JSON line per variant goes to
``docs/digits/ablation/NAME.json`` (rewritten at every checkpoint, so a stopped run keeps what it measured);
``report`` prints the page's table from them.

    python examples/digits/ablation.py run task-arithmetic --set student.init=arith
    python examples/digits/ablation.py report             # the table in docs/digits.md

The main job over seeds, selected on validation (docs/digits.md, "The main job over seeds"): every candidate
init trained on every seed of ``MAIN_SEEDS`` for ``MAIN_STEPS`` updates, the online weights and side EMAs
scored every ``MAIN_EVERY`` updates on the validation half of the held-out digits and on the test half;
``select`` picks the init, the weights (online or an EMA decay) and the length on validation alone, and
``main-seeds`` prints the test scores of that choice on every seed against the bars.

    python examples/digits/ablation.py main-run --init arith --seed 0     # one candidate on one seed
    python examples/digits/ablation.py main-seeds                         # the table in docs/digits.md

Later looks keep their records apart by run length and schedule (``--steps``, ``--lr-schedule``);
``main-choice`` makes the same choice on validation over every candidate of every folder, a candidate at
each run length counting as its own.

    python examples/digits/ablation.py main-choice
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from fieldkit.graph.schema import RunSpec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reproduce import (  # noqa: E402  (the study's scoring: same conditions, noise; its fingerprints)
    code_fingerprint,
    eval_seed,
    score_fields,
    world_fingerprint,
)

GRAPH = HERE / "graph.yaml"
RESULTS = HERE.parent.parent / "docs" / "digits" / "ablation"
# The teachers scored on the checkpoints' conditions and noise (128 samples per route, seed 0), for records
# whose run was stopped before its end-of-run scores: `fieldkit eval examples/digits/graph.yaml --samples 128
# --json` through scores_by_field, keyed FIELD_teacher.
TEACHERS_128 = RESULTS.parent / "ablation-teachers-128.json"
T2I_SLACK = 0.02  # the T2I bar: the student within 0.02 of the T2I teacher
ROUTES = ("t2i", "local", "global")  # the main job's routes
RATIO = 0.95  # every route at least 0.95x its teacher


def _students(engine: Any, emas: dict[str, Any]) -> dict[str, Any]:
    """The online student and one exported copy per side EMA."""
    from fieldkit.distill.session import export_model

    fields = {"online": export_model(engine.session.student)}
    fields.update({name: export_model(engine.session.student, ema) for name, ema in emas.items()})
    return fields


def run(name: str, overrides: Sequence[str], decays: Sequence[float], every: int, samples: int) -> None:
    """Train one variant and append its record to the results file."""
    from fieldkit import load_graph
    from fieldkit.distill.ema import EMA
    from fieldkit.distill.engine import Engine

    graph = load_graph(GRAPH, [*overrides, "run.device=cpu"])
    engine = Engine(graph, None, show_progress=False, write=False)
    emas = {f"ema{d:g}": EMA(engine.session.student, d) for d in decays}
    steps = graph.spec.run.steps
    curve: list[dict[str, Any]] = []
    train_seconds = 0.0
    t0 = time.perf_counter()
    for report in engine.steps():
        if report.applied:
            for ema in emas.values():
                ema.update(engine.session.student)
        train_seconds += time.perf_counter() - t0
        if report.applied and (report.step % every == 0 or report.step == steps):
            point = score_fields(engine, _students(engine, emas), samples)
            curve.append({"step": report.step, "scores": point})
            print(
                f"{name} step {report.step}: "
                + ", ".join(
                    f"{f} global {v['global/score']:.3f} comb {v['combined']:.3f}" for f, v in point.items()
                ),
                flush=True,
            )
            _write(name, overrides, decays, engine, train_seconds, curve, None)
        t0 = time.perf_counter()
    final = score_fields(engine, _students(engine, emas), graph.spec.run.eval_samples)
    teachers = score_fields(
        engine,
        {r.name + "_teacher": r.field for r in engine.session.router.routes},
        graph.spec.run.eval_samples,
    )
    _write(name, overrides, decays, engine, train_seconds, curve, {"final": final, "teachers": teachers})


def _write(
    name: str,
    overrides: Sequence[str],
    decays: Sequence[float],
    engine: Any,
    train_seconds: float,
    curve: list[dict[str, Any]],
    end: dict[str, Any] | None,
) -> None:
    """Write the variant's record (``complete`` once the end-of-run scores are in)."""
    per_route: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for rec in engine.history:
        for key, value in rec.items():
            if key.startswith("loss/"):
                per_route[key[5:]].append((int(rec["step"]), float(value)))
    width = max(1, engine.session.graph.spec.run.steps // 40)
    losses = {
        route: [
            [
                values[min(i + width, len(values)) - 1][0],
                sum(v for _, v in values[i : i + width]) / len(values[i : i + width]),
            ]
            for i in range(0, len(values), width)
        ]
        for route, values in per_route.items()
    }
    record = {
        "name": name,
        "overrides": list(overrides),
        "steps": engine.step,
        "target_steps": engine.session.graph.spec.run.steps,
        "complete": end is not None,
        "decays": list(decays),
        "train_seconds": train_seconds,
        "route_updates": dict(Counter(r["route"] for r in engine.history)),
        "curve": curve,
        "loss_curve": losses,
        **(end or {}),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(RESULTS / f"{name}.json")


def read(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every variant's record, in name order; a stopped run's last checkpoint stands for its end, scored
    against the teachers on the same 128-sample conditions."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    for rec in records:
        if not rec.get("complete") and TEACHERS_128.exists():
            rec["teachers"] = json.loads(TEACHERS_128.read_text())
    return records


def scores_by_field(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Result rows (``fieldkit eval --json``, a run's ``results.json``: one per field and route) as
    ``{field: {route/metric: value, combined: value}}``, combined the mean of the three routes' scores."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        out[row["field"]].update(
            {f"{row['route']}/{k}": v for k, v in row.items() if k not in ("field", "route")}
        )
    for values in out.values():
        values["combined"] = sum(values[f"{r}/score"] for r in ROUTES) / len(ROUTES)
    return dict(out)


def _bars(student: dict[str, float], teachers: dict[str, dict[str, float]]) -> tuple[dict[str, float], bool]:
    """Each route's score over its teacher's, and whether every bar of the main job holds: every route at
    least 0.95x its teacher, T2I at least the teacher's minus 0.02, combined above the best teacher's."""
    ratios = {
        route: student[f"{route}/score"] / teachers[f"{route}_teacher"][f"{route}/score"] for route in ROUTES
    }
    ok = (
        all(r >= RATIO for r in ratios.values())
        and student["t2i/score"] >= teachers["t2i_teacher"]["t2i/score"] - T2I_SLACK
        and student["combined"] > max(t["combined"] for t in teachers.values())
    )
    return ratios, ok


def report(records: Sequence[dict[str, Any]]) -> str:
    """The ablation table of docs/digits.md: every variant's student (online and each EMA) at its last step,
    then the global score over the steps."""
    head = (
        "| variant | steps | samples | evaluated weights | t2i | local | global (x teacher) | global psnr | "
        "combined | every bar |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        scores = rec["final"] if rec.get("complete") else rec["curve"][-1]["scores"]
        samples = 256 if rec.get("complete") else 128
        teachers = rec.get("teachers") or {}
        for weights, v in scores.items():
            ratio, ok = _bars(v, teachers) if teachers else ({"global": float("nan")}, False)
            lines.append(
                f"| {rec['name']} | {rec['steps']} | {samples} | {weights} | {v['t2i/score']:.3f} | "
                f"{v['local/score']:.3f} | "
                f"{v['global/score']:.3f} ({ratio['global']:.3f}x) | {v['global/psnr']:.1f} | "
                f"{v['combined']:.3f} | {'yes' if ok else 'no'} |"
            )
    for rec in records:
        t = rec.get("teachers") or {}
        if t:
            lines += [
                "",
                f"Teachers on the conditions of {rec['name']}: "
                f"t2i {t['t2i_teacher']['t2i/score']:.3f}, local {t['local_teacher']['local/score']:.3f}, "
                f"global {t['global_teacher']['global/score']:.3f} "
                f"(best combined {max(v['combined'] for v in t.values()):.3f}).",
            ]
    lines += [
        "",
        "Global score over the steps (128 samples per route at each point), and the global route's training "
        "loss (mean over the 200 steps before the point):",
        "",
    ]
    for rec in records:
        names = list(rec["curve"][0]["scores"]) if rec["curve"] else []
        head = f"| {rec['name']}: step | " + " | ".join(names) + " | global loss |"
        lines += [head, "|---|" + "---|" * (len(names) + 1)]
        losses = rec["loss_curve"].get("global", [])
        for point in rec["curve"]:
            cells = " | ".join(f"{point['scores'][n]['global/score']:.3f}" for n in names)
            window = [v for s, v in losses if point["step"] - 200 < s <= point["step"]]
            loss = f"{sum(window) / len(window):.4f}" if window else "–"
            lines.append(f"| {point['step']} | {cells} | {loss} |")
        updates = ", ".join(f"{route} {n}" for route, n in sorted(rec["route_updates"].items()))
        lines += ["", f"Updates per route in {rec['name']}'s {rec['steps']} steps: {updates}.", ""]
    return "\n".join(lines).rstrip() + "\n"


MAIN_JOB = RESULTS.parent / "main-job-results.json"  # results.json of a fresh-clone `make demo`


def main_job_table(rows: list[dict[str, Any]]) -> str:
    """The main job's results table (``results.json`` of a run: one row per field and route), every field on
    every route's score with the student's ratio to the route's teacher, then the bars' verdict."""
    scores = scores_by_field(rows)
    teachers = {f"{r}_teacher": scores[r] for r in ROUTES}
    ratios, ok = _bars(scores["student"], teachers)
    lines = [
        "| field | t2i/score | local/score | local/psnr | global/score | global/psnr | combined |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in scores.items():
        cells = [f"{v[f'{r}/score']:.3f}" for r in ROUTES]
        if name == "student":
            cells = [f"{v[f'{r}/score']:.3f} ({ratios[r]:.3f}x)" for r in ROUTES]
        lines.append(
            f"| {name} | {cells[0]} | {cells[1]} | {v['local/psnr']:.1f} | {cells[2]} | "
            f"{v['global/psnr']:.1f} | {v['combined']:.3f} |"
        )
    best = max(t["combined"] for t in teachers.values())
    verdict = "every bar met" if ok else "not every bar met"
    return "\n".join(lines) + (
        f"\n\nBars: every route at least {RATIO}x its teacher, T2I at least the teacher's minus {T2I_SLACK}, "
        f"combined above the best teacher's ({best:.3f}): **{verdict}**.\n"
    )


MAIN_RUNS = RESULTS.parent / "main-job-seeds"  # one record per (init, seed)
MAIN_SEEDS = (0, 1, 2)
MAIN_INITS = ("arith", "local")
MAIN_DECAYS = (0.99, 0.995, 0.999)
MAIN_STEPS, MAIN_EVERY, MAIN_SAMPLES = 1600, 400, 256
SEED_FLOOR = 0.93  # no seed's route below 0.93x its teacher
SPLITS = ("validation", "test")
# run.lr_schedule's choices, read from the schema
SCHEDULES: tuple[str, ...] = get_args(RunSpec.model_fields["lr_schedule"].annotation)


def main_runs(steps: int = MAIN_STEPS, schedule: str = "constant") -> Path:
    """The folder of the main job's records at ``steps`` updates per run and learning-rate ``schedule``
    (``MAIN_RUNS`` at ``MAIN_STEPS`` and a constant rate: the declared protocol's)."""
    name = MAIN_RUNS.name + ("" if steps == MAIN_STEPS else f"-{steps}")
    return MAIN_RUNS.with_name(name + ("" if schedule == "constant" else f"-{schedule}"))


def every_main_run() -> list[dict[str, Any]]:
    """The records of every folder of the main job's runs, each candidate named with its run length
    (``arith (2400-update runs)``): a longer run is another candidate, even where its first updates repeat a
    shorter run's."""
    records = []
    for folder in sorted(MAIN_RUNS.parent.glob(f"{MAIN_RUNS.name}*")):
        runs = read_main(folder)
        records += [{**r, "candidate": f"{_candidate(r)} ({r['steps']}-update runs)"} for r in runs]
    return records


def main_run(
    init: str,
    seed: int,
    folder: Path = MAIN_RUNS,
    steps: int = MAIN_STEPS,
    weights: dict[str, float] | None = None,
    schedule: str = "constant",
) -> Path:
    """Train the main job (``graph.yaml``, ``student.init=init``, the routes' routing ``weights`` where given,
    the learning rate's ``schedule`` over the ``steps``, seed ``seed``; the engine's own EMA off, side EMAs at
    ``MAIN_DECAYS`` instead) and record, every ``MAIN_EVERY`` updates and at the end, every copy of the
    weights and the teachers on the validation and the test halves of the held-out digits (the seed's
    evaluation draw). The record (``CANDIDATE-seedN.json``, the candidate named by :func:`candidate_name`) is
    rewritten at every checkpoint; complete at the end."""
    from fieldkit import load_graph
    from fieldkit.distill.ema import EMA
    from fieldkit.distill.engine import Engine

    weights = weights or {}
    overrides = [f"student.init={init}", "student.ema=null", f"run.seed={seed}", f"run.steps={steps}"]
    overrides += [f"routes.{route}.weight={w:g}" for route, w in sorted(weights.items())]
    if schedule != "constant":  # the protocol's runs set no schedule: their records keep their overrides
        overrides.append(f"run.lr_schedule={schedule}")
    name = candidate_name(init, weights, schedule)
    graph = load_graph(GRAPH, [*overrides, "run.device=cpu"])
    engine = Engine(graph, None, show_progress=False, write=False)
    emas = {f"ema{d:g}": EMA(engine.session.student, d) for d in MAIN_DECAYS}
    teachers = {r.name + "_teacher": r.field for r in engine.session.router.routes}
    at = eval_seed(seed)
    record: dict[str, Any] = {"init": init, "seed": seed, "overrides": overrides, "steps": steps, "curve": []}
    if name != init:
        record["candidate"] = name
    record.update(world=world_fingerprint(), code=code_fingerprint())
    record["teachers"] = {s: score_fields(engine, teachers, MAIN_SAMPLES, at, s) for s in SPLITS}
    path = folder / f"{name}-seed{seed}.json"
    for report in engine.steps():
        if not report.applied:
            continue
        for ema in emas.values():
            ema.update(engine.session.student)
        if report.step % MAIN_EVERY == 0 or report.step == steps:
            fields = _students(engine, emas)
            point = {s: score_fields(engine, fields, MAIN_SAMPLES, at, s) for s in SPLITS}
            record["curve"].append({"step": report.step, **point})
            record["complete"] = report.step == steps
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{path.name}.tmp"
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            tmp.replace(path)
            worst = {
                w: _worst_ratio(v, record["teachers"]["validation"]) for w, v in point["validation"].items()
            }
            print(f"{path.name} step {report.step}: worst route ratio on validation {worst}", flush=True)
    return path


def candidate_name(init: str, weights: dict[str, float], schedule: str = "constant") -> str:
    """A candidate's name: its init, then each route weight it sets, then a learning-rate schedule other than
    constant (``arith+global2``, ``arith+cosine``)."""
    name = init + "".join(f"+{route}{w:g}" for route, w in sorted(weights.items()))
    return name if schedule == "constant" else f"{name}+{schedule}"


def _candidate(record: dict[str, Any]) -> str:
    """The candidate a record trains (records of init-only candidates name only their init)."""
    return str(record.get("candidate", record["init"]))


def _worst_ratio(student: dict[str, float], teachers: dict[str, dict[str, float]]) -> float:
    """The lowest student / teacher score ratio over the routes."""
    return min(_bars(student, teachers)[0].values())


def select(records: Sequence[dict[str, Any]]) -> tuple[str, str, int]:
    """The (candidate, weights, step) whose worst route ratio to its teacher, on validation and averaged
    over the seeds, is highest (ties: the fewer steps); only complete records of every seed take part."""
    best: tuple[float, int, tuple[str, str, int]] | None = None
    for candidate in sorted({_candidate(r) for r in records}):
        runs = [r for r in records if _candidate(r) == candidate and r.get("complete")]
        if {r["seed"] for r in runs} != set(MAIN_SEEDS):
            continue
        for i, point in enumerate(runs[0]["curve"]):
            for weights in point["validation"]:
                ratios = [
                    _worst_ratio(r["curve"][i]["validation"][weights], r["teachers"]["validation"])
                    for r in runs
                ]
                score = sum(ratios) / len(ratios)
                if best is None or (score, -point["step"]) > (best[0], best[1]):
                    best = (score, -point["step"], (candidate, weights, point["step"]))
    if best is None:
        raise LookupError(f"no candidate has a complete record for every seed of {MAIN_SEEDS}")
    return best[2]


def main_seeds_table(records: Sequence[dict[str, Any]], folder: str = MAIN_RUNS.name) -> str:
    """The main job over seeds (docs/digits.md): the choice made on validation, then per route the mean and
    95% interval over the seeds of student / teacher on the test half, each seed's value, and the bars."""
    from fieldkit.eval.verdict import Paired

    try:
        candidate, weights, step = select(records)
    except LookupError:
        done = ", ".join(f"{_candidate(r)} seed {r['seed']}" for r in records if r.get("complete")) or "none"
        return (
            f"Pending: the main job over seeds needs a complete record for every seed of {MAIN_SEEDS} "
            f"under `docs/digits/{folder}/` (complete so far: {done}).\n"
        )
    chosen = (r for r in records if _candidate(r) == candidate and r.get("complete"))
    runs = sorted(chosen, key=lambda r: r["seed"])
    rows = []
    for r in runs:
        point = next(p for p in r["curve"] if p["step"] == step)
        student, teachers = point["test"][weights], r["teachers"]["test"]
        ratios, _ = _bars(student, teachers)
        best = max(t["combined"] for t in teachers.values())
        rows.append((r["seed"], ratios, student["combined"], best))
    lines = [
        f"Chosen on validation: {'candidate' if '+' in candidate else 'init'} `{candidate}`, "
        f"weights `{weights}`, "
        f"{step} updates "
        "(the highest worst-route ratio to the teachers, mean over seeds "
        f"{', '.join(map(str, MAIN_SEEDS))}).",
        "",
        "| route | student / teacher, mean [95% interval] | per seed | lowest seed |",
        "|---|---|---|---|",
    ]
    ok = True
    for route in ROUTES:
        values = [ratios[route] for _, ratios, _, _ in rows]
        summary = Paired(tuple(values))  # the ratios themselves: their mean and its t interval
        mean, (lo, hi) = summary.mean, summary.interval()
        ok &= mean >= RATIO and min(values) >= SEED_FLOOR
        per = ", ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {route} | {mean:.3f}x [{lo:.3f}, {hi:.3f}] | {per} | {min(values):.3f} |")
    beats = [combined > best for _, _, combined, best in rows]
    ok &= all(beats)
    combined = ", ".join(f"{c:.3f} against {b:.3f}" for _, _, c, b in rows)
    lines += [
        "",
        f"Combined against the best single teacher, per seed: {combined}.",
        "",
        f"Bars: every route's mean at least {RATIO}x its teacher, no seed below {SEED_FLOOR}x, combined "
        f"above the best single teacher on every seed: **{'every bar met' if ok else 'not every bar met'}**.",
        *_left_out(records, candidate),
    ]
    return "\n".join(lines) + "\n"


def _left_out(records: Sequence[dict[str, Any]], chosen: str) -> list[str]:
    """A line per candidate that did not take part in the choice (not complete on every seed), with how far
    each of its records got and its best worst-route ratio on validation there (the best of its weight
    copies at its last checkpoint), beside the chosen candidate's at the same seed and step."""
    lines = []
    for candidate in sorted({_candidate(r) for r in records} - {chosen}):
        runs = sorted((r for r in records if _candidate(r) == candidate), key=lambda r: r["seed"])
        if {r["seed"] for r in runs if r.get("complete")} == set(MAIN_SEEDS):
            continue
        parts = []
        for r in runs:
            last = r["curve"][-1] if r["curve"] else None
            at = f"{last['step']} updates" if last else "no checkpoint"
            state = "complete" if r.get("complete") else "stopped"
            part = (
                f"seed {r['seed']} {state} at {at}, best worst-route ratio on validation {_best(r, last):.3f}"
            )
            same = next((c for c in records if _candidate(c) == chosen and c["seed"] == r["seed"]), None)
            point = (
                next((p for p in same["curve"] if last and p["step"] == last["step"]), None) if same else None
            )
            if point is not None:
                part += f" (`{chosen}` there: {_best(same, point):.3f})"
            parts.append(part)
        left = f"Left out of the choice (not complete on every seed): `{candidate}`: {'; '.join(parts)}."
        lines += ["", left]
    return lines


def _best(record: dict[str, Any], point: dict[str, Any] | None) -> float:
    """The best worst-route ratio on validation over the weight copies scored at ``point`` (NaN for none)."""
    if point is None:
        return float("nan")
    teachers = record["teachers"]["validation"]
    return max(_worst_ratio(v, teachers) for v in point["validation"].values())


def read_main(folder: Path = MAIN_RUNS) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _updates(text: str) -> int:
    """``--steps``: a whole number of updates, a multiple of ``MAIN_EVERY`` (the runs are scored there)."""
    steps = int(text) if text.isdigit() else 0
    if steps <= 0 or steps % MAIN_EVERY:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive multiple of {MAIN_EVERY}, e.g. 2400")
    return steps


def _route_weight(text: str) -> tuple[str, float]:
    """``--route-weight ROUTE=W``: one of the main job's routes and a positive weight."""
    route, _, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if route not in ROUTES or not (0 < weight < 1e6):
        raise argparse.ArgumentTypeError(f"{text!r}: give ROUTE=W with ROUTE t2i, local or global and W > 0")
    return route, weight


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train one variant and append its record")
    p.add_argument("name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ema", default="0.99,0.995,0.999", help="decays of the side EMAs (comma-separated)")
    p.add_argument("--every", type=int, default=200, help="steps between checkpoint scores")
    p.add_argument("--curve-samples", type=int, default=128, help="samples per route at checkpoints")
    sub.add_parser("report", help="print the ablation tables from the committed records")
    sub.add_parser("main-job", help="print the main job's table from docs/digits/main-job-results.json")
    m = sub.add_parser("main-run", help="train one candidate of the main job over seeds")
    m.add_argument("--init", choices=MAIN_INITS, required=True)
    m.add_argument(
        "--route-weight",
        type=_route_weight,
        action="append",
        default=[],
        metavar="ROUTE=W",
        help="a route's routing weight (default 1 each; the candidate is named for it: arith+global2)",
    )
    m.add_argument(
        "--lr-schedule",
        choices=SCHEDULES,
        default="constant",
        help="the learning rate's decay over --steps (run.lr_schedule; the candidate is named for it: "
        "arith+cosine)",
    )
    m.add_argument("--seed", type=int, choices=MAIN_SEEDS, required=True)
    steps_help = f"updates per run (default {MAIN_STEPS}; another length keeps its records apart)"
    m.add_argument("--steps", type=_updates, default=MAIN_STEPS, help=steps_help)
    ms = sub.add_parser("main-seeds", help="print the main job over seeds (docs/digits.md) from its records")
    ms.add_argument("--steps", type=_updates, default=MAIN_STEPS, help=steps_help)
    ms.add_argument("--lr-schedule", choices=SCHEDULES, default="constant", help="the runs' schedule")
    sub.add_parser(
        "main-choice",
        help="print the main job's recipe chosen on validation over every candidate run of every length",
    )
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(read()), end="")
    if args.command == "main-job":
        print(main_job_table(json.loads(MAIN_JOB.read_text())), end="")
    if args.command == "main-run":
        weights = dict(args.route_weight)
        folder = main_runs(args.steps, args.lr_schedule)
        print(main_run(args.init, args.seed, folder, args.steps, weights, args.lr_schedule))
    if args.command == "main-seeds":
        folder = main_runs(args.steps, args.lr_schedule)
        print(main_seeds_table(read_main(folder), folder.name), end="")
    if args.command == "main-choice":
        print(main_seeds_table(every_main_run(), f"{MAIN_RUNS.name}*"), end="")
    if args.command == "run":
        decays = [float(d) for d in args.ema.split(",") if d]
        run(args.name, args.overrides, decays, args.every, args.curve_samples)


if __name__ == "__main__":
    main(sys.argv[1:])
