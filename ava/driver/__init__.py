"""The universal headset driver: `ava train-driver` trains a headset encoder (ava.nn.headset_encoder)
against a frozen decoder, aligning the headset and dome takes of each segment in time; `ava
eval-driver` measures it on held-out subjects against the synthetic ground truth (docs/driver.md).

Layering: like train and render, this package sits on ava.runtime and never imports them.
"""
