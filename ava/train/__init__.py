"""Training (`ava train`): config and presets, data, losses, the loop.

Modules: config (dataclasses and presets), data (datasets, held-out cameras, loaders),
losses (docs/training.md terms), distributed (torchrun / single process), ddp (how the model is
wrapped in DistributedDataParallel: unused parameters, synced buffers, buckets), pictures
(progress images, cross-identity strips). The run folder and the handling of Ctrl-C / SIGTERM are
ava.runtime.rundir and ava.runtime.interrupt, shared with `ava train-driver`.
The loop (loop) orchestrates: setup (data, model, optimiser, resume, run folder, loader),
step (one optimiser step, reusable by other trainings), runner and graph (the step mode: eager,
sync-free or captured in a CUDA graph), schedule (learning rate), periodic
(pictures, evaluation, checkpoints), resume (checkpoint choice and RNG state), report (metrics
records and progress output).
"""
