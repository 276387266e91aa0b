"""Training (`ava train`): config and presets, data, losses, the loop, the run directory.

Modules: config (dataclasses and presets), data (datasets, held-out cameras, loaders),
losses (SPEC.md §6.3 terms), distributed (torchrun / single process), rundir (checkpoints,
metrics, images, TensorBoard), evaluate (PSNR, progress images), loop (the training loop).
"""
