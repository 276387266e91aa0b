"""`ava train-driver`: train a universal headset driver against a trained decoder."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.cli.presets import preset_choice
from ava.driver.config import PRESET_HELP, PRESETS, DriverConfig

DriverPreset = preset_choice(DriverConfig, PRESETS, PRESET_HELP)


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)
def main(config: Annotated[DriverPreset, tyro.conf.arg(name="")] = PRESETS["demo"]) -> int:
    """Train a universal headset driver: the five IR headset views -> the expression code of a trained decoder (no frame pairs needed)."""
    from ava.driver.loop import train_driver

    return train_driver(config)
