"""Unwrapped textures of the synthetic head (flipped-UV layout: row 0 is v ~ 1, docs/data-layout.md).

Colours are functions of the surface angles (theta, phi) of head.py, so the texture lines up with
the geometry by construction (on another topology, template.py gives every texel its angles).

Identity: skin tone with a faint mottling, freckles, cheek blush and stubble for some subjects;
hair above a hairline that recedes at the temples and drops towards the back, with streaks; brows
of their own thickness, arch, length, gap and colour; eyes of their own size with coloured irises
and a lash line; lips of their own thickness and colour.

Expression (ava.synth.expressions): the eyes close per side and the iris and pupil follow the
gaze; the lips widen and their corners rise with a smile or fall with a frown (per side), narrow
with a pucker (radial creases) or round into an open funnel; the mouth opens with the jaw, showing
the upper teeth, moves with the jaw sideways and shows the tongue; smiles flush the cheeks and
deepen the nasolabial folds; puffed cheeks shine; raised brows crease the forehead, lowered inner
brows the skin between them; a wrinkled nose creases its bridge and flares the nostrils.
"""

from __future__ import annotations

import numpy as np

from ava.synth.head import (
    BROW_THETA,
    EYE_PHI,
    EYE_THETA,
    GAZE_PHI,
    GAZE_THETA,
    MOUTH_THETA,
    NOSE_THETA,
    Expression,
    Identity,
    angular_bump,
    directions,
    hairline_angle,
    smoothstep,
    uv_to_angles,
    wrap_angle,
)

# Texels outside this window (the face) get skin, freckles and hair only.
_FACE_COS_PHI = 0.05
_FACE_THETA = (0.2 * np.pi, 0.76 * np.pi)


def texel_angles(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) [S,S] at the texel centres: column c at u = (c+0.5)/S, row r at v = 1 - (r+0.5)/S."""
    centres = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(centres, 1.0 - centres)
    return uv_to_angles(u, v)


def _ellipse(theta, phi, centre_theta, centre_phi, half_theta, half_phi, softness=0.15) -> np.ndarray:
    """A soft-edged filled ellipse in angle space: 1 inside, 0 outside."""
    dphi = wrap_angle(phi - centre_phi)
    radius = np.sqrt(((theta - centre_theta) / max(half_theta, 1e-6)) ** 2 + (dphi / half_phi) ** 2)
    return smoothstep(1.0 + softness, 1.0 - softness, radius)


def _blend(colour: np.ndarray, layer, weight: np.ndarray) -> np.ndarray:
    weight = np.clip(weight, 0.0, 1.0)[..., None]
    return colour * (1.0 - weight) + np.asarray(layer, dtype=np.float64) * weight


def _lines(coordinate: np.ndarray, period: float, sharpness: int = 4) -> np.ndarray:
    """Thin periodic lines 0..1 across `coordinate` (creases, wrinkles)."""
    return (0.5 + 0.5 * np.cos(2.0 * np.pi * coordinate / period)) ** sharpness


def render_texture(identity: Identity, expression: Expression, size: int) -> np.ndarray:
    """uint8 [S,S,3] texture of `identity` making `expression` on the procedural head's UV layout."""
    return paint_texture(identity, expression, *texel_angles(size))


def paint_texture(identity: Identity, expression: Expression, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """uint8 [...,3] colours of `identity` making `expression` at surface angles (theta, phi) [...]
    (head.py's parameterisation); given every texel's angles it paints the texture of any UV layout."""
    shape = np.shape(theta)
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    phi = wrap_angle(np.asarray(phi, dtype=np.float64).reshape(-1))
    unit = directions(theta, phi)
    pattern = np.sin(unit @ identity.mottling[:, :3].T + identity.mottling[:, 3]).mean(axis=-1)
    colour = identity.skin * (1.0 + identity.mottling_strength * pattern)[:, None]
    if identity.freckles > 0:
        waves = np.cos(unit @ identity.freckle_waves[:, :3].T + identity.freckle_waves[:, 3]).sum(axis=-1)
        upper_face = angular_bump(theta, phi, 0.5 * np.pi, 0.0, 0.1 * np.pi, 0.7)
        spots = smoothstep(2.3, 3.2, waves) * min(identity.freckles, 1.0) * upper_face
        colour = _blend(colour, identity.skin * np.array([0.72, 0.6, 0.52]), spots)

    hairline = hairline_angle(identity, phi)
    hair = smoothstep(hairline - 0.02 * np.pi, hairline + 0.02 * np.pi, theta)
    streaks = 1.0 + 0.15 * np.sin(identity.hair_streaks * phi + 4 * np.sin(9 * theta))
    colour = _blend(colour, identity.hair_colour * streaks[:, None], hair)

    face = np.nonzero((np.cos(phi) > _FACE_COS_PHI) & (theta > _FACE_THETA[0]) & (theta < _FACE_THETA[1]))[0]
    colour[face] = _paint_face(identity, expression, theta[face], phi[face], unit[face], colour[face], hair[face])
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8).reshape(*shape, 3)


def _paint_face(identity: Identity, e: Expression, theta: np.ndarray, phi: np.ndarray, unit: np.ndarray,
                colour: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """Colours [N,3] of the face's texels (|phi| < pi/2, between chin and forehead)."""
    skin = identity.skin

    def bump(centre_theta, centre_phi, width_theta, width_phi):
        return angular_bump(theta, phi, centre_theta, centre_phi, width_theta, width_phi)

    # Stubble on the lower face (not on the lips), in the hair's colour.
    if identity.beard > 0:
        lower = (smoothstep(MOUTH_THETA + 0.05 * np.pi, MOUTH_THETA + 0.03 * np.pi, theta)
                 * smoothstep(0.17 * np.pi, 0.24 * np.pi, theta) * smoothstep(0.1, 0.45, np.cos(phi)))
        lower *= 1.0 - _ellipse(theta, phi, MOUTH_THETA, 0.0, 0.035 * np.pi, 0.27)
        grain = 0.6 + 0.4 * np.sin(unit @ np.array([180.0, 40.0, 60.0])) * np.sin(unit @ np.array([-50.0, 170.0, 30.0]))
        colour = _blend(colour, identity.hair_colour * 0.85, min(identity.beard, 1.0) * 0.75 * lower * grain)

    # Cheeks: the subject's blush, flushing with a smile; puffed cheeks stretch and shine.
    for side, smile in ((1, e.smile_left), (-1, e.smile_right)):
        flush = bump(0.45 * np.pi, side * 0.5, 0.05 * np.pi, 0.2)
        colour = colour + np.array([1.0, -0.2, -0.2]) * (identity.blush + 30.0 * smile) * flush[:, None]
        if e.cheek_puff:
            colour = colour * (1.0 + 0.12 * e.cheek_puff * bump(0.43 * np.pi, side * 0.55, 0.05 * np.pi, 0.2))[:, None]
        if smile:  # the nasolabial fold deepens: a soft line from the nose's wing to the mouth corner
            start, end = np.array([NOSE_THETA - 0.03 * np.pi, side * 0.16]), np.array([MOUTH_THETA, side * 0.33])
            along = np.clip(((theta - start[0]) * (end[0] - start[0]) + (phi - start[1]) * (end[1] - start[1]))
                            / np.sum((end - start) ** 2), 0.0, 1.0)
            distance = np.hypot(theta - start[0] - along * (end[0] - start[0]), phi - start[1] - along * (end[1] - start[1]))
            colour = _blend(colour, skin * 0.6, 0.25 * smile * np.exp(-((distance / 0.015) ** 2)))

    # Nose: a redder tip, nostrils that flare, creases across the bridge.
    colour = colour + np.array([18.0, -4.0, -4.0]) * bump(NOSE_THETA, 0, 0.04 * np.pi, 0.1)[:, None]
    for side in (-1, 1):
        nostril = _ellipse(theta, phi, NOSE_THETA - 0.05 * np.pi, side * (0.07 + 0.02 * e.nose_wrinkle),
                           0.008 * np.pi * (1 + 0.3 * e.nose_wrinkle), 0.025 * (1 + 0.5 * e.nose_wrinkle))
        colour = _blend(colour, skin * 0.35, nostril)
    if e.nose_wrinkle:
        bridge = bump(0.51 * np.pi, 0.0, 0.025 * np.pi, 0.09)
        colour = _blend(colour, skin * 0.6, 0.6 * e.nose_wrinkle * bridge * _lines(theta - 0.49 * np.pi, 0.012 * np.pi))

    # Forehead creases with raised brows, frown lines between lowered inner brows.
    creases = _lines(theta - 0.64 * np.pi, 0.018 * np.pi) * (1.0 - hair)
    for value, centre_phi in ((e.brow_inner_left, 0.12), (e.brow_inner_right, -0.12), (e.brow_outer_left, 0.4),
                              (e.brow_outer_right, -0.4)):
        if value > 0:  # above the raised part of the brow
            colour = _blend(colour, skin * 0.7, 0.7 * value * creases * bump(0.68 * np.pi, centre_phi, 0.035 * np.pi, 0.18))
    for side, inner, outer in ((1, e.brow_inner_left, e.brow_outer_left), (-1, e.brow_inner_right, e.brow_outer_right)):
        if inner < 0:
            crease = _ellipse(theta, phi, BROW_THETA - 0.01 * np.pi, side * 0.05, 0.025 * np.pi, 0.02)
            colour = _blend(colour, skin * 0.6, 0.6 * -inner * crease)
        if outer < 0:  # a lowered outer brow hoods the lid: a shadow between brow and eye
            hood = bump(0.5 * (EYE_THETA + BROW_THETA), side * (EYE_PHI + 0.06), 0.015 * np.pi, 0.1)
            colour = _blend(colour, skin * 0.7, 0.6 * -outer * hood)

    # Brows: a band from the inner end (brow_gap) outwards over brow_length, arched, thinning outwards.
    for side in (-1, 1):
        along = (side * phi - identity.brow_gap) / identity.brow_length
        centre = BROW_THETA - 0.015 * np.pi + identity.brow_arch * 4.0 * along * (1.0 - along) - 0.006 * np.pi * along
        half = identity.brow_thickness * (1.0 - 0.5 * np.clip(along, 0.0, 1.0))
        brow = (smoothstep(1.2, 0.8, np.abs(theta - centre) / half) * smoothstep(-0.05, 0.05, along)
                * smoothstep(1.05, 0.9, along))
        texture = 1.0 + 0.12 * np.sin(160.0 * theta + 40.0 * phi)
        colour = _blend(colour, identity.brow_colour * texture[:, None], brow)

    colour = _paint_eyes(identity, e, theta, phi, colour)
    return _paint_mouth(identity, e, theta, phi, colour)


def _paint_eyes(identity: Identity, e: Expression, theta: np.ndarray, phi: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Eye whites, irises and pupils that follow the gaze, lids that close per side, the lash line."""
    for side, blink in ((1, e.blink_left), (-1, e.blink_right)):
        centre_phi = side * EYE_PHI
        openness = 1.0 - blink
        half_theta, half_phi = 0.022 * np.pi * identity.eye_size, 0.12 * identity.eye_size
        opening_centre = EYE_THETA - 0.006 * np.pi * blink  # the upper lid comes down further than the lower rises
        eye = _ellipse(theta, phi, opening_centre, centre_phi, half_theta * openness, half_phi)
        look_theta = EYE_THETA + GAZE_THETA * e.gaze_vertical
        look_phi = centre_phi + GAZE_PHI * e.gaze_horizontal
        iris = _ellipse(theta, phi, look_theta, look_phi, 0.016 * np.pi * identity.iris_size, 0.045 * identity.iris_size)
        limbus = _ellipse(theta, phi, look_theta, look_phi, 0.011 * np.pi * identity.iris_size, 0.031 * identity.iris_size,
                          softness=0.4)
        pupil = _ellipse(theta, phi, look_theta, look_phi, 0.007 * np.pi, 0.02)
        white = np.broadcast_to(np.array([235.0, 232.0, 228.0]), colour.shape)
        eyeball = _blend(_blend(white, identity.iris_colour * 0.6, iris), identity.iris_colour, limbus)
        eyeball = _blend(eyeball, [15, 12, 12], pupil)
        colour = _blend(colour, eyeball, eye)
        # The lash line along the upper lid, and the lid line of a closing eye.
        rim = _ellipse(theta, phi, opening_centre, centre_phi, half_theta * openness + 0.005 * np.pi, half_phi * 1.06)
        upper = smoothstep(opening_centre - 0.2 * half_theta, opening_centre + 0.2 * half_theta, theta)
        colour = _blend(colour, [35.0, 28.0, 28.0], identity.lashes * (rim - eye).clip(0, 1) * upper)
        lid_line = _ellipse(theta, phi, opening_centre, centre_phi, 0.004 * np.pi, half_phi) * blink
        colour = _blend(colour, identity.skin * 0.5, lid_line)
    return colour


def _paint_mouth(identity: Identity, e: Expression, theta: np.ndarray, phi: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Lips (width, corners, thickness per expression), the opening with teeth and tongue, pucker creases."""
    left = phi >= 0
    smile = np.where(left, e.smile_left, e.smile_right)
    frown = np.where(left, e.frown_left, e.frown_right)
    width = 0.24 * (1.0 + 0.25 * smile + 0.1 * frown - 0.35 * e.lip_pucker - 0.25 * e.lip_funnel)
    shift = 0.04 * e.jaw_sideways  # the lower lip and the opening follow the jaw sideways
    lower = smoothstep(MOUTH_THETA + 0.01 * np.pi, MOUTH_THETA - 0.01 * np.pi, theta)
    across = (phi - shift * lower) / width  # -1..1 from corner to corner
    corners = 0.012 * np.pi * (smile - frown) * across**2  # the corners rise with a smile, fall with a frown
    half = (0.028 * np.pi * identity.lip_thickness + 0.02 * np.pi * e.jaw_open + 0.012 * np.pi * e.lip_pucker
            + 0.01 * np.pi * e.lip_funnel)
    radius = np.hypot(across, (theta - MOUTH_THETA - corners) / half)
    lips = smoothstep(1.15, 0.85, radius)
    colour = _blend(colour, identity.lip_colour, lips)
    if e.lip_pucker:  # radial creases around the pursed lips
        angle = np.arctan2((theta - MOUTH_THETA) / half, across)
        ring = smoothstep(0.95, 1.1, radius) * smoothstep(1.6, 1.2, radius)
        colour = _blend(colour, identity.skin * 0.65, 0.5 * e.lip_pucker * ring * _lines(angle, 2 * np.pi / 14, 6))

    opening_half = (0.02 * np.pi * e.jaw_open + 0.012 * np.pi * e.lip_funnel) * (1.0 - 0.9 * e.lip_pucker)
    if opening_half > 0:
        mean_smile = 0.5 * (e.smile_left + e.smile_right)
        opening_width = 0.17 * (1.0 + 0.3 * mean_smile) * (1.0 - 0.55 * e.lip_funnel)
        mouth = _ellipse(theta, phi - shift, MOUTH_THETA, 0.0, opening_half, opening_width, softness=0.25)
        openness = min(1.0, 4.0 * (opening_half / (0.02 * np.pi)))
        teeth = mouth * smoothstep(MOUTH_THETA + 0.2 * opening_half, MOUTH_THETA + 0.6 * opening_half, theta)
        colour = _blend(colour, [45.0, 15.0, 20.0], mouth * openness)
        colour = _blend(colour, [225.0, 220.0, 200.0], teeth * openness * (1.0 - 0.7 * e.lip_funnel))
    if e.tongue_out:  # over the lower lip (between the lips when the mouth is closed)
        tongue = _ellipse(theta, phi - shift, MOUTH_THETA - 0.6 * opening_half - 0.012 * np.pi * e.tongue_out, 0.0,
                          0.012 * np.pi + 0.02 * np.pi * e.tongue_out, 0.08, softness=0.3)
        colour = _blend(colour, [205.0, 95.0, 105.0], tongue * min(1.0, 2.0 * e.tongue_out))
    return colour
