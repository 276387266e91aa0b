"""tools/compare_training.py on a CPU: argument checks, reading the original's log, and ava's side
(weight conversion, then `ava train ava256` for 2 steps) on a tiny real-topology set. The original's
side needs its CUDA extensions and a GPU; the lead runs the whole comparison there."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.test_synth_real import real_dataset  # noqa: F401  (module fixture: a tiny set on the real topology)

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def compare():
    sys.path.insert(0, str(TOOLS))
    try:
        spec = importlib.util.spec_from_file_location("compare_training", TOOLS / "compare_training.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(TOOLS))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def test_bad_input_fails_fast_with_one_line(compare, tmp_path, capsys):
    dataset = tmp_path / "set"
    dataset.mkdir()
    assert compare.main(["--dataset", str(dataset), "--original", str(tmp_path)]) == 2
    assert "has no ids.csv" in capsys.readouterr().err
    (dataset / "ids.csv").write_text("mcd,sid,mct\n20260101,AAA001,1200\n20260102,BBB002,1300\n")
    assert compare.main(["--dataset", str(dataset), "--steps", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert compare.main(["--dataset", str(dataset), "--only", "ava"]) == 2
    assert "needs --init-state" in capsys.readouterr().err
    assert compare.main(["--dataset", str(dataset), "--nids", "3"]) == 2
    assert "lists 2 captures" in capsys.readouterr().err
    assert compare.main(["--dataset", str(dataset), "--original", str(tmp_path / "nowhere")]) == 2
    assert "is not a checkout of facebookresearch/ava-256" in capsys.readouterr().err
    # A checkout whose CUDA extensions were never built is refused before any work starts.
    checkout = tmp_path / "ava-256"
    for name in ("ddp-train.py", "data/ava_dataset.py", "utils.py", "configs/config.yaml", "assets/face_topology.obj"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("")
    assert compare.main(["--dataset", str(dataset), "--original", str(checkout)]) == 2
    message = capsys.readouterr().err
    assert "lacks its compiled CUDA extensions" in message and "extensions/mvpraymarch/mvpraymarchlib*.so" in message


def test_the_original_log_is_read_step_by_step(compare):
    def line(iteration, loss):
        return (f"2026-11-29 10:00:00,000 host - root - INFO - Rank   0 Iteration {iteration} loss = {loss:.4f}, "
                f"irgbl1 = {loss - 1:.4f}, vertl1 = 0.5000, kldiv = 0.0100, primvolsum = 0.2000 time: 0.250 s\n")

    log = "".join([line(0, 30.0), "some other output\n", line(1, 20.0), line(2, 10.0), line(2, 11.0),
                   "Rank 0 Iteration 2 loss = 10.00000, irgbl1 = 9.00000\n"])
    curves = compare.parse_original_log(log)
    assert curves["step"] == [1, 2, 3] and curves["loss"] == [30.0, 20.0, 10.0]
    assert curves["irgbl1"] == [29.0, 19.0, 9.0] and curves["primvolsum"] == [0.2] * 3 and curves["step_time"] == [0.25] * 3


def test_ava_side_from_converted_weights(compare, real_dataset, tmp_path):  # noqa: F811
    """An original-format state dict (ava's modules carry the original's names and shapes) is
    converted and trained for 2 steps; the curves and the plot come out."""
    from ava.checkpoint import load_checkpoint
    from ava.data.dataset import MultiCaptureDataset
    from ava.data.ids import read_ids_csv
    from ava.nn.autoencoder import build_autoencoder
    from ava.nn.config import ModelConfig
    from ava.nn.original import CAMERA_COLUMNS, CAMERA_ROWS
    from ava.nn.uvmap import load_obj

    captures = read_ids_csv(real_dataset / "ids.csv")
    data = MultiCaptureDataset(real_dataset, captures, downsample=64)
    torch.manual_seed(0)
    model = build_autoencoder(ModelConfig(uv_size=64, prims_per_side=8, voxels_per_prim=8, warp_size=8),
                              load_obj(real_dataset / "face_topology.obj"), vertmean=torch.from_numpy(data.stats.vertmean),
                              vertstd=data.stats.vertstd, num_cameras=len(data.camera_ids), num_identities=len(captures))
    state_path = tmp_path / "aeparams_000000.pt"
    torch.save({f"module.{key}": value for key, value in model.state_dict().items()}, state_path)  # as DDP saves
    out = tmp_path / "compare"
    assert compare.main(["--dataset", str(real_dataset), "--only", "ava", "--init-state", str(state_path), "--out",
                         str(out), "--steps", "2", "--batchsize", "1", "--downsample", "128", "--num-workers", "0",
                         "--ava-args", "--device cpu --progress.psnr-samples 2"]) == 0
    report = json.loads((out / "losses.json").read_text())
    curves = report["sides"]["ava"]
    assert list(report["sides"]) == ["ava"] and curves["step"] == [1, 2]
    assert all(value > 0 for value in curves["loss"]) and all(value > 0 for value in curves["irgbl1"])
    assert (out / "losses.png").stat().st_size > 10_000
    converted = load_checkpoint(out / "init" / "init.safetensors")
    assert converted.config["model"]["uv_size"] == 64 and converted.step == 0
    for key, value in model.state_dict().items():
        if key not in CAMERA_ROWS + CAMERA_COLUMNS:
            torch.testing.assert_close(converted.model_state[key], value, rtol=0, atol=0, msg=key)
    run_config = json.loads((out / "ava" / "config.json").read_text())
    assert run_config["train"]["checkpoint"] == str((out / "init" / "init.safetensors").resolve())


# A stand-in for the original's ddp-train.py: as a module it offers what the init step calls, as a
# script it reads the generated config, loads the initial state and logs loss lines in the
# original's format, stopping as its loop does (at `maxiter` inside an epoch, over `num_epochs`
# epochs of len(dataset) // batchsize steps). It checks the plumbing, not the original.
_STAND_IN = '''
import argparse, csv, json, sys
from pathlib import Path
import torch

def train_csv_loader(base_dir, csv_path, nids):
    rows = list(csv.DictReader(open(csv_path)))[:nids]
    folders = [f"{r['mcd']}--{r['mct']}--{r['sid']}" for r in rows]
    return folders, [f"{base_dir}/{folder}/decoder" for folder in folders]

class AvaMultiCaptureDataset:
    def __init__(self, captures, directories, downsample):
        self.length = 0
        for directory in directories:
            frames = len(Path(directory, "frame_list.csv").read_text().splitlines()) - 1
            cameras = len(json.loads(Path(directory, "camera_calibration.json").read_text())["KRT"])
            self.length += frames * cameras

def get_autoencoder(dataset, assetpath):
    return torch.nn.Linear(3, 2)

if __name__ == "__main__":
    import yaml
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    config = yaml.load(open(parser.parse_args().config), Loader=yaml.UnsafeLoader)
    train = config["train"]
    torch.nn.Linear(3, 2).load_state_dict(torch.load(train["checkpoint"]))
    captures, directories = train_csv_loader(train["dataset_dir"], train["data_csv"], train["nids"])
    per_epoch = AvaMultiCaptureDataset(captures, directories, train["downsample"]).length // train["batchsize"]
    iteration = 0
    for epoch in range(train["num_epochs"]):
        for _ in range(per_epoch):
            loss = 100.0 / (iteration + 1)
            print(f"host - root - INFO - Rank   0 Iteration {iteration} loss = {loss:.4f}, irgbl1 = {loss / 2:.4f}, "
                  f"vertl1 = 1.0000, kldiv = 0.0100, primvolsum = 0.5000 time: 0.100 s", flush=True)
            if iteration >= train["maxiter"]:
                break
            iteration += 1
'''

_CONFIG = """train:
  dataset_dir: "/nowhere"
  data_csv: "256_ids.csv"
  nids: 256
  checkpoint: ""
  maxiter: 10_000_000
  num_epochs: 10
  init_learning_rate: 2.0e-4
  downsample: 8
  num_workers: 4
  batchsize: 4
progress:
  output_path: "run/"
  cross_id: True
  cross_id_n_subjects: 3
  tensorboard:
    log_freq: 10
    logdir: "log/"
"""


def test_original_side_plumbing_with_a_stand_in_checkout(compare, tmp_path, monkeypatch):
    pytest.importorskip("yaml")
    from ava.synth import SynthConfig, generate

    dataset = tmp_path / "set"
    generate(dataset, SynthConfig(n_ids=2, n_frames=2, n_cams=3, downsample=128, texture_size=32, prims_per_side=8,
                                  voxels=2, mesh_columns=16, mesh_rows=12, keypoints=False, workers=1), progress=False)
    checkout = tmp_path / "ava-256"
    files = {"ddp-train.py": _STAND_IN, "configs/config.yaml": _CONFIG, "data/ava_dataset.py": "", "utils.py": "",
             "assets/face_topology.obj": (dataset / "face_topology.obj").read_text(),
             "extensions/mvpraymarch/mvpraymarchlib.cpython-312-x86_64-linux-gnu.so": "",
             "extensions/utils/utilslib.cpython-312-x86_64-linux-gnu.so": ""}
    for name, text in files.items():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(text)
    monkeypatch.setattr(compare.OriginalCheckout, "require_modules", lambda self: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "compare"
    # 2 captures x 2 frames x 3 cameras = 12 samples: 6 steps per epoch at batch 2, so 8 steps take 2 epochs.
    assert compare.main(["--original", str(checkout), "--dataset", str(dataset), "--only", "original", "--steps", "8",
                         "--batchsize", "2", "--out", str(out)]) == 0
    report = json.loads((out / "losses.json").read_text())
    curves = report["sides"]["original"]
    assert curves["step"] == list(range(1, 9)) and curves["loss"] == [round(100.0 / step, 4) for step in range(1, 9)]
    assert curves["irgbl1"][0] == 50.0 and report["settings"]["identities"] == 2
    import yaml

    config = yaml.safe_load((out / "original" / "config.yaml").read_text())
    assert config["train"]["maxiter"] == 7 and config["train"]["num_epochs"] == 2 and config["train"]["nids"] == 2
    assert config["train"]["checkpoint"].endswith("/init/aeparams_000000.pt")
    assert config["progress"]["tensorboard"]["logdir"] is None and config["progress"]["cross_id_n_subjects"] == 1
    assert (out / "init" / "aeparams_000000.pt").is_file() and (out / "losses.png").is_file()
