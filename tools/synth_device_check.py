"""`ava synth --device cuda` against `--device cpu`: one small set made on both, compared file by
file, with the time each took.

    PYTHONPATH=. python tools/synth_device_check.py OUT [--devices cpu cuda] [--n-ids 2]
        [--n-frames 3] [--n-cams 4] [--downsample 32] [--headset-size 64] [--workers 8]

Generates OUT/<device> for each device with the same settings (a rerun skips a finished set and
resumes an unfinished one, as `ava synth` does), then compares the sets: every file that does not
come from the raymarcher (meshes, textures, poses, calibration, truth, backgrounds) must be
byte-identical; the rendered images (dome images, foreground masks, headset images) are decoded
and their differences reported in grey levels 0..255 (largest, mean, share of pixels off by more
than 2). Prints a table, appends to OUT/log.txt, writes OUT/report.json; exits 1 when a file
that should be identical is not. On a CPU-only machine `--devices cpu cpu` checks the tool itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

RENDERED = {"decoder/image/": "dome images", "decoder/foreground_masks/": "foreground masks",
            "encoder/image/": "headset images"}


def rendered_kind(relative: str) -> str | None:
    return next((kind for marker, kind in RENDERED.items() if marker in relative), None)


def compare(first: Path, second: Path) -> dict:
    """{'identical_files', 'differing_files' (non-rendered), 'missing', per kind: pixel statistics}."""
    from ava.data.formats import decode_image

    files = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    report = {"identical_files": 0, "differing_files": [], "missing": [], "images": {}}
    for relative in files:
        other = second / relative
        if not other.is_file():
            report["missing"].append(relative)
            continue
        data, other_data = (first / relative).read_bytes(), other.read_bytes()
        if data == other_data:
            report["identical_files"] += 1
        kind = rendered_kind(relative)
        if kind is None:
            if data != other_data:
                report["differing_files"].append(relative)
            continue
        stats = report["images"].setdefault(kind, {"images": 0, "pixels": 0, "max": 0, "sum": 0.0, "over_2": 0})
        with zipfile.ZipFile(first / relative) as a, zipfile.ZipFile(other) as b:
            for name in a.namelist():
                mode = "RGB" if kind == "dome images" else "L"
                x = decode_image(a.read(name), mode=mode).astype(np.int32)
                y = decode_image(b.read(name), mode=mode).astype(np.int32)
                difference = np.abs(x - y)
                stats["images"] += 1
                stats["pixels"] += difference.size
                stats["max"] = max(stats["max"], int(difference.max()))
                stats["sum"] += float(difference.sum())
                stats["over_2"] += int((difference > 2).sum())
    for stats in report["images"].values():
        stats["mean"] = stats.pop("sum") / max(stats["pixels"], 1)
        stats["share_over_2"] = stats.pop("over_2") / max(stats["pixels"], 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--devices", nargs=2, default=["cpu", "cuda"])
    parser.add_argument("--n-ids", type=int, default=2)
    parser.add_argument("--n-frames", type=int, default=3)
    parser.add_argument("--n-cams", type=int, default=4)
    parser.add_argument("--downsample", type=int, default=32)
    parser.add_argument("--headset-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    from ava.synth import SynthConfig, generate
    from ava.synth.pipeline import is_generated

    args.output.mkdir(parents=True, exist_ok=True)
    log = open(args.output / "log.txt", "a", encoding="utf-8")

    def say(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    folders, seconds = [], {}
    for index, device in enumerate(args.devices):
        folder = args.output / (device if args.devices[0] != args.devices[1] else f"{device}{index}")
        config = SynthConfig(n_ids=args.n_ids, n_frames=args.n_frames, n_cams=args.n_cams, downsample=args.downsample,
                             headset_size=args.headset_size, workers=args.workers, device=device)
        if not is_generated(folder, config):
            started = time.monotonic()
            generate(folder, config, progress=False)
            seconds[folder.name] = round(time.monotonic() - started, 1)
            say(f"{folder.name}: generated in {seconds[folder.name]} s ({args.workers} workers)")
        folders.append(folder)
    report = compare(*folders)
    report["seconds"] = seconds
    report["settings"] = vars(args) | {"output": str(args.output)}
    (args.output / "report.json").write_text(json.dumps(report, indent=1))
    say(f"{folders[0].name} vs {folders[1].name}: {report['identical_files']} files byte-identical, "
        f"differing non-image files: {report['differing_files'] or 'none'}, missing: {report['missing'] or 'none'}")
    for kind, stats in report["images"].items():
        say(f"  {kind}: {stats['images']} images, max difference {stats['max']} levels, mean {stats['mean']:.4f}, "
            f"pixels off by more than 2: {100 * stats['share_over_2']:.3f}%")
    return 1 if report["differing_files"] or report["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
