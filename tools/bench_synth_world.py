"""How rich and how fast the synthetic world is: principal components of one capture's tracked
meshes and of many identities' neutral meshes and textures, and the time `ava train`'s demo set
takes to generate.

    python tools/bench_synth_world.py [--no-generation]

Runs on any version of ava.synth (it uses only names every version has), so the world before a
change can be measured the same way: `git worktree add /tmp/before <commit>` and
`PYTHONPATH=/tmp/before python tools/bench_synth_world.py`. The generation takes a few CPU-minutes
(spread over every core up to 8); the rest seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np


def components_for(rows: np.ndarray, share: float = 0.99) -> int:
    """Principal components of `rows` (one sample each) that explain `share` of the variance."""
    centred = rows - rows.mean(axis=0)
    energy = np.linalg.svd(centred, compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(energy) / energy.sum(), share)) + 1


def cpu_seconds() -> float:
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-generation", action="store_true", help="skip timing the demo set's generation")
    args = parser.parse_args()

    from ava.synth import SynthConfig, generate
    from ava.synth.appearance import paint_texture
    from ava.synth.pipeline import Expression, _surface_and_maps, plan_subjects

    config = SynthConfig(n_ids=4, n_frames=60)
    surface, _, angles = _surface_and_maps(config)
    counts = []
    for plan in plan_subjects(config):
        meshes = np.stack([surface.vertices(plan.identity, e).reshape(-1) for e in plan.expressions])
        counts.append(components_for(meshes.astype(np.float64)))
    print(f"tracked meshes, 4 captures x 60 frames: components for 99% of the variance {counts}")

    identities = [plan.identity for plan in plan_subjects(SynthConfig(n_ids=24, n_frames=1))]
    meshes = np.stack([surface.vertices(i, Expression()).reshape(-1) for i in identities]).astype(np.float64)
    textures = np.stack([paint_texture(i, Expression(), *angles).reshape(-1) for i in identities]).astype(np.float64)
    print(f"24 identities, neutral: components for 99% of the variance: meshes {components_for(meshes)}, "
          f"textures {components_for(textures)} ({config.texture_size}^2)")

    if not args.no_generation:
        demo = SynthConfig(texture_size=128, downsample=32)  # `ava train`'s demo set
        with tempfile.TemporaryDirectory() as folder:
            before, start = cpu_seconds(), time.perf_counter()
            generate(folder, demo, progress=False)
            wall, cpu = time.perf_counter() - start, cpu_seconds() - before
        print(f"demo set generation (4 x 8 frames x 6 cameras at 128x83, headset on): wall {wall:.1f} s, "
              f"CPU {cpu:.1f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
