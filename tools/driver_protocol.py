"""The headset driver's evaluation protocol (docs/driver.md, "Evidence"), resumable.

    python tools/driver_protocol.py OUT --size cpu                 # everything, CPU sizes
    python tools/driver_protocol.py OUT --size gpu --budget 510    # one GPU call; rerun to continue
    python tools/driver_protocol.py OUT --size gpu --data DATA --decoder DECODER.safetensors

Stages (each writes its results under OUT and is skipped when a rerun finds them):
  1. data        `ava synth` into OUT/data (or --data: an existing synthetic set with headset sessions)
  2. split       subjects into train, validation and test (ava.data.splits; or the split the
                 --decoder checkpoint recorded) -> OUT/split.json; a --decoder that trained on
                 validation or test subjects is named there (decoder_trained_on) and in the report
  3. difficulty  how often the linear time stretch lands within one frame of the truth
                 (ava.driver.truth) -> OUT/difficulty.json
  4. decoder     `ava train` on the training subjects' dome data (or --decoder)
  5. validation  forward selection, seed 0, measured on the validation subjects: DTW re-alignment
                 against the linear stretch's targets alone, then each change (neutral-frame
                 conditioning, open-ended alignment, cross-fitted alignment; the last two only
                 where re-alignment was kept) added to the best so far and kept if it raises the
                 PSNR -> OUT/validation/
  6. test        the chosen setting, the linear-stretch baseline (no re-alignment) and the oracle
                 (trained on the true codes), each with --seeds seeds, measured once on the test
                 subjects beside the mean code -> OUT/test/
  7. report      OUT/report.md and OUT/summary.json (mean +- sd over seeds, the share of the
                 mean-code-to-oracle gap the driver closes), OUT/curves.png (mouth and eye openness
                 of a test subject over two segments: truth, true code, driver), and
                 OUT/test/strip/<subject>.png (`ava eval-driver` of the seed-0 driver on it)

Drivers train in this process (`ava train-driver`, each resumable from its checkpoints), so subjects
are loaded once. With --budget SECONDS the tool stops itself after that long (a driver in
training loses at most its last checkpoint interval) and exits with status 3: rerun the same
command to continue. Stage times are appended to OUT/times.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STOPPED = 3  # exit status when --budget ran out


@dataclass
class Size:
    subjects: int
    validation: int
    test: int
    synth: list[str]
    decoder: list[str]
    driver: list[str]
    downsample: int
    folds: int = 3
    seeds: int = 3


def _sizes(workers: int) -> dict[str, Size]:
    return {
        # One H100/H200 (the synthesis on its 16 CPU cores).
        "gpu": Size(
            subjects=32, validation=4, test=8,
            synth=["--n-frames", "64", "--n-cams", "6", "--texture-size", "128", "--downsample", "32",
                   "--headset-size", "128", "--no-keypoints", "--workers", str(workers)],
            decoder=["--train.maxiter", "1500", "--train.batchsize", "8", "--train.lr-scheduler-iter", "1000",
                     "--compile", "off", "--train.num-holdout-cameras", "0", "--train.num-workers", "4",
                     "--progress.image-freq", "1500", "--progress.psnr-freq", "1500",
                     "--progress.checkpoint-freq", "500", "--progress.cross-id-n-subjects", "2"],
            driver=["--train.maxiter", "1500", "--train.batchsize", "64", "--train.align-every", "100",
                    "--encoder.image-size", "128", "--encoder.channels", "16", "32", "64", "64", "64",
                    "--progress.eval-freq", "1500", "--progress.image-freq", "1500",
                    "--progress.checkpoint-freq", "500"],
            downsample=32,
        ),
        # The 2-core development machine: tiny sizes.
        "cpu": Size(
            subjects=10, validation=2, test=2,
            synth=["--n-frames", "128", "--n-cams", "2", "--texture-size", "64", "--downsample", "64",
                   "--prims-per-side", "16", "--voxels", "4", "--mesh-columns", "32", "--mesh-rows", "24",
                   "--headset-size", "32", "--no-keypoints", "--workers", str(workers)],
            decoder=["--train.maxiter", "500", "--train.batchsize", "4", "--train.num-holdout-cameras", "0",
                     "--train.num-workers", "0", "--progress.image-freq", "500", "--progress.psnr-freq", "500",
                     "--progress.checkpoint-freq", "100", "--progress.cross-id-n-subjects", "2",
                     "--model.uv-size", "64", "--model.prims-per-side", "8", "--model.voxels-per-prim", "8",
                     "--model.warp-size", "8", "--model.raymarch-step", "8"],
            driver=["--train.maxiter", "600", "--train.batchsize", "32", "--train.align-every", "50",
                    "--encoder.image-size", "32", "--encoder.channels", "16", "32", "64",
                    "--progress.eval-freq", "600", "--progress.image-freq", "600",
                    "--progress.checkpoint-freq", "200"],
            downsample=64, folds=2,
        ),
        # The test suite's: every stage runs, nothing is learnt.
        "tiny": Size(
            subjects=5, validation=1, test=1,
            synth=["--n-frames", "14", "--n-cams", "2", "--texture-size", "64", "--downsample", "128",
                   "--prims-per-side", "16", "--voxels", "4", "--mesh-columns", "24", "--mesh-rows", "16",
                   "--headset-size", "16", "--no-keypoints", "--workers", str(workers)],
            decoder=["--train.maxiter", "2", "--train.batchsize", "2", "--train.num-holdout-cameras", "0",
                     "--train.num-workers", "0", "--train.warmup-iters", "1", "--progress.image-freq", "100",
                     "--progress.psnr-freq", "100", "--progress.checkpoint-freq", "1",
                     "--model.uv-size", "64", "--model.prims-per-side", "8", "--model.voxels-per-prim", "8",
                     "--model.warp-size", "8", "--model.raymarch-step", "8"],
            driver=["--train.maxiter", "4", "--train.batchsize", "8", "--train.align-every", "2",
                    "--encoder.image-size", "16", "--encoder.channels", "8", "16", "--encoder.hidden", "32",
                    "--progress.eval-freq", "4", "--progress.image-freq", "4", "--progress.checkpoint-freq", "2",
                    "--progress.picture-rows", "2"],
            downsample=128, folds=2, seeds=2,
        ),
    }


# The changes to the driver that validation keeps or drops, tried one at a time in this order on top
# of what was kept so far (forward selection), after re-alignment itself was kept or dropped.
STRETCH = ("--train.targets", "stretch")  # the linear stretch's targets, never re-aligned
ALIGNMENT_CHANGES = ("open-ends", "crossfit")  # options of the re-alignment


def _changes(size: Size) -> dict[str, list[str]]:
    return {"neutral": ["--encoder.neutral"], "open-ends": ["--train.align-open-ends", "0.35"],
            "crossfit": ["--train.cross-fit-folds", str(size.folds)]}


class Stop(Exception):
    """The time budget ran out."""


@dataclass
class Protocol:
    out: Path
    size: Size
    device: str
    data: Path
    decoder: Path | None = None
    size_name: str = "cpu"

    def note(self, text: str) -> None:
        print(text, flush=True)
        with open(self.out / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(text + "\n")

    def timed(self, stage: str, seconds: float) -> None:
        with open(self.out / "times.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"stage": stage, "seconds": round(seconds, 1), "size": self.size_name}) + "\n")


def _write_json(path: Path, value) -> None:
    from ava.files import write_atomically

    write_atomically(path, (json.dumps(value, indent=1) + "\n").encode())


def _cli(argv: list[str]) -> None:
    """Runs an `ava` command in this process; Stop when it was interrupted (the budget)."""
    from ava.cli import main

    print("$ ava " + " ".join(argv), flush=True)
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    if code == 130:
        raise Stop()
    if code != 0:
        sys.exit(f"`ava {argv[0]}` failed (exit {code})")


def _latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _finished(run: Path, steps: int) -> bool:
    pointer = run / "checkpoints" / "latest"
    return pointer.is_file() and pointer.read_text().strip() == f"step_{steps:08d}.safetensors"


# --- stages ----------------------------------------------------------------------------------------


def stage_data(protocol: Protocol, given: Path | None) -> None:
    if given is not None:
        protocol.data = given
        return
    from ava.synth.pipeline import read_manifest

    if read_manifest(protocol.data) is None:
        started = time.perf_counter()
        _cli(["synth", "-o", str(protocol.data), "--n-ids", str(protocol.size.subjects), *protocol.size.synth])
        protocol.timed("synth", time.perf_counter() - started)


def stage_split(protocol: Protocol, seed: int) -> dict:
    from ava.data.splits import split_subjects
    from ava.runtime.driving import headset_subjects

    path = protocol.out / "split.json"
    folders = headset_subjects(protocol.data, required=True)
    split = None
    trained_on: set[str] = set()  # the --decoder's identities
    if protocol.decoder is not None:
        from ava.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(protocol.decoder)
        trained_on = set(checkpoint.identities)
        recorded = (checkpoint.config.get("resolved", {}) or {}).get("holdout_subjects")
        if recorded and recorded.get("validation") and recorded.get("test"):
            held = set(recorded["validation"]) | set(recorded["test"])
            split = {"train": [f for f in folders if f not in held], "validation": list(recorded["validation"]),
                     "test": list(recorded["test"]), "seed": recorded.get("split_seed"), "source": str(protocol.decoder)}
    if split is None:
        made = split_subjects(folders, protocol.size.validation, protocol.size.test, seed)
        split = {**made.to_dict(), "source": "ava.data.splits"}
    # Without --decoder, the decoder trains on the training subjects only. A given decoder that
    # trained on validation or test subjects changes what the numbers mean: say so, here and in the report.
    split["decoder_trained_on"] = sorted(trained_on & (set(split["validation"]) | set(split["test"])))
    if path.is_file():
        earlier = json.loads(path.read_text())
        if {k: earlier.get(k) for k in ("train", "validation", "test")} != {k: split[k] for k in ("train", "validation", "test")}:
            sys.exit(f"{path} holds another split than this call's; use another OUT folder")
    else:
        _write_json(path, split)
    protocol.note(f"split: {len(split['train'])} train, validation {', '.join(s.split('--')[-1] for s in split['validation'])}, "
                  f"test {', '.join(s.split('--')[-1] for s in split['test'])}")
    if split["decoder_trained_on"]:
        protocol.note(f"note: the --decoder trained on {', '.join(s.split('--')[-1] for s in split['decoder_trained_on'])} "
                      "(validation/test): the driver is measured on people whose avatar the decoder learnt")
    return split


def stage_difficulty(protocol: Protocol, split: dict) -> dict:
    from ava.driver.truth import capture_difficulty, summarise_difficulty

    path = protocol.out / "difficulty.json"
    if path.is_file():
        return json.loads(path.read_text())
    folders = split["train"] + split["validation"] + split["test"]
    rows = [row for folder in folders for row in capture_difficulty(protocol.data / folder).values()]
    result = summarise_difficulty(rows)
    _write_json(path, result)
    protocol.note(f"difficulty: the linear stretch lands within one frame of the truth for "
                  f"{100 * result['stretch_within_1']:.0f}% of {result['frames']} headset frames "
                  f"(exactly on the nearest dome frame for {100 * result['stretch_exact']:.0f}%)")
    return result


def stage_decoder(protocol: Protocol, split: dict) -> Path:
    if protocol.decoder is not None:
        return protocol.decoder
    run = protocol.out / "decoder"
    steps = int(protocol.size.decoder[protocol.size.decoder.index("--train.maxiter") + 1])
    if not _finished(run, steps):
        started = time.perf_counter()
        _cli(["train", "--train.dataset-dir", str(protocol.data), "--train.data-csv", "ids.csv",
              "--train.ids", *split["train"], "--train.downsample", str(protocol.size.downsample),
              "--progress.output-path", str(run), "--resume", "auto", "--device", protocol.device,
              *protocol.size.decoder])
        protocol.timed("decoder", time.perf_counter() - started)
    return _latest(run)


def train_driver(protocol: Protocol, decoder: Path, split: dict, run: Path, flags: list[str], seed: int) -> Path:
    steps = int(protocol.size.driver[protocol.size.driver.index("--train.maxiter") + 1])
    if not _finished(run, steps):
        started = time.perf_counter()
        _cli(["train-driver", "--checkpoint", str(decoder), "--train.dataset-dir", str(protocol.data),
              "--train.ids", *split["train"], *split["validation"], *split["test"],
              "--train.holdout-subjects", *split["validation"], *split["test"], "--progress.output-path", str(run),
              "--train.downsample", str(protocol.size.downsample),
              "--resume", "auto", "--device", protocol.device, "--seed", str(seed), *protocol.size.driver, *flags])
        protocol.timed(f"train {run.name}", time.perf_counter() - started)
    return _latest(run)


def evaluate_runs(protocol: Protocol, decoder_path: Path, runs: dict[str, Path], subjects: list[str],
                  folder: Path) -> dict:
    """Every run's codes against the truth on `subjects`, kept per subject in folder/<subject>.json
    (a rerun measures only the runs that file lacks); returns {subject: {"runs", "tallies": {source:
    {segment: Tally fields}}, "frames": [per-frame records], "controls"}}."""
    from ava.checkpoint import load_driver_checkpoint
    from ava.data.headset_capture import read_encoder_truth
    from ava.driver.data import load_subject
    from ava.driver.evaluate import driver_codes, evaluate_subject
    from ava.driver.setup import load_decoder
    from ava.runtime.device import select_device
    from ava.synth.headset_sessions import TruthGeometry

    device = select_device(protocol.device)
    loaded: dict = {}
    results = {}
    for subject_folder in subjects:
        path = folder / f"{subject_folder}.json"
        document = json.loads(path.read_text()) if path.is_file() else {"runs": {}, "tallies": {}, "frames": []}
        missing = {name: run for name, run in runs.items() if document["runs"].get(name) != str(run)}
        if missing:
            started = time.perf_counter()
            if not loaded:
                loaded["decoder"], loaded["model"] = load_decoder(decoder_path, device)
                loaded["model"].decoder_path = str(Path(decoder_path).resolve())  # names the true codes it made
                loaded["geometry"] = TruthGeometry(protocol.data)
            decoder, model = loaded["decoder"], loaded["model"]
            encoders = {}
            for name, checkpoint in missing.items():
                driver = load_driver_checkpoint(checkpoint)
                driver.check_decoder(decoder)
                encoders[name] = driver.build_encoder().to(device).eval()
            sizes = {encoder.config.image_size for encoder in encoders.values()}
            if len(sizes) != 1:
                sys.exit("the drivers of one evaluation must read views of one size")
            first = next(iter(encoders.values()))
            subject = load_subject(protocol.data, subject_folder, decoder, model, protocol.size.downsample,
                                   sizes.pop(), device)
            truth = read_encoder_truth(protocol.data / subject_folder)
            true = _true_codes(folder / f"{subject_folder}.true.pt", subject, truth, loaded["geometry"], model, device)
            sources = {"mean code": first.code_mean.cpu().expand(len(true), -1, -1, -1).clone()}
            sources.update({name: driver_codes(encoder, subject, device) for name, encoder in encoders.items()})
            result = evaluate_subject(subject, truth, loaded["geometry"], sources, model, device,
                                      first.code_scale.cpu(), true=true)
            document["runs"].update({name: str(run) for name, run in missing.items()})
            for source, segments in result.tallies.items():
                document["tallies"][source] = {segment: vars(tally) for segment, tally in segments.items()}
            if document["frames"]:
                for kept, fresh in zip(document["frames"], result.frames):
                    kept["sources"].update(fresh["sources"])
            else:
                document["frames"] = result.frames
            document["controls"] = list(truth.controls)
            _write_json(path, document)
            protocol.timed(f"evaluate {folder.parent.name} {subject_folder}", time.perf_counter() - started)
        results[subject_folder] = document
    return results


def _true_codes(path: Path, subject, truth, geometry, model, device):
    """The subject's true codes, kept in `path` (they cost a texture painting per frame)."""
    import io

    import torch

    from ava.driver.truth import headset_true_codes
    from ava.files import write_atomically

    key = f"{geometry.dataset_dir}|{getattr(model, 'decoder_path', '')}"
    if path.is_file():
        kept = torch.load(path)
        if kept.get("key") == key:
            return kept["codes"]
    true = headset_true_codes(subject, truth, geometry, model, device)
    buffer = io.BytesIO()
    torch.save({"key": key, "codes": true}, buffer)
    write_atomically(path, buffer.getvalue())
    return true


def pooled(results: dict, source: str) -> dict:
    """PSNR, code MSE and alignment of one source pooled over every subject and segment."""
    from ava.driver.evaluate import Tally

    total = Tally()
    for document in results.values():
        for tally in document["tallies"][source].values():
            total.add(Tally(**tally))
    return {"psnr": total.psnr(), "code_mse": total.code_mse(), "frames": total.frames,
            "dtw_within_1": total.aligned_within / max(total.aligned_frames, 1),
            "stretch_within_1": total.stretch_within / max(total.aligned_frames, 1)}


def stage_validation(protocol: Protocol, decoder: Path, split: dict) -> dict:
    """Forward selection on the validation subjects (seed 0). First re-alignment itself: a driver
    with DTW re-alignment against one trained on the linear stretch's targets only; then each
    change of `_changes` on top of the best so far, kept when it raises the validation PSNR (the
    alignment options only where re-alignment was kept)."""
    path = protocol.out / "validation" / "choice.json"
    if path.is_file():
        return json.loads(path.read_text())
    folder = protocol.out / "validation"
    runs = {"stretch": train_driver(protocol, decoder, split, folder / "stretch", list(STRETCH), 0),
            "dtw": train_driver(protocol, decoder, split, folder / "dtw", [], 0)}
    results = evaluate_runs(protocol, decoder, runs, split["validation"], folder / "eval")
    scores = {run: pooled(results, run) for run in runs}
    realign = scores["dtw"]["psnr"] > scores["stretch"]["psnr"]
    decisions = [{"change": "re-alignment", "run": "dtw", "against": "stretch", "psnr": scores["dtw"]["psnr"],
                  "psnr_before": scores["stretch"]["psnr"], "kept": realign}]
    protocol.note(f"validation: re-alignment: {scores['dtw']['psnr']:.2f} dB vs {scores['stretch']['psnr']:.2f} dB "
                  f"(stretch): {'kept' if realign else 'dropped'}")
    best = "dtw" if realign else "stretch"
    kept: list[str] = ["re-alignment"] if realign else []
    flags: list[str] = [] if realign else list(STRETCH)
    for change, extra in _changes(protocol.size).items():
        if change in ALIGNMENT_CHANGES and not realign:
            protocol.note(f"validation: {change} changes the re-alignment, which was dropped; not tried")
            continue
        if change == "crossfit" and protocol.size.folds > len(split["train"]):
            protocol.note(f"validation: crossfit needs {protocol.size.folds} training subjects; not tried")
            continue
        name = "+".join([best, change])
        runs[name] = train_driver(protocol, decoder, split, folder / name, [*flags, *extra], 0)
        results = evaluate_runs(protocol, decoder, runs, split["validation"], folder / "eval")
        scores = {run: pooled(results, run) for run in runs}
        better = scores[name]["psnr"] > scores[best]["psnr"]
        decisions.append({"change": change, "run": name, "against": best, "psnr": scores[name]["psnr"],
                          "psnr_before": scores[best]["psnr"], "kept": better})
        protocol.note(f"validation: {change}: {scores[name]['psnr']:.2f} dB vs {scores[best]['psnr']:.2f} dB "
                      f"({best}): {'kept' if better else 'dropped'}")
        if better:
            kept.append(change)
            flags += extra
            best = name
    scores["mean code"] = pooled(evaluate_runs(protocol, decoder, runs, split["validation"], folder / "eval"),
                                 "mean code")
    choice = {"chosen": best, "kept": kept, "flags": flags, "decisions": decisions, "validation": scores,
              "subjects": split["validation"]}
    _write_json(path, choice)
    protocol.note(f"validation chose: {best}")
    return choice


def stage_test(protocol: Protocol, decoder: Path, split: dict, choice: dict) -> dict:
    neutral = ["--encoder.neutral"] if "--encoder.neutral" in choice["flags"] else []
    methods = {"driver": choice["flags"], "stretch": [*STRETCH, *neutral],
               "oracle": ["--train.targets", "truth", *neutral]}
    runs = {}
    for seed in range(protocol.size.seeds):
        for method, flags in methods.items():
            name = f"{method}-seed{seed}"
            runs[name] = train_driver(protocol, decoder, split, protocol.out / "test" / name, flags, seed)
    return evaluate_runs(protocol, decoder, runs, split["test"], protocol.out / "test" / "eval")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def stage_report(protocol: Protocol, decoder: Path, split: dict, difficulty: dict, choice: dict, results: dict) -> dict:
    seeds = range(protocol.size.seeds)
    per_method = {method: [pooled(results, f"{method}-seed{seed}") for seed in seeds]
                  for method in ("driver", "stretch", "oracle")}
    mean = pooled(results, "mean code")
    rows = {"mean code": {"psnr": _mean_sd([mean["psnr"]]), "code_mse": _mean_sd([mean["code_mse"]])}}
    for method, scores in per_method.items():
        rows[method] = {"psnr": _mean_sd([s["psnr"] for s in scores]), "code_mse": _mean_sd([s["code_mse"] for s in scores]),
                        "dtw_within_1": _mean_sd([s["dtw_within_1"] for s in scores])}
    # Per seed: the driver's gain over the mean code as a share of the oracle's (of the same seed).
    # Undefined (None) where the oracle itself gains almost nothing.
    gaps = [(d["psnr"] - mean["psnr"]) / (o["psnr"] - mean["psnr"]) if o["psnr"] - mean["psnr"] > 0.1 else None
            for d, o in zip(per_method["driver"], per_method["oracle"])]
    code_gaps = [(mean["code_mse"] - d["code_mse"]) / (mean["code_mse"] - o["code_mse"])
                 if mean["code_mse"] - o["code_mse"] > 0.01 * mean["code_mse"] else None
                 for d, o in zip(per_method["driver"], per_method["oracle"])]
    summary = {"size": protocol.size_name, "split": split, "difficulty": difficulty, "choice": choice, "test": rows,
               "gap_closed_psnr": _mean_sd(gaps) if None not in gaps else None,
               "gap_closed_code_mse": _mean_sd(code_gaps) if None not in code_gaps else None,
               "seeds": len(list(seeds))}
    _write_json(protocol.out / "summary.json", summary)
    names = {"mean code": "mean code (no driver)", "stretch": "linear time stretch, no re-alignment",
             "driver": f"driver: {choice['chosen']} (chosen on validation)", "oracle": "oracle: trained on the true codes"}
    lines = ["| method | PSNR vs true-code render (dB) | code MSE |", "|---|---:|---:|"]
    for key in ("mean code", "stretch", "driver", "oracle"):
        psnr, code = rows[key]["psnr"], rows[key]["code_mse"]
        spread = (f"{psnr[0]:.2f} ± {psnr[1]:.2f}" if key != "mean code" else f"{psnr[0]:.2f}")
        code_text = (f"{code[0]:.4f} ± {code[1]:.4f}" if key != "mean code" else f"{code[0]:.4f}")
        lines.append(f"| {names[key]} | {spread} | {code_text} |")
    validation = ["| setting (seed 0) | validation PSNR (dB) | code MSE | change |", "|---|---:|---:|---|"]
    verdicts = {decision["run"]: ("kept" if decision["kept"] else "dropped") for decision in choice["decisions"]}
    for name, score in choice["validation"].items():
        validation.append(f"| {name} | {score['psnr']:.2f} | {score['code_mse']:.4f} | {verdicts.get(name, '')} |")
    gap, code_gap = summary["gap_closed_psnr"], summary["gap_closed_code_mse"]
    report = "\n".join([
        f"# Headset driver protocol ({protocol.size_name} size)", "",
        f"Subjects: {len(split['train'])} train, {len(split['validation'])} validation, {len(split['test'])} test "
        f"({', '.join(s.split('--')[-1] for s in split['test'])}); {len(list(seeds))} seeds."
        + (f" The decoder (--decoder) trained on {', '.join(s.split('--')[-1] for s in split['decoder_trained_on'])}"
           " among them: the driver is measured on people whose avatar the decoder learnt."
           if split.get("decoder_trained_on") else ""), "",
        f"Difficulty: the linear time stretch lands within one frame of the truth for "
        f"{100 * difficulty['stretch_within_1']:.1f}% of {difficulty['frames']} headset frames.", "",
        "Validation:", "", *validation, "",
        f"Test subjects (mean ± sd over seeds; {mean['frames']} headset frames):", "", *lines, "",
        _gap_sentence(gap, code_gap), ""])
    from ava.files import write_atomically

    write_atomically(protocol.out / "report.md", report.encode())
    print(report)
    curves(protocol, split["test"][0], results[split["test"][0]])
    strip = protocol.out / "test" / "strip"
    if not (strip / "eval.json").is_file():
        _cli(["eval-driver", "--driver-checkpoint", _evaluated_run(results, "driver-seed0"), "--checkpoint",
              str(decoder), "--dataset-dir", str(protocol.data), "--subjects", split["test"][0], "-o", str(strip),
              "--device", protocol.device, "--downsample", str(protocol.size.downsample)])
    return summary


def _gap_sentence(gap, code_gap) -> str:
    if gap is None or code_gap is None:
        return "The oracle gains too little over the mean code for a share of its gap to mean anything."
    return (f"The driver closes {100 * gap[0]:.0f}% ± {100 * gap[1]:.0f}% of the mean-code-to-oracle gap in PSNR "
            f"({100 * code_gap[0]:.0f}% ± {100 * code_gap[1]:.0f}% in code MSE).")


def _evaluated_run(results: dict, name: str) -> str:
    return next(iter(results.values()))["runs"][name]


def curves(protocol: Protocol, subject: str, document: dict) -> None:
    """OUT/curves.png: mouth and eye openness of `subject` over the two segments where the truth
    moves most (one for each), truth vs the true code's and the driver's (seed 0) decoded meshes."""
    import numpy as np

    from ava.runtime.figures import figure, save_figure

    frames = document["frames"]
    by_segment: dict[str, list[dict]] = {}
    for record in frames:
        by_segment.setdefault(record["segment"], []).append(record)

    def spread(records, key):
        values = [r["openness_truth"].get(key, 0.0) for r in records]
        return max(values) - min(values) if values else 0.0

    chosen = []
    for key in ("mouth", "eyes"):
        options = [s for s in by_segment if s not in chosen]
        if options:
            chosen.append(max(options, key=lambda s: spread(by_segment[s], key)))
    result = figure(1100, 420 * len(chosen))
    grid = result.subplots(len(chosen), 2, squeeze=False)
    for row, segment in enumerate(chosen):
        records = by_segment[segment]
        x = np.arange(len(records))
        for column, key in enumerate(("mouth", "eyes")):
            axes = grid[row][column]
            axes.plot(x, [r["openness_truth"].get(key, np.nan) for r in records], "k-", lw=2, label="truth (control)")
            axes.plot(x, [r["openness_true_code"].get(key, np.nan) for r in records], "k:", label="true code (decoded mesh)")
            axes.plot(x, [r["sources"]["driver-seed0"]["openness"].get(key, np.nan) for r in records], "C0-",
                      label="driver (decoded mesh)")
            axes.plot(x, [r["sources"]["stretch-seed0"]["openness"].get(key, np.nan) for r in records], "C1--",
                      label="linear stretch baseline")
            axes.set_title(f"{subject.split('--')[-1]} {segment}: {key} openness", fontsize=9)
            axes.set_xlabel("headset frame")
            if row == 0 and column == 0:
                axes.legend(fontsize=8)
    save_figure(result, protocol.out / "curves.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder for the data, the runs, the evaluations and the report")
    parser.add_argument("--size", choices=("gpu", "cpu", "tiny"), default="gpu", help="tiny: the test suite's")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--data", type=Path, help="an existing synthetic dataset with headset sessions (skips synthesis)")
    parser.add_argument("--decoder", type=Path, help="an existing decoder checkpoint (skips decoder training; its "
                        "recorded validation and test subjects, if any, are the split)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16), help="synthesis processes")
    parser.add_argument("--budget", type=float, default=0, help="stop after this many seconds (0: no limit); exit 3")
    args = parser.parse_args()
    size = _sizes(args.workers)[args.size]
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    protocol = Protocol(out, size, args.device, out / "data", args.decoder, size_name=args.size)
    started = time.perf_counter()
    try:
        if args.budget > 0:
            def expire(*_):
                raise KeyboardInterrupt
            signal.signal(signal.SIGALRM, expire)
            signal.alarm(max(1, int(args.budget)))
        from ava.driver.data import keep_subjects

        keep_subjects()
        stage_data(protocol, args.data)
        split = stage_split(protocol, args.split_seed)
        difficulty = stage_difficulty(protocol, split)
        decoder = stage_decoder(protocol, split)
        choice = stage_validation(protocol, decoder, split)
        results = stage_test(protocol, decoder, split, choice)
        stage_report(protocol, decoder, split, difficulty, choice, results)
    except (Stop, KeyboardInterrupt):
        protocol.note(f"stopped after {time.perf_counter() - started:.0f} s (--budget); rerun the same command to continue")
        sys.exit(STOPPED)
    protocol.note(f"done in {time.perf_counter() - started:.0f} s; report in {out / 'report.md'}")


if __name__ == "__main__":
    from ava.errors import run_tool

    run_tool(main)
