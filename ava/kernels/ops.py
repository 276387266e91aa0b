"""The raymarcher as `torch.library` custom ops, so that models calling it compile with
`torch.compile(fullgraph=True)`: to the compiler each op is one opaque call with a fake
(shape-only) implementation and a registered backward.

- `ava::mvp_raymarch_triton` runs the Triton forward and returns, besides rayrgba, what its
  backward needs: the saturation record and the per-tile primitive lists. Every size follows
  from the shapes and the two list capacities, which are arguments (ints), so nothing is read
  back to the host and the op can be captured in a CUDA graph.
- `ava::mvp_raymarch_torch` wraps the vectorised PyTorch path, whose data-dependent shapes the
  compiler could not trace; its backward re-runs it under autograd. Eager code does not come
  here (it differentiates the vectorised path directly, at half the cost).

Scalars (stepsize, fadescale, fadeexp) are `float` in the schemas, so they reach the Triton
launch as plain fp32 kernel arguments rather than as tensors that would need a device sync or
a recompile per value.
"""

from __future__ import annotations

from typing import Optional

import torch

from ava.kernels import vectorized


# rayrgba, raysat and TileLists.tensors(): coarse end, count, prims; fine end, count, prims, tranges, bounds.
_T = torch.Tensor
ForwardOutputs = tuple[_T, _T, _T, _T, _T, _T, _T, _T, _T, _T]


@torch.library.custom_op("ava::mvp_raymarch_triton", mutates_args=())
def mvp_raymarch_triton(
    raypos: torch.Tensor, raydir: torch.Tensor, stepsize: float, tminmax: torch.Tensor,
    primpos: torch.Tensor, primrot: torch.Tensor, primscale: torch.Tensor, template: torch.Tensor,
    warp: Optional[torch.Tensor], fadescale: float, fadeexp: float, save_saturation: bool,
    coarse_capacity: int, fine_capacity: int,
) -> ForwardOutputs:
    """(rayrgba, raysat, *tile lists) (raymarch_triton.forward)."""
    from ava.kernels import raymarch_triton

    return raymarch_triton.forward(
        raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp,
        fadescale, fadeexp, save_saturation, (coarse_capacity, fine_capacity),
    )


@mvp_raymarch_triton.register_fake
def _(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp, fadescale, fadeexp,
      save_saturation, coarse_capacity, fine_capacity):
    from ava.kernels import raymarch_triton

    n, h, w, _ = raypos.shape
    tiles_y, tiles_x = raymarch_triton.tile_grid(h, w)
    tiles = n * tiles_y * tiles_x
    coarse = n * -(-tiles_y // raymarch_triton.SUPER_TILE) * -(-tiles_x // raymarch_triton.SUPER_TILE)
    index = dict(dtype=torch.int32)
    return (
        raypos.new_empty(n, h, w, 4),
        raypos.new_empty(n, h, w, 4) if save_saturation else raypos.new_empty(0),
        raypos.new_empty(coarse, **index), raypos.new_empty(coarse, **index),
        raypos.new_empty(coarse_capacity, **index),
        raypos.new_empty(tiles, **index), raypos.new_empty(tiles, **index), raypos.new_empty(fine_capacity, **index),
        raypos.new_empty(fine_capacity, 2), raypos.new_empty(tiles, raymarch_triton.BOUNDS),
    )


@torch.library.custom_op("ava::mvp_raymarch_triton_backward", mutates_args=())
def mvp_raymarch_triton_backward(
    grad_rgba: torch.Tensor, raypos: torch.Tensor, raydir: torch.Tensor, stepsize: float,
    tminmax: torch.Tensor, primpos: torch.Tensor, primrot: torch.Tensor, primscale: torch.Tensor,
    template: torch.Tensor, warp: Optional[torch.Tensor], fadescale: float, fadeexp: float,
    raysat: torch.Tensor, lists: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from ava.kernels import raymarch_triton

    grads = raymarch_triton.backward(
        grad_rgba, raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp,
        fadescale, fadeexp, raysat, lists,
    )
    grad_warp = grads[4] if grads[4] is not None else template.new_zeros(0)
    # Custom ops may not return views of one buffer; the packed primitive gradient is split here.
    return grads[0].clone(), grads[1].clone(), grads[2].clone(), grads[3], grad_warp


@mvp_raymarch_triton_backward.register_fake
def _(grad_rgba, raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp, fadescale,
      fadeexp, raysat, lists):
    return (
        torch.empty_like(primpos), torch.empty_like(primrot), torch.empty_like(primscale),
        torch.empty_like(template), torch.empty_like(warp) if warp is not None else template.new_empty(0),
    )


def _triton_setup_context(ctx, inputs, output):
    raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp, fadescale, fadeexp = inputs[:11]
    raysat, *lists = output[1:]
    ctx.save_for_backward(raypos, raydir, tminmax, primpos, primrot, primscale, template, warp, raysat, *lists)
    ctx.scalars = (stepsize, fadescale, fadeexp)
    ctx.has_warp = warp is not None


def _triton_backward(ctx, grad_rgba, *unused_grads):
    raypos, raydir, tminmax, primpos, primrot, primscale, template, warp, raysat, *lists = ctx.saved_tensors
    stepsize, fadescale, fadeexp = ctx.scalars
    grad_pos, grad_rot, grad_scale, grad_template, grad_warp = mvp_raymarch_triton_backward(
        grad_rgba, raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp,
        fadescale, fadeexp, raysat, lists,
    )
    return (None, None, None, None, grad_pos, grad_rot, grad_scale, grad_template,
            grad_warp if ctx.has_warp else None, None, None, None, None, None)


mvp_raymarch_triton.register_autograd(_triton_backward, setup_context=_triton_setup_context)


@torch.library.custom_op("ava::mvp_raymarch_torch", mutates_args=())
def mvp_raymarch_torch(
    raypos: torch.Tensor, raydir: torch.Tensor, stepsize: float, tminmax: torch.Tensor,
    primpos: torch.Tensor, primrot: torch.Tensor, primscale: torch.Tensor, template: torch.Tensor,
    warp: Optional[torch.Tensor], fadescale: float, fadeexp: float,
) -> torch.Tensor:
    with torch.no_grad():
        return vectorized.mvp_raymarch(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template,
                                       warp, fadescale=fadescale, fadeexp=fadeexp)


@mvp_raymarch_torch.register_fake
def _(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp, fadescale, fadeexp):
    n, h, w, _ = raypos.shape
    return raypos.new_empty(n, h, w, 4)


@torch.library.custom_op("ava::mvp_raymarch_torch_backward", mutates_args=())
def mvp_raymarch_torch_backward(
    grad_rgba: torch.Tensor, raypos: torch.Tensor, raydir: torch.Tensor, stepsize: float, tminmax: torch.Tensor,
    primpos: torch.Tensor, primrot: torch.Tensor, primscale: torch.Tensor, template: torch.Tensor,
    warp: Optional[torch.Tensor], fadescale: float, fadeexp: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Custom-op bodies run below the autograd dispatch key, so a nested backward cannot use
    # torch.autograd; torch.func.vjp brings its own autograd layer.
    def render(*differentiable):
        return vectorized.mvp_raymarch(raypos, raydir, stepsize, tminmax, *differentiable[:4],
                                       differentiable[4] if warp is not None else None,
                                       fadescale=fadescale, fadeexp=fadeexp)

    inputs = [primpos, primrot, primscale, template] + ([warp] if warp is not None else [])
    _, pullback = torch.func.vjp(render, *inputs)
    grads = list(pullback(grad_rgba))
    if warp is None:
        grads.append(template.new_zeros(0))
    return tuple(grads)


@mvp_raymarch_torch_backward.register_fake
def _(grad_rgba, raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp, fadescale,
      fadeexp):
    return (
        torch.empty_like(primpos), torch.empty_like(primrot), torch.empty_like(primscale),
        torch.empty_like(template), torch.empty_like(warp) if warp is not None else template.new_empty(0),
    )


def _torch_setup_context(ctx, inputs, output):
    raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp, fadescale, fadeexp = inputs
    ctx.save_for_backward(raypos, raydir, tminmax, primpos, primrot, primscale, template, warp)
    ctx.scalars = (stepsize, fadescale, fadeexp)
    ctx.has_warp = warp is not None


def _torch_backward(ctx, grad_rgba):
    raypos, raydir, tminmax, primpos, primrot, primscale, template, warp = ctx.saved_tensors
    stepsize, fadescale, fadeexp = ctx.scalars
    grad_pos, grad_rot, grad_scale, grad_template, grad_warp = mvp_raymarch_torch_backward(
        grad_rgba, raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp, fadescale, fadeexp
    )
    return (None, None, None, None, grad_pos, grad_rot, grad_scale, grad_template,
            grad_warp if ctx.has_warp else None, None, None)


mvp_raymarch_torch.register_autograd(_torch_backward, setup_context=_torch_setup_context)
