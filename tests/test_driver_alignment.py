"""Time alignment of headset and dome takes (ava.driver.alignment): DTW recovers known warps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ava.driver.alignment import default_max_step, linear_stretch, monotone_alignment, squared_distances
from ava.synth.headset_sessions import monotone_warp


@st.composite
def warped_takes(draw):
    """Distinct per-frame codes of a dome take, a random monotone warp with repeats and skips,
    and the headset take's (noisy) codes under that warp."""
    dome_length = draw(st.integers(2, 25))
    headset_length = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    warp = monotone_warp(dome_length, headset_length, rng, jitter=draw(st.floats(0.0, 1.0)))
    codes = rng.normal(size=(dome_length, 8))
    predicted = codes[warp] + 0.05 * rng.normal(size=(headset_length, 8))
    return codes, predicted, warp


@given(warped_takes())
def test_dtw_recovers_a_known_monotone_warp(takes):
    codes, predicted, warp = takes
    steps = np.diff(warp)
    max_step = max(default_max_step(len(predicted), len(codes)), int(steps.max(initial=0)))
    found = monotone_alignment(squared_distances(predicted, codes), max_step=max_step)
    np.testing.assert_array_equal(found, warp)


@given(st.integers(1, 30), st.integers(1, 30))
def test_linear_stretch_spans_the_segment(headset_length, dome_length):
    warp = linear_stretch(headset_length, dome_length)
    assert len(warp) == headset_length and warp[0] == 0 and np.all(np.diff(warp) >= 0)
    if headset_length > 1:
        assert warp[-1] == dome_length - 1


def test_constraints_are_respected_even_when_the_cost_pulls_elsewhere():
    rng = np.random.default_rng(3)
    cost = rng.uniform(size=(12, 20))
    cost[:, 5] = -10.0  # every headset frame would like dome frame 5
    path = monotone_alignment(cost, max_step=3, band=0.3)
    assert path[0] == 0 and path[-1] == 19
    assert np.all(np.diff(path) >= 0) and np.all(np.diff(path) <= 3)
    assert np.all(np.abs(path / 19 - np.arange(12) / 11) <= 0.3 + 1e-9)
    assert monotone_alignment(np.array([[3.0, 1.0, 2.0]])).tolist() == [1]  # one frame: its cheapest match


def test_impossible_constraints_are_refused():
    with pytest.raises(ValueError, match="cannot reach"):
        monotone_alignment(np.zeros((3, 10)), max_step=2)
    with pytest.raises(ValueError, match="non-finite"):
        monotone_alignment(np.array([[0.0, np.nan]]))


@given(st.integers(2, 12), st.integers(2, 12), st.floats(0.0, 0.5))
def test_a_band_always_admits_the_linear_stretch(headset_length, dome_length, band):
    # Short segments: a band narrower than one frame must not leave the DP without a path.
    rng = np.random.default_rng(headset_length * 100 + dome_length)
    path = monotone_alignment(rng.uniform(size=(headset_length, dome_length)), band=band)
    assert path[0] == 0 and path[-1] == dome_length - 1


@given(warped_takes(), st.floats(0.0, 0.3), st.floats(0.0, 0.3))
def test_open_ends_recover_a_take_that_starts_late_and_stops_early(takes, cut_start, cut_end):
    """A headset recording that began after the dome take's first frames and stopped before its
    last: with open ends the alignment finds where it starts and stops."""
    codes, predicted, warp = takes
    dome_length = len(codes)
    first, last = int(cut_start * (dome_length - 1)), dome_length - 1 - int(cut_end * (dome_length - 1))
    keep = (warp >= first) & (warp <= last)
    if keep.sum() < 2:
        return
    warp, predicted = warp[keep], predicted[keep]
    # The premise of open ends: the recording starts and stops within 30% of the dome take's ends.
    # A warp that skips many frames can leave its kept part ending earlier than that; such a take
    # is outside what open_ends=0.3 promises to recover (about 6% of random draws).
    slack = int(0.3 * (dome_length - 1) + 1e-9)
    assume(warp[0] <= slack and warp[-1] >= dome_length - 1 - slack)
    max_step = max(default_max_step(len(predicted), dome_length), int(np.diff(warp).max(initial=0)))
    found = monotone_alignment(squared_distances(predicted, codes), max_step=max_step, open_ends=0.3)
    np.testing.assert_array_equal(found, warp)
    closed = monotone_alignment(squared_distances(predicted, codes), max_step=max(max_step, dome_length))
    assert closed[0] == 0 and closed[-1] == dome_length - 1  # without: pinned to the ends
