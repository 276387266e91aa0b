"""Synthetic stand-ins of the release's files beyond the original's code, in their documented
formats (docs/data-layout.md#beyond-the-original-code), made from an `ava synth` set and a checkpoint
trained on it:

- `checkpoints/decoder/aeparams_1440000.pt`: the checkpoint's weights as the original saves them
  (`module.` keys, camera tables in the original's per-capture calibration order), optionally widened
  to more identities (the released decoder has 256);
- `decoder/expression_codes/aeparams_1440000.pkl`: a pickled dict frame id (int) -> float32 [256],
  the decoder's expression code of every dome frame;
- `encoder/encodings_gt.pt` + `encoder/encodings_framelist.csv`: the code of each headset frame
  (the dome frame the synthetic truth says it shows), a tensor [N,256] in frame-list order.

`ava synth` itself writes the foreground masks and background images.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ava.data.formats import format_frame_list


def camera_orders(dataset_dir: Path, folders: list[str]) -> list[list[str]]:
    """Each capture's cameras in calibration order (how the original indexed them)."""
    from ava.data.calibration import read_calibration
    from ava.data.layout import CaptureLayout

    return [[camera.camera_id for camera in read_calibration(CaptureLayout(Path(dataset_dir) / folder).calibration,
                                                             in_front_of=None)] for folder in folders]


def original_state(checkpoint, per_capture: list[list[str]], num_identities: int | None = None) -> dict:
    """The checkpoint's model as the original code would have saved it: `module.` prefixes, camera
    rows in the original's order, and per-identity tables widened to `num_identities` (its own
    identities first, the other rows as a fresh model has them)."""
    from ava.nn.autoencoder import build_autoencoder
    from ava.nn.original import original_camera_order, reorder_cameras

    count = num_identities or len(checkpoint.identities)
    model = build_autoencoder(checkpoint.model_config(), checkpoint.topology,
                              vertmean=torch.from_numpy(checkpoint.stats.vertmean), vertstd=checkpoint.stats.vertstd,
                              num_cameras=len(checkpoint.cameras), num_identities=count, raymarch_backend="torch")
    state = model.state_dict()
    for key, trained in checkpoint.model_state.items():
        if state[key].shape == trained.shape:
            state[key] = trained.clone()
        else:  # a per-identity table (or the identity matrix): the trained identities' entries first
            corner = state[key]
            for axis, size in enumerate(trained.shape):
                corner = corner.narrow(axis, 0, size)
            corner.copy_(trained)
    order, _ = original_camera_order(per_capture, list(checkpoint.cameras))
    state = reorder_cameras(state, list(checkpoint.cameras), order)  # ava's rows -> the original's indices
    return {f"module.{key}": value for key, value in state.items()}


@torch.no_grad()
def dome_codes(checkpoint, dataset_dir: Path, folder: str, downsample: int) -> dict[int, torch.Tensor]:
    """frame number -> the decoder's expression code [16,4,4] of every usable dome frame (one camera)."""
    from ava.data.collate import collate
    from ava.runtime.datasets import checkpoint_capture
    from ava.runtime.model import encode_expression

    model = checkpoint.build_autoencoder(raymarch_backend="torch").eval()
    probe = checkpoint_capture(dataset_dir, folder, downsample, checkpoint)
    part = checkpoint_capture(dataset_dir, folder, downsample, checkpoint, cameras=probe.reader.camera_ids[:1],
                              identity=list(checkpoint.identities).index(folder))
    codes = {}
    for index in range(len(part)):
        codes[int(part.sample_ids(index)[0])] = encode_expression(model, collate([part[index]]))[0]
    return codes


def expression_codes_pickle(codes: dict[int, torch.Tensor]) -> bytes:
    """The datasheet's format: a pickled dict frame id -> 256-dimensional code (numpy float32)."""
    return pickle.dumps({frame: code.reshape(256).numpy().astype("float32") for frame, code in codes.items()})


@torch.no_grad()
def headset_encodings(checkpoint, dataset_dir: Path, folder: str, downsample: int) -> tuple[bytes, str]:
    """(encodings_gt.pt bytes: a tensor [N,256], encodings_framelist.csv text): the true code of
    every headset frame, the decoder's code of the frame's true expression (ava.driver.truth)."""
    import io

    from ava.data.headset_capture import read_encoder_truth
    from ava.driver.data import load_subject
    from ava.driver.truth import headset_true_codes
    from ava.synth.headset_sessions import TruthGeometry

    model = checkpoint.build_autoencoder(raymarch_backend="torch").eval()
    cpu = torch.device("cpu")
    subject = load_subject(Path(dataset_dir), folder, checkpoint, model, downsample, 16, cpu)
    true = headset_true_codes(subject, read_encoder_truth(Path(dataset_dir) / folder), TruthGeometry(dataset_dir),
                              model, cpu)
    buffer = io.BytesIO()
    torch.save(true.reshape(len(true), 256), buffer)
    return buffer.getvalue(), format_frame_list(list(subject.headset.frames))


def release_tree(dataset_dir: Path, folders: list[str], checkpoint, downsample: int, size: str = "4TB",
                 num_identities: int | None = None) -> dict[str, bytes]:
    """{URL path: bytes} of a server holding the captures `folders` of an `ava synth` set (every
    file as written, masks and backgrounds included) with stand-ins of the expression codes, the
    headset encodings and the released decoder (from `checkpoint`, trained on those captures)."""
    dataset_dir = Path(dataset_dir)
    files = {}
    for folder in folders:
        root = dataset_dir / folder
        for path in root.rglob("*"):
            # The synthetic truth (headset and dome) is not in the release.
            if path.is_file() and path.name not in ("encoder_truth.json", "synth_truth.json"):
                files[f"/{size}/{folder}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
        codes = dome_codes(checkpoint, dataset_dir, folder, downsample)
        files[f"/{size}/{folder}/decoder/expression_codes/aeparams_1440000.pkl"] = expression_codes_pickle(codes)
        encodings, frame_list = headset_encodings(checkpoint, dataset_dir, folder, downsample)
        files[f"/{size}/{folder}/encoder/encodings_gt.pt"] = encodings
        files[f"/{size}/{folder}/encoder/encodings_framelist.csv"] = frame_list.encode()
    import io

    buffer = io.BytesIO()
    torch.save(original_state(checkpoint, camera_orders(dataset_dir, folders), num_identities), buffer)
    files[f"/{size}/checkpoints/decoder/aeparams_1440000.pt"] = buffer.getvalue()
    return files
