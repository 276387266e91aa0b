"""A run folder: resolved config, metrics log, checkpoints with a `latest` pointer, pictures,
TensorBoard. Shared by the trainings: `ava train` (through ava/train/rundir.py) and
`ava train-driver`.

Layout of `<output_path>`:
  config.json                  the resolved config of the (latest) start of the run
  metrics.jsonl                one JSON object per line: per step, and per evaluation
  checkpoints/step_XXXXXXXX.safetensors, checkpoints/latest (the newest checkpoint's file name)
  <kind>/step_XXXXXXXX.png     pictures (e.g. progress/, x-id/, driven/)
  log/                         TensorBoard events (when tensorboard is installed)
Every file is written atomically; only rank 0 creates a RunDir.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from ava.errors import UserError
from ava.files import write_atomically

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.safetensors$")
LATEST = "latest"


def json_ready(value):
    """`value` (e.g. `dataclasses.asdict(config)`) with paths as strings and tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a null marks the non-finite value
    return value


def find_latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `checkpoints/latest` names, else the highest-step one, else None."""
    folder = Path(root) / "checkpoints"
    pointer = folder / LATEST
    if pointer.is_file():
        named = folder / pointer.read_text(encoding="utf-8").strip()
        if named.is_file():
            return named
    steps = sorted(
        (int(match.group(1)), path)
        for path in folder.glob("step_*.safetensors")
        if (match := CHECKPOINT_PATTERN.match(path.name))
    )
    return steps[-1][1] if steps else None


def earlier_run(root: Path) -> str | None:
    """What in `root` shows an earlier run ("3 checkpoints, metrics.jsonl, config.json"), or None."""
    root = Path(root)
    found = []
    checkpoints = [path for path in (root / "checkpoints").glob("step_*.safetensors")
                   if CHECKPOINT_PATTERN.match(path.name)]
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint" + ("s" if len(checkpoints) > 1 else ""))
    found += [name for name in ("metrics.jsonl", "config.json") if (root / name).is_file()]
    return ", ".join(found) or None


class RunDir:
    """Rank 0's writer for one run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "checkpoints").mkdir(exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the run folder {self.root}: {error}") from None
        if not os.access(self.root, os.W_OK):
            raise UserError(f"the run folder {self.root} is not writable; pass another --progress.output-path")
        self.metrics_path = self.root / "metrics.jsonl"
        self._metrics = None
        self._tensorboard = None

    def clear(self, logdir: str, pictures: tuple[str, ...] = ("progress", "x-id")) -> None:
        """Deletes what an earlier run wrote here: checkpoints and `latest`, metrics.jsonl,
        config.json, the step pictures in the folders `pictures`, and TensorBoard event files
        under `logdir`."""
        doomed = [self.root / "metrics.jsonl", self.root / "config.json", self.root / "checkpoints" / LATEST]
        doomed += [path for path in (self.root / "checkpoints").glob("step_*.safetensors")
                   if CHECKPOINT_PATTERN.match(path.name)]
        for kind in pictures:
            doomed += list((self.root / kind).glob("step_*.png"))
        doomed += list((self.root / logdir).rglob("events.out.tfevents.*"))
        for path in doomed:
            path.unlink(missing_ok=True)

    # --- config and metrics --------------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        write_atomically(self.root / "config.json", (json.dumps(config, indent=2) + "\n").encode())

    def open_metrics(self, resume_step: int | None) -> None:
        """Start the metrics log; on a resume, drop lines past the checkpoint (a crashed run's tail)."""
        if resume_step is not None and self.metrics_path.is_file():
            kept = []
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if int(record.get("step", 0)) <= resume_step:
                    kept.append(line)
            write_atomically(self.metrics_path, "".join(line + "\n" for line in kept).encode())
        elif resume_step is None and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh run in an old folder starts a fresh log
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        """Appends one JSON line and flushes it, so a crash loses at most the current line."""
        if self._metrics is None:
            raise RuntimeError("open_metrics() first")
        clean = {key: _json_value(value) for key, value in record.items()}
        self._metrics.write(json.dumps(clean) + "\n")
        self._metrics.flush()

    # --- TensorBoard ---------------------------------------------------------------------------

    def open_tensorboard(self, logdir: str, hparams: dict) -> bool:
        """Starts TensorBoard logging if the package is installed; returns whether it did."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return False
        self._tensorboard = SummaryWriter(log_dir=str(self.root / logdir))
        self._tensorboard.add_text("hparams", "\n".join(f"{key}: {value}" for key, value in hparams.items()))
        return True

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, step)

    # --- checkpoints and images ----------------------------------------------------------------

    def checkpoint_path(self, step: int) -> Path:
        return self.root / "checkpoints" / checkpoint_name(step)

    def mark_latest(self, path: Path, keep: int) -> None:
        """Points `latest` at `path`, then deletes all but the newest `keep` step checkpoints."""
        folder = self.root / "checkpoints"
        write_atomically(folder / LATEST, (path.name + "\n").encode())
        if keep <= 0:
            return
        steps = sorted(
            (int(match.group(1)), candidate)
            for candidate in folder.glob("step_*.safetensors")
            if (match := CHECKPOINT_PATTERN.match(candidate.name))
        )
        for _, old in steps[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)

    def image_path(self, kind: str, step: int) -> Path:
        return self.root / kind / f"step_{step:08d}.png"

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def refuse_earlier_run(root: str | Path, resume: str | None, overwrite: bool) -> None:
    """UserError when the run folder `root` holds an earlier run and neither `resume` (--resume)
    continues it nor `overwrite` (--progress.overwrite) replaces it; also when it is a file."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--progress.output-path {root} is a file; pass a folder for the run")
    found = earlier_run(root)
    if found and not resume and not overwrite:
        raise UserError(f"{root} holds an earlier run ({found}); pass --resume auto to continue it, "
                        "--progress.overwrite to replace it, or another --progress.output-path")


def resume_checkpoint(resume: str | None, root: str | Path, say) -> Path | None:
    """The checkpoint --resume names (`auto`: the newest in the run folder `root`, telling `say`
    when there is none), or None for a fresh start."""
    if not resume:
        return None
    if resume == "auto":
        path = find_latest_checkpoint(Path(root))
        if path is None:
            say(f"--resume auto: no checkpoint in {root}; starting a new run")
        return path
    return Path(resume).expanduser()
