"""The MVP raymarcher: Triton kernels and the vectorised path against the loop-form reference.

Runs on the CPU with the Triton interpreter; with AVA_TEST_DEVICE=cuda (and TRITON_INTERPRET=0)
the same tests check the compiled kernels on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ava.kernels import mvp_raymarch, reference, vectorized
from scenes import random_scene

DEVICE = os.environ.get("AVA_TEST_DEVICE", "cpu")
GRAD_NAMES = ("primpos", "primrot", "primscale", "template", "warp")

# Tolerances. Outputs and gradients are float32 sums of at most a few hundred samples, added in
# a different association order by each implementation (and, for the Triton backward, in atomic,
# i.e. arbitrary, order). With eps = 1.2e-7 such sums agree to about n*eps ~ 1e-5 relative to
# their magnitude; we allow 1e-4 relative to the output's scale (forward) and to each gradient's
# norm (backward). Anything structurally wrong (a dropped or reordered sample, a wrong sign)
# shows up as an error of order 1e-2 or more.
FORWARD_RTOL = 1e-4
GRAD_RTOL = 1e-4


def _to_device(scene: dict) -> dict:
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}


def _render_with_grads(fn, scene: dict, cotangent: torch.Tensor):
    inputs = {k: (v.detach().clone().requires_grad_(True) if k in GRAD_NAMES and v is not None else v)
              for k, v in scene.items()}
    out = fn(**inputs)
    if out.requires_grad:
        (out * cotangent).sum().backward()
    # Without primitives the reference's output is a constant; zero gradients are then correct.
    grads = {k: (inputs[k].grad if inputs[k].grad is not None else torch.zeros_like(inputs[k]))
             for k in GRAD_NAMES if inputs.get(k) is not None}
    return out.detach(), grads


def _triton(**kwargs):
    return mvp_raymarch(**kwargs, backend="triton")


def _assert_forward_close(actual, expected, label):
    scale = 1.0 + expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= FORWARD_RTOL * scale, f"{label}: max abs error {error:.3e} (scale {scale:.1f})"


def _assert_grads_close(actual: dict, expected: dict, label):
    for name, reference_grad in expected.items():
        got = actual[name]
        assert got is not None, f"{label}: no gradient for {name}"
        norm = reference_grad.norm().item()
        error = (got - reference_grad).norm().item()
        assert error <= GRAD_RTOL * max(norm, 1e-6), f"{label}: {name} gradient error {error:.3e} (norm {norm:.3e})"


scene_parameters = st.fixed_dictionaries(
    dict(
        seed=st.integers(0, 2**16),
        n=st.integers(1, 2),
        h=st.integers(1, 7),
        w=st.integers(1, 7),
        num_prims=st.integers(0, 5),
        template_size=st.tuples(st.integers(2, 4), st.integers(2, 4), st.integers(2, 5)),
        warp_size=st.one_of(st.none(), st.tuples(st.integers(2, 3), st.integers(2, 3), st.integers(2, 3))),
        # From huge boxes (scale 0.6: half-extent 1.7, bigger than the volume) to thin slabs.
        scale_range=st.sampled_from([(1.5, 4.0), (0.6, 1.0), (3.0, 12.0)]),
        # Large alpha gains make rays saturate inside a single step.
        alpha_gain=st.sampled_from([1.0, 4.0, 12.0]),
        alpha_shift=st.sampled_from([0.0, 3.0]),
        stepsize=st.sampled_from([0.09, 0.17]),
    )
)


@settings(max_examples=25)
@given(params=scene_parameters)
def test_triton_and_vectorised_match_reference(params):
    scene = _to_device(random_scene(**params))
    generator = torch.Generator().manual_seed(params["seed"] + 1)
    cotangent = torch.randn(*scene["raypos"].shape[:3], 4, generator=generator).to(DEVICE)
    expected, expected_grads = _render_with_grads(reference.mvp_raymarch, scene, cotangent)
    for label, fn in (("vectorised", vectorized.mvp_raymarch), ("triton", _triton)):
        out, grads = _render_with_grads(fn, scene, cotangent)
        _assert_forward_close(out, expected, label)
        _assert_grads_close(grads, expected_grads, label)


@settings(max_examples=6)
@given(params=scene_parameters)
def test_output_invariants(params):
    """0 <= alpha <= 1, and rgb is premultiplied: at most alpha times the largest template rgb."""
    scene = _to_device(random_scene(**params))
    max_rgb = scene["template"][..., :3].max().item() if scene["template"].numel() else 0.0
    for out in (_triton(**scene), vectorized.mvp_raymarch(**scene)):
        alpha = out[..., 3]
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0 + 1e-6
        assert (out[..., :3] >= -1e-6).all()
        assert (out[..., :3] <= alpha[..., None] * max_rgb * (1 + 1e-5) + 1e-4).all()


def test_more_than_512_primitives_over_one_tile_are_all_kept():
    """The original drops hits past 512 per 8x4 tile; ava must keep every one of them."""
    count = 530
    scene = random_scene(3, n=1, h=2, w=2, num_prims=count, template_size=(2, 2, 2),
                         scale_range=(0.9, 1.1), spread=0.05, alpha_gain=0.2, alpha_shift=-7.5, stepsize=1.0)
    scene = _to_device(scene)
    expected = reference.mvp_raymarch(**scene)
    # Each of the 530 nearly transparent primitives adds a visible share: dropping the 18 past
    # 512 would change alpha by about 3%, far above the tolerance.
    assert 0.05 < expected[..., 3].min() and expected[..., 3].max() < 0.95
    _assert_forward_close(_triton(**scene), expected, "triton")
    _assert_forward_close(vectorized.mvp_raymarch(**scene), expected, "vectorised")


def test_grazing_rays_and_missed_rays():
    """Rays that skim a box face (1e-3 inside and outside) and rays that miss the volume."""
    scene = random_scene(5, n=1, h=3, w=4, num_prims=1, template_size=(2, 3, 2), stepsize=0.05)
    scene["primrot"] = torch.eye(3).expand(1, 1, 3, 3).contiguous()
    scene["primscale"] = torch.full((1, 1, 3), 2.0)  # box [-0.5, 0.5]^3 around primpos
    scene["primpos"] = torch.zeros(1, 1, 3)
    direction = torch.tensor([0.0, 0.0, 1.0]).expand(1, 3, 4, 3).contiguous()
    xs = torch.tensor([0.499, 0.501, -0.4995, 0.0])
    ys = torch.tensor([0.0, 0.4999, 3.0])
    origin = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None], torch.full((3, 4), -2.0)), dim=-1)[None]
    tminmax = torch.tensor([1.0, 3.0]).expand(1, 3, 4, 2).clone()
    tminmax[0, 2] = torch.tensor([2.0, 1.0])  # the third row misses the volume: tmin > tmax
    scene.update(raypos=origin.contiguous(), raydir=direction, tminmax=tminmax)
    scene = _to_device(scene)
    expected = reference.mvp_raymarch(**scene)
    assert expected[0, 2].abs().max() == 0
    assert expected[0, 0, 0, 3] > 0 and expected[0, 0, 1, 3] == 0
    _assert_forward_close(_triton(**scene), expected, "triton")
    _assert_forward_close(vectorized.mvp_raymarch(**scene), expected, "vectorised")


def test_reference_gradcheck_float64():
    scene = random_scene(11, n=1, h=2, w=2, num_prims=2, template_size=(2, 3, 2), warp_size=(2, 2, 2), stepsize=0.2,
                         scale_range=(0.8, 1.2), spread=0.2)
    inputs = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    names = [k for k in GRAD_NAMES if inputs[k] is not None]

    def render(*tensors):
        return reference.mvp_raymarch(**{**inputs, **dict(zip(names, tensors))})

    tensors = tuple(inputs[k].clone().requires_grad_(True) for k in names)
    assert render(*tensors)[..., 3].max() > 0
    assert torch.autograd.gradcheck(render, tensors, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_empty_inputs(backend):
    base = _to_device(random_scene(1, n=1, h=3, w=2, num_prims=3))
    no_prims = dict(base)
    for name in ("primpos", "primrot", "primscale", "template"):
        no_prims[name] = base[name][:, :0]
    assert mvp_raymarch(**no_prims, backend=backend).abs().max() == 0
    no_batch = {k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in base.items()}
    assert mvp_raymarch(**no_batch, backend=backend).shape == (0, 3, 2, 4)
    reversed_segments = dict(base, tminmax=base["tminmax"].flip(-1).contiguous() + torch.tensor([1.0, 0.0], device=DEVICE))
    assert mvp_raymarch(**reversed_segments, backend=backend).abs().max() == 0


def test_non_contiguous_inputs_are_accepted():
    scene = _to_device(random_scene(2, n=1, h=4, w=3, num_prims=3))
    expected = reference.mvp_raymarch(**scene)
    strided = dict(scene)
    strided["template"] = scene["template"].permute(0, 1, 4, 3, 2, 5).contiguous().permute(0, 1, 4, 3, 2, 5)
    strided["raypos"] = scene["raypos"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided["template"].is_contiguous()
    _assert_forward_close(_triton(**strided), expected, "triton")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(primpos=s["primpos"][..., :2]), "primpos"),
        (lambda s: s.update(template=s["template"].double()), "float32"),
        (lambda s: s.update(primrot=s["primrot"][:, :2]), "primrot"),
        (lambda s: s.update(raydir=s["raydir"][:, :2]), "raydir"),
        (lambda s: s.update(template=s["template"][..., :3]), "template"),
        (lambda s: s.update(primscale=s["primscale"].repeat(2, 1, 1)), "primscale"),
        (lambda s: s.update(stepsize=0.0), "stepsize"),
        (lambda s: s.update(template=s["template"][:, :, :1]), "at least 2"),
    ],
)
def test_bad_inputs_raise_one_clear_error(change, message):
    scene = random_scene(4, n=1, h=3, w=3, num_prims=3)
    change(scene)
    with pytest.raises(ValueError, match=message):
        mvp_raymarch(**scene)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_mismatched_devices_raise():
    scene = random_scene(4, n=1, h=3, w=3, num_prims=3)
    scene["template"] = scene["template"].cuda()
    with pytest.raises(ValueError, match="device"):
        mvp_raymarch(**scene)


# --- culling without host reads: list capacities, overflow fallback, scan block ---------------

def _op_outputs(scene, capacities, cotangent):
    """rayrgba, the tile lists and the gradients of the Triton op at the given list capacities."""
    from ava.kernels import ops

    # The op takes contiguous tensors (mvp_raymarch makes them so; random_scene's rotations are not).
    inputs = {k: (v.detach().contiguous().requires_grad_(k in GRAD_NAMES) if isinstance(v, torch.Tensor) else v)
              for k, v in scene.items()}
    outputs = ops.mvp_raymarch_triton(
        inputs["raypos"], inputs["raydir"], inputs["stepsize"], inputs["tminmax"], inputs["primpos"],
        inputs["primrot"], inputs["primscale"], inputs["template"], inputs["warp"], 8.0, 8.0, True, *capacities)
    (outputs[0] * cotangent).sum().backward()
    return outputs[0].detach(), outputs[2:], {k: inputs[k].grad for k in GRAD_NAMES if inputs.get(k) is not None}


def _assert_same_samples(out, grads, expected, expected_grads, label):
    """Bit-equal on the CPU (the same samples added in the same order); on a GPU within the
    tolerances, as the backward's atomic adds come in varying order."""
    if DEVICE == "cpu":
        assert torch.equal(out, expected), label
        for name, grad in expected_grads.items():
            assert torch.equal(grads[name], grad), (label, name)
    else:
        _assert_forward_close(out, expected, label)
        _assert_grads_close(grads, expected_grads, label)


def _overflowed(end, count, entries):
    return bool(((count > 0) & (end > entries.shape[0])).any())


def test_lists_that_overflow_their_capacity_give_the_same_samples():
    """A tile whose list does not fit its buffer is marched from its super-tile's list (fine level
    overflowed) or from every primitive (coarse level overflowed), testing the candidates on the
    fly: outputs and gradients are those of lists that fit (bit-equal on the CPU, where the same
    samples are added in the same order)."""
    scene = _to_device(random_scene(21, n=1, h=9, w=9, num_prims=10, scale_range=(1.5, 4.0), spread=0.6,
                                    stepsize=0.12))
    cotangent = torch.randn(1, 9, 9, 4, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    expected, lists, expected_grads = _op_outputs(scene, (1000, 1000), cotangent)
    coarse_end, coarse_count, coarse_prims, end, count, prims, _, _ = lists
    assert not _overflowed(coarse_end, coarse_count, coarse_prims) and not _overflowed(end, count, prims)
    assert int(end[-1]) > 6 and int(coarse_end[-1]) > 6  # the small capacities below do overflow
    for capacities, coarse_overflows, fine_overflows in (((1000, 6), False, True), ((6, 1000), True, False),
                                                         ((6, 6), True, True)):
        out, lists, grads = _op_outputs(scene, capacities, cotangent)
        coarse_end, coarse_count, coarse_prims, end, count, prims, _, _ = lists
        assert _overflowed(coarse_end, coarse_count, coarse_prims) == coarse_overflows, capacities
        assert _overflowed(end, count, prims) == fine_overflows, capacities
        _assert_same_samples(out, grads, expected, expected_grads, f"capacities {capacities}")


def test_list_capacity_grows_after_an_overflow(monkeypatch):
    """The public call sizes the lists from the shapes times ListCapacity.scale; an overflow
    (noticed without waiting for the device) doubles the scale for later calls, and the
    overflowing call itself is still right."""
    from ava.kernels import raymarch_triton

    scene = _to_device(random_scene(3, n=1, h=7, w=7, num_prims=8, spread=0.5, stepsize=0.15))
    with torch.no_grad():
        expected = _triton(**scene)
    capacity = raymarch_triton.ListCapacity()
    capacity.scale = 0.02  # a few entries per level
    monkeypatch.setattr(raymarch_triton, "CAPACITY", capacity)

    def render_and_poll():
        with torch.no_grad():
            out = _triton(**scene)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            raymarch_triton.list_capacities(1, 7, 7, 8)  # polls the finished read-back
        return out

    _assert_forward_close(render_and_poll(), expected, "overflowing call")
    assert capacity.overflows == 1 and capacity.scale > 0.02
    grown = capacity.scale
    render_and_poll()
    assert capacity.overflows == 1 and capacity.scale == grown


def test_scan_block_does_not_change_the_samples(monkeypatch):
    """The march tests SCAN_BLOCK list entries at a time, then samples the near ones in ascending
    index: other block sizes give the same samples in the same order, down to one entry at a time."""
    from ava.kernels import raymarch_triton

    scene = _to_device(random_scene(8, n=1, h=6, w=6, num_prims=9, spread=0.4, stepsize=0.1))
    cotangent = torch.randn(1, 6, 6, 4, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    expected, expected_grads = _render_with_grads(_triton, scene, cotangent)
    for block in (1, 4):
        monkeypatch.setattr(raymarch_triton, "SCAN_BLOCK", block)
        out, grads = _render_with_grads(_triton, scene, cotangent)
        _assert_same_samples(out, grads, expected, expected_grads, f"block {block}")


def test_trilinear_corners_one_at_a_time_or_all_at_once(monkeypatch):
    """The kernels fetch trilinear corners one after another when compiled (fewer registers) and
    all at once under the interpreter (fewer numpy calls); both give the same samples. The sums
    run in another order, so gradients agree to float32 rounding (the forward happens to be
    bit-equal here)."""
    from ava.kernels import raymarch_triton

    scene = _to_device(random_scene(12, n=1, h=6, w=5, num_prims=4, warp_size=(2, 3, 2), stepsize=0.1))
    cotangent = torch.randn(1, 6, 5, 4, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    results = []
    for at_once in (True, False):
        monkeypatch.setattr(raymarch_triton, "TRILINEAR_CORNERS_AT_ONCE", at_once)
        results.append(_render_with_grads(_triton, scene, cotangent))
    (out_a, grads_a), (out_b, grads_b) = results
    assert out_a[..., 3].max() > 0.1
    _assert_forward_close(out_b, out_a, "one corner at a time")
    _assert_grads_close(grads_b, grads_a, "one corner at a time")


def test_forward_and_backward_never_read_the_device(monkeypatch):
    """Nothing in the Triton path converts a tensor to a Python value (the host would wait for the
    device): on a GPU under torch's sync debug mode, on the CPU with those conversions made to fail."""
    from ava.kernels import raymarch_triton

    capacity = raymarch_triton.ListCapacity()
    capacity.grow = False  # its CPU read-back is the one permitted conversion, and it is skipped here
    monkeypatch.setattr(raymarch_triton, "CAPACITY", capacity)
    scene = _to_device(random_scene(6, n=1, h=6, w=5, num_prims=4))
    inputs = {k: (v.detach().clone().requires_grad_(True) if k in GRAD_NAMES and v is not None else v)
              for k, v in scene.items()}
    if DEVICE == "cuda":
        _triton(**inputs).sum().backward()  # compiles the kernels outside the check
        torch.cuda.set_sync_debug_mode("error")
        try:
            _triton(**inputs).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    out = _triton(**inputs)
    out.backward(torch.ones_like(out))
    monkeypatch.undo()
    assert inputs["template"].grad.abs().sum() > 0
