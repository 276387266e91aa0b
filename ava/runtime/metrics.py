"""Image metrics shared by training (`ava train`'s held-out PSNR) and evaluation (`ava eval`):
PSNR on held-out cameras and training views, SSIM, and LPIPS where its weights are on disk.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset

from ava.data.collate import collate
from ava.runtime.batch import to_device
from ava.runtime.cameras import project_points
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
    projected, in_camera = project_points(verts, sample["camrot"], sample["campos"], sample["focal"], sample["princpt"])
    pixels = projected.round().long()
    inside = (in_camera[:, 2] > 0) & (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    mask = torch.zeros(height, width)
    mask[pixels[inside, 1], pixels[inside, 0]] = 1.0
    return F.max_pool2d(mask[None, None], 3, stride=1, padding=1)[0, 0] > 0


@dataclass
class IdentityColour:
    """An identity row of the colour calibration fitted for a subject the model has no row for
    (`fit_identity_colour`): gain [3] and bias [3], added to the camera's row exactly as a trained
    identity's wident and bident are (ava.nn.colorcal.Colorcal)."""

    gain: torch.Tensor
    bias: torch.Tensor

    def to_dict(self) -> dict:
        return {"gain": [float(value) for value in self.gain], "bias": [float(value) for value in self.bias]}


def _uncalibrated(model, foreground: torch.Tensor, camindex: int) -> torch.Tensor:
    """The decoder's colour [3,H,W] before colour calibration, from the calibrated `foreground` of
    an unseen identity (whose calibration is the camera's row alone)."""
    gain = model.colorcal.wcam[camindex].to(foreground.device)[:, None, None]
    bias = model.colorcal.bcam[camindex].to(foreground.device)[:, None, None]
    return (foreground - bias) / gain


@torch.no_grad()
def _render_split(model, sample: dict, device, target: dict | None = None,
                  colour: IdentityColour | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(foreground [3,H,W] without background, alpha [1,H,W], model background [3,H,W]).

    target: the identity to render (run_model's; default the sample's own neutral). colour: a
    fitted identity row for a sample of an unseen identity (idindex < 0)."""
    batch = to_device(collate([sample]), device)
    output = run_model(model, batch, outputs=("ialpha", "bg"), target=None if target is None else to_device(target, device))
    alpha = output["ialpha"][0]
    background = output["bg"][0] if output.get("bg") is not None else torch.zeros_like(output["irgbrec"][0])
    foreground = output["irgbrec"][0] - (1.0 - alpha) * background
    if colour is not None:
        raw = _uncalibrated(model, foreground, int(sample["camindex"]))
        foreground = foreground + colour.gain.to(device)[:, None, None] * raw + colour.bias.to(device)[:, None, None]
    return foreground, alpha, background


@torch.no_grad()
def camera_plate(model, calibration_sample: dict, device, target: dict | None = None,
                 colour: IdentityColour | None = None) -> torch.Tensor:
    """The background plate [3,H,W] of one held-out camera, fitted to `calibration_sample` (a frame
    of that camera that is then left out of the measurement); `target` and `colour` as for
    `held_out_view`, so that the plate is fitted under the render it will be composited with."""
    foreground, alpha, _ = _render_split(model, calibration_sample, device, target, colour)
    return fit_plate(foreground, alpha, calibration_sample["image"].to(device))


@torch.no_grad()
def fit_identity_colour(model, samples, device, vertmean: torch.Tensor, vertstd: float,
                        target: dict | None = None) -> IdentityColour:
    """The identity row of the colour calibration (gain, bias per channel) that best explains
    `samples` of one unseen subject (idindex < 0): least squares over the pixels inside the tracked
    mesh's silhouette, with the model's background. Fit it on frames and cameras that are never
    measured. `target` as for `held_out_view`."""
    normal = torch.zeros(3, 2, 2, dtype=torch.float64)
    right = torch.zeros(3, 2, dtype=torch.float64)
    for sample in samples:
        foreground, alpha, background = _render_split(model, sample, device, target)
        inside = head_mask(sample, vertmean, vertstd).to(device)
        raw = _uncalibrated(model, foreground, int(sample["camindex"]))[:, inside].double().cpu()  # [3,P]
        residual = (sample["image"].to(device) - foreground - (1.0 - alpha) * background)[:, inside].double().cpu()
        design = torch.stack([raw, torch.ones_like(raw)], dim=-1)  # [3,P,2]
        normal += design.transpose(1, 2) @ design
        right += (design.transpose(1, 2) @ residual[..., None])[..., 0]
    # A small ridge keeps a channel without pixels (or without contrast) at the neutral row.
    solution = torch.linalg.solve(normal + 1e-6 * torch.eye(2, dtype=torch.float64), right)  # [3,2]
    return IdentityColour(gain=solution[:, 0].float(), bias=solution[:, 1].float())


@dataclass
class HeldOutView:
    """One sample rendered for measurement (tensors on the model's device, 0..255).

    image: the photo [3,H,W]; with_plate / with_model_bg: the render [3,H,W] composited over the
    camera's fitted plate / over the model's own background row, clamped to 0..255; head: bool
    [H,W], the tracked mesh's silhouette (`head_mask`).
    """

    image: torch.Tensor
    with_plate: torch.Tensor
    with_model_bg: torch.Tensor
    head: torch.Tensor


@torch.no_grad()
def held_out_view(model, sample: dict, plate: torch.Tensor, device, vertmean: torch.Tensor,
                  vertstd: float, target: dict | None = None, colour: IdentityColour | None = None) -> HeldOutView:
    """Renders `sample` and composites it over `plate` (from `camera_plate`) and over the model's
    background. vertmean [V,3] (mm) and vertstd undo the vertex normalisation for the head mask.
    target: a dict with `neut_avgtex` [1,3,T,T] and `neut_verts` [1,V,3] to render another identity
    (a baseline); colour: a fitted identity colour row (`fit_identity_colour`) for an unseen subject."""
    foreground, alpha, background = _render_split(model, sample, device, target, colour)
    return HeldOutView(
        image=sample["image"].to(device),
        with_plate=(foreground + (1.0 - alpha) * plate).clamp(0, 255),
        with_model_bg=(foreground + (1.0 - alpha) * background).clamp(0, 255),
        head=head_mask(sample, vertmean, vertstd).to(device),
    )


@dataclass
class SquaredErrors:
    """Sums of squared errors over views, so that PSNR is pooled over pixels (the PSNR of the mean
    squared error, not the mean of per-image PSNRs)."""

    plate: float = 0.0
    model_bg: float = 0.0
    head: float = 0.0
    pixels: int = 0
    head_pixels: int = 0
    views: int = 0

    @staticmethod
    def of(view: HeldOutView) -> "SquaredErrors":
        """The sums of one view."""
        plate_error = (view.with_plate - view.image) ** 2
        return SquaredErrors(
            plate=float(plate_error.sum()),
            model_bg=float(((view.with_model_bg - view.image) ** 2).sum()),
            head=float(plate_error[:, view.head].sum()),
            pixels=view.image.numel(),
            head_pixels=int(view.head.sum()) * view.image.shape[0],
            views=1,
        )

    def __add__(self, other: "SquaredErrors") -> "SquaredErrors":
        return SquaredErrors(*(getattr(self, name) + getattr(other, name) for name in
                               ("plate", "model_bg", "head", "pixels", "head_pixels", "views")))

    def psnr(self) -> dict[str, float]:
        """{"psnr": with the plate, "psnr_head": inside the head mask, "psnr_model_bg": with the
        model's background}, in dB."""
        return {
            "psnr": psnr_from_mse(self.plate / max(self.pixels, 1)),
            "psnr_head": psnr_from_mse(self.head / max(self.head_pixels, 1)),
            "psnr_model_bg": psnr_from_mse(self.model_bg / max(self.pixels, 1)),
        }


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
    total = SquaredErrors()
    vertmean = torch.from_numpy(stats.vertmean)
    for index in chosen:
        part, local = _locate(holdout, index)
        key = (id(part), part.sample_ids(local)[1])
        if key not in plates:
            plates[key] = camera_plate(model, holdout[calibration[key]], device)
        total = total + SquaredErrors.of(held_out_view(model, holdout[index], plates[key], device, vertmean,
                                                       stats.vertstd))
    psnr = total.psnr()
    return {
        "psnr_holdout": psnr["psnr"],
        "psnr_holdout_model_bg": psnr["psnr_model_bg"],
        "psnr_holdout_head": psnr["psnr_head"],
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


# SSIM with the usual Gaussian window (Wang et al. 2004): 11 pixels, sigma 1.5, on 0..255 images.
SSIM_KERNEL, SSIM_SIGMA = 11, 1.5


@torch.no_grad()
def structural_similarity(rendered: torch.Tensor, target: torch.Tensor,
                          mask: torch.Tensor | None = None) -> tuple[float, float | None]:
    """(SSIM over the whole image, mean of the SSIM map inside `mask`) of [3,H,W] images in 0..255
    (torchmetrics' implementation; the map is averaged over channels). The second value is None
    when no mask is given or it is empty. Images need at least 11 pixels on each side."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    height, width = target.shape[-2:]
    if min(height, width) < SSIM_KERNEL:
        raise ValueError(f"SSIM needs images of at least {SSIM_KERNEL}x{SSIM_KERNEL} pixels, got {width}x{height}")
    whole, ssim_map = structural_similarity_index_measure(
        rendered[None].float(), target[None].float(), gaussian_kernel=True, sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL, data_range=255.0, return_full_image=True)
    inside = None
    if mask is not None and bool(mask.any()):
        inside = float(ssim_map[0].mean(dim=0)[mask].mean())
    return float(whole), inside


LPIPS_NETWORK = "alexnet"  # the LPIPS paper's default backbone, and the cheapest


def lpips_weights_file() -> tuple[Path | None, str]:
    """(path of the ImageNet backbone weights LPIPS needs, "") when they are on disk, else
    (None, why not). Nothing is downloaded: torchvision keeps such files in torch.hub's cache
    (`$TORCH_HOME/hub/checkpoints`), where they are looked for."""
    try:
        import torchvision  # noqa: F401
        from torchvision.models import AlexNet_Weights
    except Exception as error:  # ImportError, or a torchvision built for another torch
        return None, f"torchvision is not usable here ({type(error).__name__}: {error})"
    url = AlexNet_Weights.DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        return None, f"the {LPIPS_NETWORK} weights are not at {path} (ava never downloads them; fetch {url} there)"
    return path, ""


class Lpips:
    """LPIPS (Zhang et al. 2018; torchmetrics' implementation, AlexNet backbone) of [3,H,W] images
    in 0..255; lower is more similar. Build it with `Lpips.load`, which never downloads."""

    def __init__(self, metric) -> None:
        self.metric = metric

    @staticmethod
    def load(device) -> tuple["Lpips | None", str]:
        """(metric, "") when the weights are on disk, else (None, the reason it is skipped)."""
        path, reason = lpips_weights_file()
        if path is None:
            return None, reason
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()
        return Lpips(metric), ""

    @torch.no_grad()
    def __call__(self, rendered: torch.Tensor, target: torch.Tensor) -> float:
        return float(self.metric((rendered[None] / 255.0).clamp(0, 1), (target[None] / 255.0).clamp(0, 1)))
