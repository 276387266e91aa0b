"""The one checkpoint format: a single safetensors file (docs/checkpoint.md).

Tensors (names are prefixes plus the original names):
  model.<state-dict key>                      model weights and persistent buffers
  optimizer.state.<param index>.<name>        optimiser state tensors (Adam: step, exp_avg, ...)
  stats.texmean [3,T,T], stats.vertmean [V,3] normalisation statistics
  topology.verts, .uvs, .faces, .face_uvs     the mesh topology the model was built on
  extra.<name>                                caller tensors (e.g. RNG states for exact resume)
Metadata (strings; JSON where structured):
  format = "ava-checkpoint", format_version, step, config (the full run config), identities,
  cameras, stats (texstd, vertstd), optimizer (param groups and non-tensor state),
  scheduler (its state dict), extra (caller values that are not tensors).

Writes are atomic: the file is written under a temporary name in the same folder, flushed and
fsynced, then renamed over the destination, so a crash leaves the previous checkpoint intact.
safetensors has no checksum, so the metadata also holds `digest`, the SHA-256 of everything else
in the file (metadata and tensors), checked on every load: a damaged file is refused with
`DamagedCheckpoint`. Files written before the digest existed load unchecked.

A headset driver (`ava train-driver`) is saved in the same way as its own kind of file (format
"ava-driver-checkpoint"): encoder.<key> weights, optimiser state and extra.<name> tensors, and in
the metadata its config, the headset encoder's size and the decoder it was trained against (path,
step and `decoder_fingerprint`, a hash of the decoder's weights: a driver's codes only mean
something to that decoder).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ava.errors import UserError
from ava.faults import crash_point
from ava.files import fsync_directory, give_default_mode

FORMAT_NAME = "ava-checkpoint"
FORMAT_VERSION = 1
DRIVER_FORMAT_NAME = "ava-driver-checkpoint"
DRIVER_FORMAT_VERSION = 1
_VERSIONS = {FORMAT_NAME: FORMAT_VERSION, DRIVER_FORMAT_NAME: DRIVER_FORMAT_VERSION}
_LISTED = 8  # names shown per kind of mismatch before "... and N more"
DIGEST_KEY = "digest"
DIGEST_PREFIX = "sha256:"


class DamagedCheckpoint(UserError):
    """A checkpoint file that is truncated, corrupt or fails its digest check (`path` names it)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, no permission, ...); nothing was replaced."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write the checkpoint {path}: {reason}; nothing was replaced, earlier checkpoints "
                         "are intact")
        self.path = path
        self.reason = reason


def _hash_tensors(digest, tensors: dict[str, torch.Tensor]) -> None:
    """Feeds names, dtypes, shapes and bytes of `tensors` (in name order) into `digest`."""
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())


def content_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """'sha256:<hex>' of a checkpoint's metadata (all but the digest itself) and tensors."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(json.dumps(sorted((key, value) for key, value in metadata.items() if key != DIGEST_KEY)).encode())
    _hash_tensors(digest, tensors)
    return DIGEST_PREFIX + digest.hexdigest()


def _os_reason(error: Exception) -> str:
    """'No space left on device' for an OSError or a safetensors error that wraps one."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    match = re.search(r"os error (\d+)", str(error))
    return os.strerror(int(match.group(1))) if match else str(error)


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value.detach()


def _stats_fields(stats: Any) -> tuple[torch.Tensor, float, torch.Tensor, float]:
    get = stats.get if isinstance(stats, dict) else lambda name: getattr(stats, name)
    return (
        _as_tensor(get("texmean")).float(),
        float(get("texstd")),
        _as_tensor(get("vertmean")).float(),
        float(get("vertstd")),
    )


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"the {what} cannot be stored in a checkpoint: {error}") from None


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{index}.{name}"] = value
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module | None = None,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler_state: dict | None = None,
    stats: Any,
    topology: Any,
    identities: list[str],
    cameras: list[str],
    config: dict,
    step: int,
    extra_state: dict | None = None,
) -> Path:
    """Write one checkpoint atomically and return its path.

    Pass `model` (its state dict is saved; a DDP wrapper is unwrapped) or `model_state`.
    `stats` has texmean [3,T,T], texstd, vertmean [V,3], vertstd (ava.data.stats.NormStats or a
    dict); `topology` is an ava.nn.uvmap.Topology; `extra_state` values may be tensors or JSON.
    """
    if (model is None) == (model_state is None):
        raise TypeError("save_checkpoint needs exactly one of model= or model_state=")
    if model is not None:
        model = getattr(model, "module", model)
        model_state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {f"model.{key}": value for key, value in model_state.items()}
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "step": str(int(step))}
    if optimizer is not None:
        optimizer_tensors, optimizer_json = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optimizer_tensors)
        metadata["optimizer"] = _json(optimizer_json, "optimizer state")
    if scheduler_state is not None:
        metadata["scheduler"] = _json(scheduler_state, "scheduler state")
    texmean, texstd, vertmean, vertstd = _stats_fields(stats)
    tensors["stats.texmean"] = texmean
    tensors["stats.vertmean"] = vertmean
    metadata["stats"] = json.dumps({"texstd": texstd, "vertstd": vertstd})
    for name in ("verts", "uvs", "faces", "face_uvs"):
        tensors[f"topology.{name}"] = getattr(topology, name)
    metadata["extra"] = _extra_tensors(extra_state, tensors)
    metadata["identities"] = _json([str(item) for item in identities], "identity list")
    metadata["cameras"] = _json([str(item) for item in cameras], "camera list")
    metadata["config"] = _json(config, "config")
    return _write_file(path, tensors, metadata)


def _extra_tensors(extra_state: dict | None, tensors: dict[str, torch.Tensor]) -> str:
    """Puts the tensor values of `extra_state` into `tensors` (extra.<name>); the rest as JSON."""
    plain = {}
    for name, value in (extra_state or {}).items():
        if isinstance(value, (torch.Tensor, np.ndarray)):
            tensors[f"extra.{name}"] = _as_tensor(value)
        else:
            plain[name] = value
    return _json(plain, "extra state")


def _write_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    # safetensors refuses views and shared storage: give every tensor its own contiguous CPU copy.
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    metadata = {**metadata, DIGEST_KEY: content_digest(tensors, metadata)}

    # Streamed to a temporary file by safetensors (rather than ava.files.write_atomically, which
    # takes bytes) so that a large checkpoint is never held twice in memory.
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(temporary), metadata=metadata)
            give_default_mode(temporary)  # safetensors creates it 0600; a checkpoint is shared like any output
            with open(temporary, "rb+") as handle:
                handle.flush()
                os.fsync(handle.fileno())  # a full disk may only show here (delayed allocation)
        except (SafetensorError, OSError) as error:
            raise CheckpointWriteError(path, _os_reason(error)) from None
        crash_point("checkpoint-written", partial=temporary)
        os.replace(temporary, path)
        fsync_directory(path.parent)
        crash_point("checkpoint-renamed")
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def compare_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between two state dicts (missing, unexpected, shape); [] if equal."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{key} {tuple(found[key].shape)} (model wants {tuple(expected[key].shape)})"
        for key in sorted(set(expected) & set(found))
        if tuple(expected[key].shape) != tuple(found[key].shape)
    ]
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} with another shape: {_listing(shapes)}")
    return problems


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, loaded (see `load_checkpoint`)."""

    path: Path
    format_version: int
    step: int
    config: dict
    model_state: dict[str, torch.Tensor]
    stats: Any
    """ava.data.stats.NormStats: texmean f32 [3,T,T], texstd, vertmean f32 [V,3], vertstd."""
    topology: Any
    """ava.nn.uvmap.Topology the model was built on."""
    identities: list[str]
    cameras: list[str]
    optimizer_state: dict | None = None
    """In torch's `Optimizer.state_dict()` layout, or None if none was saved."""
    scheduler_state: dict | None = None
    extra_state: dict = field(default_factory=dict)

    def model_config(self) -> Any:
        """The ava.nn.config.ModelConfig saved in `config["model"]` (or `config` itself)."""
        from ava.nn.config import ModelConfig

        values = self.config.get("model", self.config)
        return ModelConfig.from_dict(values)

    def restore_model(self, model: torch.nn.Module) -> None:
        """Load the weights into `model` (DDP wrappers are unwrapped); every key and shape must match."""
        model = getattr(model, "module", model)
        problems = compare_state(model.state_dict(), self.model_state)
        if problems:
            raise UserError(
                f"checkpoint {self.path} does not fit this model ("
                + "; ".join(problems)
                + "); was it saved with another --model preset, topology or dataset?"
            )
        model.load_state_dict(self.model_state, strict=True)
        set_normalisation = getattr(getattr(model, "decoder_assembler", None), "set_normalisation", None)
        if set_normalisation is not None:
            set_normalisation(torch.from_numpy(self.stats.vertmean), self.stats.vertstd)

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Load the saved optimiser state; the optimiser must have the same parameter groups."""
        if self.optimizer_state is None:
            raise UserError(f"checkpoint {self.path} holds no optimiser state")
        saved_groups = self.optimizer_state["param_groups"]
        groups = optimizer.param_groups
        if len(saved_groups) != len(groups) or any(
            len(saved["params"]) != len(group["params"]) for saved, group in zip(saved_groups, groups)
        ):
            raise UserError(
                f"checkpoint {self.path} has optimiser groups of sizes {[len(g['params']) for g in saved_groups]} "
                f"but this optimiser has {[len(g['params']) for g in groups]}"
            )
        optimizer.load_state_dict(self.optimizer_state)

    def build_autoencoder(self, raymarch_backend: str | None = None) -> torch.nn.Module:
        """A model built from the saved config, topology and statistics, with the weights loaded."""
        from ava.nn.autoencoder import build_autoencoder

        model = build_autoencoder(
            self.model_config(),
            self.topology,
            vertmean=torch.from_numpy(self.stats.vertmean),
            vertstd=self.stats.vertstd,
            num_cameras=len(self.cameras),
            num_identities=len(self.identities),
            raymarch_backend=raymarch_backend,
        )
        self.restore_model(model)
        return model


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], saved: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key[len("optimizer.state.") :].split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in saved.get("plain_state", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": saved["param_groups"]}


def newest_checkpoint_in(folder: Path) -> Path | None:
    """The last `*.safetensors` by name in `folder`, or in its `checkpoints/` (a run folder); step
    checkpoints are named step_XXXXXXXX, so the last by name is the newest."""
    for candidate in (folder, folder / "checkpoints"):
        found = sorted(candidate.glob("*.safetensors"))
        if found:
            return found[-1]
    return None


def follow_pointer(path: Path) -> Path:
    """The checkpoint a run folder's `checkpoints/latest` names (a one-line text file holding the
    newest checkpoint's file name, kept beside it); any other path unchanged. UserError when the
    pointer names a checkpoint that is gone."""
    try:
        if path.suffix == ".safetensors" or not path.is_file() or path.stat().st_size > 4096:
            return path
        name = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return path
    if "\n" in name or "/" in name or not name.endswith(".safetensors"):
        return path
    target = path.parent / name
    if not target.is_file():
        newest = newest_checkpoint_in(path.parent)
        raise UserError(f"{path} is the run folder's pointer to its newest checkpoint, {name}, which does not exist; "
                        "pass a checkpoint file" + (f", e.g. {newest}" if newest else ""))
    return target


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, checking its format and version. A run
    folder's `checkpoints/latest` stands for the checkpoint it names."""
    from ava.data.stats import NormStats
    from ava.nn.uvmap import Topology

    path = follow_pointer(Path(path))
    metadata, tensors, version = _read_file(path, map_location, FORMAT_NAME)
    try:
        scalars = json.loads(metadata["stats"])
        stats = NormStats(
            texmean=tensors["stats.texmean"].cpu().numpy(),
            texstd=float(scalars["texstd"]),
            vertmean=tensors["stats.vertmean"].cpu().numpy(),
            vertstd=float(scalars["vertstd"]),
        )
        topology = Topology(**{name: tensors[f"topology.{name}"].cpu() for name in ("verts", "uvs", "faces", "face_uvs")})
        optimizer_state, extra_state = _optimizer_and_extra(metadata, tensors)
        return Checkpoint(
            path=path,
            format_version=version,
            step=int(metadata["step"]),
            config=json.loads(metadata["config"]),
            model_state=_group(tensors, "model."),
            stats=stats,
            topology=topology,
            identities=list(json.loads(metadata["identities"])),
            cameras=list(json.loads(metadata["cameras"])),
            optimizer_state=optimizer_state,
            scheduler_state=json.loads(metadata["scheduler"]) if "scheduler" in metadata else None,
            extra_state=extra_state,
        )
    except (KeyError, ValueError) as error:
        raise DamagedCheckpoint(path, f"checkpoint {path} is incomplete or damaged (missing or bad {error})") from None


def _group(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def _optimizer_and_extra(metadata: dict, tensors: dict[str, torch.Tensor]) -> tuple[dict | None, dict]:
    optimizer_tensors = {key: value for key, value in tensors.items() if key.startswith("optimizer.state.")}
    optimizer_state = (
        _unflatten_optimizer(optimizer_tensors, json.loads(metadata["optimizer"])) if "optimizer" in metadata else None
    )
    extra_state: dict[str, Any] = dict(json.loads(metadata.get("extra", "{}")))
    extra_state.update(_group(tensors, "extra."))
    return optimizer_state, extra_state


def _read_file(path: Path, map_location, expected: str) -> tuple[dict, dict[str, torch.Tensor], int]:
    """(metadata, tensors, format version) of a checkpoint file of the `expected` format; the
    digest is checked first, so a damaged file is a DamagedCheckpoint whatever the damage hit."""
    from safetensors import SafetensorError, safe_open

    if path.is_dir():
        newest = newest_checkpoint_in(path)
        raise UserError(f"{path} is a folder, not a checkpoint file; pass one of its checkpoints"
                        + (f", e.g. {newest}" if newest else " (it holds none)"))
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    with open(path, "rb") as handle:
        start = handle.read(9)
    # A safetensors file opens with its header's length (8 bytes) and the header's "{". torch.save
    # writes a zip archive (or, before torch 1.6, a pickle): the original's aeparams*.pt.
    if start[8:9] != b"{" and (start[:4] == b"PK\x03\x04" or start[:1] == b"\x80"):
        raise UserError(f"{path} is a PyTorch file (torch.save), not an ava checkpoint; a state dict of the "
                        "original code is imported with `ava convert`")
    try:
        # Read on the CPU (safetensors checks that the header's offsets cover the file exactly, so
        # no header can make it allocate more than the file holds), checked, then moved.
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    except SafetensorError as error:
        raise DamagedCheckpoint(path, f"checkpoint {path} is damaged or not a safetensors file ({error}; truncated "
                                      "by a full disk or an interrupted copy?)") from None
    stored = metadata.get(DIGEST_KEY)
    if stored is not None and content_digest(tensors, metadata) != stored:
        raise DamagedCheckpoint(path, f"checkpoint {path} is damaged: its contents do not match the SHA-256 digest "
                                      "stored when it was written (a disk or copy error?)")
    found = metadata.get("format")
    if found != expected:
        if found == DRIVER_FORMAT_NAME:
            raise UserError(f"{path} is a headset driver checkpoint (from `ava train-driver`), not a decoder; "
                            f"`ava eval-driver --driver-checkpoint {path}` measures it and `ava render "
                            f"--checkpoint DECODER --driver-checkpoint {path}` drives its decoder with it")
        if found == FORMAT_NAME:
            raise UserError(f"{path} is a decoder checkpoint (from `ava train`), not a headset driver; "
                            f"`ava train-driver --checkpoint {path}` trains a driver for it")
        raise UserError(
            f"{path} is not an ava checkpoint (a state dict of the original code? "
            "import it with `ava convert`)"
        )
    try:
        version = int(metadata.get("format_version", "0"))
    except ValueError:
        raise DamagedCheckpoint(path, f"checkpoint {path} is damaged (format_version "
                                      f"{metadata.get('format_version')!r})") from None
    if version > _VERSIONS[expected]:
        raise UserError(
            f"{path} has checkpoint format version {version}, this ava reads up to "
            f"{_VERSIONS[expected]}; upgrade ava"
        )
    if version < 1:
        raise UserError(f"{path} has an invalid checkpoint format version {version}")
    if str(map_location) != "cpu":
        tensors = {key: value.to(map_location) for key, value in tensors.items()}
    return metadata, tensors, version


# --- headset drivers -----------------------------------------------------------------------------


def decoder_fingerprint(checkpoint: Checkpoint) -> str:
    """SHA-256 (hex) of a decoder's weights: names, dtypes, shapes and bytes of its model state.

    Two checkpoints with the same weights (a copy, a resave, another optimiser state or step)
    share it; any change to a weight changes it.
    """
    import hashlib

    digest = hashlib.sha256()
    _hash_tensors(digest, checkpoint.model_state)
    return digest.hexdigest()


def save_driver_checkpoint(
    path: str | Path,
    *,
    encoder: torch.nn.Module,
    encoder_config: dict,
    decoder: dict,
    config: dict,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    extra_state: dict | None = None,
) -> Path:
    """Write a headset driver atomically and return its path.

    encoder: the ava.nn.headset_encoder.HeadsetEncoder (its state dict, buffers included); encoder_config:
    its HeadsetEncoderConfig as a dict; decoder: {"path", "fingerprint", "step"} of the decoder
    checkpoint it was trained against; config: the full training config; extra_state: tensors or
    JSON values (alignment, RNG state) for an exact resume.
    """
    encoder = getattr(encoder, "module", encoder)
    tensors: dict[str, torch.Tensor] = {f"encoder.{key}": value for key, value in encoder.state_dict().items()}
    metadata = {"format": DRIVER_FORMAT_NAME, "format_version": str(DRIVER_FORMAT_VERSION), "step": str(int(step)),
                "encoder": _json(encoder_config, "encoder config"), "decoder": _json(decoder, "decoder reference"),
                "config": _json(config, "config")}
    if optimizer is not None:
        optimizer_tensors, optimizer_json = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optimizer_tensors)
        metadata["optimizer"] = _json(optimizer_json, "optimizer state")
    metadata["extra"] = _extra_tensors(extra_state, tensors)
    return _write_file(path, tensors, metadata)


@dataclass
class DriverCheckpoint:
    """A headset driver as loaded by `load_driver_checkpoint`."""

    path: Path
    format_version: int
    step: int
    config: dict
    encoder_config: dict
    encoder_state: dict[str, torch.Tensor]
    decoder: dict
    """{"path": the decoder checkpoint it was trained against, "fingerprint": decoder_fingerprint, "step"}."""
    optimizer_state: dict | None = None
    extra_state: dict = field(default_factory=dict)

    def build_encoder(self) -> torch.nn.Module:
        """The ava.nn.headset_encoder.HeadsetEncoder with the saved weights and code statistics."""
        from ava.nn.config import HeadsetEncoderConfig
        from ava.nn.headset_encoder import HeadsetEncoder

        encoder = HeadsetEncoder(HeadsetEncoderConfig.from_dict(self.encoder_config))
        problems = compare_state(encoder.state_dict(), self.encoder_state)
        if problems:
            raise UserError(f"driver checkpoint {self.path} does not fit its headset encoder (" + "; ".join(problems)
                            + "); it was written by another version of ava")
        encoder.load_state_dict(self.encoder_state, strict=True)
        return encoder

    def check_decoder(self, decoder: Checkpoint) -> None:
        """UserError unless `decoder` has the weights this driver was trained against."""
        if decoder_fingerprint(decoder) != self.decoder.get("fingerprint"):
            raise UserError(
                f"driver {self.path} was trained against the decoder {self.decoder.get('path')} (step "
                f"{self.decoder.get('step')}), whose weights differ from {decoder.path}'s; a driver's codes only "
                "mean something to its own decoder: pass that one as --checkpoint or train a driver for this one"
            )


def load_driver_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> DriverCheckpoint:
    """Read a driver written by `save_driver_checkpoint`, checking its format and version. A run
    folder's `checkpoints/latest` stands for the checkpoint it names."""
    path = follow_pointer(Path(path))
    metadata, tensors, version = _read_file(path, map_location, DRIVER_FORMAT_NAME)
    try:
        optimizer_state, extra_state = _optimizer_and_extra(metadata, tensors)
        return DriverCheckpoint(
            path=path,
            format_version=version,
            step=int(metadata["step"]),
            config=json.loads(metadata["config"]),
            encoder_config=json.loads(metadata["encoder"]),
            encoder_state=_group(tensors, "encoder."),
            decoder=json.loads(metadata["decoder"]),
            optimizer_state=optimizer_state,
            extra_state=extra_state,
        )
    except (KeyError, ValueError) as error:
        raise DamagedCheckpoint(path, f"driver checkpoint {path} is incomplete or damaged (missing or bad {error})") from None
