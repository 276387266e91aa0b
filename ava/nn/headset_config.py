"""Size of the headset encoder (`ava.nn.headset`), a dataclass only so that config modules and
`ava --help` stay fast."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ava.errors import UserError


@dataclass
class HeadsetEncoderConfig:
    """Size of the headset encoder (`ava.nn.headset`): five IR views -> the expression code."""

    image_size: int = 64
    """Side of the square views the encoder reads (headset images are resized to it): a power of two >= 8. Each view is halved down to 4x4."""
    channels: tuple[int, ...] = (16, 32, 64, 64)
    """Output channels per view of the stride-2 convolutions, finest first; the last width repeats for further levels."""
    hidden: int = 256
    """Width of the layer that fuses the five views' features."""
    dropout: float = 0.1
    """Dropout on the fused features while training (against fitting the training identities)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        size = self.image_size
        if size < 8 or size & (size - 1):
            raise UserError(f"--encoder.image-size must be a power of two >= 8, got {size}")
        if not self.channels or min(self.channels) < 1 or self.hidden < 1:
            raise UserError("--encoder.channels and --encoder.hidden must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--encoder.dropout must be in [0, 1), got {self.dropout}")

    @property
    def levels(self) -> int:
        """Stride-2 levels from image_size down to 4x4."""
        return int(math.log2(self.image_size)) - 2

    def level_channels(self) -> list[int]:
        return [self.channels[min(level, len(self.channels) - 1)] for level in range(self.levels)]

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["channels"] = list(self.channels)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "HeadsetEncoderConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown headset encoder fields {unknown}; this driver checkpoint needs a newer ava")
        values = dict(values)
        if "channels" in values:
            values["channels"] = tuple(values["channels"])
        return cls(**values)
