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
    """One training run's state and its periodic actions.

    `encoder` is the driver being trained. With --train.cross-fit-folds K >= 2, `folds` holds K
    more encoders: fold k trains on the frames of the training subjects outside fold k (the part of
    each batch that is theirs) and re-aligns the subjects of fold k, so that no subject's targets
    come from a network that trained on that subject. One AdamW optimiser holds every encoder's
    parameters (AdamW is per parameter, so this equals one optimiser each).
    """

    def __init__(self, config: DriverConfig, setup: Setup, device: torch.device, resolved: dict) -> None:
        from ava.nn.headset_encoder import HeadsetEncoder

        self.config, self.setup, self.device, self.resolved = config, setup, device, resolved
        pool = setup.train_pool
        mean, scale = code_statistics(pool.codes[: pool.dome_count])
        count = config.train.cross_fit_folds if config.train.cross_fit_folds > 1 else 0
        self.encoder = HeadsetEncoder(config.encoder).to(device)
        self.folds = [HeadsetEncoder(config.encoder).to(device) for _ in range(count)]
        for encoder in self.encoders():
            encoder.set_code_statistics(mean.to(device), scale.to(device))
        # Subjects in folder order, dealt round-robin into the folds.
        self.frame_fold = (pool.subject_of % count).numpy() if count else np.zeros(len(pool), dtype=np.int64)
        parameters = [parameter for encoder in self.encoders() for parameter in encoder.parameters()]
        self.optimizer = torch.optim.AdamW(parameters, lr=config.train.learning_rate,
                                           weight_decay=config.train.weight_decay)
        if config.train.targets not in ("truth", "encodings"):  # those targets are each frame's own
            pool.targets = torch.from_numpy(stretch_segments(segment_pairs(pool), len(pool)))
        self.holdout_targets = torch.from_numpy(stretch_segments(segment_pairs(setup.holdout_pool),
                                                                 len(setup.holdout_pool)))
        self.step = 0
        self.run = None

    def encoders(self) -> list[torch.nn.Module]:
        """The driver, then the cross-fitting folds' encoders."""
        return [self.encoder, *self.folds]

    def fold_state(self) -> dict[str, torch.Tensor]:
        """The folds' weights, for the checkpoint's extra state (`fold<k>.<name>`)."""
        return {f"fold{number}.{key}": value for number, fold in enumerate(self.folds)
                for key, value in fold.state_dict().items()}

    def load_fold_state(self, extra: dict) -> None:
        for number, fold in enumerate(self.folds):
            prefix = f"fold{number}."
            fold.load_state_dict({key[len(prefix):]: value.to(self.device) for key, value in extra.items()
                                  if isinstance(key, str) and key.startswith(prefix)})

    # --- codes in standard units ------------------------------------------------------------------

    def standard(self, codes: torch.Tensor) -> np.ndarray:
        """[n,16,4,4] codes -> [n,256] in the encoder's standard units (numpy, float64)."""
        mean, scale = self.encoder.code_mean.cpu(), self.encoder.code_scale.cpu()
        return ((codes.cpu() - mean) / scale).reshape(len(codes), -1).double().numpy()

    def neutral_for(self, pool: FramePool, indices) -> torch.Tensor | None:
        """uint8 [n,5,S,S] neutral frames of pool frames `indices` (None for an unconditioned encoder)."""
        if not self.config.encoder.neutral:
            return None
        return pool.neutral_views()[pool.subject_of[torch.as_tensor(indices, dtype=torch.long)]]

    def predictions(self, pool: FramePool, encoder: torch.nn.Module | None = None,
                    indices: np.ndarray | None = None) -> torch.Tensor:
        """[n,16,4,4] codes of pool frames `indices` (default: all) by `encoder` (default: the driver),
        decoded by DataLoader workers unless preloaded."""
        from torch.utils.data import DataLoader, Subset

        from ava.runtime.interrupt import ignore_stop_signals

        encoder = self.encoder if encoder is None else encoder
        chosen = pool if indices is None else Subset(pool, [int(index) for index in indices])
        workers = 0 if self.config.train.preload else self.config.train.num_workers
        loader = DataLoader(chosen, batch_size=PREDICTION_BATCH, num_workers=workers, shuffle=False,
                            worker_init_fn=ignore_stop_signals)
        codes = [self.predictions_for(views, self.neutral_for(pool, numbers), encoder) for views, numbers in loader]
        return torch.cat(codes) if codes else torch.zeros(0, 16, 4, 4)

    def aligning_predictions(self) -> torch.Tensor:
        """[N,16,4,4] codes of every training frame by the encoder that re-aligns it: its fold's
        (cross-fitting), else the driver's."""
        pool = self.setup.train_pool
        if not self.folds:
            return self.predictions(pool)
        predicted = torch.zeros(len(pool), 16, 4, 4)
        for number, fold in enumerate(self.folds):
            frames = np.nonzero(self.frame_fold == number)[0]
            if len(frames):
                predicted[torch.from_numpy(frames)] = self.predictions(pool, fold, frames)
        return predicted

    def _align(self, pool: FramePool, predicted: torch.Tensor) -> np.ndarray:
        train = self.config.train
        return align_segments(segment_pairs(pool), self.standard(predicted), self.standard(pool.codes),
                              max_step=train.align_max_step, band=train.align_band, open_ends=train.align_open_ends)

    # --- periodic actions -------------------------------------------------------------------------

    def realign(self) -> dict:
        """New targets for every training frame: DTW of the aligning encoders' codes against the
        dome codes of each segment."""
        pool = self.setup.train_pool
        predicted = self.aligning_predictions()
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
                code = self.predictions_for(views, self.neutral_for(pool, [index]))
                target = int(targets[index])
                if target < pool.dome_count:
                    owner, dome_index = pool.code_location(target)
                    rows.append(driven_row(self.setup.model, pool.subjects[owner], views[0], code[0], dome_index,
                                           self.device))
                else:  # an oracle's target, a code of no dome frame: its render stands in for the dome image
                    from ava.runtime.driving import neutral_sample_index

                    owner = int(pool.subject_of[index])
                    subject = pool.subjects[owner]
                    rows.append(driven_row(self.setup.model, subject, views[0], code[0],
                                           neutral_sample_index(subject.dome), self.device,
                                           reference_code=pool.codes[target]))
        if not rows:
            return None
        # Enlarged like ava train's pictures: the renders are too small to judge at their own size.
        return upscale_nearest(vstack(rows, gap=4), viewing_scale(rows[0].shape[0]))

    def predictions_for(self, views: torch.Tensor, neutral: torch.Tensor | None = None,
                        encoder: torch.nn.Module | None = None) -> torch.Tensor:
        from ava.runtime.driving import predict_codes

        return predict_codes(self.encoder if encoder is None else encoder, views, self.device, neutral=neutral)

    def save(self) -> Path:
        from ava.checkpoint import save_driver_checkpoint

        path = save_driver_checkpoint(
            self.run.checkpoint_path(self.step), encoder=self.encoder, encoder_config=self.config.encoder.to_dict(),
            decoder={"path": str(Path(self.config.checkpoint).expanduser().resolve()),
                     "fingerprint": self.setup.fingerprint, "step": self.setup.decoder.step},
            config=self.resolved, step=self.step, optimizer=self.optimizer,
            extra_state={"alignment": self.setup.train_pool.targets, "rng.cpu": torch.get_rng_state(),
                         "dataset_dir": str(self.setup.dataset_dir), "downsample": self.setup.downsample,
                         **self.fold_state()})
        self.run.mark_latest(path, self.config.progress.keep_checkpoints)
        return path
