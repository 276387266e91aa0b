"""What a new user meets in the first hour (issue 12): CPU threads, runs that must not be lost
(existing run folders, Ctrl-C/SIGTERM), one-line errors instead of tracebacks, messages that name
the right flag, progress lines, help pages, file permissions and the README's promises."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ava.cli import SUBCOMMANDS
from tests.test_convert import common_flags, original  # noqa: F401  (fixture)
from tests.test_train import read_metrics, run_cli, straight_run, tiny_dataset, train_argv  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache_and_wide_console(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at 80 columns without a terminal


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def ava_process(*argv: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "ava", *argv], cwd=REPO, env=env, **kwargs)


# --- 1. threads ---------------------------------------------------------------------------------

def test_threads_follow_the_cores_the_load_leaves_free(monkeypatch, tmp_path):
    """The rule behind --threads 0, on the two measurements of a busy 2-core machine
    (BENCHMARKS.md, "CPU threads"): with other jobs' load at about 0.5 two threads ran the demo step
    at 1.07 s against 1.41-1.65 s for one; under a load of 6-8 two threads were 5x slower than one."""
    from ava.runtime import device

    assert device.choose_threads(2, 0.5) == 2 and device.choose_threads(2, 0.0) == 2
    assert device.choose_threads(2, 0.6) == 1 and device.choose_threads(2, 7.0) == 1
    assert device.choose_threads(1, 0.0) == 1
    assert device.choose_threads(16, 0.0) == 4 and device.choose_threads(16, 13.6) == 2  # at most 4
    assert device.choose_threads(16, 0.0, processes=8) == 2 and device.choose_threads(2, 0.0, processes=2) == 1
    # A container of 4 CPUs on a 64-core host sees the host's load: half of the host is busy.
    assert device.choose_threads(4, 32.0, machine_cores=64) == 2
    monkeypatch.setattr(device, "usable_cores", lambda: 2)
    for load, expected in [(0.3, 2), (1.5, 1)]:
        monkeypatch.setattr(device, "machine_load", lambda: (load, 2))
        assert device.auto_threads() == expected
    monkeypatch.undo()
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a container limited to 1.5 CPUs
    assert device.usable_cores(quota) == min(2, len(os.sched_getaffinity(0)))
    quota.write_text("max 100000\n")
    assert device.usable_cores(quota) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("command", ["train", "render", "synth", "convert"])
def test_every_compute_command_takes_threads(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")  # one column of options
    assert run_cli([command, "--help"]) == 0
    assert re.search(r"--threads N\s+CPU threads for torch", capsys.readouterr().out)


def test_threads_are_set_before_the_work(monkeypatch, tmp_path, restore_threads, capsys):
    import ava.render.cross_id
    import ava.synth.pipeline
    from ava.errors import UserError

    seen = {}

    def fake_render(config, console):
        seen["render"] = torch.get_num_threads()
        raise UserError("stop here")

    def fake_generate(output_dir, settings, threads):
        seen["synth"] = (torch.get_num_threads(), threads)
        raise UserError("stop here")

    monkeypatch.setattr(ava.render.cross_id, "render", fake_render)
    monkeypatch.setattr(ava.synth.pipeline, "generate", fake_generate)
    assert run_cli(["render", "--checkpoint", "x.safetensors", "-o", str(tmp_path / "viz"), "--threads", "3"]) == 2
    assert run_cli(["synth", "-o", str(tmp_path / "synth"), "--threads", "2", "--workers", "2"]) == 2
    assert seen == {"render": 3, "synth": (2, 2)}
    torch.set_num_threads(5)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert run_cli(["convert", str(tmp_path / "garbage.pt"), "-o", str(tmp_path / "x.safetensors"),
                    "--threads", "1"]) == 2
    assert torch.get_num_threads() == 1
    capsys.readouterr()
    assert run_cli(["render", "--checkpoint", "x.safetensors", "--threads", "-1"]) == 2
    assert "--threads must be at least 0" in one_line_error(capsys)


# --- 2. a preset that needs a dataset -----------------------------------------------------------

def test_ava256_without_a_dataset_is_refused_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path / "cache"))
    assert run_cli(["train", "ava256", "--progress.output-path", str(tmp_path / "run")]) == 2
    message = one_line_error(capsys)
    assert "ava256 preset" in message and "--train.dataset-dir" in message
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache" / "demo-data").exists()


# --- 3. an earlier run is never destroyed silently ----------------------------------------------

def test_training_into_an_earlier_run_needs_resume_or_overwrite(tiny_dataset, straight_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    before = (run / "metrics.jsonl").read_text()
    assert run_cli(train_argv(tiny_dataset, run, 2)) == 2
    message = one_line_error(capsys)
    assert "holds an earlier run (2 checkpoints, metrics.jsonl, config.json)" in message
    assert "--resume auto" in message and "--progress.overwrite" in message
    assert (run / "metrics.jsonl").read_text() == before

    assert run_cli(train_argv(tiny_dataset, run, 2, "--progress.overwrite")) == 0
    assert [r["step"] for r in read_metrics(run) if r.get("kind") != "eval"] == [1, 2]
    assert sorted(path.name for path in (run / "checkpoints").glob("*.safetensors")) == ["step_00000002.safetensors"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002.safetensors"
    assert sorted(path.name for path in (run / "progress").glob("*.png")) == ["step_00000002.png"]
    assert json.loads((run / "config.json").read_text())["train"]["maxiter"] == 2
    capsys.readouterr()

    (tmp_path / "a-file").write_text("")
    assert run_cli(train_argv(tiny_dataset, tmp_path / "a-file", 2)) == 2
    assert "is a file" in one_line_error(capsys)


def test_messages_stay_one_line_in_a_log_file(tiny_dataset, straight_run, tmp_path, monkeypatch, capsys):
    """Without a terminal rich breaks lines at COLUMNS (80 by default); a cluster job's log would
    then split paths and metrics over two lines."""
    monkeypatch.setenv("COLUMNS", "30")
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    assert run_cli(train_argv(tiny_dataset, run, 4, "--resume", "auto")) == 0
    lines = capsys.readouterr().err.splitlines()
    checkpoint = run / "checkpoints" / "step_00000004.safetensors"
    assert f"resuming from {checkpoint} at step 4" in lines
    assert "nothing to do: the run is already at step 4 of 4" in lines
    out = tmp_path / "viz"
    assert run_cli(["render", "--checkpoint", str(checkpoint), "-o", str(out), "--max-frames", "1"]) == 0
    assert any(line.startswith(f"wrote {out}") and line.endswith(")") for line in capsys.readouterr().err.splitlines())


# --- 4. Ctrl-C and SIGTERM write a checkpoint ---------------------------------------------------

def _wait_for_steps(process: subprocess.Popen, metrics: Path, steps: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()[1]}")
        if metrics.is_file() and sum('"kind"' not in line for line in metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError("training logged no steps in time")


def test_ctrl_c_writes_a_checkpoint_and_the_resumed_run_matches_an_unbroken_one(tiny_dataset, tmp_path):
    """SIGINT to the whole process group (what Ctrl-C in a terminal does, DataLoader workers
    included): exit 130 with the interrupted step's checkpoint; resuming to 3 more steps equals an
    unbroken run. About 10 s (a fresh interpreter starts)."""
    from ava.checkpoint import load_checkpoint

    flags = ["--threads", "1", "--train.num-workers", "1", "--progress.checkpoint-freq", "1000",
             "--progress.image-freq", "1000", "--progress.psnr-freq", "1000"]
    run = tmp_path / "interrupted"
    process = ava_process(*train_argv(tiny_dataset, run, 1000, *flags), stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    _wait_for_steps(process, run / "metrics.jsonl", 2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume auto" in stderr
    stopped = load_checkpoint(run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()).step
    assert stopped >= 2 and [r["step"] for r in read_metrics(run)] == list(range(1, stopped + 1))

    last = stopped + 3  # the tiny set has 4 steps per epoch, so the resumed part crosses an epoch
    assert run_cli(train_argv(tiny_dataset, run, last, *flags, "--resume", "auto")) == 0
    unbroken = tmp_path / "unbroken"
    assert run_cli(train_argv(tiny_dataset, unbroken, last, *flags)) == 0
    steps = [r for r in read_metrics(run) if r.get("kind") != "eval"]
    expected = [r for r in read_metrics(unbroken) if r.get("kind") != "eval"]
    assert [r["step"] for r in steps] == list(range(1, last + 1))
    assert [r["loss"] for r in steps] == pytest.approx([r["loss"] for r in expected], rel=1e-6)
    name = f"step_{last:08d}.safetensors"
    resumed, straight = load_checkpoint(run / "checkpoints" / name), load_checkpoint(unbroken / "checkpoints" / name)
    for key, value in straight.model_state.items():
        torch.testing.assert_close(resumed.model_state[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_sigterm_writes_a_checkpoint_and_exits_130(tiny_dataset, tmp_path):
    run = tmp_path / "terminated"
    process = ava_process(*train_argv(tiny_dataset, run, 1000, "--threads", "1", "--progress.checkpoint-freq", "1000",
                                      "--progress.psnr-freq", "1000"), stderr=subprocess.PIPE, text=True)
    _wait_for_steps(process, run / "metrics.jsonl", 1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "stopped by SIGTERM" in stderr, stderr
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert (run / "checkpoints" / latest).is_file()


# --- 5. no tracebacks for user mistakes ---------------------------------------------------------

def test_output_folders_that_are_files(tmp_path, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("")
    assert run_cli(["synth", "-o", str(afile)]) == 2
    assert f"-o/--output-dir {afile} is a file, not a folder" in one_line_error(capsys)
    assert run_cli(["render", "--checkpoint", str(tmp_path / "x.safetensors"), "-o", str(afile)]) == 2
    assert f"-o/--output {afile} is a file, not a folder" in one_line_error(capsys)
    assert run_cli(["download", "-o", str(afile), "--ids", "20230324--0820--AEY864",
                    "--base-url", "http://127.0.0.1:9"]) == 2
    assert f"-o/--output-dir {afile} is a file, not a folder" in one_line_error(capsys)


def test_help_into_a_closed_pipe_ends_quietly():
    process = ava_process("train", "ava256", "--help", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # like `| head` that has already exited
    stderr = process.stderr.read().decode()
    process.wait(timeout=60)
    assert stderr == "" and process.returncode == 141


def test_convert_of_a_file_that_is_not_a_state_dict(tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(os.urandom(256))
    assert run_cli(["convert", str(tmp_path / "garbage.pt"), "-o", str(tmp_path / "out.safetensors")]) == 2
    message = one_line_error(capsys)
    assert "garbage.pt is not a PyTorch state dict" in message and "weights_only" not in message


# --- 6. messages that name the right thing ------------------------------------------------------

def test_a_checkpoint_folder_is_named_as_a_folder(straight_run, tmp_path, capsys):
    for folder in (straight_run / "checkpoints", straight_run):
        assert run_cli(["render", "--checkpoint", str(folder), "-o", str(tmp_path / "viz")]) == 2
        message = one_line_error(capsys)
        assert "is a folder, not a checkpoint file" in message and "step_00000004.safetensors" in message


def test_a_malformed_subject_id_is_refused_before_any_network_use(monkeypatch, tmp_path, capsys):
    import ava.data.download

    def no_network(*args, **kwargs):
        raise AssertionError("the capture list was fetched")

    monkeypatch.setattr(ava.data.download, "default_captures", no_network)
    monkeypatch.setattr(ava.data.download, "check_reachable", no_network)
    assert run_cli(["download", "-o", str(tmp_path / "out"), "--ids", "AEY86@"]) == 2
    message = one_line_error(capsys)
    assert "'AEY86@' is neither a capture id" in message and "e.g. AEY864" in message


def test_render_names_the_flag_that_is_wrong(tmp_path, capsys):
    for flags, wrong in [(["--fps", "0"], "--fps"), (["--max-frames", "-1"], "--max-frames"),
                         (["--orbit-frames", "0"], "--orbit-frames"), (["--downsample", "0"], "--downsample")]:
        assert run_cli(["render", "--checkpoint", "x.safetensors", "-o", str(tmp_path / "viz"), *flags]) == 2
        message = one_line_error(capsys)
        assert message.count("must be") == 1 and f"{wrong} must be at least" in message


def test_one_process_is_not_called_processes(tiny_dataset, tmp_path, capsys):
    assert run_cli(train_argv(tiny_dataset, tmp_path / "run", 1, "--train.batchsize", "500")) == 2
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1]
    assert "Traceback" not in err and message.startswith("error:")
    # 2 captures x 4 frames x 1 camera: the 3 cameras both captures share, less the 2 held out
    assert "8 training samples do not fill one batch of 500" in message and "processes" not in message
    assert not (tmp_path / "run").exists()  # nothing was written for a run that could not start


def test_convert_names_its_own_topology_flag(original, tmp_path, capsys):  # noqa: F811
    _, _, folder = original
    flags = [str(flag) for flag in common_flags(folder)]
    flags[flags.index("--topology") + 1] = str(tmp_path / "missing.obj")
    assert run_cli(["convert", str(folder / "aeparams_000123.pt"), "-o", str(tmp_path / "out.safetensors"),
                    *flags]) == 2
    assert re.search(r"error: --topology \S*missing\.obj does not exist$", one_line_error(capsys))


# --- 7. progress lines --------------------------------------------------------------------------

def test_progress_lines_show_window_means_and_an_eta(tiny_dataset, tmp_path, capsys):
    from ava.train.report import Window, format_duration

    window = Window(3)
    for loss, seconds in [(9.0, 5.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]:
        window.add(loss, seconds)
    assert window.mean_loss() == 2.0 and window.seconds_per_step() == 2.0 and window.eta(10) == 20.0
    assert [format_duration(s) for s in (5, 65, 7260, float("nan"))] == ["5s", "1m05s", "2h01m", "-"]

    run = tmp_path / "run"
    assert run_cli(train_argv(tiny_dataset, run, 3, "--progress.psnr-freq", "1000")) == 0
    err = capsys.readouterr().err
    assert "nan" not in err
    lines = re.findall(r"step (\d+)/3 loss ([\d.]+), ([\d.]+) s/step, [\d.]+ samples/s, ETA (\S+) \(means over "
                       r"the last 1 step\)", err)
    losses = {r["step"]: r["loss"] for r in read_metrics(run) if r.get("kind") != "eval"}
    assert [int(step) for step, *_ in lines] == [1, 2, 3]
    for step, loss, _, eta in lines:
        assert float(loss) == pytest.approx(losses[int(step)], abs=5e-4)
    assert lines[-1][3] == "0s"
    # The last line tells the steps' time apart from what came before them (here no data generation).
    assert re.search(r"done: step 3; 3 steps in \d+s \([\d.]+ s/step with evaluations, pictures and checkpoints\), "
                     r"after \d+s setting up; checkpoints in ", err), err
    assert "━" not in err  # without a terminal the lines replace the bar (no second, different summary)


# --- 8. help ------------------------------------------------------------------------------------

def test_every_subcommand_has_a_description(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert re.search(rf"• {name}\s+[A-Z]\w+ ", out), name


def test_version(capsys):
    from ava import __version__

    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ava {__version__}"


def _field_docstrings(path: Path, classes: set[str] | None = None) -> list[tuple[int, str]]:
    """(line count in the source, text with whitespace collapsed) of the attribute docstrings of
    the classes in `path` (those named in `classes`, if given), except for flattened (`name=""`)
    and hidden fields, which have no help line."""
    source = path.read_text()
    found = []
    for cls in [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)
                and (classes is None or node.name in classes)]:
        for before, node in zip(cls.body, cls.body[1:]):
            if (isinstance(before, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                    and not re.search(r'name=""|Suppress', ast.get_source_segment(source, before.annotation))):
                found.append((node.end_lineno - node.lineno + 1, " ".join(str(node.value.value).split())))
    return found


@pytest.mark.parametrize("command, sources", [
    ("train", ["ava/train/config.py", "ava/nn/config.py::ModelConfig", "ava/synth/config.py"]),
    ("train-driver", ["ava/driver/config.py::DriverTrainSection,DriverProgressSection,DriverConfig",
                      "ava/nn/config.py::HeadsetEncoderConfig"]),
    ("eval-driver", ["ava/driver/config.py::EvalDriverConfig"]),
    ("render", ["ava/render/config.py"]),
    ("synth", ["ava/synth/config.py", "ava/cli/synth.py"]),
    ("convert", ["ava/cli/convert.py"]),
    ("download", ["ava/cli/download.py"]),
])
def test_help_lines_are_not_broken_mid_sentence(command, sources, monkeypatch, capsys):
    """tyro starts a new help line at every line break of a field's docstring that is followed by
    indentation, so field docstrings are single source lines; in the help they then stay whole."""
    monkeypatch.setenv("COLUMNS", "2000")  # rich wraps only past its widest help column (~200)
    assert run_cli([command, "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for source in sources:
        path, _, names = source.partition("::")
        for line_count, docstring in _field_docstrings(REPO / path, set(names.split(",")) if names else None):
            assert line_count == 1, f"{source}: {docstring!r} spans {line_count} lines"
            if len(docstring) < 150:
                assert any(docstring in line for line in lines), f"{source}: {docstring!r} is broken up in the help"


@pytest.mark.parametrize("argv", [[], ["train", "ava256"], ["train", "demo"]] + [[name] for name in SUBCOMMANDS])
def test_help_cites_nothing_users_cannot_open(argv, monkeypatch, capsys):
    """SPEC.md and DESIGN.md are design notes outside the repository; help points into docs/."""
    monkeypatch.setenv("COLUMNS", "2000")
    assert run_cli([*argv, "--help"]) == 0
    text = capsys.readouterr().out
    assert not re.search(r"SPEC|DESIGN", text), [line for line in text.splitlines() if re.search(r"SPEC|DESIGN", line)]


@pytest.mark.parametrize("argv", [["--help"], ["train", "ava256", "--help"], ["convert"]])
def test_usage_names_the_command_a_user_types(argv, monkeypatch, capsys):
    """Not sys.argv[0], which is '/path/to/venv/bin/ava', or '.../ava/__main__.py' under python -m."""
    monkeypatch.setattr(sys, "argv", [str(REPO / "ava" / "__main__.py"), *argv])
    assert run_cli(argv) in (0, 2)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert re.search(r"usage: ava( |$)", text, re.MULTILINE) or "ava convert --help" in text, text[:500]
    assert "__main__" not in text


def test_the_default_of_n_is_said_once(capsys):
    assert run_cli(["download", "--help"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "-n N" in line)
    assert "(default: 16 unless --ids is given)" in line and "None" not in line and line.count("default") == 1


# --- 9. permissions -----------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_respect_the_umask(umask, tmp_path):
    from ava.checkpoint import save_checkpoint
    from ava.files import write_atomically
    from ava.nn.uvmap import Topology

    topology = Topology(verts=torch.zeros(3, 3), uvs=torch.zeros(3, 2), faces=torch.zeros(1, 3, dtype=torch.long),
                        face_uvs=torch.zeros(1, 3, dtype=torch.long))
    stats = {"texmean": np.zeros((3, 2, 2), np.float32), "texstd": 1.0, "vertmean": np.zeros((3, 3), np.float32),
             "vertstd": 1.0}
    previous = os.umask(umask)
    try:
        checkpoint = save_checkpoint(tmp_path / "c.safetensors", model=torch.nn.Linear(2, 2), stats=stats,
                                     topology=topology, identities=[], cameras=[], config={}, step=1)
        write_atomically(tmp_path / "f.json", b"{}")
    finally:
        os.umask(previous)
    for path in (checkpoint, tmp_path / "f.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_training_checkpoints_are_readable_like_other_outputs(straight_run):
    umask = os.umask(0)
    os.umask(umask)
    for path in list((straight_run / "checkpoints").glob("*.safetensors")) + [straight_run / "metrics.jsonl"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


# --- 10. README and pictures --------------------------------------------------------------------

def test_readme_presets_and_install_hint():
    from ava.train.config import PRESETS

    readme = (REPO / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    table = readme.split("## Model presets", 1)[1].split("\n\n")[1:3]
    rows = [line for part in table for line in part.splitlines() if line.startswith("| `")]
    named = [re.match(r"\| `(\w+)`", row).group(1) for row in rows]
    assert named and set(named) <= set(PRESETS), named
    assert "4 x |error|" not in readme


def test_progress_pictures_are_enlarged_without_smoothing(straight_run):
    from PIL import Image

    picture = np.asarray(Image.open(straight_run / "progress" / "step_00000004.png"))
    scale = 8  # 32x20 images (sensor / 128) become panels 256 high
    assert picture.shape == (scale * (2 * 32 + 2), scale * (3 * 20 + 2 * 2), 3)  # 2 rows of [gt | recon | error]
    blocks = picture.reshape(picture.shape[0] // scale, scale, picture.shape[1] // scale, scale, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # every block is one pixel of the original
    strip = np.asarray(Image.open(straight_run / "x-id" / "step_00000004.png"))
    assert strip.shape[0] == scale * 32


# --- 11. the first hour, round two (issue 26) ---------------------------------------------------

@pytest.mark.parametrize("command, other", [("train", "train-driver"), ("train-driver", "ava train ")])
def test_a_mistyped_flag_is_matched_against_the_commands_own_flags(command, other, capsys):
    """tyro searched every command for similar flags, so `ava train --train.maxiters` also offered
    train-driver's --train.maxiter with its defaults."""
    assert run_cli([command, "--train.maxiters", "10"]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "--train.maxiter" in text and f"in ava {command} demo --help" in text
    assert other not in text


def test_a_driver_checkpoint_where_a_decoder_is_expected_names_the_commands_for_it(straight_run, tmp_path, capsys):
    from ava.checkpoint import load_driver_checkpoint, save_driver_checkpoint
    from ava.errors import UserError

    driver = save_driver_checkpoint(tmp_path / "driver.safetensors", encoder=torch.nn.Linear(2, 2), encoder_config={},
                                    decoder={}, config={}, step=1)
    decoder = straight_run / "checkpoints" / "step_00000004.safetensors"
    for argv in (["eval", str(driver), "-o", str(tmp_path / "eval")], ["view", str(driver), "--port", "0"],
                 ["eval", str(decoder), "--compare", str(driver), "-o", str(tmp_path / "eval")]):
        assert run_cli(argv) == 2, argv
        message = one_line_error(capsys)
        assert f"{driver} is a headset driver checkpoint" in message
        assert f"ava eval-driver --driver-checkpoint {driver}" in message and "ava render --checkpoint" in message
        assert "pass it as" not in message
    with pytest.raises(UserError, match=f"`ava train-driver --checkpoint {re.escape(str(decoder))}` trains a driver"):
        load_driver_checkpoint(decoder)


def test_show_of_a_path_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nonexistent" / "capture"
    assert run_cli(["show", str(missing), "-o", str(tmp_path / "show")]) == 2
    assert f"{missing} does not exist" in one_line_error(capsys)


def test_latest_stands_for_the_checkpoint_it_names(straight_run, tmp_path):
    """`checkpoints/latest` is the run folder's pointer (a file holding the newest checkpoint's
    name); passed as a checkpoint it was read as safetensors ("header too large")."""
    from ava.checkpoint import load_checkpoint
    from ava.errors import UserError

    assert load_checkpoint(straight_run / "checkpoints" / "latest").path == (
        straight_run / "checkpoints" / "step_00000004.safetensors")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(straight_run / "checkpoints" / "step_00000002.safetensors", folder)
    (folder / "latest").write_text("step_00000004.safetensors\n")  # its checkpoint was deleted
    with pytest.raises(UserError, match=r"latest is the run folder's pointer to its newest checkpoint, "
                                        r"step_00000004.safetensors, which does not exist; pass a checkpoint file, "
                                        r"e.g. \S+step_00000002.safetensors"):
        load_checkpoint(folder / "latest")


def test_a_log_file_gets_whole_lines_and_no_blank_ones(tiny_dataset, straight_run, tmp_path, monkeypatch, capsys):
    """Without a terminal rich assumed 80 columns (breaking paths in two) and each transient
    progress bar left an empty line behind."""
    from ava.console import LOG_WIDTH, make_console

    monkeypatch.delenv("COLUMNS")
    console = make_console()
    assert not console.is_terminal and console.width == LOG_WIDTH
    long_path = "/a-folder-with-a-long-name" * 8 + "/segment+EXP_jaw_open.mp4"
    console.print(f"wrote {long_path} (38 headset frames)")
    assert capsys.readouterr().err == f"wrote {long_path} (38 headset frames)\n"

    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    assert run_cli(train_argv(tiny_dataset, run, 4, "--resume", "auto")) == 0  # reads the data, nothing to do
    out = tmp_path / ("a-render-folder-with-a-long-name-" * 3)
    assert run_cli(["render", "--checkpoint", str(run / "checkpoints" / "latest"), "-o", str(out),
                    "--max-frames", "1"]) == 0
    err = capsys.readouterr().err
    assert err.strip() and "\n\n" not in err and not err.startswith("\n"), err
    assert any(line.startswith(f"wrote {out}/") for line in err.splitlines())


def test_eval_driver_strip_rows_line_up():
    """Each row used to be cropped to its own head box and enlarged by its own factor: rows of
    252 and 258 pixels, some ending short of the right edge."""
    from ava.driver.pictures import head_strip

    height, width, side = 40, 26, 16
    rows = []
    for top, bottom, left, right in [(5, 35, 4, 22), (10, 30, 8, 18), (2, 38, 2, 24)]:
        alpha = torch.zeros(1, height, width)
        alpha[:, top:bottom, left:right] = 1
        rows.append((torch.full((5, side, side), 100.0), [torch.full((3, height, width), 200.0)] * 3, alpha))
    picture = head_strip(rows)
    lit = picture.max(axis=2) > 0
    bands, start = [], None
    for index, any_lit in enumerate(list(lit.any(axis=1)) + [False]):
        if any_lit and start is None:
            start = index
        elif not any_lit and start is not None:
            bands.append((start, index))
            start = None
    assert len(bands) == 3 and len({end - begin for begin, end in bands}) == 1, bands
    assert bands[0][0] == 0 and bands[-1][1] == picture.shape[0]
    for begin, end in bands:
        assert lit[begin:end, -1].all()  # every row reaches the right edge
        assert np.array_equal(lit[begin:end], lit[bands[0][0]:bands[0][1]])  # and has the same panels
    # Titled: a band above the rows names each column, over the columns, and the rows are unchanged.
    titled = head_strip(rows, ["views", "truth", "driver", "mean"])
    band = titled[: titled.shape[0] - picture.shape[0]]
    assert band.shape[0] > 0 and np.array_equal(titled[band.shape[0]:], picture)
    written = band.max(axis=(0, 2)) > 0
    runs, start = [], None  # the panels of the first row, left to right: 5 views, 3 renders
    for index, on in enumerate(list(lit[bands[0][0]]) + [False]):
        if on and start is None:
            start = index
        elif not on and start is not None:
            runs.append((start, index))
            start = None
    assert len(runs) == 8
    columns = [(runs[0][0], runs[4][1])] + runs[5:]
    for begin, end in columns:  # each title is written over its own column, centred
        inside = np.nonzero(written[begin:end])[0]
        assert len(inside) and abs((inside[0] + inside[-1]) / 2 - (end - begin) / 2) <= 2
    with pytest.raises(ValueError, match="3 titles for 4 columns"):
        head_strip(rows, ["views", "truth", "driver"])


def test_the_viewer_shows_that_it_is_rendering_and_a_small_first_frame(tiny_checkpoints):
    """The page stayed empty until the first full-size frame arrived."""
    import viser

    from tests.viser_client import camera_message, decode_frame_messages
    from websockets.sync.client import connect

    from ava.view.config import ViewConfig
    from ava.view.server import FIRST_FRAME_SHRINK, MIN_HEIGHT, start_viewer, viser_pose

    viewer = start_viewer(ViewConfig(checkpoint=tiny_checkpoints[1], port=0, height=96, device="cpu"))
    try:
        home = viewer.avatar.home
        wxyz, position = viser_pose(home.camrot, home.campos)
        seen: list = []
        deadline = time.monotonic() + 120
        with connect(viewer.url.replace("http://", "ws://"), subprotocols=[f"viser-v{viser.__version__}"],
                     max_size=None, open_timeout=60) as socket:
            socket.send(camera_message(wxyz, position, home.fov, 300, 480, home.centre / 1000, home.up))
            while not any(kind == "frame" and value == 96 for kind, value in seen):
                for message in decode_frame_messages(socket.recv(timeout=max(0.1, deadline - time.monotonic()))):
                    if message.get("type") == "NotificationShowMessage":
                        seen.append(("shown", message["props"]["body"]))
                    elif message.get("type") == "RemoveNotificationMessage":
                        seen.append(("removed", None))
                    elif message.get("type") == "BackgroundImageMessage" and message.get("rgb_data"):
                        from PIL import Image

                        seen.append(("frame", Image.open(io.BytesIO(message["rgb_data"])).height))
    finally:
        viewer.stop()
    assert seen[0] == ("shown", "rendering the first frame...")
    assert seen[1] == ("frame", max(MIN_HEIGHT, 96 // FIRST_FRAME_SHRINK)) and seen[2] == ("removed", None), seen
    assert seen[-1] == ("frame", 96)


def test_what_the_readme_writes_is_ignored_by_git():
    """The README's commands write their default outputs (and the folders its examples name) into
    the folder they run in; in a clone they must not show up as untracked files."""
    from ava.driver.config import DriverProgressSection, EvalDriverConfig
    from ava.eval.config import EvalConfig
    from ava.render.config import RenderConfig
    from ava.show.config import ShowConfig
    from ava.train.config import ProgressSection

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a clone")
    readme = (REPO / "README.md").read_text()
    written = set()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            if not command.lstrip().startswith(("ava ", "python tools/", "torchrun ")):
                continue
            written |= set(re.findall(r"(?:-o|--progress\.output-path|--output-dir)\s+(\S+)", command))
    written = {path for path in written if not path.startswith(("/", "~", "OUT", "DIR"))}
    assert {"viz", "data/synth", "show", "eval", "run-driver", "driver-eval", "ava256.safetensors"} <= written
    defaults = [ProgressSection().output_path, RenderConfig.__dataclass_fields__["output"].default,
                EvalConfig.__dataclass_fields__["output"].default, ShowConfig.__dataclass_fields__["output"].default,
                DriverProgressSection().output_path, EvalDriverConfig.__dataclass_fields__["output"].default]
    for path in sorted(written | {str(path) for path in defaults}):
        inside = f"{path}/step_00000400.safetensors" if not path.endswith(".safetensors") else path
        check = subprocess.run(["git", "check-ignore", "-q", "--no-index", inside], cwd=REPO)
        assert check.returncode == 0, f"{path} is not ignored by .gitignore"


def test_the_background_width_is_a_model_size():
    """The background model's per-pixel layers were a third of the CPU demo's step at the
    original's 256 channels; `--model.background-width` sizes them, the converter reads the width
    from a state dict, and checkpoints written before the field existed keep 256."""
    import dataclasses

    from ava.nn.config import ModelConfig
    from ava.nn.original import infer_model_config
    from tests.test_nn_helpers import SMALL, small_model

    narrow = dataclasses.replace(SMALL, background_width=32)
    model, _, _ = small_model(config=narrow)
    convolutions = [layer for layer in model.bgmodel.mlp if isinstance(layer, torch.nn.Conv2d)]
    assert [layer.out_channels for layer in convolutions] == [32] * 5 + [3]
    assert infer_model_config(model.state_dict())[0] == narrow
    assert infer_model_config(small_model()[0].state_dict())[0].background_width == 256
    before = {key: value for key, value in SMALL.to_dict().items() if key != "background_width"}
    assert ModelConfig.from_dict(before).background_width == 256


def test_the_synthesis_progress_names_what_it_renders(tmp_path, monkeypatch, capsys):
    """It named the capture being rendered while counting the images of all of them, so a log
    kept 'rendering <the last capture> 176/176 images'."""
    from ava.synth import generate
    from ava.synth.config import SynthConfig

    monkeypatch.delenv("COLUMNS")
    generate(tmp_path / "synth", SynthConfig(n_ids=2, n_frames=2, n_cams=2, texture_size=32, downsample=256,
                                             prims_per_side=4, voxels=4, mesh_columns=16, mesh_rows=12,
                                             keypoints=False, headset=False, workers=1), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and re.match(r"rendered 2 captures ━+ 8/8 images", lines[0]), lines
