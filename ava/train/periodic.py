"""What a run does every so many steps and at its last step: progress pictures, evaluation and
checkpoints (in that order, so a checkpoint's RNG state is the one the next step starts from)."""

from __future__ import annotations

from ava.train.resume import rng_state
from ava.train.setup import Trainer


def due(step: int, every: int, final: bool) -> bool:
    """Whether an action with period `every` runs after step `step` (1-based; always at the end)."""
    return step % every == 0 or final


def save(trainer: Trainer, step: int) -> None:
    """Writes the checkpoint of step `step` and points `latest` at it (collective: every rank calls
    it, rank 0 writes)."""
    from ava.checkpoint import save_checkpoint

    rng = rng_state(trainer.ctx)  # collective
    run, config, data = trainer.run, trainer.config, trainer.data
    if run is None:
        return
    path = save_checkpoint(
        run.checkpoint_path(step), model=trainer.state.model, optimizer=trainer.state.optimizer,
        scheduler_state=trainer.state.scheduler.state_dict(), stats=data.stats, topology=trainer.topology,
        identities=[capture.folder for capture in data.captures], cameras=data.cameras, config=trainer.resolved,
        step=step, extra_state={"epoch_steps": trainer.steps_per_epoch, "dataset_dir": str(data.dataset_dir),
                                "downsample": config.train.downsample, **rng},
    )
    run.mark_latest(path, config.progress.keep_checkpoints)


def evaluate(trainer: Trainer, step: int) -> None:
    """PSNR on held-out cameras and a few training views, logged and printed (rank 0)."""
    from ava.runtime.metrics import holdout_psnr, training_view_psnr

    run, model, data, progress = trainer.run, trainer.state.model, trainer.data, trainer.config.progress
    if run is None:
        return
    model.eval()
    record: dict = {"step": step, "kind": "eval"}
    if data.holdout is not None:
        record.update(holdout_psnr(model, data.holdout, progress.psnr_samples, trainer.ctx.device, data.stats))
    record["psnr_train"] = training_view_psnr(model, data.train, min(progress.psnr_samples, 8), trainer.ctx.device)
    model.train()
    run.log(record)
    run.scalars(step, {f"eval/{key}": value for key, value in record.items() if key.startswith("psnr")})
    shown = ", ".join(f"{key} {value:.2f} dB" for key, value in record.items() if key.startswith("psnr"))
    trainer.say(f"step {step}: {shown}", highlight=False)


def pictures(trainer: Trainer, step: int, batch: dict, output: dict) -> None:
    """progress/step_*.png of this batch ([gt | recon | error] rows) and, with several identities, an
    x-id/ strip, enlarged (nearest neighbour) until a panel is at least VIEW_HEIGHT pixels high (rank 0)."""
    from ava.runtime.images import save_png, upscale_nearest, viewing_scale
    from ava.train.pictures import progress_image

    run, model = trainer.run, trainer.state.model
    if run is None:
        return
    scale = viewing_scale(batch["image"].shape[-2])
    save_png(run.image_path("progress", step), upscale_nearest(progress_image(batch["image"], output["irgbrec"]), scale))
    if trainer.cross_identity is not None:
        model.eval()
        strip = trainer.cross_identity.strip(model, step, trainer.config.seed, trainer.ctx.device)
        model.train()
        if strip is not None:
            save_png(run.image_path("x-id", step), upscale_nearest(strip, scale))


def after_step(trainer: Trainer, step: int, batch: dict, output: dict, final: bool) -> None:
    """Runs the actions due after step `step` (1-based)."""
    progress = trainer.config.progress
    if due(step, progress.image_freq, final):
        pictures(trainer, step, batch, output)
    if due(step, progress.psnr_freq, final):
        evaluate(trainer, step)
    if due(step, progress.checkpoint_freq, final):
        save(trainer, step)
