"""`python tests/ddp_worker.py [--no-latent-noise] [--reference-ddp] train ...`: `ava` for the
distributed tests, started by torchrun.

--no-latent-noise: z = mu in training too. Each rank draws its own latent noise (seed x 1000 +
rank), so N processes of batch B cannot reproduce one process of batch N x B bit for bit; with
the noise off they must, up to float rounding. The single-process reference gets the same patch.

--reference-ddp: DistributedDataParallel with torch's conservative settings, as the original and
earlier ava used it (find_unused_parameters=True, every buffer broadcast before each forward),
instead of ava.train.ddp's plan: the two must train identically.
"""

from __future__ import annotations

import sys


def noise_free(forward):
    """A VAEBottleneck.forward that returns z = mu in training too (mu and logstd unchanged)."""

    def forward_without_noise(bottleneck, x):
        _, mu, logstd = forward(bottleneck, x)
        return mu, mu, logstd

    return forward_without_noise


def reference_ddp(model, ctx, plan):
    import torch

    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=True)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--no-latent-noise" in arguments:
        from ava.nn.bottleneck import VAEBottleneck

        arguments.remove("--no-latent-noise")
        VAEBottleneck.forward = noise_free(VAEBottleneck.forward)
    if "--reference-ddp" in arguments:
        import ava.train.setup

        arguments.remove("--reference-ddp")
        ava.train.setup.wrap_ddp = reference_ddp
    from ava.cli import main

    main(arguments)
