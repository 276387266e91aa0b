"""The release's files beyond the original's code, end to end without the real release: a local server
holds an `ava synth` set (with its foreground masks and background images) and stand-ins of the
expression codes, headset encodings and released decoder in their documented formats; they are
downloaded, read safely, converted and evaluated."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from download_server import DownloadServer  # noqa: E402
from release_standins import dome_codes, release_tree  # noqa: E402

from ava.checkpoint import load_checkpoint  # noqa: E402
from ava.data.extras import read_expression_codes, read_headset_encodings  # noqa: E402
from tests.test_train import run_cli  # noqa: E402

from ava.data.release import ASSET_GROUPS  # noqa: E402

DOWNSAMPLE = "128"
GROUPS = [group for group in ASSET_GROUPS if group != "segmentation_parts"]  # ava synth writes no segmentation  # the tiny set's; a converted checkpoint records none (ava's default is 8)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture(scope="module")
def downloaded(tiny_capture_set, tiny_checkpoints, tmp_path_factory):
    """(the release folder as `ava download` wrote it, the trained checkpoint, the served tree, ids CSV)."""
    from ava.cli import main as ava_main

    trained = load_checkpoint(tiny_checkpoints[1])
    folders = list(trained.identities)
    tree = release_tree(tiny_capture_set, folders, trained, int(DOWNSAMPLE))
    root = tmp_path_factory.mktemp("release")
    ids_csv = root / "ids.csv"
    shutil.copyfile(tiny_capture_set / "ids.csv", ids_csv)
    out = root / "ava-256"
    with pytest.MonkeyPatch.context() as patch, DownloadServer(tree) as server:
        patch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        with pytest.raises(SystemExit) as exit_info:
            ava_main(["download", "-o", str(out), "--captures-file", str(ids_csv), "-n", "2", "--base-url",
                      server.base_url, "--assets", *GROUPS, "--retry-base-delay", "0"])
        assert exit_info.value.code == 0
    return out, trained, tree, ids_csv


def test_every_served_file_is_downloaded_in_place(downloaded):
    out, _, tree, _ = downloaded
    for url_path, body in tree.items():
        assert out.joinpath(*url_path.split("/")[2:]).read_bytes() == body, url_path
    assert (out / "checkpoints" / "decoder" / "aeparams_1440000.pt").is_file()


def test_codes_and_encodings_read_back(downloaded, tiny_capture_set):
    out, trained, _, _ = downloaded
    folder = trained.identities[0]
    codes = read_expression_codes(out / folder / "decoder" / "expression_codes" / "aeparams_1440000.pkl")
    expected = dome_codes(trained, tiny_capture_set, folder, int(DOWNSAMPLE))
    assert sorted(int(frame) for frame in codes.frames) == sorted(expected)
    for frame, code in expected.items():
        assert torch.equal(codes.grid(str(frame)), code)
    encodings = read_headset_encodings(out / folder / "encoder" / "encodings_gt.pt",
                                       out / folder / "encoder" / "encodings_framelist.csv")
    truth = json.loads((tiny_capture_set / folder / "encoder_truth.json").read_text())
    assert len(encodings) == len(truth["frames"]) and set(encodings.segments) <= {row["segment"] for row in truth["frames"]}
    # The stand-in encodings are the headset frames' true codes (ava.driver.truth).
    from ava.data.headset_capture import read_encoder_truth
    from ava.driver.data import load_subject
    from ava.driver.truth import headset_true_codes
    from ava.synth.headset_sessions import TruthGeometry

    model = trained.build_autoencoder(raymarch_backend="torch").eval()
    subject = load_subject(tiny_capture_set, folder, trained, model, int(DOWNSAMPLE), 16, torch.device("cpu"))
    true = headset_true_codes(subject, read_encoder_truth(tiny_capture_set / folder), TruthGeometry(tiny_capture_set),
                              model, torch.device("cpu"))
    index = {frame: position for position, (_, frame) in enumerate(subject.headset.frames)}
    for frame in encodings.frames[:5]:
        assert torch.equal(encodings.grid(frame), true[index[str(int(frame))]])


@pytest.fixture(scope="module")
def converted_path(downloaded, tiny_capture_set, tmp_path_factory) -> Path:
    """The downloaded stand-in of the released decoder, converted (the README's command)."""
    out, _, _, ids_csv = downloaded
    path = tmp_path_factory.mktemp("converted") / "release.safetensors"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        assert run_cli(["convert", str(out / "checkpoints" / "decoder" / "aeparams_1440000.pt"), "-o", str(path),
                        "--dataset-dir", str(out), "--ids-csv", str(ids_csv),
                        "--topology", str(tiny_capture_set / "face_topology.obj")]) == 0
    return path


def test_the_released_decoder_converts_to_the_model_it_was_made_from(downloaded, converted_path, tmp_path):
    out, trained, _, _ = downloaded
    converted = load_checkpoint(converted_path)
    assert converted.step == 1440000 and converted.identities == trained.identities
    assert converted.cameras == trained.cameras
    assert converted.stats.texstd == pytest.approx(trained.stats.texstd) and np.allclose(
        converted.stats.vertmean, trained.stats.vertmean)
    for key, value in trained.model_state.items():
        assert torch.equal(converted.model_state[key], value), key

    # ava eval on the downloaded captures: composited over the recorded backgrounds, PSNR inside the masks.
    evaluation = tmp_path / "eval"
    camera = trained.cameras[0]
    assert run_cli(["eval", str(converted_path), "--dataset-dir", str(out), "--cameras", camera, "--frames", "2",
                    "--downsample", DOWNSAMPLE, "-o", str(evaluation)]) == 0
    document = json.loads((evaluation / "metrics.json").read_text())
    assert document["backgrounds"]["real"] == 2 and document["backgrounds"]["plate"] == 0
    assert document["checkpoints"]["A"]["groups"]["trained"]["model"]["psnr_mask"] > 0


def test_a_decoder_of_256_identities_converts_renders_evaluates_and_views(downloaded, tiny_capture_set, tmp_path):
    """The released decoder was trained on all 256 captures: converting it needs only each capture's
    calibration and statistics files (`--assets camera_calibration statistics`), and the commands then
    work on the captures whose frames are there."""
    from release_standins import camera_orders, original_state

    from ava.data.ids import CaptureId, format_ids_csv, read_ids_csv
    from ava.data.layout import CaptureLayout

    out, trained, _, ids_csv = downloaded
    dataset = tmp_path / "ava-256"
    shutil.copytree(out, dataset)
    captures = read_ids_csv(ids_csv)
    # 254 more captures with only what convert reads: copies of the two real ones' calibration and
    # statistics, alternately, so the 256-capture statistics equal the two captures' own.
    for number in range(254):
        capture = CaptureId("20240101", f"{number:04d}", f"ZZ{chr(65 + number % 26)}{number:03d}")
        source, target = CaptureLayout(out / captures[number % 2].folder), CaptureLayout(dataset / capture.folder)
        for name in ("calibration", "texture_mean", "texture_variance", "vertices_mean", "vertices_variance"):
            getattr(target, name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(getattr(source, name), getattr(target, name))
        captures.append(capture)
    (dataset / "256_ids.csv").write_text(format_ids_csv(captures))
    state_path = dataset / "checkpoints" / "decoder" / "aeparams_1440000.pt"
    torch.save(original_state(trained, camera_orders(dataset, [c.folder for c in captures]), 256), state_path)

    converted_path = tmp_path / "ava256-release.safetensors"
    assert run_cli(["convert", str(state_path), "-o", str(converted_path), "--dataset-dir", str(dataset),
                    "--topology", str(tiny_capture_set / "face_topology.obj")]) == 0
    converted = load_checkpoint(converted_path)
    assert len(converted.identities) == 256 and converted.identities[:2] == trained.identities
    assert converted.stats.texstd == pytest.approx(trained.stats.texstd, rel=1e-5)
    assert torch.equal(converted.model_state["colorcal.wident"][:2], trained.model_state["colorcal.wident"])

    first, second = (folder.split("--")[-1] for folder in trained.identities)
    assert run_cli(["render", "--checkpoint", str(converted_path), "--dataset-dir", str(dataset), "--driver", first,
                    "--driven", second, "--max-frames", "1", "--downsample", DOWNSAMPLE, "-o", str(tmp_path / "viz")]) == 0
    assert list((tmp_path / "viz").glob("*.mp4"))
    assert run_cli(["eval", str(converted_path), "--dataset-dir", str(dataset), "--identities", first, second,
                    "--cameras", trained.cameras[0], "--frames", "1", "--downsample", DOWNSAMPLE,
                    "-o", str(tmp_path / "eval")]) == 0

    from ava.view.avatar import Avatar, ViewCamera

    avatar = Avatar(converted, dataset, int(DOWNSAMPLE), torch.device("cpu"))
    assert avatar.identities == list(trained.identities)  # the stats-only captures are not offered
    home = avatar.home
    camera = ViewCamera.centred(home.camrot, home.campos, home.fov, 12, 16)
    frame = avatar.render(camera, trained.identities[1], avatar.expression(trained.identities[0],
                                                                            avatar.neutral_frame(trained.identities[0])))
    assert frame.shape == (16, 12, 3) and frame.std() > 0


DRIVER = ["--encoder.image-size", "16", "--encoder.channels", "8", "16", "--encoder.hidden", "32", "--train.batchsize",
          "8", "--train.num-holdout-subjects", "1", "--train.maxiter", "4", "--train.decay-steps", "4",
          "--train.align-every", "2", "--progress.eval-freq", "2", "--progress.image-freq", "4",
          "--progress.checkpoint-freq", "4", "--progress.picture-rows", "2", "--device", "cpu",
          "--train.downsample", DOWNSAMPLE]


@pytest.fixture(scope="module")
def supervised_driver(downloaded, converted_path, tmp_path_factory) -> Path:
    """A driver trained on the downloaded release (no synthetic truth there) against its encodings."""
    out = downloaded[0]
    run = tmp_path_factory.mktemp("driver") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        assert run_cli(["train-driver", "--checkpoint", str(converted_path), "--train.dataset-dir", str(out),
                        "--progress.output-path", str(run), "--train.targets", "encodings", *DRIVER]) == 0
    return run


def test_train_driver_regresses_the_encodings_without_alignment(supervised_driver, downloaded):
    out = downloaded[0]
    assert not list(out.glob("*/encoder_truth.json")) and not list(out.glob("*/synth_truth.json"))  # only the release
    resolved = json.loads((supervised_driver / "config.json").read_text())["resolved"]
    training = resolved["train_subjects"][0]
    encodings = read_headset_encodings(out / training / "encoder" / "encodings_gt.pt",
                                       out / training / "encoder" / "encodings_framelist.csv")
    assert resolved["targets"]["targets"] == "encodings"
    assert resolved["targets"]["train"]["frames"] == resolved["train_frames"] == len(encodings)
    records = [json.loads(line) for line in (supervised_driver / "metrics.jsonl").read_text().splitlines()]
    aligned = [record for record in records if record.get("kind") == "align"]
    assert records and not aligned  # each frame keeps its encoding: fixed pairs are never re-aligned
    assert list((supervised_driver / "driven").glob("*.png"))


def test_train_driver_on_the_releases_expression_codes(downloaded, converted_path, tmp_path, capsys):
    out = downloaded[0]
    assert run_cli(["train-driver", "--checkpoint", str(converted_path), "--train.dataset-dir", str(out),
                    "--progress.output-path", str(tmp_path / "run"), "--train.targets", "expression-codes",
                    *DRIVER]) == 0
    # The stand-in's codes are this decoder's: they differ from its encoder's by nothing.
    assert "differ from this decoder's encoder by 0.0% of the codes' variance" in " ".join(capsys.readouterr().err.split())


def test_eval_driver_on_real_headset_frames_agrees_with_the_synthetic_truth(supervised_driver, downloaded, converted_path,
                                                                            tiny_capture_set, tmp_path):
    out = downloaded[0]
    driver = sorted((supervised_driver / "checkpoints").glob("step_*.safetensors"))[-1]
    real, synthetic = tmp_path / "real", tmp_path / "synthetic"
    assert run_cli(["eval-driver", "--driver-checkpoint", str(driver), "--checkpoint", str(converted_path),
                    "--dataset-dir", str(out), "-o", str(real), "--strip-frames", "1", "--downsample", DOWNSAMPLE]) == 0
    assert run_cli(["eval-driver", "--driver-checkpoint", str(driver), "--checkpoint", str(converted_path),
                    "--dataset-dir", str(tiny_capture_set), "-o", str(synthetic), "--truth", "synthetic",
                    "--strip-frames", "0", "--downsample", DOWNSAMPLE]) == 0
    first, second = (json.loads((folder / "eval.json").read_text()) for folder in (real, synthetic))
    assert set(first["truth"].values()) == {"encodings"} and set(second["truth"].values()) == {"synthetic"}
    mine, theirs = first["rows"][-1], second["rows"][-1]
    # The stand-in encodings are the headset frames' true codes, which the synthetic truth rebuilds:
    # same frames, same code errors; the renders differ (a subset of frames against all of them).
    assert mine["frames"] == theirs["frames"] > 0
    assert mine["code_mse_driver"] == pytest.approx(theirs["code_mse_driver"], rel=1e-5)
    assert mine["code_mse_mean"] == pytest.approx(theirs["code_mse_mean"], rel=1e-5)
    assert mine["aligned_within_1"] is None and np.isfinite(mine["psnr_driver"])
    assert "| - |" in (real / "eval.md").read_text() and list(real.glob("*.png"))
