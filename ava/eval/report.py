"""`ava eval`'s outputs: summaries per identity, camera and overall; JSON, CSV, a table and an
example picture.

PSNRs are pooled over pixels (the PSNR of the summed squared error, as training's held-out PSNR);
SSIM and LPIPS are means over images.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ava.eval.measure import Measured, ViewResult
from ava.runtime.metrics import SquaredErrors

METRICS = ("psnr", "psnr_head", "psnr_mask", "psnr_model_bg", "ssim", "ssim_head", "lpips")
# Higher is better for every metric but LPIPS.
LOWER_IS_BETTER = {"lpips"}
HEADINGS = {"psnr": "PSNR", "psnr_head": "PSNR head", "psnr_model_bg": "PSNR model bg", "psnr_mask": "PSNR mask", "ssim": "SSIM",
            "ssim_head": "SSIM head", "lpips": "LPIPS"}
ALL = "all"


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def summarise(views: list[ViewResult]) -> dict:
    """{"views": N, "psnr", "psnr_head", "psnr_model_bg", "psnr_mask" (dB, pooled; the last over
    the views with a foreground mask), "ssim", "ssim_head", "lpips" (means; None when not
    measured)} of a group of views."""
    from ava.eval import extras

    errors = sum((view.errors for view in views), SquaredErrors())
    return {
        "views": len(views),
        **(errors.psnr() if views else dict.fromkeys(("psnr", "psnr_head", "psnr_model_bg"))),
        **extras.summarise(views),
        "ssim": _mean([view.ssim for view in views]),
        "ssim_head": _mean([view.ssim_head for view in views]),
        "lpips": _mean([view.lpips for view in views]),
    }


def grouped(measured: Measured) -> dict:
    """{"overall": summary, "identities": {identity: {**summary, "cameras": {camera: summary}}}}."""
    identities: dict[str, dict] = {}
    for identity in dict.fromkeys(view.identity for view in measured.views):
        mine = [view for view in measured.views if view.identity == identity]
        cameras = {camera: summarise([view for view in mine if view.camera == camera])
                   for camera in dict.fromkeys(view.camera for view in mine)}
        identities[identity] = {**summarise(mine), "cameras": cameras}
    return {"overall": summarise(measured.views), "identities": identities}


def summary_rows(label: str, groups: dict) -> list[dict]:
    """CSV rows: one per (identity, camera), per identity (camera "all") and overall."""
    rows = []
    for identity, summary in groups["identities"].items():
        for camera, per_camera in summary["cameras"].items():
            rows.append({"checkpoint": label, "identity": identity, "camera": camera, **per_camera})
        rows.append({"checkpoint": label, "identity": identity, "camera": ALL,
                     **{key: value for key, value in summary.items() if key != "cameras"}})
    rows.append({"checkpoint": label, "identity": ALL, "camera": ALL, **groups["overall"]})
    return rows


def sample_rows(label: str, measured: Measured) -> list[dict]:
    """CSV rows, one per measured image."""
    return [{"checkpoint": label, "identity": view.identity, "camera": view.camera, "frame": view.frame,
             "segment": view.segment, **view.errors.psnr(), "ssim": view.ssim, "ssim_head": view.ssim_head,
             "lpips": view.lpips, "background": view.background,
             "psnr_mask": view.mask_errors.psnr() if view.mask_errors is not None else None} for view in measured.views]


def _csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else (f"{value:.6g}" if isinstance(value, float) else value)
                         for key, value in row.items()})
    return buffer.getvalue().encode()


def write_reports(output: Path, results: list[tuple[str, Measured]], settings: dict) -> dict[str, Path]:
    """Writes metrics.json, metrics.csv and samples.csv (atomically) into `output`; returns their paths."""
    from ava.files import write_atomically

    document = {**settings, "checkpoints": {}}
    summaries, samples = [], []
    for label, measured in results:
        groups = grouped(measured)
        document["checkpoints"][label] = {"path": str(measured.checkpoint), "step": measured.step,
                                          "skipped_frames": measured.skipped, **groups}
        summaries += summary_rows(label, groups)
        samples += sample_rows(label, measured)
    paths = {"json": output / "metrics.json", "csv": output / "metrics.csv", "samples": output / "samples.csv"}
    write_atomically(paths["json"], (json.dumps(document, indent=1, allow_nan=False, default=_finite) + "\n").encode())
    write_atomically(paths["csv"], _csv(summaries))
    write_atomically(paths["samples"], _csv(samples))
    return paths


def _finite(value):
    raise TypeError(f"{value!r} cannot be written to JSON")


def _cell(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if metric.startswith("psnr") else f"{value:.4f}"


def _delta(metric: str, first: float | None, second: float | None) -> str:
    """B - A, green where B is better, red where worse."""
    if first is None or second is None:
        return "-"
    difference = second - first
    shown = f"{difference:+.2f}" if metric.startswith("psnr") else f"{difference:+.4f}"
    if difference == 0:
        return shown
    better = difference < 0 if metric in LOWER_IS_BETTER else difference > 0
    return f"[{'green' if better else 'red'}]{shown}[/]"


def table(results: list[tuple[str, Measured]], lpips_measured: bool):
    """A rich Table: per identity (subject id) and overall, one row per checkpoint and, with two,
    a row B-A (green where B is better)."""
    from rich.table import Table

    metrics = [metric for metric in METRICS if (metric != "lpips" or lpips_measured)
               and (metric != "psnr_mask" or any(view.mask_errors is not None for _, m in results for view in m.views))]
    groups = [grouped(measured) for _, measured in results]
    caption = "; ".join(f"{label} = {measured.checkpoint} (step {measured.step})" for label, measured in results)
    view = Table(caption=caption + ". PSNR in dB.", caption_justify="left")
    view.add_column("identity")
    if len(results) > 1:
        view.add_column("")
    view.add_column("images", justify="right")
    for metric in metrics:
        view.add_column(HEADINGS[metric], justify="right")
    names = list(groups[0]["identities"]) + [ALL]
    for name in names:
        rows = [group["overall"] if name == ALL else group["identities"][name] for group in groups]
        shown = "[bold]all[/]" if name == ALL else name.split("--")[-1]
        for position, ((label, _), row) in enumerate(zip(results, rows)):
            leading = [shown if position == 0 else ""] + ([label] if len(results) > 1 else [])
            view.add_row(*leading, str(row["views"]), *(_cell(metric, row[metric]) for metric in metrics),
                         end_section=len(results) == 1 and name == names[-2])
        if len(results) > 1:
            view.add_row("", "B-A", "", *(_delta(metric, rows[0][metric], rows[1][metric]) for metric in metrics),
                         end_section=True)
    return view


def examples_picture(results: list[tuple[str, Measured]]):
    """A matplotlib Figure, one row per example image (one per identity): the photo, then per
    checkpoint its render over the camera's fitted plate and |error| x4, titled with the image's
    PSNR; None when no example was measured."""
    from ava.runtime.figures import image_grid
    from ava.runtime.images import ERROR_GAIN, error_image, to_uint8

    keys = sorted(results[0][1].examples)
    rows = []
    for identity, camera, frame in keys:
        photo = results[0][1].examples[(identity, camera, frame)][0]
        row = [(to_uint8(photo), f"{identity.split('--')[-1]}, camera {camera}\nframe {frame}")]
        for label, measured in results:
            if (identity, camera, frame) not in measured.examples:
                continue
            render = measured.examples[(identity, camera, frame)][1]
            psnr = next(view.errors.psnr()["psnr"] for view in measured.views
                        if (view.identity, view.camera, view.frame) == (identity, camera, frame))
            row += [(to_uint8(render), f"{label} (step {measured.step})\n{psnr:.2f} dB"),
                    (to_uint8(error_image(photo, render)), f"{label}\n|error| x{ERROR_GAIN:g}")]
        rows.append(row)
    return image_grid(rows) if rows else None
