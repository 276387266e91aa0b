"""`ava train-driver` and `ava eval-driver` configuration (dataclasses only, so `ava --help` stays
fast). Presets are instances, as for `ava train`: `demo` (synthetic data, CPU minutes) and
`ava256` (the real release)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ava.nn.config import HeadsetEncoderConfig
from ava.runtime.device import ThreadsFlag


@dataclass
class DriverTrainSection:
    """Which subjects, the optimisation, and the alternation of regression and time alignment."""

    dataset_dir: Path | None = None
    """Dataset with the subjects' dome and headset captures (default: the one the decoder was trained on, if it still exists, else the demo synthetic set)."""
    ids: tuple[str, ...] = ()
    """Subjects to use (MCD--MCT--SID or subject ids); default: every capture folder of the dataset that has both a dome (decoder/) and a headset (encoder/) session."""
    holdout_subjects: tuple[str, ...] = ()
    """Subjects the driver never sees (evaluated by `ava eval-driver`). Empty: the last --train.num-holdout-subjects of the subjects in folder order."""
    num_holdout_subjects: int = 1
    """How many subjects to hold out when --train.holdout-subjects is empty."""
    maxiter: int = 1500
    """Optimiser steps."""
    batchsize: int = 32
    """Headset frames per step."""
    learning_rate: float = 1e-3
    """AdamW's learning rate at step 0; it follows a cosine down to learning_rate x final_lr_factor."""
    final_lr_factor: float = 0.05
    """Learning rate at the end of the decay, as a fraction of --train.learning-rate."""
    decay_steps: int = 0
    """Steps over which the learning rate decays (0: --train.maxiter). Fix it when a run will be extended by a resume with a larger maxiter, so that the schedule does not change."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    targets: Literal["aligned", "stretch", "truth", "expression-codes", "encodings"] = "aligned"
    """What the driver regresses. aligned: the decoder's codes of the dome frames, matched to the headset frames by a linear time stretch of each segment, then by DTW re-alignment every --train.align-every steps (needs only subject and segment names); stretch: the linear stretch only, never re-aligned (a baseline); truth: the code of each headset frame's true expression from the synthetic ground truth (encoder_truth.json), an oracle that bounds what the views allow (synthetic data only); expression-codes: aligned, onto the release's decoder/expression_codes/aeparams_1440000.pkl instead of the decoder's own codes; encodings: the release's encoder/encodings_gt.pt, a code per headset frame (supervised, no alignment). The release's codes belong to its decoder: use them with the converted aeparams_1440000.pt."""
    cross_fit_folds: int = 0
    """With re-aligned targets (aligned, expression-codes): split the training subjects into this many folds and train one extra driver per fold on the other folds; each subject is re-aligned by the driver that never trained on it (0 or 1: by the driver being trained). Costs one extra forward and backward pass per fold and step."""
    align_every: int = 100
    """Re-align every headset segment to its dome segment (DTW on the driver's codes) every N steps; until the first re-alignment the targets come from a linear time stretch."""
    align_band: float = 0.3
    """Sakoe-Chiba band of the alignment, as a fraction of the segment (1 or more: no band)."""
    align_open_ends: float = 0.0
    """Let the alignment start within this fraction of a dome segment's beginning and end within this fraction of its end (0: both takes start and end together), for headset recordings that began late or stopped early."""
    align_max_step: int = 0
    """Most dome frames the alignment may advance per headset frame (0: twice the segment's mean slope, at least 2)."""
    augment: bool = True
    """Random per-view shifts, rotations, scales, gamma, gain and noise (headset fit and exposure vary)."""
    preload: bool = True
    """Decode every headset frame once into memory (5 x image-size^2 bytes a frame); off: decode in --train.num-workers DataLoader workers each step (for data that does not fit in memory)."""
    num_workers: int = 0
    """DataLoader worker processes when --no-train.preload."""
    downsample: int | None = None
    """Dome images (pictures, evaluation renders) at the sensor size / this; default: the decoder's."""


@dataclass
class DriverProgressSection:
    """What the run writes and when."""

    output_path: Path = Path("run-driver")
    """Run folder: checkpoints/, metrics.jsonl, config.json, driven/ pictures."""
    image_freq: int = 500
    """Write a picture (rows [5 IR views | driven render | dome frame it was aligned to]) every N steps."""
    checkpoint_freq: int = 500
    """Write a checkpoint every N steps (and at the last step)."""
    keep_checkpoints: int = 3
    """Keep the newest N step checkpoints (0 keeps all)."""
    eval_freq: int = 500
    """Log the truth-free alignment errors of training and held-out subjects every N steps."""
    overwrite: bool = False
    """Replace an earlier run in the output folder (its checkpoints, metrics and pictures) instead of refusing to start."""
    picture_rows: int = 4
    """Frames per picture (half from a training subject, half from a held-out one)."""


@dataclass
class DriverConfig:
    """Train a universal headset driver: a headset encoder from the five IR views to the expression
    code of a trained decoder (--checkpoint, frozen). Supervision needs no frame pairs: within each
    segment the headset take is aligned in time to the dome take (linear stretch, then DTW on the
    driver's own codes, alternating with regression onto the dome frames' codes)."""

    checkpoint: Path | None = None
    """The trained decoder (an `ava train` checkpoint); it stays frozen."""
    train: DriverTrainSection = field(default_factory=DriverTrainSection)
    """Subjects, optimisation, alignment."""
    progress: DriverProgressSection = field(default_factory=DriverProgressSection)
    """Outputs and their cadence."""
    encoder: HeadsetEncoderConfig = field(default_factory=HeadsetEncoderConfig)
    """Size of the headset encoder."""
    resume: str | None = None
    """Continue a run: a driver checkpoint, or `auto` for the newest one in the run folder."""
    seed: int = 0
    """Random seed (batches, augmentation, dropout)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto: CUDA when available."""
    threads: ThreadsFlag = 0


def _demo() -> DriverConfig:
    return DriverConfig()


def _ava256() -> DriverConfig:
    # The release: 256 subjects of thousands of frames, too many to preload; larger views.
    return DriverConfig(
        train=DriverTrainSection(maxiter=60_000, batchsize=64, learning_rate=5e-4, align_every=5000,
                                 num_holdout_subjects=16, preload=False, num_workers=8),
        progress=DriverProgressSection(image_freq=2000, checkpoint_freq=5000, eval_freq=5000),
        encoder=HeadsetEncoderConfig(image_size=128, channels=(16, 32, 64, 128, 128), hidden=512),
    )


PRESETS: dict[str, DriverConfig] = {"demo": _demo(), "ava256": _ava256()}
PRESET_HELP = {
    "demo": "The default: sized for the synthetic demo data (64^2 views, 1500 steps); minutes on a CPU.",
    "ava256": "For the real release: 128^2 views, a wider encoder, 60k steps, frames decoded by workers.",
}


@dataclass
class EvalDriverConfig:
    """Evaluate a headset driver on subjects with known truth: synthetic captures (the decoder's codes
    of the dome frames the headset frames show) or real ones with the release's ground-truth
    encodings (encodings_gt.pt, the only real-data measure of a driver). Per segment: the
    expression-code error, and the PSNR of the headset-driven render against the render of the true
    code, beside a baseline that always outputs the training subjects' mean code. Writes
    OUT/eval.json, a table OUT/eval.md and strips OUT/<subject>.png [5 IR views | truth | driver |
    mean code]."""

    driver_checkpoint: Path
    """A driver from `ava train-driver`."""
    checkpoint: Path | None = None
    """The decoder (default: the one the driver was trained against, by its recorded path)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("driver-eval")
    """Output folder."""
    dataset_dir: Path | None = None
    """Dataset with the subjects (default: the one the driver was trained on)."""
    subjects: tuple[str, ...] = ()
    """Subjects to evaluate (default: the driver's held-out subjects)."""
    camera: str | None = None
    """Dome camera of the renders (default: each subject's most frontal camera)."""
    downsample: int | None = None
    """Render size as sensor size / downsample (default: the driver's)."""
    truth: Literal["auto", "synthetic", "encodings"] = "auto"
    """What the driver is measured against: synthetic (the ground truth `ava synth` writes beside a capture, encoder_truth.json), encodings (the release's encoder/encodings_gt.pt: real headset frames, the only real-data measure of a driver), or auto (synthetic where the file exists, else encodings)."""
    strip_frames: int = 6
    """Frames shown in each subject's strip (the most expressive ones, spread over the segments)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to compute."""
    threads: ThreadsFlag = 0
