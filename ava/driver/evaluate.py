"""`ava eval-driver`: drivers against the ground truth of synthetic headset sessions.

For every headset frame of the evaluated subjects the truth file gives the expression it shows;
the true code is the frozen decoder's expression code of the subject's ground-truth mesh and
texture for that expression (ava.driver.truth). Per segment this reports
- code error: mean squared error per code element, in code units, of the driver and of the
  mean-code baseline (the training subjects' mean dome code, what a driver that saw nothing would
  output);
- image PSNR: the decoder's render from the driver's code (and from the mean code) against its
  render from the true code, same identity, camera and head pose (the subject's neutral dome
  frame's), pooled over the head's pixels (where the true-code render is opaque) of the segment's
  frames; the difference is what the driver buys;
- alignment: how often a linear time stretch, and DTW on the driver's codes, pick a dome frame
  within one frame of the truth (ava.driver.truth's definition: the nearest dome frame in
  expression space and its neighbours).
Per frame it also keeps the mouth and eye openness of the truth and as read from the decoder's
mesh for the driver's and the true code (`openness`), for curves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ava.driver.alignment import align_segments, linear_stretch
from ava.errors import UserError

SEGMENT_TOTAL = "all segments"
RENDER_BATCH = 8
# Openness read from the expression controls: mouth = jaw opening; eyes = 1 - mean eyelid closure.
# The first name a truth file has is used (controls of older and newer synthetic worlds).
MOUTH_CONTROLS = (("jaw_open",), ("jaw",))
EYE_CONTROLS = (("blink_left", "blink_right"), ("blink",))


@dataclass
class Tally:
    """Sums for one row of the table, for one code source (a driver, or the mean code)."""

    frames: int = 0
    code: float = 0.0  # summed per-frame mean squared code errors
    pixels: int = 0
    image: float = 0.0  # summed squared pixel errors over the head's pixels
    aligned_frames: int = 0  # frames of segments the dome session also has
    aligned_within: int = 0  # DTW on this source's codes: within one frame of the truth
    stretch_within: int = 0

    def add(self, other: "Tally") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def code_mse(self) -> float:
        return self.code / max(self.frames, 1)

    def psnr(self) -> float:
        from ava.runtime.metrics import psnr_from_mse

        return psnr_from_mse(self.image / max(self.pixels, 1))


@dataclass
class SubjectResult:
    """One subject's tallies per source and segment, and its per-frame records."""

    folder: str
    tallies: dict[str, dict[str, Tally]] = field(default_factory=dict)  # source -> segment -> Tally
    frames: list[dict] = field(default_factory=list)


def _pick(controls: tuple[str, ...], choices: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    for names in choices:
        if all(name in controls for name in names):
            return names
    return ()


def openness_of(vectors: np.ndarray, controls: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{"mouth", "eyes"} openness [n] of expression vectors [n,C]: jaw opening, and 1 - the mean
    eyelid closure (each only where the controls exist)."""
    result = {}
    mouth, eyes = _pick(controls, MOUTH_CONTROLS), _pick(controls, EYE_CONTROLS)
    if mouth:
        result["mouth"] = vectors[:, [controls.index(name) for name in mouth]].mean(axis=1)
    if eyes:
        result["eyes"] = 1.0 - vectors[:, [controls.index(name) for name in eyes]].mean(axis=1)
    return result


@torch.no_grad()
def decode(model, subject, dome_index: int, codes: torch.Tensor, device: torch.device):
    """(images [n,3,H,W] 0..255, coverage [n,1,H,W], decoded mesh [n,V,3]) of the decoder with codes
    [n,16,4,4], in dome sample `dome_index` of the subject (its camera, head pose and identity)."""
    from ava.data.collate import collate
    from ava.runtime.batch import to_device
    from ava.runtime.model import run_model

    images, alphas, meshes = [], [], []
    for start in range(0, len(codes), RENDER_BATCH):
        chunk = codes[start : start + RENDER_BATCH]
        batch = to_device(collate([subject.dome[dome_index]] * len(chunk)), device)
        output = run_model(model, batch, code=chunk.to(device), outputs=("ialpha",))
        images.append(output["irgbrec"].clamp(0, 255).cpu())
        alphas.append(output["ialpha"].cpu())
        meshes.append(output["verts"].float().cpu())
    return torch.cat(images), torch.cat(alphas), torch.cat(meshes)


class OpennessReader:
    """Reads mouth and eye openness off the decoder's mesh for a code, in the controls' units: the
    projection of the mesh's displacement from the subject's rest code onto the displacement of
    the code of the truth with the control fully on (jaw open; both eyes closed)."""

    def __init__(self, subject, truth, geometry, model, device: torch.device, dome_index: int) -> None:
        from ava.driver.truth import true_codes

        controls = truth.controls
        poses = [np.zeros(len(controls))]
        self.names = []
        for name, choices in (("mouth", MOUTH_CONTROLS), ("eyes", EYE_CONTROLS)):
            picked = _pick(controls, choices)
            if picked:
                pose = np.zeros(len(controls))
                pose[[controls.index(control) for control in picked]] = 1.0
                poses.append(pose)
                self.names.append(name)
        codes = true_codes(subject, np.stack(poses), controls, geometry, model, device)
        meshes = decode(model, subject, dome_index, codes, device)[2].flatten(1).double()
        self.rest = meshes[0]
        self.directions = meshes[1:] - self.rest

    def __call__(self, meshes: torch.Tensor) -> dict[str, np.ndarray]:
        """{"mouth", "eyes"} [n] of decoded meshes [n,V,3]; eyes openness is 1 - closure."""
        displacement = meshes.flatten(1).double() - self.rest
        result = {}
        for name, direction in zip(self.names, self.directions):
            amount = (displacement @ direction / direction.dot(direction).clamp(min=1e-12)).numpy()
            result[name] = amount if name == "mouth" else 1.0 - amount
        return result


def _decoder_for(checkpoint: Path | None, driver, device):
    from ava.driver.setup import load_decoder

    path = Path(checkpoint or driver.decoder.get("path", "")).expanduser()
    if not path.is_file():
        raise UserError(f"the decoder this driver was trained against, {path}, does not exist here; pass it with --checkpoint")
    decoder, model = load_decoder(path, device)
    driver.check_decoder(decoder)
    return decoder, model


def _dome_alignment(subject, truth, segment: str, codes: torch.Tensor, frames: list[int], scale) -> tuple[int, int, int]:
    """(frames judged, DTW within one frame, stretch within one frame) of one segment: DTW of the
    codes [m,16,4,4] of headset frames `frames` against the subject's dome codes of the segment."""
    from ava.driver.truth import expression_distances, within_one_frame

    dome_ids = subject.dome_segments.get(segment)
    if not dome_ids:
        return 0, 0, 0
    shown = np.stack([truth.expression[subject.headset.frames[index][1]] for index in frames])
    references = np.stack([truth.dome_expression[subject.dome.sample_ids(index)[0]] for index in dome_ids])
    distances = expression_distances(shown, references)
    standard = (codes / scale).reshape(len(frames), -1).double().numpy()
    reference = (subject.codes[dome_ids] / scale).reshape(len(dome_ids), -1).double().numpy()
    aligned = align_segments([(np.arange(len(frames)), np.arange(len(dome_ids)))], standard, reference, band=None)
    stretched = linear_stretch(len(frames), len(dome_ids))
    return (len(frames), int(within_one_frame(aligned, distances).sum()),
            int(within_one_frame(stretched, distances).sum()))


@torch.no_grad()
def evaluate_subject(subject, truth, geometry, sources: dict[str, torch.Tensor], model, device: torch.device,
                     scale: torch.Tensor, true: torch.Tensor | None = None) -> SubjectResult:
    """Tallies per segment of every code source (name -> codes [M,16,4,4], one per headset frame in
    subject.headset.frames order; "mean code" included by the caller) against the true codes.

    scale [16,4,4]: the training codes' spread (the drivers' standard units, for DTW);
    true: the true codes [M,16,4,4] if already computed (else from the truth geometry).
    """
    from ava.driver.truth import headset_true_codes
    from ava.runtime.driving import neutral_sample_index

    if true is None:
        true = headset_true_codes(subject, truth, geometry, model, device)
    dome_index = neutral_sample_index(subject.dome)
    reader = OpennessReader(subject, truth, geometry, model, device, dome_index)
    vectors = np.stack([truth.expression[frame] for _, frame in subject.headset.frames])
    truth_openness = openness_of(vectors, truth.controls)
    result = SubjectResult(subject.folder, {name: {} for name in sources})
    for segment, frames in subject.headset_segments.items():
        index = torch.tensor(frames)
        truth_images, truth_alpha, truth_meshes = decode(model, subject, dome_index, true[index], device)
        head = (truth_alpha > 0.5).expand_as(truth_images)
        true_read = reader(truth_meshes)
        records = [{"segment": segment, "frame_id": subject.headset.frames[i][1], "truth": vectors[i].tolist(),
                    "openness_truth": {k: float(v[i]) for k, v in truth_openness.items()},
                    "openness_true_code": {k: float(v[n]) for k, v in true_read.items()}, "sources": {}}
                   for n, i in enumerate(frames)]
        for name, codes in sources.items():
            mine = codes[index]
            images, _, meshes = decode(model, subject, dome_index, mine, device)
            squared = ((images - truth_images) ** 2) * head
            code_errors = ((mine - true[index]) ** 2).mean(dim=(1, 2, 3))
            judged, aligned, stretched = _dome_alignment(subject, truth, segment, mine, frames, scale)
            result.tallies[name][segment] = Tally(
                frames=len(frames), code=float(code_errors.sum()), pixels=int(head.sum()), image=float(squared.sum()),
                aligned_frames=judged, aligned_within=aligned, stretch_within=stretched)
            read = reader(meshes)
            for n, record in enumerate(records):
                record["sources"][name] = {"code_mse": float(code_errors[n]),
                                           "image_sse": float(squared[n].sum()), "pixels": int(head[n].sum()),
                                           "openness": {k: float(v[n]) for k, v in read.items()}}
        result.frames += records
    return result


def table_rows(results: list[SubjectResult], driver: str, baseline: str = "mean code") -> list[dict]:
    """Rows per subject and segment (and totals) comparing source `driver` with `baseline`."""
    rows = []
    everything = {driver: Tally(), baseline: Tally()}
    for result in results:
        mine = {driver: Tally(), baseline: Tally()}
        for segment, tally in result.tallies[driver].items():
            rows.append(_row(result.folder, segment, tally, result.tallies[baseline][segment]))
            mine[driver].add(tally)
            mine[baseline].add(result.tallies[baseline][segment])
        rows.append(_row(result.folder, SEGMENT_TOTAL, mine[driver], mine[baseline]))
        for name in everything:
            everything[name].add(mine[name])
    rows.append(_row("all evaluated", SEGMENT_TOTAL, everything[driver], everything[baseline]))
    return rows


def _row(subject: str, segment: str, driver: Tally, mean: Tally) -> dict:
    judged = driver.aligned_frames
    return {"subject": subject, "segment": segment, "frames": driver.frames, "code_mse_driver": driver.code_mse(),
            "code_mse_mean": mean.code_mse(), "psnr_driver": driver.psnr(), "psnr_mean": mean.psnr(),
            "psnr_gain": driver.psnr() - mean.psnr(),
            # None where no frame could be judged (real headset frames: no dome truth to align to)
            "aligned_within_1": driver.aligned_within / judged if judged else None,
            "stretch_within_1": driver.stretch_within / judged if judged else None}


def totals(results: list[SubjectResult], source: str) -> Tally:
    """One source's tally over every subject and segment."""
    total = Tally()
    for result in results:
        for tally in result.tallies[source].values():
            total.add(tally)
    return total


def _percent(value: float | None) -> str:
    """A share as a percentage; '-' where it does not apply (no alignment against encodings)."""
    return "-" if value is None else f"{100 * value:.0f}%"


@torch.no_grad()
def _strip(subject, frames: list[int], true: torch.Tensor, driver: torch.Tensor, mean: torch.Tensor, model, device,
           count: int) -> np.ndarray | None:
    """Rows [5 IR views | true-code render | driver | mean code] of the `count` headset frames (of
    `frames`, whose true and driver codes are `true`, `driver` [n,16,4,4]) whose truth is farthest
    from the mean code, one per segment at most; renders in the neutral dome view, cropped to the
    head (ava.driver.pictures.head_strip)."""
    from ava.driver.pictures import head_strip
    from ava.runtime.driving import neutral_sample_index

    deviation = ((true - mean) ** 2).mean(dim=(1, 2, 3))
    best: dict[str, int] = {}
    for position, frame in enumerate(frames):
        segment = subject.headset.frames[frame][0]
        if segment not in best or deviation[position] > deviation[best[segment]]:
            best[segment] = position
    chosen = sorted(sorted(best.values(), key=lambda p: -float(deviation[p]))[:count])
    dome_index = neutral_sample_index(subject.dome)
    rows = []
    for position in chosen:
        images, alphas, _ = decode(model, subject, dome_index, torch.stack([true[position], driver[position], mean]),
                                   device)
        rows.append((subject.headset.views(frames[position]), list(images), alphas[0]))
    return head_strip(rows, ["five IR views", "true code", "driver", "mean code"]) if rows else None


def markdown_table(rows: list[dict]) -> str:
    """The result rows as a Markdown table (what eval.md holds and the docs quote)."""
    header = ("| subject | segment | frames | code MSE driver | code MSE mean | PSNR driver (dB) | PSNR mean (dB) "
              "| gain (dB) | DTW within 1 | stretch within 1 |")
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        lines.append(f"| {row['subject']} | {row['segment']} | {row['frames']} | {row['code_mse_driver']:.3g} | "
                     f"{row['code_mse_mean']:.3g} | {row['psnr_driver']:.2f} | {row['psnr_mean']:.2f} | "
                     f"{row['psnr_gain']:+.2f} | {_percent(row['aligned_within_1'])} "
                     f"| {_percent(row['stretch_within_1'])} |")
    return "\n".join(lines) + "\n"


def driver_codes(encoder, subject, device: torch.device) -> torch.Tensor:
    """[M,16,4,4] the driver's code of every headset frame of `subject` (with its neutral frame if
    the driver is conditioned on one)."""
    from ava.runtime.driving import predict_codes

    views = torch.stack([subject.headset.views(index) for index in range(len(subject.headset))])
    neutral = subject.neutral_views() if encoder.config.neutral else None
    return predict_codes(encoder, views, device, neutral=neutral)


def evaluate_driver(request, console) -> dict:
    """`request`: an ava.driver.config.EvalDriverConfig. Returns {"rows", "summary", "files"}."""
    from rich.progress import track

    from ava.checkpoint import load_driver_checkpoint
    from ava.data.headset_capture import read_encoder_truth
    from ava.driver.data import load_subject
    from ava.driver.release_eval import evaluate_against_encodings, truth_source
    from ava.driver.truth import headset_true_codes
    from ava.files import write_atomically
    from ava.runtime.device import select_device
    from ava.runtime.driving import driver_dataset_dir, headset_subjects, resolve_subjects
    from ava.runtime.images import save_png
    from ava.synth.headset_sessions import TruthGeometry

    if request.strip_frames < 0:
        raise UserError("--strip-frames cannot be negative")
    if request.downsample is not None and request.downsample < 1:
        raise UserError("--downsample must be at least 1")
    device = select_device(request.device)
    driver = load_driver_checkpoint(request.driver_checkpoint)
    decoder, model = _decoder_for(request.checkpoint, driver, device)
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
    sources = {folder: truth_source(request.truth, dataset_dir / folder) for folder in folders}
    # Fails early where the synthetic truth is missing or unreadable.
    truths = {folder: read_encoder_truth(dataset_dir / folder) for folder in folders if sources[folder] == "synthetic"}
    geometry = TruthGeometry(dataset_dir)

    output = Path(request.output)
    results: list[SubjectResult] = []
    files: dict[str, Path] = {}
    for folder in track(folders, description="evaluating", console=console, transient=True,
                        disable=not console.is_interactive):
        subject = load_subject(dataset_dir, folder, decoder, model, downsample, encoder.config.image_size, device,
                               camera=request.camera)
        predicted = driver_codes(encoder, subject, device)
        mean = encoder.code_mean.cpu()
        if sources[folder] == "encodings":
            result, frames, true = evaluate_against_encodings(subject, predicted, mean, model, device)
        else:
            true = headset_true_codes(subject, truths[folder], geometry, model, device)
            frames = list(range(len(true)))
            result = evaluate_subject(subject, truths[folder], geometry,
                                      {"driver": predicted, "mean code": mean.expand(len(true), -1, -1, -1).clone()},
                                      model, device, encoder.code_scale.cpu(), true=true)
        results.append(result)
        if request.strip_frames:
            strip = _strip(subject, frames, true, predicted[frames], mean, model, device, request.strip_frames)
            if strip is not None:
                files[folder] = save_png(output / f"{folder}.png", strip)
    rows = table_rows(results, "driver")
    summary = rows[-1]
    document = {"driver": str(driver.path), "decoder": str(decoder.path), "dataset_dir": str(dataset_dir),
                "subjects": folders, "held_out": not seen, "truth": sources, "rows": rows,
                "frames": {result.folder: result.frames for result in results}}
    write_atomically(output / "eval.json", (json.dumps(document, indent=1) + "\n").encode())
    write_atomically(output / "eval.md", markdown_table(rows).encode())
    files["json"], files["table"] = output / "eval.json", output / "eval.md"
    return {"rows": rows, "summary": summary, "files": files}


def print_table(rows: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="headset driver vs mean-code baseline (PSNR against the render of the true code)")
    for name in ("subject", "segment", "frames", "code MSE driver", "code MSE mean", "PSNR driver", "PSNR mean",
                 "gain dB", "DTW within 1", "stretch within 1"):
        table.add_column(name, justify="left" if name in ("subject", "segment") else "right")
    for row in rows:
        table.add_row(row["subject"].split("--")[-1], row["segment"], str(row["frames"]), f"{row['code_mse_driver']:.3g}",
                      f"{row['code_mse_mean']:.3g}", f"{row['psnr_driver']:.2f}", f"{row['psnr_mean']:.2f}",
                      f"{row['psnr_gain']:+.2f}", _percent(row["aligned_within_1"]),
                      _percent(row["stretch_within_1"]),
                      style="bold" if row["segment"] == SEGMENT_TOTAL else None)
    console.print(table)
