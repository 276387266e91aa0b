"""`ava train`: train a universal decoder (presets `demo`, the default, and `ava256`)."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.cli.presets import preset_choice
from ava.train.config import PRESET_HELP, PRESETS, TrainConfig

# `ava train` alone runs the demo preset; `ava train ava256 ...` the original configuration.
# CascadeSubcommandArgs lets `ava train --train.maxiter 10` pick the default preset implicitly.
TrainPreset = preset_choice(TrainConfig, PRESETS, PRESET_HELP)


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)
def main(config: Annotated[TrainPreset, tyro.conf.arg(name="")] = PRESETS["demo"]) -> int:
    """Train an Ava-256 universal decoder. `ava train` uses the demo preset (a synthetic capture set
    generated once, a small model; minutes on a CPU); `ava train ava256 --train.dataset-dir DIR`
    uses the original configuration. Any config field is a flag (`--train.maxiter 500`); run under
    torchrun for several GPUs or nodes."""
    from ava.train.loop import train

    return train(config)
