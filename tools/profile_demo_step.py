"""Where the CPU demo's training step spends its time, and what a narrower background model saves.

    python tools/profile_demo_step.py [--widths 256,64] [--steps 4] [--threads 1] [--profile]

Sets up `ava train`'s demo preset as the command does (the demo data are generated into the cache
first if missing: `AVA_CACHE_DIR` chooses the cache), builds one model per background width
(`--model.background-width`, same initial seed otherwise), and times training steps after the
warm-up on the same batches, alternating the models step by step so that a shared machine's
changing load falls on each alike. Prints the median step time per width and the load average.
`--profile` adds torch's profiler table of one step of the first width (operators by self CPU
time, with input shapes), which shows what the step consists of.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import os
import statistics
import tempfile
import time


def main() -> None:
    import torch

    from ava.console import make_console
    from ava.runtime.batch import to_device
    from ava.train.config import PRESETS
    from ava.train.distributed import setup_distributed
    from ava.train.setup import build_state, setup
    from ava.train.step import decoder_terms, train_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="256,64", help="background widths to compare (comma-separated)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per width (after one untimed)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--profile", action="store_true", help="also print the profiler's table of one step")
    args = parser.parse_args()
    widths = [int(width) for width in args.widths.split(",")]

    config = copy.deepcopy(PRESETS["demo"])
    config.threads = args.threads
    config.train.num_workers = 0
    config.train.warmup_iters = 0  # time the steps after the warm-up (residuals on), most of a run
    config.progress.output_path = tempfile.mkdtemp(prefix="profile_demo_step_")
    config.model = dataclasses.replace(config.model, background_width=widths[0])
    ctx = setup_distributed("cpu")
    trainer = setup(config, ctx, make_console())
    states = {widths[0]: trainer.state}
    for width in widths[1:]:
        variant = copy.deepcopy(config)
        variant.model = dataclasses.replace(variant.model, background_width=width)
        torch.manual_seed(config.seed)
        states[width] = build_state(variant, ctx, trainer.data, trainer.topology, trainer.backend)
    trainer.sampler.set_epoch(0)
    batches = [to_device(batch, ctx.device) for _, batch in zip(range(args.steps + 1), trainer.loader)]
    terms = functools.partial(decoder_terms, warm=False, vertmean=trainer.vertmean,
                              vertstd=trainer.data.stats.vertstd)

    def step(width: int, batch: dict) -> float:
        started = time.perf_counter()
        train_step(states[width].model, states[width].optimizer, batch, terms, config.train.losses, config.train.clip)
        return time.perf_counter() - started

    load_before = os.getloadavg()[0]
    times: dict[int, list[float]] = {width: [] for width in widths}
    for index, batch in enumerate(batches):
        for width in widths:
            seconds = step(width, batch)
            if index:  # the first step of each model warms its caches up
                times[width].append(seconds)
    for width in widths:
        parameters = sum(parameter.numel() for parameter in states[width].model.bgmodel.parameters())
        print(f"background width {width}: median {statistics.median(times[width]):.3f} s/step over {args.steps} steps "
              f"({', '.join(f'{t:.2f}' for t in times[width])}); background model {parameters:,} parameters")
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {args.threads} thread(s)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            step(widths[0], batches[-1])
        print(profiler.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=32, max_shapes_column_width=80))


if __name__ == "__main__":  # the demo data's generation starts processes that import this file
    main()
