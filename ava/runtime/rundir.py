"""A run folder: resolved config, metrics log, checkpoints with a `latest` pointer, pictures,
TensorBoard. Shared by the trainings: `ava train` and `ava train-driver`.

Layout of `<output_path>`:
  config.json                  the resolved config of the (latest) start of the run
  metrics.jsonl                one JSON object per line: per step, and per evaluation
  checkpoints/step_XXXXXXXX.safetensors, checkpoints/latest (the newest checkpoint's file name)
  <kind>/step_XXXXXXXX.png     pictures (e.g. progress/, x-id/, driven/)
  log/                         TensorBoard events (when tensorboard is installed)
Every file is written atomically (the metrics log is appended a flushed line at a time); only
rank 0 creates a RunDir. A crash at any moment leaves `latest` naming a complete checkpoint (it is
rewritten only once the checkpoint is in place), and `--resume auto` takes the newest checkpoint
that passes its digest check (docs/training.md#what-is-guaranteed).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from ava.errors import UserError
from ava.faults import crash_point
from ava.files import output_folder, write_atomically

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.safetensors$")
LATEST = "latest"
REPLACED_METRICS = "metrics.replaced.jsonl"
# Temporary files of atomic writes: `.NAME.PID.partial` (ava.checkpoint) and `.NAME.PID.THREAD.tmp`
# (ava.files.write_atomically); NAME is matched lazily so that PID is the first number after it.
_TEMPORARY = re.compile(r"^\..+?\.(\d+)(\.\d+)?\.(partial|tmp)$")


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


def step_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run folder's step checkpoints, oldest first."""
    folder = Path(root) / "checkpoints"
    return sorted((int(match.group(1)), path) for path in folder.glob("step_*.safetensors")
                  if (match := CHECKPOINT_PATTERN.match(path.name)))


def find_latest_checkpoint(root: Path) -> Path | None:
    """The run folder's newest checkpoint: the highest step, which `checkpoints/latest` names
    too unless a crash came between writing a checkpoint and rewriting the pointer; None if none."""
    steps = step_checkpoints(root)
    return steps[-1][1] if steps else None


def earlier_run(root: Path) -> str | None:
    """What in `root` shows an earlier run ("3 checkpoints, metrics.jsonl, config.json"), or None."""
    root = Path(root)
    found = []
    checkpoints = step_checkpoints(root)
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
        remove_stale_temporaries(self.root / "checkpoints")
        remove_stale_temporaries(self.root)

    def clear(self, logdir: str, pictures: tuple[str, ...] = ("progress", "x-id")) -> None:
        """Deletes what an earlier run wrote here: checkpoints and `latest`, metrics.jsonl (and the
        lines it replaced), config.json, the step pictures in the folders `pictures`, and
        TensorBoard event files under `logdir`."""
        doomed = [self.root / "metrics.jsonl", self.root / REPLACED_METRICS, self.root / "config.json",
                  self.root / "checkpoints" / LATEST]
        doomed += [path for _, path in step_checkpoints(self.root)]
        for kind in pictures:
            doomed += list((self.root / kind).glob("step_*.png"))
        doomed += list((self.root / logdir).rglob("events.out.tfevents.*"))
        for path in doomed:
            path.unlink(missing_ok=True)

    # --- config and metrics --------------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        write_atomically(self.root / "config.json", (json.dumps(config, indent=2) + "\n").encode())

    def open_metrics(self, resume_step: int | None) -> None:
        """Start the metrics log. A fresh run starts a fresh log; a resumed one (`resume_step`: the
        checkpoint's step, 0 for `--resume auto` without a checkpoint) appends to it, after moving
        the lines past that step (steps that will run again) to metrics.replaced.jsonl, so that no
        line is ever lost and metrics.jsonl holds one line per step. A line cut short by a crash
        is dropped."""
        try:
            if resume_step is not None and self.metrics_path.is_file():
                kept, replaced = [], []
                for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a crash
                    (kept if int(record.get("step", 0)) <= resume_step else replaced).append(line)
                if replaced:
                    with open(self.root / REPLACED_METRICS, "a", encoding="utf-8") as side:
                        side.write("".join(line + "\n" for line in replaced))
                        side.flush()
                        os.fsync(side.fileno())
                write_atomically(self.metrics_path, "".join(line + "\n" for line in kept).encode())
            elif resume_step is None and self.metrics_path.exists():
                self.metrics_path.unlink()  # a fresh run in an old folder (--progress.overwrite) starts a fresh log
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")
        except OSError as error:
            raise UserError(f"cannot write the metrics log {self.metrics_path}: {error.strerror or error}") from None

    def log(self, record: dict) -> None:
        """Appends one JSON line and flushes it, so a crash loses at most the current line."""
        if self._metrics is None:
            raise RuntimeError("open_metrics() first")
        clean = {key: _json_value(value) for key, value in record.items()}
        try:
            self._metrics.write(json.dumps(clean) + "\n")
            self._metrics.flush()
        except OSError as error:
            raise OSError(error.errno, error.strerror or str(error), str(self.metrics_path)) from None
        if "step" in clean and "kind" not in clean:
            crash_point("metrics-logged", step=clean["step"])

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
        crash_point("latest-written")
        if keep > 0:
            for _, old in step_checkpoints(self.root)[:-keep]:
                if old != path:
                    old.unlink(missing_ok=True)
        crash_point("pruned")

    def image_path(self, kind: str, step: int) -> Path:
        return self.root / kind / f"step_{step:08d}.png"

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def refuse_earlier_run(root: str | Path, resume: str | None, overwrite: bool, probe: bool = True) -> None:
    """UserError when the run folder `root` holds an earlier run and neither `resume` (--resume)
    continues it nor `overwrite` (--progress.overwrite) replaces it; also when it is a file or,
    with `probe`, cannot be written (ava.files.output_folder: only the one process that writes
    the folder should probe it, since a probe may create the folder and remove it again)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--progress.output-path {root} is a file; pass a folder for the run")
    if probe:
        output_folder(root, "--progress.output-path", create=False)  # writable, before any work
    found = earlier_run(root)
    if found and not resume and not overwrite:
        raise UserError(f"{root} holds an earlier run ({found}); pass --resume auto to continue it, "
                        "--progress.overwrite to replace it, or another --progress.output-path")


def load_for_resume(resume: str | None, root: str | Path, load: Callable[[Path], Any], say) -> Any | None:
    """The checkpoint --resume names, read by `load` (ava.checkpoint.load_checkpoint or
    load_driver_checkpoint), or None for a fresh start. `auto`: the run folder `root`'s newest
    checkpoint that loads; a damaged one (ava.checkpoint.DamagedCheckpoint) is reported through
    `say` and the next older one tried. A checkpoint named by its path must load."""
    from ava.checkpoint import DamagedCheckpoint

    if not resume:
        return None
    if resume != "auto":
        return load(Path(resume).expanduser())
    candidates = [path for _, path in reversed(step_checkpoints(Path(root)))]
    if not candidates:
        say(f"--resume auto: no checkpoint in {root}; starting a new run", highlight=False)
        return None
    damaged: list[DamagedCheckpoint] = []
    for path in candidates:
        try:
            checkpoint = load(path)
        except DamagedCheckpoint as error:
            damaged.append(error)
            say(f"[yellow]warning:[/] {error}", highlight=False)
            continue
        if damaged:
            say(f"--resume auto: {len(damaged)} newer checkpoint" + (" is" if len(damaged) == 1 else "s are")
                + f" damaged; resuming from {path}, the newest intact one", highlight=False)
        return checkpoint
    raise UserError(f"--resume auto: all {len(damaged)} checkpoints in {Path(root) / 'checkpoints'} are damaged "
                    f"(the newest: {damaged[0]}); restore one from a backup or start over with --progress.overwrite")


def remove_stale_temporaries(folder: Path) -> None:
    """Deletes the temporary files that a process killed in the middle of an atomic write left in
    `folder` (named with its process id; those of a process still running are kept)."""
    for path in folder.glob(".*"):
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            pass  # another user's live process, or a number that is no process id
