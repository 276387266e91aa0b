"""How hard a synthetic set makes the headset driver's time alignment (docs/driver.md, "Difficulty").

    python tools/driver_difficulty.py DATA                  # a set written by `ava synth`
    python tools/driver_difficulty.py --plan 64 128 256     # sessions `ava synth` would draw, not rendered

For every headset frame, its true dome frame is the dome frame of its segment whose expression is
nearest to the headset frame's true expression (ava.driver.truth). The tool reports how often a
linear time stretch of each segment lands within one frame of it (and exactly on it), and the RMS
expression error (control units) of the stretch's dome frame, of the true dome frame (the floor
of any dome-frame target) and of the session's mean expression (a constant guess). --plan draws
the sessions of `--subjects` subjects with `--plan` dome frames each from `ava synth`'s defaults
and the seed, without rendering anything, to show how the measure depends on the capture length.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def dataset_rows(data: Path) -> list[dict]:
    from ava.driver.truth import capture_difficulty
    from ava.runtime.driving import headset_subjects

    return [row for folder in headset_subjects(data, required=True) for row in capture_difficulty(data / folder).values()]


def planned_rows(frames: int, subjects: int, seed: int) -> list[dict]:
    from ava.driver.truth import session_difficulty, session_segments
    from ava.synth import SynthConfig
    from ava.synth.pipeline import plan_subjects

    rows = []
    for plan in plan_subjects(SynthConfig(n_ids=subjects, n_frames=frames, seed=seed)):
        def grouped(frame_list, expressions):
            vectors = {frame: expression.as_vector() for (_, frame), expression in zip(frame_list, expressions)}
            return {segment: np.stack([vectors[f] for f in ids]) for segment, ids in session_segments(frame_list).items()}

        rows += list(session_difficulty(grouped(plan.headset.frames, plan.headset.expressions),
                                        grouped(plan.frames, plan.expressions)).values())
    return rows


def line(label: str, summary: dict) -> str:
    return (f"| {label} | {summary['dome_frames_per_segment']:.1f} | {summary['frames']} | "
            f"{100 * summary['stretch_within_1']:.1f}% | {100 * summary['stretch_exact']:.1f}% | "
            f"{summary['stretch_rms']:.3f} | {summary['nearest_rms']:.3f} | {summary['mean_rms']:.3f} |")


def main() -> None:
    from ava.driver.truth import summarise_difficulty

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="?", help="a synthetic dataset with headset sessions")
    parser.add_argument("--plan", type=int, nargs="+", default=[], help="dome frames per capture to draw sessions for")
    parser.add_argument("--subjects", type=int, default=16, help="subjects drawn per --plan length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    args = parser.parse_args()
    if args.data is None and not args.plan:
        parser.error("name a dataset or pass --plan")
    print("| sessions | dome frames per segment | headset frames | stretch within 1 frame | stretch exact "
          "| RMS error: stretch | true dome frame | session mean |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    summaries = {}
    if args.data is not None:
        summaries[str(args.data)] = summarise_difficulty(dataset_rows(args.data))
        print(line(str(args.data), summaries[str(args.data)]))
    for frames in args.plan:
        label = f"{args.subjects} x {frames} frames (drawn)"
        summaries[label] = summarise_difficulty(planned_rows(frames, args.subjects, args.seed))
        print(line(label, summaries[label]))
    if args.json is not None:
        args.json.write_text(json.dumps(summaries, indent=1) + "\n")


if __name__ == "__main__":
    from ava.errors import run_tool

    run_tool(main)
