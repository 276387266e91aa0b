"""Faults during training (issue 24): damaged checkpoints, a full disk, and crashes at every named
point of a run and at random moments (kill -9). What must hold: `checkpoints/latest` always names
a complete checkpoint, `--resume auto` resumes from the newest intact one having lost at most
`--progress.checkpoint-freq` steps, and the resumed run continues exactly as the unbroken one."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_first_hour import _wait_for_steps, ava_process
from tests.test_train import read_metrics, run_cli, train_argv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache_and_wide_console(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("COLUMNS", "400")


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, captured.err
    return lines[0]


def losses(run: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(run) if record.get("kind") is None]


def assert_same_weights(run: Path, reference: Path, step: int) -> None:
    from ava.checkpoint import load_checkpoint

    name = f"checkpoints/step_{step:08d}.safetensors"
    ours, theirs = load_checkpoint(run / name), load_checkpoint(reference / name)
    for key, value in theirs.model_state.items():
        torch.testing.assert_close(ours.model_state[key], value, rtol=1e-6, atol=1e-7, msg=key)


# --- damaged checkpoints ------------------------------------------------------------------------

def _damaged_copies(source: Path, folder: Path) -> dict[str, Path]:
    """Copies of `source` cut short or with one byte flipped in each part of the file."""
    data = source.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    metadata_at = data.index(b'"config"')  # a metadata value: covered by the digest, not by safetensors
    variants = {
        "cut to 8 bytes": data[:8],
        "cut in the header": data[: header_end // 2],
        "cut in the tensors": data[: (header_end + len(data)) // 2],
        "one byte missing": data[:-1],
        "flipped in a metadata value": data[: metadata_at + 20] + bytes([data[metadata_at + 20] ^ 0x04])
        + data[metadata_at + 21 :],
        "flipped in the first tensor": data[: header_end + 5] + bytes([data[header_end + 5] ^ 0x01])
        + data[header_end + 6 :],
        "flipped in the last byte": data[:-1] + bytes([data[-1] ^ 0x80]),
    }
    copies = {}
    for number, (name, content) in enumerate(variants.items()):
        copies[name] = folder / f"damaged_{number}.safetensors"
        copies[name].write_bytes(content)
    return copies


def test_a_damaged_checkpoint_is_refused_naming_the_file(tiny_checkpoints, tmp_path):
    from ava.checkpoint import DIGEST_KEY, DamagedCheckpoint, load_checkpoint

    intact = load_checkpoint(tiny_checkpoints[1])
    for kind, path in _damaged_copies(tiny_checkpoints[1], tmp_path).items():
        with pytest.raises(DamagedCheckpoint) as refused:
            load_checkpoint(path)
        assert str(path) in str(refused.value) and "damaged" in str(refused.value), kind
    # The digest covers the tensors and the metadata; a file written before it existed loads unchecked.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_checkpoints[1]), framework="pt") as reader:
        metadata = reader.metadata()
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    assert metadata[DIGEST_KEY].startswith("sha256:")
    del metadata[DIGEST_KEY]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    old = load_checkpoint(tmp_path / "old.safetensors")
    assert old.step == intact.step and old.config == intact.config


def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(tiny_capture_set, tiny_checkpoints, tmp_path, capsys):
    from ava.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoints[0].parents[1], run)
    newest = run / "checkpoints" / "step_00000004.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[:1000] + bytes([data[1000] ^ 0x01]) + data[1001:])
    # A path given explicitly is refused, naming the file ...
    assert run_cli(train_argv(tiny_capture_set, run, 5, "--resume", str(newest))) == 2
    message = one_line_error(capsys)
    assert f"checkpoint {newest} is damaged" in message
    # ... --resume auto says so and resumes from the newest intact one.
    assert run_cli(train_argv(tiny_capture_set, run, 5, "--resume", "auto")) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged" in err
    assert f"1 newer checkpoint is damaged; resuming from {run / 'checkpoints' / 'step_00000002.safetensors'}" in err
    assert load_checkpoint(run / "checkpoints" / "step_00000005.safetensors").step == 5
    assert [record["step"] for record in read_metrics(run) if record.get("kind") is None] == [1, 2, 3, 4, 5]
    # The lines of steps 3 and 4 that ran again are kept aside, not lost.
    replaced = [json.loads(line) for line in (run / "metrics.replaced.jsonl").read_text().splitlines()]
    assert [record["step"] for record in replaced if record.get("kind") is None] == [3, 4]
    # Every checkpoint damaged: one line, nothing trained.
    for path in (run / "checkpoints").glob("step_*.safetensors"):
        path.write_bytes(path.read_bytes()[:100])
    assert run_cli(train_argv(tiny_capture_set, run, 6, "--resume", "auto")) == 2
    assert "all 3 checkpoints" in one_line_error(capsys)


# --- a full disk --------------------------------------------------------------------------------

def test_a_full_disk_while_writing_a_checkpoint_is_one_error_and_keeps_the_previous(tiny_capture_set, tmp_path,
                                                                                  monkeypatch, capsys):
    """safetensors writes in Rust, so the full disk is simulated at its writer: half the file is
    written, then it fails as safetensors does when the disk is full (checked on a real full
    tmpfs by the next test where this machine allows mounting one)."""
    import safetensors.torch
    from safetensors import SafetensorError

    from ava.checkpoint import load_checkpoint

    real_save = safetensors.torch.save_file
    saves = []

    def save_until_the_disk_is_full(tensors, filename, metadata=None):
        saves.append(filename)
        if len(saves) == 2:
            real_save(tensors, filename, metadata=metadata)
            os.truncate(filename, os.path.getsize(filename) // 2)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_until_the_disk_is_full)
    run = tmp_path / "run"
    assert run_cli(train_argv(tiny_capture_set, run, 6, "--progress.psnr-freq", "1000")) == 2
    message = one_line_error(capsys)
    assert f"cannot write the checkpoint {run / 'checkpoints' / 'step_00000004.safetensors'}: No space left on " \
           "device" in message
    assert "--resume auto" in message
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_00000002.safetensors"]  # no temporary left
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002.safetensors"
    assert load_checkpoint(run / "checkpoints" / "step_00000002.safetensors").step == 2


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="this machine cannot mount a tmpfs in a user namespace")
def test_a_really_full_disk_during_training(tiny_capture_set, tmp_path):
    """A 48 MB tmpfs holds two 20 MB checkpoints of the tiny model, not three."""
    run = tmp_path / "full" / "run"
    run.parent.mkdir()
    argv = train_argv(tiny_capture_set, run, 6, "--progress.psnr-freq", "1000", "--progress.image-freq", "1000",
                      "--threads", "1", "--model.background-width", "256")  # the checkpoint size the 48 MB is for
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = (f"mount -t tmpfs -o size=48m tmpfs {run.parent} && {sys.executable} -m ava "
              + " ".join(argv) + f"; status=$?; ls -a {run}/checkpoints; cat {run}/checkpoints/latest; "
              f"{sys.executable} -c \"from ava.checkpoint import load_checkpoint; "
              f"print('loads', load_checkpoint('{run}/checkpoints/step_00000004.safetensors').step)\"; exit $status")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in result.stderr
    listing = result.stdout.split()
    assert "step_00000004.safetensors" in listing and "step_00000006.safetensors" not in listing
    assert not [name for name in listing if name.endswith((".partial", ".tmp"))]
    assert "step_00000004.safetensors" in result.stdout and "loads 4" in result.stdout


# --- crashes at every named point of a run ------------------------------------------------------

KILL_RUN_STEPS = 6
KILL_RUN_FREQ = 2
DEAD_PID = 99_999_999  # above Linux's largest pid_max (2^22)


def kill_run_argv(dataset: Path, run: Path, *extra: str) -> list[str]:
    return train_argv(dataset, run, KILL_RUN_STEPS, "--progress.image-freq", "1000", "--progress.psnr-freq", "1000",
                      "--progress.no-cross-id", "--progress.keep-checkpoints", "2", "--progress.checkpoint-freq",
                      str(KILL_RUN_FREQ), *extra)


class Snapshots:
    """The run folder as a crash at each named point would leave it (ava.faults): a kill -9 keeps
    what the process wrote, so a copy taken there is that state. Complete files are hard links
    (never modified once in place); a checkpoint in the middle of its write is cut to half."""

    def __init__(self, run: Path, folder: Path) -> None:
        self.run, self.folder = run, folder
        self.taken: list[tuple[Path, str, int]] = []  # (snapshot, point, completed steps)
        self.completed = 0

    def __call__(self, name: str, partial=None, step: int | None = None) -> None:
        if step is not None:
            self.completed = max(self.completed, step)
        target = self.folder / f"{len(self.taken):03d}-{name}"
        for source in self.run.rglob("*"):
            if source.is_dir():
                continue
            copy = target / source.relative_to(self.run)
            copy.parent.mkdir(parents=True, exist_ok=True)
            if partial is not None and source == Path(partial):
                # Named by a process that no longer exists, as the killed run's would be.
                copy = copy.with_name(copy.name.replace(f".{os.getpid()}.", f".{DEAD_PID}."))
                copy.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
            elif source.suffix == ".safetensors":
                os.link(source, copy)
            else:
                shutil.copyfile(source, copy)
        self.taken.append((target, name, self.completed))


@pytest.fixture(scope="module")
def crash_snapshots(tiny_capture_set, tmp_path_factory):
    """An unbroken run with a snapshot at every crash point (its reference for the resumes)."""
    from ava import faults

    root = tmp_path_factory.mktemp("kill-points")
    run = root / "unbroken"
    snapshots = Snapshots(run, root / "snapshots")
    faults.set_handler(snapshots)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
            assert run_cli(kill_run_argv(tiny_capture_set, run)) == 0
    finally:
        faults.set_handler(None)
    return run, snapshots


def test_a_crash_at_any_named_point_loses_at_most_checkpoint_freq_steps(crash_snapshots):
    from ava.checkpoint import load_checkpoint
    from ava.runtime.rundir import load_for_resume

    _, snapshots = crash_snapshots
    points = [name for _, name, _ in snapshots.taken]
    # Every point of every step and every checkpoint of the run was reached.
    assert points.count("after-step") == points.count("metrics-logged") == KILL_RUN_STEPS
    for name in ("checkpoint-written", "checkpoint-renamed", "latest-written", "pruned"):
        assert points.count(name) == KILL_RUN_STEPS // KILL_RUN_FREQ, name
    lost = []
    for snapshot, name, completed in snapshots.taken:
        latest = snapshot / "checkpoints" / "latest"
        if latest.exists():  # never a pointer to a missing or incomplete checkpoint
            assert load_checkpoint(snapshot / "checkpoints" / latest.read_text().strip()).step <= completed
        resumed = load_for_resume("auto", snapshot, load_checkpoint, lambda *args, **kwargs: None)
        step = resumed.step if resumed is not None else 0
        assert completed - step <= KILL_RUN_FREQ, (snapshot.name, completed, step)
        lost.append(completed - step)
    assert max(lost) == KILL_RUN_FREQ  # a crash while writing a checkpoint costs the whole interval


@pytest.mark.parametrize("point", ["checkpoint-written", "checkpoint-renamed", "metrics-logged"])
def test_a_run_resumed_after_a_crash_matches_the_unbroken_one(point, tiny_capture_set, crash_snapshots, tmp_path):
    """The second checkpoint's write cut in the middle, its pointer not yet rewritten, and a crash
    between two checkpoints (after step 5's metrics line): --resume auto continues to the same
    weights and losses as the run that never crashed, and removes the half-written file."""
    unbroken, snapshots = crash_snapshots
    wanted = {"checkpoint-written": 1, "checkpoint-renamed": 1, "metrics-logged": 4}[point]  # 0-based occurrence
    snapshot = [path for path, name, _ in snapshots.taken if name == point][wanted]
    run = tmp_path / "run"
    shutil.copytree(snapshot, run)
    partial = list((run / "checkpoints").glob(".*.partial"))
    assert bool(partial) == (point == "checkpoint-written")
    assert run_cli(kill_run_argv(tiny_capture_set, run, "--resume", "auto")) == 0
    assert not list((run / "checkpoints").glob(".*"))
    assert [record["step"] for record in read_metrics(run) if record.get("kind") is None] == \
        list(range(1, KILL_RUN_STEPS + 1))
    assert losses(run) == pytest.approx(losses(unbroken), rel=1e-6)
    assert_same_weights(run, unbroken, KILL_RUN_STEPS)


def test_real_kills_at_random_moments_and_in_a_checkpoint_write(tiny_capture_set, crash_snapshots, tmp_path):
    """kill -9 of the whole process group at a random moment after the first steps, then a rerun
    that dies in the middle of writing its first checkpoint (AVA_CRASH_AT), then one that finishes:
    the same weights as the unbroken run. About 30 s (two fresh interpreters)."""
    from ava.faults import CRASH_ENV, CRASH_STATUS

    unbroken, _ = crash_snapshots
    run = tmp_path / "run"
    argv = kill_run_argv(tiny_capture_set, run, "--threads", "1")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = ava_process(*argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    # A random step, then a random moment within it: a fixed sleep after step 1 outlived the whole
    # run once steps got faster (the kill found a finished run).
    _wait_for_steps(process, run / "metrics.jsonl", random.randint(1, KILL_RUN_STEPS - 2))
    time.sleep(random.uniform(0.0, 0.1))
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    completed = len([record for record in read_metrics(run) if record.get("kind") is None])
    assert 1 <= completed < KILL_RUN_STEPS, completed

    crashed = subprocess.run([sys.executable, "-m", "ava", *argv, "--resume", "auto"], cwd=REPO, capture_output=True,
                             text=True, env=dict(env, **{CRASH_ENV: "checkpoint-written"}), timeout=300)
    assert crashed.returncode == CRASH_STATUS, crashed.stderr[-2000:]
    assert list((run / "checkpoints").glob(".*.partial"))  # left half-written, as a kill leaves it

    assert run_cli(argv + ["--resume", "auto"]) == 0
    assert not list((run / "checkpoints").glob(".*"))
    assert [record["step"] for record in read_metrics(run) if record.get("kind") is None] == \
        list(range(1, KILL_RUN_STEPS + 1))
    assert losses(run) == pytest.approx(losses(unbroken), rel=1e-6)
    assert_same_weights(run, unbroken, KILL_RUN_STEPS)


# --- output folders that cannot be written ------------------------------------------------------

COMMANDS = {  # the command line with OUT for the output folder, and the work it must not start
    "render": (["render", "--checkpoint", "missing.safetensors", "-o", "OUT"], "ava.render.cross_id:render"),
    "headset render": (["render", "--checkpoint", "missing.safetensors", "--driver-checkpoint", "d.safetensors", "-o",
                        "OUT"], "ava.render.driven:render_headset"),
    "eval": (["eval", "missing.safetensors", "-o", "OUT"], "ava.eval.run:evaluate"),
    "show": (["show", "missing-capture", "-o", "OUT"], "ava.show.run:show"),
    "synth": (["synth", "-o", "OUT"], "ava.synth.pipeline:generate"),
    "eval-driver": (["eval-driver", "--driver-checkpoint", "d.safetensors", "-o", "OUT"],
                    "ava.driver.evaluate:evaluate_driver"),
    "train": (["train", "--progress.output-path", "OUT"], "ava.train.setup:load_data"),
    "train-driver": (["train-driver", "--checkpoint", "missing.safetensors", "--progress.output-path", "OUT"],
                     "ava.driver.loop:_train"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unwritable_output_folder_is_one_line_before_the_work(command, tmp_path, monkeypatch, capsys):
    import errno
    import importlib

    argv, work = COMMANDS[command]
    module, name = work.split(":")

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{command} started its work before checking the output folder")

    monkeypatch.setattr(importlib.import_module(module), name, must_not_run)
    flag = argv[argv.index("OUT") - 1]
    flag = {"-o": "-o/--output-dir" if command == "synth" else "-o/--output"}.get(flag, flag)
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    def run(out: Path) -> str:
        assert run_cli([str(out) if part == "OUT" else part for part in argv]) == 2
        return one_line_error(capsys)

    # A file where a parent folder should be.
    message = run(blocker / "out")
    assert f"cannot write to output folder {blocker / 'out'} ({flag}): {blocker} is a file" in message
    # A full disk: the probe's block cannot be flushed. Nothing is left behind.
    real_fsync = os.fsync

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    message = run(tmp_path / "new" / "out")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert f"cannot write to output folder {tmp_path / 'new' / 'out'} ({flag}): No space left on device" in message
    assert sorted(os.listdir(tmp_path)) == ["a-file"]
    # A folder without write permission (root may write anywhere, so only for other users).
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert "Permission denied" in run(locked)


def test_a_folder_made_meanwhile_by_another_process_is_left_to_it(tmp_path, monkeypatch):
    """The processes of a multi-process run may check the same new folder at once: the one whose
    mkdir comes second must neither fail nor remove the other's folder afterwards."""
    from ava.files import output_folder

    target = tmp_path / "run"
    real_mkdir = Path.mkdir

    def another_process_first(self, *args, **kwargs):
        if self == target and not self.exists():
            real_mkdir(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", another_process_first)
    assert output_folder(target, "-o", create=False) == target
    assert target.is_dir()


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="this machine cannot mount a tmpfs in a user namespace")
def test_the_probe_on_a_real_read_only_and_a_real_full_file_system(tmp_path):
    script = (f"mkdir {tmp_path}/ro {tmp_path}/full && mount -t tmpfs -o ro,size=64k tmpfs {tmp_path}/ro && "
              f"mount -t tmpfs -o size=64k tmpfs {tmp_path}/full && "
              f"(dd if=/dev/zero of={tmp_path}/full/filler bs=4k count=100 2>/dev/null; true) && "
              f"{sys.executable} -c \"from ava.files import output_folder\nfor where in ('ro/out', 'full', 'full/new'):\n"
              f"    try:\n        output_folder('{tmp_path}/' + where, '-o')\n    except Exception as error:\n"
              f"        print(type(error).__name__, error)\"")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    lines = result.stdout.splitlines()
    assert lines == [f"UserError cannot write to output folder {tmp_path}/ro/out (-o): Read-only file system",
                     f"UserError cannot write to output folder {tmp_path}/full (-o): No space left on device",
                     f"UserError cannot write to output folder {tmp_path}/full/new (-o): No space left on device"], \
        result.stdout + result.stderr


def test_only_the_temporaries_of_dead_processes_are_removed(tmp_path):
    from ava.runtime.rundir import remove_stale_temporaries

    alive, thread = os.getppid(), 140_737_488_355_328  # a thread ident is no pid
    names = {f".metrics.jsonl.{alive}.{thread}.tmp": True, f".latest.{DEAD_PID}.{thread}.tmp": False,
             f".step_00000002.safetensors.{DEAD_PID}.partial": False, f".step_00000004.safetensors.{alive}.partial": True,
             ".hidden-notes.txt": True}
    for name in names:
        (tmp_path / name).write_text("")
    remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(name for name, kept in names.items() if kept)
