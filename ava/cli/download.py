"""`ava download`: fetch Ava-256 captures (parallel, resumable, verified)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from ava.data.release import DEFAULT_CAPTURE_COUNT


@dataclass
class DownloadConfig:
    """Download captures of the Ava-256 dataset into OUT/<mcd>--<mct>--<sid>/{decoder,encoder}/.

    Rerunning the same command resumes partial files and skips complete ones. Exit status: 0 when
    every file is in place, 1 when any failed (see the summary), 2 for bad input, 130 on Ctrl-C.
    """

    output_dir: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """Folder to download into (created if missing)."""
    n: Annotated[int | None, tyro.conf.arg(name="n", aliases=("-n",), metavar="N",
                                           help_behavior_hint=f"(default: {DEFAULT_CAPTURE_COUNT} unless --ids is given)")] = None
    """Download the first N captures of the capture list."""
    ids: Annotated[tuple[str, ...], tyro.conf.arg(metavar="ID")] = ()
    """Captures to download instead of the first N: capture ids like 20230324--0820--AEY864, or subject ids like AEY864 looked up in the capture list."""
    captures_file: Annotated[Path | None, tyro.conf.arg(metavar="CSV")] = None
    """Capture list CSV (header mcd,sid,mct). Default: the original 256_ids.csv, fetched once into ~/.cache/ava (or $AVA_CACHE_DIR) from GitHub (or $AVA_IDS_CSV_URL) and checked by SHA-256."""
    assets: Annotated[tuple[str, ...], tyro.conf.arg(metavar="GROUP")] = ("all",)
    """Asset groups: all, camera_calibration, frame_list, head_pose, image, keypoints_3d, kinematic_tracking, segmentation_parts, uv_image, encoder; and, described only by unmerged branches of the original (the server may lack them): foreground_masks (4TB only; one zip per camera, not in all), background_image (4TB only), expression_codes (4TB only), encodings (headset ground-truth codes), checkpoints (the released decoder, into OUT/checkpoints/). At other tiers all leaves out the 4TB-only groups; name them to try anyway. statistics (not in all): only the per-capture means and variances of uv_image and kinematic_tracking, what ava convert needs of each capture."""
    workers: Annotated[int, tyro.conf.arg(aliases=("-j",))] = 8
    """Parallel transfers."""
    size: Annotated[str, tyro.conf.arg(aliases=("-s",), metavar="SIZE")] = "4TB"
    """Release size tier: 4TB, 8TB, 16TB or 32TB (the larger tiers hold more or larger frames)."""
    base_url: Annotated[str | None, tyro.conf.arg(metavar="URL")] = None
    """Remote root before <SIZE>/ (mirrors, tests). Default: $AVA_BASE_URL, else the public S3 bucket."""
    dry_run: bool = False
    """List the files and their sizes (HEAD requests) without downloading."""
    retries: int = 5
    """Retries per request after connection errors, timeouts, 5xx and 429 (not after 403/404)."""
    retry_base_delay: float = 1.0
    """Seconds before the first retry; each further retry waits twice as long."""
    timeout: float = 30.0
    """Seconds to wait for a connection and for each piece of a response."""


def main(config: Annotated[DownloadConfig, tyro.conf.arg(name="")]) -> int:
    """Download captures of the Ava-256 dataset (parallel, resumable, verified)."""
    from ava.data.download import run_download
    from ava.data.http import RetryPolicy
    from ava.errors import UserError

    if config.retries < 0 or config.retry_base_delay < 0 or config.timeout <= 0:
        raise UserError("--retries and --retry-base-delay must be >= 0 and --timeout > 0")
    return run_download(
        output_dir=config.output_dir,
        ids=config.ids,
        captures_file=config.captures_file,
        count=config.n,
        assets=config.assets,
        workers=config.workers,
        size=config.size,
        base_url=config.base_url,
        dry_run=config.dry_run,
        policy=RetryPolicy(
            retries=config.retries, base_delay=config.retry_base_delay, timeout=config.timeout
        ),
    )
