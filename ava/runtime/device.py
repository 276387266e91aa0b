"""Choosing the device a command computes on."""

from __future__ import annotations

import torch

from ava.errors import UserError


def select_device(choice: str) -> torch.device:
    """`choice` is "auto" (CUDA when torch sees a GPU, else the CPU), "cuda" or "cpu"."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")
