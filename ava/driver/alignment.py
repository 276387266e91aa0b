"""Time alignment of two takes of a segment: the headset take against the dome take.

The headset and dome sessions of a subject follow the same script of expression segments but
were recorded separately, so within a segment frame i of the headset take shows roughly what
frame j(i) of the dome take shows, for an unknown monotone warp j. Dynamic time warping (Sakoe &
Chiba 1978, "Dynamic programming algorithm optimization for spoken word recognition") finds the
warp that minimises a frame-to-frame cost along a monotone path. Here the path is asymmetric:
every headset frame gets exactly one dome frame (it needs one regression target), the dome index
never decreases and advances by at most `max_step` per headset frame (a slope constraint against
degenerate paths), both takes start and end together (j(0) = 0, j(m-1) = n-1) unless the ends are
left open (`open_ends`: the path may start and stop within that fraction of the dome take's ends,
for recordings that began or stopped at other moments of the performance), and an optional
Sakoe-Chiba band keeps the path within `band` (a fraction of the segment, at least one frame) of
the diagonal.
"""

from __future__ import annotations

import math

import numpy as np


def linear_stretch(headset_length: int, dome_length: int) -> np.ndarray:
    """int [m]: the warp of a take played at constant speed, round(i (n-1) / (m-1))."""
    if headset_length < 1 or dome_length < 1:
        raise ValueError("both takes need at least one frame")
    if headset_length == 1:
        return np.zeros(1, dtype=np.int64)
    return np.rint(np.arange(headset_length) * (dome_length - 1) / (headset_length - 1)).astype(np.int64)


def default_max_step(headset_length: int, dome_length: int) -> int:
    """Twice the mean slope, at least 2 (and never so small that the end cannot be reached)."""
    if headset_length < 2:
        return max(dome_length - 1, 1)
    return max(2, math.ceil(2.0 * (dome_length - 1) / (headset_length - 1)))


def monotone_alignment(cost: np.ndarray, max_step: int | None = None, band: float | None = None,
                       open_ends: float = 0.0) -> np.ndarray:
    """The warp j [m] minimising sum_i cost[i, j(i)].

    cost [m,n] (finite, e.g. squared distances between per-frame codes). Constraints: j(0) = 0 and
    j(m-1) = n-1, or with `open_ends` > 0, j(0) <= open_ends (n-1) and j(m-1) >= (1 - open_ends)
    (n-1) (the two recordings of a segment need not start and stop at the same moment of the
    performance); 0 <= j(i+1) - j(i) <= max_step (default: `default_max_step`), and with `band`,
    |j(i) - i (n-1)/(m-1)| <= max(band (n-1), 1) dome frames. A single headset frame (m = 1) takes
    its cheapest dome frame.
    Raises ValueError when the constraints admit no path.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or min(cost.shape) < 1:
        raise ValueError(f"cost must be a non-empty [m,n] matrix, got shape {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost holds non-finite values")
    m, n = cost.shape
    if m == 1:
        return np.array([int(np.argmin(cost[0]))], dtype=np.int64)
    step = default_max_step(m, n) if max_step is None else int(max_step)
    if step < 1:
        raise ValueError("max_step must be at least 1")
    if step * (m - 1) < n - 1:
        raise ValueError(f"{m} headset frames cannot reach {n} dome frames in steps of at most {step}")
    local = cost.copy()
    if band is not None and n > 1:
        # In dome frames, and never narrower than one frame, so the rounded diagonal (the linear
        # stretch) always lies inside and a path always exists.
        distance = np.abs(np.arange(n)[None, :] - np.arange(m)[:, None] * (n - 1) / (m - 1))
        local[distance > max(band * (n - 1), 1.0)] = np.inf
    total = np.full((m, n), np.inf)
    came_from = np.zeros((m, n), dtype=np.int64)
    slack = int(math.floor(max(open_ends, 0.0) * (n - 1) + 1e-9))
    total[0, : slack + 1] = local[0, : slack + 1]
    for i in range(1, m):
        # Candidates: the previous row shifted by 0..step (a dome index that advanced by that much).
        shifted = np.full((step + 1, n), np.inf)
        for advance in range(min(step, n - 1) + 1):
            shifted[advance, advance:] = total[i - 1, : n - advance]
        best = np.argmin(shifted, axis=0)
        total[i] = local[i] + shifted[best, np.arange(n)]
        came_from[i] = np.arange(n) - best
    end = n - 1 - slack + int(np.argmin(total[-1, n - 1 - slack :]))
    if not np.isfinite(total[-1, end]):
        raise ValueError("no monotone path satisfies the band and step constraints; widen the band")
    path = np.empty(m, dtype=np.int64)
    path[-1] = end
    for i in range(m - 1, 0, -1):
        path[i - 1] = came_from[i, path[i]]
    return path


def squared_distances(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """[m,n] mean squared difference between rows of predicted [m,D] and reference [n,D]."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    return ((predicted[:, None, :] - reference[None, :, :]) ** 2).mean(axis=-1)


def align_segments(segments, predicted: np.ndarray, reference: np.ndarray, *, max_step: int = 0,
                   band: float | None = None, open_ends: float = 0.0) -> np.ndarray:
    """Targets for every headset frame of several segments.

    segments: (headset ids, dome ids) pairs of int arrays (rows of `predicted` and of `reference`
    that belong to one segment, in recording order); predicted [N,D], reference [C,D] codes.
    Returns int [N] (a reference row per predicted row; -1 for rows in no segment). max_step 0
    means `default_max_step`; band >= 1 or None means no band; open_ends as in `monotone_alignment`.
    """
    targets = np.full(len(predicted), -1, dtype=np.int64)
    for headset_ids, dome_ids in segments:
        cost = squared_distances(predicted[headset_ids], reference[dome_ids])
        path = monotone_alignment(cost, max_step=max_step or None, band=None if band is None or band >= 1 else band,
                                  open_ends=open_ends)
        targets[headset_ids] = np.asarray(dome_ids)[path]
    return targets


def stretch_segments(segments, size: int) -> np.ndarray:
    """Targets from a linear time stretch of every segment (the alignment before any model exists)."""
    targets = np.full(size, -1, dtype=np.int64)
    for headset_ids, dome_ids in segments:
        targets[headset_ids] = np.asarray(dome_ids)[linear_stretch(len(headset_ids), len(dome_ids))]
    return targets
