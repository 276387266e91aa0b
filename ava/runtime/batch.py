"""Batches on a device (ava.data.collate.collate makes them)."""

from __future__ import annotations

import torch


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors moved to `device` (non-blocking from pinned memory); other values unchanged."""
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }
