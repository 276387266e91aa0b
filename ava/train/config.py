"""`ava train` configuration: the original's keys (docs/training.md, "Configuration") as dataclass fields, and presets.

Only dataclasses live here (no torch import), so `ava --help` stays fast. Field names follow the
original's config, so `--train.maxiter`, `--train.init-learning-rate`, `--progress.output-path`
and so on mean what they meant there; what the original hard-coded (warm-up length, image and
checkpoint cadence, held-out cameras) became fields too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ava.runtime.device import ThreadsFlag
from ava.synth.config import SynthConfig
from ava.nn.config import ModelConfig, model_preset


@dataclass
class LossWeights:
    """Weights of the loss terms (docs/training.md, "One step"); a weight of 0 drops the term."""

    irgbl1: float = 1.0
    """Mean absolute error of the rendered image against the photo (0..255 units)."""
    vertl1: float = 0.1
    """Mean absolute error of the decoded mesh against the tracked mesh (mm)."""
    kldiv: float = 1e-3
    """The bottleneck's KL term (`kl_loss_stable`)."""
    primvolsum: float = 0.01
    """Sum over primitives of their volume (prod of 1/primscale), averaged over the batch."""


@dataclass
class TrainSection:
    """Data, optimisation and schedule (the original's `train.*` keys, plus what it hard-coded)."""

    dataset_dir: Path | None = None
    """Folder holding one folder per capture. None: the demo synthetic set, generated once into the cache (~/.cache/ava or $AVA_CACHE_DIR) with the --synth.* settings."""
    data_csv: str = "256_ids.csv"
    """Ids CSV (header mcd,sid,mct) listing the captures in training order; a relative path is looked up in the dataset folder first, then in the working directory. The presets' names, 256_ids.csv (the release) and ids.csv (a synthetic set), stand in for each other."""
    ids: tuple[str, ...] = ()
    """Train on these captures (MCD--MCT--SID or subject ids, looked up in the ids CSV) instead of the first --train.nids rows."""
    nids: int = 4
    """Number of captures: the first N rows of the ids CSV."""
    checkpoint: str = ""
    """Initialise the model weights from this ava checkpoint (weights only; the step, optimiser and schedule start fresh). To continue a run, use --resume instead."""
    maxiter: int = 10_000_000
    """Stop after this many optimiser steps (counted across resumes)."""
    num_epochs: int = 10
    """Stop after this many passes over the data, if maxiter comes later."""
    init_learning_rate: float = 2e-4
    """Adam's learning rate at step 0."""
    lr_scheduler_iter: int = 10_000
    """Steps between learning-rate changes (StepLR's step size)."""
    gamma: float = 1.4
    """Factor applied to the learning rate every lr_scheduler_iter steps. The original's 1.4 makes the rate *rise* (2e-4 -> 2.8e-4), probably by accident; it is kept in the ava256 preset so runs match the released models. Use a value below 1 for a decay."""
    lr_scheduler_changes: int = 1
    """How many times gamma is applied. The original stops stepping its scheduler after the first change (step lr_scheduler_iter), so 1 reproduces it."""
    downsample: int = 8
    """Images are loaded at the camera sensor size divided by this (8: 333x512, WxH, for the dome)."""
    num_workers: int | None = None
    """DataLoader worker processes per rank (0 loads in the training process). None: this rank's share of the usable CPU cores (divided among the processes on this node) less one, at most 8; the run prints and records the number chosen."""
    batchsize: int = 4
    """Samples per step and per rank (the global batch is batchsize x world size)."""
    ddp_bucket_mb: float = 25.0
    """Gradient bucket size of DistributedDataParallel in MB (torch's default 25): each bucket's all-reduce starts once backward has filled it, overlapping the rest of backward; larger buckets mean fewer, larger all-reduces that start later."""
    clip: float = 1.0
    """Gradient norm clipping threshold (after NaN/inf gradients are zeroed)."""
    losses: LossWeights = field(default_factory=LossWeights)
    """Loss weights."""
    warmup_iters: int = 100
    """Steps that place primitives on the ground-truth mesh, with position and rotation residuals off and the primitive scale estimated from the mesh (the original hard-codes 100)."""
    cameras: tuple[str, ...] = ()
    """Use only these camera ids (training and held out); empty: every camera of each capture's calibration. A camera whose archive is missing or unreadable is skipped with a warning, so this is also how to leave such cameras out knowingly."""
    holdout_cameras: tuple[str, ...] = ()
    """Camera ids never trained on; their PSNR is logged. Empty: pick --train.num-holdout-cameras."""
    num_holdout_cameras: int = 0
    """How many cameras to hold out when --train.holdout-cameras is empty (round-robin over the captures, keeping at least one training camera each)."""
    background: Literal["learned", "real"] = "learned"
    """What the rendered head is composited over: learned (the original's background model, one row per camera and identity) or real (each camera's recorded empty backdrop, the release's background_image group, where the capture has one; the learned background elsewhere). See docs/training.md."""
    masked_loss: bool = False
    """Average the image L1 loss over the pixels inside each frame's foreground mask (the release's foreground_masks group) instead of the whole image; frames without a mask count every pixel."""
    holdout_subjects: tuple[str, ...] = ()
    """Test subjects, never trained on (capture or subject ids of the ids CSV; every capture of the subject stays out). Recorded in the checkpoint; `ava eval` measures them apart from the trained ones (docs/evaluation.md)."""
    validation_subjects: tuple[str, ...] = ()
    """Validation subjects, never trained on: settings are chosen on them, test subjects are measured once at the end (docs/evaluation.md)."""
    num_holdout_subjects: int = 0
    """When --train.holdout-subjects and --train.validation-subjects are empty: hold out this many subjects of the selected captures (--train.nids or --train.ids), chosen by ava.data.splits from --train.split-seed, of which --train.num-validation-subjects are validation and the rest test."""
    num_validation_subjects: int = 0
    """How many of the --train.num-holdout-subjects are validation subjects (the rest are test subjects)."""
    split_seed: int = 0
    """Seed of the subject split (ava.data.splits), separate from --seed so that runs of several seeds hold out the same subjects."""
    holdout_segments: tuple[str, ...] = ()
    """Expression segments never trained on, in every capture (e.g. EXP_free_face, as the Ava-256 datasheet suggests); `ava eval --segment` measures them."""
    precision: Literal["fp32", "tf32", "bf16"] = "tf32"
    """Arithmetic of the convolutions and matrix products on a GPU: fp32 (exact), tf32 (tensor cores with fp32 accumulation; PyTorch, and so the original, already runs convolutions this way by default) or bf16 (autocast of the encoders, decoders and background MLP; geometry, raymarcher and losses stay fp32). No effect on a CPU."""
    # How steps run (docs/training.md, "How a step runs").
    step_mode: Literal["auto", "eager", "sync-free", "graph"] = "auto"
    """auto: eager everywhere for now (graph becomes the default on a single CUDA device once tools/gpu_speed_suite.py has measured it faster and equal to eager on a GPU; docs/training.md). eager: one kernel launch at a time, reading the gradient norm on the host every step (for debugging). sync-free: the same step with nothing read back to the host. graph: sync-free during the warm-up, then the whole step (forward, losses, backward, optimiser) captured once in a CUDA graph and replayed, with the next batch copied in on a side stream meanwhile."""
    readback_every: int | None = None
    """Read the logged losses back from the device every N steps (one wait per N steps instead of one per step); metrics.jsonl still gets one record per step. None: 10 on a GPU, 1 on a CPU. Under torchrun every step, where the ranks agree on stopping."""


@dataclass
class TensorboardSection:
    """TensorBoard event files (written only when the tensorboard package is installed)."""

    log_freq: int = 10
    """Write scalars every N steps."""
    logdir: str = "log"
    """Folder for the event files, relative to the run folder."""


@dataclass
class ProgressSection:
    """What the run writes and when (the original's `progress.*` keys plus cadences)."""

    output_path: Path = Path("run")
    """Run folder: checkpoints/, metrics.jsonl, config.json, progress/, x-id/, log/."""
    cross_id: bool = True
    """Write cross-identity strips [gt | self | other identities] with the progress images."""
    cross_id_n_subjects: int = 3
    """Other identities per cross-identity strip (at most nids - 1)."""
    image_freq: int = 1000
    """Write progress images every N steps (and at the last step)."""
    checkpoint_freq: int = 2000
    """Write a checkpoint every N steps (and at the last step)."""
    keep_checkpoints: int = 5
    """Keep the newest N step checkpoints (0 keeps all)."""
    overwrite: bool = False
    """Train into a run folder that holds an earlier run, deleting that run's checkpoints, metrics, pictures and logs first (without it or --resume, such a folder is refused)."""
    psnr_freq: int = 1000
    """Evaluate PSNR on held-out cameras (and a few training views) every N steps and at the end."""
    psnr_samples: int = 32
    """At most this many held-out samples per PSNR evaluation (spread over captures and frames)."""
    tensorboard: TensorboardSection = field(default_factory=TensorboardSection)
    """TensorBoard settings."""


@dataclass
class TrainConfig:
    """Train an Ava-256 universal decoder: `ava train` (demo preset: synthetic data, small model,
    CPU-friendly) or `ava train ava256 --train.dataset-dir DIR` (the original configuration).
    Runs alone on a CPU or GPU, or under torchrun on several GPUs or nodes."""

    train: TrainSection = field(default_factory=TrainSection)
    """Data, optimisation and schedule."""
    progress: ProgressSection = field(default_factory=ProgressSection)
    """Outputs and their cadence."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model size."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    """The synthetic set generated when --train.dataset-dir is not given."""
    resume: str | None = None
    """Continue a run: a checkpoint path, or `auto` for the newest checkpoint in the run folder (starting fresh if there is none). Restores weights, optimiser, schedule, step and RNG state."""
    seed: int = 0
    """Random seed (data order, latent noise); each rank adds its rank."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto: CUDA when available."""
    raymarch_backend: Literal["auto", "torch", "triton"] = "auto"
    """Raymarcher: Triton on CUDA, the vectorised PyTorch path on a CPU (auto), or forced."""
    threads: ThreadsFlag = 0
    preset: Annotated[str, tyro.conf.Suppress] = "demo"
    """The preset these values started from (recorded in config.json; ava256 needs a dataset)."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the encoders, the decoder assembler and the background model, each on its own (the raymarcher stays outside); auto: on for a CUDA device and a model of 1024x1024 UV maps (the ava256 size, where it was measured), off otherwise. Costs a minute or more at the start, and recompiles at the first evaluation and after the warm-up; made the ava256 step 1.4x faster on an H200 (BENCHMARKS.md). For short runs of small models the compile time outweighs the gain."""


def _demo() -> TrainConfig:
    # Sized so that a busy 2-core CPU generates the data and trains in about 10 minutes
    # (BENCHMARKS.md, "The quick start on a busy machine", has the measurements behind these
    # numbers): the background model's per-pixel layers at 64 channels instead of 256 (a third of
    # the step at 256), and the held-out PSNR measured once, at the end.
    return TrainConfig(
        train=TrainSection(
            data_csv="ids.csv",
            nids=4,
            maxiter=400,
            num_epochs=1000,
            init_learning_rate=1e-3,
            lr_scheduler_iter=300,
            gamma=0.3,
            downsample=64,
            num_workers=1,
            batchsize=4,
            warmup_iters=100,
            num_holdout_cameras=1,  # synthetic captures share their camera ids: 1 of the 6 in every capture
        ),
        progress=ProgressSection(
            image_freq=100,
            checkpoint_freq=200,
            keep_checkpoints=3,
            psnr_freq=400,
            psnr_samples=24,
        ),
        model=ModelConfig(uv_size=128, prims_per_side=16, voxels_per_prim=8, warp_size=16, raymarch_step=6.0,
                          background_width=64),
        synth=SynthConfig(texture_size=128, downsample=32),
    )


def _ava256() -> TrainConfig:
    return TrainConfig(
        preset="ava256",
        train=TrainSection(),
        progress=ProgressSection(image_freq=1000, checkpoint_freq=2000, psnr_freq=2000),
        model=model_preset("ava256"),
    )


PRESETS: dict[str, TrainConfig] = {"demo": _demo(), "ava256": _ava256()}
"""demo: synthetic data generated once, a small model, minutes on a CPU. ava256: the original's
configuration (docs/training.md, "Configuration") for the real dataset."""

PRESET_HELP = {
    "demo": "The default: a synthetic capture set generated once into the cache and a small model; "
    "finishes on a laptop CPU in minutes.",
    "ava256": "The original configuration (docs/training.md): 1024^2 UV maps, 16384 primitives, batch 4 at "
    "downsample 8, Adam 2e-4; needs --train.dataset-dir.",
}


def config_to_dict(config: TrainConfig) -> dict:
    """JSON-ready dict of the whole config (paths as strings)."""

    def convert(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(item) for item in value]
        return value

    return convert(dataclasses.asdict(config))
