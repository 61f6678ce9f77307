"""``MMDiT``: fieldkit's compact MMDiT-style (SD3-like) velocity field for small canvases.

Image patches and text tokens keep separate weights (norms, projections, MLPs) but attend jointly:
every block runs one attention over ``[image tokens, text tokens]`` through :func:`fieldkit.attention
.attention`, with padded text tokens masked out as keys. A conditioning vector
``c = MLP(sincos(1000 sigma)) + MLP(pooled) + E[label]`` sets each stream's adaLN shift, scale and gate:
``y = x + gate * f(LN(x) * (1 + scale) + shift)``. Modulations and the output layer start at zero (as in
DiT), so an untrained model is the zero field and every block starts as the identity.

Conditions read from the :class:`~fieldkit.cond.Cond`: ``text`` ``[B, T, text_dim]`` (optional),
``text_mask`` ``[B, T]`` bool, True = real token (optional), ``pooled`` ``[B, pooled_dim]`` (optional),
``label`` ``[B]`` integer class, -1 = null (when ``num_classes`` > 0),
``source`` ``[B, C, H, W]`` (required iff ``use_source``).

Source conditioning is channel concatenation (as in InstructPix2Pix), not a second set of image tokens:
edits on small canvases are pixel-aligned, so each patch sees its own source pixels directly, and the
sequence (hence attention cost) does not double.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fieldkit.attention import attention
from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.models.config import MMDiTConfig
from fieldkit.models.pretrained import PretrainedField


def timestep_features(sigma: Tensor, dim: int) -> Tensor:
    """``[cos(1000 sigma w_i), sin(1000 sigma w_i)]`` with ``w_i = 10000^(-i / (dim/2))``: ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half
    )
    args = 1000.0 * sigma.float()[:, None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


def sincos_positions(dim: int, rows: int, cols: int) -> Tensor:
    """Fixed 2-D positions ``[rows * cols, dim]``: half the channels encode the row, half the column."""

    def one_axis(pos: Tensor, width: int) -> Tensor:
        omega = 10000.0 ** (-torch.arange(width // 2, dtype=torch.float64) / (width // 2))
        angles = pos.double()[:, None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([one_axis(r.flatten(), dim // 2), one_axis(c.flatten(), dim // 2)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift``, per-sample ``shift, scale`` ``[B, D]``, tokens ``[B, L, D]``."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width_in, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width_out)
    )


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _Stream(nn.Module):
    """One stream's half of a joint block: adaLN-modulated norm, q/k/v, output projection and MLP.

    A ``pre_only`` stream (text in the last block, as in SD3) only supplies keys and values: its outputs
    would be discarded, so it has no query, output projection or MLP (and every parameter gets a gradient).
    """

    def __init__(self, hidden: int, mlp_ratio: float, pre_only: bool) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation = _zero(nn.Linear(hidden, (2 if pre_only else 6) * hidden))
        self.qkv = nn.Linear(hidden, (2 if pre_only else 3) * hidden)
        if not pre_only:
            self.proj = nn.Linear(hidden, hidden)
            self.mlp_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
            self.mlp = _mlp(hidden, int(hidden * mlp_ratio), hidden)

    def project(self, tokens: Tensor, c: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``([q,] k, v)`` of the modulated tokens, and the modulations (shift, scale[, gate, ...])."""
        mods = list(self.modulation(c).chunk(2 if self.pre_only else 6, dim=-1))
        h = modulate(self.norm(tokens), mods[0], mods[1])
        return list(self.qkv(h).chunk(2 if self.pre_only else 3, dim=-1)), mods

    def finish(self, tokens: Tensor, attended: Tensor, mods: list[Tensor]) -> Tensor:
        """Gated residual attention output, then the gated residual MLP."""
        _, _, gate, mlp_shift, mlp_scale, mlp_gate = mods
        tokens = tokens + gate[:, None] * self.proj(attended)
        out: Tensor = tokens + mlp_gate[:, None] * self.mlp(
            modulate(self.mlp_norm(tokens), mlp_shift, mlp_scale)
        )
        return out


class JointBlock(nn.Module):
    """Separate image and text streams, one joint attention over ``[image, text]`` tokens."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, last: bool) -> None:
        super().__init__()
        self.heads = heads
        self.image = _Stream(hidden, mlp_ratio, pre_only=False)
        self.text = _Stream(hidden, mlp_ratio, pre_only=last)

    def forward(
        self, img: Tensor, txt: Tensor | None, c: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        (q, k, v), img_mods = self.image.project(img, c)
        if txt is not None:
            txt_qkv, txt_mods = self.text.project(txt, c)
            k, v = torch.cat([k, txt_qkv[-2]], dim=1), torch.cat([v, txt_qkv[-1]], dim=1)
            if not self.text.pre_only:
                q = torch.cat([q, txt_qkv[0]], dim=1)
        out = attention(self._split(q), self._split(k), self._split(v), mask)
        out = out.transpose(1, 2).flatten(2)  # [B, Lq, hidden]
        n = img.shape[1]
        img = self.image.finish(img, out[:, :n], img_mods)
        if txt is None or self.text.pre_only:
            return img, None
        return img, self.text.finish(txt, out[:, n:], txt_mods)

    def _split(self, t: Tensor) -> Tensor:
        """``[B, L, hidden]`` -> ``[B, heads, L, hidden / heads]``."""
        return t.reshape(*t.shape[:-1], self.heads, -1).transpose(1, 2)


class MMDiT(PretrainedField):
    """A joint-attention transformer velocity field ``v = model(x, sigma, cond)`` (``v = eps - x0``)."""

    config_class = MMDiTConfig
    config: MMDiTConfig
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them (less memory)."""

    def __init__(self, config: MMDiTConfig | None = None) -> None:
        config = config or MMDiTConfig()
        super().__init__(config)
        p, hidden = config.patch_size, config.hidden
        image_channels = config.in_channels * (2 if config.use_source else 1)
        self.patch_embed = nn.Conv2d(image_channels, hidden, kernel_size=p, stride=p)
        grid = (config.sample_size[0] // p, config.sample_size[1] // p)
        self.register_buffer("pos_embed", sincos_positions(hidden, *grid), persistent=False)
        self.text_embed = nn.Linear(config.text_dim, hidden)
        self.time_embed = _mlp(config.frequency_dim, hidden, hidden)
        self.pooled_embed = _mlp(config.pooled_dim, hidden, hidden)
        # Row ``num_classes`` is the null label (-1), so guidance can contrast a label with no label.
        self.label_embed = nn.Embedding(config.num_classes + 1, hidden) if config.num_classes else None
        self.blocks = nn.ModuleList(
            JointBlock(hidden, config.heads, config.mlp_ratio, last=i == config.depth - 1)
            for i in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation_out = _zero(nn.Linear(hidden, 2 * hidden))
        self.proj_out = _zero(nn.Linear(hidden, p * p * config.in_channels))

    @classmethod
    def state_numel(cls, config: BaseModel) -> int:
        """Values in the state dict, counted on the meta device from a model of depth at most 2: every
        block but the last one is the same size, so deeper models add copies of the first block."""
        assert isinstance(config, MMDiTConfig)
        small = min(config.depth, 2)
        with torch.device("meta"):
            model = cls(config.model_copy(update={"depth": small}))
        block = sum(int(t.numel()) for t in model.blocks[0].state_dict().values())
        return sum(int(t.numel()) for t in model.state_dict().values()) + (config.depth - small) * block

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """The velocity ``[B, C, H, W]`` at state ``x`` ``[B, C, H, W]`` and noise level ``sigma`` ``[B]``."""
        cfg = self.config
        expected = (cfg.in_channels, *cfg.sample_size)
        if tuple(x.shape[1:]) != expected:
            raise FieldkitError(
                f"MMDiT expects x of shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}"
            )
        batch = x.shape[0]
        image = x
        if cfg.use_source:
            source = _required(cond, "source", "a clean canvas shaped like x (the model has use_source=True)")
            if source.shape != x.shape:
                raise FieldkitError(
                    f"cond['source'] must have the shape of x {list(x.shape)}, got {list(source.shape)}"
                )
            image = torch.cat([x, source.to(x.dtype)], dim=1)
        tokens = self.patch_embed(image).flatten(2).transpose(1, 2) + self.pos_embed

        sigma = sigma.expand(batch) if sigma.dim() == 0 else sigma
        c = self.time_embed(timestep_features(sigma, cfg.frequency_dim).to(x.dtype))
        if (pooled := cond.get("pooled")) is not None:
            c = c + self.pooled_embed(pooled.to(x.dtype))
        if self.label_embed is not None:
            label = cond.get("label")
            index = torch.full((batch,), -1, device=x.device) if label is None else label.to(x.device).long()
            c = c + self.label_embed(torch.where(index < 0, cfg.num_classes, index))
        c = F.silu(c)  # every adaLN modulation reads silu(c), as in DiT

        txt = mask = None
        if (text := cond.get("text")) is not None:
            txt = self.text_embed(text.to(x.dtype))
            if (text_mask := cond.get("text_mask")) is not None:
                keep = text_mask.to(dtype=torch.bool)
                mask = torch.cat([keep.new_ones(batch, tokens.shape[1]), keep], dim=1)[:, None, None, :]
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens, txt = checkpoint(block, tokens, txt, c, mask, use_reentrant=False)
            else:
                tokens, txt = block(tokens, txt, c, mask)

        shift, scale = self.modulation_out(c).chunk(2, dim=-1)
        out = self.proj_out(modulate(self.norm_out(tokens), shift, scale))
        return self._unpatchify(out)

    def enable_gradient_checkpointing(self) -> None:
        """Turn on :attr:`gradient_checkpointing` (the name diffusers' models use for the same switch)."""
        self.gradient_checkpointing = True

    def _unpatchify(self, out: Tensor) -> Tensor:
        """``[B, h * w, p * p * C]`` -> ``[B, C, h * p, w * p]``."""
        p, channels = self.config.patch_size, self.config.in_channels
        rows, cols = (s // p for s in self.config.sample_size)
        out = out.reshape(out.shape[0], rows, cols, p, p, channels)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(out.shape[0], channels, rows * p, cols * p)


def _required(cond: Cond, key: str, what: str) -> Tensor:
    if key not in cond:
        raise FieldkitError(
            f"MMDiT needs cond[{key!r}]: {what}; the Cond has {sorted(cond) or 'no entries'}",
            hint=f"add {key!r} to the data bucket's Cond, or build the model without it",
        )
    return cond[key]
