"""`ava eval` on a checkpoint trained for a few steps: the same numbers as training's held-out PSNR,
JSON/CSV/table/picture outputs, --compare, options and bad input; the SSIM and LPIPS helpers."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.test_train import run_cli


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_reproduces_training_held_out_psnr(tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints[1]
    out = tmp_path / "eval"
    # No --dataset-dir: the folder recorded in the checkpoint; --frames 0: every held-out frame but
    # each camera's first (its plate), exactly the frames training measured at step 4.
    assert run_cli(["eval", str(checkpoint), "-o", str(out), "--frames", "0", "--background", "plate"]) == 0
    captured = capsys.readouterr()
    run = checkpoint.parent.parent
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_step_4 = next(record for record in logged if record.get("kind") == "eval" and record["step"] == 4)
    document = json.loads((out / "metrics.json").read_text())
    assert document["held_out_cameras"] is True
    assert document["cameras"] == json.loads((run / "config.json").read_text())["resolved"]["holdout_cameras"]
    assert list(document["checkpoints"]["A"]["groups"]) == ["trained"]  # no held-out subjects in that run
    overall = document["checkpoints"]["A"]["groups"]["trained"]["model"]
    cameras = len(document["cameras"])  # every capture of the synthetic set has every held-out camera
    assert overall["views"] == at_step_4["holdout_samples"] == 2 * cameras * 3  # identities x cameras x frames
    assert overall["psnr"] == pytest.approx(at_step_4["psnr_holdout"], rel=1e-9)
    assert overall["psnr_head"] == pytest.approx(at_step_4["psnr_holdout_head"], rel=1e-9)
    assert overall["psnr_model_bg"] == pytest.approx(at_step_4["psnr_holdout_model_bg"], rel=1e-9)
    assert 0 < overall["ssim"] <= 1 and 0 < overall["ssim_head"] <= 1 and overall["lpips"] is None
    assert document["lpips"]["measured"] is False and document["lpips"]["reason"]
    identities = document["checkpoints"]["A"]["identities"]
    assert len(identities) == 2 and all(entry["methods"]["model"]["views"] == 3 * cameras and entry["group"] == "trained"
                                        and list(entry["methods"]) == ["model"] for entry in identities.values())

    summary = _rows(out / "metrics.csv")
    per_identity = [(False, False)] * cameras + [(False, True)]  # its cameras, then all of them
    assert [(row["identity"] == "all", row["camera"] == "all") for row in summary] == (
        per_identity * 2 + [(True, True)])
    assert {(row["group"], row["method"]) for row in summary} == {("trained", "model")}
    assert float(summary[-1]["psnr"]) == pytest.approx(overall["psnr"], rel=1e-5)
    samples = _rows(out / "samples.csv")
    assert len(samples) == overall["views"] and {row["camera"] for row in samples} == set(document["cameras"])
    assert all(row["lpips"] == "" for row in samples)
    assert (out / "examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table on stdout (notes on stderr): every identity by subject id, and the overall row.
    for identity in identities:
        assert identity.split("--")[-1] in captured.out
    assert "all" in captured.out and "LPIPS skipped" in captured.err


def test_eval_compare_segment_and_cameras(tiny_checkpoints, tmp_path, capsys):
    first, second = tiny_checkpoints[1], tiny_checkpoints[0]
    out = tmp_path / "eval"
    held_out = json.loads((first.parent.parent / "config.json").read_text())["resolved"]["holdout_cameras"]
    assert run_cli(["eval", str(first), "-o", str(out), "--compare", str(second), "--cameras", held_out[0],
                    "--segment", "EXP_jaw_open", "--frames", "1"]) == 0
    captured = capsys.readouterr()
    document = json.loads((out / "metrics.json").read_text())
    assert set(document["checkpoints"]) == {"A", "B"} and document["segment"] == "EXP_jaw_open"
    assert document["checkpoints"]["B"]["step"] == 2 and document["held_out_cameras"] is False
    samples = _rows(out / "samples.csv")
    assert {row["segment"] for row in samples} == {"EXP_jaw_open"} and {row["camera"] for row in samples} == {
        held_out[0]}
    by_checkpoint = {label: [row for row in samples if row["checkpoint"] == label] for label in ("A", "B")}
    assert [row["frame"] for row in by_checkpoint["A"]] == [row["frame"] for row in by_checkpoint["B"]]
    assert by_checkpoint["A"][0]["psnr"] != by_checkpoint["B"][0]["psnr"]  # two models, one image
    assert "B-A" in captured.out


def test_eval_bad_input(tiny_checkpoints, tmp_path, capsys):
    checkpoint = str(tiny_checkpoints[1])
    out = str(tmp_path / "eval")
    assert run_cli(["eval", checkpoint, "-o", out, "--cameras", "123456"]) == 2
    assert "not among" in capsys.readouterr().err
    assert run_cli(["eval", checkpoint, "-o", out, "--cameras", "held-out", "123456"]) == 2
    assert "either held-out or camera ids" in capsys.readouterr().err
    assert run_cli(["eval", checkpoint, "-o", out, "--segment", "EXP_nothing"]) == 2
    assert "segment EXP_nothing has no frames" in capsys.readouterr().err
    assert run_cli(["eval", checkpoint, "-o", out, "--identities", "XYZ999"]) == 2
    assert "identity XYZ999 is not one" in capsys.readouterr().err
    assert run_cli(["eval", checkpoint, "-o", out, "--compare", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(["eval", checkpoint, "-o", out, "--frames", "-1"]) == 2
    assert "--frames cannot be negative" in capsys.readouterr().err


def test_ssim_whole_image_and_inside_a_mask():
    from ava.runtime.metrics import structural_similarity

    generator = torch.Generator().manual_seed(0)
    target = torch.rand(3, 24, 16, generator=generator) * 255
    assert structural_similarity(target, target) == (pytest.approx(1.0), None)
    noisy = target.clone()
    noisy[:, :12] += torch.randn(3, 12, 16, generator=generator) * 40  # only the top half is damaged
    mask = torch.zeros(24, 16, dtype=torch.bool)
    mask[18:] = True  # a region the noise (and the 11-pixel window around it) does not reach
    whole, inside = structural_similarity(noisy.clamp(0, 255), target, mask)
    assert whole < 0.97 and inside == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 11x11"):
        structural_similarity(target[:, :8], target[:, :8])


def test_lpips_is_skipped_without_local_weights(tmp_path, monkeypatch):
    from ava.runtime.metrics import Lpips, lpips_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: nothing on disk
    path, reason = lpips_weights_file()
    assert path is None
    assert "torchvision" in reason or ("never downloads" in reason and str(tmp_path) in reason)
    assert Lpips.load(torch.device("cpu")) == (None, reason)
    assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.pth"))
