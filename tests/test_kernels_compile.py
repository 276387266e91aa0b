"""torch.compile(fullgraph=True) over code that calls the raymarcher: no graph breaks, and the
compiled function matches eager in its output and gradients."""

from __future__ import annotations

import os

import pytest
import torch

from ava.kernels import mvp_raymarch
from scenes import random_scene

DEVICE = os.environ.get("AVA_TEST_DEVICE", "cpu")
GRAD_NAMES = ("primpos", "primrot", "primscale", "template", "warp")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("with_warp", [False, True])
def test_compiled_matches_eager(backend, with_warp):
    torch._dynamo.reset()
    scene = random_scene(7, n=1, h=4, w=3, num_prims=3, warp_size=(2, 2, 2) if with_warp else None, stepsize=0.15)
    scene = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    cotangent = torch.randn(1, 4, 3, 4, generator=torch.Generator().manual_seed(0)).to(DEVICE)

    def render_and_shade(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp):
        # Something on either side of the op, as in a model: a scale on the input, a matte after.
        rgba = mvp_raymarch(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale * 1.0, template,
                            warp, backend=backend)
        return torch.cat([rgba[..., :3] + (1.0 - rgba[..., 3:]) * 10.0, rgba[..., 3:]], dim=-1)

    compiled = torch.compile(render_and_shade, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (render_and_shade, compiled):
        inputs = {k: (v.detach().clone().requires_grad_(True) if k in GRAD_NAMES and v is not None else v)
                  for k, v in scene.items()}
        out = fn(**inputs)
        (out * cotangent).sum().backward()
        results.append((out.detach(), {k: inputs[k].grad for k in GRAD_NAMES if inputs[k] is not None}))
    (eager_out, eager_grads), (compiled_out, compiled_grads) = results
    assert eager_out.abs().max() > 0
    # The same kernels run in both, so only atomic-add ordering in the backward may differ.
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
