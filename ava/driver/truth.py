"""The ground truth of synthetic headset sessions, as evaluation (and the oracle baseline) use it.

`ava synth` writes, beside each capture, every headset frame's and dome frame's expression vector
(`encoder_truth.json`, ava.data.headset_capture.read_encoder_truth). From these:

- **True codes.** The true code of a headset frame is what the frozen decoder's expression encoder
  makes of the synthetic ground truth of that frame's expression: the subject's mesh and texture
  for that expression vector (ava.synth.headset_sessions.TruthGeometry), relative to the subject's neutral
  frame, through the bottleneck's mean. Where the decoder's UV maps are as large as the stored
  textures, the texture is painted at that size and passed through the dome textures' AVIF
  coding, so a dome frame's true code is exactly the code of its stored mesh and texture. Where
  they are smaller (the decoder area-averages stored textures down to its UV size), it is painted
  directly at the UV size, which is faster by the square of the ratio (a 1024^2 texture takes
  about a second to paint) and differs from the averaged stored texture only in anti-aliasing.
- **The true dome frame.** Headset frames copy no dome frame: the headset take is another
  performance. A headset frame's *true dome frame* j* is the dome frame of the same segment whose
  expression vector is nearest (Euclidean distance over all controls) to the headset frame's.
- **Within one frame.** A dome frame j assigned to headset frame i (by a linear time stretch, or
  by DTW) lands *within one frame* of the truth when |j - j*| <= 1, where a tie (the dome take
  holds the nearest expression over several frames, e.g. the neutral segment) makes every tied
  frame a j*. It is *exact* when j is a j*.
  How often the stretch lands within one frame depends on how many dome frames a segment has (a
  segment of 3 frames is nearly always within one), so the measure is reported with the frames
  per segment; docs/driver.md lists it against the capture length.

The training code never imports this module, except for `--train.targets truth` (the oracle,
an upper bound that is told the answer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ava.driver.alignment import linear_stretch

# Tolerance of the expression-distance comparisons (controls are of order 1).
DISTANCE_TOLERANCE = 1e-9


def expression_distances(headset: np.ndarray, dome: np.ndarray) -> np.ndarray:
    """[m,n] Euclidean distances between expression vectors headset [m,C] and dome [n,C]."""
    return np.sqrt(((np.asarray(headset, float)[:, None, :] - np.asarray(dome, float)[None, :, :]) ** 2).sum(-1))


def within_one_frame(assigned: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """bool [m]: whether dome frame assigned[i] lands within one frame of headset frame i's true
    dome frame (the module docstring's definition); distances [m,n] from `expression_distances`."""
    assigned = np.asarray(assigned, dtype=np.int64)
    nearest = distances <= distances.min(axis=1, keepdims=True) + DISTANCE_TOLERANCE  # [m,n]: every tied j*
    reach = nearest.copy()
    reach[:, 1:] |= nearest[:, :-1]
    reach[:, :-1] |= nearest[:, 1:]
    return reach[np.arange(len(distances)), assigned]


def exact_frame(assigned: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """bool [m]: whether dome frame assigned[i] is (as near as) the true dome frame."""
    rows = np.arange(len(distances))
    return distances[rows, np.asarray(assigned, dtype=np.int64)] <= distances.min(axis=1) + DISTANCE_TOLERANCE


def session_segments(frames: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Segment -> frame ids in recording order."""
    grouped: dict[str, list[str]] = {}
    for segment, frame in frames:
        grouped.setdefault(segment, []).append(frame)
    return grouped


def segment_difficulty(headset: np.ndarray, dome: np.ndarray) -> dict:
    """How well a linear time stretch aligns one segment: headset [m,C] and dome [n,C] expression
    vectors of its two takes. Returns frames, dome_frames, stretch_exact and stretch_within_1
    (counts of headset frames, the module docstring's definitions) and summed squared expression
    errors of the stretch's dome frame (stretch_sq) and of the true dome frame (nearest_sq: the
    floor any choice of dome frames has)."""
    distances = expression_distances(headset, dome)
    stretch = linear_stretch(len(headset), len(dome))
    rows = np.arange(len(headset))
    return {"frames": len(headset), "dome_frames": len(dome),
            "stretch_exact": int(exact_frame(stretch, distances).sum()),
            "stretch_within_1": int(within_one_frame(stretch, distances).sum()),
            "stretch_sq": float((distances[rows, stretch] ** 2).sum()),
            "nearest_sq": float((distances.min(axis=1) ** 2).sum())}


def session_difficulty(headset: dict[str, np.ndarray], dome: dict[str, np.ndarray]) -> dict[str, dict]:
    """`segment_difficulty` of every segment both sessions have (segment -> [frames,C] vectors in
    recording order), with mean_sq: the summed squared distance of the headset frames to the
    session's mean expression (what a constant guess scores)."""
    every = np.concatenate(list(headset.values()))
    mean = every.mean(axis=0)
    rows = {}
    for segment, shown in headset.items():
        if segment in dome and len(shown) and len(dome[segment]):
            rows[segment] = {**segment_difficulty(shown, dome[segment]),
                             "mean_sq": float(((shown - mean) ** 2).sum())}
    return rows


def capture_difficulty(root: Path) -> dict[str, dict]:
    """`session_difficulty` of one synthetic capture, from its encoder_truth.json and frame lists."""
    from ava.data.formats import parse_frame_list
    from ava.data.headset_capture import read_encoder_truth
    from ava.data.layout import CaptureLayout
    from ava.files import read_text

    layout = CaptureLayout(Path(root))
    truth = read_encoder_truth(root)
    dome = session_segments(parse_frame_list(read_text(layout.frame_list), str(layout.frame_list)))
    headset = session_segments(parse_frame_list(read_text(layout.encoder_frame_list), str(layout.encoder_frame_list)))
    return session_difficulty({s: np.stack([truth.expression[f] for f in frames]) for s, frames in headset.items()},
                              {s: np.stack([truth.dome_expression[f] for f in frames]) for s, frames in dome.items()})


def summarise_difficulty(rows: list[dict]) -> dict:
    """Totals of `session_difficulty` rows: fractions, RMS errors (control units) and the mean
    number of dome frames per segment."""
    frames = sum(row["frames"] for row in rows)
    count = max(frames, 1)
    return {"frames": frames, "dome_frames_per_segment": float(np.mean([row["dome_frames"] for row in rows])), "stretch_exact": sum(row["stretch_exact"] for row in rows) / count,
            "stretch_within_1": sum(row["stretch_within_1"] for row in rows) / count,
            "stretch_rms": float(np.sqrt(sum(row["stretch_sq"] for row in rows) / count)),
            "nearest_rms": float(np.sqrt(sum(row["nearest_sq"] for row in rows) / count)),
            "mean_rms": float(np.sqrt(sum(row["mean_sq"] for row in rows) / count))}


# --- true codes ------------------------------------------------------------------------------------


def _dome_coded(texture: np.ndarray) -> np.ndarray:
    """The texture as the dome session stores it (AVIF) and the reader decodes it."""
    from ava.data.formats import decode_image, encode_avif

    return decode_image(encode_avif(texture))


@torch.no_grad()
def true_codes(subject, vectors: np.ndarray, controls: tuple[str, ...], geometry, model, device: torch.device,
               batch: int = 16) -> torch.Tensor:
    """[n,16,4,4]: the decoder's codes of the subject's ground truth making each expression of
    vectors [n,C] (controls in `controls` order). subject: an ava.driver.data.Subject (its dome
    view gives the neutral frame and the decoder's normalisation); geometry: a TruthGeometry."""
    from ava.data.collate import collate
    from ava.runtime.batch import to_device
    from ava.runtime.driving import neutral_sample_index
    from ava.runtime.model import encode_expression, fit_texture, uv_size

    part = subject.dome
    stats = part.stats
    neutral = part[neutral_sample_index(part)]
    stored = int(stats.texmean.shape[-1])
    size = min(stored, uv_size(model))
    texmean = fit_texture(torch.from_numpy(stats.texmean)[None].float(), size)[0]  # area averages commute
    codes = []
    for start in range(0, len(vectors), batch):
        chunk = vectors[start : start + batch]
        meshes, textures = [], []
        for vector in chunk:
            vertices, texture = geometry.mesh_and_texture(subject.folder, dict(zip(controls, map(float, vector))),
                                                          texture_size=size)
            meshes.append((torch.from_numpy(np.asarray(vertices, np.float32)) - torch.from_numpy(stats.vertmean))
                          / stats.vertstd)
            if size == stored:
                texture = _dome_coded(texture)
            chw = torch.from_numpy(np.ascontiguousarray(texture.transpose(2, 0, 1))).float()
            textures.append((chw - texmean) / stats.texstd)
        samples = collate([neutral] * len(chunk))
        samples["verts"], samples["avgtex"] = torch.stack(meshes), torch.stack(textures)
        codes.append(encode_expression(model, to_device(samples, device)).cpu())
    return torch.cat(codes) if codes else torch.zeros(0, 16, 4, 4)


def headset_true_codes(subject, truth, geometry, model, device: torch.device) -> torch.Tensor:
    """[M,16,4,4]: the true code of every headset frame of `subject`, in subject.headset.frames order."""
    vectors = np.stack([truth.expression[frame] for _, frame in subject.headset.frames])
    return true_codes(subject, vectors, truth.controls, geometry, model, device)


def pool_true_codes(pool, dataset_dir: Path, model, device: torch.device, console) -> torch.Tensor:
    """[N,16,4,4]: the true code of every frame of an ava.driver.data.FramePool, in pool order
    (the oracle's targets)."""
    from rich.progress import track

    from ava.data.headset_capture import read_encoder_truth
    from ava.synth.headset_sessions import TruthGeometry

    geometry = TruthGeometry(dataset_dir)
    per_subject = [headset_true_codes(subject, read_encoder_truth(Path(dataset_dir) / subject.folder), geometry,
                                      model, device)
                   for subject in track(pool.subjects, description="true codes (oracle)", console=console,
                                        transient=True)]
    return torch.stack([per_subject[number][frame] for number, frame in pool.entries])
