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


def resolve_dataset_dir(explicit: Path | None, checkpoint, flag: str = "--dataset-dir") -> Path:
    """--dataset-dir, else the folder the checkpoint was trained on (if it still exists), else
    the demo synthetic set (generated if needed). `flag` is the option's name in errors."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise UserError(f"{flag} {path} does not exist")
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
    camindex in the checkpoint's camera order, idindex `identity` (None, a capture not trained on:
    ava.nn.colorcal.UNSEEN_IDENTITY, the neutral colour calibration)."""
    from ava.data.dataset import CaptureDataset
    from ava.nn.colorcal import UNSEEN_IDENTITY

    part = CaptureDataset(dataset_dir / folder, downsample, cameras=cameras, stats=checkpoint.stats)
    part.camera_ids = list(checkpoint.cameras)  # camindex in the checkpoint's order
    part.identity_index = UNSEEN_IDENTITY if identity is None else identity
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


def held_out_subjects(checkpoint) -> dict[str, list[str]]:
    """{"validation": [...], "test": [...]}: the capture folders the checkpoint's run kept out of
    training (`--train.holdout-subjects`, `--train.num-holdout-subjects`); empty lists for a run
    without held-out subjects or a converted checkpoint."""
    recorded = checkpoint.config.get("resolved", {}).get("holdout_subjects") or {}
    return {role: [str(folder) for folder in recorded.get(role, [])] for role in ("validation", "test")}


def find_capture(name: str, dataset_dir: Path, preferred: list[str] = ()) -> str | None:
    """The capture folder `name` stands for, trained or not: a folder name with a `decoder/` folder
    in `dataset_dir` (or listed in `preferred`), or a subject id with exactly one capture among
    `preferred`, else among the dataset's folders. None when there is none; UserError when a
    subject id has several captures."""
    if "--" in name:
        return name if name in preferred or (Path(dataset_dir) / name / "decoder").is_dir() else None
    for pool in (list(preferred), sorted(path.parent.name for path in Path(dataset_dir).glob("*/decoder"))):
        matches = [folder for folder in pool if folder.split("--")[-1] == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(f"subject {name} has several captures ({', '.join(matches[:3])}); name one as MCD--MCT--SID")
    return None


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
