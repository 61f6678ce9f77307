"""Refuse what would exhaust memory before allocating it.

The rule: what a config will allocate is counted without allocating it, and must fit in ``FRACTION`` of the
memory the device has free (``MemAvailable`` for the CPU, ``cudaMemGetInfo`` for a GPU). A model counts its
parameters and buffers (non-persistent ones too, such as positional tables), built from its config on the
meta device; a training run adds what one update holds (:mod:`fieldkit.distill.memory`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from fieldkit.errors import FieldkitError

FRACTION = 0.9
GIB = 1024**3


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` now (None where fieldkit cannot tell: mps, meta)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (persistent or not)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def meta_bytes(build: Callable[[], nn.Module]) -> int:
    """:func:`tensor_bytes` of the module ``build()`` makes, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return tensor_bytes(build())


def gib(n: float) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:,.1f} MiB"


def check_fits(need: int, device: torch.device, what: str, hint: str) -> None:
    """Raise a FieldkitError, before anything is allocated, when ``need`` bytes are more than ``FRACTION``
    of the memory free on ``device``."""
    have = available_bytes(device)
    if have is not None and need > FRACTION * have:
        raise FieldkitError(
            f"{what} needs at least {gib(need)} of memory, more than the {gib(have)} free on {device} "
            f"(fieldkit uses at most {FRACTION:.0%} of it); nothing was allocated",
            hint=hint,
        )


def check_model_fits(build: Callable[[], nn.Module], device: torch.device, what: str) -> None:
    """:func:`check_fits` for the parameters and buffers of the module ``build()`` makes, on ``device``."""
    if device.type == "meta":
        return
    check_fits(
        meta_bytes(build),
        device,
        what,
        "check the model's config (sample_size, hidden, depth, ...): it describes a larger model than "
        "this machine holds",
    )
