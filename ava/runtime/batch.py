"""Batches: collating dataset samples and moving them to a device."""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from ava.data.bad_data import SKIPPED_KEY


def collate(samples: list[dict]) -> dict:
    """Samples -> one batch (tensors stacked along a new dim 0); the bad-data bookkeeping key of
    the training loader is dropped."""
    return default_collate([{key: value for key, value in sample.items() if key != SKIPPED_KEY} for sample in samples])


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors moved to `device` (non-blocking from pinned memory); other values unchanged."""
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }
