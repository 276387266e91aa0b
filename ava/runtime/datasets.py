"""Which dataset a command reads: a named folder, the one a checkpoint was trained on, or the demo
synthetic set (generated once into the cache)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from ava.errors import UserError
from ava.synth.config import RUN_ONLY_FIELDS, SynthConfig


def demo_dataset_dir(settings: SynthConfig) -> Path:
    """Cache folder of the synthetic set made with `settings` (one folder per distinct setting)."""
    from ava.files import cache_dir

    relevant = {key: value for key, value in asdict(settings).items() if key not in RUN_ONLY_FIELDS}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir("demo-data", f"synth-{digest}")


def ensure_demo_dataset(settings: SynthConfig, progress: bool = True) -> Path:
    """Generates the synthetic set once (later calls find it complete and return at once)."""
    from ava.synth import ensure_generated

    return ensure_generated(demo_dataset_dir(settings), settings, progress=progress)


def resolve_dataset_dir(explicit: Path | None, checkpoint) -> Path:
    """--dataset-dir, else the folder the checkpoint was trained on (if it still exists), else
    the demo synthetic set (generated if needed)."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise UserError(f"--dataset-dir {path} does not exist")
        return path
    recorded = checkpoint.extra_state.get("dataset_dir")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    saved = checkpoint.config.get("synth")
    # How the training machine generated it (its workers, its GPU) does not apply here.
    settings = (SynthConfig(**{key: value for key, value in saved.items() if key not in RUN_ONLY_FIELDS})
                if isinstance(saved, dict) else SynthConfig())
    return ensure_demo_dataset(settings)


def checkpoint_capture(dataset_dir: Path, folder: str, downsample: int, checkpoint, cameras=None, identity: int | None = None):
    """The capture `folder` read as the checkpoint's model expects it: the checkpoint's statistics,
    camindex in the checkpoint's camera order, idindex `identity` (0 for a capture not trained on)."""
    from ava.data.dataset import CaptureDataset

    part = CaptureDataset(dataset_dir / folder, downsample, cameras=cameras, stats=checkpoint.stats)
    part.camera_ids = list(checkpoint.cameras)  # camindex in the checkpoint's order
    part.identity_index = 0 if identity is None else identity
    return part


def checkpoint_downsample(checkpoint, requested: int | None = None) -> int:
    """`requested` (a --downsample flag), else the downsample the checkpoint was trained at."""
    if requested is not None:
        if requested < 1:
            raise UserError("--downsample must be at least 1")
        return int(requested)
    return int(checkpoint.extra_state.get("downsample", 0) or checkpoint.config.get("train", {}).get("downsample", 8))


def held_out_cameras(checkpoint) -> list[str]:
    """The camera ids the checkpoint's run never trained on (recorded by `ava train`; [] for a
    converted checkpoint or a run without held-out cameras)."""
    return [str(camera) for camera in checkpoint.config.get("resolved", {}).get("holdout_cameras", [])]


def match_identities(names, identities: list[str]) -> list[int]:
    """Positions in `identities` (capture folders MCD--MCT--SID) of `names`, each a folder or a
    subject id; UserError for a name that matches none or several."""
    chosen = []
    for name in names:
        matches = [i for i, folder in enumerate(identities) if folder == name or folder.split("--")[-1] == name]
        if len(matches) != 1:
            problem = "matches several" if matches else "is not one"
            raise UserError(f"identity {name} {problem} of the checkpoint's {len(identities)} identities "
                            f"(e.g. {', '.join(identities[:3])}); name one as MCD--MCT--SID or by subject id")
        chosen.append(matches[0])
    return list(dict.fromkeys(chosen))
