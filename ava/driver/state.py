"""The state of a driver training run and its periodic actions: re-alignment, the truth-free
evaluation, pictures and checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ava.driver.alignment import align_segments, stretch_segments
from ava.driver.config import DriverConfig
from ava.driver.data import FramePool
from ava.driver.setup import Setup

# Each code element's spread is floored at this fraction of the typical spread, so that elements
# the decoder barely uses are not blown up into noise in the standardised loss.
SCALE_FLOOR = 0.05
PREDICTION_BATCH = 256  # headset frames per encoder call when re-aligning or evaluating


def code_statistics(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean and floored spread [16,4,4] of training codes [F,16,4,4]."""
    mean = codes.mean(dim=0)
    spread = codes.std(dim=0)
    typical = spread.pow(2).mean().sqrt()
    return mean, spread.clamp(min=float(SCALE_FLOOR * typical) if typical > 0 else 1e-6)


def segment_pairs(pool: FramePool) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(pool_ids, code_ids) for _, _, pool_ids, code_ids in pool.segments]


class DriverState:
    """One training run's state and its periodic actions."""

    def __init__(self, config: DriverConfig, setup: Setup, device: torch.device, resolved: dict) -> None:
        from ava.nn.headset import HeadsetEncoder

        self.config, self.setup, self.device, self.resolved = config, setup, device, resolved
        pool = setup.train_pool
        self.encoder = HeadsetEncoder(config.encoder).to(device)
        mean, scale = code_statistics(pool.codes)
        self.encoder.set_code_statistics(mean.to(device), scale.to(device))
        self.optimizer = torch.optim.AdamW(self.encoder.parameters(), lr=config.train.learning_rate,
                                           weight_decay=config.train.weight_decay)
        pool.targets = torch.from_numpy(stretch_segments(segment_pairs(pool), len(pool)))
        self.holdout_targets = torch.from_numpy(stretch_segments(segment_pairs(setup.holdout_pool),
                                                                 len(setup.holdout_pool)))
        self.step = 0
        self.run = None

    # --- codes in standard units ------------------------------------------------------------------

    def standard(self, codes: torch.Tensor) -> np.ndarray:
        """[n,16,4,4] codes -> [n,256] in the encoder's standard units (numpy, float64)."""
        mean, scale = self.encoder.code_mean.cpu(), self.encoder.code_scale.cpu()
        return ((codes.cpu() - mean) / scale).reshape(len(codes), -1).double().numpy()

    def predictions(self, pool: FramePool) -> torch.Tensor:
        """[N,16,4,4] codes of every frame of the pool (decoded by DataLoader workers unless preloaded)."""
        from torch.utils.data import DataLoader

        from ava.runtime.interrupt import ignore_stop_signals

        workers = 0 if self.config.train.preload else self.config.train.num_workers
        loader = DataLoader(pool, batch_size=PREDICTION_BATCH, num_workers=workers, shuffle=False,
                            worker_init_fn=ignore_stop_signals)
        codes = [self.predictions_for(views) for views, _ in loader]
        return torch.cat(codes) if codes else torch.zeros(0, 16, 4, 4)

    def _align(self, pool: FramePool, predicted: torch.Tensor) -> np.ndarray:
        train = self.config.train
        return align_segments(segment_pairs(pool), self.standard(predicted), self.standard(pool.codes),
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
            stretched = stretch_segments(segment_pairs(pool), len(pool))
            record[f"{name}_aligned_error"] = float(np.mean((standard - codes[aligned]) ** 2))
            record[f"{name}_stretch_error"] = float(np.mean((standard - codes[stretched]) ** 2))
            used = np.concatenate([code_ids for _, code_ids in segment_pairs(pool)])
            record[f"{name}_code_variance"] = float(np.mean(codes[used] ** 2))
            if name == "holdout":
                self.holdout_targets = torch.from_numpy(aligned)
        return record

    def picture(self) -> np.ndarray | None:
        from ava.driver.pictures import driven_row
        from ava.runtime.images import upscale_nearest, viewing_scale, vstack

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
        if not rows:
            return None
        # Enlarged like ava train's pictures: the renders are too small to judge at their own size.
        return upscale_nearest(vstack(rows, gap=4), viewing_scale(rows[0].shape[0]))

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
