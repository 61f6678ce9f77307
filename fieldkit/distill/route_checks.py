"""Build-time checks of a graph's routes: one call of each route's field and of the student on two samples of
the route's data, before training starts, so a plugin mistake is an error that names its node and line
instead of a tensor error deep in a loss. (Labels beyond a model's classes are refused earlier, when the
graph is validated.)"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fieldkit.data import Batch
from fieldkit.errors import FieldkitError, GraphError
from fieldkit.field import VelocityField
from fieldkit.graph.builder import BuildContext
from fieldkit.protocols import Route

PROBE = 2  # samples per check


def check_routes(
    ctx: BuildContext,
    routes: Sequence[Route],
    student: nn.Module,
    sigmas: Mapping[str, Tensor],
    autocast: contextlib.AbstractContextManager[object] | None = None,
) -> None:
    """Call every route's field and the student once (on states of the route's data shape, at the first
    sigma of the route's rollout, ``sigmas[route.name]``) and check what they return: a velocity shaped like
    the state, floating point."""
    device = next(iter(sigmas.values())).device
    forks = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forks), torch.no_grad():  # the training RNG streams stay untouched
        for route in routes:
            shape = tuple(route.data.shape)
            batch = route.data.sample(PROBE, torch.Generator().manual_seed(0)).to(device)
            x = torch.randn((PROBE, *shape), generator=torch.Generator().manual_seed(0)).to(device)
            sigma = sigmas[route.name][:1].expand(PROBE)
            node = ctx.graph.spec.routes[route.name].field
            models: list[tuple[VelocityField, tuple[str | int, ...], str]] = [
                (student, ("student", "init"), "the student")
            ]
            if route.field is not None and node is not None:
                models.insert(0, (route.field, ("fields", str(node)), f"field {str(node)!r}"))
            for model, loc, what in models:
                with autocast or contextlib.nullcontext():
                    v = _call(ctx, route, model, loc, what, x, sigma, batch)
                if tuple(v.shape) != tuple(x.shape) or not v.is_floating_point():
                    raise GraphError(
                        f"{ctx.where(loc)}: {what} returned a {v.dtype} tensor of shape {list(v.shape)} for "
                        f"states of shape {list(x.shape)} (route {route.name!r}, whose data shape is "
                        f"{list(shape)}, {ctx.where(('routes', route.name, 'data'))})",
                        hint="a field returns a floating-point velocity shaped like its input x; make the "
                        "route's data shape and the field's sample shape agree",
                    )


def _call(
    ctx: BuildContext,
    route: Route,
    model: VelocityField,
    loc: tuple[str | int, ...],
    what: str,
    x: Tensor,
    sigma: Tensor,
    batch: Batch,
) -> Tensor:
    head = (
        f"{ctx.where(loc)}: {what} failed on the data of route {route.name!r} "
        f"({ctx.where(('routes', route.name, 'data'))}, states of shape {list(x.shape)})"
    )
    hint = "check that the route's data (its shape and Cond keys) is what this field expects"
    try:
        return model(x, sigma, batch.cond)
    except FieldkitError as exc:
        raise GraphError(f"{head}: {exc.message}", hint=exc.hint or hint) from exc
    except Exception as exc:
        raise GraphError(f"{head}: {type(exc).__name__}: {exc}", hint=hint) from exc
