"""`ava train-driver`: train a universal headset driver against a trained decoder."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.cli.presets import preset_choice
from ava.driver.config import PRESET_HELP, PRESETS, DriverConfig

DriverPreset = preset_choice(DriverConfig, PRESETS, PRESET_HELP)


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)
def main(config: Annotated[DriverPreset, tyro.conf.arg(name="")] = PRESETS["demo"]) -> int:
    """Train a universal headset driver: five IR headset views -> the expression code of a trained,
    frozen decoder (--checkpoint). No headset/dome frame pairs are needed: each segment's headset
    take is aligned in time to its dome take (linear stretch, then DTW on the driver's codes),
    alternating with regression. `ava train-driver --checkpoint CKPT` uses the demo preset;
    `ava train-driver ava256 --checkpoint CKPT --train.dataset-dir DIR` the real-data one."""
    from ava.driver.loop import train_driver

    return train_driver(config)
