"""What the Ava-256 release holds and where (docs/data-layout.md): asset groups, URLs, capture lists.

The release lives under `<base URL>/<SIZE>/<mcd>--<mct>--<sid>/{decoder,encoder}/...`; locally the
size tier is dropped: `OUT/<capture>/decoder/...`. Files come in asset groups; three of them
(`image`, `segmentation_parts`, `foreground_masks`) hold one zip per camera, and a capture's cameras
are the sorted `cameraId`s of its remote `camera_calibration.json`. One group (`checkpoints`) is
release-wide: `<base URL>/<SIZE>/checkpoints/...`, locally `OUT/checkpoints/...`.

The groups after `encoder` (`EXTRA_GROUPS`) are described only by two unmerged branches of the
original repository (their DATASHEET.md and download.py); nobody here could check that the public
server holds them. Three are for the 4TB tier only (`ONLY_4TB`), and `foreground_masks`, as large as
the images, is fetched only when named (`NAMED_ONLY`). `ava.data.download` fetches what this
module describes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ava.data.ids import CaptureId, is_subject_id, parse_ids_csv, read_ids_csv
from ava.errors import UserError
from ava.files import CACHE_ENV, cache_dir, output_folder, write_atomically

DEFAULT_BASE_URL = "https://fb-baas-f32eacb9-8abb-11eb-b2b8-4857dd089e15.s3.amazonaws.com/ava-256"
SIZES = ("4TB", "8TB", "16TB", "32TB")
DEFAULT_CAPTURE_COUNT = 16

# The list of the 256 captures, pinned to one commit of the original repository and to its hash.
IDS_CSV_URL = (
    "https://raw.githubusercontent.com/facebookresearch/ava-256/"
    "a9d2fbe85c2139d1c072212287b484309f3460e7/256_ids.csv"
)
IDS_CSV_SHA256 = "c6bed7016305dc4d686f297f0254bc4b56e9d5fca24950c8e643e231a9167513"

ENV_BASE_URL = "AVA_BASE_URL"
"""Replaces the part of the remote root before `<SIZE>/` (mirrors, tests); `--base-url` wins."""
ENV_IDS_CSV_URL = "AVA_IDS_CSV_URL"
"""Where to fetch `256_ids.csv` from instead of GitHub (its SHA-256 is checked all the same)."""
ENV_CACHE_DIR = CACHE_ENV
"""Cache folder (default `~/.cache/ava`); holds the fetched `256_ids.csv`."""

CALIBRATION_PATH = "decoder/camera_calibration.json"
_CAMERA = "{camera}"

# Asset group -> paths under the capture folder; `{camera}` expands to each camera id.
ASSET_GROUPS: dict[str, tuple[str, ...]] = {
    "camera_calibration": (CALIBRATION_PATH,),
    "frame_list": ("decoder/frame_list.csv",),
    "head_pose": ("decoder/head_pose/head_pose.zip",),
    "image": ("decoder/image/cam{camera}.zip",),
    "keypoints_3d": ("decoder/keypoints_3d/keypoints_3d.zip",),
    "kinematic_tracking": (
        "decoder/kinematic_tracking/registration_vertices_mean.npy",
        "decoder/kinematic_tracking/registration_vertices_variance.txt",
        "decoder/kinematic_tracking/registration_vertices.zip",
    ),
    "segmentation_parts": ("decoder/segmentation_parts/cam{camera}.zip",),
    "uv_image": (
        "decoder/uv_image/color_mean.png",
        "decoder/uv_image/color_variance.txt",
        "decoder/uv_image/color.zip",
    ),
    "encoder": (
        "encoder/frame_list.csv",
        "encoder/image/cam-cyclop.zip",
        "encoder/image/cam-left-eye-atl-temporal.zip",
        "encoder/image/cam-left-mouth.zip",
        "encoder/image/cam-right-eye-atl-temporal.zip",
        "encoder/image/cam-right-mouth.zip",
    ),
    # Beyond the original's main branch (unverified on the server; docs/data-layout.md).
    "foreground_masks": ("decoder/foreground_masks/cam{camera}.zip",),
    "background_image": ("decoder/background_image/background_image.zip",),
    "expression_codes": ("decoder/expression_codes/aeparams_1440000.pkl",),
    "encodings": ("encoder/encodings_gt.pt", "encoder/encodings_framelist.csv"),
    "checkpoints": ("checkpoints/decoder/aeparams_1440000.pt",),
    # The small per-capture files of uv_image and kinematic_tracking that the normalisation
    # statistics are made of: what `ava convert --dataset-dir` reads of each capture.
    "statistics": (
        "decoder/uv_image/color_mean.png",
        "decoder/uv_image/color_variance.txt",
        "decoder/kinematic_tracking/registration_vertices_mean.npy",
        "decoder/kinematic_tracking/registration_vertices_variance.txt",
    ),
}
ALL_GROUPS = "all"
EXTRA_GROUPS = ("foreground_masks", "background_image", "expression_codes", "encodings", "checkpoints")
"""Groups only the original's unmerged branches describe: a server without them is not an error
when they come from `all` (each gets one summary line instead)."""
ONLY_4TB = ("foreground_masks", "background_image", "expression_codes")
"""Groups the datasheet says only the 4TB tier holds; `all` leaves them out at other tiers."""
NAMED_ONLY = ("foreground_masks", "statistics")
"""Groups `all` leaves out: foreground_masks (one zip per camera, as large as the images) and
statistics (a subset of uv_image and kinematic_tracking); name them to fetch them."""
RELEASE_WIDE = ("checkpoints",)
"""Groups whose paths are relative to the tier's root, not to a capture folder."""
RELEASED_DECODER = "checkpoints/decoder/aeparams_1440000.pt"
"""The decoder trained on all 256 captures for 1.44M iterations, relative to the dataset folder."""


def resolve_groups(names: Sequence[str]) -> list[str]:
    """The asset groups named (`all` for every one), in the canonical order, without repeats."""
    unknown = [name for name in names if name != ALL_GROUPS and name not in ASSET_GROUPS]
    if unknown:
        raise UserError(
            f"unknown asset group {', '.join(map(repr, unknown))}; "
            f"choose from {ALL_GROUPS}, {', '.join(ASSET_GROUPS)}"
        )
    if not names:
        raise UserError(f"--assets needs at least one group; choose from {ALL_GROUPS}, {', '.join(ASSET_GROUPS)}")
    wanted = set(ASSET_GROUPS) if ALL_GROUPS in names else set(names)
    return [group for group in ASSET_GROUPS if group in wanted]


@dataclass(frozen=True)
class GroupSelection:
    """The groups to fetch, in canonical order; `named` are those asked for by name (not through
    `all`); `notes` say what `all` left out and why."""

    groups: list[str]
    named: frozenset[str]
    notes: list[str]


def select_groups(names: Sequence[str], size: str) -> GroupSelection:
    """`--assets` at tier `size`: `all` is every group except `NAMED_ONLY` and, at tiers other than
    4TB, `ONLY_4TB`; groups named explicitly are always fetched (the datasheet may be out of date)."""
    groups = resolve_groups(names)
    named = frozenset(name for name in names if name != ALL_GROUPS)
    notes = []
    if ALL_GROUPS in names:
        skipped = [group for group in groups if group not in named and group in NAMED_ONLY and group != "statistics"]
        left_out = [group for group in groups
                    if group not in named and group not in skipped and group in ONLY_4TB and size != "4TB"]
        if left_out:
            notes.append(f"left out at {size}: {', '.join(left_out)} (the 4TB tier only; name them to try anyway)")
        if skipped:
            notes.append(f"left out of all: {', '.join(skipped)} (one zip per camera, as large as the images; "
                         "name it to fetch it)")
        groups = [group for group in groups if group not in left_out and group not in skipped
                  and (group != "statistics" or group in named)]
    return GroupSelection(groups, named, notes)


def is_per_camera(group: str) -> bool:
    return any(_CAMERA in template for template in ASSET_GROUPS[group])


def group_paths(group: str, cameras: Sequence[str] = ()) -> list[str]:
    """Paths under the capture folder for one group; per-camera templates repeat for each camera."""
    paths = []
    for template in ASSET_GROUPS[group]:
        if _CAMERA in template:
            paths += [template.format(camera=camera) for camera in cameras]
        else:
            paths.append(template)
    return paths


def parse_camera_ids(calibration_json: bytes) -> list[str]:
    """The sorted `cameraId`s of a `camera_calibration.json` ({"KRT": [{"cameraId": ...}, ...]})."""
    try:
        cameras = json.loads(calibration_json)["KRT"]
        ids = sorted({str(camera["cameraId"]) for camera in cameras})
    except (ValueError, KeyError, TypeError, RecursionError) as error:  # a hostile file may nest deeply
        raise ValueError(f"camera_calibration.json has no readable KRT camera list ({error})") from None
    if not ids:
        raise ValueError("camera_calibration.json lists no cameras")
    return ids


@dataclass(frozen=True)
class PlannedFile:
    """One file of the release: `path` is relative to the capture folder, or to the tier's root
    for a release-wide group (`capture` None)."""

    capture: CaptureId | None
    group: str
    path: str

    @property
    def name(self) -> str:
        """`capture/path` (or `path`): the file's path under the output folder and the remote root."""
        return self.path if self.capture is None else f"{self.capture.folder}/{self.path}"

    def url(self, root: str) -> str:
        return root + self.name

    def local(self, output_dir: Path) -> Path:
        return output_dir / self.name


@dataclass(frozen=True)
class PlanFailure:
    """A per-camera group of one capture whose file list could not be made."""

    capture: CaptureId
    group: str
    reason: str

    @property
    def name(self) -> str:
        return f"{self.capture.folder}/{ASSET_GROUPS[self.group][0].replace(_CAMERA, '*')}"


def resolve_base_url(flag: str | None) -> str:
    """`--base-url`, else $AVA_BASE_URL, else the public bucket; checked to be an http(s) URL."""
    base_url = flag or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    if not base_url.startswith(("http://", "https://")):
        source = "--base-url" if flag else ENV_BASE_URL
        raise UserError(f"{source} {base_url!r} is not an http:// or https:// URL")
    return base_url.rstrip("/")


def remote_root(base_url: str, size: str) -> str:
    """`<base URL>/<SIZE>/`, the folder that holds one folder per capture."""
    if size not in SIZES:
        raise UserError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    return f"{base_url.rstrip('/')}/{size}/"


def default_captures(fetch: Callable[[str], bytes]) -> list[CaptureId]:
    """The 256 captures of the original `256_ids.csv`, from the cache or fetched once with `fetch`.

    The SHA-256 is checked on every use, so a damaged cache is fetched again and a wrong file
    (a mirror serving something else) is refused.
    """
    cached = cache_dir(create=False) / "256_ids.csv"
    if cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == IDS_CSV_SHA256:
        return parse_ids_csv(cached.read_text(encoding="utf-8"), source=str(cached))
    url = os.environ.get(ENV_IDS_CSV_URL) or IDS_CSV_URL
    try:
        body = fetch(url)
    except Exception as error:  # noqa: BLE001 - any failure here has the same remedy
        reason = getattr(error, "reason", None) or type(error).__name__
        raise UserError(
            f"cannot fetch the capture list from {url} ({reason}); pass --captures-file or --ids"
        ) from None
    digest = hashlib.sha256(body).hexdigest()
    if digest != IDS_CSV_SHA256:
        raise UserError(
            f"the capture list from {url} has SHA-256 {digest}, expected {IDS_CSV_SHA256}; "
            "pass --captures-file to use another list"
        )

    try:
        write_atomically(cached, body)
    except OSError:
        pass  # an unwritable cache only costs a fetch next time; the list itself is fine
    return parse_ids_csv(body.decode("utf-8"), source=url)


def select_captures(
    ids: Sequence[str],
    captures_file: Path | None,
    count: int | None,
    load_default: Callable[[], list[CaptureId]],
) -> list[CaptureId]:
    """The captures to fetch: `ids` (full capture ids, or subject ids looked up in the list), else
    the first `count` of the list (`captures_file`, else the original 256)."""
    if ids and count is not None:
        raise UserError("pass either -n or --ids, not both")
    if count is not None and count < 1:
        raise UserError(f"-n must be at least 1, got {count}")

    listed: list[CaptureId] | None = None

    def capture_list() -> list[CaptureId]:
        nonlocal listed
        if listed is None:
            listed = read_ids_csv(captures_file) if captures_file is not None else load_default()
        return listed

    if ids:
        selected = []
        for text in ids:
            if "--" in text:
                selected.append(CaptureId.parse(text))
                continue
            if not is_subject_id(text.strip()):
                raise UserError(f"{text!r} is neither a capture id (MCD--MCT--SID, e.g. 20230324--0820--AEY864) "
                                "nor a subject id (three capital letters and three digits, e.g. AEY864)")
            matches = [capture for capture in capture_list() if capture.sid == text.strip()]
            if not matches:
                raise UserError(
                    f"{text!r} is neither a capture id (MCD--MCT--SID) nor a subject id in the capture list"
                )
            selected += matches
        return list(dict.fromkeys(selected))
    count = DEFAULT_CAPTURE_COUNT if count is None else count
    available = capture_list()
    if count > len(available):
        raise UserError(f"-n {count} asks for more captures than the {len(available)} in the capture list")
    return available[:count]


def check_output_dir(output_dir: Path) -> None:
    """Creates OUT and proves that files can be written there, or says why not in one line."""
    output_folder(output_dir, "-o/--output-dir")
    try:
        probe = output_dir / f".ava-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to output folder {output_dir}: {error.strerror or error}") from None
