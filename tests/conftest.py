"""Test configuration.

Triton kernels run on the CPU through Triton's interpreter. The variable must be set before
anything imports triton, which is why it lives at the very top of conftest.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

# Interpreted Triton kernels take seconds per example, so hypothesis gets no deadline and a small
# budget of examples by default; `HYPOTHESIS_PROFILE=thorough` raises it for local bug hunts.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=12,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import hashlib  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ORIGINAL_CHECKOUT_ENV = "AVA_ORIGINAL_CHECKOUT"


def original_checkout() -> Path | None:
    """The original ava-256 checkout named by $AVA_ORIGINAL_CHECKOUT, if it exists."""
    value = os.environ.get(ORIGINAL_CHECKOUT_ENV)
    return Path(value).expanduser() if value and Path(value).expanduser().is_dir() else None


def require_original_checkout(modules=None) -> Path:
    """The original checkout named by $AVA_ORIGINAL_CHECKOUT, where the Python modules its code
    imports (`modules`; default: all that tools/original_checkout.py lists) are installed; else
    skips the calling test, saying what to set or the pip command."""
    import importlib.util

    checkout = original_checkout()
    if checkout is None:
        pytest.skip(f"set {ORIGINAL_CHECKOUT_ENV} to a checkout of facebookresearch/ava-256 to run this test")
    tools = Path(__file__).resolve().parents[1] / "tools"
    spec = importlib.util.spec_from_file_location("original_checkout", tools / "original_checkout.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    missing = helpers.missing_modules() if modules is None else helpers.missing_modules(modules)
    if missing:
        pytest.skip(f"the original code's dependencies are missing: {', '.join(missing)} "
                    f"({helpers.install_hint(missing)})")
    return checkout


@pytest.fixture(scope="session")
def original_topology(tmp_path_factory) -> Path:
    """A private copy of the Ava-256 face_topology.obj (checked by SHA-256): from the original
    checkout in $AVA_ORIGINAL_CHECKOUT, else from the user's ava cache (where any real use of the
    model layer puts it). Skips the test when neither has it."""
    from ava.nn.topology import ORIGINAL_TOPOLOGY_SHA256

    candidates = []
    if original_checkout() is not None:
        candidates.append(original_checkout() / "assets" / "face_topology.obj")
    candidates.append(Path.home() / ".cache" / "ava" / "topology" / "face_topology.obj")
    for candidate in candidates:
        if candidate.is_file() and hashlib.sha256(candidate.read_bytes()).hexdigest() == ORIGINAL_TOPOLOGY_SHA256:
            copy = tmp_path_factory.mktemp("topology") / "face_topology.obj"
            shutil.copyfile(candidate, copy)
            return copy
    pytest.skip(f"the Ava-256 face_topology.obj is not here: set {ORIGINAL_CHECKOUT_ENV} to an original "
                "ava-256 checkout to run this test")


# Top-level names the original's code defines; they are taken out of sys.modules again after use.
_ORIGINAL_TOP_LEVEL = ("data", "extensions", "losses", "models", "utils")
# What importing the original's model-building code (its utils.py and models/) needs: PyPI names in
# tools/original_checkout.py.
_ORIGINAL_MODEL_MODULES = ("einops", "igl", "pandas", "PIL", "plyfile", "trimesh", "zipp")


def _original_extension_stubs():
    """Stand-ins for the original's two compiled CUDA extensions, which cannot be built on a CPU:
    `extensions.utils.utils.compute_raydirs` becomes ava's `compute_raydirs` and
    `extensions.mvpraymarch.mvpraymarch.mvpraymarch` ava's `mvp_raymarch` on its PyTorch path.
    Everything the original computes before the raymarcher stays its own code."""
    import types

    from ava.kernels import compute_raydirs, mvp_raymarch

    def mvpraymarch(raypos, raydir, stepsize, tminmax, primtransf, template, warp, rayterm=None,
                    fadescale=8.0, fadeexp=8.0):
        primpos, primrot, primscale = (tensor.contiguous() for tensor in primtransf)
        return mvp_raymarch(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template.contiguous(),
                            warp, fadescale=fadescale, fadeexp=fadeexp, backend="torch")

    modules = {}
    for name in ("extensions", "extensions.utils", "extensions.mvpraymarch"):
        modules[name] = types.ModuleType(name)
        modules[name].__path__ = []
    modules["extensions.utils.utils"] = types.ModuleType("extensions.utils.utils")
    modules["extensions.utils.utils"].compute_raydirs = compute_raydirs
    modules["extensions.mvpraymarch.mvpraymarch"] = types.ModuleType("extensions.mvpraymarch.mvpraymarch")
    modules["extensions.mvpraymarch.mvpraymarch"].mvpraymarch = mvpraymarch
    return modules


@pytest.fixture(scope="module")
def original_code():
    """The original ava-256 code of $AVA_ORIGINAL_CHECKOUT, imported on the CPU: a namespace with
    `path` (the checkout) and `utils` (its top-level utils.py: get_autoencoder, create_uv_baridx;
    `models.*` import from there too). Its CUDA extensions are replaced as
    `_original_extension_stubs` says. Skips the test without a checkout or the modules its code
    imports (the message gives the pip command). Afterwards sys.path and sys.modules are as before."""
    import importlib
    import sys
    import types

    checkout = require_original_checkout(_ORIGINAL_MODEL_MODULES)

    def ours(name: str) -> bool:
        return name.split(".")[0] in _ORIGINAL_TOP_LEVEL

    saved_modules = {name: module for name, module in sys.modules.items() if ours(name)}
    saved_path = list(sys.path)
    for name in saved_modules:
        del sys.modules[name]
    sys.modules.update(_original_extension_stubs())
    sys.path.insert(0, str(checkout))
    try:
        yield types.SimpleNamespace(path=checkout, utils=importlib.import_module("utils"))
    finally:
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)


# --- a tiny capture set and checkpoint shared by the tests of ava show, view and eval -----------

@pytest.fixture(scope="session")
def tiny_capture_set(tmp_path_factory):
    """`ava synth` output: 2 subjects x 4 frames x 3 cameras, 20x32 images, with keypoints."""
    from ava.synth import generate
    from ava.synth.config import SynthConfig

    root = tmp_path_factory.mktemp("tiny-captures")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        generate(root, SynthConfig(n_ids=2, n_frames=4, n_cams=3, texture_size=64, downsample=128, prims_per_side=8,
                                   voxels=4, mesh_columns=16, mesh_rows=12, keypoints=True, workers=1),
                 progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_capture_set, tmp_path_factory):
    """(step 2, step 4) checkpoints of a 4-step run on `tiny_capture_set` with 2 held-out cameras,
    whose metrics.jsonl holds the held-out PSNR over every held-out frame at step 4."""
    from tests.test_train import run_cli, train_argv

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    argv = train_argv(tiny_capture_set, run, 4)
    argv[argv.index("--progress.psnr-samples") + 1] = "64"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        assert run_cli(argv) == 0
    return run / "checkpoints" / "step_00000002.safetensors", run / "checkpoints" / "step_00000004.safetensors"


# --- a set with subjects held out of training, shared by the tests of held-out subjects ----------

HOLDOUT_STEPS = 60


@pytest.fixture(scope="session")
def holdout_capture_set(tmp_path_factory):
    """`ava synth` output: 6 subjects x 6 frames (one per segment, EXP_free_face last) x 3 cameras,
    20x32 images."""
    from ava.synth import generate
    from ava.synth.config import SynthConfig

    root = tmp_path_factory.mktemp("holdout-captures")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        generate(root, SynthConfig(n_ids=6, n_frames=6, n_cams=3, texture_size=64, downsample=128, prims_per_side=8,
                                   voxels=4, mesh_columns=16, mesh_rows=12, keypoints=False, headset=False, workers=1),
                 progress=False)
    return root


@pytest.fixture(scope="session")
def holdout_run(holdout_capture_set, tmp_path_factory):
    """A HOLDOUT_STEPS-step run on the first 5 subjects of `holdout_capture_set` with 2 of them held
    out (1 validation, 1 test), EXP_free_face and 1 camera held out; the sixth subject is not in
    the run at all. Returns (run folder, [(idindex, frame id, camera id) of every training sample
    the loop stepped on])."""
    import ava.train.loop
    from tests.test_train import TINY_MODEL, run_cli

    run = tmp_path_factory.mktemp("holdout-run") / "run"
    seen = []
    original_step = ava.train.loop.train_step

    def recording_step(network, optimizer, batch, *args, **kwargs):
        seen.extend(zip(batch["idindex"].tolist(), batch["frameid"], batch["cameraid"]))
        return original_step(network, optimizer, batch, *args, **kwargs)

    argv = ["train", "--train.dataset-dir", str(holdout_capture_set), "--train.data-csv", "ids.csv", "--train.nids", "5",
            "--train.num-holdout-subjects", "2", "--train.num-validation-subjects", "1",
            "--train.holdout-segments", "EXP_free_face", "--train.num-holdout-cameras", "1",
            "--train.maxiter", str(HOLDOUT_STEPS), "--train.batchsize", "4", "--train.downsample", "128",
            "--train.num-workers", "0", "--train.warmup-iters", "20", "--train.init-learning-rate", "3e-3",
            "--progress.output-path", str(run), "--progress.checkpoint-freq", str(HOLDOUT_STEPS),
            "--progress.image-freq", str(HOLDOUT_STEPS), "--progress.psnr-freq", str(HOLDOUT_STEPS),
            "--device", "cpu", *TINY_MODEL]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        patch.setattr(ava.train.loop, "train_step", recording_step)
        assert run_cli(argv) == 0
    return run, seen
