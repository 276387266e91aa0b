"""The pictures of `ava show`, drawn with matplotlib from arrays (no file access here).

Pixel coordinates follow ava's convention (x = column, y = row, pixel centres at integers), so a
point drawn at (x, y) lies where the model's ray through pixel (x, y) passes.
"""

from __future__ import annotations

import numpy as np

from ava.runtime.figures import figure, panel_scale, show_image

MESH_COLOUR = np.array([0.55, 0.78, 1.0])
MESH_ALPHA = 0.5
MIN_WIDTH = 560  # room for the two-line caption
OVERLAY_ALPHA = 0.55


def _image_figure(image: np.ndarray, title: str, legend_pixels: int = 0, beside: bool = False):
    """A Figure sized for `image` (enlarged when small) plus room for a title and a legend; the
    axes to draw on. beside: the plain image to the left of the one drawn on, for comparison."""
    height, width = image.shape[:2]
    scale = panel_scale(height)
    panels = 2 if beside else 1
    result = figure(max(panels * width * scale + legend_pixels, MIN_WIDTH) + 20 * panels, height * scale + 60)
    axes = result.subplots(1, panels)
    if beside:
        show_image(axes[0], image)
        axes = axes[1]
    show_image(axes, image)
    result.suptitle(title, fontsize=9)
    return result, axes


def outward_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Face normals [F,3] (not normalised), flipped if needed so that most point away from the
    mesh's centre: topologies differ in winding."""
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    outwards = np.sum(normals * (corners.mean(axis=1) - vertices.mean(axis=0)), axis=1)
    return normals if outwards.sum() >= 0 else -normals


def mesh_overlay(image: np.ndarray, pixels: np.ndarray, in_camera: np.ndarray, faces: np.ndarray, style: str,
                 title: str):
    """The mesh over the image. pixels [V,2] (x, y) and in_camera [V,3] (camera frame, mm) of every
    vertex; faces [F,3]. "shaded": faces towards the camera, lit from the camera, far ones first;
    "wireframe": every edge."""
    from matplotlib.collections import LineCollection, PolyCollection

    result, axes = _image_figure(image, title, beside=True)
    in_front = np.all(in_camera[faces][:, :, 2] > 0, axis=1)
    faces = faces[in_front]
    if style == "wireframe":
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        edges = np.unique(np.sort(edges, axis=1), axis=0)
        axes.add_collection(LineCollection(pixels[edges], colors=[(*MESH_COLOUR, 0.8)], linewidths=0.3))
        return result
    normals = outward_normals(in_camera, faces)
    centres = in_camera[faces].mean(axis=1)
    facing = np.sum(normals * centres, axis=1) < 0  # the camera sits at the origin of its own frame
    normals, centres, faces = normals[facing], centres[facing], faces[facing]
    lit = np.abs(np.sum(normals * centres, axis=1)) / (
        np.linalg.norm(normals, axis=1) * np.linalg.norm(centres, axis=1) + 1e-12)
    order = np.argsort(-centres[:, 2])  # painter's order: far faces first
    colours = np.concatenate([MESH_COLOUR * (0.15 + 0.85 * lit[order, None]),
                              np.full((len(order), 1), MESH_ALPHA)], axis=1)
    axes.add_collection(PolyCollection(pixels[faces[order]], facecolors=colours,
                                       edgecolors=[(*MESH_COLOUR * 0.4, 0.5)], linewidths=0.2))
    return result


def keypoints_overlay(image: np.ndarray, pixels: np.ndarray, in_front: np.ndarray, valid: np.ndarray,
                      inliers: np.ndarray, present: int, total: int, title: str):
    """Keypoints over the image: valid ones as dots coloured by their number of inliers, invalid
    ones (in the file but without inliers) as red crosses. pixels [K,2], in_front/valid bool [K],
    inliers [K] for the K keypoints in the file; `present` of `total` ids are in it."""
    result, axes = _image_figure(image, title, legend_pixels=40)
    good = valid & in_front
    bad = ~valid & in_front
    handles = []
    if good.any():
        dots = axes.scatter(pixels[good, 0], pixels[good, 1], c=inliers[good], cmap="viridis", s=14,
                            edgecolors="black", linewidths=0.3, label=f"valid ({int(good.sum())})")
        result.colorbar(dots, ax=axes, shrink=0.6, label="inliers")
        handles.append(dots)
    if bad.any():
        handles.append(axes.scatter(pixels[bad, 0], pixels[bad, 1], marker="x", c="red", s=22, linewidths=1.0,
                                    label=f"invalid: no inliers ({int(bad.sum())})"))
    behind = int((~in_front).sum())
    note = f"{present} of {total} keypoint ids in the file" + (f"; {behind} behind the camera" if behind else "")
    axes.legend(handles=handles, loc="lower left", fontsize=7, title=note, title_fontsize=7, framealpha=0.8)
    return result


def segmentation_overlay(image: np.ndarray, labels: np.ndarray, classes: dict[int, str], title: str):
    """Part labels [H,W] over the image in colour (background left clear), with a legend of the
    classes present and their share of the image."""
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    result, axes = _image_figure(image, title, legend_pixels=170)
    palette = colormaps["tab20"].colors
    present = [int(label) for label in np.unique(labels) if label != 0]
    overlay = np.zeros((*labels.shape, 4))
    handles = []
    for label in present:
        colour = palette[(2 * (label - 1)) % 20 if label <= 10 else (2 * label - 19) % 20]
        overlay[labels == label] = (*colour, OVERLAY_ALPHA)
        share = 100.0 * np.mean(labels == label)
        handles.append(Patch(color=colour, label=f"{label} {classes.get(label, 'unknown label')} ({share:.1f}%)"))
    axes.imshow(overlay, interpolation="nearest", extent=(-0.5, labels.shape[1] - 0.5, labels.shape[0] - 0.5, -0.5))
    if not handles:
        handles.append(Patch(color="none", label="no labelled pixels"))
    result.legend(handles=handles, loc="outside right center", fontsize=7, title="part", title_fontsize=8)
    return result


def top_down_axes(positions: np.ndarray, up: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, forward) unit vectors of a view from above (against `up`): forward is the mean
    direction from `centre` to `positions` [C,3] in the plane normal to up, right = forward x up."""
    up = up / np.linalg.norm(up)
    directions = positions - centre
    forward = directions.mean(axis=0)
    forward = forward - up * (forward @ up)
    if np.linalg.norm(forward) < 1e-9:  # cameras all around: any horizontal direction will do
        forward = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    forward = forward / np.linalg.norm(forward)
    return np.cross(forward, up), forward


def camera_plan(camera_ids: list[str], positions: np.ndarray, axes_forward: np.ndarray, head: np.ndarray,
                up: np.ndarray, chosen: str, title: str):
    """The rig seen from above, in the head frame: the head's vertices (grey), each camera as a dot
    with a short line along its optical axis and its id; `chosen` in red. positions [C,3],
    axes_forward [C,3] (unit optical axes), head [V,3], up [3]: all head frame, mm."""
    centre = head.mean(axis=0)
    right, forward = top_down_axes(positions, up, centre)

    def plane(points: np.ndarray) -> np.ndarray:
        relative = points - centre
        return np.stack([relative @ right, relative @ forward], axis=-1)

    flat = plane(positions)
    shown_head = plane(head)
    every = np.concatenate([flat, shown_head])
    low, high = every.min(axis=0), every.max(axis=0)
    margin = 0.12 * float((high - low).max())
    spans = high - low + 2 * margin
    result = figure(900, 780 * spans[1] / spans[0] + 130)  # the plot keeps the rig's proportions
    axes = result.add_subplot()
    axes.scatter(shown_head[:, 0], shown_head[:, 1], s=0.5, c="0.6", label="tracked mesh")
    tips = plane(positions + axes_forward * float((high - low).max()) * 0.06)
    for index, camera in enumerate(camera_ids):
        colour = "red" if camera == chosen else "tab:blue"
        axes.plot([flat[index, 0], tips[index, 0]], [flat[index, 1], tips[index, 1]], color=colour, lw=0.8)
        axes.plot(*flat[index], "o", color=colour, ms=5 if camera == chosen else 3)
        axes.annotate(camera, flat[index], textcoords="offset points", xytext=(3, 3),
                      fontsize=7 if camera == chosen else 5.5, color=colour,
                      fontweight="bold" if camera == chosen else "normal")
    axes.set_xlim(low[0] - margin, high[0] + margin)
    axes.set_ylim(low[1] - margin, high[1] + margin)
    axes.set_aspect("equal")
    axes.grid(True, lw=0.3)
    axes.set_xlabel("mm towards the subject's right")
    axes.set_ylabel("mm towards the face (the cameras' mean direction)")
    axes.set_title(title, fontsize=9)
    return result


def headset_strip(views: list[tuple[str, np.ndarray]], title: str):
    """The headset's camera images side by side, each titled with its camera name."""
    from ava.runtime.figures import image_grid

    return image_grid([[(image, name) for name, image in views]], title=title)



def _panel_row(panels: list[tuple[np.ndarray, str]], title: str):
    """A Figure of images side by side at the show's panel size, each titled; returns it and its axes."""
    height, width = panels[0][0].shape[:2]
    scale = panel_scale(height)
    result = figure(max(len(panels) * (width * scale + 20), MIN_WIDTH), height * scale + 80)
    axes = result.subplots(1, len(panels))
    for axis, (image, label) in zip(axes, panels):
        show_image(axis, image, label)
    result.suptitle(title, fontsize=9)
    return result, axes


def background_figure(image: np.ndarray, background: np.ndarray, title: str):
    """[photo | the camera's recorded empty background | |photo - background| x4]: whatever differs
    from the empty backdrop (the person, hair and shoulders included) stands out in the third panel.
    image, background uint8 [H,W,3]."""
    from ava.runtime.images import ERROR_GAIN

    difference = np.abs(image.astype(np.float32) - background.astype(np.float32)).mean(axis=-1) * ERROR_GAIN
    return _panel_row([(image, "photo"), (background, "recorded background"),
                       (np.clip(difference, 0, 255).astype(np.uint8), f"|photo - background| x{ERROR_GAIN:g}")],
                      title)[0]


def mask_figure(image: np.ndarray, mask: np.ndarray, background: np.ndarray | None, title: str):
    """[the foreground mask | the photo, dimmed outside the mask, its 0.5 contour in orange | with a
    recorded background: the person alone, image - (1 - mask) * background, as the datasheet
    describes]. image, background uint8 [H,W,3]; mask f32 [H,W] in 0..1."""
    height, width = image.shape[:2]
    dimmed = np.clip(image.astype(np.float32) * (0.35 + 0.65 * mask[..., None]), 0, 255).astype(np.uint8)
    panels = [(np.clip(np.rint(255 * mask), 0, 255).astype(np.uint8), "foreground mask"),
              (dimmed, f"photo; mask >= 0.5: {100 * np.mean(mask >= 0.5):.1f}%")]
    if background is not None:
        person = image.astype(np.float32) - (1.0 - mask[..., None]) * background.astype(np.float32)
        panels.append((np.clip(person, 0, 255).astype(np.uint8), "photo - (1 - mask) x background"))
    result, axes = _panel_row(panels, title)
    if mask.min() < 0.5 < mask.max():  # a contour needs both sides
        axes[1].contour(np.arange(width), np.arange(height), mask, levels=[0.5], colors=["orange"], linewidths=1.0)
    return result
