"""Reproduce the DanceOPD paper's comparisons at digits scale (docs/reproduction.md).

Every comparison is a list of named runs; a run is a digits graph plus ``--set``-style overrides, trained by
fieldkit's one engine loop (or, for the weight merge and the teachers, evaluated without training). Each
finished run appends one JSON line to ``OUT/results.jsonl``; runs already there are skipped, so a long study
can be stopped, resumed and committed as it lands.

    python examples/digits/reproduce.py --quick --out runs/repro-quick      # smoke test, ~1-2 min
    python examples/digits/reproduce.py --out runs/repro                    # the full study (study v3's)
    python examples/digits/reproduce.py --only composition,routing --seeds 0 --out runs/repro
    python examples/digits/reproduce.py report --out runs/repro             # tables + PNG plots
    python examples/digits/reproduce.py verify --out runs/repro             # a code change keeps the keys?

Every training run exists twice: at matched optimizer steps (``matched: steps``), and at matched compute
(``matched: compute``), where it trains until it has spent as many model passes as the comparison's DanceOPD
reference spent on its steps. Passes are counted per sample: a forward is 1, a backward 2 (rollout and teacher
forwards 1 each, every row of the student's gradient batch 3), so the budget does not depend on the machine;
wall-clock is recorded beside it. ``--matched time`` instead matches training seconds (the v1 protocol).
Every student is scored with one sampler, 16 Euler steps on the shift-3 schedule, whatever it trained with.

Beyond the paper (issue 21): ``frontier`` puts every method's scores against the training passes it spent
(curve points along each run at matched compute; ``report`` draws one PNG per pair and data setting, the
mean over seeds with its 95% interval), and ``many`` composes N = 2, 4, 8 capability teachers over one base.
A run this checkout cannot run yet (a method option or a graph it needs is missing) is skipped with the
reason, in ``list``, the study and the report; its cells read "pending".
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import math
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fieldkit.eval.report_plots import Band
    from fieldkit.eval.verdict import Decision, Paired

HERE = Path(__file__).resolve().parent
CAPS = (2, 4, 8)  # the numbers of capability teachers of the many-teachers comparison
GRAPHS = {
    "t2i_edit": HERE / "reproduce" / "t2i_edit.yaml",
    "local_global": HERE / "reproduce" / "local_global.yaml",
    "t2i_edit_specialist": HERE / "reproduce" / "t2i_edit_specialist.yaml",
    "diagnostic": HERE / "graph.yaml",
    "guidance": HERE / "guidance.yaml",
    "realism": HERE / "realism.yaml",
    # Many teachers (issue 21.4): T2I and one capability LoRA per route over one base, N = 2, 4, 8.
    **{f"caps{n}": HERE / "reproduce" / f"caps{n}.yaml" for n in CAPS},
}
# Comparison 1's pairs: their routes, and the teachers (fields) the tuned merge combines.
PAIRS = {
    "t2i_edit": ("t2i", "local"),
    "local_global": ("local", "global"),
    "t2i_edit_specialist": ("t2i", "local"),
}
MERGED = {
    "t2i_edit": ("t2i", "local"),
    "local_global": ("local", "global"),
    "t2i_edit_specialist": ("t2i", "edit"),
}
# Every setting the runs depend on, stated here rather than inherited from the graphs' YAML (which may change:
# graph.yaml gained `student.ema: 0.995` after study v2's diagnostic ran), applied before each run's own
# overrides. The results key hashes the resolved graph, so a YAML change that these do not cover reruns.
_COMMON = (
    "student.train=full",
    "student.ema=null",
    "router={type: hard, granularity: update}",
    "method={type: danceopd, query: low, k: 1}",
    "flow={steps: 16, shift: 3.0}",
    "run.lr=0.0003",
    "run.grad_clip=1.0",
)


def _stated(init: str | None, batch: int, routes: Sequence[str]) -> tuple[str, ...]:
    # Scores read the test half of the held-out digits; settings are chosen on the validation half.
    split = tuple(f"routes.{r}.data.eval_split=test" for r in routes)
    return (*((f"student.init={init}",) if init else ()), *_COMMON, f"run.batch_size={batch}", *split)


STATED = {
    "t2i_edit": _stated("merged", 16, PAIRS["t2i_edit"]),
    "local_global": _stated("arith", 16, PAIRS["local_global"]),
    "t2i_edit_specialist": _stated("merged", 16, PAIRS["t2i_edit_specialist"]),
    "diagnostic": _stated("arith", 32, ("t2i", "local", "global")),
    "guidance": _stated("t2i", 32, ("t2i",)),
    "realism": _stated("t2i", 32, ("t2i",)),
}


def _graph_yaml(graph: str) -> dict[str, Any]:
    """The YAML of one of :data:`GRAPHS` as written (``{}`` when the file is missing)."""
    import yaml

    path = GRAPHS[graph]
    return dict(yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def stated(graph: str) -> tuple[str, ...]:
    """The settings every run of ``graph`` states (:data:`STATED`); a many-teachers graph's are the pairs'
    (batch 16) over its own routes, from the init its YAML names."""
    if graph in STATED:
        return STATED[graph]
    return _stated(None, 16, list(_graph_yaml(graph).get("routes", {})))


def merged_fields(graph: str) -> tuple[str, ...]:
    """The teachers a tuned merge combines, the T2I base first: :data:`MERGED`'s, or a many-teachers graph's
    route fields."""
    if graph in MERGED:
        return MERGED[graph]
    fields = [str(r["field"]) for r in _graph_yaml(graph).get("routes", {}).values() if r.get("field")]
    return tuple(dict.fromkeys(["t2i", *fields]))


# Cost-quality frontier (issue 21): the pairs, the two data settings, and the cheaper on-policy options
# that comparison 10 already runs (the frontier reuses those runs: same definition, same key).
FRONTIER_PAIRS = ("local_global", "t2i_edit_specialist")
SETTINGS = ("a", "b")
CHEAP = {"reuse4": ("method.reuse=4",), "coarse8": ("method.rollout_steps=8",)}
# The seeds of every comparison, fixed before any run (the verdict rule's tests need at least 5 to decide
# what three seeds cannot; study v2 ran 0-2).
SEEDS = (0, 1, 2, 3, 4)
# Seed s is scored on evaluation draw EVAL_SEED + 2 s (conditions; noise EVAL_SEED + 2 s + 1): the evaluation
# conditions are resampled per seed, the runs of a pair share them.
EVAL_SEED = 1000
# Every student and teacher is scored with the same sampler, whatever it trained with.
EVAL_STEPS, EVAL_SHIFT = 16, 3.0
# The task-arithmetic merge's coefficient is chosen on validation conditions (the validation half of the
# held-out digits; scores read the test half) over this grid: theta = t2i + lam * sum_m (theta_m - t2i).
MERGE_GRID = (0.25, 0.5, 0.75, 1.0)
# A reference's gain over its init that makes a comparison measure learning, not damage (issue 11).
MIN_GAIN = 0.10
# Setting (b): the distillation stage sees every bucket's conditions, but methods that read targets (joint
# SFT, off-policy states) get only a small, noisy sample of them. The teachers saw the full clean pairs.
SCARCE = "{limit: 64, noise: 0.2}"
# The three-bucket diagnostic starts from the main job's init, task arithmetic local + global - t2i (STATED).
# (The paper's starts from its local-edit student; ours already serves two of the three routes, so study
# v1's diagnostic, trained from it for 150 steps, measured which method damaged it least.)
# Optimizer steps of every matched-step run: long enough that each DanceOPD reference is clearly above its
# init on every seed. Measured on seed 0 before the study (combined score of the init, then at 100 steps):
# T2I + Edit from its equal-weight merge 0.499 -> 0.946, Local + Global from task arithmetic 0.072 -> 0.813,
# the diagnostic from task arithmetic 0.168 -> 0.834. (From the T2I base, T2I + Edit needed 300 steps for
# +0.2; from the local-edit student, the diagnostic gained +0.08 in 200 steps.)
STEPS = 150


STEPS_CURVE = ("steps",)  # curve points at matched steps only
COMPUTE_CURVE = ("compute",)  # ... at matched compute only (the frontier's runs)


@dataclass(frozen=True)
class Run:
    """One named run: a graph plus overrides, trained (``train``) or only evaluated (``eval``)."""

    comparison: str
    name: str
    graph: str
    overrides: tuple[str, ...] = ()
    kind: str = "train"  # train | eval (score the init and the route fields) | merge (tuned task arithmetic)
    ref: str | None = None  # the run whose wall time a matched-time twin gets (None: this is a reference)
    betas: tuple[float, ...] = (1.0,)  # inference CFG scales at which the student is scored
    curve: tuple[str, ...] = ()  # the matched modes at which the student is also scored along training
    time_twin: bool = (
        True  # add matched-compute / wall-clock twins (off where per-step cost is equal by design)
    )
    teachers: bool = True  # an eval run also scores the route fields (off: only the init, e.g. a merge)


def comparisons() -> dict[str, list[Run]]:
    """Every comparison of the paper (digest sections 4 and 8) as named runs."""
    out: dict[str, list[Run]] = {}
    comp: list[Run] = []
    for pair in PAIRS:
        ref = f"{pair}/danceopd"
        # The frontier's pairs record curve points: the reference at its steps, the others at its compute.
        ref_curve, curve = (STEPS_CURVE, COMPUTE_CURVE) if pair in FRONTIER_PAIRS else ((), ())
        comp += [
            Run("composition", f"{pair}/teachers", pair, kind="eval", time_twin=False),
            Run(
                "composition",
                f"{pair}/merge",
                pair,
                ("student.init=merged",),
                kind="eval",
                time_twin=False,
                teachers=False,
            ),
            Run("composition", ref, pair, curve=ref_curve),
        ]
        for setting in SETTINGS:
            targets = scarce(pair, setting)
            comp += [
                Run(
                    "composition",
                    f"{pair}/joint-{setting}",
                    pair,
                    ("method={type: sft}", *targets),
                    ref=ref,
                    curve=curve,
                ),
                Run(
                    "composition",
                    f"{pair}/offpolicy-{setting}",
                    pair,
                    ("method={type: offpolicy}", *targets),
                    ref=ref,
                    curve=curve,
                ),
            ]
        comp += [
            Run("composition", f"{pair}/merge-ta", pair, kind="merge", time_twin=False, teachers=False),
            Run("composition", f"{pair}/dense", pair, ("method={type: dense}",), ref=ref),
            Run(
                "composition",
                f"{pair}/dense-uniform",
                pair,
                ("method={type: dense, weighting: none}",),
                ref=ref,
            ),
            # Flow-OPD, fieldkit's variant (the sampled log-ratio reward, normalised in groups of 4 rollouts,
            # so that an update of 16 samples still sees 4 conditions) and the authors' (the closed-form
            # transition KL as advantage, groups of 16, no normalisation, MAR off; eta 0.7, clip +-5, PPO
            # ratio clip 1e-4 in both).
            Run(
                "composition",
                f"{pair}/flowopd",
                pair,
                ("method={type: flowopd, reward: logratio, group: 4}",),
                ref=ref,
            ),
            Run(
                "composition",
                f"{pair}/flowopd-release",
                pair,
                ("method={type: flowopd, reward: release, group: 16}", "run.batch_size=16"),
                ref=ref,
            ),
        ]
    out["composition"] = comp
    dref = "diagnostic/danceopd"
    base = Run("diagnostic", dref, "diagnostic", curve=STEPS_CURVE)
    out["diagnostic"] = [
        Run("diagnostic", "diagnostic/teachers", "diagnostic", kind="eval"),
        base,
    ]
    out["routing"] = [Run("routing", "routing/soft", "diagnostic", ("router.type=soft",), ref=dref)]
    query = []
    for bias in ("mid", "high"):
        query.append(
            Run(
                "query",
                f"query/shift3-{bias}",
                "diagnostic",
                (f"method.query={bias}",),
                ref=dref,
                curve=STEPS_CURVE,
            )
        )
    lin_ref = "query/linear-low"
    for bias in ("low", "mid", "high"):
        query.append(
            Run(
                "query",
                f"query/linear-{bias}",
                "diagnostic",
                ("flow.shift=1.0", f"method.query={bias}"),
                ref=None if bias == "low" else lin_ref,
                curve=STEPS_CURVE,
            )
        )
    out["query"] = query
    out["queries_k"] = [
        *(Run("queries_k", f"k/k{k}", "diagnostic", (f"method.k={k}",), ref=dref) for k in (2, 4)),
        Run("queries_k", "k/k16-all", "diagnostic", ("method.query=all",), ref=dref),
        Run("queries_k", "k/g-all", "diagnostic", ("router.granularity=all",), ref=dref),
        # G = M at the samples per update of G = 1: a third of the batch per route (33 against 32).
        Run(
            "queries_k",
            "k/g-all-matched",
            "diagnostic",
            ("router.granularity=all", "run.batch_size=11"),
            ref=dref,
        ),
    ]
    out["states"] = [
        Run("states", "states/offpolicy", "diagnostic", ("method={type: offpolicy}",), ref=dref),
        Run("states", "states/teacher", "diagnostic", ("method.states=teacher",), ref=dref),
    ]
    betas = (1.0, 2.0, 4.0)
    cfg_ref = "cfg/alpha1"
    out["cfg"] = [
        Run("cfg", "cfg/teachers", "guidance", kind="eval", betas=betas),
        *(
            Run(
                "cfg",
                f"cfg/alpha{a:g}",
                "guidance",
                (f"fields.guided_t2i.w={a}",),
                betas=betas,
                ref=None if a == 1 else cfg_ref,
            )
            for a in (1.0, 2.0, 4.0)
        ),
    ]
    out["realism"] = [
        Run("realism", "realism/teachers", "realism", kind="eval"),
        Run("realism", "realism/danceopd", "realism", curve=STEPS_CURVE),
        Run(
            "realism",
            "realism/offpolicy",
            "realism",
            ("method={type: offpolicy}",),
            ref="realism/danceopd",
            curve=STEPS_CURVE,
        ),
    ]
    merged = ("fields.merged.type=merge", "fields.merged.fields=[t2i, local, global]")
    out["init"] = [
        Run(
            "init",
            f"init/{name}",
            "diagnostic",
            (*over, f"student.init={name}"),
            ref=dref,
            curve=STEPS_CURVE,
            time_twin=False,
        )
        for name, over in (("local", ()), ("t2i", ()), ("global", ()), ("merged", merged))
    ]
    out["rollout"] = [
        Run("rollout", f"rollout/n{n}", "diagnostic", (f"flow.steps={n}",), ref=dref) for n in (8, 28)
    ]
    # Beyond the paper: cheaper on-policy states, each against its pair's DanceOPD reference. One rollout's
    # states serving 4 updates (`method.reuse`), and states from an 8-step rollout (every student is still
    # scored with the 16-step sampler). A bf16 rollout is not here: a pass count prices it like an fp32 one,
    # and this CPU has no faster bf16 path, so only a GPU's wall-clock could show what it saves.
    out["cheap_states"] = [
        Run(
            "cheap_states",
            f"{pair}/{name}",
            pair,
            over,
            ref=f"{pair}/danceopd",
            curve=COMPUTE_CURVE if pair in FRONTIER_PAIRS else (),
        )
        for pair in PAIRS
        for name, over in CHEAP.items()
    ]
    out["frontier"] = _frontier(out)
    out["many"] = _many()
    return out


def scarce(pair: str, setting: str) -> tuple[str, ...]:
    """The overrides of data setting ``setting`` on a pair: none in (a), :data:`SCARCE` targets in (b)."""
    return () if setting == "a" else tuple(f"routes.{r}.data.targets={SCARCE}" for r in PAIRS[pair])


def frontier_options(pair: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    """The frontier's cheaper on-policy options on ``pair``: ``{name: (overrides, reads data)}``; an option
    that reads the bucket's data (partial rollouts noise it, the curriculum's off-policy updates query it)
    has a run per data setting, the others one run that serves both."""
    return {
        **{name: (over, False) for name, over in CHEAP.items()},
        "buffer": (("method.reuse=4", "method.buffer=4", "method.staleness=8"), False),
        "partial": (("method.start_sigma=0.6",), True),
        "handover": (("method.handover=50", "method.on_policy=1.0"), True),
    }


def frontier_run(pair: str, option: str, setting: str) -> str:
    """The name of an option's run in ``setting`` (options that read no data: one run for both)."""
    return f"{pair}/{option}-{setting}" if frontier_options(pair)[option][1] else f"{pair}/{option}"


def frontier_lines(pair: str, setting: str) -> dict[str, tuple[str, str]]:
    """Every line of a frontier plot: ``{label: (run, matched)}``, the DanceOPD reference at its steps and
    every other method at its compute."""
    return {
        "danceopd": (f"{pair}/danceopd", "steps"),
        "offpolicy": (f"{pair}/offpolicy-{setting}", "compute"),
        "joint": (f"{pair}/joint-{setting}", "compute"),
        **{opt: (frontier_run(pair, opt, setting), "compute") for opt in frontier_options(pair)},
    }


def _frontier(out: dict[str, list[Run]]) -> list[Run]:
    """The frontier's runs: its pairs' DanceOPD references and baselines (comparison 1's runs, which record
    curve points on these pairs), reuse4 and coarse8 (comparison 10's), and the new options."""
    runs: list[Run] = []
    for pair in FRONTIER_PAIRS:
        ref = f"{pair}/danceopd"
        for option, (over, reads) in frontier_options(pair).items():
            if option in CHEAP:
                continue
            for setting in SETTINGS if reads else ("a",):
                name = frontier_run(pair, option, setting)
                targets = scarce(pair, setting)
                runs.append(Run("frontier", name, pair, (*over, *targets), ref=ref, curve=COMPUTE_CURVE))
    shared = {
        name for pair in FRONTIER_PAIRS for s in SETTINGS for name, _ in frontier_lines(pair, s).values()
    }
    reused = [r for comp in ("composition", "cheap_states") for r in out[comp] if r.name in shared]
    return [*reused, *runs]


def _many() -> list[Run]:
    """Many teachers: per N, the teachers and the tuned merge (evaluated), DanceOPD, off-policy and joint
    SFT on ``capsN.yaml`` (setting (a))."""
    runs: list[Run] = []
    for n in CAPS:
        graph, ref = f"caps{n}", f"caps{n}/danceopd"
        runs += [
            Run("many", f"{graph}/teachers", graph, kind="eval", time_twin=False),
            Run("many", ref, graph),
            Run("many", f"{graph}/offpolicy", graph, ("method={type: offpolicy}",), ref=ref),
            Run("many", f"{graph}/joint", graph, ("method={type: sft}",), ref=ref),
            Run("many", f"{graph}/merge-ta", graph, kind="merge", time_twin=False, teachers=False),
        ]
    return runs


@dataclass(frozen=True)
class Claim:
    """One direction the paper reports: run ``a`` above (``expected`` +1) or below (-1) run ``b`` on
    ``metric``, or level with it (0: the paper finds no difference); each run at its ``matched`` mode
    ("steps", "time", or "-" for an evaluated, untrained run)."""

    comparison: str
    paper: str
    a: tuple[str, str]
    b: tuple[str, str]
    metric: str = "combined"
    expected: int = 1


TWINS = ("time", "compute")
STUDY_BUDGETS = ("steps", "compute")  # what the study runs (--matched's default): matched steps and compute
# Comparison 1's trained baselines, each a claim against DanceOPD at matched steps and at matched compute.
BASELINES = (
    *("joint-a", "joint-b", "offpolicy-a", "offpolicy-b"),
    *("dense", "dense-uniform", "flowopd", "flowopd-release"),
)  # the budgets a twin can be matched on: wall-clock (v1) or counted passes


def claims() -> list[Claim]:
    """The paper's directions that the study checks, each at matched steps and (where it has a twin) time."""
    out: list[Claim] = []

    def both(comp: str, paper: str, a: str, b: str, metric: str = "combined", expected: int = 1) -> None:
        for twin in ("steps", *TWINS):  # b at matched steps, and its twins at the reference's budget
            out.append(Claim(comp, paper, (a, "steps"), (b, twin), metric, expected))

    for pair in PAIRS:
        ref = f"{pair}/danceopd"
        # The paper's Table 2 claims are per route as well ("keeps the T2I metric"): combined and each route.
        for metric in ("combined", *(f"{route}/score" for route in PAIRS[pair])):
            paper = "DanceOPD above every baseline (Table 2A / 2B)"
            if metric != "combined":
                paper = f"DanceOPD above every baseline on {metric.split('/')[0]} (Table 2A / 2B, per route)"
            for base in BASELINES:
                both("composition", paper, ref, f"{pair}/{base}", metric)
            for merge in ("merge", "merge-ta"):
                out.append(Claim("composition", paper, (ref, "steps"), (f"{pair}/{merge}", "-"), metric))
            # Against the route's own teacher (a teachers run's value on a route's metric is its teacher's).
            if metric != "combined":
                out.append(
                    Claim(
                        "composition",
                        "DanceOPD keeps each route's source (Table 2: GenEval 0.849 vs 0.832)",
                        (ref, "steps"),
                        (f"{pair}/teachers", "-"),
                        metric,
                    )
                )
    dref = "diagnostic/danceopd"
    both("routing", "hard above soft routing (+15%)", dref, "routing/soft")
    for low, schedule in ((dref, "shift3"), ("query/linear-low", "linear")):
        for bias in ("mid", "high"):
            both("query", "low-noise query above mid and high", low, f"query/{schedule}-{bias}")
    both("query", "high above mid", "query/shift3-high", "query/shift3-mid")
    for k in ("k2", "k4", "k16-all"):
        both("queries_k", "K = 1 above K > 1", dref, f"k/{k}")
    both("queries_k", "G = 1 above G = M", dref, "k/g-all")
    both("queries_k", "G = 1 above G = M", dref, "k/g-all-matched")
    for states in ("offpolicy", "teacher"):
        both("states", "on-policy states above off-policy ones", dref, f"states/{states}")
    cfg = "the absorbed 1-NFE student moves toward the guided teacher"
    for matched in ("steps", *TWINS):  # alpha 1 is the reference; alpha 2 has the twins
        out.append(Claim("cfg", cfg, ("cfg/alpha2", matched), ("cfg/alpha1", "steps"), "t2i/realism"))
    both(
        "realism",
        "DanceOPD closes more of the realism gap",
        "realism/danceopd",
        "realism/offpolicy",
        "t2i/realism",
    )
    init = "init: local >> merged > global > T2I"
    for a, b in (
        ("local", "merged"),
        ("local", "global"),
        ("local", "t2i"),
        ("merged", "global"),
        ("global", "t2i"),
    ):
        out.append(Claim("init", init, (f"init/{a}", "steps"), (f"init/{b}", "steps")))
    for n in ("n8", "n28"):
        both("rollout", "8 / 16 / 28 rollout steps in one band", dref, f"rollout/{n}", expected=0)
    for pair in PAIRS:
        ref = f"{pair}/danceopd"
        for cheap in ("reuse4", "coarse8"):
            run = f"{pair}/{cheap}"
            out.append(
                Claim(
                    "cheap_states",
                    "ours: as good as DanceOPD at matched steps",
                    (run, "steps"),
                    (ref, "steps"),
                    expected=0,
                )
            )
            out.append(
                Claim("cheap_states", "ours: above DanceOPD at its compute", (run, "compute"), (ref, "steps"))
            )
            out.append(
                Claim(
                    "cheap_states",
                    "ours: above joint SFT (a) at matched compute",
                    (run, "compute"),
                    (f"{pair}/joint-a", "compute"),
                )
            )
    # The frontier: each cheaper option against off-policy and joint SFT at matched compute in each data
    # setting, and level with DanceOPD at matched steps; a claim comparison 10 makes already is not repeated.
    for pair in FRONTIER_PAIRS:
        for setting in SETTINGS:
            for option in frontier_options(pair):
                run = frontier_run(pair, option, setting)
                out.append(
                    Claim(
                        "frontier",
                        "ours: as good as DanceOPD at matched steps",
                        (run, "steps"),
                        (f"{pair}/danceopd", "steps"),
                        expected=0,
                    )
                )
                for base, label in (("offpolicy", "off-policy"), ("joint", "joint SFT")):
                    out.append(
                        Claim(
                            "frontier",
                            f"ours: above {label} ({setting}) at matched compute",
                            (run, "compute"),
                            (f"{pair}/{base}-{setting}", "compute"),
                        )
                    )
    unique: dict[tuple[tuple[str, str], tuple[str, str], str], Claim] = {}
    for claim in out:
        unique.setdefault((claim.a, claim.b, claim.metric), claim)
    return list(unique.values())


# -- running ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Study-wide settings (the defaults are study v3's; ``--quick`` shrinks them)."""

    steps: int = STEPS
    eval_samples: int = 96
    curve_points: int = 4
    curve_samples: int = 48
    budget_seconds: float | None = None
    quick: bool = False
    base: tuple[str, ...] = field(default_factory=tuple)  # before each run's overrides (--quick's batch)
    extra: tuple[str, ...] = field(default_factory=tuple)  # after them (--set: every run)


QUICK = Settings(
    steps=4, eval_samples=8, curve_points=2, curve_samples=8, quick=True, base=("run.batch_size=4",)
)


def _digest(paths: Iterable[Path], root: Path, relative: bool = False) -> str:
    """A hash of the files' names (below ``root``, or relative to it with ``relative``) and bytes."""
    import hashlib

    digest = hashlib.sha1()
    for path in paths:
        name = os.path.relpath(path, root) if relative else str(path.relative_to(root))
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def world_fingerprint() -> str:
    """A hash of the world the numbers depend on: the teachers' weights and the digits plugin's sources
    (buckets, prompts, metrics)."""
    import fieldkit_digits

    plugin = Path(fieldkit_digits.__file__).parent
    teachers = sorted((HERE / "teachers").glob("*/model.safetensors"))
    return _digest([*teachers, *sorted(plugin.glob("*.py"))], HERE.parents[1])


# fieldkit modules that only print, draw or write reports: no run executes them between its seed and its
# scores, so a change to them changes no trained weight and no score (checked module by module): the command
# line (commands/, cli.py: parse and print, then call the engine), the console (distill/console.py: banner,
# progress, end tables; its Ctrl-C handler only stops a run early), experiment trackers (distill/trackers.py:
# log what the engine measured), the run report and its drawings (eval/run_report.py, eval/report_plots.py,
# eval/graph_svg.py, eval/svg_chart.py: HTML and SVG from a finished run's files) and the verdict rule
# (eval/verdict.py: the page computes verdicts from the results, no run imports it).
REPORTING = (
    "commands",
    "cli.py",
    "distill/console.py",
    "distill/trackers.py",
    "eval/run_report.py",
    "eval/report_plots.py",
    "eval/graph_svg.py",
    "eval/svg_chart.py",
    "eval/verdict.py",
)


def code_fingerprint(root: Path | None = None) -> str:
    """A hash of the code a run executes: every module of the fieldkit package at ``root`` (default: the
    imported one) but those in :data:`REPORTING`, each as its syntax tree without docstrings, so that a
    docstring, comment or formatting edit keeps every run's key and any code change re-keys."""
    import ast
    import hashlib

    if root is None:
        import fieldkit

        root = Path(fieldkit.__file__).parent
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if any(name == r or name.startswith(r + "/") for r in REPORTING):
            continue
        tree = ast.parse(path.read_bytes(), filename=name)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:]
        digest.update(name.encode())
        digest.update(ast.dump(tree, include_attributes=False).encode())
    return digest.hexdigest()[:12]


# -- code versions verified to rerun the study's runs bit for bit ------------------------------------------

# OUT/SAME_CODE: a line per code version that ``verify`` found to rerun another version's runs.
SAME_CODE = "same-code.jsonl"
# What a rerun must give again, to the last bit: every field of a record but those that time it (or name it).
NOT_COMPARED = frozenset(
    {"key", "world", "code", "train_seconds", "eval_seconds", "wall_seconds", "sec_per_step", "time_per_step"}
)


def study_code(out: Path) -> str:
    """The code version this checkout's runs are keyed by: :func:`code_fingerprint`, or the earlier version
    that ``OUT/same-code.jsonl`` records it reruns bit for bit (``verify``), followed to its first. A code's
    last line decides: one whose ``same_as`` is null (a later rerun differed) keys by the code itself."""
    same = {r["code"]: r["same_as"] for r in _read_jsonl(out / SAME_CODE)}
    code, seen = code_fingerprint(), set()
    while same.get(code) is not None and code not in seen:
        seen.add(code)
        code = same[code]
    return code


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verification_sample(
    results: list[dict[str, Any]], code: str, settings: Settings, world: str
) -> list[dict[str, Any]]:
    """One committed run of ``code`` per method label (a run name's last part: ``danceopd``, ``reuse4``,
    ``merge-ta``, ...), the quickest, among those whose key these settings reproduce (so that a rerun is
    the same run). A run matched in wall-clock time is no sample: its budget is a measured time."""
    planned = {run.name: run for runs in comparisons().values() for run in runs}
    quickest: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.get("code") != code or r.get("world") != world or r["name"] not in planned:
            continue
        if r["matched"] == "time":
            continue
        if r["key"] != run_key(planned[r["name"]], r["seed"], r["matched"], settings, world, code):
            continue
        label = method_label(r["name"])
        if label not in quickest or r["wall_seconds"] < quickest[label]["wall_seconds"]:
            quickest[label] = r
    return [quickest[label] for label in sorted(quickest)]


def method_label(name: str) -> str:
    """A run's method label: its name's last part (``local_global/reuse4`` -> ``reuse4``)."""
    return name.rsplit("/", 1)[-1]


def differences(record: dict[str, Any], again: dict[str, Any]) -> list[str]:
    """The fields (but :data:`NOT_COMPARED`) in which a rerun differs from its committed record."""
    fields = (set(record) | set(again)) - NOT_COMPARED
    return sorted(f for f in fields if json.dumps(record.get(f)) != json.dumps(again.get(f)))


def verify(out: Path, settings: Settings) -> bool:
    """Rerun :func:`verification_sample` of ``OUT/results.jsonl`` with this checkout's code, but the method
    labels an earlier ``verify`` of this code already checked; when every rerun equals its record (but
    timings), append to ``OUT/same-code.jsonl`` that this code reruns the results' code version (so that the
    study keeps their keys), else that it does not (``same_as`` null: it re-keys). True when this code
    reruns that version (or is it)."""
    results = read_results(out / "results.jsonl")
    if not results:
        sys.exit(f"no results in {out / 'results.jsonl'}: nothing to verify")
    target = Counter(r["code"] for r in results).most_common(1)[0][0]
    head = code_fingerprint()
    if head == target:
        print(f"this checkout's code ({head}) is the results' code version: nothing to verify")
        return True
    lines = [r for r in _read_jsonl(out / SAME_CODE) if r["code"] == head]
    if lines and lines[-1]["same_as"] is None:
        print(f"this checkout's code ({head}) was found to differ from {target}: it re-keys the study")
        return False
    checked = {method_label(key.split("|")[0]) for line in lines for key in line["runs"]}
    world = world_fingerprint()
    candidates = verification_sample(results, target, settings, world)
    if not candidates:
        sys.exit(
            f"no run of code {target} in {out / 'results.jsonl'} has the key these settings give: pass the "
            "study's own settings (--eval-samples, --curve-samples, --steps, --set), at the same world"
        )
    sample = [r for r in candidates if method_label(r["name"]) not in checked]
    if not sample:
        print(f"this checkout's code ({head}) reruns {target}: every method label was checked already")
        return True
    print(f"rerunning {len(sample)} runs of code {target} with this checkout's code ({head})", flush=True)
    failed = []
    for record in sample:
        run = _run_named(record["name"])
        budget = None
        if record["matched"] in TWINS:
            ref = run_key(_run_named(str(run.ref)), record["seed"], "steps", settings, world, target)
            budget = _reference_budget(results, ref, record["matched"])
        again = execute(run, record["seed"], record["matched"], settings, budget)
        diff = differences(record, again)
        print(f"  {record['key']}: {'differs in ' + ', '.join(diff) if diff else 'the same'}", flush=True)
        failed += [record["key"]] if diff else []
    line = {"code": head, "same_as": None if failed else target, "runs": failed or [r["key"] for r in sample]}
    with (out / SAME_CODE).open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    if failed:
        print(f"{len(failed)} of {len(sample)} reruns differ: this code re-keys the study (rerun it)")
        return False
    print(f"every rerun is the same: {out / SAME_CODE} records code {head} as rerunning {target}")
    return True


def overrides_of(run: Run, seed: int, matched: str, settings: Settings) -> list[str]:
    """Every override a run is trained with: the stated settings, then the run's own, then the study's."""
    steps = settings.steps if matched == "steps" else 10**9
    return [
        *stated(run.graph),
        *settings.base,
        *run.overrides,
        f"run.seed={seed}",
        f"run.steps={max(steps, 1)}",
        "run.device=cpu",
        *settings.extra,
    ]


# Settings the graph schema gained after study v3 keyed its runs, with the value that gives the runs as they
# ran: at that value a setting is left out of the key, so that the study keeps its keys (any other value is
# in it, and re-keys the run). A setting added to the schema with a default that changes no run goes here.
# run.trace replays only diffusers backbones' passes (SharedAdapterField.traceable); the digits world's own
# models always ran eager, so its default changes no run of the study.
KEYED_BEFORE: dict[tuple[str, str], Any] = {("run", "grid_samples"): 8, ("run", "trace"): True}


@functools.cache
def run_key(run: Run, seed: int, matched: str, settings: Settings, world: str, code: str) -> str:
    """What identifies a run in results.jsonl: its name, seed and budget, and a hash of everything that
    changes it: the resolved graph (after every override), the world (teachers, plugin), the weight files the
    graph names (:func:`inputs_fingerprint`), the code version,
    the evaluation settings and, for a matched-budget twin, its reference's key."""
    import hashlib

    from fieldkit import load_graph

    graph = load_graph(GRAPHS[run.graph], overrides_of(run, seed, matched, settings)).spec.model_dump(
        mode="json"
    )
    for (section, name), value in KEYED_BEFORE.items():
        if graph[section].get(name) == value:
            del graph[section][name]
    payload = {
        "graph": graph,
        "world": world,
        "inputs": inputs_fingerprint(run.graph),
        "code": code,
        "kind": run.kind,
        "betas": run.betas,
        "teachers": run.teachers,
        "curve": [settings.curve_points, settings.curve_samples] if matched in run.curve else None,
        "eval": [settings.eval_samples, EVAL_STEPS, EVAL_SHIFT, EVAL_SEED],
        "budget": settings.budget_seconds if matched == "time" else None,
    }
    if matched in TWINS and run.ref is not None:
        payload["ref"] = run_key(_run_named(run.ref), seed, "steps", settings, world, code)
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{run.name}|seed={seed}|{matched}|{digest}"


def _run_named(name: str) -> Run:
    return next(r for runs in comparisons().values() for r in runs if r.name == name)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The runs of ``path``, one per (name, seed, budget): a run rerun under a new key (changed code, world
    or graph) replaces the earlier line, which stays in the file as history but is never counted again."""
    latest = {(r["name"], r["seed"], r["matched"]): r for r in _read_jsonl(path)}
    return list(latest.values())


def score_fields(
    engine: Any, fields: dict[str, Any], samples: int, seed: int = 0, split: str | None = None
) -> dict[str, dict[str, float]]:
    """``{field: {route/metric: value, combined: value}}`` on the same conditions and noise (drawn with
    ``seed``), every field sampled with the study's one sampler (``EVAL_STEPS``, shift ``EVAL_SHIFT``); on
    the held-out digits the graph's routes read, or on their ``split`` half (``validation``, ``test``)."""
    from dataclasses import replace

    from fieldkit.eval.report import combined_scores, evaluate
    from fieldkit.flow import sigma_schedule

    device = engine.session.accelerator.device
    sigmas = sigma_schedule(EVAL_STEPS, EVAL_SHIFT).to(device)
    routes = engine.session.router.routes
    if split is not None:  # the same routes, their evaluation reading the `split` half of the held-out digits
        routes = [
            replace(r, data=type(r.data)(r.data.params.model_copy(update={"eval_split": split})))
            for r in routes
        ]
    scores = evaluate(fields, routes, sigmas, samples, seed, device=device)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for s in scores:
        table[s.field].update({f"{s.route}/{k}": float(v) for k, v in s.values.items()})
    for name, value in combined_scores(scores).items():
        table[name]["combined"] = float(value)
    return dict(table)


def eval_seed(seed: int) -> int:
    """The evaluation draw of training seed ``seed`` (conditions; its noise is the next seed)."""
    return EVAL_SEED + 2 * seed


def _tuned_merge(engine: Any, run: Run, seed: int, settings: Settings) -> dict[str, Any]:
    """Task arithmetic ``t2i + lam * sum_m (theta_m - t2i)`` over the pair's teachers, ``lam`` chosen from
    ``MERGE_GRID`` on the validation half of the held-out digits; scored on the test half."""
    from fieldkit.merge import merge_models

    base = engine.session.ctx.field("t2i")
    edits = [engine.session.ctx.field(name) for name in merged_fields(run.graph) if name != "t2i"]
    validation: dict[str, float] = {}
    best: tuple[float, float, Any] | None = None
    for lam in MERGE_GRID:
        model = merge_models([base, *edits], [1 - lam * len(edits), *([lam] * len(edits))])
        score = score_fields(engine, {"init": model}, settings.eval_samples, eval_seed(seed), "validation")[
            "init"
        ]["combined"]
        validation[f"{lam:g}"] = score
        if best is None or score > best[0]:
            best = (score, lam, model)
    assert best is not None
    scores = score_fields(engine, {"init": best[2]}, settings.eval_samples, eval_seed(seed))
    return {
        "steps": 0,
        "train_seconds": 0.0,
        "scores": scores,
        "merge_lambda": best[1],
        "validation": validation,
    }


def teacher_bytes(engine: Any) -> int:
    """Bytes of the distinct parameters and buffers that the route fields (the teachers) hold, a tensor
    shared by several of them (LoRA teachers over one base) counted once: the teachers' share of a run's
    peak memory, which does not depend on the machine (the process's RSS does, and holds every run of it)."""
    import torch

    from fieldkit.backbones.field import parameter_bytes

    modules = [r.field for r in engine.session.router.routes if isinstance(r.field, torch.nn.Module)]
    return parameter_bytes(torch.nn.ModuleList(dict.fromkeys(modules)))


def _student_fields(engine: Any, betas: Iterable[float]) -> dict[str, Any]:
    from fieldkit.ops.guidance import Guidance

    model = engine.session.inference_model()
    return {
        ("student" if b == 1 else f"student@beta={b:g}"): (model if b == 1 else Guidance(model, b))
        for b in betas
    }


def _curve(history: list[dict[str, Any]], points: int = 40) -> dict[str, list[list[float]]]:
    """Per-route training loss, averaged in ``points`` windows of steps: ``{route: [[step, loss], ...]}``."""
    per_route: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for rec in history:
        for key, value in rec.items():
            if key.startswith("loss/"):
                per_route[key[5:]].append((int(rec["step"]), float(value)))
    out: dict[str, list[list[float]]] = {}
    for route, values in per_route.items():
        width = max(1, math.ceil(len(values) / points))
        out[route] = [
            [
                values[min(i + width, len(values)) - 1][0],
                statistics.fmean(v for _, v in values[i : i + width]),
            ]
            for i in range(0, len(values), width)
        ]
    return out


def execute(run: Run, seed: int, matched: str, settings: Settings, budget: float | None) -> dict[str, Any]:
    """Train (or only evaluate) one run and return its results record; a twin stops at ``budget`` training
    seconds (``matched: time``) or model passes (``matched: compute``)."""
    import torch

    from fieldkit import load_graph
    from fieldkit.distill.engine import Engine

    torch.set_num_threads(1)
    overrides = overrides_of(run, seed, matched, settings)
    at = eval_seed(seed)
    graph = load_graph(GRAPHS[run.graph], overrides)
    engine = Engine(graph, None, show_progress=False, write=False)
    record: dict[str, Any] = {
        "comparison": run.comparison,
        "name": run.name,
        "seed": seed,
        "matched": matched,
        "kind": run.kind,
        "graph": str(GRAPHS[run.graph].relative_to(HERE.parent.parent)),
        "overrides": list(overrides),
        "quick": settings.quick,
        "target_steps": settings.steps,
    }
    t_eval = time.perf_counter()
    if run.kind == "merge":
        record.update(_tuned_merge(engine, run, seed, settings))
        record["eval_seconds"] = time.perf_counter() - t_eval
        return record
    if run.kind == "eval":
        fields = {r.name + "_teacher": r.field for r in engine.session.router.routes if r.field is not None}
        if not run.teachers:  # e.g. the weight merge: only the init is new
            fields = {}
        if run.betas != (1.0,):  # the guided base teacher at each inference beta (2 NFEs per step)
            from fieldkit.ops.guidance import Guidance

            base = engine.session.ctx.field("t2i")
            fields.update({f"t2i@w={b:g}": Guidance(base, b) for b in run.betas if b != 1})
        fields["init"] = engine.session.inference_model()
        scores = score_fields(engine, fields, settings.eval_samples, at)
        record.update(steps=0, train_seconds=0.0, scores=scores, teacher_bytes=teacher_bytes(engine))
        record["eval_seconds"] = time.perf_counter() - t_eval
        return record
    spent_passes = teacher_forwards = 0  # the engine's count: training forwards only
    train_seconds = eval_seconds = 0.0
    metric_curve: list[dict[str, Any]] = []
    marks: list[float] = []  # where the curve's inner points fall: steps, or passes at matched compute
    if matched in run.curve:
        total = settings.steps if matched == "steps" else budget
        marks = (
            [total * (i + 1) / settings.curve_points for i in range(settings.curve_points - 1)]
            if total
            else []
        )

    def curve_point(step: int) -> None:  # the student's scores, with the training passes spent so far
        nonlocal eval_seconds
        t1 = time.perf_counter()
        values = score_fields(engine, _student_fields(engine, (1.0,)), settings.curve_samples, at)["student"]
        metric_curve.append({"step": step, "passes": spent_passes, **values})
        eval_seconds += time.perf_counter() - t1

    if matched in run.curve:
        curve_point(0)
    t0 = time.perf_counter()
    for report in engine.steps():  # the engine's own loop: its counters and its bad-step policy
        train_seconds += time.perf_counter() - t0
        spent_passes += report.update.passes.total
        teacher_forwards += report.update.passes.teacher
        progress = report.step if matched == "steps" else spent_passes
        if marks and progress >= marks[0]:
            marks = [m for m in marks if m > progress]
            curve_point(report.step)
        spent = train_seconds if matched == "time" else spent_passes
        if budget is not None and spent >= budget:
            engine.request_stop(f"{matched} budget spent")
        t0 = time.perf_counter()
    t0 = time.perf_counter()
    scores = score_fields(engine, _student_fields(engine, run.betas), settings.eval_samples, at)
    eval_seconds += time.perf_counter() - t0
    if matched in run.curve:
        curve_point(engine.step)
    hist = engine.history
    n = max(len(hist), 1)
    record.update(
        steps=engine.step,
        bad_steps=engine.bad_steps,
        budget_seconds=budget,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        sec_per_step=train_seconds / n,
        rollout_nfe_per_step=sum(r["rollout_nfe"] for r in hist) / n,
        rollout_samples_per_step=sum(r["rollout_samples"] for r in hist) / n,
        teacher_forwards_per_step=teacher_forwards / n,
        passes=spent_passes,
        passes_per_step=spent_passes / n,
        passes_per_sample=spent_passes
        / max(engine.step * graph.spec.run.batch_size * graph.spec.run.grad_accum, 1),
        teacher_bytes=teacher_bytes(engine),
        time_per_step={k[5:]: sum(r.get(k, 0.0) for r in hist) / n for k in hist[0] if k.startswith("time/")}
        if hist
        else {},
        scores=scores,
        loss_curve=_curve(hist),
        metric_curve=metric_curve,
    )
    return record


def plan(selected: Sequence[str], seeds: Sequence[int], matched: Sequence[str]) -> list[tuple[Run, int, str]]:
    """(run, seed, matched) in an order where every reference precedes its matched-budget twins, each once
    (a comparison may share runs with another: the frontier's are comparison 1's and 10's), without the
    runs this checkout cannot run (:func:`unavailable`)."""
    table = comparisons()
    always = (
        ["diagnostic"]
        if any(c in selected for c in ("routing", "query", "queries_k", "states", "init", "rollout"))
        else []
    )
    todo: list[tuple[Run, int, str]] = []
    for seed in seeds:
        for name in dict.fromkeys([*always, *selected]):
            runs = [r for r in table[name] if unavailable(r) is None]
            if "steps" in matched:
                todo += [(r, seed, "steps") for r in runs]
            for twin in TWINS:
                if twin in matched:
                    todo += [(r, seed, twin) for r in runs if r.kind == "train" and r.ref and r.time_twin]
    return list(dict.fromkeys(todo))


def skipped(selected: Sequence[str]) -> dict[str, str]:
    """``{run: why}`` for every run of the ``selected`` comparisons that this checkout cannot run."""
    table = comparisons()
    return {r.name: why for c in selected for r in table[c] if (why := unavailable(r)) is not None}


def _path_like(key: str, value: Any) -> bool:
    return isinstance(value, str) and (
        key.endswith("path") or "/" in value or value.endswith((".safetensors", ".pt", ".bin"))
    )


def _named_paths(graph: str) -> list[Path]:
    """The files and folders that graph ``graph``'s fields name (resolved against the graph's folder)."""
    folder = GRAPHS[graph].parent
    return [
        folder / value
        for spec in _graph_yaml(graph).get("fields", {}).values()
        for key, value in dict(spec).items()
        if _path_like(key, value)
    ]


@functools.cache
def inputs_fingerprint(graph: str) -> str:
    """A hash of the weight files that graph ``graph``'s fields name (a checkpoint, a LoRA folder's
    adapter): a capability LoRA retrained re-keys the runs that read it, and only those."""
    files: list[Path] = []
    for named in (p for p in _named_paths(graph) if p.exists()):
        files += sorted(named.rglob("*.safetensors")) if named.is_dir() else [named]
    return _digest(sorted({f.resolve() for f in files}), GRAPHS[graph].parent.resolve(), relative=True)


@functools.cache
def unavailable(run: Run) -> str | None:
    """Why ``run`` cannot run in this checkout, or None: its graph, or a model file or folder that the
    graph's fields name, is missing (the many-teachers graphs and their capability LoRAs), or it sets a
    method option that this fieldkit's DanceOPD method does not have."""
    from fieldkit.training_params import DistillParams

    path = GRAPHS[run.graph]
    root = HERE.parents[1]
    missing = [] if path.exists() else [path]
    missing += [p for p in _named_paths(run.graph) if not p.exists()]
    if missing:
        names = ", ".join(os.path.relpath(m, root) for m in missing)
        return (
            f"needs {os.path.relpath(path, root)} and its teachers (missing: {names}): add the graph and "
            "train the teachers its header names, then run `python examples/digits/reproduce.py --only "
            f"{run.comparison}`"
        )
    options = [o.split("=", 1)[0] for o in run.overrides if o.startswith("method.")]
    unknown = [o for o in options if o.removeprefix("method.") not in DistillParams.model_fields]
    if unknown:
        return (
            f"needs {', '.join(unknown)}, which this checkout's DanceOPD method does not have (issue 21's "
            "cheaper-state options): run it from a checkout that has them"
        )
    return None


def study(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    selected = list(comparisons()) if not args.only else args.only.split(",")
    unknown = set(selected) - set(comparisons())
    if unknown:
        sys.exit(f"unknown comparison(s) {sorted(unknown)}; known: {', '.join(comparisons())}")
    todo = plan(selected, args.seeds, args.matched.split(","))
    for name, why in skipped(selected).items():
        print(f"skip {name}: {why}")
    if args.runs:  # only the runs named (shell patterns), e.g. --runs 't2i_edit_specialist/*'
        todo = [t for t in todo if any(fnmatch.fnmatch(t[0].name, pat) for pat in args.runs.split(","))]
    world, code = world_fingerprint(), study_code(out)
    claims = out / "claims"
    claims.mkdir(exist_ok=True)
    waiting = todo
    idle_since = time.monotonic()
    while waiting:
        deferred = []
        for run, seed, matched in waiting:
            key = run_key(run, seed, matched, settings, world, code)
            results = read_results(results_path)
            if key in {r.get("key") for r in results}:
                continue
            budget = None  # a twin's budget: its reference's training seconds or model passes
            if matched in TWINS:
                ref_key = run_key(_run_named(str(run.ref)), seed, "steps", settings, world, code)
                reference = _reference_budget(results, ref_key, matched)
                budget = (settings.budget_seconds if matched == "time" else None) or reference
                if budget is None:
                    deferred.append((run, seed, matched))
                    continue
            if _claim(claims, key):
                # Re-read after claiming: another process may have finished it since the check above.
                if key not in {r.get("key") for r in read_results(results_path)}:
                    _run_one(run, seed, matched, settings, (key, world, code), results_path, budget)
                    if args.git_commit:
                        _git_commit(results_path, key)
                    idle_since = time.monotonic()
                _release(claims, key)
        if deferred and time.monotonic() - idle_since > args.wait_minutes * 60:
            for run, seed, matched in deferred:
                key = run_key(run, seed, matched, settings, world, code)
                print(f"skip {key}: its reference {run.ref} has not run (run the study again once it has)")
            return
        if deferred:  # their references are running in another process: poll results.jsonl
            time.sleep(20)
        waiting = deferred


def _claim(claims: Path, key: str) -> bool:
    """Take ``key`` for this process (a file holding its pid); False while another live process holds it.

    Several processes started on the same ``--out`` share the plan this way, each taking the next run
    nobody holds, in plan order; a claim left by a process that died is taken over.
    """
    path = _claim_path(claims, key)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(path.read_text() or 0)
            os.kill(holder, 0)
            return False
        except (ValueError, ProcessLookupError, FileNotFoundError):
            path.write_text(str(os.getpid()))  # stale: its process is gone
            return True
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    return True


def _release(claims: Path, key: str) -> None:
    _claim_path(claims, key).unlink(missing_ok=True)


def _claim_path(claims: Path, key: str) -> Path:
    import hashlib

    return claims / hashlib.sha1(key.encode()).hexdigest()[:16]


def _run_one(
    run: Run,
    seed: int,
    matched: str,
    settings: Settings,
    identity: tuple[str, str, str],
    results_path: Path,
    budget: float | None,
) -> None:
    """Train (or evaluate) one run, for at most ``budget`` training seconds or passes, and append its record
    with its ``(key, world, code)``."""
    key, world, code = identity
    started = time.perf_counter()
    print(f"run {key}", flush=True)
    record = execute(run, seed, matched, settings, budget)
    record.update(key=key, world=world, code=code)
    record["wall_seconds"] = time.perf_counter() - started
    with results_path.open("a") as fh:  # one line per run, appended when it finishes
        fh.write(json.dumps(record) + "\n")
    summary = record["scores"].get("student", record["scores"].get("init", {}))
    print(
        f"  done in {record['wall_seconds']:.0f}s, {record['steps']} steps, "
        f"combined {summary.get('combined', float('nan')):.3f}",
        flush=True,
    )


def _git_commit(results_path: Path, key: str) -> None:
    """Commit ``results_path`` alone (``--git-commit``): a study that stops keeps every finished run. The
    processes sharing a plan take turns (a lock file among the claims: two at once would meet on git's
    index lock), and a commit that fails is a warning, not the end of the study: the run is in the file,
    and the next commit takes it along (as it does when another process's commit already took it)."""
    import fcntl
    import subprocess

    claims = results_path.parent / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    message = f"study: {key.split('|')[0]} {key}"
    with (claims / "commit.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for cmd in (
            ["git", "add", str(results_path)],
            ["git", "commit", "-q", "-m", message, "--", str(results_path)],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            said = done.stdout + done.stderr
            if done.returncode != 0 and not (
                "nothing to commit" in said or "nothing added to commit" in said
            ):
                why = (done.stderr or done.stdout).strip()[:200]
                print(
                    f"  warning: {' '.join(cmd[:2])} failed ({why}); the run is in {results_path}", flush=True
                )
                return


def _reference_budget(results: list[dict[str, Any]], ref_key: str, matched: str) -> float | None:
    """The reference's training seconds (``time``) or model passes (``compute``), once it ran."""
    for r in results:
        if r.get("key") == ref_key:
            return float(r["train_seconds"] if matched == "time" else r["passes"])
    return None


def settings_of(args: argparse.Namespace) -> Settings:
    """The study's settings from the command line (``--quick``: :data:`QUICK`)."""
    if args.quick:
        return replace(
            QUICK, steps=args.steps or QUICK.steps, budget_seconds=args.budget_seconds, extra=tuple(args.set)
        )
    return Settings(
        steps=args.steps or STEPS,
        eval_samples=args.eval_samples,
        curve_samples=args.curve_samples,
        budget_seconds=args.budget_seconds,
        extra=tuple(args.set),
    )


# -- report -------------------------------------------------------------------------------------------------

COLUMNS = {
    "composition": ["combined", "t2i/score", "local/score", "global/score"],
    "cfg": ["t2i/score", "t2i/fd", "t2i/realism"],
    "realism": ["t2i/realism", "t2i/score", "t2i/fd"],
}
DIAGNOSTIC_BASED = {"routing", "query", "queries_k", "states", "init", "rollout"}
DEFAULT_COLUMNS = ["combined", "t2i/score", "local/score", "global/score"]


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _value(record: dict[str, Any], metric: str) -> float:
    """A run's score on ``metric``: the student's, the init's for an evaluated (untrained) run, or, for a
    teachers run and a route's metric ``ROUTE/...``, that route's teacher's."""
    scores = record["scores"]
    name = "student" if "student" in scores else "init"
    if record["name"].endswith("/teachers") and f"{metric.split('/')[0]}_teacher" in scores:
        name = f"{metric.split('/')[0]}_teacher"
    return float(scores[name].get(metric, math.nan))


def _init_name(record: dict[str, Any]) -> str | None:
    """The last ``student.init=NAME`` override of a run (None: the graph's own init)."""
    names = [o.split("=", 1)[1] for o in record["overrides"] if o.startswith("student.init=")]
    return names[-1] if names else None


def _init_value(
    record: dict[str, Any], teachers: dict[tuple[str, int], dict[str, Any]], metric: str
) -> float:
    """The score of the weights a run started from, NaN when it was not measured: the ``init`` row of its
    graph's teachers run (same seed and init), the teacher it was initialised from, or its metric curve's
    step 0."""
    ref = teachers.get((record["graph"], record["seed"]))
    name = _init_name(record)
    if ref is not None:
        if name == _init_name(ref):
            return float(ref["scores"]["init"].get(metric, math.nan))
        if f"{name}_teacher" in ref["scores"]:
            return float(ref["scores"][f"{name}_teacher"].get(metric, math.nan))
    curve = record.get("metric_curve") or []
    if curve and curve[0]["step"] == 0:
        return float(curve[0].get(metric, math.nan))
    return math.nan


def _signed(values: Sequence[float]) -> str:
    return ", ".join(f"{v:+.3f}" for v in values)


def _rows_of(comp: str, by_comp: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A comparison's records, the diagnostic reference's first where the comparison is built on it."""
    rows = by_comp.get(comp, [])
    if comp in DIAGNOSTIC_BASED:  # the shared reference (hard, low, K = 1, 16 steps, task arithmetic) first
        rows = [r for r in by_comp.get("diagnostic", []) if r["kind"] == "train"] + rows
    if comp == "cheap_states":  # the pairs' references and their cheapest baseline first
        ends = ("/danceopd", "/joint-a")
        rows = [r for r in by_comp.get("composition", []) if r["name"].endswith(ends)] + rows
    return rows


def runs_table(comp: str, rows: list[dict[str, Any]], teachers: dict[tuple[str, int], dict[str, Any]]) -> str:
    """Mean ± std over seeds of every run of a comparison, with each trained run's gain over its init."""
    columns = [
        c
        for c in COLUMNS.get(comp, DEFAULT_COLUMNS)
        if any(c in v for r in rows for v in r["scores"].values())
    ]
    head = ["run", "matched", "n", "steps", columns[0], f"gain over init ({columns[0]})", *columns[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str, str], list[tuple[dict[str, Any], dict[str, float]]]] = defaultdict(list)
    for r in rows:
        for fname, values in r["scores"].items():
            if r["kind"] == "train" and fname != "student":
                continue  # the student at other inference scales: in report.md
            if r["kind"] != "train" and fname != "init" and r["name"].endswith("/merge"):
                continue  # a merge run: its teachers are the teachers run's rows
            groups[(r["name"], fname, r["matched"])].append((r, values))
    first = {name: i for i, (name, _, _) in reversed(list(enumerate(groups)))}
    modes = {"steps": 0, "time": 1, "compute": 2}
    order = sorted(groups, key=lambda g: (modes.get(g[2], 0), first[g[0]]))
    for name, fname, matched in order:
        items = groups[(name, fname, matched)]
        recs = [r for r, _ in items]
        train = recs[0]["kind"] == "train"
        label = name if train or (fname == "init" and "/merge" in name) else f"{name} {fname}"
        gains = [v.get(columns[0], math.nan) - _init_value(r, teachers, columns[0]) for r, v in items]
        steps = f"{statistics.fmean(r['steps'] for r in recs):.0f}" if train else "–"
        cells = [_fmt([v.get(c, math.nan) for _, v in items]) for c in columns]
        lines.append(
            f"| {label} | {matched if train else '–'} | {len(items)} | {steps} | {cells[0]} | "
            f"{_fmt(gains) if train else '–'} | " + " | ".join(cells[1:]) + " |"
        )
    return "\n".join(lines)


def verdict_rows(
    results: list[dict[str, Any]], exclude: Sequence[str] = ()
) -> list[tuple[Claim, Decision | None, str]]:
    """Every claim of :func:`claims` (but those of the comparisons in ``exclude``) with the rule's decision
    over the page (every claim that has paired runs is one comparison of the page's Holm family) and its
    verdict; "not run" where no seed has both."""
    from fieldkit.eval.verdict import decide, paired

    index = {(r["name"], r["matched"] if r["kind"] == "train" else "-", r["seed"]): r for r in results}
    tested: list[tuple[Claim, Paired]] = []
    out: list[tuple[Claim, Decision | None, str]] = []
    for claim in (c for c in claims() if c.comparison not in exclude):
        seeds = sorted(s for (n, m, s) in index if (n, m) == claim.a and (claim.b[0], claim.b[1], s) in index)
        if not seeds:
            if not {claim.a[1], claim.b[1]} & set(TWINS):  # a twin mode never run is not listed
                out.append((claim, None, "not run"))
            continue
        a = [_value(index[(*claim.a, s)], claim.metric) for s in seeds]
        b = [_value(index[(*claim.b, s)], claim.metric) for s in seeds]
        tested.append((claim, paired(a, b)))
    decisions = decide([d for _, d in tested], [c.expected for c, _ in tested])
    return [(c, d, d.verdict) for (c, _), d in zip(tested, decisions, strict=True)] + out


def verdict_table(rows: list[tuple[Claim, Decision | None, str]]) -> str:
    """One line per claim: both runs, the per-seed differences ``a - b``, their mean and 95% interval, the
    test with its p-value and Holm-adjusted p-value over the page, and the verdict."""
    sign = {1: "a > b", -1: "a < b", 0: "a = b"}
    head = (
        "| paper | a | b | metric | seeds | a - b per seed | mean [95% interval] | test: p (Holm) | verdict |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for claim, dec, word in rows:
        a, b = (f"{n} ({m})" if m != "-" else n for n, m in (claim.a, claim.b))
        lead = f"| {claim.paper}: {sign[claim.expected]} | {a} | {b} | {claim.metric} |"
        if dec is None:
            lines.append(f"{lead} 0 | – | – | – | {word} |")
            continue
        lo, hi = dec.interval
        lines.append(
            f"{lead} {dec.diff.n} | {_signed(dec.diff.differences)} | "
            f"{dec.diff.mean:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
            f"{dec.test}: {_p(dec.p)} ({_p(dec.adjusted)}) | {word} |"
        )
    return "\n".join(lines)


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def summary_table(rows: list[tuple[Claim, Decision | None, str]]) -> str:
    """Per comparison and matched mode of ``b``: how many claims agree, disagree or are within noise."""
    from fieldkit.eval.verdict import AGREES, DISAGREES, WITHIN_NOISE

    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for claim, _, word in rows:
        matched = next((m for m in (claim.a[1], claim.b[1]) if m in TWINS), "steps")
        counts[(claim.comparison, matched)][word] += 1
    lines = [
        "| comparison | matched | agrees | disagrees | within noise | not run |",
        "|---|---|---|---|---|---|",
    ]
    for (comp, matched), c in counts.items():
        lines.append(
            f"| {comp} | {matched} | {c[AGREES]} | {c[DISAGREES]} | {c[WITHIN_NOISE]} | {c['not run']} |"
        )
    tested = sum(word != "not run" for _, _, word in rows)
    return "\n".join(lines) + f"\n\nHolm's family: the {tested} claims of this page that have paired runs."


T = TypeVar("T")


def higher_first(a: T, b: T, dec: Decision) -> tuple[T, T, float, float]:
    """The two runs of a decided claim ``a - b``, the higher first, with the 95% interval of the higher
    minus the lower."""
    lo, hi = dec.interval
    return (a, b, lo, hi) if dec.diff.mean > 0 else (b, a, -hi, -lo)


def decided_list(rows: list[tuple[Claim, Decision | None, str]]) -> str:
    """Every claim the rule decides, per comparison: the higher run above the lower on the metric, the mean
    difference with its 95% interval, the number of seeds and the verdict against the paper's direction."""
    from fieldkit.eval.verdict import WITHIN_NOISE

    lines = []
    for claim, dec, word in rows:
        if dec is None or word == WITHIN_NOISE:
            continue
        a, b = (f"{n} ({m})" if m != "-" else n for n, m in (claim.a, claim.b))
        above, below, low, high = higher_first(a, b, dec)
        lines.append(
            f"- {claim.comparison}: {above} above {below} on {claim.metric}, by {abs(dec.diff.mean):.3f} "
            f"[{low:.3f}, {high:.3f}] over {dec.diff.n} seeds: **{word}** ({claim.paper})"
        )
    return "\n".join(lines) or "- none"


def status_table(results: list[dict[str, Any]]) -> str:
    """Per comparison, how much of the study's plan (every run at every seed of ``SEEDS``, matched steps
    and compute) ``results`` holds: runs planned, landed, and the seeds at which every run has landed; then
    the plan's distinct runs (a run shared by comparisons counts once)."""
    index = _by_seed(results)

    def landed(item: tuple[Run, int, str]) -> bool:
        run, seed, matched = item
        return seed in index.get((run.name, matched if run.kind == "train" else "-"), {})

    lines = ["| comparison | runs planned | landed | seeds with every run |", "|---|---|---|---|"]
    for comp, runs in comparisons().items():
        planned = [item for item in plan([comp], SEEDS, STUDY_BUDGETS) if item[0] in runs]
        seeds = [s for s in SEEDS if all(landed(item) for item in planned if item[1] == s)]
        done = sum(map(landed, planned))
        lines.append(f"| {comp} | {len(planned)} | {done} | {', '.join(map(str, seeds)) or 'none'} |")
    distinct = plan(list(comparisons()), SEEDS, STUDY_BUDGETS)
    return (
        "\n".join(lines) + f"\n\n{sum(map(landed, distinct))} of the plan's {len(distinct)} runs have landed."
    )


def cost_table(results: list[dict[str, Any]]) -> str:
    """What the study cost: its runs' summed wall time (evaluation included), and per method label the
    counted passes per sample of an update (forward 1, backward 2) over its matched-step runs of comparison
    1's pairs (batch 16), with the steps it trains at DanceOPD's compute there."""
    hours = sum(r.get("wall_seconds", 0.0) for r in results) / 3600
    per: dict[str, list[float]] = defaultdict(list)
    steps: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if r["kind"] != "train" or r["comparison"] not in ("composition", "cheap_states", "frontier"):
            continue
        label = method_label(r["name"])
        if r["matched"] == "steps":
            per[label].append(r["passes_per_sample"])
        elif r["matched"] == "compute":
            steps[label].append(r["steps"])
    lines = [
        f"{len(results)} runs, {hours:.1f} hours of run time (the sum over runs, evaluation included).",
        "",
        "| method (comparison 1's runs) | passes per sample, per update | steps at DanceOPD's compute |",
        "|---|---|---|",
    ]
    for label in sorted(per, key=lambda k: statistics.fmean(per[k])):
        at = f"{statistics.fmean(steps[label]):.0f}" if steps.get(label) else "–"
        lines.append(f"| {label} | {statistics.fmean(per[label]):.1f} | {at} |")
    return "\n".join(lines)


def references_table(results: list[dict[str, Any]], teachers: dict[tuple[str, int], dict[str, Any]]) -> str:
    """Each DanceOPD reference (the matched-step runs named ``*/danceopd``): its init's and its own combined
    score per seed, the gain, and whether the gain is at least ``MIN_GAIN`` on every seed (what makes a
    comparison against it measure learning rather than damage)."""
    refs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["kind"] == "train" and r["matched"] == "steps" and r["name"].endswith("/danceopd"):
            refs[r["name"]].append(r)
    lines = [
        "| reference | steps | seeds | init (combined) | student (combined) | gain per seed | "
        f"at least +{MIN_GAIN:.2f} on every seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, recs in refs.items():
        recs = sorted(recs, key=lambda r: r["seed"])
        init = [_init_value(r, teachers, "combined") for r in recs]
        student = [_value(r, "combined") for r in recs]
        gains = [b - a for a, b in zip(init, student, strict=True)]
        ok = all(math.isfinite(g) and g >= MIN_GAIN for g in gains)
        lines.append(
            f"| {name} | {recs[0]['steps']} | {len(recs)} | {_fmt(init)} | {_fmt(student)} | "
            f"{_signed(gains)} | {'yes' if ok else 'no'} |"
        )
    return "\n".join(lines)


def page_tables(results: list[dict[str, Any]], images: str = "") -> dict[str, str]:
    """The tables of docs/reproduction.md, every one from the same results and verdicts (Holm over every
    claim that has paired runs): the summary and the references; per comparison its runs and its verdicts
    (comparison 1 as two blocks: the paper's pairs, and the edit specialist's pair that tests composition);
    the frontier and many teachers with their plots (``images`` + the file name); and the method guidance
    of docs/concepts.md (``choice``)."""
    by_comp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_comp[r["comparison"]].append(r)
    teachers = {
        (r["graph"], r["seed"]): r for r in results if r["kind"] == "eval" and r["name"].endswith("/teachers")
    }
    verdicts = verdict_rows(results)
    tables = {
        "summary": summary_table(verdicts),
        "decided": decided_list(verdicts),
        "status": status_table(results),
        "cost": cost_table(results),
        "references": references_table(results, teachers),
        "frontier": frontier_tables(results, images),
        "many": many_table(results, images),
        "choice": choice_table(results),
    }
    for comp in comparisons():
        if comp in OWN_TABLES:
            continue
        rows = _rows_of(comp, by_comp)
        if not by_comp.get(comp):
            tables[comp] = f"Not run in this study: `results.jsonl` holds no run of `{comp}`."
            continue
        own = [v for v in verdicts if v[0].comparison == comp]
        if comp == "composition":  # the specialist's pair apart: its own block, after the paper's pairs
            ours = f"{SPECIALIST}/"
            mine = [v for v in own if v[0].a[0].startswith(ours)]
            special = [r for r in rows if r["name"].startswith(ours)]
            tables["specialist"] = _with_verdicts(runs_table(comp, special, teachers), mine)
            rows = [r for r in rows if not r["name"].startswith(ours)]
            own = [v for v in own if not v[0].a[0].startswith(ours)]
        tables[comp] = _with_verdicts(runs_table(comp, rows, teachers), own)
    return tables


def _with_verdicts(runs: str, verdicts: list[tuple[Claim, Decision | None, str]]) -> str:
    return runs + ("\n\n" + verdict_table(verdicts) if verdicts else "")


OWN_TABLES = ("frontier", "many")  # comparisons with tables of their own (not a runs and verdicts table)
SPECIALIST = "t2i_edit_specialist"  # the T2I + Edit pair whose edit teacher has lost T2I (issue 20)


# -- the cost-quality frontier and many teachers (study v3) ----------------------------------------------

SETTING_NAMES = {"a": "(a) clean data", "b": "(b) 64 noisy targets per bucket"}
PAIR_NAMES = {"local_global": "Local + Global", "t2i_edit_specialist": "T2I + Edit (edit specialist)"}
PASSES_LABEL = "training passes spent (per sample: forward 1, backward 2)"


def _by_seed(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """``{(run, matched): {seed: record}}`` (matched "-" for an evaluated, untrained run)."""
    index: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        index[(r["name"], r["matched"] if r["kind"] == "train" else "-")][r["seed"]] = r
    return index


def _mean_interval(values: Sequence[float]) -> str:
    """``mean [low, high]`` over seeds (the 95% t interval, n - 1 df), the value of a single seed, or
    "pending" for none."""
    from fieldkit.eval.verdict import Paired

    finite = tuple(v for v in values if math.isfinite(v))
    if len(finite) < 2:
        return f"{finite[0]:.3f} (1 seed)" if finite else "pending"
    lo, hi = Paired(finite).interval()
    return f"{Paired(finite).mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _decisions(results: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], tuple[str, str]], Decision]:
    """The rule's decision of every combined-score claim that has paired runs, Holm over all of them."""
    return {(c.a, c.b): d for c, d, _ in verdict_rows(results) if d is not None and c.metric == "combined"}


def _verdict_cell(decisions: dict[tuple[tuple[str, str], tuple[str, str]], Decision], a: Any, b: Any) -> str:
    dec = decisions.get((a, b))
    if dec is None:
        return "pending"
    lo, hi = dec.interval
    spread = f"[{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else f"({dec.diff.n} seed)"
    return f"{dec.diff.mean:+.3f} {spread}: {dec.verdict}"


def frontier_bands(results: list[dict[str, Any]], pair: str, setting: str) -> dict[str, list[Band]]:
    """The frontier plot of ``pair`` in ``setting``: per score (combined, then each route's) one band per
    method that recorded curve points with their training passes, over its seeds."""
    from fieldkit.eval.report_plots import seed_band

    index = _by_seed(results)
    panels: dict[str, list[Band]] = {m: [] for m in ("combined", *(f"{r}/score" for r in PAIRS[pair]))}
    for label, key in frontier_lines(pair, setting).items():
        curves = [
            r["metric_curve"]
            for r in index.get(key, {}).values()
            if r.get("metric_curve") and all("passes" in p for p in r["metric_curve"])
        ]
        if curves:
            for metric, bands in panels.items():
                bands.append(seed_band(label, [[(p["passes"], p[metric]) for p in c] for c in curves]))
    return {m: bands for m, bands in panels.items() if bands}


def frontier_plots(results: list[dict[str, Any]], folder: Path) -> list[Path]:
    """``folder/frontier-PAIR-SETTING.png`` for every pair and setting that has curve points."""
    from fieldkit.eval.report_plots import band_plot

    paths = []
    for pair in FRONTIER_PAIRS:
        for setting in SETTINGS:
            panels = frontier_bands(results, pair, setting)
            if panels:
                title = f"{PAIR_NAMES[pair]}, setting {SETTING_NAMES[setting]}: mean over seeds, 95% interval"
                paths.append(
                    band_plot(
                        panels, folder / f"frontier-{pair}-{setting}.png", xlabel=PASSES_LABEL, title=title
                    )
                )
    return paths


def frontier_table(results: list[dict[str, Any]], pair: str, setting: str) -> str:
    """Each method's end point on the frontier of ``pair`` in ``setting`` (DanceOPD at its steps, the others
    at its compute): seeds, steps, passes per sample, the combined and per-route test scores (mean and 95%
    interval over seeds), and each cheaper option's verdicts under the rule (Holm over every claim of the
    results): against off-policy and joint SFT at matched compute, and against DanceOPD at matched steps."""
    index, decisions = _by_seed(results), _decisions(results)
    ref = (f"{pair}/danceopd", "steps")
    routes = [f"{r}/score" for r in PAIRS[pair]]
    head = ["method", "run", "seeds", "steps", "passes per sample", "combined", *routes]
    head += ["vs off-policy (compute)", "vs joint SFT (compute)", "vs DanceOPD (steps)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, (name, matched) in frontier_lines(pair, setting).items():
        recs = [index[(name, matched)][s] for s in sorted(index.get((name, matched), {}))]
        cells = [label, f"{name} ({matched})", str(len(recs))]
        if recs:
            per_sample = [r.get("passes_per_sample", math.nan) for r in recs]
            cells += [
                f"{statistics.fmean(r['steps'] for r in recs):.0f}",
                f"{statistics.fmean(per_sample):.1f}",
            ]
        else:
            cells += ["pending", "pending"]
        cells += [_mean_interval([_value(r, m) for r in recs]) for m in ("combined", *routes)]
        if label in ("danceopd", "offpolicy", "joint"):
            cells += ["–", "–", "–"]
        else:
            cells += [
                _verdict_cell(decisions, (name, "compute"), (f"{pair}/{base}-{setting}", "compute"))
                for base in ("offpolicy", "joint")
            ]
            cells.append(_verdict_cell(decisions, (name, "steps"), ref))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


GOAL_SEEDS = 5  # issue 21's goal is decided over at least five seeds


def frontier_goal(results: list[dict[str, Any]], pair: str) -> str:
    """Issue 21's goal on ``pair``, under the rule: which cheaper option is, at matched compute, decided above
    off-policy and joint SFT in setting (b), not decided below them in (a), and not decided apart from
    DanceOPD at matched steps, every claim over at least five seeds; or, if none is, the option whose worst
    mean margin against off-policy and joint SFT (over both settings) is the largest, with that margin."""
    from fieldkit.eval.verdict import AGREES, DISAGREES, WITHIN_NOISE

    decisions = _decisions(results)
    options = list(frontier_options(pair))
    bases = ("offpolicy", "joint")
    ready: dict[str, dict[tuple[str, str], Decision]] = {}
    for option in options:
        mine = {}
        for setting in SETTINGS:
            run = frontier_run(pair, option, setting)
            for base in bases:
                mine[(setting, base)] = decisions.get(
                    ((run, "compute"), (f"{pair}/{base}-{setting}", "compute"))
                )
            mine[(setting, "danceopd")] = decisions.get(((run, "steps"), (f"{pair}/danceopd", "steps")))
        if all(d is not None and d.diff.n >= GOAL_SEEDS for d in mine.values()):
            ready[option] = {k: d for k, d in mine.items() if d is not None}
    if len(ready) < len(options):
        return (
            f"Goal (issue 21) on {PAIR_NAMES[pair]}: pending ({len(ready)} of {len(options)} options have "
            f"every claim at {GOAL_SEEDS} seeds)."
        )
    met = [
        option
        for option, c in ready.items()
        if all(c[("b", base)].verdict == AGREES for base in bases)
        and all(c[("a", base)].verdict != DISAGREES for base in bases)
        and all(c[(setting, "danceopd")].verdict == WITHIN_NOISE for setting in SETTINGS)
    ]
    if met:
        return f"Goal (issue 21) on {PAIR_NAMES[pair]}: met by {', '.join(met)}."

    def worst(option: str) -> tuple[float, str, Decision]:
        margins = [(d.diff.mean, f"{b} ({s})", d) for (s, b), d in ready[option].items() if b in bases]
        return min(margins, key=lambda m: m[0])

    closest = max(ready, key=lambda o: worst(o)[0])
    margin, against, dec = worst(closest)
    lo, hi = dec.interval
    against = against.replace("offpolicy", "off-policy").replace("joint", "joint SFT")
    return (
        f"Goal (issue 21) on {PAIR_NAMES[pair]}: not met; no option is decided above off-policy and joint "
        f"SFT in (b) without being decided below them in (a) or apart from DanceOPD at matched steps. "
        f"Closest: {closest}, whose worst margin at matched compute is {margin:+.3f} [{lo:+.3f}, {hi:+.3f}] "
        f"against {against}."
    )


CHOICE_PAIRS = {"local_global": "Local + Global", "t2i_edit_specialist": "T2I + edit specialist"}


def choice_table(results: list[dict[str, Any]]) -> str:
    """docs/concepts.md's "choosing a method" block, from the frontier's runs: every method's combined test
    score (mean and 95% interval over seeds) on both pairs in both data settings, DanceOPD at its steps and
    the others at its compute, whether it reads the buckets' targets and its passes per sample; then every
    difference among them that the rule decides (Holm over every claim of the results)."""
    from fieldkit.eval.verdict import WITHIN_NOISE

    index, decisions = _by_seed(results), _decisions(results)
    cols = [(pair, setting) for pair in FRONTIER_PAIRS for setting in SETTINGS]
    options = frontier_options(FRONTIER_PAIRS[0])
    reads = {"danceopd": False, "offpolicy": True, "joint": True, **{o: r for o, (_, r) in options.items()}}
    head = ["method", "reads targets", "passes per sample"]
    head += [f"{CHOICE_PAIRS[pair]} ({setting})" for pair, setting in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    where: dict[tuple[str, str], str] = {}  # a run (name, matched) -> how the list below names it
    for label in frontier_lines(*cols[0]):
        keys = [frontier_lines(pair, setting)[label] for pair, setting in cols]
        for (pair, setting), key in zip(cols, keys, strict=True):
            shared = not reads[label]
            where[key] = f"{label} on {CHOICE_PAIRS[pair]} ({'both settings' if shared else setting})"
        first = [index[keys[0]][s] for s in sorted(index.get(keys[0], {}))]
        per_sample = statistics.fmean(r["passes_per_sample"] for r in first) if first else math.nan
        cells = [label, "yes" if reads[label] else "no", f"{per_sample:.1f}" if first else "pending"]
        for key in keys:
            cells.append(_mean_interval([_value(r, "combined") for r in index.get(key, {}).values()]))
        lines.append("| " + " | ".join(cells) + " |")
    decided = []
    for (a, b), dec in decisions.items():
        if a in where and b in where and dec.verdict != WITHIN_NOISE:
            above, below, low, high = higher_first(a, b, dec)
            decided.append(
                f"- {where[above]} above {where[below]}: {abs(dec.diff.mean):.3f} [{low:.3f}, {high:.3f}]"
            )
    claims = sum(1 for _, d, _ in verdict_rows(results) if d is not None)
    lines += [
        "",
        f"Decided under the rule (95%, Holm over the {claims} claims of the study), among these runs "
        "(the difference of the combined scores and its 95% interval):",
        "",
        *(sorted(decided) or ["- none"]),
    ]
    return "\n".join(lines)


def frontier_tables(results: list[dict[str, Any]], images: str = "") -> str:
    """Every frontier table, each followed by its plot (``images`` + its file name) once it has points, after
    a line naming the methods whose one run serves both data settings."""
    shared = [o for o, (_, reads) in frontier_options(FRONTIER_PAIRS[0]).items() if not reads]
    names = f"DanceOPD, {', '.join(shared[:-1])} and {shared[-1]}"
    parts = [
        f"{names} read no data (their states are the student's own rollouts, their targets the teachers' "
        "velocities): one run of each serves both data settings; the other methods read the buckets' data "
        "and have a run per setting.",
        "",
    ]
    for pair in FRONTIER_PAIRS:
        for setting in SETTINGS:
            parts += [f"**{PAIR_NAMES[pair]}, setting {SETTING_NAMES[setting]}**", ""]
            parts.append(frontier_table(results, pair, setting))
            if frontier_bands(results, pair, setting):
                parts += ["", f"![frontier {pair} ({setting})]({images}frontier-{pair}-{setting}.png)"]
            parts.append("")
        parts += [frontier_goal(results, pair), ""]
    return "\n".join(parts).rstrip()


def _worst_ratio(record: dict[str, Any], teachers: dict[str, Any] | None) -> float:
    """The lowest ``score / teacher's score`` over a run's routes (NaN without its teachers run)."""
    if teachers is None:
        return math.nan
    ratios = []
    for name, t_scores in teachers["scores"].items():
        route = name.removesuffix("_teacher")
        if name.endswith("_teacher") and f"{route}/score" in t_scores and t_scores[f"{route}/score"] > 0:
            ratios.append(_value(record, f"{route}/score") / t_scores[f"{route}/score"])
    return min(ratios, default=math.nan)


def many_runs(n: int) -> list[tuple[str, str, str]]:
    """The many-teachers runs at ``n`` capability teachers: ``(method, run, matched)``, "-" for the merge."""
    return [
        ("DanceOPD", f"caps{n}/danceopd", "steps"),
        *(
            (method, f"caps{n}/{run}", m)
            for method, run in (("off-policy", "offpolicy"), ("joint SFT", "joint"))
            for m in ("steps", "compute")
        ),
        ("tuned merge", f"caps{n}/merge-ta", "-"),
    ]


def many_table(results: list[dict[str, Any]], images: str = "") -> str:
    """Many teachers, per N: each method's combined test score and worst route's ratio to its teacher (mean
    and 95% interval over seeds), its training passes per sample and the bytes its teachers hold (distinct
    parameters and buffers of the route fields: LoRA teachers over one base count the base once); then the
    plot of both scores against N (``images`` + its file name) once every N has run."""
    index = _by_seed(results)
    head = ["N", "method", "run", "seeds", "combined", "worst route / its teacher", "passes per sample"]
    lines = ["| " + " | ".join([*head, "teachers (MiB)"]) + " |", "|" + "---|" * (len(head) + 1)]
    for n in CAPS:
        teachers = index.get((f"caps{n}/teachers", "-"), {})
        for label, name, matched in many_runs(n):
            recs = index.get((name, matched), {})
            seeds = sorted(recs)
            combined = _mean_interval([_value(recs[s], "combined") for s in seeds])
            worst = _mean_interval([_worst_ratio(recs[s], teachers.get(s)) for s in seeds])
            trained = matched != "-"
            per_sample = [recs[s].get("passes_per_sample", math.nan) for s in seeds] if trained else [0.0]
            memory = [recs[s].get("teacher_bytes", math.nan) / 2**20 for s in seeds]
            passes = f"{statistics.fmean(per_sample):.1f}" if seeds else "pending"
            mib = f"{statistics.fmean(memory):.1f}" if seeds and trained else ("–" if seeds else "pending")
            run = name if matched == "-" else f"{name} ({matched})"
            cells = [str(n), label, run, str(len(seeds)), combined, worst, passes, mib]
            lines.append("| " + " | ".join(cells) + " |")
    if many_bands(results):
        lines += ["", f"![many teachers]({images}{MANY_PLOT})"]
    return "\n".join(lines)


MANY_PLOT = "many-teachers.png"


def many_bands(results: list[dict[str, Any]]) -> dict[str, list[Band]]:
    """The many-teachers plot: per score (combined; the worst route's ratio to its teacher) one band per
    method against N, over the seeds that ran at every N; empty until one has."""
    from fieldkit.eval.report_plots import seed_band

    index = _by_seed(results)
    panels: dict[str, list[Band]] = {"combined": [], "worst route / its teacher": []}
    for i, (label, _, matched) in enumerate(many_runs(CAPS[0])):
        runs = {n: many_runs(n)[i][1] for n in CAPS}
        method = label if matched == "-" else f"{label} ({matched})"
        seeds = set.intersection(*(set(index.get((run, matched), {})) for run in runs.values()))
        if not seeds:
            continue
        combined, worst = [], []
        for s in sorted(seeds):
            recs = {n: index[(runs[n], matched)][s] for n in CAPS}
            teachers = {n: index.get((f"caps{n}/teachers", "-"), {}).get(s) for n in CAPS}
            combined.append([(float(n), _value(recs[n], "combined")) for n in CAPS])
            worst.append([(float(n), _worst_ratio(recs[n], teachers[n])) for n in CAPS])
        panels["combined"].append(seed_band(method, combined))
        panels["worst route / its teacher"].append(seed_band(method, worst))
    return {k: v for k, v in panels.items() if v}


def many_plot(results: list[dict[str, Any]], folder: Path) -> Path | None:
    """``folder/many-teachers.png`` (:func:`many_bands` against N); None before a method ran at every N."""
    from fieldkit.eval.report_plots import band_plot

    panels = many_bands(results)
    if not panels:
        return None
    title = "Many teachers: the T2I base and N capability LoRAs; mean over seeds, 95% interval"
    return band_plot(panels, folder / MANY_PLOT, xlabel="capability teachers N", title=title)


def pending_notes(selected: Sequence[str]) -> list[str]:
    """One line per reason the ``selected`` comparisons have runs this checkout cannot run, with the runs."""
    reasons: dict[str, list[str]] = defaultdict(list)
    for name, why in skipped(selected).items():
        reasons[why].append(name)
    return [f"Pending: {', '.join(names)}: {why}." for why, names in reasons.items()]


def fill_page(text: str, tables: dict[str, str]) -> str:
    """``text`` with the block between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` replaced by
    ``tables[NAME]`` for every marked block (``report --page FILE`` rewrites a page's tables this way)."""
    import re

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in tables:
            raise KeyError(f"the page marks a table {name!r} that the results do not give")
        return f"<!-- table:{name} -->\n{tables[name]}\n<!-- /table:{name} -->"

    return re.sub(r"<!-- table:([\w-]+) -->\n.*?<!-- /table:\1 -->", fill, text, flags=re.S)


def report(args: argparse.Namespace) -> str:
    """Markdown tables (mean ± std over seeds) and PNG curves from ``OUT/results.jsonl``."""
    out = Path(args.out)
    results = read_results(out / "results.jsonl")
    if not results:
        sys.exit(f"no results in {out / 'results.jsonl'}: run the study with --out {out} first")
    lines = [
        f"Results from `{out / 'results.jsonl'}` ({len(results)} runs). Mean ± std over seeds; "
        "a single value is a single seed.",
        "",
    ]
    for what, why in (("world", "teachers or plugin sources"), ("code", "fieldkit's code")):
        seen = sorted({str(r.get(what)) for r in results})
        if len(seen) > 1:
            lines += [
                f"**Warning: these results come from {len(seen)} {what} versions ({why} changed between "
                f"runs): {', '.join(seen)}. Do not compare across them.**",
                "",
            ]
    by_comp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_comp[r["comparison"]].append(r)
    tables = page_tables(results)
    lines += [
        "Verdicts (`fieldkit.eval.verdict`): a paired test over seeds at 95% (the t-test on n - 1 degrees "
        "of freedom; the exact sign-flip test once n allows it), Holm's correction over every claim of the "
        "page; the 95% interval of the mean difference beside each verdict.",
        "",
        tables["summary"],
        "",
    ]
    for comp in comparisons():
        if not by_comp.get(comp) or comp in OWN_TABLES:
            continue
        rows = _rows_of(comp, by_comp)
        columns = [
            c
            for c in COLUMNS.get(comp, DEFAULT_COLUMNS)
            if any(c in v for r in rows for v in r["scores"].values())
        ]
        lines += [
            f"### {comp}",
            "",
            tables[comp],
            "",
            "Costs:",
            "",
            "| run | field | matched | seeds | steps | s/step | rollout NFE/step | "
            "rollout samples/step | teacher fwd/step | train s | " + " | ".join(columns) + " |",
            "|" + "---|" * (10 + len(columns)),
        ]
        groups: dict[tuple[str, str, str], list[tuple[dict[str, Any], dict[str, float]]]] = defaultdict(list)
        for r in rows:
            for fname, values in r["scores"].items():
                if r["kind"] == "eval" and fname != "init" and r["name"].endswith("/merge"):
                    continue  # a merge run: its teachers are the teachers run's rows
                groups[(r["name"], fname, r["matched"])].append((r, values))
        for (name, fname, matched), items in groups.items():
            recs = [r for r, _ in items]

            def mean(key: str, recs: list[dict[str, Any]] = recs) -> str:
                vals = [float(r.get(key, 0.0)) for r in recs]
                return f"{statistics.fmean(vals):.3g}"

            cells = [_fmt([v.get(c, float("nan")) for _, v in items]) for c in columns]
            train = recs[0]["kind"] == "train"
            lines.append(
                f"| {name} | {fname} | {matched if train else '–'} | {len(items)} | "
                f"{mean('steps') if train else '–'} | {mean('sec_per_step') if train else '–'} | "
                f"{mean('rollout_nfe_per_step') if train else '–'} | "
                f"{mean('rollout_samples_per_step') if train else '–'} | "
                f"{mean('teacher_forwards_per_step') if train else '–'} | "
                f"{mean('train_seconds') if train else '–'} | " + " | ".join(cells) + " |"
            )
        lines.append("")
        if comp == "realism":
            lines += _realism_gap(rows)
        for path in _plots(comp, rows, out):
            lines.append(f"![{comp}]({path.name})")
        lines.append("")
    frontier_plots(results, out)
    lines += ["### frontier", "", frontier_tables(results), "", "### many", "", many_table(results), ""]
    lines += pending_notes(OWN_TABLES)
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def _realism_gap(rows: list[dict[str, Any]]) -> list[str]:
    """The fraction of the init-to-teacher realism gap each trained run closes (the paper: 85.3%)."""
    refs = {r["seed"]: r["scores"] for r in rows if r["kind"] == "eval"}
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        ref = refs.get(r["seed"])
        if r["kind"] != "train" or ref is None:
            continue
        init, teacher = ref["init"]["t2i/realism"], ref["t2i_teacher"]["t2i/realism"]
        student = r["scores"]["student"]["t2i/realism"]
        if teacher != init:
            gaps[(r["name"], r["matched"])].append((student - init) / (teacher - init))
    out = ["| run | matched | gap closed (student - init) / (teacher - init) |", "|---|---|---|"]
    out += [f"| {name} | {matched} | {_fmt(values)} |" for (name, matched), values in gaps.items()]
    return [*out, ""]


def _plots(comp: str, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Loss curves (and metric curves where recorded) of a comparison's matched-step runs, seed 0 or first."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional; tables are not
        return []
    runs = {}
    for r in rows:
        if r["kind"] == "train" and r["matched"] == "steps" and r["name"] not in runs:
            runs[r["name"]] = r
    if not runs:
        return []
    paths = []
    # One panel per route: the routes' losses differ by orders of magnitude; one colour per run across panels.
    routes = sorted({route for r in runs.values() for route, pts in r["loss_curve"].items() if pts})
    fig, axes = plt.subplots(1, len(routes), figsize=(3.6 * len(routes) + 2.4, 3.6), squeeze=False)
    colours = {name: f"C{i % 10}" for i, name in enumerate(runs)}
    styles = {name: "-" if i < 10 else "--" for i, name in enumerate(runs)}
    for ax, route in zip(axes[0], routes, strict=True):
        for name, r in runs.items():
            pts = r["loss_curve"].get(route)
            if pts and min(p[1] for p in pts) > 0:  # a policy-gradient surrogate (Flow-OPD) has no log scale
                steps, losses = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(steps, losses, styles[name], color=colours[name], label=name)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"route {route}", fontsize=9)
    axes[0][0].set_ylabel("training loss")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=6)
    fig.suptitle(f"{comp}: training loss per route (seed {next(iter(runs.values()))['seed']})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / (3.6 * len(routes) + 2.4), 1))
    paths.append(out / f"{comp}-loss.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    curved = {n: r for n, r in runs.items() if r.get("metric_curve")}
    if curved:
        fig, ax = plt.subplots(figsize=(7, 4))
        key = "t2i/realism" if comp == "realism" else "combined"
        for name, r in curved.items():
            pts = [(p["step"], p.get(key, p.get("t2i/score"))) for p in r["metric_curve"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(f"{comp}: student {key} during training")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / f"{comp}-metric.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", "report", "list", "verify"])
    parser.add_argument("--out", default="docs/reproduction", help="results folder (results.jsonl, plots)")
    parser.add_argument("--quick", action="store_true", help="one seed, 4 steps, tiny evals: a smoke test")
    parser.add_argument(
        "--seeds",
        default=None,
        help=f"comma-separated seeds (default {','.join(map(str, SEEDS))}; --quick: 0)",
    )
    parser.add_argument("--only", default="", help=f"comparisons to run, of: {','.join(comparisons())}")
    parser.add_argument("--runs", default="", help="only the runs whose names match these shell patterns")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"optimizer steps of matched-step runs (default {STEPS})"
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="training seconds of matched-time runs (default: the reference run's)",
    )
    parser.add_argument(
        "--matched",
        default=",".join(STUDY_BUDGETS),
        help="steps, compute (counted passes), time (wall-clock): any of them",
    )
    parser.add_argument(
        "--eval-samples", type=int, default=Settings.eval_samples, help="samples per route for final scores"
    )
    parser.add_argument(
        "--curve-samples", type=int, default=Settings.curve_samples, help="samples per route at curve points"
    )
    parser.add_argument(
        "--wait-minutes",
        type=float,
        default=30.0,
        help="how long to wait for a reference that another process is running before giving up",
    )
    parser.add_argument("--set", action="append", default=[], help="extra override for every run")
    parser.add_argument("--report", action="store_true", help="write the report after the runs")
    parser.add_argument(
        "--git-commit", action="store_true", help="git-commit OUT/results.jsonl after every finished run"
    )
    parser.add_argument(
        "--page",
        action="append",
        default=[],
        help="a page whose <!-- table:NAME --> blocks the report rewrites (repeatable)",
    )
    args = parser.parse_args(argv)
    args.seeds = (
        [int(s) for s in args.seeds.split(",")] if args.seeds else ([0] if args.quick else list(SEEDS))
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.command == "list":
        settings, world, code = settings_of(args), world_fingerprint(), study_code(Path(args.out))
        for run, seed, matched in plan(list(comparisons()), args.seeds, args.matched.split(",")):
            overrides = overrides_of(run, seed, matched, settings)
            print(run_key(run, seed, matched, settings, world, code), " ".join(overrides), sep="  ")
        for name, why in skipped(list(comparisons())).items():
            run = _run_named(name)
            print(f"skip {name}  {' '.join(run.overrides)}  ({why})")
        return
    if args.command == "verify":
        sys.exit(0 if verify(Path(args.out), settings_of(args)) else 1)
    if args.command == "run":
        study(args)
    if args.command == "report" or args.report:
        print(report(args))
        if args.page:
            results = read_results(Path(args.out) / "results.jsonl")
            many_plot(results, Path(args.out))
            tables = page_tables(results, f"{Path(args.out).name}/")
            for page in map(Path, args.page):
                page.write_text(fill_page(page.read_text(), tables))


if __name__ == "__main__":
    main()
