"""`ava show`: load one sample of a capture the way training does and draw each part.

The sample comes from `ava.data.dataset.CaptureDataset.load_sample`, so the camera (`camrot`,
`campos` in the head frame, `focal`, `princpt` at the image's size) and the image are exactly
what the model is trained on; every overlay is projected with `ava.runtime.cameras.project_points`,
the inverse of the model's rays. Keypoints are stored in the world frame and are brought into the
head frame with the frame's head pose first, so a wrong head pose shows as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ava.errors import UserError
from ava.show.config import ALL_PARTS, PARTS

ABSENT_ADVICE = {
    "keypoints": "keypoints_3d",
    "segmentation": "segmentation_parts",
    "headset": "encoder",
    "background": "background_image",
    "mask": "foreground_masks",
}


class PartAbsent(Exception):
    """The capture has no files for a part (a part that was not downloaded, or synthetic data)."""


@dataclass
class Shown:
    """What `show` did: pictures written, parts skipped because absent, parts that failed."""

    written: dict[str, Path] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def stored_downsample(layout, camera) -> int:
    """The downsample at which `camera`'s images are stored (releases store /2 or /4 images,
    synthetic sets what their --downsample said): the one whose sensor // downsample gives the
    stored width and height, as the loader sizes images."""
    from ava.data.formats import open_image
    from ava.data.zips import ZipPool

    pool = ZipPool()
    try:
        path = layout.image_zip(camera.camera_id)
        names = sorted(name for name in pool.names(path) if not name.endswith("/"))
        if not names:
            raise UserError(f"{path} holds no images")
        with open_image(pool.read(path, names[0])) as image:
            width, height = image.size
    except UserError:
        raise
    except Exception as error:  # a missing or unreadable archive or image
        raise UserError(f"cannot read an image of camera {camera.camera_id} to learn the stored size ({error}); "
                        "pass --downsample") from None
    finally:
        pool.close()
    ratios = (camera.width / width, camera.height / height)
    candidates = range(max(1, int(min(ratios)) - 1), int(max(ratios)) + 2)
    # The downsample whose sensor // downsample gives the stored width and height, as the loader computes sizes.
    exact = [value for value in candidates if camera.width // value == width and camera.height // value == height]
    return exact[0] if exact else max(1, round(ratios[0]))


def _sample_index(dataset, frame, camera_id: str) -> int:
    """Index of (frame, camera) in a CaptureDataset: its samples are the usable (frame, camera)
    pairs with cameras varying fastest."""
    reader = dataset.reader
    row = reader.frames.index(frame)
    column = reader.camera_ids.index(camera_id)
    if not reader.image_ok[row, column]:
        raise UserError(f"frame {frame.frame_id} has no usable image from camera {camera_id} (dropped, or another "
                        "member of the frame is missing); pick another --frame or --camera")
    index = int(reader.image_ok.ravel()[: row * len(reader.cameras) + column].sum())
    assert dataset.sample_ids(index) == (frame.frame_id, camera_id)
    return index


def _choose_frame(reader, wanted: int | None):
    if wanted is None:
        return reader.neutral_frame
    for frame in reader.frames:
        if int(frame.frame_id) == wanted:
            return frame
    numbers = [int(frame.frame_id) for frame in reader.frames]
    raise UserError(f"frame {wanted} is not in {reader.layout.frame_list} (it lists {len(numbers)} frames, "
                    f"{min(numbers)}..{max(numbers)})")


class Capture:
    """One capture's sample at (camera, frame), loaded as training loads it."""

    def __init__(self, root: Path, camera: str | None, frame: int | None, downsample: int | None) -> None:
        from ava.data.calibration import read_calibration
        from ava.data.capture import MemberError
        from ava.data.dataset import CaptureDataset
        from ava.data.layout import CaptureLayout
        from ava.runtime.cameras import frontal_cameras

        self.root = Path(root)
        self.layout = CaptureLayout(self.root)
        if not self.root.exists():
            raise UserError(f"{self.root} does not exist; pass a capture folder, <dataset>/<mcd>--<mct>--<sid>")
        if not self.layout.decoder.is_dir():
            raise UserError(f"{self.root} is not a capture folder (it has no decoder/); pass <dataset>/<mcd>--<mct>--<sid>")
        calibration = read_calibration(self.layout.calibration)
        by_id = {entry.camera_id: entry for entry in calibration}
        if camera is not None and camera not in by_id:
            raise UserError(f"camera {camera} is not in {self.layout.calibration} (it has {len(by_id)} cameras, "
                            f"e.g. {', '.join(sorted(by_id)[:6])})")
        with_images = [entry for entry in calibration if self.layout.image_zip(entry.camera_id).is_file()]
        probe = by_id[camera] if camera is not None else (with_images or calibration)[0]
        if downsample is not None and downsample < 1:
            raise UserError("--downsample must be at least 1")
        self.downsample = downsample or stored_downsample(self.layout, probe)
        self.dataset = CaptureDataset(self.root, self.downsample)
        self.reader = self.dataset.reader
        self.camera_id = camera or frontal_cameras([self.dataset])[0]
        self.frame = _choose_frame(self.reader, frame)
        index = _sample_index(self.dataset, self.frame, self.camera_id)
        try:
            self.sample = self.dataset.load_sample(index)
        except MemberError as error:
            raise UserError(f"frame {self.frame.frame_id} of camera {self.camera_id} cannot be loaded: {error}") from None
        stats = self.dataset.stats
        self.vertices = self.sample["verts"] * stats.vertstd + torch.from_numpy(stats.vertmean)  # [V,3] mm, head frame
        self.subject = self.root.name.split("--")[-1]
        self.name = f"{self.subject}_{self.camera_id}_{int(self.frame.frame_id):06d}"

    def reader_with(self, **parts):
        """A reader of this capture's camera that also takes stock of an optional part's archive
        (with_keypoints / with_segmentation), so that its members are found as the data layer
        finds them (whatever folder they were packed under)."""
        from ava.data.capture import CaptureReader

        return CaptureReader(self.root, [self.camera_id], **parts)

    @property
    def image(self) -> np.ndarray:
        from ava.runtime.images import to_uint8

        return to_uint8(self.sample["image"])

    def caption(self, what: str) -> str:
        height, width = self.sample["image"].shape[-2:]
        return (f"{self.subject}, camera {self.camera_id}, frame {self.frame.frame_id} ({self.frame.segment}), "
                f"{width}x{height} (WxH)\n{what}")

    def project(self, points: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Head-frame points [P,3] (mm) -> (pixels [P,2], camera-frame points [P,3]) as numpy."""
        from ava.runtime.cameras import project_points

        sample = self.sample
        pixels, in_camera = project_points(points.float(), sample["camrot"], sample["campos"], sample["focal"],
                                           sample["princpt"])
        return pixels.numpy().astype(np.float64), in_camera.numpy().astype(np.float64)


def draw_mesh(capture: Capture, style: str, topology: Path | None):
    from ava.nn.topology import topology_path
    from ava.nn.uvmap import load_obj
    from ava.show.pictures import mesh_overlay

    path = topology_path(topology, capture.root.parent)
    faces = load_obj(path).faces.numpy()
    if faces.max() >= len(capture.vertices):
        raise UserError(f"the topology {path} has faces on {faces.max() + 1}+ vertices but the capture's meshes have "
                        f"{len(capture.vertices)}; pass the capture's topology with --topology")
    pixels, in_camera = capture.project(capture.vertices)
    return mesh_overlay(capture.image, pixels, in_camera, faces, style,
                        capture.caption(f"tracked mesh ({style}) through the head pose and calibration"))


def draw_keypoints(capture: Capture):
    from ava.data.capture import KEYPOINT_COUNT
    from ava.show.pictures import keypoints_overlay

    if not capture.layout.keypoints_zip.is_file():
        raise PartAbsent(f"no {capture.layout.keypoints_zip}")
    values, present = capture.reader_with(with_keypoints=True).load_keypoints(capture.frame)
    headpose = capture.sample["headpose"].double()
    world = torch.from_numpy(values[present, :3]).double()
    head = (world - headpose[:, 3]) @ headpose[:, :3]  # x_h = Hr^T (x_w - Ht), row vectors
    pixels, in_camera = capture.project(head)
    confidence, inliers = values[present, 3], values[present, 4]
    valid = (inliers > 0) & (confidence > 0) & np.all(np.isfinite(values[present]), axis=1)
    return keypoints_overlay(capture.image, pixels, in_camera[:, 2] > 0, valid, inliers, int(present.sum()),
                             KEYPOINT_COUNT, capture.caption("3D keypoints (world frame -> head pose -> camera)"))


def draw_segmentation(capture: Capture):
    from ava.data.layout import SEGMENTATION_CLASSES
    from ava.show.pictures import segmentation_overlay

    path = capture.layout.segmentation_zip(capture.camera_id)
    if not path.is_file():
        raise PartAbsent(f"no {path}")
    height, width = capture.sample["image"].shape[-2:]
    labels = capture.reader_with(with_segmentation=True).load_segmentation(capture.camera_id, capture.frame,
                                                                            (width, height))
    return segmentation_overlay(capture.image, labels, SEGMENTATION_CLASSES, capture.caption("part segmentation"))


def draw_cameras(capture: Capture):
    from ava.data.calibration import camera_in_head_frame
    from ava.show.pictures import camera_plan

    headpose = capture.sample["headpose"].double().numpy()
    rotations, positions = zip(*(camera_in_head_frame(camera, headpose) for camera in capture.reader.cameras))
    rotations, positions = np.stack(rotations), np.stack(positions)
    up = -rotations[:, 1].mean(axis=0)  # image rows run down: a camera's up is -y; domes stand upright
    return camera_plan(capture.reader.camera_ids, positions, rotations[:, 2], capture.vertices.double().numpy(),
                       up, capture.camera_id,
                       f"{capture.root.name}: {len(positions)} cameras around the head, seen from above\n"
                       f"(head frame at frame {capture.frame.frame_id}); camera {capture.camera_id} in red")


def draw_headset(capture: Capture, wanted: int | None):
    from ava.data.formats import BadMember
    from ava.data.headset_capture import EncoderCapture
    from ava.show.pictures import headset_strip

    if not capture.layout.encoder_frame_list.is_file():
        raise PartAbsent(f"no {capture.layout.encoder_frame_list}")
    headset = EncoderCapture(capture.root)
    numbers = {int(frame_id): frame_id for _, frame_id in headset.frames}
    if not numbers:
        raise UserError(f"{headset.layout.encoder_frame_list} lists no frames")
    if wanted is not None and wanted not in numbers:
        raise UserError(f"headset frame {wanted} is not in {headset.layout.encoder_frame_list} "
                        f"({len(numbers)} frames, {min(numbers)}..{max(numbers)})")
    if wanted is not None:
        number = wanted
    elif int(capture.frame.frame_id) in numbers:
        number = int(capture.frame.frame_id)
    else:  # the headset capture has its own frame numbers
        number = next(iter(numbers))
    views = []
    for camera in headset.cameras:
        try:
            views.append((camera, headset.image(camera, numbers[number])))
        except BadMember as error:
            raise UserError(f"{headset.layout.encoder_zip(camera)}: frame {number}: {error}") from None
    return headset_strip(views, f"{capture.root.name}: headset frame {number}, {len(views)} IR cameras"), number


def _release_images(capture: Capture) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(the camera's recorded background uint8 [H,W,3], the frame's foreground mask f32 [H,W]),
    each None where the capture has none, at the sample's size."""
    from ava.data.extras import CaptureExtras

    extras = CaptureExtras(capture.root)
    height, width = capture.sample["image"].shape[-2:]
    background = extras.background(capture.camera_id, (width, height))
    mask = extras.mask(capture.camera_id, capture.frame.frame_id, (width, height))
    if extras.problems:
        raise UserError("; ".join(extras.problems))
    return (None if background is None else np.clip(np.rint(background.transpose(1, 2, 0)), 0, 255).astype(np.uint8),
            None if mask is None else mask[0])


def draw_background(capture: Capture):
    from ava.show.pictures import background_figure

    background, _ = _release_images(capture)
    if background is None:
        raise PartAbsent(f"no background of camera {capture.camera_id} in {capture.layout.background_zip}")
    return background_figure(capture.image, background, capture.caption("the camera's recorded empty background"))


def draw_mask(capture: Capture):
    from ava.show.pictures import mask_figure

    background, mask = _release_images(capture)
    if mask is None:
        raise PartAbsent(f"no mask of this frame in {capture.layout.foreground_mask_zip(capture.camera_id)}")
    return mask_figure(capture.image, mask, background, capture.caption("foreground mask"))


def show(config) -> Shown:
    """`config`: an ava.show.config.ShowConfig. Writes the pictures; returns what was done."""
    from ava.data.capture import MemberError
    from ava.data.formats import BadMember
    from ava.runtime.figures import save_figure
    from ava.runtime.images import save_png

    explicit = ALL_PARTS not in config.parts
    wanted = list(dict.fromkeys(config.parts)) if explicit else list(PARTS)
    capture = Capture(config.capture_dir, config.camera, config.frame, config.downsample)
    output = Path(config.output)
    shown = Shown()
    drawers = {
        "mesh": lambda: draw_mesh(capture, config.mesh_style, config.topology),
        "keypoints": lambda: draw_keypoints(capture),
        "segmentation": lambda: draw_segmentation(capture),
        "cameras": lambda: draw_cameras(capture),
        "background": lambda: draw_background(capture),
        "mask": lambda: draw_mask(capture),
    }
    for part in wanted:
        try:
            if part == "image":
                shown.written[part] = save_png(output / f"{capture.name}_image.png", capture.image)
            elif part == "headset":
                picture, number = draw_headset(capture, config.headset_frame)
                shown.written[part] = save_figure(picture, output / f"{capture.subject}_headset_{number:06d}.png")
            else:
                shown.written[part] = save_figure(drawers[part](), output / f"{capture.name}_{part}.png")
        except PartAbsent as absent:
            advice = f"{absent}: the capture lacks this part (download the {ABSENT_ADVICE[part]} asset)"
            (shown.failed if explicit else shown.absent)[part] = advice
        except (UserError, MemberError, BadMember) as error:
            shown.failed[part] = str(error)
    return shown
