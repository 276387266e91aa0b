"""`ava eval-driver` on real headset frames: the driver's codes against the release's ground-truth
encodings (`encoder/encodings_gt.pt`), the only measure of a driver on real data
(docs/driver.md#measuring-a-driver-on-real-headset-frames).

Real headset sessions have no frame-by-frame truth: the headset and dome takes were recorded
apart, so no dome frame shows what a headset frame shows. The release's encodings give each
headset frame the code of the released decoder's expression space it shows, so per segment:
- code error: mean squared error per code element of the driver and of the mean-code baseline
  against the encodings (all frames that have one);
- image PSNR: the decoder's render from the driver's code (and from the mean code) against its
  render from the encoding, in the subject's neutral dome view (the headset frames have no dome
  camera or head pose of their own), over up to RENDERED_FRAMES frames spread over the segment.
There is no alignment to score here (the encodings need none).
"""

from __future__ import annotations

import numpy as np
import torch

from ava.errors import UserError

RENDERED_FRAMES = 16  # per segment: the PSNR's renders (three per frame) are the costly part
NOT_APPLICABLE = ("aligned_exact", "aligned_within_1", "stretch_exact")


def truth_source(requested: str, capture_root) -> str:
    """'synthetic' (encoder_truth.json, ava synth) or 'encodings' (the release's encodings_gt.pt)
    for one subject: `requested`, or with 'auto' the synthetic truth where it exists."""
    from ava.data.encoder import truth_path
    from ava.data.layout import CaptureLayout

    has_truth = truth_path(capture_root).is_file()
    has_encodings = CaptureLayout(capture_root).encodings.is_file()
    if requested == "auto":
        requested = "synthetic" if has_truth or not has_encodings else "encodings"
    if requested == "encodings" and not has_encodings:
        raise UserError(f"{CaptureLayout(capture_root).encodings} does not exist; download the encodings group "
                        "(ava download --assets encodings)")
    return requested


@torch.no_grad()
def evaluate_against_encodings(subject, encoder, model, device):
    """(a SubjectResult of ava.driver.evaluate, headset frame index -> its encoding [16,4,4] for the
    strip's frames) of one subject whose capture has encodings_gt.pt."""
    from ava.data.extras import read_headset_encodings
    from ava.data.layout import CaptureLayout
    from ava.driver.evaluate import SubjectResult, Tally
    from ava.driver.pictures import render_code
    from ava.runtime.headset import neutral_sample_index, predict_codes
    from ava.runtime.metrics import spread

    layout = CaptureLayout(subject.headset.root)
    encodings = read_headset_encodings(layout.encodings, layout.encodings_frame_list)
    neutral = neutral_sample_index(subject.dome)
    mean_code = encoder.code_mean.cpu()
    scale = encoder.code_scale.cpu()
    result = SubjectResult(subject.folder)
    strip_truth: dict[int, torch.Tensor] = {}
    for segment, indices in subject.headset.segments().items():
        frames = [index for index in indices if encodings.code(subject.headset.frames[index][1]) is not None]
        if not frames:
            continue
        truth = torch.stack([encodings.grid(subject.headset.frames[index][1]) for index in frames])
        predicted = predict_codes(encoder, torch.stack([subject.headset.views(index) for index in frames]), device)
        tally = Tally(frames=len(frames))
        tally.code_driver = float(((predicted - truth) ** 2).mean(dim=(1, 2, 3)).sum())
        tally.code_mean = float(((mean_code - truth) ** 2).mean(dim=(1, 2, 3)).sum())
        for position in spread(RENDERED_FRAMES, len(frames)):
            codes = torch.stack([truth[position], mean_code, predicted[position]])
            true_image, mean_image, driven = (image.clamp(0, 255) for image in
                                              render_code(model, subject, neutral, codes, device))
            tally.add_renders(true_image, mean_image, [driven])
        result.segments[segment] = tally
        deviation = ((truth - mean_code) / scale).pow(2).mean(dim=(1, 2, 3))
        best = int(torch.argmax(deviation))
        result.strip_candidates.append((float(deviation[best]), segment, frames[best], neutral))
        strip_truth[frames[best]] = truth[best]
    if not result.segments:
        raise UserError(f"{encodings.source} has no encoding of any usable headset frame of {subject.folder}")
    return result, strip_truth


def row_without_alignment(row: dict) -> dict:
    """A result row with the alignment scores marked as not applicable (None)."""
    return {**row, **dict.fromkeys(NOT_APPLICABLE)}
