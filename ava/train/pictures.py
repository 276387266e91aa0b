"""Pictures during training: progress images and cross-identity strips."""

from __future__ import annotations

import numpy as np
import torch

from ava.data.collate import collate
from ava.runtime.batch import to_device
from ava.runtime.cameras import frontal_cameras
from ava.runtime.images import error_image, hstack, to_uint8, vstack
from ava.runtime.model import run_model


def progress_image(images: torch.Tensor, rendered: torch.Tensor, rows: int = 4) -> np.ndarray:
    """uint8 picture, one row per batch element (at most `rows`): [gt | recon | error]."""
    lines = []
    for target, recon in zip(images[:rows], rendered[:rows]):
        lines.append(hstack([to_uint8(target), to_uint8(recon), to_uint8(error_image(target, recon))]))
    return vstack(lines)


class CrossIdentity:
    """Cross-identity strips [gt | self | other_1 | ...]: a training sample from a frontal camera
    rendered with its own identity and with the neutral conditioning of other identities."""

    def __init__(self, dataset, others: int) -> None:
        self.dataset = dataset
        self.others = others
        cameras = set(frontal_cameras(dataset.datasets))
        self.candidates = []
        offset = 0
        for part in dataset.datasets:
            self.candidates += [offset + i for i in range(len(part)) if part.sample_ids(i)[1] in cameras]
            offset += len(part)
        self._neutrals: dict[int, dict] = {}

    def _neutral(self, identity: int) -> dict:
        if identity not in self._neutrals:
            if len(self._neutrals) >= 16:  # bounded: real textures are 12 MB each
                self._neutrals.pop(next(iter(self._neutrals)))
            sample = self.dataset.datasets[identity][0]
            self._neutrals[identity] = {"neut_avgtex": sample["neut_avgtex"][None], "neut_verts": sample["neut_verts"][None]}
        return self._neutrals[identity]

    @torch.no_grad()
    def strip(self, model, step: int, seed: int, device) -> np.ndarray | None:
        if not self.candidates or self.others < 1:
            return None
        generator = torch.Generator().manual_seed(seed * 7919 + step)
        index = self.candidates[int(torch.randint(len(self.candidates), (1,), generator=generator))]
        batch = to_device(collate([self.dataset[index]]), device)
        own = int(batch["idindex"][0])
        pool = [i for i in range(len(self.dataset.datasets)) if i != own]
        order = torch.randperm(len(pool), generator=generator).tolist()
        panels = [to_uint8(batch["image"][0]), to_uint8(run_model(model, batch)["irgbrec"][0])]
        for position in order[: self.others]:
            target = to_device(self._neutral(pool[position]), device)
            panels.append(to_uint8(run_model(model, batch, target=target)["irgbrec"][0]))
        return hstack(panels)
