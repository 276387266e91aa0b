"""Input checks shared by the public kernel functions: one clear ValueError per problem."""

from __future__ import annotations

import torch


def _shape_text(shape) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def check_tensor(name: str, tensor, expected: tuple, sizes: dict[str, int]) -> None:
    """Checks `tensor` against `expected`, a tuple of ints and symbolic size names.

    A name seen for the first time binds its size in `sizes`; later uses must agree, which is how
    batch sizes and primitive counts are matched across arguments.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {_shape_text(expected)}, got {type(tensor).__name__}")
    if tensor.dtype != torch.float32:
        raise ValueError(
            f"{name} must be float32, got {tensor.dtype}; convert with .float() (float64 gradient checks "
            "call ava.kernels.reference directly)"
        )
    if tensor.dim() != len(expected):
        raise ValueError(
            f"{name} must have shape {_shape_text(expected)}, got {_shape_text(tensor.shape)} "
            f"({tensor.dim()} dimensions instead of {len(expected)})"
        )
    for axis, (want, got) in enumerate(zip(expected, tensor.shape)):
        if isinstance(want, int):
            if got != want:
                raise ValueError(f"{name} must have shape {_shape_text(expected)}, got {_shape_text(tensor.shape)}")
        elif want in sizes and sizes[want] != got:
            raise ValueError(
                f"{name} must have shape {_shape_text(expected)} with {want}={sizes[want]} "
                f"(from the other arguments), got {_shape_text(tensor.shape)}"
            )
        else:
            sizes[want] = got


def check_same_device_dtype(named: dict[str, torch.Tensor]) -> None:
    items = [(name, t) for name, t in named.items() if t is not None]
    first_name, first = items[0]
    for name, tensor in items[1:]:
        if tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}; move them to one device")
        if tensor.dtype != first.dtype:
            raise ValueError(f"{name} is {tensor.dtype} but {first_name} is {first.dtype}; use one dtype")
