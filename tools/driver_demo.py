"""The headset driver end to end: synthetic captures with headset sessions, a decoder, a driver
trained on some subjects, and its evaluation on subjects it never saw.

    python tools/driver_demo.py OUT --size gpu     # one GPU, under 6 minutes (16 subjects)
    python tools/driver_demo.py OUT --size cpu     # a small CPU check (8 subjects, tiny sizes)

Stages, each an `ava` command printed before it runs (so they can be rerun by hand):
  1. ava synth          OUT/data      subjects with dome and headset sessions (+ ground truth)
  2. ava train          OUT/decoder   a decoder on every subject's dome frames (as the released
                                      universal decoder is trained on all captures)
  3. ava train-driver   OUT/driver    the headset driver on the training subjects only
  4. ava eval-driver    OUT/eval      per-segment code error and PSNR on the held-out subjects,
                                      driver vs the mean-code baseline; strips OUT/eval/<subject>.png
  5. ava render         OUT/render    a held-out subject's headset frames driving its avatar
With --ablate, also a driver trained without re-alignment (the linear time stretch only) and its
evaluation (OUT/driver-stretch, OUT/eval-stretch), to show what the alignment buys.
The table is printed at the end and OUT/summary.json holds it with the stage times. Rerunning
continues where a stage stopped (the trainings resume; synthesis is skipped when complete).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Size:
    synth: list[str]
    decoder: list[str]
    driver: list[str]
    holdout: int


def _sizes(workers: int) -> dict[str, Size]:
    return {
        # One GPU (the synthesis uses the CPU cores): about 1.5 min of synthesis, 2 of decoder,
        # 1 of driver, under a minute of evaluation and rendering.
        "gpu": Size(
            synth=["--n-ids", "16", "--n-frames", "64", "--n-cams", "6", "--texture-size", "128", "--downsample", "64",
                   "--headset-size", "64", "--no-keypoints", "--workers", str(workers)],
            # torch.compile would cost about a minute up front, as much as it could save in 1000 steps.
            decoder=["--train.maxiter", "1000", "--train.batchsize", "8", "--train.lr-scheduler-iter", "700",
                     "--compile", "off",
                     "--train.num-holdout-cameras", "0", "--train.num-workers", "4", "--progress.image-freq", "500",
                     "--progress.psnr-freq", "1000", "--progress.checkpoint-freq", "500", "--progress.cross-id-n-subjects", "2"],
            driver=["--train.maxiter", "3000", "--train.batchsize", "64", "--train.align-every", "200",
                    "--progress.eval-freq", "1000", "--progress.image-freq", "1000", "--progress.checkpoint-freq", "1000"],
            holdout=4,
        ),
        # The 2-core development machine: tiny sizes, minutes rather than seconds per stage.
        "cpu": Size(
            synth=["--n-ids", "8", "--n-frames", "36", "--n-cams", "4", "--texture-size", "128", "--downsample", "64",
                   "--headset-size", "32", "--no-keypoints", "--workers", str(workers)],
            decoder=["--train.maxiter", "400", "--train.batchsize", "4", "--train.num-holdout-cameras", "0",
                     "--train.num-workers", "1", "--progress.image-freq", "200", "--progress.psnr-freq", "400",
                     "--progress.checkpoint-freq", "200", "--progress.cross-id-n-subjects", "2"],
            driver=["--train.maxiter", "1200", "--train.batchsize", "32", "--train.align-every", "100",
                    "--encoder.image-size", "32", "--encoder.channels", "16", "32", "64",
                    "--progress.eval-freq", "400", "--progress.image-freq", "400", "--progress.checkpoint-freq", "400"],
            holdout=2,
        ),
    }


def _run(argv: list[str], log) -> float:
    command = [sys.executable, "-m", "ava", *argv]
    print("$ ava " + " ".join(argv), flush=True)
    log.write("$ ava " + " ".join(argv) + "\n")
    log.flush()
    started = time.perf_counter()
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"`ava {argv[0]}` failed (exit {result.returncode}); see {log.name}")
    print(f"  {elapsed:.0f} s", flush=True)
    return elapsed


def _latest(folder: Path) -> Path:
    pointer = folder / "checkpoints" / "latest"
    return folder / "checkpoints" / pointer.read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder for the data, the runs, the evaluation and the log")
    parser.add_argument("--size", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16),
                        help="synthesis processes (default: every core, at most 16)")
    parser.add_argument("--ablate", action="store_true",
                        help="also train and evaluate a driver without re-alignment (linear time stretch only)")
    args = parser.parse_args()
    size = _sizes(args.workers)[args.size]
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    data, decoder, driver, evaluation = out / "data", out / "decoder", out / "driver", out / "eval"
    times: dict[str, float] = {}
    started = time.perf_counter()
    with open(out / "log.txt", "a", encoding="utf-8") as log:
        times["synth"] = _run(["synth", "-o", str(data), *size.synth], log)
        ids = [line.split(",") for line in (data / "ids.csv").read_text().splitlines()[1:] if line.strip()]
        folders = [f"{mcd}--{mct}--{sid}" for mcd, sid, mct in ids]
        held_out = folders[-size.holdout :]
        device = ["--device", args.device]
        times["decoder"] = _run(["train", "--train.dataset-dir", str(data), "--train.data-csv", "ids.csv",
                                 "--train.nids", str(len(folders)), "--train.downsample", "64",
                                 "--progress.output-path", str(decoder), "--resume", "auto", *device, *size.decoder], log)
        decoder_checkpoint = _latest(decoder)
        times["driver"] = _run(["train-driver", "--checkpoint", str(decoder_checkpoint), "--train.dataset-dir", str(data),
                                "--train.holdout-subjects", *held_out, "--progress.output-path", str(driver),
                                "--resume", "auto", *device, *size.driver], log)
        driver_checkpoint = _latest(driver)
        times["eval"] = _run(["eval-driver", "--driver-checkpoint", str(driver_checkpoint), "--checkpoint",
                              str(decoder_checkpoint), "-o", str(evaluation), *device], log)
        if args.ablate:
            stretch_driver = out / "driver-stretch"
            steps = size.driver[size.driver.index("--train.maxiter") + 1]
            times["driver_stretch"] = _run(["train-driver", "--checkpoint", str(decoder_checkpoint), "--train.dataset-dir",
                                            str(data), "--train.holdout-subjects", *held_out, "--progress.output-path",
                                            str(stretch_driver), "--resume", "auto", *device, *size.driver,
                                            "--train.align-every", str(10 * int(steps))], log)
            times["eval_stretch"] = _run(["eval-driver", "--driver-checkpoint", str(_latest(stretch_driver)), "--checkpoint",
                                          str(decoder_checkpoint), "-o", str(out / "eval-stretch"), "--strip-frames", "0",
                                          *device], log)
        times["render"] = _run(["render", "--checkpoint", str(decoder_checkpoint), "--driver-checkpoint",
                                str(driver_checkpoint), "--headset", held_out[0], "-o", str(out / "render"), *device], log)
    times["total"] = time.perf_counter() - started
    result = json.loads((evaluation / "eval.json").read_text())
    strip = evaluation / f"{held_out[0]}.png"
    if strip.is_file():
        shutil.copyfile(strip, out / "driver_strip.png")
    summary = {"size": args.size, "seconds": times, "held_out": held_out, "rows": result["rows"]}
    if args.ablate:
        summary["stretch_only_rows"] = json.loads((out / "eval-stretch" / "eval.json").read_text())["rows"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print((evaluation / "eval.md").read_text())
    total = result["rows"][-1]
    print(f"held-out subjects {', '.join(f.split('--')[-1] for f in held_out)}: PSNR against the true-code render "
          f"{total['psnr_driver']:.2f} dB (driver) vs {total['psnr_mean']:.2f} dB (mean code), "
          f"{total['psnr_gain']:+.2f} dB; code MSE {total['code_mse_driver']:.3g} vs {total['code_mse_mean']:.3g}")
    if args.ablate:
        stretch = summary["stretch_only_rows"][-1]
        print(f"without re-alignment (linear stretch only): {stretch['psnr_driver']:.2f} dB ({stretch['psnr_gain']:+.2f} dB "
              f"over the mean code), code MSE {stretch['code_mse_driver']:.3g}")
    print("stage times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items()))
    print(f"strip: {out / 'driver_strip.png'}; everything else under {out}")


if __name__ == "__main__":
    main()
