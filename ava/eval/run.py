"""`ava eval`: resolve what to measure, measure each checkpoint, write and print the results."""

from __future__ import annotations

from pathlib import Path

from ava.errors import UserError
from ava.eval.config import HELD_OUT, SUBJECT_GROUPS


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


def _subjects(requested: tuple[str, ...], checkpoints, dataset_dir: Path) -> list[tuple[str, str]]:
    """(capture folder, group) of every subject to measure, in the order asked for; groups as in
    ava.eval.measure.GROUPS."""
    from ava.runtime.datasets import held_out_subjects, match_identities

    first = checkpoints[0]
    trained = list(first.identities)
    held = held_out_subjects(first)
    role_of = {folder: role for role, folders in held.items() for folder in folders}
    chosen: dict[str, str] = {}
    for name in requested or SUBJECT_GROUPS:
        if name == "trained":
            chosen.update((folder, "trained") for folder in trained if folder not in chosen)
        elif name in held:
            chosen.update((folder, name) for folder in held[name] if folder not in chosen)
        elif any(folder == name or folder.split("--")[-1] == name for folder in trained):
            chosen.setdefault(trained[match_identities([name], trained)[0]], "trained")
        else:
            folder = _capture_folder(name, dataset_dir, list(role_of))
            chosen.setdefault(folder, role_of.get(folder, "unseen"))
    if not chosen:
        raise UserError(f"no subject to measure: {first.path} records no {' or '.join(requested)} subjects "
                        "(trained without --train.num-holdout-subjects?); name captures with --identities")
    for checkpoint in checkpoints[1:]:
        missing = [identity for identity, group in chosen.items() if group == "trained"
                   and identity not in checkpoint.identities]
        if missing:
            raise UserError(f"{checkpoint.path} was not trained on {', '.join(missing[:3])}; --compare needs "
                            "checkpoints of the same identities (choose some with --identities)")
    absent = [identity for identity in chosen if not (dataset_dir / identity / "decoder").is_dir()]
    if absent:
        raise UserError(f"capture folder {dataset_dir / absent[0]} does not exist ({len(absent)} of {len(chosen)} "
                        "subjects); pass --dataset-dir or --identities")
    return list(chosen.items())


def _capture_folder(name: str, dataset_dir: Path, recorded: list[str]) -> str:
    """The capture folder `name` stands for (ava.runtime.datasets.find_capture), the checkpoint's
    held-out subjects first."""
    from ava.runtime.datasets import find_capture

    folder = find_capture(name, dataset_dir, recorded)
    if folder is None:
        raise UserError(f"identity {name} is not one of the checkpoint's identities and no capture of it is in "
                        f"{dataset_dir}; name a capture (MCD--MCT--SID) or a group: trained, validation, test")
    return folder


def evaluate(config, console) -> dict:
    """`config`: an ava.eval.config.EvalConfig; notes go to `console`. Returns {"paths": the files
    written, "results": [(label, ava.eval.measure.Measured)], "table": a rich Table to print}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ava.checkpoint import load_checkpoint
    from ava.eval.measure import example_views, measure, methods_of, plan_colour_fits, plan_views
    from ava.eval.report import example_strips, examples_picture, table, write_reports
    from ava.runtime.datasets import checkpoint_downsample, held_out_cameras, resolve_dataset_dir
    from ava.runtime.device import select_device
    from ava.runtime.figures import save_figure
    from ava.runtime.images import save_png
    from ava.runtime.metrics import Lpips

    if config.frames < 0:
        raise UserError("--frames cannot be negative")
    if config.colorcal_frames < 1:
        raise UserError("--colorcal-frames must be at least 1")
    paths = [Path(config.checkpoint)] + ([Path(config.compare)] if config.compare else [])
    checkpoints = [load_checkpoint(path) for path in paths]
    device = select_device(config.device)
    dataset_dir = resolve_dataset_dir(config.dataset_dir, checkpoints[0])
    downsample = checkpoint_downsample(checkpoints[0], config.downsample)
    cameras, held_out = _cameras(config.cameras, checkpoints)
    subjects = _subjects(config.identities, checkpoints, dataset_dir)
    for checkpoint in checkpoints[1:]:
        seen = sorted(set(cameras) - set(held_out_cameras(checkpoint)))
        if held_out and seen:
            console.print(f"[yellow]note:[/] {checkpoint.path} trained on camera(s) {', '.join(seen)}, which "
                          f"{checkpoints[0].path} held out; its numbers there are not for unseen views", highlight=False)
        trained = [identity.split("--")[-1] for identity, group in subjects
                   if group != "trained" and identity in checkpoint.identities]
        if trained:
            console.print(f"[yellow]note:[/] {checkpoint.path} trained on {', '.join(trained)}, which "
                          f"{checkpoints[0].path} never saw; its numbers for them are not for unseen subjects",
                          highlight=False)
    baselines = config.baselines and any(group != "trained" for _, group in subjects)
    if baselines and not any((dataset_dir / folder / "decoder").is_dir() for folder in checkpoints[0].identities):
        console.print(f"[yellow]baselines skipped:[/] none of the checkpoint's trained identities is in {dataset_dir}",
                      highlight=False)
        baselines = False
    plans = plan_views(dataset_dir, subjects, cameras, config.segment, config.frames, checkpoints[0], downsample)
    colour_fits = [plan_colour_fits(dataset_dir, plans, checkpoint, downsample, config.colorcal_frames)
                   if config.colorcal == "fit" else None for checkpoint in checkpoints]
    lpips, lpips_reason = Lpips.load(device)
    if lpips is None:
        console.print(f"[yellow]LPIPS skipped:[/] {lpips_reason}", highlight=False)
    from ava.eval.extras import ReleaseImages, background_note, background_summary

    release_images = ReleaseImages(dataset_dir, device, use_backgrounds=config.background == "auto")
    examples = example_views(plans)
    labels = ["A", "B"][: len(checkpoints)]
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_interactive) as bar:
        for label, checkpoint, fits in zip(labels, checkpoints, colour_fits):
            total = sum(len(plan.frames) * len(methods_of(plan.identity, checkpoint, baselines)) for plan in plans)
            task = bar.add_task(f"measuring {label} ({checkpoint.path.name})", total=total)
            measured = measure(checkpoint, plans, dataset_dir, downsample, device, lpips, examples,
                               progress=lambda count, task=task: bar.advance(task, count), baselines=baselines,
                               colour_fits=fits, release_images=release_images)
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
                "subjects": dict(subjects), "baselines": baselines,
                "colour_calibration": {"unseen": config.colorcal, "frames": config.colorcal_frames
                                       if config.colorcal == "fit" else None},
                "device": str(device),
                "lpips": {"measured": lpips is not None, "reason": lpips_reason or None},
                "backgrounds": background_summary(results[0][1].views),
                "notes": "PSNR in dB pooled over pixels (whole image over the camera's recorded background where "
                         "the capture has one, else over a background plate fitted to each camera's first frame; "
                         "head: inside the tracked mesh's silhouette; mask: inside the foreground masks, where "
                         "the capture has them; model_bg: over the model's background row); SSIM and LPIPS are "
                         "means over images. Groups: trained identities; validation, test and unseen subjects "
                         "were never trained on, rendered from their own neutral frame (model) and by two "
                         "baselines (nearest_identity, mean_identity)"}
    output = Path(config.output)
    written = write_reports(output, results, settings)
    picture = examples_picture(results)
    if picture is not None:
        written["examples"] = save_figure(picture, output / "examples.png")
    for identity, strip in example_strips(results[0][1]).items():
        save_png(output / "examples" / f"{identity}.png", strip)
    return {"paths": written, "results": results, "table": table(results, lpips is not None)}
