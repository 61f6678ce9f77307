"""The configs of fieldkit's own models: plain pydantic data (no torch), so graphs validate without it."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MMDiTConfig(BaseModel):
    """Shape of an :class:`MMDiT`; the defaults (about 1.1 M parameters) suit 1 x 8 x 16 canvases."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Every size has a cap (far above any model this class is meant for): a typo such as hidden: 1e30
    # is one clear error naming the cap, not an allocation that exhausts the machine.
    in_channels: int = Field(1, ge=1, le=256)
    sample_size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]] = (8, 16)
    patch_size: int = Field(2, ge=1, le=64)
    hidden: int = Field(96, ge=4, le=16384)
    depth: int = Field(4, ge=1, le=256)
    heads: int = Field(4, ge=1, le=256)
    mlp_ratio: float = Field(2.0, gt=0, le=16)
    text_dim: int = Field(384, ge=1, le=16384)
    pooled_dim: int = Field(384, ge=1, le=16384)
    frequency_dim: int = Field(256, ge=2, le=16384, description="width of the sinusoidal features of sigma")
    use_source: bool = False
    num_classes: int = Field(
        0, ge=0, le=2**20, description="class labels read from cond['label'] (-1 = null); 0: none"
    )

    @model_validator(mode="after")
    def _check_divisibility(self) -> MMDiTConfig:
        if any(s % self.patch_size for s in self.sample_size):
            raise ValueError(
                f"sample_size {self.sample_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} must be a multiple of heads {self.heads}")
        if self.hidden % 4 or self.frequency_dim % 2:
            raise ValueError("hidden must be a multiple of 4 and frequency_dim even (sin/cos pairs)")
        return self
