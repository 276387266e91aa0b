"""`ava eval`'s outputs: summaries per identity, camera, method and subject group; JSON, CSV, a
table and example pictures.

PSNRs are pooled over pixels (the PSNR of the summed squared error, as training's held-out PSNR);
SSIM and LPIPS are means over images. Trained identities and the subjects the model never trained
on (validation, test, unseen) are summarised apart: a number over both would mean nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ava.eval.measure import GROUPS, METHOD_NAMES, METHODS, MODEL, Measured, ViewResult
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


def _ordered(values, order) -> list:
    present = set(values)
    return [value for value in order if value in present]


def grouped(measured: Measured) -> dict:
    """{"groups": {group: {method: summary}}, "identities": {identity: {"group", "nearest_identity",
    "colour_calibration", "methods": {method: {**summary, "cameras": {camera: summary}}}}}}."""
    identities: dict[str, dict] = {}
    for identity in dict.fromkeys(view.identity for view in measured.views):
        mine = [view for view in measured.views if view.identity == identity]
        methods = {}
        for method in _ordered({view.method for view in mine}, METHODS):
            views = [view for view in mine if view.method == method]
            cameras = {camera: summarise([view for view in views if view.camera == camera])
                       for camera in dict.fromkeys(view.camera for view in views)}
            methods[method] = {**summarise(views), "cameras": cameras}
        group = mine[0].group
        identities[identity] = {
            "group": group, "nearest_identity": measured.nearest.get(identity),
            "colour_calibration": "trained" if group == "trained" else measured.colours.get(identity, "neutral"),
            "methods": methods}
    groups = {}
    for group in _ordered({view.group for view in measured.views}, GROUPS):
        mine = [view for view in measured.views if view.group == group]
        groups[group] = {method: summarise([view for view in mine if view.method == method])
                         for method in _ordered({view.method for view in mine}, METHODS)}
    return {"groups": groups, "identities": identities}


def summary_rows(label: str, groups: dict) -> list[dict]:
    """CSV rows: per identity and method one per camera and one over its cameras ("all"); then per
    group and method one over its identities (identity "all")."""
    rows = []
    for identity, entry in groups["identities"].items():
        for method, summary in entry["methods"].items():
            for camera, per_camera in summary["cameras"].items():
                rows.append({"checkpoint": label, "group": entry["group"], "identity": identity, "method": method,
                             "camera": camera, **per_camera})
            rows.append({"checkpoint": label, "group": entry["group"], "identity": identity, "method": method,
                         "camera": ALL, **{key: value for key, value in summary.items() if key != "cameras"}})
    for group, methods in groups["groups"].items():
        for method, summary in methods.items():
            rows.append({"checkpoint": label, "group": group, "identity": ALL, "method": method, "camera": ALL,
                         **summary})
    return rows


def sample_rows(label: str, measured: Measured) -> list[dict]:
    """CSV rows, one per measured image and method."""
    return [{"checkpoint": label, "group": view.group, "identity": view.identity, "method": view.method,
             "camera": view.camera, "frame": view.frame, "segment": view.segment, **view.errors.psnr(),
             "ssim": view.ssim, "ssim_head": view.ssim_head, "lpips": view.lpips, "background": view.background,
             "psnr_mask": view.mask_errors.psnr() if view.mask_errors is not None else None}
            for view in measured.views]


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
    """A rich Table: per subject group, its identities (subject id) and the group over all of them,
    one row per method and checkpoint and, with two checkpoints, a row B-A (green where B is better)."""
    from rich.table import Table

    metrics = [metric for metric in METRICS if (metric != "lpips" or lpips_measured)
               and (metric != "psnr_mask" or any(view.mask_errors is not None for _, m in results for view in m.views))]
    groups = [grouped(measured) for _, measured in results]
    caption = "; ".join(f"{label} = {measured.checkpoint} (step {measured.step})" for label, measured in results)
    view = Table(caption=caption + ". PSNR in dB. Validation, test and unseen subjects were never trained on; "
                 "nearest identity and mean identity are baselines.", caption_justify="left")
    for heading in ("group", "identity", *([""] if len(results) > 1 else []), "method", "images"):
        view.add_column(heading, justify="right" if heading == "images" else "left")
    for metric in metrics:
        view.add_column(HEADINGS[metric], justify="right")
    first = groups[0]
    for group, per_method in first["groups"].items():
        names = [identity for identity, entry in first["identities"].items() if entry["group"] == group] + [ALL]
        for position, name in enumerate(names):
            shown = "[bold]all[/]" if name == ALL else name.split("--")[-1]
            methods = list(per_method) if name == ALL else list(first["identities"][name]["methods"])
            for method in methods:
                rows = [(result["groups"].get(group, {}).get(method) if name == ALL else
                         result["identities"].get(name, {}).get("methods", {}).get(method)) for result in groups]
                for index, ((label, _), row) in enumerate(zip(results, rows)):
                    if row is None:
                        continue
                    leading = [group if position == 0 and method == methods[0] and index == 0 else "",
                               shown if method == methods[0] and index == 0 else ""]
                    view.add_row(*leading, *([label] if len(results) > 1 else []), METHOD_NAMES[method],
                                 str(row["views"]), *(_cell(metric, row[metric]) for metric in metrics))
                if len(results) > 1 and all(row is not None for row in rows):
                    view.add_row("", "", "B-A", METHOD_NAMES[method], "",
                                 *(_delta(metric, rows[0][metric], rows[1][metric]) for metric in metrics))
        view.rows[-1].end_section = True
    return view


def examples_picture(results: list[tuple[str, Measured]]):
    """A matplotlib Figure, one row per example image (one per identity): the photo, then per
    checkpoint and method its render over the camera's fitted plate and |error| x4, titled with the
    image's PSNR; None when no example was measured."""
    from ava.runtime.figures import image_grid
    from ava.runtime.images import ERROR_GAIN, error_image, to_uint8

    keys = sorted(results[0][1].examples)
    rows = []
    for identity, camera, frame in keys:
        panels = results[0][1].examples[(identity, camera, frame)]
        group = next(view.group for view in results[0][1].views if view.identity == identity)
        row = [(to_uint8(panels["photo"]), f"{identity.split('--')[-1]} ({group})\ncamera {camera}, frame {frame}")]
        for label, measured in results:
            mine = measured.examples.get((identity, camera, frame), {})
            for method in METHODS:
                if method not in mine:
                    continue
                psnr = next(view.errors.psnr()["psnr"] for view in measured.views
                            if (view.identity, view.camera, view.frame, view.method) == (identity, camera, frame, method))
                name = METHOD_NAMES[method] if method != MODEL else f"{label} (step {measured.step})"
                row += [(to_uint8(mine[method]), f"{name}\n{psnr:.2f} dB"),
                        (to_uint8(error_image(panels["photo"], mine[method])), f"{name}\n|error| x{ERROR_GAIN:g}")]
        rows.append(row)
    return image_grid(rows) if rows else None


def example_strips(measured: Measured) -> dict[str, "object"]:
    """Per identity a uint8 strip [photo | model | nearest identity | mean identity] (the methods
    it was measured with) at the rendered size, for documents."""
    from ava.runtime.images import hstack, to_uint8

    strips = {}
    for (identity, _, _), panels in sorted(measured.examples.items()):
        strips[identity] = hstack([to_uint8(panels["photo"])] +
                                  [to_uint8(panels[method]) for method in METHODS if method in panels])
    return strips
