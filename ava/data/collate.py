"""Samples -> one batch, for the training loaders and for every single-batch model call.

Tensors are stacked along a new dim 0 and numbers become tensors, as `torch.utils.data.default_collate`
does. The bad-data note each sample carries under `"skipped"` (one `path: reason` per line, see
ava.data.bad_data) becomes one list of `Problem`s under the same key, which
`BadDataReport.update` reads; a batch of clean samples has an empty list there.
"""

from __future__ import annotations

from torch.utils.data import default_collate

from ava.data.bad_data import SKIPPED_KEY, decode_problems


def collate(samples: list[dict]) -> dict:
    """One batch of `samples` (dicts with the same keys); their `"skipped"` notes gathered into one
    list of ava.data.bad_data.Problem. Usable as a DataLoader's `collate_fn`."""
    problems = []
    stripped = []
    for sample in samples:
        sample = dict(sample)
        problems += decode_problems(sample.pop(SKIPPED_KEY, ""))
        stripped.append(sample)
    batch = default_collate(stripped)
    batch[SKIPPED_KEY] = problems
    return batch
