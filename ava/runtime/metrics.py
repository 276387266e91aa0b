"""Image metrics shared by training and evaluation: PSNR on held-out cameras and training views.

Held-out cameras and their backgrounds. A camera that was never trained on has an untrained row
in the background model (and in colour calibration), and its backdrop cannot be predicted from
the other cameras: every camera of a dome sees a different wall. Studios record a background
plate per camera for this; here a smooth plate (a PLATE_ROWS x PLATE_COLUMNS bilinear grid) is
fitted by least squares to ONE calibration frame of the held-out camera, weighted by how much
background the model shows there (1 - alpha), and the PSNR is measured on OTHER frames of that
camera with the plate as background. The head itself comes only from the decoder, which never
saw the camera. `psnr_holdout_model_bg` reports the same frames with the model's own (untrained)
background row, for comparison, and `psnr_holdout_head` the plate-composited frames inside the
head's silhouette only (the tracked mesh projected into the camera), where the background plays
no part.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset

from ava.runtime.batch import collate, to_device
from ava.runtime.model import run_model

PLATE_ROWS, PLATE_COLUMNS = 8, 6
PLATE_RIDGE = 1e-3  # keeps plate cells that no pixel constrains (fully covered by the head) finite


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for images in 0..255."""
    return 10.0 * math.log10(255.0**2 / max(mse, 1e-12))


def _locate(dataset: ConcatDataset, index: int):
    part = bisect.bisect_right(dataset.cumulative_sizes, index)
    start = dataset.cumulative_sizes[part - 1] if part else 0
    return dataset.datasets[part], index - start


def spread(count: int, total: int) -> list[int]:
    """`count` indices evenly spread over range(total) (all of them if total <= count)."""
    if total <= count:
        return list(range(total))
    return sorted({int(round(position)) for position in np.linspace(0, total - 1, count)})


def _plate_basis(height: int, width: int, device) -> torch.Tensor:
    """[H*W, R*C]: bilinear upsampling of the plate grid, as a matrix."""
    cells = PLATE_ROWS * PLATE_COLUMNS
    unit = torch.eye(cells, device=device).view(cells, 1, PLATE_ROWS, PLATE_COLUMNS)
    upsampled = F.interpolate(unit, size=(height, width), mode="bilinear", align_corners=True)
    return upsampled.view(cells, height * width).T


def fit_plate(foreground: torch.Tensor, alpha: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Background plate [3,H,W] minimising |foreground + (1-alpha) plate - image|^2.

    foreground = irgbrec - (1-alpha) bg_model [3,H,W], alpha [1,H,W], image [3,H,W] (0..255).
    """
    _, height, width = image.shape
    basis = _plate_basis(height, width, image.device)  # [P, cells]
    visible = (1.0 - alpha).reshape(-1, 1)  # [P,1]
    design = basis * visible
    residual = (image - foreground).reshape(3, -1).T  # [P,3]
    normal = design.T @ design + PLATE_RIDGE * torch.eye(basis.shape[1], device=image.device)
    cells = torch.linalg.solve(normal, design.T @ residual)  # [cells,3]
    return (basis @ cells).T.reshape(3, height, width)


def head_mask(sample: dict, vertmean: torch.Tensor, vertstd: float) -> torch.Tensor:
    """bool [H,W]: pixels under the projected tracked mesh of one (unbatched) sample, its vertex
    splats closed by a 3x3 dilation. Pixel (x, y) looks along the ray through column x, row y."""
    height, width = sample["image"].shape[-2:]
    verts = sample["verts"] * vertstd + vertmean  # [V,3] mm, head frame
    in_camera = (verts - sample["campos"]) @ sample["camrot"].T
    depth = in_camera[:, 2].clamp_min(1e-6)
    pixels = (sample["focal"] * in_camera[:, :2] / depth[:, None] + sample["princpt"]).round().long()
    inside = (in_camera[:, 2] > 0) & (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    mask = torch.zeros(height, width)
    mask[pixels[inside, 1], pixels[inside, 0]] = 1.0
    return F.max_pool2d(mask[None, None], 3, stride=1, padding=1)[0, 0] > 0


@torch.no_grad()
def _render_split(model, sample: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(foreground [3,H,W] without background, alpha [1,H,W], model background [3,H,W])."""
    batch = to_device(collate([sample]), device)
    output = run_model(model, batch, outputs=("ialpha", "bg"))
    alpha = output["ialpha"][0]
    background = output["bg"][0] if output.get("bg") is not None else torch.zeros_like(output["irgbrec"][0])
    return output["irgbrec"][0] - (1.0 - alpha) * background, alpha, background


@torch.no_grad()
def holdout_psnr(model, holdout: ConcatDataset, count: int, device, stats) -> dict[str, float]:
    """PSNR on up to `count` held-out samples (see the module docstring); {} if none."""
    by_camera: dict[tuple[int, str], list[int]] = defaultdict(list)  # (part, camera) -> indices
    for index in range(len(holdout)):
        part, local = _locate(holdout, index)
        by_camera[(id(part), part.sample_ids(local)[1])].append(index)
    calibration = {key: indices[0] for key, indices in by_camera.items()}
    evaluable = [index for indices in by_camera.values() for index in indices[1:]]
    chosen = [evaluable[i] for i in spread(count, len(evaluable))]
    if not chosen:
        return {}
    plates: dict[tuple[int, str], torch.Tensor] = {}
    squared_plate = squared_model = squared_head = 0.0
    pixels = head_pixels = 0
    vertmean = torch.from_numpy(stats.vertmean)
    for index in chosen:
        part, local = _locate(holdout, index)
        key = (id(part), part.sample_ids(local)[1])
        if key not in plates:
            calibration_sample = holdout[calibration[key]]
            foreground, alpha, _ = _render_split(model, calibration_sample, device)
            plates[key] = fit_plate(foreground, alpha, calibration_sample["image"].to(device))
        sample = holdout[index]
        foreground, alpha, background = _render_split(model, sample, device)
        image = sample["image"].to(device)
        with_plate = foreground + (1.0 - alpha) * plates[key]
        with_model_bg = foreground + (1.0 - alpha) * background
        plate_error = (with_plate.clamp(0, 255) - image) ** 2
        squared_plate += float(plate_error.sum())
        squared_model += float(((with_model_bg.clamp(0, 255) - image) ** 2).sum())
        pixels += image.numel()
        mask = head_mask(sample, vertmean, stats.vertstd).to(device)
        squared_head += float(plate_error[:, mask].sum())
        head_pixels += int(mask.sum()) * image.shape[0]
    return {
        "psnr_holdout": psnr_from_mse(squared_plate / pixels),
        "psnr_holdout_model_bg": psnr_from_mse(squared_model / pixels),
        "psnr_holdout_head": psnr_from_mse(squared_head / max(head_pixels, 1)),
        "holdout_samples": len(chosen),
    }


@torch.no_grad()
def training_view_psnr(model, dataset, count: int, device) -> float:
    """PSNR of `count` training samples spread over the dataset (the model's own background)."""
    squared, pixels = 0.0, 0
    for index in spread(count, len(dataset)):
        batch = to_device(collate([dataset[index]]), device)
        rendered = run_model(model, batch)["irgbrec"].clamp(0, 255)
        squared += float(((rendered - batch["image"]) ** 2).sum())
        pixels += batch["image"].numel()
    return psnr_from_mse(squared / pixels)
