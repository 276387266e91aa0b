"""Everything `ava train-driver` prepares before its first step: the checked config, the frozen
decoder, the subjects with their dome codes and headset frames, and what a resume needs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from ava.driver.config import DriverConfig
from ava.driver.data import FramePool, Subject, load_subject, split_subjects
from ava.errors import UserError


def check_config(config: DriverConfig) -> None:
    train, progress = config.train, config.progress
    problems = []
    if config.checkpoint is None:
        problems.append("pass the trained decoder: --checkpoint run/checkpoints/step_XXXXXXXX.safetensors")
    for name in ("maxiter", "batchsize", "align_every"):
        if getattr(train, name) < 1:
            problems.append(f"--train.{name.replace('_', '-')} must be at least 1")
    for name in ("image_freq", "checkpoint_freq", "eval_freq", "picture_rows"):
        if getattr(progress, name) < 1:
            problems.append(f"--progress.{name.replace('_', '-')} must be at least 1")
    if not train.learning_rate > 0 or not 0 <= train.final_lr_factor <= 1 or train.weight_decay < 0:
        problems.append("--train.learning-rate must be positive, --train.final-lr-factor in [0, 1] and "
                        "--train.weight-decay not negative")
    if not 0 <= train.align_open_ends < 0.5:
        problems.append("--train.align-open-ends must be in [0, 0.5)")
    if not train.align_band > 0 or train.align_max_step < 0 or train.num_workers < 0:
        problems.append("--train.align-band must be positive; --train.align-max-step and --train.num-workers "
                        "cannot be negative")
    if train.decay_steps < 0:
        problems.append("--train.decay-steps cannot be negative")
    if train.cross_fit_folds < 0:
        problems.append("--train.cross-fit-folds cannot be negative")
    elif train.cross_fit_folds > 1 and train.targets not in ("aligned", "expression-codes"):
        problems.append("--train.cross-fit-folds is for --train.targets aligned or expression-codes (the other "
                        "targets are never re-aligned)")
    if train.downsample is not None and train.downsample < 1:
        problems.append("--train.downsample must be at least 1")
    if problems:
        raise UserError("; ".join(problems))


def learning_rate(config: DriverConfig, step: int) -> float:
    """Cosine from learning_rate at step 0 to learning_rate x final_lr_factor at decay_steps (or maxiter)."""
    train = config.train
    progress = min(step / max(train.decay_steps or train.maxiter, 1), 1.0)
    factor = train.final_lr_factor + (1 - train.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return train.learning_rate * factor


@dataclass
class Setup:
    decoder: object
    model: torch.nn.Module
    fingerprint: str
    dataset_dir: Path
    downsample: int
    train_pool: FramePool
    holdout_pool: FramePool


def load_decoder(path: Path, device: torch.device):
    """(checkpoint, frozen model in eval mode on `device`)."""
    from ava.checkpoint import load_checkpoint

    decoder = load_checkpoint(path)
    model = decoder.build_autoencoder(raymarch_backend="torch" if device.type == "cpu" else None)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return decoder, model


def load_subjects(folders: list[str], dataset_dir: Path, decoder, model, downsample: int, image_size: int,
                  device: torch.device, console: Console, description: str) -> list[Subject]:
    from rich.progress import track

    return [load_subject(dataset_dir, folder, decoder, model, downsample, image_size, device)
            for folder in track(folders, description=description, console=console, transient=True,
                                  disable=not console.is_interactive)]


def prepare(config: DriverConfig, device: torch.device, console: Console) -> Setup:
    from ava.checkpoint import decoder_fingerprint
    from ava.runtime.datasets import resolve_dataset_dir
    from ava.runtime.driving import decoder_downsample, dome_only_captures

    decoder, model = load_decoder(Path(config.checkpoint).expanduser(), device)
    dataset_dir = resolve_dataset_dir(config.train.dataset_dir, decoder, flag="--train.dataset-dir")
    downsample = config.train.downsample or decoder_downsample(decoder)
    training, held = split_subjects(dataset_dir, config.train.ids, config.train.holdout_subjects,
                                    config.train.num_holdout_subjects)
    folds = config.train.cross_fit_folds
    if folds > len(training):  # before the subjects' dome codes, which take long on real captures
        raise UserError(f"--train.cross-fit-folds {folds} needs at least {folds} training subjects; there are "
                        f"{len(training)}: pass at most {len(training)}")
    console.print(f"subjects: {len(training)} to train on, {len(held)} held out"
                  + (f" ({', '.join(held)})" if held else "") + f"; decoder {config.checkpoint} (frozen)",
                  highlight=False)
    if not config.train.ids:
        dome_only = dome_only_captures(dataset_dir)
        if dome_only:
            console.print(f"left out {len(dome_only)} capture(s) without a headset session (no encoder/ folder): "
                          f"{', '.join(dome_only[:3])}{', ...' if len(dome_only) > 3 else ''}; "
                          "download the encoder asset group to use them", highlight=False)
    size = config.encoder.image_size
    train_subjects = load_subjects(training, dataset_dir, decoder, model, downsample, size, device, console,
                                   "dome codes (training subjects)")
    holdout_subjects = load_subjects(held, dataset_dir, decoder, model, downsample, size, device, console,
                                     "dome codes (held-out subjects)")
    unpaired: dict[str, int] = {}  # headset segment -> frames left out (no dome take of that name)
    for subject in train_subjects + holdout_subjects:
        for segment, indices in subject.headset_segments.items():
            if segment not in subject.shared:
                unpaired[segment] = unpaired.get(segment, 0) + len(indices)
    if unpaired:
        console.print(f"left out {sum(unpaired.values())} headset frames of segments the dome session lacks: "
                      + ", ".join(f"{name} ({count})" for name, count in list(unpaired.items())[:4])
                      + (", ..." if len(unpaired) > 4 else ""), highlight=False)
    if config.encoder.neutral:
        fallback = [subject.folder for subject in train_subjects + holdout_subjects
                    if subject.headset.neutral_frame() is None]
        if fallback:
            console.print(f"--encoder.neutral: no neutral headset segment (named neutral... or EXP_neutral...) in "
                          f"{', '.join(fallback[:3])}{', ...' if len(fallback) > 3 else ''}; their first headset "
                          "frame stands in for it", highlight=False)
    train_pool, holdout_pool = FramePool(train_subjects), FramePool(holdout_subjects)
    if config.train.preload:
        from rich.progress import Progress

        total = sum(len(subject.headset) for subject in train_subjects + holdout_subjects)
        with Progress(console=console, transient=True, disable=not console.is_interactive) as progress:
            task = progress.add_task("decoding headset frames", total=total)
            for subject in train_subjects + holdout_subjects:
                subject.headset.preload(lambda count: progress.advance(task, count))
    if config.train.targets == "truth":
        from ava.driver.truth import pool_true_codes

        # The oracle's targets: ground truth, which only this mode reads (see ava.driver.truth).
        train_pool.add_fixed_targets(pool_true_codes(train_pool, dataset_dir, model, device, console))
    return Setup(decoder, model, decoder_fingerprint(decoder), dataset_dir, downsample, train_pool, holdout_pool)


def check_resumable(checkpoint, setup: Setup, config: DriverConfig, train_subjects: list[str]) -> None:
    problems = []
    if checkpoint.decoder.get("fingerprint") != setup.fingerprint:
        problems.append(f"it was trained against another decoder ({checkpoint.decoder.get('path')})")
    if checkpoint.encoder_config != config.encoder.to_dict():
        problems.append(f"its encoder is {checkpoint.encoder_config}, this run's {config.encoder.to_dict()}")
    saved = checkpoint.config.get("resolved", {}).get("train_subjects")
    if saved != train_subjects:
        problems.append(f"it trained on {saved}, this run on {train_subjects}")
    alignment = checkpoint.extra_state.get("alignment")
    if alignment is None or len(alignment) != len(setup.train_pool):
        problems.append("its headset frames differ from this dataset's")
    saved_train = checkpoint.config.get("train", {})
    for name in ("targets", "cross_fit_folds"):
        if name in saved_train and saved_train[name] != getattr(config.train, name):
            problems.append(f"it trained with --train.{name.replace('_', '-')} {saved_train[name]}, this run with "
                            f"{getattr(config.train, name)}")
    if problems:
        raise UserError(f"cannot resume from {checkpoint.path}: " + "; ".join(problems)
                        + ". Resume with the settings it was trained with, or start a new --progress.output-path")
