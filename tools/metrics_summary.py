"""Summarise a run's metrics.jsonl: step time, throughput, GPU utilisation, data wait, loss trend.

    python tools/metrics_summary.py RUN_DIR/metrics.jsonl [--skip 10]

The first --skip steps (compilation, cache warm-up) are left out of the timing medians.
"""

from __future__ import annotations

import argparse
import json
import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics")
    parser.add_argument("--skip", type=int, default=10)
    args = parser.parse_args()
    records = [json.loads(line) for line in open(args.metrics) if line.strip()]
    records = [r for r in records if "step_time" in r]
    if not records:
        raise SystemExit(f"{args.metrics}: no step records")
    timed = records[args.skip:] or records
    tenth = max(1, len(records) // 10)

    def median(key):
        values = [r[key] for r in timed if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    print(f"steps {len(records)} (timing over {len(timed)}): step {1000 * median('step_time'):.1f} ms, "
          f"data wait {1000 * median('data_time'):.1f} ms, {median('samples_per_s'):.1f} samples/s, "
          f"GPU utilisation {median('gpu_utilisation'):.0f}%")
    first = statistics.mean(r["loss"] for r in records[:tenth])
    last = statistics.mean(r["loss"] for r in records[-tenth:])
    print(f"loss: first 10% {first:.3f}, last 10% {last:.3f} (ratio {last / first:.2f})")


if __name__ == "__main__":
    main()
