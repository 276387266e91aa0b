"""`python tests/ddp_worker.py train ...`: `ava` with the latent noise switched off, for torchrun.

Each rank draws its own latent noise (seed x 1000 + rank), so N processes of batch B cannot
reproduce one process of batch N x B bit for bit; with the noise off (z = mu) they must, up to
float rounding. The distributed tests start this file under torchrun and patch their
single-process reference with the same `noise_free`.
"""

from __future__ import annotations

import sys


def noise_free(forward):
    """A VAEBottleneck.forward that returns z = mu in training too (mu and logstd unchanged)."""

    def forward_without_noise(bottleneck, x):
        _, mu, logstd = forward(bottleneck, x)
        return mu, mu, logstd

    return forward_without_noise


if __name__ == "__main__":
    from ava.cli import main
    from ava.nn.bottleneck import VAEBottleneck

    VAEBottleneck.forward = noise_free(VAEBottleneck.forward)
    main(sys.argv[1:])
