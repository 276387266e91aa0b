"""Zeroing the NaN and infinite entries of many tensors in one launch (gradient sanitising).

`ZeroNonfinite()(tensors)` does what `torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)`
does to each tensor (the reference; the CPU path), but for float32 tensors on a GPU (or under
TRITON_INTERPRET=1) with one Triton kernel over all of them: a table of addresses, sizes and
blocks tells each program which tensor and which stretch of it to clean. A model's few hundred
gradients then cost one launch instead of one each, so the training step can clean them on
every step instead of reading the gradient norm back to decide (which would stop the host).

Inside a CUDA graph capture the tensors' addresses are those of the graph's memory, fixed for
every replay; the tables are allocated there and filled once the capture has ended
(`finish_capture`), since a capture cannot copy from pageable host memory.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK = 4096  # elements per program


@triton.jit
def _zero_nonfinite_kernel(address_ptr, size_ptr, block_tensor_ptr, block_start_ptr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    tensor = tl.load(block_tensor_ptr + block)
    start = tl.load(block_start_ptr + block)
    size = tl.load(size_ptr + tensor)
    base = tl.load(address_ptr + tensor).to(tl.pointer_type(tl.float32), bitcast=True)
    offsets = start + tl.arange(0, BLOCK)
    valid = offsets < size
    values = tl.load(base + offsets, mask=valid, other=0.0)
    # x - x is 0 exactly for finite x and NaN for NaN and +-inf.
    tl.store(base + offsets, tl.where(values - values == 0.0, values, 0.0), mask=valid)


def zero_nonfinite_reference(tensors) -> None:
    for tensor in tensors:
        torch.nan_to_num_(tensor, nan=0.0, posinf=0.0, neginf=0.0)


def _uses_kernel(tensor: torch.Tensor) -> bool:
    on_device = tensor.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"
    return on_device and tensor.dtype == torch.float32 and tensor.is_contiguous()


class ZeroNonfinite:
    """Sets the NaN and +-inf entries of tensors to zero, in place (see the module docstring)."""

    def __init__(self) -> None:
        self._captured: list[tuple[list[torch.Tensor], list[list[int]]]] = []
        self._graph_tables: list[torch.Tensor] = []  # read by captured launches: kept as long as this object

    def __call__(self, tensors) -> None:
        tensors = list(tensors)
        fast = [tensor for tensor in tensors if _uses_kernel(tensor) and tensor.numel() > 0]
        zero_nonfinite_reference(tensor for tensor in tensors if not _uses_kernel(tensor))
        if not fast:
            return
        device = fast[0].device
        if any(tensor.device != device for tensor in fast):
            raise ValueError("ZeroNonfinite takes tensors on one device")
        rows = self._tables(fast)
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if capturing:
            tables = [torch.empty(len(row), dtype=torch.int64, device=device) for row in rows]
            self._captured.append((tables, rows))
        else:
            # From pinned memory without waiting; the caching host allocator keeps each buffer
            # until its copy has run.
            pin = device.type == "cuda"
            tables = [torch.tensor(row, dtype=torch.int64, pin_memory=pin).to(device, non_blocking=True)
                      for row in rows]
        _zero_nonfinite_kernel[(len(rows[2]),)](*tables, BLOCK=BLOCK)

    @staticmethod
    def _tables(tensors) -> list[list[int]]:
        """Rows of the four tables: addresses, sizes, and per program its tensor and first element."""
        addresses = [tensor.data_ptr() for tensor in tensors]
        sizes = [tensor.numel() for tensor in tensors]
        block_tensor, block_start = [], []
        for index, size in enumerate(sizes):
            starts = range(0, size, BLOCK)
            block_tensor += [index] * len(starts)
            block_start += list(starts)
        return [addresses, sizes, block_tensor, block_start]

    def finish_capture(self) -> None:
        """Fills the tables of the launches recorded during a CUDA graph capture (call it after
        the capture, before the first replay)."""
        for tables, rows in self._captured:
            for table, row in zip(tables, rows):
                table.copy_(torch.tensor(row, dtype=torch.int64))
            self._graph_tables += tables
        self._captured.clear()
