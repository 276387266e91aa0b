"""`ava eval-driver`: a driver against the ground truth of synthetic headset sessions.

For every headset frame of the evaluated subjects the truth file names the dome frame whose
expression it shows; the true code is the frozen decoder's expression code of that dome frame
(what the driver was trained to output). Per segment this reports
- code error: mean squared error per code element, in code units, of the driver and of the
  mean-code baseline (the training subjects' mean code, what a driver that saw nothing would
  output);
- image PSNR: the decoder's render from the driver's code (and from the mean code) against its
  render from the true code, same identity, camera and head pose (the dome frame's), pooled over
  the segment's frames and pixels; the difference is what the driver buys;
- alignment: how often DTW on the driver's codes picks the true dome frame, or one showing the
  same expression (and within one frame), beside a linear time stretch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ava.driver.alignment import align_segments, stretch_segments
from ava.errors import UserError

SEGMENT_TOTAL = "all segments"


@dataclass
class Tally:
    """Sums for one row of the table."""

    frames: int = 0
    code_driver: float = 0.0  # summed squared code errors (per element, averaged later)
    code_mean: float = 0.0
    pixels: int = 0
    image_driver: float = 0.0  # summed squared pixel errors
    image_mean: float = 0.0
    aligned_exact: int = 0
    aligned_near: int = 0
    stretch_exact: int = 0

    def add_renders(self, truth: torch.Tensor, mean: torch.Tensor, driven: list[torch.Tensor]) -> None:
        """Adds the squared pixel errors of the driver's renders and the mean code's against the truth's."""
        for image in driven:
            self.image_driver += float(((image - truth) ** 2).sum())
            self.image_mean += float(((mean - truth) ** 2).sum())
            self.pixels += truth.numel()

    def add(self, other: "Tally") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def row(self) -> dict:
        from ava.runtime.metrics import psnr_from_mse

        frames = max(self.frames, 1)
        driver = psnr_from_mse(self.image_driver / max(self.pixels, 1))
        mean = psnr_from_mse(self.image_mean / max(self.pixels, 1))
        return {"frames": self.frames, "code_mse_driver": self.code_driver / frames,
                "code_mse_mean": self.code_mean / frames, "psnr_driver": driver, "psnr_mean": mean,
                "psnr_gain": driver - mean, "aligned_exact": self.aligned_exact / frames,
                "aligned_within_1": self.aligned_near / frames, "stretch_exact": self.stretch_exact / frames}


@dataclass
class SubjectResult:
    folder: str
    segments: dict[str, Tally] = field(default_factory=dict)
    strip_candidates: list[tuple[float, str, int, int]] = field(default_factory=list)  # (deviation, segment, frame, dome)


def _decoder_for(request, driver, device):
    from ava.driver.setup import load_decoder

    path = Path(request.checkpoint or driver.decoder.get("path", "")).expanduser()
    if not path.is_file():
        raise UserError(f"the decoder this driver was trained against, {path}, does not exist here; pass it with --checkpoint")
    decoder, model = load_decoder(path, device)
    driver.check_decoder(decoder)
    return decoder, model


@torch.no_grad()
def _evaluate_subject(subject, truth, encoder, model, device, strip_count: int) -> SubjectResult:
    from ava.driver.pictures import render_code
    from ava.runtime.headset import frame_index, predict_codes

    result = SubjectResult(subject.folder)
    dome_of = frame_index(subject.dome)
    mean_code = encoder.code_mean.cpu()
    scale = encoder.code_scale.cpu()
    for segment in subject.shared:
        frames = [index for index in subject.headset_segments[segment]
                  if dome_of.get(truth.dome_frame.get(subject.headset.frames[index][1], ""), -1) >= 0]
        if not frames:
            continue
        true_dome = np.array([dome_of[truth.dome_frame[subject.headset.frames[i][1]]] for i in frames])
        views = torch.stack([subject.headset.views(index) for index in frames])
        predicted = predict_codes(encoder, views, device)
        true_codes = subject.codes[true_dome]
        tally = Tally(frames=len(frames))
        tally.code_driver = float(((predicted - true_codes) ** 2).mean(dim=(1, 2, 3)).sum())
        tally.code_mean = float(((mean_code - true_codes) ** 2).mean(dim=(1, 2, 3)).sum())

        # Alignment against the truth, within the segment's usable dome frames.
        dome_ids = np.array(subject.dome_segments[segment])
        standard = ((predicted - encoder.code_mean.cpu()) / scale).reshape(len(frames), -1).double().numpy()
        reference = ((subject.codes - encoder.code_mean.cpu()) / scale).reshape(len(subject.codes), -1).double().numpy()
        pairs = [(np.arange(len(frames)), dome_ids)]
        aligned = align_segments(pairs, standard, reference, band=None)
        stretched = stretch_segments(pairs, len(frames))
        position = {int(dome): rank for rank, dome in enumerate(dome_ids)}
        offsets = np.array([position[int(a)] - position[int(t)] for a, t in zip(aligned, true_dome)])
        # A dome frame with the very code of the true one (a segment that rises and falls back
        # shows some expressions twice) is as right as the true frame.
        alike = np.array([bool(torch.equal(subject.codes[a], subject.codes[t])) for a, t in zip(aligned, true_dome)])
        tally.aligned_exact = int(np.sum((offsets == 0) | alike))
        tally.aligned_near = int(np.sum((np.abs(offsets) <= 1) | alike))
        tally.stretch_exact = int(np.sum([bool(torch.equal(subject.codes[a], subject.codes[t]))
                                          for a, t in zip(stretched, true_dome)]))

        # Renders: per true dome frame, the truth, the mean code and every driver code showing it.
        for dome in np.unique(true_dome):
            mine = np.nonzero(true_dome == dome)[0]
            codes = torch.cat([true_codes[mine[:1]], mean_code[None], predicted[mine]])
            images = [image.clamp(0, 255) for image in render_code(model, subject, int(dome), codes, device)]
            tally.add_renders(images[0], images[1], images[2:])
        result.segments[segment] = tally
        deviation = ((true_codes - mean_code) / scale).pow(2).mean(dim=(1, 2, 3))
        best = int(torch.argmax(deviation))
        result.strip_candidates.append((float(deviation[best]), segment, frames[best], int(true_dome[best])))
    return result


@torch.no_grad()
def _strip(subject, result: SubjectResult, encoder, model, device, count: int,
           truth_codes: dict | None = None) -> np.ndarray | None:
    """Rows [5 IR views | truth | driver | mean code] of the most expressive frame of the
    `count` segments whose truth differs most from the mean; the renders are cropped to the head
    (the truth render's coverage) and enlarged by whole pixels, so the expression can be judged.
    truth_codes: headset frame -> true code, where the truth is not a dome frame's code (encodings)."""
    from ava.driver.pictures import head_strip, render_code
    from ava.runtime.headset import predict_codes

    chosen = sorted(result.strip_candidates, reverse=True)[:count]
    chosen.sort(key=lambda item: list(result.segments).index(item[1]))
    rows = []
    for _, _, frame, dome in chosen:
        views = subject.headset.views(frame)
        predicted = predict_codes(encoder, views[None], device)
        truth = truth_codes[frame][None] if truth_codes is not None else subject.codes[dome : dome + 1]
        codes = torch.cat([truth, predicted, encoder.code_mean.cpu()[None]])
        images, alphas = render_code(model, subject, dome, codes, device, with_alpha=True)
        rows.append((views, images, alphas[0]))
    return head_strip(rows) if rows else None


def _percent(value: float | None) -> str:
    """A share as a percentage; '-' where it does not apply (no alignment against encodings)."""
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown_table(rows: list[dict]) -> str:
    """The result rows as a Markdown table (what eval.md holds and the docs quote)."""
    header = ("| subject | segment | frames | code MSE driver | code MSE mean | PSNR driver (dB) | PSNR mean (dB) "
              "| gain (dB) | DTW exact | DTW within 1 | stretch exact |")
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        lines.append(f"| {row['subject']} | {row['segment']} | {row['frames']} | {row['code_mse_driver']:.3g} | "
                     f"{row['code_mse_mean']:.3g} | {row['psnr_driver']:.2f} | {row['psnr_mean']:.2f} | "
                     f"{row['psnr_gain']:+.2f} | {_percent(row['aligned_exact'])} | {_percent(row['aligned_within_1'])} "
                     f"| {_percent(row['stretch_exact'])} |")
    return "\n".join(lines) + "\n"


def evaluate_driver(request, console) -> dict:
    """`request`: an ava.driver.config.EvalDriverConfig. Returns {"rows", "summary", "files"}."""
    from rich.progress import track

    from ava.checkpoint import load_driver_checkpoint
    from ava.data.encoder import read_encoder_truth
    from ava.driver.data import load_subject
    from ava.driver.release_eval import evaluate_against_encodings, row_without_alignment, truth_source
    from ava.files import write_atomically
    from ava.runtime.device import select_device
    from ava.runtime.headset import driver_dataset_dir, headset_subjects, resolve_subjects
    from ava.runtime.images import save_png

    if request.strip_frames < 0:
        raise UserError("--strip-frames cannot be negative")
    if request.downsample is not None and request.downsample < 1:
        raise UserError("--downsample must be at least 1")
    device = select_device(request.device)
    driver = load_driver_checkpoint(request.driver_checkpoint)
    decoder, model = _decoder_for(request, driver, device)
    encoder = driver.build_encoder().to(device).eval()
    dataset_dir = driver_dataset_dir(request.dataset_dir, driver, decoder)
    resolved = driver.config.get("resolved", {})
    if request.subjects:
        folders = resolve_subjects(request.subjects, headset_subjects(dataset_dir), dataset_dir)
    else:
        folders = list(resolved.get("holdout_subjects", []))
        if not folders:
            raise UserError(f"driver {driver.path} held out no subject; name the subjects to evaluate with --subjects")
    downsample = request.downsample or int(driver.extra_state.get("downsample", 0) or resolved.get("downsample", 8))
    trained_on = set(resolved.get("train_subjects", []))
    seen = sorted(trained_on & set(folders))
    if seen:
        console.print(f"[yellow]note:[/] the driver was trained on {', '.join(seen)}; those rows are not held-out results")

    output = Path(request.output)
    rows: list[dict] = []
    total = Tally()
    files: dict[str, Path] = {}
    sources: dict[str, str] = {}
    for folder in track(folders, description="evaluating", console=console, transient=True,
                        disable=not console.is_interactive):
        sources[folder] = truth_source(request.truth, dataset_dir / folder)
        subject = load_subject(dataset_dir, folder, decoder, model, downsample, encoder.config.image_size, device,
                               camera=request.camera)
        truth_codes = None
        if sources[folder] == "encodings":
            result, truth_codes = evaluate_against_encodings(subject, encoder, model, device)
        else:
            truth = read_encoder_truth(dataset_dir / folder)
            result = _evaluate_subject(subject, truth, encoder, model, device, request.strip_frames)
        shown = row_without_alignment if sources[folder] == "encodings" else dict
        mine = Tally()
        for segment, tally in result.segments.items():
            rows.append(shown({"subject": folder, "segment": segment, **tally.row()}))
            mine.add(tally)
        rows.append(shown({"subject": folder, "segment": SEGMENT_TOTAL, **mine.row()}))
        total.add(mine)
        if request.strip_frames:
            strip = _strip(subject, result, encoder, model, device, request.strip_frames, truth_codes)
            if strip is not None:
                files[folder] = save_png(output / f"{folder}.png", strip)
    summary = {"subject": "all evaluated", "segment": SEGMENT_TOTAL, **total.row()}
    if "encodings" in sources.values():
        summary = row_without_alignment(summary)
    rows.append(summary)
    document = {"driver": str(driver.path), "decoder": str(decoder.path), "dataset_dir": str(dataset_dir),
                "subjects": folders, "held_out": not seen, "truth": sources, "rows": rows}
    write_atomically(output / "eval.json", (json.dumps(document, indent=1) + "\n").encode())
    write_atomically(output / "eval.md", markdown_table(rows).encode())
    files["json"], files["table"] = output / "eval.json", output / "eval.md"
    return {"rows": rows, "summary": summary, "files": files}


def print_table(rows: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="headset driver vs mean-code baseline (PSNR against the render of the true code)")
    for name in ("subject", "segment", "frames", "code MSE driver", "code MSE mean", "PSNR driver", "PSNR mean",
                 "gain dB", "DTW exact", "stretch exact"):
        table.add_column(name, justify="left" if name in ("subject", "segment") else "right")
    for row in rows:
        table.add_row(row["subject"].split("--")[-1], row["segment"], str(row["frames"]), f"{row['code_mse_driver']:.3g}",
                      f"{row['code_mse_mean']:.3g}", f"{row['psnr_driver']:.2f}", f"{row['psnr_mean']:.2f}",
                      f"{row['psnr_gain']:+.2f}", _percent(row["aligned_exact"]), _percent(row["stretch_exact"]),
                      style="bold" if row["segment"] == SEGMENT_TOTAL else None)
    console.print(table)
