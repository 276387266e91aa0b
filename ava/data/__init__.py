"""Ava-256 data: capture ids, the on-disk layout, calibration, datasets and download (no model code)."""
