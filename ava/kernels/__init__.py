"""ava's kernels: the MVP raymarcher and ray generation, with PyTorch references beside them.

This package imports nothing else from ava.
"""

from ava.kernels.raydirs import compute_raydirs
from ava.kernels.raymarch import mvp_raymarch

__all__ = ["compute_raydirs", "mvp_raymarch"]
