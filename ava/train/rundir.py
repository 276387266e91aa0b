"""The run folder of `ava train`: the shared layout of ava.runtime.rundir (resolved config,
metrics log, checkpoints with a `latest` pointer, progress/ and x-id/ pictures, TensorBoard)."""

from ava.runtime.rundir import (  # noqa: F401  (re-exported for the training modules)
    CHECKPOINT_PATTERN,
    LATEST,
    RunDir,
    checkpoint_name,
    earlier_run,
    find_latest_checkpoint,
)
