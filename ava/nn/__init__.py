"""Model modules of Ava-256 (docs/model.md): UV maps, encoders, bottleneck, decoders, colour
calibration, background model and the autoencoder that renders them with the MVP raymarcher.

Submodules are imported explicitly (`from ava.nn.uvmap import build_uv_maps`) so that importing
`ava.nn` stays cheap.
"""
