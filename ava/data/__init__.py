"""Ava-256 data: capture ids, the on-disk layout, datasets, download and synthetic captures."""
