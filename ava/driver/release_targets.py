"""The release's expression codes and headset encodings as a driver's targets
(docs/driver.md#the-releases-codes-as-targets).

`--train.targets`:
- `aligned` (the default): the decoder's expression code of each dome frame, matched to the headset
  frames by a time alignment that the training keeps revising (ava.driver.loop).
- `expression-codes`: the same alignment, but the dome frames' codes are read from the release's
  `decoder/expression_codes/aeparams_1440000.pkl` instead of being computed by the decoder's
  expression encoder. The run reports how far they are from the encoder's: the file's codes belong
  to the released decoder, so a large difference says the decoder is another one.
- `encodings`: the release's `encoder/encodings_gt.pt`, a code for each headset frame, as direct
  targets: supervised regression, no alignment. Each headset frame becomes a one-frame "segment"
  whose only target is its encoding, so the alignment machinery leaves it where it is, and the
  logged aligned error is the error against the encodings.

Both files hold codes of the released decoder's expression space: use them with that decoder
(`ava convert` of `checkpoints/decoder/aeparams_1440000.pt`).
"""

from __future__ import annotations

import numpy as np
import torch

from ava.errors import UserError

ALIGNED, EXPRESSION_CODES, ENCODINGS = "aligned", "expression-codes", "encodings"


def _codes_of(subject, what: str):
    from ava.data.extras import read_expression_codes, read_headset_encodings
    from ava.data.layout import CaptureLayout

    layout = CaptureLayout(subject.headset.root)
    if what == EXPRESSION_CODES:
        if not layout.expression_codes.is_file():
            raise UserError(f"{subject.folder} has no {layout.expression_codes}; download the expression_codes group "
                            "(4TB tier) or use --train.targets aligned")
        return read_expression_codes(layout.expression_codes)
    if not layout.encodings.is_file():
        raise UserError(f"{subject.folder} has no {layout.encodings}; download the encodings group or use "
                        "--train.targets aligned")
    return read_headset_encodings(layout.encodings, layout.encodings_frame_list)


def use_expression_codes(pool) -> dict:
    """Replaces every subject's dome codes by the release's (in place); returns how they compare with
    the expression encoder's: {"frames", "mean_squared_difference", "code_variance"}."""
    squared, variance, frames = 0.0, 0.0, 0
    for subject in pool.subjects:
        released = _codes_of(subject, EXPRESSION_CODES)
        replaced = subject.codes.clone()
        missing = []
        for index in range(len(subject.codes)):
            frame = subject.dome.sample_ids(index)[0]
            code = released.grid(frame)
            if code is None:
                missing.append(frame)
            else:
                replaced[index] = code
        if missing:
            raise UserError(f"{released.source} has no code for {len(missing)} of the {len(subject.codes)} dome frames "
                            f"used (e.g. frame {missing[0]})")
        squared += float(((replaced - subject.codes) ** 2).sum())
        variance += float(((subject.codes - subject.codes.mean(dim=0)) ** 2).sum())
        frames += len(subject.codes)
        subject.codes = replaced
    pool.codes = torch.cat([subject.codes for subject in pool.subjects]) if pool.subjects else pool.codes
    elements = max(frames * 256, 1)
    return {"frames": frames, "mean_squared_difference": squared / elements, "code_variance": variance / elements}


def use_encodings(pool) -> dict:
    """Makes `pool` supervised (in place): its entries become the headset frames that have an
    encoding, each a one-frame segment whose target is that encoding. Pictures show, beside the
    driven render, the dome frame whose code is nearest the encoding. Returns {"frames", "subjects"}."""
    entries, segments, rows, nearest = [], [], [], []
    for number, subject in enumerate(pool.subjects):
        encodings = _codes_of(subject, ENCODINGS)
        dome = subject.codes.reshape(len(subject.codes), -1)
        for index, (segment, frame) in enumerate(subject.headset.frames):
            code = encodings.grid(frame)
            if code is None:
                continue
            position = len(entries)
            entries.append((number, index))
            segments.append((number, segment, np.array([position]), np.array([position])))
            rows.append(code)
            nearest.append((number, int(torch.argmin(((dome - code.reshape(1, -1)) ** 2).mean(dim=1)))))
        if not any(owner == number for owner, _ in entries):
            raise UserError(f"{encodings.source} has no encoding of any of {subject.folder}'s usable headset frames")
    pool.entries, pool.segments = entries, segments
    pool.subject_of = torch.tensor([number for number, _ in entries], dtype=torch.long)
    pool.codes = torch.stack(rows) if rows else torch.zeros(0, 16, 4, 4)
    pool.dome_count = len(pool.codes)  # the encodings stand for the dome codes (statistics, pictures)
    pool.targets = torch.arange(len(entries))
    pool.code_location = _NearestDome(nearest)  # for pictures: the dome frame nearest each encoding
    return {"frames": len(entries), "subjects": len(pool.subjects)}


class _NearestDome:
    """code row -> (subject number, dome sample index) of the dome frame nearest that encoding (a
    class, not a lambda, so that the pool still pickles into DataLoader workers)."""

    def __init__(self, nearest: list[tuple[int, int]]) -> None:
        self.nearest = nearest

    def __call__(self, code_id: int) -> tuple[int, int]:
        return self.nearest[int(code_id)]


def apply_targets(mode: str, setup, console) -> dict:
    """Applies --train.targets to the training and held-out pools of a driver Setup (before the
    training state is built from them); returns what to record in the run's config."""
    if mode not in (EXPRESSION_CODES, ENCODINGS):  # aligned, stretch, truth: the decoder's own codes
        return {"targets": mode}
    record: dict = {"targets": mode}
    for name, pool in (("train", setup.train_pool), ("holdout", setup.holdout_pool)):
        if not pool.subjects:
            continue
        if mode == EXPRESSION_CODES:
            comparison = use_expression_codes(pool)
            record[name] = comparison
            ratio = comparison["mean_squared_difference"] / max(comparison["code_variance"], 1e-12)
            console.print(f"{name} subjects: the release's expression codes of {comparison['frames']} dome frames "
                          f"differ from this decoder's encoder by {ratio:.1%} of the codes' variance", highlight=False)
            if ratio > 0.1:
                console.print("[yellow]warning:[/] that is far: the release's codes belong to the released decoder "
                              "(ava convert of checkpoints/decoder/aeparams_1440000.pt); with another decoder its "
                              "driver learns codes that decoder does not read the same way", highlight=False)
        elif mode == ENCODINGS:
            record[name] = use_encodings(pool)
            console.print(f"{name} subjects: {record[name]['frames']} headset frames with a ground-truth encoding, "
                          "regressed directly (no alignment)", highlight=False)
        else:
            raise UserError(f"unknown --train.targets {mode!r}")
    return record
