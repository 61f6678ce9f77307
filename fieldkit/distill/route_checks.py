"""Build-time checks of a graph's routes: each route's data bucket drawn once, its field and the student
called once on two samples of it, and its metrics run once on them, before training starts, so a plugin
mistake is an error that names its node, line, type and plugin (:mod:`fieldkit.plugin_outputs`) instead of a
tensor error deep in a loss or a crash after training. (Labels beyond a model's classes are refused earlier,
when the graph is validated.)"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fieldkit.data import Batch, evaluation_bucket
from fieldkit.errors import FieldkitError, GraphError, PluginError
from fieldkit.field import VelocityField
from fieldkit.graph.builder import BuildContext
from fieldkit.graph.loader import Typed
from fieldkit.plugin_outputs import check_batch, check_metric_values, check_velocity, who
from fieldkit.plugins.exits import exit_is_error
from fieldkit.protocols import DataBucket, Route

PROBE = 2  # samples per check


def who_at(ctx: BuildContext, loc: tuple[str | int, ...], typed: Typed) -> str:
    """``file:line: dotted.key: KIND type 'TYPE' (plugin 'PLUGIN')``: the graph entry ``typed`` at ``loc``."""
    reg = typed.registration
    return who(ctx.where(loc), reg.kind, reg.name, reg.plugin)


def data_who(ctx: BuildContext, route: str) -> str:
    """:func:`who_at` of ``route``'s data bucket."""
    return who_at(ctx, ("routes", route, "data"), ctx.graph.datasets[route])


def check_routes(
    ctx: BuildContext,
    routes: Sequence[Route],
    student: nn.Module,
    sigmas: Mapping[str, Tensor],
    autocast: contextlib.AbstractContextManager[object] | None = None,
) -> None:
    """Draw a batch of every route's data, call the route's field and the student once (on states of the
    route's data shape, at the first sigma of the route's rollout, ``sigmas[route.name]``), run the route's
    metrics once, and check what each returns (:mod:`fieldkit.plugin_outputs`)."""
    graph = ctx.graph
    device = next(iter(sigmas.values())).device
    forks = [device] if device.type == "cuda" else []
    init = str(graph.spec.student.init) if graph.spec.student is not None else ""
    with torch.random.fork_rng(devices=forks), torch.no_grad():  # the training RNG streams stay untouched
        for route in routes:
            shape = tuple(route.data.shape)
            data = ctx.where(("routes", route.name, "data"))
            batch = _draw(route.data, data_who(ctx, route.name)).to(device)
            x = torch.randn((PROBE, *shape), generator=torch.Generator().manual_seed(0)).to(device)
            sigma = sigmas[route.name][:1].expand(PROBE)
            node = graph.spec.routes[route.name].field
            init_type = graph.nodes[init].registration
            models: list[tuple[VelocityField, str]] = [
                (
                    student,
                    f"{ctx.where(('student', 'init'))}: the student ({init_type.kind} type "
                    f"{init_type.name!r}, plugin {init_type.plugin!r})",
                )
            ]
            if route.field is not None and node is not None:
                loc = ("fields", str(node))
                models.insert(0, (route.field, who_at(ctx, loc, graph.nodes[str(node)])))
            context = f" (route {route.name!r}, whose data shape is {list(shape)}, {data})"
            for model, what in models:
                with autocast or contextlib.nullcontext():
                    v = _call(model, what, x, sigma, batch, context)
                check_velocity(v, x, what, context)
            _check_metrics(ctx, route, x, batch)


def _check_metrics(ctx: BuildContext, route: Route, samples: Tensor, batch: Batch) -> None:
    """Run each of ``route``'s metrics once on ``samples`` (states of its shape) of an evaluation batch: a
    broken metric fails before training, not after it."""
    if not route.metrics:
        return
    drawn = _draw(evaluation_bucket(route.data), data_who(ctx, route.name))
    for i, metric in enumerate(route.metrics):
        where = who_at(ctx, ("routes", route.name, "metrics", i), ctx.graph.metrics[route.name][i])
        with exit_is_error(where, f"on {PROBE} samples of route {route.name!r} before training"):
            try:
                values = metric(samples.cpu(), drawn)
            except FieldkitError as exc:
                raise PluginError(
                    f"{where}: failed on {PROBE} samples of route {route.name!r}: {exc.message}"
                ) from exc
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                raise PluginError(
                    f"{where}: failed on {PROBE} samples of route {route.name!r}: {error}",
                    hint="a metric takes samples [B, *shape] and the batch they were drawn for",
                ) from exc
        check_metric_values(values, where)


def _draw(bucket: DataBucket, what: str) -> Batch:
    """A checked batch of ``PROBE`` samples of ``bucket`` (the data bucket ``what``)."""
    with exit_is_error(what, f"when {PROBE} samples were drawn before training"):
        drawn = bucket.sample(PROBE, torch.Generator().manual_seed(0))
    return check_batch(drawn, PROBE, what)


def _call(model: VelocityField, what: str, x: Tensor, sigma: Tensor, batch: Batch, context: str) -> Tensor:
    head = f"{what} failed on states of shape {list(x.shape)}{context}"
    hint = "check that the route's data (its shape and Cond keys) is what this field expects"
    with exit_is_error(what, f"on states of shape {list(x.shape)}{context}"):
        try:
            return model(x, sigma, batch.cond)
        except FieldkitError as exc:
            raise GraphError(f"{head}: {exc.message}", hint=exc.hint or hint) from exc
        except Exception as exc:
            raise GraphError(f"{head}: {type(exc).__name__}: {exc}", hint=hint) from exc
