"""What every command that runs a model shares: the model call on a batch (`model`), batches on
a device (`batch`), devices and CPU threads (`device`), which dataset to read (`datasets`), which
cameras to show (`cameras`), image metrics (`metrics`), pictures and videos (`images`, `figures`,
`video`), the run folder of the trainings (`rundir`) and stopping them cleanly (`interrupt`), and
driving a decoder from headset frames (`driving`).

Layering: train, render, driver, view and eval import this package; it imports synth, data, nn,
checkpoint and kernels, never the commands above it.
"""
