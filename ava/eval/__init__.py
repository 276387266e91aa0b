"""`ava eval`: PSNR, SSIM and (where its weights are on disk) LPIPS of a checkpoint on cameras it
never trained on, per identity, per camera and overall; JSON, CSV, a table and example pictures.
The metrics are ava.runtime.metrics', the same code as training's held-out PSNR."""
