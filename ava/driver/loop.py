"""`ava train-driver`: regression of the headset encoder onto a frozen decoder's expression codes,
alternating with time alignment of the headset and dome takes (docs/driver.md).

Per step: a batch of headset frames of the training subjects (augmented), the encoder's codes,
and the mean squared error, in the standard units of the training codes, against the code of
the dome frame each headset frame is currently aligned to. The targets start as a linear time
stretch of every segment; every --train.align-every steps each segment is re-aligned by DTW
between the encoder's codes of its headset frames and the decoder's codes of its dome frames.
A resume restores the encoder, the optimiser, the alignment, the step and the RNG state, and
batches and augmentation are drawn from per-step seeds, so it reproduces an unbroken run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ava.driver.alignment import align_segments, stretch_segments
from ava.driver.config import DriverConfig
from ava.driver.data import FramePool, Subject, load_subject, split_subjects
from ava.errors import UserError

# Each code element's spread is floored at this fraction of the typical spread, so that elements
# the decoder barely uses are not blown up into noise in the standardised loss.
SCALE_FLOOR = 0.05


def _check(config: DriverConfig) -> None:
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
    if not train.align_band > 0 or train.align_max_step < 0 or train.num_workers < 0:
        problems.append("--train.align-band must be positive; --train.align-max-step and --train.num-workers "
                        "cannot be negative")
    if train.decay_steps < 0:
        problems.append("--train.decay-steps cannot be negative")
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


def code_statistics(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean and floored spread [16,4,4] of training codes [F,16,4,4]."""
    mean = codes.mean(dim=0)
    spread = codes.std(dim=0)
    typical = spread.pow(2).mean().sqrt()
    return mean, spread.clamp(min=float(SCALE_FLOOR * typical) if typical > 0 else 1e-6)


def _segment_pairs(pool: FramePool) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(pool_ids, code_ids) for _, _, pool_ids, code_ids in pool.segments]


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
            for folder in track(folders, description=description, console=console, transient=True)]


def _setup(config: DriverConfig, device: torch.device, console: Console) -> Setup:
    from ava.checkpoint import decoder_fingerprint
    from ava.runtime.datasets import resolve_dataset_dir
    from ava.runtime.headset import decoder_downsample

    decoder, model = load_decoder(Path(config.checkpoint).expanduser(), device)
    dataset_dir = resolve_dataset_dir(config.train.dataset_dir, decoder)
    downsample = config.train.downsample or decoder_downsample(decoder)
    training, held = split_subjects(dataset_dir, config.train.ids, config.train.holdout_subjects,
                                    config.train.num_holdout_subjects)
    console.print(f"subjects: {len(training)} to train on, {len(held)} held out"
                  + (f" ({', '.join(held)})" if held else "") + f"; decoder {config.checkpoint} (frozen)",
                  highlight=False)
    size = config.encoder.image_size
    train_subjects = load_subjects(training, dataset_dir, decoder, model, downsample, size, device, console,
                                   "dome codes (training subjects)")
    holdout_subjects = load_subjects(held, dataset_dir, decoder, model, downsample, size, device, console,
                                     "dome codes (held-out subjects)")
    train_pool, holdout_pool = FramePool(train_subjects), FramePool(holdout_subjects)
    if config.train.preload:
        from rich.progress import Progress

        total = sum(len(subject.headset) for subject in train_subjects + holdout_subjects)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("decoding headset frames", total=total)
            for subject in train_subjects + holdout_subjects:
                subject.headset.preload(lambda count: progress.advance(task, count))
    return Setup(decoder, model, decoder_fingerprint(decoder), dataset_dir, downsample, train_pool, holdout_pool)


def _resume_path(config: DriverConfig, console: Console) -> Path | None:
    from ava.runtime.rundir import find_latest_checkpoint

    if not config.resume:
        return None
    if config.resume == "auto":
        path = find_latest_checkpoint(config.progress.output_path)
        if path is None:
            console.print(f"--resume auto: no checkpoint in {config.progress.output_path}; starting a new run")
        return path
    return Path(config.resume).expanduser()


def _check_resumable(checkpoint, setup: Setup, config: DriverConfig, train_subjects: list[str]) -> None:
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
    if problems:
        raise UserError(f"cannot resume from {checkpoint.path}: " + "; ".join(problems)
                        + ". Resume with the settings it was trained with, or start a new --progress.output-path")


class _Run:
    """One training run's state and its periodic actions."""

    def __init__(self, config: DriverConfig, setup: Setup, device: torch.device, console: Console) -> None:
        from ava.nn.headset import HeadsetEncoder

        self.config, self.setup, self.device, self.console = config, setup, device, console
        pool = setup.train_pool
        self.encoder = HeadsetEncoder(config.encoder).to(device)
        mean, scale = code_statistics(pool.codes)
        self.encoder.set_code_statistics(mean.to(device), scale.to(device))
        self.optimizer = torch.optim.AdamW(self.encoder.parameters(), lr=config.train.learning_rate,
                                           weight_decay=config.train.weight_decay)
        pool.targets = torch.from_numpy(stretch_segments(_segment_pairs(pool), len(pool)))
        self.holdout_targets = torch.from_numpy(stretch_segments(_segment_pairs(setup.holdout_pool),
                                                                 len(setup.holdout_pool)))
        self.step = 0
        self.run = None

    # --- codes in standard units ------------------------------------------------------------------

    def standard(self, codes: torch.Tensor) -> np.ndarray:
        """[n,16,4,4] codes -> [n,256] in the encoder's standard units (numpy, float64)."""
        mean, scale = self.encoder.code_mean.cpu(), self.encoder.code_scale.cpu()
        return ((codes.cpu() - mean) / scale).reshape(len(codes), -1).double().numpy()

    def predictions(self, pool: FramePool) -> torch.Tensor:
        from ava.runtime.headset import predict_codes

        return predict_codes(self.encoder, pool.views(range(len(pool))), self.device)

    def _align(self, pool: FramePool, predicted: torch.Tensor) -> np.ndarray:
        train = self.config.train
        return align_segments(_segment_pairs(pool), self.standard(predicted), self.standard(pool.codes),
                              max_step=train.align_max_step, band=train.align_band)

    # --- periodic actions -------------------------------------------------------------------------

    def realign(self) -> dict:
        pool = self.setup.train_pool
        predicted = self.predictions(pool)
        targets = self._align(pool, predicted)
        changed = float(np.mean(targets != pool.targets.numpy()))
        error = float(np.mean((self.standard(predicted) - self.standard(pool.codes[targets])) ** 2))
        pool.targets = torch.from_numpy(targets)
        return {"step": self.step, "kind": "align", "align_changed": changed, "align_error": error}

    def evaluate(self) -> dict:
        """Truth-free errors (standard units, per code element): the driver against the dome codes
        under DTW alignment and under a linear stretch, and the spread of the dome codes about the
        training mean (what a mean-code predictor would score)."""
        record: dict = {"step": self.step, "kind": "eval"}
        for name, pool in (("train", self.setup.train_pool), ("holdout", self.setup.holdout_pool)):
            if len(pool) == 0:
                continue
            predicted = self.predictions(pool)
            standard = self.standard(predicted)
            codes = self.standard(pool.codes)
            aligned = self._align(pool, predicted)
            stretched = stretch_segments(_segment_pairs(pool), len(pool))
            record[f"{name}_aligned_error"] = float(np.mean((standard - codes[aligned]) ** 2))
            record[f"{name}_stretch_error"] = float(np.mean((standard - codes[stretched]) ** 2))
            used = np.concatenate([code_ids for _, code_ids in _segment_pairs(pool)])
            record[f"{name}_code_variance"] = float(np.mean(codes[used] ** 2))
            if name == "holdout":
                self.holdout_targets = torch.from_numpy(aligned)
        return record

    def picture(self) -> np.ndarray | None:
        from ava.driver.pictures import driven_row
        from ava.runtime.images import vstack

        rows = []
        count = self.config.progress.picture_rows
        shown = [(self.setup.train_pool, self.setup.train_pool.targets, count - count // 2)]
        if len(self.setup.holdout_pool):
            shown.append((self.setup.holdout_pool, self.holdout_targets, count // 2))
        else:
            shown[0] = (self.setup.train_pool, self.setup.train_pool.targets, count)
        for pool, targets, number in shown:
            first_subject = [i for i, (subject, _) in enumerate(pool.entries) if subject == 0]
            for position in np.linspace(0, len(first_subject) - 1, number).round().astype(int):
                index = first_subject[position]
                views = pool.views([index])
                code = self.predictions_for(views)
                owner, dome_index = pool.code_location(int(targets[index]))
                rows.append(driven_row(self.setup.model, pool.subjects[owner], views[0], code[0], dome_index,
                                       self.device))
        return vstack(rows, gap=4) if rows else None

    def predictions_for(self, views: torch.Tensor) -> torch.Tensor:
        from ava.runtime.headset import predict_codes

        return predict_codes(self.encoder, views, self.device)

    def save(self) -> Path:
        from ava.checkpoint import save_driver_checkpoint

        path = save_driver_checkpoint(
            self.run.checkpoint_path(self.step), encoder=self.encoder, encoder_config=self.config.encoder.to_dict(),
            decoder={"path": str(Path(self.config.checkpoint).expanduser().resolve()),
                     "fingerprint": self.setup.fingerprint, "step": self.setup.decoder.step},
            config=self.resolved, step=self.step, optimizer=self.optimizer,
            extra_state={"alignment": self.setup.train_pool.targets, "rng.cpu": torch.get_rng_state(),
                         "dataset_dir": str(self.setup.dataset_dir), "downsample": self.setup.downsample})
        self.run.mark_latest(path, self.config.progress.keep_checkpoints)
        return path


def train_driver(config: DriverConfig) -> int:
    """Runs `ava train-driver`; returns the exit status."""
    from ava.runtime.device import select_device

    _check(config)
    console = Console(stderr=True)
    device = select_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    try:
        return _train(config, device, console)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"CUDA ran out of memory at --train.batchsize {config.train.batchsize}; lower it or "
                        "--encoder.image-size") from None


def _train(config: DriverConfig, device: torch.device, console: Console) -> int:
    from ava.checkpoint import load_driver_checkpoint
    from ava.driver.augment import augment_views
    from ava.driver.data import StepBatches
    from ava.runtime.images import save_png
    from ava.runtime.rundir import RunDir, json_ready

    started = time.perf_counter()
    setup = _setup(config, device, console)
    pool = setup.train_pool
    if len(pool) == 0:
        raise UserError("the training subjects have no headset frame in a segment their dome session also has")
    state = _Run(config, setup, device, console)
    train_subjects = [subject.folder for subject in pool.subjects]
    state.resolved = json_ready(asdict(config))
    state.resolved["resolved"] = {
        "dataset_dir": str(setup.dataset_dir), "decoder": str(config.checkpoint), "decoder_fingerprint": setup.fingerprint,
        "train_subjects": train_subjects, "holdout_subjects": [s.folder for s in setup.holdout_pool.subjects],
        "cameras": {s.folder: s.camera for s in pool.subjects + setup.holdout_pool.subjects},
        "downsample": setup.downsample, "device": str(device), "train_frames": len(pool),
        "holdout_frames": len(setup.holdout_pool)}

    resume_path = _resume_path(config, console)
    if resume_path is not None:
        checkpoint = load_driver_checkpoint(resume_path)
        _check_resumable(checkpoint, setup, config, train_subjects)
        state.encoder.load_state_dict({k: v.to(device) for k, v in checkpoint.encoder_state.items()})
        if checkpoint.optimizer_state is not None:
            state.optimizer.load_state_dict(checkpoint.optimizer_state)
        pool.targets = checkpoint.extra_state["alignment"].long().cpu()
        state.step = checkpoint.step
        if "rng.cpu" in checkpoint.extra_state:
            torch.set_rng_state(checkpoint.extra_state["rng.cpu"].to(torch.uint8).cpu())
        console.print(f"resuming from {resume_path} at step {state.step}", highlight=False)

    run = state.run = RunDir(config.progress.output_path)
    run.write_config(state.resolved)
    run.open_metrics(state.step if resume_path is not None else None)
    last = config.train.maxiter
    console.print(f"training the headset driver {last - state.step} steps (to step {last}) on {device}: "
                  f"{len(pool)} headset frames of {len(train_subjects)} subjects, batch {config.train.batchsize}",
                  highlight=False)
    if state.step >= last:
        console.print(f"nothing to do: the run is already at step {state.step} of {last}")
        run.close()
        return 0

    from torch.utils.data import DataLoader

    batches = StepBatches(len(pool), config.train.batchsize, config.seed, state.step, last)
    workers = 0 if config.train.preload else config.train.num_workers
    # Its own generator: creating the loader's iterator draws a seed, which must not come from the
    # global RNG that dropout uses (a resumed run creates its iterator at another point).
    loader = DataLoader(pool, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed))
    progress = _progress_bar(console)
    task = progress.add_task("driver", total=last, completed=state.step, loss=float("nan"))
    line_every = max(1, (last - state.step) // 20)
    state.encoder.train()
    progress.start()
    try:
        fetch_started = time.perf_counter()
        for views, indices in loader:
            lr = learning_rate(config, state.step)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            views = views.to(device, non_blocking=True)
            if config.train.augment:
                generator = torch.Generator().manual_seed(config.seed * 7_919 + state.step + 1)
                views = augment_views(views, generator)
            target = pool.codes[pool.targets[indices]].to(device)
            predicted = state.encoder(views.float())
            loss = ((state.encoder.standardise(predicted) - state.encoder.standardise(target)) ** 2).mean()
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(state.encoder.parameters(), 10.0)
            state.optimizer.step()
            state.step += 1
            step_time = time.perf_counter() - fetch_started
            value = float(loss.detach())
            run.log({"step": state.step, "loss": value, "lr": lr, "grad_norm": float(grad_norm), "step_time": step_time,
                     "samples_per_s": len(indices) / step_time})
            progress.update(task, completed=state.step, loss=value)
            if not console.is_terminal and (state.step % line_every == 0 or state.step == last):
                console.print(f"step {state.step}/{last} loss {value:.3f} ({step_time:.2f} s/step)", highlight=False)
            final = state.step >= last
            # Also at the last step, so a checkpoint holds the alignment a longer run would continue with.
            if state.step % config.train.align_every == 0:
                record = state.realign()
                run.log(record)
                console.print(f"step {state.step}: re-aligned the headset takes ({100 * record['align_changed']:.0f}% "
                              f"of the frames changed dome frame)", highlight=False)
            if state.step % config.progress.eval_freq == 0 or final:
                record = state.evaluate()
                run.log(record)
                shown = ", ".join(f"{key} {value:.3f}" for key, value in record.items() if key.endswith("error")
                                  or key.endswith("variance"))
                console.print(f"step {state.step}: {shown}", highlight=False)
            if state.step % config.progress.image_freq == 0 or final:
                picture = state.picture()
                if picture is not None:
                    save_png(run.image_path("driven", state.step), picture)
            if state.step % config.progress.checkpoint_freq == 0 or final:
                state.save()
            fetch_started = time.perf_counter()
    finally:
        progress.stop()
        run.close()
    console.print(f"done: step {state.step} in {time.perf_counter() - started:.0f} s; driver checkpoints in "
                  f"{Path(config.progress.output_path) / 'checkpoints'}", highlight=False)
    return 0


def _progress_bar(console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, transient=False, disable=not console.is_terminal)
