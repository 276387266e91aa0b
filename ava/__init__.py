"""ava: Ava-256 universal face avatars, rendered with a Triton MVP raymarcher."""

__version__ = "0.1.0"
