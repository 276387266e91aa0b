"""Numeric precision of the model's convolutional parts: fp32, tf32 or bf16.

- `fp32`: every matrix product and convolution in full fp32 (TF32 off for cuBLAS and cuDNN).
- `tf32`: matrix products and convolutions on the tensor cores in TF32 (10-bit mantissa inputs,
  fp32 accumulation). PyTorch enables TF32 for cuDNN convolutions by default, so the original
  ran its convolutions this way; `tf32` adds the (small) linear layers.
- `bf16`: the encoders, the decoders' convolution stacks and the background MLP run under
  `torch.autocast(bfloat16)`; their outputs are cast back to fp32 before anything geometric
  (mesh, primitive placement), the raymarcher and the losses, which stay fp32.

Only CUDA devices are affected; on the CPU every setting computes in fp32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def configure_tensor_cores(precision: str) -> None:
    """Sets PyTorch's process-wide TF32 switches for `precision` (bf16 keeps TF32 for the fp32 rest)."""
    allow = check_precision(precision) != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def autocast(reference: torch.Tensor, precision: str):
    """A context that runs the enclosed convolutions in bf16 when `precision` is bf16 and
    `reference` is on a CUDA device; otherwise a no-op."""
    if precision == "bf16" and reference.is_cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_float(value: Any) -> Any:
    """Floating tensors (in nested dicts, lists and tuples) cast to fp32; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return {key: to_float(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_float(item) for item in value)
    return value
