"""The headset driver end to end on a tiny synthetic set (CPU): `ava train-driver` (run folder,
exact resume, no use of the ground truth), `ava eval-driver` (its metrics checked with a perfect
driver), `ava render --driver-checkpoint`, the headset encoder, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import TINY_MODEL, read_metrics, run_cli

SUBJECTS = 3
DRIVER = ["--encoder.image-size", "16", "--encoder.channels", "8", "16", "--encoder.hidden", "32",
          "--train.batchsize", "8", "--train.num-holdout-subjects", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from ava.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth-driver")
    generate(root, SynthConfig(n_ids=SUBJECTS, n_frames=8, n_cams=2, texture_size=64, downsample=128, prims_per_side=8,
                               voxels=4, mesh_columns=16, mesh_rows=12, keypoints=False, workers=1, headset_size=16),
             progress=False)
    return root


@pytest.fixture(scope="module")
def without_truth(dataset, tmp_path_factory) -> Path:
    """The same captures with the ground truth files removed: what a real release looks like."""
    root = tmp_path_factory.mktemp("no-truth") / "data"
    shutil.copytree(dataset, root)
    removed = list(root.glob("*/encoder_truth.json")) + list(root.glob("*/synth_truth.json"))
    assert len(removed) == 2 * SUBJECTS
    for path in removed:
        path.unlink()
    return root


@pytest.fixture(scope="module")
def decoder(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("decoder") / "run"
    assert run_cli(["train", "--train.dataset-dir", str(dataset), "--train.maxiter", "2", "--train.nids", str(SUBJECTS),
                    "--progress.output-path", str(run), "--train.batchsize", "2", "--train.downsample", "128",
                    "--train.num-workers", "0", "--train.warmup-iters", "1", "--progress.checkpoint-freq", "1",
                    "--progress.psnr-freq", "100", "--progress.image-freq", "100", "--device", "cpu",
                    "--progress.keep-checkpoints", "0", *TINY_MODEL]) == 0
    return run / "checkpoints" / "step_00000002.safetensors"


def driver_argv(decoder: Path, data: Path, run: Path, maxiter: int, *extra: str) -> list[str]:
    return ["train-driver", "--checkpoint", str(decoder), "--train.dataset-dir", str(data), "--train.maxiter",
            str(maxiter), "--train.decay-steps", "4", "--train.align-every", "2", "--progress.output-path", str(run), "--progress.eval-freq", "2",
            "--progress.image-freq", "4", "--progress.checkpoint-freq", "2", "--progress.picture-rows", "2",
            *DRIVER, *extra]


@pytest.fixture(scope="module")
def driver_run(decoder, without_truth, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("driver") / "run"
    assert run_cli(driver_argv(decoder, without_truth, run, 4)) == 0
    return run


def test_train_driver_writes_checkpoints_metrics_and_pictures(driver_run, decoder):
    from PIL import Image

    from ava.checkpoint import decoder_fingerprint, load_checkpoint, load_driver_checkpoint

    names = sorted(path.name for path in (driver_run / "checkpoints").glob("step_*.safetensors"))
    assert names == ["step_00000002.safetensors", "step_00000004.safetensors"]
    assert (driver_run / "checkpoints" / "latest").read_text().strip() == names[-1]
    driver = load_driver_checkpoint(driver_run / "checkpoints" / names[-1])
    assert driver.step == 4 and driver.optimizer_state is not None
    assert driver.decoder["fingerprint"] == decoder_fingerprint(load_checkpoint(decoder))
    assert Path(driver.decoder["path"]) == decoder.resolve()
    resolved = driver.config["resolved"]
    assert len(resolved["train_subjects"]) == SUBJECTS - 1 and len(resolved["holdout_subjects"]) == 1
    assert not set(resolved["train_subjects"]) & set(resolved["holdout_subjects"])
    assert len(driver.extra_state["alignment"]) == resolved["train_frames"] > 0
    encoder = driver.build_encoder()
    assert encoder(torch.rand(2, 5, 16, 16) * 255).shape == (2, 16, 4, 4)
    records = read_metrics(driver_run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert [r["step"] for r in records if r.get("kind") == "align"] == [2, 4]
    evaluations = [r for r in records if r.get("kind") == "eval"]
    assert [r["step"] for r in evaluations] == [2, 4]
    for key in ("train_aligned_error", "train_stretch_error", "holdout_aligned_error", "holdout_code_variance"):
        assert all(r[key] >= 0 for r in evaluations), key
    # DTW minimises the very error it is compared with, so it can only do as well or better.
    assert all(r["train_aligned_error"] <= r["train_stretch_error"] + 1e-9 for r in evaluations)
    from ava.runtime.images import viewing_scale

    picture = np.asarray(Image.open(driver_run / "driven" / "step_00000004.png"))
    height, width = 32, 20  # the decoder's images: sensor / 128
    scale = viewing_scale(height)  # enlarged, as ava train's pictures
    assert picture.shape == (scale * (2 * height + 4), scale * (5 * height + 4 * 2 + 4 + width + 4 + width), 3)


CONDITIONED = ("--encoder.neutral", "--train.cross-fit-folds", "2", "--train.align-open-ends", "0.3")


@pytest.mark.parametrize("extra", [(), CONDITIONED], ids=["plain", "neutral+crossfit"])
def test_resume_continues_where_it_stopped(decoder, without_truth, driver_run, tmp_path, extra):
    from ava.checkpoint import load_driver_checkpoint

    if extra:
        straight_run = tmp_path / "straight"
        assert run_cli(driver_argv(decoder, without_truth, straight_run, 4, *extra)) == 0
    else:
        straight_run = driver_run
    run = tmp_path / "resumed"
    assert run_cli(driver_argv(decoder, without_truth, run, 2, *extra)) == 0
    assert run_cli(driver_argv(decoder, without_truth, run, 4, "--resume", "auto", *extra)) == 0
    straight = load_driver_checkpoint(straight_run / "checkpoints" / "step_00000004.safetensors")
    resumed = load_driver_checkpoint(run / "checkpoints" / "step_00000004.safetensors")
    for key, value in straight.encoder_state.items():
        torch.testing.assert_close(resumed.encoder_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    folds = [key for key in straight.extra_state if key.startswith("fold")]
    assert bool(folds) == bool(extra)  # the cross-fitting folds' weights are saved, and restored
    for key in folds:
        torch.testing.assert_close(resumed.extra_state[key], straight.extra_state[key], rtol=1e-5, atol=1e-6, msg=key)
    assert torch.equal(resumed.extra_state["alignment"], straight.extra_state["alignment"])
    losses = [[r["loss"] for r in read_metrics(folder) if "loss" in r] for folder in (straight_run, run)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    other = driver_argv(decoder, without_truth, run, 6, "--resume", "auto", *extra)
    other[other.index("--encoder.hidden") + 1] = "64"
    assert run_cli(other) == 2


def test_the_oracle_trains_on_true_codes_and_needs_the_truth(decoder, dataset, without_truth, tmp_path, capsys):
    from ava.checkpoint import load_driver_checkpoint

    run = tmp_path / "oracle"
    assert run_cli(driver_argv(decoder, without_truth, run, 1, "--train.targets", "truth")) == 2
    assert "only synthetic captures" in capsys.readouterr().err
    assert run_cli(driver_argv(decoder, dataset, run, 2, "--train.targets", "truth")) == 0
    driver = load_driver_checkpoint(run / "checkpoints" / "step_00000002.safetensors")
    targets = driver.extra_state["alignment"]
    # Every frame's own true code, appended after the dome codes, never re-aligned.
    assert torch.equal(targets, targets[0] + torch.arange(len(targets))) and int(targets[0]) > 0
    assert not [r for r in read_metrics(run) if r.get("kind") == "align"]
    assert run_cli(driver_argv(decoder, dataset, tmp_path / "bad", 1, "--train.targets", "truth",
                               "--train.cross-fit-folds", "2")) == 2
    assert "is for --train.targets aligned" in capsys.readouterr().err


def test_eval_driver_reports_every_segment_and_writes_strips(driver_run, decoder, dataset, tmp_path):
    out = tmp_path / "eval"
    checkpoint = driver_run / "checkpoints" / "step_00000004.safetensors"
    assert run_cli(["eval-driver", "--driver-checkpoint", str(checkpoint), "--dataset-dir", str(dataset), "-o", str(out),
                    "--device", "cpu", "--strip-frames", "3"]) == 0
    document = json.loads((out / "eval.json").read_text())
    held_out = json.loads((driver_run / "config.json").read_text())["resolved"]["holdout_subjects"]
    assert document["subjects"] == held_out and document["held_out"] is True
    rows = document["rows"]
    segments = [row["segment"] for row in rows if row["subject"] == held_out[0]]
    assert segments[0] == "EXP_neutral_peak" and segments[-1] == "all segments" and len(segments) >= 4
    headset_frames = len((dataset / held_out[0] / "encoder" / "frame_list.csv").read_text().splitlines()) - 1
    assert rows[-1]["frames"] == headset_frames == len(document["frames"][held_out[0]])
    for row in rows:
        assert row["psnr_gain"] == pytest.approx(row["psnr_driver"] - row["psnr_mean"])
        assert 0 <= row["aligned_within_1"] <= 1 and 0 <= row["stretch_within_1"] <= 1 and row["code_mse_mean"] >= 0
    record = document["frames"][held_out[0]][0]
    assert set(record["openness_truth"]) == {"mouth", "eyes"} and set(record["sources"]) == {"driver", "mean code"}
    assert (out / f"{held_out[0]}.png").is_file() and "| gain (dB) |" in (out / "eval.md").read_text()


def test_true_codes_rebuild_the_dome_codes_from_the_truth(decoder, dataset):
    """The true code of an expression is the decoder's code of the truth geometry and texture: for
    the dome frames' own expressions it is exactly the code of the stored dome frame."""
    from ava.data.headset_capture import read_encoder_truth
    from ava.driver.data import load_subject
    from ava.driver.setup import load_decoder
    from ava.driver.truth import true_codes
    from ava.synth.headset_sessions import TruthGeometry

    checkpoint, model = load_decoder(decoder, torch.device("cpu"))
    folder = checkpoint.identities[0]
    subject = load_subject(dataset, folder, checkpoint, model, 128, 16, torch.device("cpu"))
    truth = read_encoder_truth(dataset / folder)
    vectors = np.stack([truth.dome_expression[subject.dome.sample_ids(i)[0]] for i in range(len(subject.dome))])
    codes = true_codes(subject, vectors, truth.controls, TruthGeometry(dataset), model, torch.device("cpu"))
    torch.testing.assert_close(codes, subject.codes, rtol=0, atol=1e-6)
    assert float((subject.codes - subject.codes.mean(0)).abs().max()) > 1e-3  # the frames' codes differ


def test_a_perfect_driver_scores_perfectly(driver_run, decoder, dataset):
    """The evaluation's plumbing (truth, true codes, renders, openness) checked with an oracle that
    outputs each headset frame's true code: zero code and image error, the true code's openness."""
    from ava.checkpoint import load_driver_checkpoint
    from ava.data.headset_capture import read_encoder_truth
    from ava.driver.data import load_subject
    from ava.driver.evaluate import evaluate_subject
    from ava.driver.setup import load_decoder
    from ava.driver.truth import headset_true_codes
    from ava.synth.headset_sessions import TruthGeometry

    driver = load_driver_checkpoint(driver_run / "checkpoints" / "step_00000004.safetensors")
    encoder = driver.build_encoder().eval()
    folder = driver.config["resolved"]["holdout_subjects"][0]
    checkpoint, model = load_decoder(decoder, torch.device("cpu"))
    subject = load_subject(dataset, folder, checkpoint, model, 128, 16, torch.device("cpu"))
    truth, geometry = read_encoder_truth(dataset / folder), TruthGeometry(dataset)
    true = headset_true_codes(subject, truth, geometry, model, torch.device("cpu"))
    sources = {"driver": true.clone(), "mean code": encoder.code_mean.expand(len(true), -1, -1, -1).clone()}
    result = evaluate_subject(subject, truth, geometry, sources, model, torch.device("cpu"), encoder.code_scale)
    assert result.tallies["driver"]
    for segment, tally in result.tallies["driver"].items():
        assert tally.code == 0 and tally.image == 0 and tally.pixels > 0, segment
        assert result.tallies["mean code"][segment].code >= 0
    assert sum(t.image for t in result.tallies["mean code"].values()) > 0
    for record in result.frames:
        assert record["sources"]["driver"]["openness"] == pytest.approx(record["openness_true_code"], abs=1e-9)


def test_render_driven_by_headset_frames(driver_run, decoder, dataset, tmp_path):
    from PIL import Image

    from ava.runtime.video import read_video_frames

    checkpoint = driver_run / "checkpoints" / "step_00000004.safetensors"
    resolved = json.loads((driver_run / "config.json").read_text())["resolved"]
    headset, other = resolved["holdout_subjects"][0], resolved["train_subjects"][0]
    out = tmp_path / "viz"
    assert run_cli(["render", "--checkpoint", str(decoder), "--driver-checkpoint", str(checkpoint), "--headset",
                    headset.split("--")[-1], "--driven", other, "--segment", "EXP_jaw_open", "-o", str(out),
                    "--dataset-dir", str(dataset), "--device", "cpu", "--fps", "5"]) == 0
    name = f"{headset}_headset_{other}+EXP_jaw_open"
    rows = (dataset / headset / "encoder" / "frame_list.csv").read_text().splitlines()
    jaw_frames = sum(row.startswith("EXP_jaw_open,") for row in rows)
    strips = sorted((out / name).glob("img_*.png"))
    assert len(strips) == jaw_frames > 0
    strip = np.asarray(Image.open(strips[0]))
    assert strip.shape == (32, 5 * 32 + 4 * 2 + 4 + 20, 3)  # [5 headset views | driven render]
    assert len(read_video_frames(out / f"{name}.mp4")) == jaw_frames


def test_bad_input_gets_one_line_and_status_2(driver_run, decoder, dataset, without_truth, tmp_path, capsys):
    checkpoint = driver_run / "checkpoints" / "step_00000004.safetensors"
    argv = driver_argv(decoder, without_truth, tmp_path / "run", 1)
    assert run_cli(argv[:1] + argv[3:]) == 2  # no --checkpoint
    assert "pass the trained decoder" in capsys.readouterr().err
    no_headset = tmp_path / "no-headset"
    shutil.copytree(without_truth, no_headset)
    for folder in no_headset.glob("*/encoder"):
        shutil.rmtree(folder)
    assert run_cli(driver_argv(decoder, no_headset, tmp_path / "run", 1)) == 2
    assert "has both a dome (decoder/) and a headset (encoder/) session" in capsys.readouterr().err
    # A driver only drives the decoder it was trained against.
    older = decoder.with_name("step_00000001.safetensors")
    render = ["render", "--checkpoint", str(older), "--driver-checkpoint", str(checkpoint), "-o", str(tmp_path / "viz"),
              "--device", "cpu"]
    assert run_cli(render + ["--dataset-dir", str(dataset)]) == 2
    assert "whose weights differ" in capsys.readouterr().err
    render[2] = str(decoder)
    assert run_cli(render + ["--dataset-dir", str(dataset), "--headset", "XYZ999"]) == 2
    assert "no subject XYZ999 with headset data" in capsys.readouterr().err
    assert run_cli(render[:3] + ["--headset", "XYZ999", "-o", str(tmp_path / "viz")]) == 2
    assert "--headset needs --driver-checkpoint" in capsys.readouterr().err
    assert run_cli(["render", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "viz")]) == 2
    assert "is a headset driver checkpoint" in capsys.readouterr().err
    # The headset subject's encoder group is incomplete.
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    holdout = json.loads((driver_run / "config.json").read_text())["resolved"]["holdout_subjects"][0]
    (broken / holdout / "encoder" / "image" / "cam-cyclop.zip").unlink()
    assert run_cli(render + ["--dataset-dir", str(broken)]) == 2
    assert "ava download --assets encoder" in capsys.readouterr().err
    # Evaluation needs the synthetic ground truth.
    assert run_cli(["eval-driver", "--driver-checkpoint", str(checkpoint), "--dataset-dir", str(without_truth),
                    "-o", str(tmp_path / "eval"), "--device", "cpu"]) == 2
    assert "only synthetic captures" in capsys.readouterr().err


def test_what_train_driver_leaves_out_or_stands_in_is_said(decoder, without_truth, tmp_path, capsys):
    """A capture without a headset session and a session without a neutral segment are named in one
    line each; a wrong folder names the flag as typed; too many folds are refused before any loading."""
    assert run_cli(driver_argv(decoder, tmp_path / "nowhere", tmp_path / "a", 1)) == 2
    assert "--train.dataset-dir " in capsys.readouterr().err
    assert run_cli(driver_argv(decoder, without_truth, tmp_path / "b", 1, "--train.cross-fit-folds", "9")) == 2
    err = capsys.readouterr()
    assert f"needs at least 9 training subjects; there are {SUBJECTS - 1}: pass at most" in err.err
    assert "subjects:" not in err.out + err.err
    data = tmp_path / "data"
    shutil.copytree(without_truth, data)
    folders = sorted(path.parent.name for path in data.glob("*/encoder"))
    shutil.rmtree(data / folders[0] / "encoder")
    for frame_list in data.glob("*/encoder/frame_list.csv"):
        frame_list.write_text(frame_list.read_text().replace("EXP_neutral", "EXP_calm"))
    assert run_cli(driver_argv(decoder, data, tmp_path / "c", 1, "--encoder.neutral")) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert f"left out 1 capture(s) without a headset session (no encoder/ folder): {folders[0]}" in out
    assert "--encoder.neutral: no neutral headset segment" in out and folders[1] in out
    assert "headset frames of segments the dome session lacks: EXP_calm_peak (" in out


def test_decoding_a_given_code_matches_encoding_the_frame(decoder, dataset):
    """run_model(code=encode_expression(batch)) renders what run_model(batch) renders."""
    from ava.driver.setup import load_decoder
    from ava.data.collate import collate
    from ava.runtime.datasets import checkpoint_capture
    from ava.runtime.model import encode_expression, run_model

    checkpoint, model = load_decoder(decoder, torch.device("cpu"))
    part = checkpoint_capture(dataset, checkpoint.identities[0], 128, checkpoint, identity=0)
    batch = collate([part[0], part[len(part) - 1]])
    with torch.no_grad():
        code = encode_expression(model, batch)
        direct = run_model(model, batch)
        given = run_model(model, batch, code=code)
        torch.testing.assert_close(given["irgbrec"], direct["irgbrec"])
        torch.testing.assert_close(direct["expr_mu"], code)
        other = run_model(model, batch, code=code.flip(0))["irgbrec"]
    assert not torch.allclose(other, direct["irgbrec"])  # the code is what changes the render


def test_a_conditioned_encoder_reads_the_neutral_frame():
    from ava.nn.config import HeadsetEncoderConfig
    from ava.nn.headset_encoder import HeadsetEncoder

    torch.manual_seed(0)
    encoder = HeadsetEncoder(HeadsetEncoderConfig(image_size=32, channels=(8, 16), hidden=32, neutral=True)).eval()
    views, neutral = torch.rand(3, 5, 32, 32) * 200, torch.rand(5, 32, 32) * 200
    code = encoder(views, neutral)
    assert code.shape == (3, 16, 4, 4)
    torch.testing.assert_close(encoder(views, neutral[None].expand(3, -1, -1, -1)), code)  # one for all
    assert not torch.allclose(encoder(views, torch.rand(5, 32, 32) * 200), code)  # the neutral matters
    torch.testing.assert_close(encoder(views[:1], neutral), code[:1])  # frames do not mix
    with pytest.raises(ValueError, match="conditioned on the subject's neutral"):
        encoder(views)
    with pytest.raises(ValueError, match="without neutral conditioning"):
        HeadsetEncoder(HeadsetEncoderConfig(image_size=32, channels=(8, 16), hidden=32))(views, neutral)


def test_headset_encoder_ignores_exposure_and_checks_shapes():
    from ava.nn.config import HeadsetEncoderConfig
    from ava.nn.headset_encoder import HeadsetEncoder

    torch.manual_seed(0)
    encoder = HeadsetEncoder(HeadsetEncoderConfig(image_size=16, channels=(8, 16), hidden=32)).eval()
    encoder.set_code_statistics(torch.full((16, 4, 4), 0.5), torch.full((16, 4, 4), 2.0))
    views = torch.rand(3, 5, 16, 16) * 200
    code = encoder(views)
    assert code.shape == (3, 16, 4, 4)
    # Each view is normalised on its own: a brighter exposure of one view changes nothing (up to
    # the small floor on its spread).
    brighter = views.clone()
    brighter[:, 2] = brighter[:, 2] * 1.2 + 10
    torch.testing.assert_close(encoder(brighter), code, atol=0.05, rtol=0)
    torch.testing.assert_close(encoder.standardise(code) * 2.0 + 0.5, code)
    with pytest.raises(ValueError, match=r"\[N,5,16,16\]"):
        encoder(torch.rand(3, 4, 16, 16))


def test_decoder_fingerprint_follows_the_weights(decoder, tmp_path):
    from ava.checkpoint import decoder_fingerprint, load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(decoder)
    copy = save_checkpoint(tmp_path / "copy.safetensors", model_state=checkpoint.model_state, stats=checkpoint.stats,
                           topology=checkpoint.topology, identities=checkpoint.identities, cameras=checkpoint.cameras,
                           config=checkpoint.config, step=99)
    assert decoder_fingerprint(load_checkpoint(copy)) == decoder_fingerprint(checkpoint)
    changed = dict(checkpoint.model_state)
    key = sorted(changed)[0]
    changed[key] = changed[key] + 1e-3
    checkpoint.model_state = changed
    assert decoder_fingerprint(checkpoint) != decoder_fingerprint(load_checkpoint(copy))


@pytest.mark.parametrize("command", ["train-driver", "eval-driver"])
def test_driver_commands_take_threads(command, monkeypatch, capsys):
    import re

    monkeypatch.setenv("COLUMNS", "100")  # one column of options
    assert run_cli([command, "--help"]) == 0
    assert re.search(r"--threads N\s+CPU threads for torch", capsys.readouterr().out)


def test_an_earlier_driver_run_needs_resume_or_overwrite(decoder, without_truth, driver_run, tmp_path, capsys):
    run = tmp_path / "again"
    shutil.copytree(driver_run, run)
    assert run_cli(driver_argv(decoder, without_truth, run, 2)) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    assert run_cli(driver_argv(decoder, without_truth, run, 2, "--progress.overwrite")) == 0
    assert sorted(path.name for path in (run / "checkpoints").glob("step_*")) == ["step_00000002.safetensors"]
    assert not (run / "driven" / "step_00000004.png").exists()


def test_the_protocol_tool_stops_and_continues(decoder, dataset, tmp_path):
    """tools/driver_protocol.py at its tiny size on this set and decoder: stopped by its budget, a
    rerun continues and writes the report (validation choice, test rows with seeds, curves)."""
    import subprocess
    import sys

    out = tmp_path / "protocol"
    command = [sys.executable, str(Path(__file__).parents[1] / "tools" / "driver_protocol.py"), str(out), "--size",
               "tiny", "--device", "cpu", "--data", str(dataset), "--decoder", str(decoder)]
    first = subprocess.run(command + ["--budget", "8"], capture_output=True, text=True)
    assert first.returncode in (0, 3), first.stderr[-2000:]
    if first.returncode == 3:
        assert "rerun the same command to continue" in first.stdout
        assert not (out / "summary.json").exists()
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) == {"mean code", "stretch", "driver", "oracle"}
    assert summary["seeds"] == 2 and len(summary["split"]["test"]) == 1
    choice = summary["choice"]
    assert choice["decisions"][0]["change"] == "re-alignment"  # validated first, against the stretch alone
    assert choice["chosen"].startswith("dtw" if choice["decisions"][0]["kept"] else "stretch")
    report = (out / "report.md").read_text()
    assert "| oracle: trained on the true codes |" in report
    # This decoder trained on every subject, the validation and test ones included: the report says so.
    assert summary["split"]["decoder_trained_on"] == sorted(summary["split"]["validation"] + summary["split"]["test"])
    assert "whose avatar the decoder learnt" in report
    assert (out / "curves.png").is_file() and (out / "difficulty.json").is_file()


def test_the_driver_tools_answer_bad_input_in_one_line(driver_run, without_truth, tmp_path):
    """tools/driver_difficulty.py and tools/driver_protocol.py report a user's mistake as the ava CLI
    does: one line, status 2, no traceback."""
    import subprocess
    import sys

    tools = Path(__file__).parents[1] / "tools"
    empty = tmp_path / "empty"
    empty.mkdir()
    driver = driver_run / "checkpoints" / "step_00000004.safetensors"
    for command, expected in [
        ([tools / "driver_difficulty.py", empty], "has both a dome (decoder/) and a headset (encoder/) session"),
        ([tools / "driver_difficulty.py", without_truth], "only synthetic captures"),
        ([tools / "driver_protocol.py", tmp_path / "p", "--size", "tiny", "--data", empty, "--device", "cpu"],
         "has both a dome (decoder/) and a headset (encoder/) session"),
        ([tools / "driver_protocol.py", tmp_path / "q", "--size", "tiny", "--data", without_truth, "--decoder", driver,
          "--device", "cpu"], "is a headset driver checkpoint"),
    ]:
        done = subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr[-2000:]
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


# --- faults (issue 24): Ctrl-C, SIGTERM, damaged checkpoints, logs that are never truncated -----

def test_ctrl_c_saves_a_checkpoint_and_the_resume_appends_to_the_log(decoder, without_truth, tmp_path, monkeypatch):
    """SIGINT to the process group (a terminal's Ctrl-C, DataLoader workers included) after a few
    steps: exit 130 with that step's checkpoint; --resume auto continues the same log."""
    import os
    import signal
    import subprocess

    from tests.test_first_hour import _wait_for_steps, ava_process

    run = tmp_path / "interrupted"
    argv = driver_argv(decoder, without_truth, run, 1000, "--progress.checkpoint-freq", "1000", "--progress.eval-freq",
                       "1000", "--progress.image-freq", "1000", "--train.align-every", "1000", "--train.num-workers",
                       "1", "--threads", "1")
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at 80 columns without a terminal
    process = ava_process(*argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_steps(process, run / "metrics.jsonl", 2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped by SIGINT" in stderr and "--resume auto" in stderr and "Traceback" not in stderr
    latest = (run / "checkpoints" / "latest").read_text().strip()
    stopped = int(latest[len("step_"):-len(".safetensors")])
    before = (run / "metrics.jsonl").read_text()
    assert [r["step"] for r in read_metrics(run)] == list(range(1, stopped + 1))
    argv[argv.index("--train.maxiter") + 1] = str(stopped + 2)
    assert run_cli(argv + ["--resume", "auto"]) == 0
    after = (run / "metrics.jsonl").read_text()
    assert after.startswith(before)  # appended, not rewritten
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, stopped + 3))


def test_sigterm_saves_and_a_damaged_checkpoint_is_skipped(decoder, without_truth, driver_run, tmp_path, capsys,
                                                            monkeypatch):
    """SIGTERM (a scheduler's) in the middle of step 3 of 4 is honoured after the step, in-process;
    then the newest checkpoint is damaged and --resume auto falls back to the one before."""
    import os
    import signal

    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at 80 columns without a terminal

    from ava import faults
    from ava.checkpoint import load_driver_checkpoint

    run = tmp_path / "terminated"

    def terminate_at_step_3(name, partial=None, step=None):
        if name == "after-step" and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    faults.set_handler(terminate_at_step_3)
    try:
        assert run_cli(driver_argv(decoder, without_truth, run, 4)) == 130
    finally:
        faults.set_handler(None)
    assert "stopped by SIGTERM at step 3" in capsys.readouterr().err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000003.safetensors"
    newest = run / "checkpoints" / "step_00000003.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])
    assert run_cli(driver_argv(decoder, without_truth, run, 4, "--resume", "auto")) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged" in err and "resuming from" in err and "step_00000002" in err
    straight = load_driver_checkpoint(driver_run / "checkpoints" / "step_00000004.safetensors")
    resumed = load_driver_checkpoint(run / "checkpoints" / "step_00000004.safetensors")
    for key, value in straight.encoder_state.items():
        torch.testing.assert_close(resumed.encoder_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_keeps_the_old_log(decoder, without_truth, driver_run, tmp_path, capsys):
    run = tmp_path / "no-checkpoint"
    shutil.copytree(driver_run, run)
    shutil.rmtree(run / "checkpoints")
    old = (run / "metrics.jsonl").read_text()
    assert run_cli(driver_argv(decoder, without_truth, run, 2, "--resume", "auto")) == 0
    assert "no checkpoint" in capsys.readouterr().err
    assert (run / "metrics.replaced.jsonl").read_text() == old  # the lines of the steps run again
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]


def test_a_crash_at_any_named_point_of_a_driver_run_loses_at_most_checkpoint_freq_steps(decoder, without_truth,
                                                                                      tmp_path):
    """The kill points of ava train's test (tests/test_faults.py), for a 4-step driver run with a
    checkpoint every 2 steps: at every named crash point, `latest` names a complete checkpoint and
    --resume auto loses at most 2 steps."""
    from ava import faults
    from ava.checkpoint import load_driver_checkpoint
    from ava.runtime.rundir import load_for_resume
    from tests.test_faults import Snapshots

    run = tmp_path / "run"
    snapshots = Snapshots(run, tmp_path / "snapshots")
    faults.set_handler(snapshots)
    try:
        assert run_cli(driver_argv(decoder, without_truth, run, 4)) == 0
    finally:
        faults.set_handler(None)
    points = [name for _, name, _ in snapshots.taken]
    assert points.count("after-step") == 4 and points.count("checkpoint-written") == 2 and "pruned" in points
    for snapshot, name, completed in snapshots.taken:
        latest = snapshot / "checkpoints" / "latest"
        if latest.exists():
            assert load_driver_checkpoint(snapshot / "checkpoints" / latest.read_text().strip()).step <= completed
        resumed = load_for_resume("auto", snapshot, load_driver_checkpoint, lambda *args, **kwargs: None)
        assert completed - (resumed.step if resumed is not None else 0) <= 2, (snapshot.name, completed)
