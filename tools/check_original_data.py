"""Runs the original ava-256 code's data setup on a dataset folder (e.g. `ava synth` output).

    python tools/check_original_data.py --original ~/ava-256 --dataset data/synth --json report.json

With the original's own `configs/config.yaml` (dataset folder, ids CSV, number of identities,
downsample and batch size replaced), it calls its training script's `prepare()`: the training
dataset (its `data/ava_dataset.py`), the neutral conditioning of every identity, and the
cross-identity driver dataset restricted to the script's four frontal cameras. Then it draws one
training batch and one driver sample, and picks the cross-identity subjects as the script does.
No CUDA is needed. The report (JSON) gives what it saw; the exit status is 0 when all of it
worked, 2 when the checkout or its Python dependencies are missing (the message names them), and
1 when the original code failed on the data (its traceback is printed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import traceback
from pathlib import Path

from original_checkout import CheckoutError, OriginalCheckout


def check(checkout: OriginalCheckout, dataset: Path, nids: int, downsample: int, batchsize: int) -> dict:
    script = checkout.train_script()
    ids_csv = dataset / "ids.csv"
    config = checkout.config_node({
        "train.dataset_dir": str(dataset), "train.data_csv": str(ids_csv), "train.nids": nids,
        "train.downsample": downsample, "train.batchsize": batchsize, "train.num_workers": 0,
        "progress.cross_id_n_subjects": min(3, nids - 1),  # the script requires fewer than nids
    })
    training, neutrals, loader, driver_loader = script.prepare(0, 1, config.train)
    batch = next(b for b in loader if b is not None)
    driver = next(d for d in driver_loader if d is not None)
    subjects = sorted(random.Random(0).sample(range(len(neutrals)), config.progress.cross_id_n_subjects))
    per_capture = {capture.folder_name(): list(part.cameras)
                   for capture, part in training.single_capture_datasets.items()}
    driver_dataset = driver_loader.dataset
    return {
        "frontal_cameras": list(script.FRONTAL_CAMERAS),
        "samples": len(training),
        "identities": len(training.identities),
        "cameras": sorted(training.get_allcameras()),
        "cameras_per_capture": per_capture,
        "driver_cameras_per_capture": {capture.folder_name(): list(part.cameras)
                                       for capture, part in driver_dataset.single_capture_datasets.items()},
        "driver_samples": len(driver_dataset),
        "neutral_conditioning": len(neutrals),
        "cross_id_subjects": subjects,
        "batch": {key: list(value.shape) for key, value in batch.items() if hasattr(value, "shape")},
        "driver_camera": str(driver["cameraid"][0]),
        "driver_identity": int(driver["idindex"][0]),
        "texstd": float(training.texstd),
        "vertstd": float(training.vertstd),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True, help="checkout of facebookresearch/ava-256")
    parser.add_argument("--dataset", required=True, type=Path, help="dataset folder with ids.csv and capture folders")
    parser.add_argument("--nids", type=int, default=0, help="identities (default: every row of ids.csv)")
    parser.add_argument("--downsample", type=int, default=8, help="image downsampling of the original's loader")
    parser.add_argument("--batchsize", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the report here (the original logs to stdout)")
    args = parser.parse_args(argv)
    try:
        checkout = OriginalCheckout(args.original)
        checkout.require_modules()
    except CheckoutError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    dataset = args.dataset.expanduser().resolve()
    if not (dataset / "ids.csv").is_file():
        print(f"error: {dataset} has no ids.csv", file=sys.stderr)
        return 2
    nids = args.nids or sum(1 for line in (dataset / "ids.csv").read_text().splitlines()[1:] if line.strip())
    try:
        report = check(checkout, dataset, nids, args.downsample, args.batchsize)
    except Exception:
        traceback.print_exc()
        print("error: the original code failed on this dataset (traceback above)", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
