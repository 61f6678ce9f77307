"""The configs of fieldkit's own models: plain pydantic data (no torch), so graphs validate without it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MMDiTConfig(BaseModel):
    """Shape of an :class:`MMDiT`; the defaults (about 1.1 M parameters) suit 1 x 8 x 16 canvases."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(1, ge=1)
    sample_size: tuple[int, int] = (8, 16)
    patch_size: int = Field(2, ge=1)
    hidden: int = Field(96, ge=4)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    text_dim: int = Field(384, ge=1)
    pooled_dim: int = Field(384, ge=1)
    frequency_dim: int = Field(256, ge=2, description="width of the sinusoidal features of sigma")
    use_source: bool = False
    num_classes: int = Field(0, ge=0, description="class labels read from cond['label'] (-1 = null); 0: none")

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
