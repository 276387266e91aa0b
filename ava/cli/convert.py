"""`ava convert`: import a state dict saved by the original ava-256 code into an ava checkpoint."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from ava.runtime.device import ThreadsFlag


@dataclass
class ConvertConfig:
    """Import an original `aeparams*.pt` (wrapper prefixes such as DDP's `module.` and torch.compile's
    `_orig_mod.` are removed, in any nesting) into one ava checkpoint, with the normalisation
    statistics and camera/identity lists of its training data."""

    original: tyro.conf.Positional[Path]
    """State dict saved by the original code (aeparams.pt or aeparams_NNNNNN.pt)."""
    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    """Where to write the ava checkpoint (.safetensors)."""
    dataset_dir: Path | None = None
    """The dataset the model was trained on: statistics and cameras come from each capture's camera_calibration.json and the means and variances of uv_image and kinematic_tracking (the statistics download group), nothing else."""
    ids_csv: Path | None = None
    """Ids CSV of the training captures in training order (default: <dataset-dir>/256_ids.csv, else <dataset-dir>/ids.csv, else the release's 256_ids.csv as ava download fetches it); the first N rows are used, N being the number of identities in the state dict."""
    stats: Path | None = None
    """Instead of --dataset-dir: an .npz with texmean [3,T,T], texstd, vertmean [V,3], vertstd."""
    cameras: Path | None = None
    """With --stats: a text file of camera ids, one per line, in the original's camera-index order."""
    topology: str | None = None
    """OBJ topology the model was trained with (default: <dataset-dir>/face_topology.obj if present, else the original face_topology.obj, downloaded once)."""
    step: int | None = None
    """Training step to record (default: the number in the file name, else 0)."""
    overwrite: bool = False
    """Replace an existing output file."""
    threads: ThreadsFlag = 0


def _step_from_name(path: Path) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else 0


def _ids_csv(config: ConvertConfig, console):
    from ava.data.ids import read_ids_csv
    from ava.errors import UserError

    path = config.ids_csv
    for name in ("256_ids.csv", "ids.csv"):
        if path is None and config.dataset_dir is not None and (config.dataset_dir / name).is_file():
            path = config.dataset_dir / name
    if path is None and config.dataset_dir is not None:
        import threading

        import requests

        from ava.data.http import RetryPolicy, fetch_bytes
        from ava.data.release import default_captures

        console.print("identities: the release's 256_ids.csv (checked by SHA-256; pass --ids-csv for another list)",
                      highlight=False)
        with requests.Session() as session:
            return default_captures(lambda url: fetch_bytes(session, url, RetryPolicy(retries=2), threading.Event()))
    if path is None:
        raise UserError("pass --ids-csv with the training captures in training order")
    return read_ids_csv(path)


def _from_capture_files(dataset_dir: Path, captures):
    """(stats, per-capture camera orders) from each capture's calibration and statistics files only
    (what training computes from them: ava.data.stats), so that a model trained on all 256 captures
    converts without their images, meshes or textures."""
    from rich.progress import track

    from ava.console import make_console
    from ava.data.calibration import read_calibration
    from ava.data.layout import CaptureLayout
    from ava.data.stats import combine_capture_stats, read_capture_stats
    from ava.errors import UserError

    layouts = [CaptureLayout(Path(dataset_dir) / capture.folder) for capture in captures]
    lacking = [layout.root.name for layout in layouts if not all(path.is_file() for path in (
        layout.calibration, layout.texture_mean, layout.texture_variance, layout.vertices_mean, layout.vertices_variance))]
    if lacking:
        raise UserError(f"{len(lacking)} of the {len(captures)} training captures lack their calibration or statistics "
                        f"files in {dataset_dir} (e.g. {lacking[0]}); fetch them with: ava download -o {dataset_dir} "
                        f"-n {len(captures)} --assets camera_calibration statistics")
    per_capture = [[camera.camera_id for camera in read_calibration(layout.calibration, in_front_of=None)]
                   for layout in layouts]
    console = make_console()  # a transient bar shows nothing in a log file, but would leave a blank line
    stats = combine_capture_stats(read_capture_stats(layout) for layout in
                                  track(layouts, description="normalisation statistics", transient=True,
                                        console=console, disable=not console.is_interactive))
    return stats, per_capture


def _training_data(config: ConvertConfig, num_identities: int, console):
    """(stats, capture ids, union of cameras sorted, per-capture camera orders)."""
    import numpy as np

    from ava.data.stats import NormStats
    from ava.errors import UserError

    captures = _ids_csv(config, console)
    if len(captures) < num_identities:
        raise UserError(
            f"the state dict has {num_identities} identities but the ids CSV lists only {len(captures)} captures"
        )
    captures = captures[:num_identities]
    if config.dataset_dir is not None:
        stats, per_capture = _from_capture_files(config.dataset_dir, captures)
        return stats, captures, sorted(set().union(*per_capture)), per_capture
    if config.stats is None or config.cameras is None:
        raise UserError("pass --dataset-dir, or --stats FILE.npz together with --cameras FILE")
    try:
        with np.load(config.stats) as stored:
            stats = NormStats(
                texmean=np.asarray(stored["texmean"], dtype=np.float32),
                texstd=float(stored["texstd"]),
                vertmean=np.asarray(stored["vertmean"], dtype=np.float32),
                vertstd=float(stored["vertstd"]),
            )
    except (OSError, KeyError, ValueError) as error:
        raise UserError(f"cannot read statistics from {config.stats}: {error}") from None
    try:
        order = [line.strip() for line in config.cameras.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise UserError(f"cannot read the camera list {config.cameras}: {error}") from None
    if len(set(order)) != len(order):
        raise UserError(f"{config.cameras} lists a camera twice")
    return stats, captures, sorted(order), [order]


def main(config: Annotated[ConvertConfig, tyro.conf.arg(name="")]) -> int:
    """Import a state dict saved by the original ava-256 code (aeparams*.pt) into an ava checkpoint."""
    import torch
    from ava.console import make_console

    from ava.checkpoint import compare_state, save_checkpoint
    from ava.errors import UserError
    from ava.nn.autoencoder import build_autoencoder
    from ava.nn.original import infer_model_config, load_original_state, original_camera_order, reorder_cameras
    from ava.nn.topology import resolve_topology

    from ava.runtime.device import use_threads

    use_threads(config.threads)
    console = make_console()
    if config.output.exists() and not config.overwrite:
        raise UserError(f"{config.output} exists; pass --overwrite to replace it")
    state = load_original_state(config.original)
    model_config, num_cameras, num_identities = infer_model_config(state)
    stats, captures, cameras, per_capture = _training_data(config, num_identities, console)
    if len(cameras) != num_cameras:
        raise UserError(
            f"the state dict has {num_cameras} cameras but the training data has {len(cameras)}; "
            "point --dataset-dir/--ids-csv (or --cameras) at the data the model was trained on"
        )
    original_order, consistent = original_camera_order(per_capture, cameras)
    if not consistent:
        console.print(
            "[yellow]warning:[/] the captures list their cameras in different orders, so the original's "
            "camera indices were ambiguous; colour calibration follows the first capture's order", soft_wrap=True
        )
    state = reorder_cameras(state, original_order, cameras)

    topology = resolve_topology(config.topology, config.dataset_dir, flag="--topology")
    if topology.num_verts != state["decoder_assembler.geodec.coords"].shape[1]:
        raise UserError(
            f"the topology has {topology.num_verts} vertices but the state dict was trained with "
            f"{state['decoder_assembler.geodec.coords'].shape[1]}; pass the right --topology"
        )
    model = build_autoencoder(
        model_config,
        topology,
        vertmean=torch.from_numpy(stats.vertmean),
        vertstd=stats.vertstd,
        num_cameras=num_cameras,
        num_identities=num_identities,
    )
    problems = compare_state(model.state_dict(), state)
    if problems:
        raise UserError(f"{config.original} does not match the Ava-256 model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    agreement = (model.decoder_assembler.idxim == state["id_encoder.uv_tidx"]).float().mean().item()
    if agreement < 0.9:
        raise UserError(
            f"the topology's UV maps agree with the state dict's on only {agreement:.0%} of texels; "
            "the model was trained with another topology (pass it with --topology)"
        )
    step = config.step if config.step is not None else _step_from_name(config.original)
    save_checkpoint(
        config.output,
        model=model,
        stats=stats,
        topology=topology,
        identities=[capture.folder for capture in captures],
        cameras=cameras,
        config={"model": model_config.to_dict(), "converted_from": str(config.original)},
        step=step,
    )
    console.print(
        f"wrote {config.output}: {model_config.num_prims} primitives at {model_config.uv_size}^2 UV, "
        f"{num_cameras} cameras, {num_identities} identities, step {step} "
        f"(UV maps agree on {agreement:.2%} of texels)", soft_wrap=True
    )
    return 0
