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
  camera or head pose of their own), over the head's pixels of up to RENDERED_FRAMES frames spread
  over the segment.
There is no alignment to score here (the encodings need none).
"""

from __future__ import annotations

import torch

from ava.errors import UserError

RENDERED_FRAMES = 16  # per segment: the PSNR's renders (three per frame) are the costly part


def truth_source(requested: str, capture_root) -> str:
    """'synthetic' (encoder_truth.json, ava synth) or 'encodings' (the release's encodings_gt.pt)
    for one subject: `requested`, or with 'auto' the synthetic truth where it exists."""
    from ava.data.headset_capture import truth_path
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
def evaluate_against_encodings(subject, predicted: torch.Tensor, mean_code: torch.Tensor, model, device):
    """(SubjectResult of ava.driver.evaluate with sources "driver" and "mean code", the headset frame
    indices that have an encoding, their encodings [n,16,4,4]) of one subject whose capture has
    encodings_gt.pt; predicted [M,16,4,4]: the driver's code of every headset frame."""
    from ava.data.extras import read_headset_encodings
    from ava.data.layout import CaptureLayout
    from ava.driver.evaluate import SubjectResult, Tally, decode
    from ava.runtime.driving import neutral_sample_index
    from ava.runtime.metrics import spread

    layout = CaptureLayout(subject.headset.root)
    encodings = read_headset_encodings(layout.encodings, layout.encodings_frame_list)
    neutral = neutral_sample_index(subject.dome)
    result = SubjectResult(subject.folder, {"driver": {}, "mean code": {}})
    kept: list[int] = []
    for segment, indices in subject.headset.segments().items():
        frames = [index for index in indices if encodings.code(subject.headset.frames[index][1]) is not None]
        if not frames:
            continue
        kept += frames
        truth = torch.stack([encodings.grid(subject.headset.frames[index][1]) for index in frames])
        codes = {"driver": predicted[frames], "mean code": mean_code.expand(len(frames), -1, -1, -1)}
        rendered = spread(RENDERED_FRAMES, len(frames))
        truth_images, truth_alpha, _ = decode(model, subject, neutral, truth[rendered], device)
        head = (truth_alpha > 0.5).expand_as(truth_images)
        for name, mine in codes.items():
            images = decode(model, subject, neutral, mine[rendered], device)[0]
            result.tallies[name][segment] = Tally(
                frames=len(frames), code=float(((mine - truth) ** 2).mean(dim=(1, 2, 3)).sum()),
                pixels=int(head.sum()), image=float((((images - truth_images) ** 2) * head).sum()))
        result.frames += [{"segment": segment, "frame_id": subject.headset.frames[index][1],
                           "sources": {name: {"code_mse": float(((mine[n] - truth[n]) ** 2).mean())}
                                       for name, mine in codes.items()}} for n, index in enumerate(frames)]
    if not kept:
        raise UserError(f"{encodings.source} has no encoding of any usable headset frame of {subject.folder}")
    return result, kept, torch.stack([encodings.grid(subject.headset.frames[index][1]) for index in kept])
