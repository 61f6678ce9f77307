"""``run.compile``: the student's and the teachers' forwards through ``torch.compile``, in place.

A model is compiled **per region**: each block of its repeated stack (the classes a model names in
``_repeated_blocks``, diffusers' convention, or else the members of an ``nn.ModuleList`` of two or more
modules of one class) gets a compiled ``forward``. Identical blocks share one traced graph, so compiling
costs about one block's trace instead of the whole model's, and the small work around the stack (embeddings,
output layer) stays eager. A model without such a stack is compiled whole (``regional=False`` forces it).

The rollout calls the student with a batch that shrinks as samples reach their query index. Two ways to
keep that from tracing one graph per batch size (``batch``):

- ``"dynamic"``: the batch dimension of every input is marked dynamic and one graph serves every size
  (torch traces a batch of 1 as a graph of its own).
- ``"buckets"``: inputs are padded (last row repeated) to the next of a few fixed sizes and the output
  sliced back (fields act per sample: the extra rows change nothing); every graph is static. CUDA graphs
  (``"reduce-overhead"``, ``"max-autotune"``) need static shapes: they always use buckets.

``"reduce-overhead"`` records CUDA graphs for the passes without gradients (the rollout and the teachers),
which removes the launch cost that bounds small students on a GPU; passes with gradients are compiled
without CUDA graphs. It needs a CUDA device and is refused elsewhere. Compilation keeps parameters, state
dicts and ``copy.deepcopy`` as they were: a deep copy (an export) is an eager model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from fieldkit.attention import _traced_backend
from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.graph.schema import CUDA_GRAPH_MODES, CompileMode

#: ``run.compile`` values: off, or a ``torch.compile`` mode.
MODES: tuple[str, ...] = get_args(CompileMode)
Batch = Literal["dynamic", "buckets"]
#: Graphs one block's code may hold: {inner, last block} x {grad, no grad} x batch shapes (buckets: more).
RECOMPILE_LIMIT = 64


def check_mode(mode: str, device: torch.device | str) -> None:
    """Refuse a mode that cannot run on ``device`` (CUDA graphs off CUDA, an unknown mode)."""
    if mode not in MODES:
        raise FieldkitError(f"run.compile must be one of {', '.join(MODES)}; got {mode!r}")
    device = torch.device(device)
    if mode in CUDA_GRAPH_MODES and device.type != "cuda":
        raise FieldkitError(
            f"run.compile: {mode} records CUDA graphs and needs a CUDA device; this run is on {device.type}",
            hint="use run.compile: default (or max-autotune-no-cudagraphs) off CUDA",
        )


def bucket(n: int) -> int:
    """The padded batch size for ``n`` rows: the next of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (< 1.5 ``n``)."""
    size = 1
    while size < n:
        size += max(1, size // 2) if size & (size - 1) == 0 else size // 3
    return size


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model``'s repeated stack (see the module doc); ``[]`` when it has none."""
    named = set(getattr(model, "_repeated_blocks", ()) or ())
    if named:
        return [m for m in model.modules() if type(m).__name__ in named]
    blocks: list[nn.Module] = []
    inside: set[int] = set()  # modules under a block already taken (a block's own lists are not stacks)
    for module in model.modules():
        if id(module) in inside or not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(m) for m in module}) == 1:
            blocks.extend(module)
            inside.update(id(m) for block in module for m in block.modules())
    return blocks


class CompiledForward:
    """A module's compiled call: no-grad and grad passes each through their own compiled function.

    ``mode`` compiles the passes without gradients; the passes with gradients use it too unless it records
    CUDA graphs (then ``"default"``); with ``grad=False`` they run eager. The batch policy is applied on
    the eager side, before the call.
    """

    def __init__(
        self,
        forward: Callable[..., Any],
        mode: str,
        batch: Batch,
        grad: bool = True,
        backend: str = "inductor",
    ) -> None:
        self.cuda_graphs = mode in CUDA_GRAPH_MODES
        self.batch: Batch = "buckets" if self.cuda_graphs else batch
        dynamic = False if self.batch == "buckets" else None

        def compiled(mode: str) -> Callable[..., Any]:
            inductor = backend == "inductor" and mode != "default"
            return torch.compile(forward, backend=backend, mode=mode if inductor else None, dynamic=dynamic)

        self.no_grad = compiled(mode)
        if not grad:
            self.grad = forward
        elif self.cuda_graphs:
            self.grad = compiled("default" if mode == "reduce-overhead" else "max-autotune-no-cudagraphs")
        else:
            self.grad = self.no_grad

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        grad = torch.is_grad_enabled()
        fn = self.grad if grad else self.no_grad
        n = _batch_size(args, kwargs)
        if n is None:
            return fn(*args, **kwargs)
        size = bucket(n) if self.batch == "buckets" else n
        if size != n:
            rows = torch.cat([torch.arange(n), torch.full((size - n,), n - 1)])
            args, kwargs = _map((args, kwargs), n, lambda t: t[rows.to(t.device)])
        if self.batch == "dynamic":
            for t in _tensors(args, kwargs):
                if t.dim() and t.shape[0] == size:
                    torch._dynamo.maybe_mark_dynamic(t, 0)
        elif self.cuda_graphs and not grad:
            # A new replay may overwrite the previous one's outputs: the rollout has consumed them by now.
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        out = fn(*args, **kwargs)
        return out if size == n else _map(out, size, lambda t: t[:n])


def compile_model(
    model: nn.Module,
    mode: str,
    *,
    regional: bool = True,
    batch: Batch = "dynamic",
    grad: bool = True,
    backend: str = "inductor",
) -> int:
    """Compile ``model``'s forwards in place (per block when ``regional`` and it has a repeated stack).

    ``grad=False`` leaves the passes with gradients eager; ``backend`` is torch.compile's (``"aot_eager"``
    traces and runs without generating code: a quick check of what inductor would compile). Returns the
    number of compiled regions; a model already compiled is left as it is (0).
    """
    if mode == "off" or any(m._compiled_call_impl is not None for m in model.modules()):
        return 0
    check_mode(mode, _device(model))
    torch.compiler.assume_constant_result(_traced_backend)  # type: ignore[no-untyped-call]
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    regions = (repeated_blocks(model) if regional else []) or [model]
    for region in regions:
        # Where nn.Module.compile puts its compiled call: module calls go through it, and a deep copy
        # (Module.__getstate__ drops it) is eager.
        region._compiled_call_impl = CompiledForward(region._call_impl, mode, batch, grad, backend)
    return len(regions)


def models_of(field: Any) -> list[nn.Module]:
    """The weight-holding models of a field: the field itself, or the sources under its operators."""
    from fieldkit.ops.base import Operator

    if isinstance(field, Operator):
        return [m for child in field.fields for m in models_of(child)]
    if isinstance(field, nn.Module) and any(True for _ in field.parameters()):
        return [field]
    return []


def compile_fields(fields: Iterable[Any], mode: str, **options: Any) -> list[nn.Module]:
    """Compile every model under ``fields`` once (a source shared by several routes counts once);
    ``options`` go to :func:`compile_model`."""
    done: dict[int, nn.Module] = {}
    if mode == "off":
        return []
    for field in fields:
        for model in models_of(field):
            if id(model) not in done:
                compile_model(model, mode, **options)
                done[id(model)] = model
    return list(done.values())


# -- the batch policy's plumbing ---------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _tensors(*trees: Any) -> Iterator[Tensor]:
    for tree in trees:
        if isinstance(tree, Tensor):
            yield tree
        elif isinstance(tree, Cond):
            yield from tree.values()
        elif isinstance(tree, dict):
            yield from _tensors(*tree.values())
        elif isinstance(tree, (tuple, list)):
            yield from _tensors(*tree)


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The first tensor argument's leading size (the batch), or None."""
    for t in _tensors(args, kwargs):
        return int(t.shape[0]) if t.dim() else None
    return None


def _map(tree: Any, n: int, fn: Callable[[Tensor], Tensor]) -> Any:
    """``tree`` with ``fn`` applied to every tensor whose leading size is ``n`` (Conds included)."""
    if isinstance(tree, Tensor):
        return fn(tree) if tree.dim() and tree.shape[0] == n else tree
    if isinstance(tree, Cond):
        return Cond({k: _map(v, n, fn) for k, v in tree.items()}, nulls=tree.nulls)
    if isinstance(tree, dict):
        return {k: _map(v, n, fn) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_map(v, n, fn) for v in tree)
    if isinstance(tree, list):
        return [_map(v, n, fn) for v in tree]
    return tree
