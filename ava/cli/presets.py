"""Presets as tyro subcommands: `ava train` alone runs the default preset, `ava train ava256 ...`
another, and any field stays a flag."""

from __future__ import annotations

from typing import Annotated, Union

import tyro


def preset_choice(config_type: type, presets: dict, descriptions: dict[str, str]):
    """The Union type whose members are `config_type` defaulted to each preset, named after it.
    Use with `tyro.conf.CascadeSubcommandArgs`, so flags without a preset name pick the default."""
    return Union[
        tuple(
            Annotated[config_type, tyro.conf.subcommand(name, default=preset, description=descriptions[name])]
            for name, preset in presets.items()
        )
    ]
