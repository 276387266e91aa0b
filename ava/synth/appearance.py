"""Unwrapped textures of the procedural head (flipped-UV layout: row 0 is v ~ 1, docs/data-layout.md).

Colours are functions of the surface angles (theta, phi) of head.py, so the texture lines up with
the geometry by construction (on another topology, template.py gives every texel its angles):
skin with a faint per-identity mottling, hair above a hairline that drops towards the back, brows,
eyes that close with `blink`, lips that widen with `smile` and a mouth that opens (dark, with
teeth) with `jaw`.
"""

from __future__ import annotations

import numpy as np

from ava.synth.head import (
    BROW_THETA,
    EYE_PHI,
    EYE_THETA,
    MOUTH_THETA,
    NOSE_THETA,
    Expression,
    Identity,
    angular_bump,
    directions,
    smoothstep,
    uv_to_angles,
)


def texel_angles(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) [S,S] at the texel centres: column c at u = (c+0.5)/S, row r at v = 1 - (r+0.5)/S."""
    centres = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(centres, 1.0 - centres)
    return uv_to_angles(u, v)


def _ellipse(theta, phi, centre_theta, centre_phi, half_theta, half_phi, softness=0.15) -> np.ndarray:
    """A soft-edged filled ellipse in angle space: 1 inside, 0 outside."""
    dphi = np.angle(np.exp(1j * (phi - centre_phi)))
    radius = np.sqrt(((theta - centre_theta) / max(half_theta, 1e-6)) ** 2 + (dphi / half_phi) ** 2)
    return smoothstep(1.0 + softness, 1.0 - softness, radius)


def _blend(colour: np.ndarray, layer: np.ndarray, weight: np.ndarray) -> np.ndarray:
    weight = np.clip(weight, 0.0, 1.0)[..., None]
    return colour * (1.0 - weight) + np.asarray(layer, dtype=np.float64) * weight


def render_texture(identity: Identity, expression: Expression, size: int) -> np.ndarray:
    """uint8 [S,S,3] texture of `identity` making `expression` on the procedural head's UV layout."""
    return paint_texture(identity, expression, *texel_angles(size))


def paint_texture(identity: Identity, expression: Expression, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """uint8 [...,3] colours of `identity` making `expression` at surface angles (theta, phi) [...]
    (head.py's parameterisation); given every texel's angles it paints the texture of any UV layout."""
    unit = directions(theta, phi)
    pattern = np.sin(unit @ identity.mottling[:, :3].T + identity.mottling[:, 3]).mean(axis=-1)
    colour = identity.skin * (1.0 + 0.08 * pattern)[..., None]
    front = np.cos(phi)

    # Cheeks flush when smiling; the nose tip is a little redder.
    flush = sum(angular_bump(theta, phi, 0.45 * np.pi, side * 0.5, 0.05 * np.pi, 0.2) for side in (-1, 1))
    colour = colour + np.array([30.0, -5.0, -5.0]) * (0.25 + expression.smile) * flush[..., None]
    colour = colour + np.array([18.0, -4.0, -4.0]) * angular_bump(theta, phi, NOSE_THETA, 0, 0.04 * np.pi, 0.1)[..., None]
    for side in (-1, 1):
        nostril = angular_bump(theta, phi, NOSE_THETA - 0.05 * np.pi, side * 0.07, 0.008 * np.pi, 0.025)
        colour = _blend(colour, identity.skin * 0.35, nostril)

    # Hair: the hairline is highest at the front and drops towards the back of the head.
    hairline = identity.hairline - 0.3 * np.pi * (1.0 - front) / 2.0
    hair_weight = smoothstep(hairline - 0.02 * np.pi, hairline + 0.02 * np.pi, theta)
    streaks = 1.0 + 0.15 * np.sin(60 * phi + 4 * np.sin(9 * theta))
    colour = _blend(colour, identity.hair * streaks[..., None], hair_weight)

    # Brows, eyes (white, iris, pupil) and lids.
    for side in (-1, 1):
        brow = _ellipse(theta, phi, BROW_THETA - 0.015 * np.pi, side * 0.33, 0.012 * np.pi, 0.16)
        colour = _blend(colour, identity.hair * 0.75, brow)
        openness = 1.0 - expression.blink
        eye = _ellipse(theta, phi, EYE_THETA, side * EYE_PHI, 0.022 * np.pi * openness, 0.12)
        iris = _ellipse(theta, phi, EYE_THETA, side * EYE_PHI, 0.016 * np.pi, 0.045)
        pupil = _ellipse(theta, phi, EYE_THETA, side * EYE_PHI, 0.007 * np.pi, 0.02)
        eyeball = _blend(_blend(np.broadcast_to([235.0, 232.0, 228.0], colour.shape), identity.iris, iris), [15, 12, 12], pupil)
        colour = _blend(colour, eyeball, eye)
        lid_line = _ellipse(theta, phi, EYE_THETA, side * EYE_PHI, 0.004 * np.pi, 0.12) * expression.blink
        colour = _blend(colour, identity.skin * 0.55, lid_line)

    # Lips widen with a smile; the mouth opens with the jaw and shows the upper teeth.
    lips = _ellipse(theta, phi, MOUTH_THETA, 0.0, 0.028 * np.pi + 0.02 * np.pi * expression.jaw, 0.24 + 0.06 * expression.smile)
    colour = _blend(colour, identity.lips, lips)
    opening_half = 0.02 * np.pi * expression.jaw
    mouth = _ellipse(theta, phi, MOUTH_THETA, 0.0, opening_half, 0.17 + 0.05 * expression.smile, softness=0.25)
    teeth = mouth * smoothstep(MOUTH_THETA + 0.2 * opening_half, MOUTH_THETA + 0.6 * opening_half, theta)
    colour = _blend(colour, [45.0, 15.0, 20.0], mouth * min(1.0, 4.0 * expression.jaw))
    colour = _blend(colour, [225.0, 220.0, 200.0], teeth * min(1.0, 4.0 * expression.jaw))
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8)
