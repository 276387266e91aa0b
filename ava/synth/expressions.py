"""The synthetic world's expressions: named controls, scripted segments and takes of them.

An `Expression` is one frame's values of the controls in `CONTROLS` (vector order), each acting on
the geometry (head.py `expression_offsets`, template.py on a face topology) and on the texture
(appearance.py `paint_texture`). Neutral is all zeros. Unsigned controls run 0..1 (1: the full
movement), signed ones -1..1:

- jaw: `jaw_open`, `jaw_sideways` (+: the chin moves towards the subject's left);
- lips: `lip_funnel` (rounded, open, pushed forward), `lip_pucker` (closed, narrow, pushed
  forward), `smile_left` / `smile_right` (a mouth corner up, out and back, the cheek raised),
  `frown_left` / `frown_right` (a mouth corner pulled down), `cheek_puff`, `tongue_out`;
- eyes: `blink_left` / `blink_right` (1: closed), `gaze_horizontal` (+: towards the subject's
  left), `gaze_vertical` (+: up), moving iris and pupil in the texture and the cornea's bulge;
- brows: `brow_inner_left`, `brow_inner_right`, `brow_outer_left`, `brow_outer_right` (+: raised,
  -: lowered and, for the inner ends, drawn together);
- `nose_wrinkle`.

Left and right are the subject's (+x of the head frame).

A capture's frame list is a sequence of segments named like Ava-256's (`SEGMENTS`,
`EXP_neutral_peak` first). Each segment has a script (`SEGMENT_SCRIPTS`): a sequence of `Beat`s,
key poses combining controls, each reached over a ramp and held. A *take* of a segment
(`perform_segment`) is one performance of its script: its own amplitudes per beat and per control,
its own ramp and hold durations, extra holds, hesitations (a ramp that pauses part way), a lead-in
and lead-out at neutral, spontaneous blinks and a slow gaze drift; `EXP_free_face` is a random
sequence of random control combinations. All randomness comes from the generator passed in, so a
headset take of the same script is simply another call with another generator.

Interface used elsewhere (dome sessions in pipeline.py, headset takes, evaluation):
`CONTROLS`, `Expression` (`as_vector`, `from_vector`, `as_dict`, `from_dict`), `SEGMENTS`,
`SEGMENT_SCRIPTS`, `perform_segment(segment, num_frames, rng, variation=1.0)` and
`segment_lengths(count)`. The ground truth of an (identity, expression) pair on a head surface is
`ava.synth.truth.GroundTruth`; each synthetic capture's `synth_truth.json` records its identity and
per-frame expression vectors (`ava.synth.truth.read_synth_truth`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from ava.data.layout import NEUTRAL_SEGMENT


@dataclass(frozen=True)
class Expression:
    """One frame's expression: every control's value (neutral: all zero). See the module docstring."""

    jaw_open: float = 0.0
    """0..1: the jaw drops (about 14 mm at the chin) and the mouth opens."""
    jaw_sideways: float = 0.0
    """-1..1: the lower face shifts sideways (about 7 mm at the chin), + towards the subject's left."""
    lip_funnel: float = 0.0
    """0..1: lips pushed forward into an open, rounded funnel ("oo")."""
    lip_pucker: float = 0.0
    """0..1: lips pushed forward, closed and narrowed (a kiss)."""
    smile_left: float = 0.0
    """0..1: the left mouth corner moves up, out and back; the left cheek rises and flushes."""
    smile_right: float = 0.0
    """0..1: as smile_left on the right."""
    frown_left: float = 0.0
    """0..1: the left mouth corner is pulled down."""
    frown_right: float = 0.0
    """0..1: as frown_left on the right."""
    cheek_puff: float = 0.0
    """0..1: both cheeks blown out (about 9 mm), the skin stretched and shinier."""
    blink_left: float = 0.0
    """0..1: the left eye closes (1: closed)."""
    blink_right: float = 0.0
    """0..1: as blink_left on the right."""
    gaze_horizontal: float = 0.0
    """-1..1: both eyes look towards the subject's left (+) or right (-)."""
    gaze_vertical: float = 0.0
    """-1..1: both eyes look up (+) or down (-)."""
    brow_inner_left: float = 0.0
    """-1..1: the inner end of the left brow rises (+) or lowers and draws in (-; frown lines)."""
    brow_inner_right: float = 0.0
    """-1..1: as brow_inner_left on the right."""
    brow_outer_left: float = 0.0
    """-1..1: the outer end of the left brow rises (+) or lowers (-)."""
    brow_outer_right: float = 0.0
    """-1..1: as brow_outer_left on the right."""
    nose_wrinkle: float = 0.0
    """0..1: the nose bridge wrinkles and rises, the nostrils flare, the upper lip lifts."""
    tongue_out: float = 0.0
    """0..1: the tongue comes out of the mouth (scripts open the jaw with it)."""

    def as_vector(self) -> np.ndarray:
        """f64 [len(CONTROLS)] the values in `CONTROLS` order."""
        return np.array([getattr(self, name) for name in CONTROLS], dtype=np.float64)

    @classmethod
    def from_vector(cls, vector) -> "Expression":
        """The expression of a vector [len(CONTROLS)] in `CONTROLS` order (values are not clipped)."""
        values = np.asarray(vector, dtype=np.float64).reshape(-1)
        if values.shape != (len(CONTROLS),):
            raise ValueError(f"an expression vector has {len(CONTROLS)} values ({', '.join(CONTROLS)}), got {values.shape}")
        return cls(**{name: float(value) for name, value in zip(CONTROLS, values)})

    def as_dict(self) -> dict[str, float]:
        """{control: value} for every control."""
        return {name: float(getattr(self, name)) for name in CONTROLS}

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> "Expression":
        """From {control: value}; missing controls are 0, unknown names a ValueError."""
        unknown = set(values) - set(CONTROLS)
        if unknown:
            raise ValueError(f"unknown expression controls {sorted(unknown)}; known: {', '.join(CONTROLS)}")
        return cls(**{name: float(value) for name, value in values.items()})

    def clipped(self) -> "Expression":
        """Every value clipped to its control's range (`CONTROL_RANGES`)."""
        return Expression.from_vector(np.clip(self.as_vector(), RANGE_LOW, RANGE_HIGH))


CONTROLS: tuple[str, ...] = tuple(f.name for f in fields(Expression))
SIGNED_CONTROLS = frozenset({"jaw_sideways", "gaze_horizontal", "gaze_vertical", "brow_inner_left", "brow_inner_right",
                             "brow_outer_left", "brow_outer_right"})
CONTROL_RANGES: dict[str, tuple[float, float]] = {name: ((-1.0, 1.0) if name in SIGNED_CONTROLS else (0.0, 1.0))
                                                  for name in CONTROLS}
RANGE_LOW = np.array([CONTROL_RANGES[name][0] for name in CONTROLS])
RANGE_HIGH = np.array([CONTROL_RANGES[name][1] for name in CONTROLS])
_INDEX = {name: index for index, name in enumerate(CONTROLS)}


@dataclass(frozen=True)
class Beat:
    """One step of a script: reach `pose` (controls not named go back to 0) over `ramp` time units,
    then hold it for `hold` units."""

    pose: Mapping[str, float] = field(default_factory=dict)
    ramp: float = 1.0
    hold: float = 0.5


def _both(prefix: str, value: float) -> dict[str, float]:
    return {f"{prefix}_left": value, f"{prefix}_right": value}


def _brows(inner: float, outer: float) -> dict[str, float]:
    return {**_both("brow_inner", inner), **_both("brow_outer", outer)}


REST = Beat({}, ramp=0.8, hold=0.3)

# Segment scripts in file order. EXP_neutral_peak has no beats (every frame neutral: it is the
# identity's neutral conditioning frame); EXP_free_face is drawn per take (`_free_face_beats`).
SEGMENT_SCRIPTS: dict[str, tuple[Beat, ...]] = {
    "EXP_neutral_peak": (),
    "EXP_jaw_open": (Beat({"jaw_open": 1.0}, 1.0, 0.8), Beat({"jaw_open": 0.1}, 0.6, 0.2),
                     Beat({"jaw_open": 0.55}, 0.6, 0.5)),
    "EXP_jaw_sideways_left_right": (Beat({"jaw_open": 0.25, "jaw_sideways": 1.0}, 1.0, 0.5),
                                    Beat({"jaw_open": 0.25, "jaw_sideways": -1.0}, 1.4, 0.5)),
    "EXP_smile": (Beat({**_both("smile", 0.8), "jaw_open": 0.05, **_both("blink", 0.15)}, 1.0, 0.6),
                  Beat({**_both("smile", 1.0), "jaw_open": 0.35, **_both("blink", 0.3), **_brows(0.2, 0.1)}, 0.6, 0.6)),
    "EXP_smile_left_right": (Beat({"smile_left": 1.0, "blink_left": 0.2}, 1.0, 0.5), REST,
                             Beat({"smile_right": 1.0, "blink_right": 0.2}, 1.0, 0.5)),
    "EXP_lips_funnel_pucker": (Beat({"lip_funnel": 1.0, "jaw_open": 0.2}, 1.0, 0.6),
                               Beat({"lip_pucker": 1.0}, 0.8, 0.6)),
    "EXP_frown_sad": (Beat({**_both("frown", 1.0), "brow_inner_left": 0.8, "brow_inner_right": 0.8,
                            "brow_outer_left": -0.3, "brow_outer_right": -0.3, "gaze_vertical": -0.4}, 1.2, 0.8),),
    "EXP_cheeks_puff": (Beat({"cheek_puff": 1.0, "lip_pucker": 0.25}, 1.0, 1.0),),
    "EXP_eyes_blink_light_medium_hard_wink": (
        Beat(_both("blink", 0.4), 0.3, 0.1), REST, Beat(_both("blink", 0.75), 0.3, 0.1), REST,
        Beat({**_both("blink", 1.0), **_brows(-0.4, -0.3), "nose_wrinkle": 0.3}, 0.4, 0.3), REST,
        Beat({"blink_left": 1.0, "smile_left": 0.3}, 0.4, 0.3), REST,
        Beat({"blink_right": 1.0, "smile_right": 0.3}, 0.4, 0.3)),
    "EXP_eyes_look_around": (Beat({"gaze_horizontal": 1.0}, 0.5, 0.4), Beat({"gaze_horizontal": -1.0}, 0.7, 0.4),
                             Beat({"gaze_vertical": 1.0, **_brows(0.3, 0.3)}, 0.7, 0.4),
                             Beat({"gaze_vertical": -1.0, **_both("blink", 0.35)}, 0.7, 0.4)),
    "EXP_brows_raise": (Beat({**_brows(1.0, 1.0), "gaze_vertical": 0.2}, 1.0, 0.8),),
    "EXP_brows_inner_outer_lower": (Beat(_brows(1.0, -0.2), 0.8, 0.5), Beat(_brows(-0.1, 1.0), 0.8, 0.5),
                                    Beat({**_brows(-1.0, -0.6), "nose_wrinkle": 0.2}, 0.8, 0.5)),
    "EXP_nose_wrinkle": (Beat({"nose_wrinkle": 1.0, **_brows(-0.5, -0.2), **_both("smile", 0.15), **_both("blink", 0.3)},
                              1.0, 0.8),),
    "EXP_tongue_out": (Beat({"jaw_open": 0.6, "tongue_out": 1.0}, 1.0, 0.6),
                       Beat({"jaw_open": 0.5, "tongue_out": 0.6, "jaw_sideways": 0.5}, 0.6, 0.4)),
    "EXP_free_face": (),
}
SEGMENTS: tuple[str, ...] = tuple(SEGMENT_SCRIPTS)
FREE_FACE = "EXP_free_face"
NEUTRAL = NEUTRAL_SEGMENT  # EXP_neutral_peak
# Which segments get frames first when a capture has fewer frames than segments (the demo has 8):
# the segments of the original small world, the free face, then the rest.
_PRIORITY = ("EXP_jaw_open", "EXP_smile", "EXP_eyes_blink_light_medium_hard_wink", FREE_FACE, "EXP_brows_raise",
             "EXP_lips_funnel_pucker", "EXP_tongue_out", "EXP_eyes_look_around", "EXP_cheeks_puff", "EXP_frown_sad",
             "EXP_jaw_sideways_left_right", "EXP_smile_left_right", "EXP_brows_inner_outer_lower", "EXP_nose_wrinkle")
assert sorted(_PRIORITY) == sorted(SEGMENTS[1:]) and SEGMENTS[0] == NEUTRAL


def _nominal_duration(segment: str) -> float:
    beats = SEGMENT_SCRIPTS[segment] or (Beat(),) * 4  # the free face: about four beats
    return sum(beat.ramp + beat.hold for beat in beats) + REST.ramp + 0.6


def segment_lengths(count: int) -> dict[str, int]:
    """{segment: frames} for a capture of `count` frames, in `SEGMENTS` order: at least one neutral
    frame (one in twice the number of segments); with enough frames every segment gets one and the
    rest follow each script's nominal duration; with fewer, segments in priority order get one each.
    Segments with no frames are left out."""
    lengths = dict.fromkeys(SEGMENTS, 0)
    lengths[NEUTRAL] = max(1, count // (2 * len(SEGMENTS)))
    rest = count - lengths[NEUTRAL]
    if rest <= len(_PRIORITY):
        for segment in _PRIORITY[:max(rest, 0)]:
            lengths[segment] = 1
    else:
        weights = np.array([_nominal_duration(s) for s in _PRIORITY])
        extra = rest - len(_PRIORITY)
        share = extra * weights / weights.sum()
        counts = np.floor(share).astype(int)
        for index in np.argsort(-(share - counts), kind="stable")[:extra - counts.sum()]:
            counts[index] += 1  # largest remainders
        for segment, number in zip(_PRIORITY, counts):
            lengths[segment] = 1 + int(number)
    return {segment: length for segment, length in lengths.items() if length}


# --- takes ---------------------------------------------------------------------------------------


def _pose_vector(pose: Mapping[str, float]) -> np.ndarray:
    vector = np.zeros(len(CONTROLS))
    for name, value in pose.items():
        vector[_INDEX[name]] = value
    return vector


def _free_face_beats(rng: np.random.Generator) -> list[Beat]:
    """Random key poses: each combines 2-5 controls at random values (unsigned ones 0.3..1)."""
    beats = []
    for _ in range(int(rng.integers(3, 6))):
        chosen = rng.choice(len(CONTROLS), size=int(rng.integers(2, 6)), replace=False)
        pose = {}
        for index in chosen:
            name = CONTROLS[int(index)]
            pose[name] = float(rng.uniform(-1.0, 1.0) if name in SIGNED_CONTROLS else rng.uniform(0.3, 1.0))
        beats.append(Beat(pose, ramp=float(rng.uniform(0.5, 1.2)), hold=float(rng.uniform(0.1, 0.7))))
    return beats


def _plausible(vector: np.ndarray) -> np.ndarray:
    """Clipped to the ranges; the tongue comes out only through an open mouth."""
    vector = np.clip(vector, RANGE_LOW, RANGE_HIGH)
    jaw, tongue = _INDEX["jaw_open"], _INDEX["tongue_out"]
    vector[jaw] = max(vector[jaw], 0.6 * vector[tongue])
    return vector


def _ease(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


@dataclass
class _Keys:
    """A piecewise trajectory: key times [K] and poses [K,C], eased between consecutive keys."""

    times: list[float] = field(default_factory=list)
    poses: list[np.ndarray] = field(default_factory=list)

    def add(self, time: float, pose: np.ndarray) -> None:
        self.times.append(time)
        self.poses.append(pose)

    def sample(self, t: np.ndarray) -> np.ndarray:
        times, poses = np.array(self.times), np.stack(self.poses)
        span = np.searchsorted(times, t, side="right").clip(1, len(times) - 1)
        start, end = times[span - 1], times[span]
        fraction = _ease(np.clip((t - start) / np.maximum(end - start, 1e-9), 0.0, 1.0))
        return poses[span - 1] + fraction[:, None] * (poses[span] - poses[span - 1])


def perform_segment(segment: str, num_frames: int, rng: np.random.Generator, *,
                    variation: float = 1.0) -> list[Expression]:
    """One take of `segment`'s script, sampled at `num_frames` evenly spaced times.

    Per take, scaled by `variation` (0: the script's nominal performance, every take the same
    except EXP_free_face, whose poses are random by definition; 1: the default): each beat's
    amplitude (log-normal, sd 0.25) and each control's within it (sd 0.12, so the two sides of a
    smile differ), ramp durations (sd 0.35) and holds (sd 0.5), an extra hold on a beat (probability
    0.35), a hesitation within a ramp (probability 0.3: it stops 30-70% of the way for a moment),
    the lead-in and lead-out at neutral, spontaneous blinks (outside the eye segments) and a slow
    gaze drift (outside the gaze segment). EXP_neutral_peak is neutral in every frame. Pure: all
    randomness comes from `rng`. Raises KeyError for an unknown segment.
    """
    if segment not in SEGMENT_SCRIPTS:
        raise KeyError(f"unknown segment {segment!r}; known: {', '.join(SEGMENTS)}")
    if num_frames <= 0:
        return []
    if segment == NEUTRAL:
        return [Expression()] * num_frames
    v = max(float(variation), 0.0)
    beats = _free_face_beats(rng) if segment == FREE_FACE else list(SEGMENT_SCRIPTS[segment])
    keys = _Keys()
    time = 0.25 + v * float(rng.uniform(0.0, 0.5))  # lead-in at neutral
    keys.add(0.0, np.zeros(len(CONTROLS)))
    keys.add(time, np.zeros(len(CONTROLS)))
    previous = np.zeros(len(CONTROLS))
    for beat in [*beats, REST]:
        target = _pose_vector(beat.pose)
        if beat is not REST:
            gain = math.exp(v * 0.25 * float(rng.normal()))
            per_control = np.exp(v * 0.12 * rng.normal(size=len(CONTROLS)))
            target = _plausible(target * gain * per_control)
        ramp = beat.ramp * math.exp(v * 0.35 * float(rng.normal()))
        hold = beat.hold * math.exp(v * 0.5 * float(rng.normal()))
        if rng.uniform() < 0.35 * min(v, 1.0):
            hold += float(rng.uniform(0.3, 1.0))  # an extra hold
        if rng.uniform() < 0.3 * min(v, 1.0):  # a hesitation: part of the way, a pause, the rest
            part = float(rng.uniform(0.3, 0.7))
            time += ramp * part
            keys.add(time, previous + part * (target - previous))
            time += float(rng.uniform(0.15, 0.4))
            keys.add(time, previous + part * (target - previous))
            ramp *= 1.0 - part
        time += max(ramp, 0.05)
        keys.add(time, target)
        time += max(hold, 0.0)
        keys.add(time, target)
        previous = target
    time += v * float(rng.uniform(0.0, 0.5))  # lead-out at neutral
    keys.add(time, np.zeros(len(CONTROLS)))

    t = (np.arange(num_frames) + 0.5) / num_frames * time
    values = keys.sample(t)
    if not segment.startswith("EXP_eyes"):
        values = _spontaneous_blinks(values, t, time, rng, v)
    if segment != "EXP_eyes_look_around":
        values = _gaze_drift(values, t, rng, v)
    return [Expression.from_vector(_plausible(row)) for row in values]


def _spontaneous_blinks(values: np.ndarray, t: np.ndarray, duration: float, rng: np.random.Generator,
                        v: float) -> np.ndarray:
    """Brief blinks of both eyes (about one per 3 time units at variation 1) over the trajectory."""
    count = int(rng.poisson(duration * 0.3 * min(v, 2.0)))
    for centre in rng.uniform(0.0, duration, count):
        closure = np.clip(1.0 - np.abs(t - centre) / 0.15, 0.0, 1.0)
        for name in ("blink_left", "blink_right"):
            values[:, _INDEX[name]] = np.maximum(values[:, _INDEX[name]], closure)
    return values


def _gaze_drift(values: np.ndarray, t: np.ndarray, rng: np.random.Generator, v: float) -> np.ndarray:
    """A slow random drift of the gaze (amplitude 0.15 at variation 1)."""
    for name in ("gaze_horizontal", "gaze_vertical"):
        frequency = float(rng.uniform(0.1, 0.4))
        phase = float(rng.uniform(0.0, 2.0 * math.pi))
        values[:, _INDEX[name]] += 0.15 * v * np.sin(2.0 * math.pi * frequency * t + phase) * float(rng.uniform(0.3, 1.0))
    return values

