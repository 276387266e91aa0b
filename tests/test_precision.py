"""Mixed precision of the model (ava.nn.precision): bf16 autocast of the convolutional parts only.

On the CPU every precision computes the same fp32 result (autocast is CUDA-only here); with
AVA_TEST_DEVICE=cuda the bf16 model is compared with the fp32 one.
"""

from __future__ import annotations

import os

import pytest
import torch

from ava.nn.precision import PRECISIONS, check_precision, configure_tensor_cores, to_float
from test_nn_helpers import SMALL, batch, small_model

DEVICE = os.environ.get("AVA_TEST_DEVICE", "cpu")
OUTPUTS = {"primpos", "primrot", "primscale", "template", "bg"}


def _run(model, inputs):
    torch.manual_seed(0)
    with torch.no_grad():
        return model(**inputs, output_set=OUTPUTS)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        check_precision("fp16")
    model, _, _ = small_model()
    with pytest.raises(ValueError, match="choose one of"):
        model.set_precision("half")


def test_to_float_casts_nested_floating_tensors_only():
    tree = {"a": torch.ones(2, dtype=torch.bfloat16), "b": [torch.ones(1, dtype=torch.float16), torch.arange(3)],
            "c": (torch.ones(1),), "d": "text"}
    cast = to_float(tree)
    assert cast["a"].dtype == cast["b"][0].dtype == cast["c"][0].dtype == torch.float32
    assert cast["b"][1].dtype == torch.int64 and cast["d"] == "text"
    assert cast["c"][0] is tree["c"][0]  # fp32 tensors are passed through, not copied


def test_tensor_core_switches_follow_the_precision():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        configure_tensor_cores("fp32")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        configure_tensor_cores("tf32")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU identity check")
def test_every_precision_is_fp32_on_the_cpu():
    model, topology, _ = small_model()
    inputs = batch(topology, SMALL.uv_size, size=(6, 8))
    reference = _run(model.eval(), inputs)
    for precision in PRECISIONS:
        output = _run(model.set_precision(precision), inputs)
        for key in ("irgbrec", "verts", "primpos", "template", "bg"):
            assert output[key].dtype == torch.float32
            assert torch.equal(output[key], reference[key]), (precision, key)


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 autocast runs on CUDA devices")
def test_bf16_stays_close_to_fp32_and_returns_fp32():
    model, topology, _ = small_model()
    model = model.to(DEVICE).eval()
    inputs = {key: value.to(DEVICE) if isinstance(value, torch.Tensor) else value
              for key, value in batch(topology, SMALL.uv_size, size=(32, 24)).items()}
    configure_tensor_cores("fp32")
    reference = _run(model.set_precision("fp32"), inputs)
    output = _run(model.set_precision("bf16"), inputs)
    for key in ("irgbrec", "verts", "primpos", "primscale", "template", "bg"):
        assert output[key].dtype == torch.float32, key
        # bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%); after a few layers a
        # relative error of a few percent of each output's spread is what bf16 training sees.
        spread = reference[key].std().clamp_min(1e-6)
        assert ((output[key] - reference[key]).abs().mean() / spread) < 0.05, key


def test_compile_auto_only_for_ava256_sized_models_on_cuda():
    import copy

    from ava.train.config import PRESETS
    from ava.train.setup import should_compile

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    ava256, demo = copy.deepcopy(PRESETS["ava256"]), copy.deepcopy(PRESETS["demo"])
    assert should_compile(ava256, cuda) and not should_compile(ava256, cpu)
    assert not should_compile(demo, cuda)
    demo.compile = "on"
    assert should_compile(demo, cpu)
    ava256.compile = "off"
    assert not should_compile(ava256, cuda)
