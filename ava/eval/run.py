"""`ava eval`: resolve what to measure, measure each checkpoint, write and print the results."""

from __future__ import annotations

from pathlib import Path

from ava.errors import UserError
from ava.eval.config import HELD_OUT


def _cameras(requested: tuple[str, ...], checkpoints) -> tuple[list[str], bool]:
    """(camera ids, whether they are the first checkpoint's held-out cameras)."""
    from ava.runtime.datasets import held_out_cameras

    first = checkpoints[0]
    if list(requested) == [HELD_OUT] or not requested:
        cameras = held_out_cameras(first)
        if not cameras:
            raise UserError(f"{first.path} records no held-out cameras (trained without "
                            "--train.num-holdout-cameras, or converted); pass --cameras ID ...")
        return cameras, True
    if HELD_OUT in requested:
        raise UserError("--cameras takes either held-out or camera ids, not both")
    for checkpoint in checkpoints:
        unknown = [camera for camera in requested if camera not in checkpoint.cameras]
        if unknown:
            raise UserError(f"camera(s) {', '.join(unknown)} are not among the {len(checkpoint.cameras)} cameras "
                            f"of {checkpoint.path} (e.g. {', '.join(checkpoint.cameras[:4])})")
    return list(dict.fromkeys(requested)), False


def _identities(requested: tuple[str, ...], checkpoints, dataset_dir: Path) -> list[str]:
    from ava.runtime.datasets import match_identities

    first = checkpoints[0]
    trained = list(first.identities)
    chosen = [trained[i] for i in match_identities(requested, trained)] if requested else trained
    for checkpoint in checkpoints[1:]:
        missing = [identity for identity in chosen if identity not in checkpoint.identities]
        if missing:
            raise UserError(f"{checkpoint.path} was not trained on {', '.join(missing[:3])}; --compare needs "
                            "checkpoints of the same identities (choose some with --identities)")
    absent = [identity for identity in chosen if not (dataset_dir / identity / "decoder").is_dir()]
    if absent:
        raise UserError(f"capture folder {dataset_dir / absent[0]} does not exist ({len(absent)} of {len(chosen)} "
                        "identities); pass --dataset-dir or --identities")
    return chosen


def evaluate(config, console) -> dict:
    """`config`: an ava.eval.config.EvalConfig; notes go to `console`. Returns {"paths": the files
    written, "results": [(label, ava.eval.measure.Measured)], "table": a rich Table to print}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ava.checkpoint import load_checkpoint
    from ava.eval.measure import example_views, measure, plan_views
    from ava.eval.report import examples_picture, table, write_reports
    from ava.runtime.datasets import checkpoint_downsample, held_out_cameras, resolve_dataset_dir
    from ava.runtime.device import select_device
    from ava.runtime.figures import save_figure
    from ava.runtime.metrics import Lpips

    if config.frames < 0:
        raise UserError("--frames cannot be negative")
    paths = [Path(config.checkpoint)] + ([Path(config.compare)] if config.compare else [])
    checkpoints = [load_checkpoint(path) for path in paths]
    device = select_device(config.device)
    dataset_dir = resolve_dataset_dir(config.dataset_dir, checkpoints[0])
    downsample = checkpoint_downsample(checkpoints[0], config.downsample)
    cameras, held_out = _cameras(config.cameras, checkpoints)
    identities = _identities(config.identities, checkpoints, dataset_dir)
    for checkpoint in checkpoints[1:]:
        seen = sorted(set(cameras) - set(held_out_cameras(checkpoint)))
        if held_out and seen:
            console.print(f"[yellow]note:[/] {checkpoint.path} trained on camera(s) {', '.join(seen)}, which "
                          f"{checkpoints[0].path} held out; its numbers there are not for unseen views", highlight=False)
    plans = plan_views(dataset_dir, identities, cameras, config.segment, config.frames, checkpoints[0], downsample)
    lpips, lpips_reason = Lpips.load(device)
    if lpips is None:
        console.print(f"[yellow]LPIPS skipped:[/] {lpips_reason}", highlight=False)
    from ava.eval.extras import ReleaseImages, background_note, background_summary

    release_images = ReleaseImages(dataset_dir, device, use_backgrounds=config.background == "auto")
    examples = example_views(plans)
    labels = ["A", "B"][: len(checkpoints)]
    total = sum(len(plan.frames) for plan in plans)
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        for label, checkpoint in zip(labels, checkpoints):
            task = bar.add_task(f"measuring {label} ({checkpoint.path.name})", total=total)
            measured = measure(checkpoint, plans, dataset_dir, downsample, device, lpips, examples,
                               progress=lambda count, task=task: bar.advance(task, count),
                               release_images=release_images)
            results.append((label, measured))
            for problem in measured.skipped:
                console.print(f"[yellow]skipped:[/] {problem}", highlight=False)
    if not results[0][1].views:
        raise UserError("no frame could be measured (see the skipped files above)")
    for problem in release_images.problems():
        console.print(f"[yellow]mask skipped:[/] {problem}", highlight=False)
    console.print(background_note(results[0][1].views), highlight=False)
    settings = {"dataset_dir": str(dataset_dir), "cameras": cameras, "held_out_cameras": held_out,
                "segment": config.segment, "frames_per_camera": config.frames, "downsample": downsample,
                "identities": identities, "device": str(device),
                "lpips": {"measured": lpips is not None, "reason": lpips_reason or None},
                "backgrounds": background_summary(results[0][1].views),
                "notes": "PSNR in dB pooled over pixels (whole image over the camera's recorded background where "
                         "the capture has one, else over a background plate fitted to each camera's first frame; "
                         "head: inside the tracked mesh's silhouette; mask: inside the foreground masks, where "
                         "the capture has them; model_bg: over the model's background row); SSIM and LPIPS are "
                         "means over images"}
    output = Path(config.output)
    written = write_reports(output, results, settings)
    picture = examples_picture(results)
    if picture is not None:
        written["examples"] = save_figure(picture, output / "examples.png")
    return {"paths": written, "results": results, "table": table(results, lpips is not None)}
