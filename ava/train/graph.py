"""The training step captured once in a CUDA graph and replayed for every batch.

A step of the ava256 model launches about 2,200 kernels; issued one by one from Python, the
host falls behind the GPU (docs/training.md, "How a step runs"). `CapturedStep` records the
whole `SyncFreeStep` (forward, losses, backward, gradient clean-up, Adam) once and replays it:
one launch per step. What a replay needs:

- fixed input addresses: `StaticBatch` keeps device buffers the graph reads, filled from each
  pinned host batch through two staging buffers on a side stream, so the copy of the next batch
  overlaps the current step (the copy of an ava256 batch, about 115 MB, takes milliseconds);
- fixed gradient addresses: the graph allocates the gradients in its own memory, so they are the
  same tensors at every replay;
- nothing read back and no data-dependent shape inside the step (the raymarcher's tile lists
  have capacities from the shapes: ava.kernels.raymarch_triton.ListCapacity);
- a few eager steps on a side stream first, so that lazy initialisation (cuBLAS workspaces,
  torch.compile of the compiled parts, Triton kernels) happens outside the capture.

The random numbers of a replay (the VAE's noise) come from the same generator state an eager
step would use. The capture records the step for the batch at hand without running it, so the
first replay runs that batch.
"""

from __future__ import annotations

import torch

from ava.train.step import StepResult, SyncFreeStep, TermsFn


class StaticBatch:
    """Device buffers at fixed addresses holding the current batch (see the module docstring).

    `stage(host_batch)` starts copying a batch (pinned host memory) into the next staging buffer
    on the copy stream and returns its slot; `load(slot)` makes the compute stream wait for that
    copy and copies the staging buffer into the fixed buffers (device to device, a fraction of a
    millisecond). On a CPU both are plain copies.
    """

    def __init__(self, example: dict, device: torch.device) -> None:
        self.device = device
        self.keys = [key for key, value in example.items() if isinstance(value, torch.Tensor)]
        self.buffers = {key: torch.empty(example[key].shape, dtype=example[key].dtype, device=device)
                        for key in self.keys}
        self.cuda = device.type == "cuda"
        self.staging = [{key: torch.empty_like(self.buffers[key]) for key in self.keys} for _ in range(2)]
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.consumed: list[torch.cuda.Event | None] = [None, None]
        self.slot = 1
        self.extras: list[dict] = [{}, {}]

    def _check(self, batch: dict) -> None:
        for key in self.keys:
            value, buffer = batch.get(key), self.buffers[key]
            if not isinstance(value, torch.Tensor) or value.shape != buffer.shape or value.dtype != buffer.dtype:
                got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"batch entry {key!r} is {got}, but the captured step was built for "
                                 f"{tuple(buffer.shape)} {buffer.dtype}; every batch must have the first one's shapes")

    def stage(self, batch: dict) -> int:
        self._check(batch)
        self.slot = 1 - self.slot
        slot = self.slot
        self.extras[slot] = {key: value for key, value in batch.items() if key not in self.buffers}
        staging = self.staging[slot]
        if not self.cuda:
            for key in self.keys:
                staging[key].copy_(batch[key])
            return slot
        with torch.cuda.stream(self.stream):
            if self.consumed[slot] is not None:
                self.stream.wait_event(self.consumed[slot])  # its last load has been copied out
            for key in self.keys:
                staging[key].copy_(batch[key], non_blocking=True)
            self.copied[slot] = torch.cuda.Event()
            self.copied[slot].record(self.stream)
        return slot

    def load(self, slot: int) -> dict:
        """The batch of `slot` in the fixed buffers (with the batch's non-tensor entries)."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.copied[slot])
        for key in self.keys:
            self.buffers[key].copy_(self.staging[slot][key])
        if self.cuda:
            self.consumed[slot] = torch.cuda.Event()
            self.consumed[slot].record(torch.cuda.current_stream(self.device))
        return {**self.extras[slot], **self.buffers}


class CapturedStep:
    """A SyncFreeStep with a fixed `terms_fn`, run eagerly for `warmup_steps` batches (real
    steps, on a side stream), then captured in a CUDA graph and replayed for every later batch.
    Call it with host batches (pinned memory); it returns the step's StepResult, whose tensors
    are the graph's outputs (valid until the next call)."""

    def __init__(self, step: SyncFreeStep, terms_fn: TermsFn, warmup_steps: int = 3) -> None:
        if step.device.type != "cuda":
            raise ValueError("CapturedStep needs a CUDA device")
        self.step = step
        self.terms_fn = terms_fn
        self.warmup_left = warmup_steps
        self.inputs: StaticBatch | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.result: StepResult | None = None
        self.side = torch.cuda.Stream(step.device)

    def __call__(self, host_batch: dict) -> StepResult:
        if self.inputs is None:
            self.inputs = StaticBatch(host_batch, self.step.device)
        slot = self.inputs.stage(host_batch)
        if self.graph is None and self.warmup_left > 0:
            self.warmup_left -= 1
            batch = self.inputs.load(slot)
            current = torch.cuda.current_stream(self.step.device)
            self.side.wait_stream(current)
            with torch.cuda.stream(self.side):
                result = self.step(batch, self.terms_fn)
            current.wait_stream(self.side)
            return result
        if self.graph is None:
            self.capture()
        batch = self.inputs.load(slot)
        self.step.learning_rate.update()
        self.graph.replay()
        self.result.batch = batch
        return self.result

    def capture(self) -> None:
        """Records the step on the fixed buffers (nothing runs)."""
        step = self.step
        for group in step.optimizer.param_groups:
            group["capturable"] = True  # Adam keeps its step counts on the device (fused does already)
        step.learning_rate.update()
        torch.cuda.synchronize(step.device)
        # The eager steps' cached blocks go back to the device: the graph takes its own pool.
        step.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread keeps allocating pinned memory meanwhile,
        # which a global capture would refuse.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            result = step(self.inputs.buffers, self.terms_fn)
        step.zero_nonfinite.finish_capture()
        self.graph, self.result = graph, result
