"""Reading state dicts saved by the original ava-256 code (`aeparams*.pt`).

ava's modules keep the original's parameter names and shapes (docs/model.md), so the mapping is
the identity once wrapper names (DDP's `module.`, torch.compile's `_orig_mod.`) are stripped; what
needs work is recovering the model size from the tensors and the camera order of the colour
calibration and background tables.
"""

from __future__ import annotations

import re

from pathlib import Path

import torch

from ava.errors import UserError
from ava.nn.config import ModelConfig

# Module names that wrappers put into parameter names: DistributedDataParallel and DataParallel
# (`module`), torch.compile (`_orig_mod`), FSDP and activation checkpointing. ava's own modules
# use none of them, so they are dropped wherever they occur in a key, in any nesting and order.
WRAPPER_NAMES = ("module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
# Tables with one row (or column) per camera index.
CAMERA_ROWS = ("colorcal.wcam", "colorcal.bcam")
CAMERA_COLUMNS = ("bgmodel.cammod.0.weight",)
_SIZE_KEYS = (
    "decoder_assembler.geodec.bias",
    "decoder_assembler.adaptwarps",
    "id_encoder.warpidentity",
    "colorcal.wcam",
    "colorcal.wident",
)


def load_original_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an original checkpoint, with wrapper names (`module.`, `_orig_mod.`, ...) removed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        # torch's message is several lines of advice on weights_only=False, which would run code
        # from the file: not something to suggest for a state dict, which needs none of it.
        found = re.search(r"GLOBAL ([\w.]+)", str(error))  # the callable a hostile pickle asks for
        kind = f"it holds Python objects besides tensors: it asks for {found.group(1)}, which could run code" \
            if found else "torch.load cannot read it"
        raise UserError(f"{path} is not a PyTorch state dict ({kind}); pass the aeparams*.pt that the "
                        "original code saved") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(f"{path} is not a state dict (a mapping of names to tensors)")
    return strip_wrapper_prefixes(state)


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every wrapper's name (`WRAPPER_NAMES`) removed from its keys, e.g.
    `module._orig_mod.colorcal.wcam` -> `colorcal.wcam`; UserError when two keys then collide."""
    stripped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        plain = ".".join(part for part in key.split(".") if part not in WRAPPER_NAMES)
        if plain in stripped:
            raise UserError(f"the state dict holds {plain!r} twice once wrapper names are removed (e.g. {key!r})")
        stripped[plain] = value
    return stripped


def common_key_prefix(keys) -> str:
    """The dotted prefix that every key starts with ('' when none), e.g. 'model.' or 'net.ae.'."""
    split = [key.split(".")[:-1] for key in keys]
    if not split:
        return ""
    shared = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        shared.append(parts[0])
    return "".join(f"{part}." for part in shared)


def infer_model_config(state: dict[str, torch.Tensor]) -> tuple[ModelConfig, int, int]:
    """(model config, number of cameras, number of identities) that produced `state`."""
    missing = [key for key in _SIZE_KEYS if key not in state]
    if missing:
        prefix = common_key_prefix(state)
        if prefix and all(prefix + key in state for key in _SIZE_KEYS):
            raise UserError(
                f"every key of the state dict starts with {prefix!r}, which is no wrapper ava knows "
                f"(it removes {', '.join(name + '.' for name in WRAPPER_NAMES)}); without it the keys are an "
                "Ava-256 autoencoder's: save the inner module's state_dict, or remove the prefix from the keys"
            )
        if prefix:
            raise UserError(f"the state dict lacks {missing}; every key starts with {prefix!r} (e.g. "
                            f"{next(iter(state))!r}); is it an Ava-256 autoencoder (aeparams*.pt)?")
        raise UserError(f"the state dict lacks {missing}; is it an Ava-256 autoencoder (aeparams*.pt)?")
    voxels, uv_size = state["decoder_assembler.geodec.bias"].shape[0], state["decoder_assembler.geodec.bias"].shape[-1]
    num_prims = state["decoder_assembler.adaptwarps"].numel()
    per_side = uv_size // voxels
    if per_side * per_side != num_prims:
        raise UserError(
            f"inconsistent sizes in the state dict: a {uv_size} slab of {voxels}-voxel primitives "
            f"but {num_prims} primitives"
        )
    config = ModelConfig(
        uv_size=uv_size,
        prims_per_side=per_side,
        voxels_per_prim=voxels,
        warp_size=state["id_encoder.warpidentity"].shape[-1],
        background_width=state["bgmodel.mlp.0.weight"].shape[0] if "bgmodel.mlp.0.weight" in state else 256,
    )
    return config, state["colorcal.wcam"].shape[0], state["colorcal.wident"].shape[0]


def reorder_cameras(
    state: dict[str, torch.Tensor], original_order: list[str], new_order: list[str]
) -> dict[str, torch.Tensor]:
    """Move per-camera rows from the original's camera indices to ava's.

    `original_order[i]` is the camera the original meant by index i (its position in a capture's
    calibration list); `new_order[j]` is ava's camera j (the sorted union of camera ids).
    """
    if sorted(original_order) != sorted(new_order):
        raise UserError("the original and the new camera lists hold different cameras")
    source = torch.tensor([original_order.index(camera) for camera in new_order])
    state = dict(state)
    for key in CAMERA_ROWS:
        state[key] = state[key][source].clone()
    for key in CAMERA_COLUMNS:
        state[key] = state[key][:, source].clone()
    return state


def original_camera_order(per_capture: list[list[str]], union: list[str]) -> tuple[list[str], bool]:
    """The camera each original index meant, and whether all captures agreed on it.

    The original indexed cameras by their position in each capture's own calibration list
    (docs/original-quirks.md), so the index is only well defined when the captures list their cameras in
    the same order. Otherwise the first capture that has a camera decides its index, which is
    exact for that capture and approximate for the others.
    """
    consistent = all(cameras == per_capture[0] for cameras in per_capture)
    order: list[str | None] = [None] * len(union)
    for cameras in per_capture:
        for position, camera in enumerate(cameras):
            if position < len(order) and order[position] is None and camera not in order:
                order[position] = camera
    leftover = iter(camera for camera in union if camera not in order)
    filled = [camera if camera is not None else next(leftover) for camera in order]
    return filled, consistent
