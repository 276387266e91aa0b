"""What every command that runs a model shares: the model call on a batch (`model`), batches
(`batch`), devices (`device`), which dataset to read (`datasets`), which cameras to show
(`cameras`), image metrics (`metrics`), and pictures and videos (`images`, `video`).

Layering: train, render, driver, view and eval import this package; it imports synth, data, nn,
checkpoint and kernels, never the commands above it.
"""
