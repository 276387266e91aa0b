"""Model size configuration, presets, and the layer plans derived from them.

The original is built for one size only (1024x1024 UV maps, 128x128 primitives of 8^3 voxels).
Here the UV size S, the primitives per side P and the voxels per primitive D are fields, with
S = P*D (the decoders emit one S x S slab that is cut into P x P primitives of D x D texels, the
channels giving the depth). Layer counts follow from S: the encoders halve S down to 4x4, the
decoders double 4x4 up to S. Channel widths are taken from the original's tables counted from the
*finest* level, so the ava256 preset reproduces the original exactly and smaller maps simply drop
the coarse end (this keeps the geometry head at S/4 with 32 channels and the motion head at P).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ava.errors import UserError

# Output channels of the identity UNet's stride-2 layers, finest first (original: 1024 -> 4).
ENCODER_CHANNELS = (16, 32, 64, 64, 128, 128, 256, 256)
# Output channels of the decoders' transposed convolutions, finest first, excluding the last
# layer (whose width is D for opacity or 3*D for colour).
DECODER_CHANNELS = (16, 32, 64, 64, 128, 128, 256)
# Expression encoder: stride-2 combiner widths ending at 8x8, then the 3x3 stack at 8x8.
EXPRESSION_COMBINER_CHANNELS = (128, 256, 256, 512)
EXPRESSION_STACK_CHANNELS = (256, 128, 64)
# Latent sizes shared by encoders and decoders: codes are [N, 16, 4, 4]; the expression encoder
# emits 64 channels before the bottleneck; the view code is 8 channels at 4x4.
LATENT_CHANNELS = 16
EXPRESSION_FEATURES = 64
VIEW_CHANNELS = 8


def _table(table: tuple[int, ...], index: int) -> int:
    return table[min(index, len(table) - 1)]


@dataclass
class ModelConfig:
    """Size of the Ava-256 model and where its mesh topology comes from."""

    uv_size: int = 1024
    """Side of the UV maps (textures, geometry images, decoder slabs): a power of two >= 64."""
    prims_per_side: int = 128
    """Primitives per side of the UV grid; the model has prims_per_side^2 primitives."""
    voxels_per_prim: int = 8
    """Voxels per side of each cubic primitive (at least 4); uv_size must equal prims_per_side * voxels_per_prim."""
    warp_size: int = 128
    """Side of the identity encoder's learned warp grid (the original uses 128 at uv_size 1024)."""
    volradius: float = 256.0
    """Half-extent of the rendered volume in millimetres (world units per volume unit)."""
    raymarch_step: float = 1.0
    """Raymarching step in millimetres; the kernel's step is raymarch_step / volradius."""
    background_width: int = 256
    """Channels of the background model's per-pixel layers (the original's 256); they run at every pixel of every image."""
    topology: str | None = None
    """OBJ file with the mesh topology (UVs and faces). Default: <dataset>/face_topology.obj if present, else the original Ava-256 topology (downloaded once and checked)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        size, per_side, voxels = self.uv_size, self.prims_per_side, self.voxels_per_prim
        if size < 64 or size & (size - 1):
            raise UserError(f"--model.uv-size must be a power of two >= 64, got {size}")
        # Primitives are placed on the UV grid with a stride of voxels_per_prim texels, and
        # ava.nn.placement needs at least 4 (an even number) for each primitive's frame.
        if voxels < 4 or voxels % 2 or per_side < 8 or per_side * voxels != size:
            raise UserError(
                f"--model.prims-per-side ({per_side}) times --model.voxels-per-prim ({voxels}) must equal "
                f"--model.uv-size ({size}), with at least 8 primitives per side and an even number of at "
                "least 4 voxels per primitive"
            )
        if per_side & (per_side - 1):
            raise UserError(f"--model.prims-per-side must be a power of two, got {per_side}")
        if self.warp_size < 2:
            raise UserError(f"--model.warp-size must be at least 2, got {self.warp_size}")
        if self.background_width < 1:
            raise UserError(f"--model.background-width must be at least 1, got {self.background_width}")

    @property
    def num_prims(self) -> int:
        return self.prims_per_side**2

    @property
    def levels(self) -> int:
        """Number of stride-2 levels between the UV size and 4x4 (8 for 1024)."""
        return int(math.log2(self.uv_size)) - 2

    @property
    def geometry_head_size(self) -> int:
        """Resolution of the decoded geometry image (the original: 256 for 1024 UV maps)."""
        return self.uv_size // 4

    def encoder_channels(self) -> list[int]:
        """Output channels of the UNet's stride-2 layers e_0 (finest) ... e_{L-1} (4x4)."""
        return [_table(ENCODER_CHANNELS, level) for level in range(self.levels)]

    def skip_channels(self) -> list[int]:
        """Channels of the UNet skips b_0 (at S) ... b_{L-1} (at 8x8): each level's input width."""
        return [3] + self.encoder_channels()[:-1]

    def decoder_channels(self, out_channels: int) -> list[int]:
        """Output channels of the decoder layers t_0 (8x8) ... t_{L-1} (S), coarse to fine."""
        finest_first = [out_channels] + [_table(DECODER_CHANNELS, level) for level in range(self.levels - 1)]
        return finest_first[::-1]

    def expression_combiner_channels(self) -> list[int]:
        """Widths of the expression combiner's stride-2 layers (from S/8 down to 8x8)."""
        count = self.levels - 4
        table = list(EXPRESSION_COMBINER_CHANNELS)
        if count <= len(table):
            return table[len(table) - count :]
        return [table[0]] * (count - len(table)) + table

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown model config fields {unknown}; this checkpoint needs a newer ava")
        return cls(**values)


PRESETS: dict[str, ModelConfig] = {
    # The original Ava-256 model: 1024x1024 UV maps, 16384 primitives of 8^3 voxels.
    "ava256": ModelConfig(),
    # A small model with the same structure that trains on a CPU: 256x256 UV maps, 32x32
    # primitives of 8^3 voxels, a 32x32 identity warp grid.
    "tiny": ModelConfig(uv_size=256, prims_per_side=32, voxels_per_prim=8, warp_size=32),
}


def model_preset(name: str) -> ModelConfig:
    """A fresh copy of the named preset (`ava256` or `tiny`)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


@dataclass
class HeadsetEncoderConfig:
    """Size of the headset encoder (`ava.nn.headset_encoder`): five IR views -> the expression code."""

    image_size: int = 64
    """Side of the square views the encoder reads (headset images are resized to it): a power of two >= 8. Each view is halved down to 4x4."""
    channels: tuple[int, ...] = (16, 32, 64, 64)
    """Output channels per view of the stride-2 convolutions, finest first; the last width repeats for further levels."""
    hidden: int = 256
    """Width of the layer that fuses the five views' features."""
    dropout: float = 0.1
    """Dropout on the fused features while training (against fitting the training identities)."""
    neutral: bool = False
    """Condition on the subject's own neutral headset frame: its five views go through the same first convolution levels, and each view's features of the current and the neutral frame are fused at 16x16 (8x8 for 16^2 views) before the rest of the stack."""

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

    @property
    def stem_levels(self) -> int:
        """Levels before the current and the neutral frame's features are fused (`neutral`): down to
        16x16, at least one."""
        return max(1, self.levels - 2)

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
