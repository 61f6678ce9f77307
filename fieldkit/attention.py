"""Fused attention dispatch: one call, several kernels, chosen by context, config or environment.

``attention(q, k, v, mask)`` computes :math:`\\mathrm{softmax}(q k^T / \\sqrt{d} + \\log \\mathrm{mask})\\, v`
(a ``False`` mask entry removes that key) with the kernel of the current backend:

- ``sdpa``: ``F.scaled_dot_product_attention``, PyTorch picks the kernel (the default);
- ``sdpa-flash``, ``sdpa-efficient``, ``sdpa-cudnn``, ``sdpa-math``: SDPA pinned to one kernel with
  ``torch.nn.attention.sdpa_kernel`` (PyTorch's flag is process-wide, so pin from one thread at a time);
  on CPU only ``sdpa-flash`` (a fused CPU kernel) and ``sdpa-math`` exist;
- ``xformers``: ``xformers.ops.memory_efficient_attention``, when installed and on CUDA;
- ``naive``: an explicit softmax, the reference the others are tested against.

The backend is, in order: the ``backend=`` argument, the innermost :func:`use_backend` context, the
default set by :func:`set_default_backend` (a graph's config), the ``FIELDKIT_ATTENTION`` environment
variable, and ``"sdpa"``. A backend that cannot run on the given device, dtype or mask raises
:class:`AttentionUnavailable` naming the backends that can: there is never a silent fallback.

Whether a backend can run is decided once per (backend, device type, dtype, rank, mask dtype): declared
rules first, then, for the pinned SDPA kernels, one tiny trial call, because which kernels a PyTorch build
accepts (a mask in CPU flash attention, say) changes between versions. Later calls cost a dict lookup.

A query row whose keys are all masked gives zeros with ``sdpa*`` and ``naive``; keep one key per query.

Under ``torch.compile`` (``run.compile``) the backend is read when a graph is traced and stays part of it;
the checks above run on eager calls only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from fieldkit.errors import FieldkitError

ENV_VAR = "FIELDKIT_ATTENTION"
FALLBACK = "sdpa"

Kernel = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


class AttentionUnavailable(FieldkitError):
    """An attention backend that is unknown or cannot run on the given tensors."""


@dataclass(frozen=True)
class Backend:
    """An attention kernel and the inputs it accepts.

    ``devices``/``dtypes`` of ``None`` accept any; ``requires`` names a module that must be importable;
    ``sdp`` is the PyTorch SDPA kernel the backend pins, checked by one trial call per configuration.
    """

    name: str
    kernel: Kernel
    devices: frozenset[str] | None = None
    dtypes: frozenset[torch.dtype] | None = None
    supports_mask: bool = True
    needs_4d: bool = False
    requires: str | None = None
    sdp: SDPBackend | None = None

    def refusal(self, device: torch.device, dtype: torch.dtype, ndim: int, masked: bool) -> str | None:
        """Why this backend cannot run on such inputs, or ``None`` when it can."""
        if self.devices is not None and device.type not in self.devices:
            return f"it needs a {' or '.join(sorted(self.devices))} device, got {device.type}"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "this machine or PyTorch build has no CUDA"
        if self.requires is not None and importlib.util.find_spec(self.requires) is None:
            return f"the {self.requires!r} package is not installed"
        if self.dtypes is not None and dtype not in self.dtypes:
            names = ", ".join(sorted(str(d).removeprefix("torch.") for d in self.dtypes))
            return f"it supports {names}, got {str(dtype).removeprefix('torch.')}"
        if self.needs_4d and ndim != 4:
            return f"it needs 4-D [B, H, L, D] inputs, got {ndim}-D"
        if masked and not self.supports_mask:
            return "it does not support an attention mask"
        if self.sdp is not None and not _sdp_runs(self.sdp, device, dtype, ndim, masked):
            return f"this PyTorch build ({torch.__version__}) has no {self.sdp.name} kernel for these inputs"
        return None


_BACKENDS: dict[str, Backend] = {}
_plans: dict[tuple[str, str, torch.dtype, int, torch.dtype | None], Kernel] = {}
_context: ContextVar[str | None] = ContextVar("fieldkit_attention_backend", default=None)
_default: str | None = None


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """Scaled dot-product attention, ``softmax(q k^T / sqrt(d) + log(mask)) v``, with the current backend.

    ``q, k, v`` are ``[B, H, L, D]`` (``k, v`` may have their own ``L``); ``mask`` is a bool tensor
    broadcastable to ``[B, H, Lq, Lk]`` with ``True`` = attend, or ``None``. Returns ``[B, H, Lq, D]``.
    """
    if torch.compiler.is_compiling():
        # torch.compile cannot trace a ContextVar or the planning's trial calls: the backend is read once,
        # when the graph is traced, and its kernel is traced in (the choice is checked on the eager path).
        name = backend or _traced_backend()
        _check_known(name, "attention")
        return _BACKENDS[name].kernel(q, k, v, mask)
    name = backend or current_backend()
    key = (name, q.device.type, q.dtype, q.dim(), None if mask is None else mask.dtype)
    kernel = _plans.get(key)
    if kernel is None:
        kernel = _plan(name, q, mask, explicit=backend is not None)
        _plans[key] = kernel
    return kernel(q, k, v, mask)


def available_backends(device: torch.device | str, dtype: torch.dtype, *, masked: bool = False) -> list[str]:
    """The backends that can run on 4-D ``device``/``dtype`` inputs (with a bool mask if ``masked``)."""
    device = torch.device(device)
    return [b.name for b in _BACKENDS.values() if b.refusal(device, dtype, 4, masked) is None]


def known_backends() -> list[str]:
    """The names of every registered backend (whether or not it can run here)."""
    return list(_BACKENDS)


def current_backend() -> str:
    """The backend a call without ``backend=`` would use now (context > default > env var > "sdpa")."""
    return _context.get() or _default or os.environ.get(ENV_VAR) or FALLBACK


def _traced_backend() -> str:
    """:func:`current_backend` where torch.compile traces a call. ``fieldkit.compile`` marks it
    ``torch.compiler.assume_constant_result`` (a constant of the graph; marking it here would import dynamo
    with fieldkit); unmarked, dynamo breaks the graph around the ContextVar and the result is the same."""
    return current_backend()


def set_default_backend(name: str | None) -> None:
    """Set the process-wide default backend (below :func:`use_backend`); ``None`` clears it."""
    global _default
    if name is not None:
        _check_known(name, "set_default_backend")
    _default = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Use backend ``name`` for attention calls inside the block; nested blocks restore the outer choice."""
    _check_known(name, "use_backend")
    token = _context.set(name)
    try:
        yield name
    finally:
        _context.reset(token)


# Planning (once per configuration) ---------------------------------------------------------------------


def _plan(name: str, q: Tensor, mask: Tensor | None, *, explicit: bool) -> Kernel:
    if mask is not None and mask.dtype != torch.bool:
        raise FieldkitError(
            f"attention mask must be a bool tensor (True = attend), got {mask.dtype}",
            hint="pass `mask.bool()`, or build the mask with a comparison such as `lengths > arange`",
        )
    spec = _BACKENDS.get(name)
    where = f"{q.device.type}/{str(q.dtype).removeprefix('torch.')}" + (
        " with a mask" if mask is not None else ""
    )
    runnable = [
        b.name for b in _BACKENDS.values() if b.refusal(q.device, q.dtype, q.dim(), mask is not None) is None
    ]
    if spec is None:
        raise AttentionUnavailable(
            f"unknown attention backend {name!r}{_origin(explicit)}; known: {', '.join(_BACKENDS)}; "
            f"available on {where}: {', '.join(runnable)}",
            hint=_HINT,
        )
    reason = spec.refusal(q.device, q.dtype, q.dim(), mask is not None)
    if reason is not None:
        raise AttentionUnavailable(
            f"attention backend {name!r}{_origin(explicit)} cannot run on {where}: {reason}; "
            f"available on {where}: {', '.join(runnable)}",
            hint=_HINT,
        )
    return spec.kernel


_HINT = (
    "choose another with `fieldkit.attention.use_backend(name)`, `set_default_backend(name)` "
    f"or the {ENV_VAR} environment variable"
)


def _origin(explicit: bool) -> str:
    """Where the failing choice came from, following the resolution order of :func:`attention`."""
    if explicit:
        return " (from the backend= argument)"
    if _context.get():
        return " (from use_backend)"
    if _default:
        return " (from set_default_backend)"
    if os.environ.get(ENV_VAR):
        return f" (from {ENV_VAR})"
    return ""


def _check_known(name: str, caller: str) -> None:
    if name not in _BACKENDS:
        raise AttentionUnavailable(
            f"{caller}: unknown attention backend {name!r}; known: {', '.join(_BACKENDS)}", hint=_HINT
        )


_sdp_trials: dict[tuple[SDPBackend, torch.device, torch.dtype, int, bool], bool] = {}


def _sdp_runs(sdp: SDPBackend, device: torch.device, dtype: torch.dtype, ndim: int, masked: bool) -> bool:
    """Whether PyTorch accepts kernel ``sdp`` for such inputs: one tiny trial call, remembered."""
    key = (sdp, device, dtype, ndim, masked)
    if key not in _sdp_trials:
        shape = (1, 1, 1, 8, 8)[5 - ndim :]
        try:
            q = torch.ones(shape, device=device, dtype=dtype, requires_grad=dtype.is_floating_point)
            mask = torch.ones((*shape[:-1], 8), device=device, dtype=torch.bool) if masked else None
            with warnings.catch_warnings(), sdpa_kernel(sdp):
                warnings.simplefilter("ignore")  # PyTorch warns about every kernel it turns down
                F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            _sdp_trials[key] = True
        except (RuntimeError, AssertionError):  # AssertionError: a device this build lacks (CUDA on CPU)
            _sdp_trials[key] = False
    return _sdp_trials[key]


# Kernels ------------------------------------------------------------------------------------------------


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _pinned(sdp: SDPBackend) -> Kernel:
    def kernel(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        try:
            with sdpa_kernel(sdp):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        except RuntimeError as err:
            # Shape limits (head size, alignment) are only known to PyTorch at call time.
            if "No available kernel" not in str(err) and "No viable backend" not in str(err):
                raise
            raise AttentionUnavailable(
                f"PyTorch's {sdp.name} kernel refused q {tuple(q.shape)}, k {tuple(k.shape)} on "
                f"{q.device.type}/{q.dtype}: {str(err).splitlines()[0]}",
                hint=_HINT,
            ) from err

    return kernel


def _naive(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.float32)
    if mask is not None:
        weights = weights.nan_to_num(0.0)  # a row with every key masked attends to nothing, as in SDPA
    out: Tensor = weights.to(v.dtype) @ v
    return out


def _xformers(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    import xformers.ops as xops

    bias = None
    if mask is not None:
        lq, lk = q.shape[2], k.shape[2]
        # xformers wants an additive bias whose rows are 16-byte aligned: allocate padded, then slice.
        padded = torch.zeros(*mask.shape[:-1], -(-lk // 8) * 8, device=q.device, dtype=q.dtype)
        bias = padded[..., :lk].masked_fill_(~mask, float("-inf")).expand(q.shape[0], q.shape[1], lq, lk)
    out: Tensor = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias
    )
    return out.transpose(1, 2)


def _pinned_backend(name: str, sdp: SDPBackend, **rules: Any) -> Backend:
    return Backend(name, _pinned(sdp), sdp=sdp, **rules)


_HALF = frozenset({torch.float16, torch.bfloat16})
_CUDA = frozenset({"cuda"})
_BACKENDS.update(
    (backend.name, backend)
    for backend in (
        Backend("sdpa", _sdpa),
        _pinned_backend("sdpa-flash", SDPBackend.FLASH_ATTENTION, devices=frozenset({"cpu", "cuda"})),
        _pinned_backend("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION, devices=_CUDA),
        _pinned_backend("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION, devices=_CUDA, dtypes=_HALF),
        _pinned_backend("sdpa-math", SDPBackend.MATH),
        Backend("xformers", _xformers, _CUDA, _HALF | {torch.float32}, needs_4d=True, requires="xformers"),
        Backend("naive", _naive),
    )
)
