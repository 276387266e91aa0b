"""ava's raymarcher behind the original's call signature, for `bench_raymarch.py --against`.

    python tools/bench_raymarch.py --against original_signature:mvp_raymarch

The original is called as f(raypos, raydir, stepsize, tminmax, (primpos, primrot, primscale),
template, warp, ...) and returns rayrgba [N,H,W,4]; any module with such a function can be timed
the same way (for example a wrapper around the original CUDA extension, where it is installed).
Pointing --against here checks the harness itself: the difference must be exactly zero.
"""

from __future__ import annotations

from ava.kernels import mvp_raymarch as _ava_raymarch


def mvp_raymarch(raypos, raydir, stepsize, tminmax, primtransf, template, warp=None,
                 fadescale=8.0, fadeexp=8.0, **ignored_options):
    primpos, primrot, primscale = primtransf
    return _ava_raymarch(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp,
                         fadescale=fadescale, fadeexp=fadeexp)
