"""Loading weights into a Detector from an MMDetection checkpoint or from our own format, with errors
that say which tensors are wrong and which preset the file probably belongs to."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from scnet.checkpoints import tolerant_pickle
from scnet.records import atomic_write
from scnet.checkpoints.mmdet_keys import UnmappedKeyError, mmdet_to_ours

NATIVE_FORMAT = "scnet-native-1"
FORMATS = ("auto", "mmdet", "native")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the model at hand; the message says why and what to do."""


def read_checkpoint_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (check the --checkpoint path)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=tolerant_pickle)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(f"checkpoint {path} could not be read as a PyTorch checkpoint ({exc}); "
                              "give a .pth file saved by torch.save") from exc


def detect_format(payload: Any) -> str:
    if isinstance(payload, dict) and payload.get("format") == NATIVE_FORMAT:
        return "native"
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if isinstance(state, dict) and any(k.startswith(("rpn_head.", "roi_head.", "neck.lateral_convs")) for k in state):
        return "mmdet"
    if isinstance(state, dict) and any(k.startswith(("rpn.", "roi_heads.")) for k in state):
        return "native"
    raise CheckpointError("the file holds no detector state dict recognisable as MMDetection's "
                          "(rpn_head.*, roi_head.*) or ours (rpn.*, roi_heads.*)")


def guess_mmdet_preset(state: dict[str, torch.Tensor]) -> str:
    """The preset an MMDetection state dict most likely belongs to, from its tensor names and shapes."""
    names = set(state)
    if any(k.startswith("roi_head.glbctx_head") for k in names):
        arch = "scnet"
    elif any(".conv_res." in k for k in names):
        arch = "htc"
    elif any(k.startswith("roi_head.bbox_head.0.") for k in names):
        arch = "cascade_mask_rcnn"
    else:
        arch = "mask_rcnn"
    blocks = {k.split(".")[2] for k in names if k.startswith("backbone.layer3.")}
    depth = "r101" if len(blocks) > 6 else "r50"
    conv2 = state.get("backbone.layer1.0.conv2.weight")
    if conv2 is not None and conv2.ndim == 4 and conv2.shape[1] == 4:  # 64 groups of width 4
        depth = "x101_64x4d"
    return f"{arch}_{depth}"


def _mmdet_state(payload: dict) -> dict[str, torch.Tensor]:
    state = payload.get("state_dict", payload)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def convert_mmdet_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, tensor in state.items():
        if name.startswith("data_preprocessor."):
            continue
        try:
            converted[mmdet_to_ours(name)] = tensor
        except UnmappedKeyError:
            unmapped.append(name)
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} MMDetection tensor(s) belong to no part of this model family, "
                              f"e.g. {unmapped[:3]}; is this a Mask R-CNN / Cascade / HTC / SCNet checkpoint?")
    return converted


def load_checkpoint(model: nn.Module, path: str | Path, *, format: str = "auto",
                    preset_name: str | None = None) -> dict[str, Any]:
    """Load weights strictly; returns the checkpoint's metadata (`meta` for MMDetection files)."""
    if format not in FORMATS:
        raise CheckpointError(f"checkpoint format {format!r} is not one of {FORMATS}")
    payload = read_checkpoint_file(path)
    kind = detect_format(payload) if format == "auto" else format
    if kind == "mmdet":
        mm_state = _mmdet_state(payload)
        state = convert_mmdet_state(mm_state)
        guess = guess_mmdet_preset(mm_state)
        meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
    else:
        state = payload["model"] if isinstance(payload, dict) and "model" in payload else payload
        guess = payload.get("preset") if isinstance(payload, dict) else None
        meta = {k: v for k, v in payload.items() if k != "model"} if isinstance(payload, dict) else {}
    _check_and_load(model, state, path, guess, preset_name)
    return meta


def _check_and_load(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, guess: str | None,
                    preset_name: str | None) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(expected[k].shape)})")
        hint = ""
        if guess and guess != preset_name:
            hint = f" The file looks like a {guess} checkpoint: try --preset {guess}."
        elif wrong_shape:
            hint = " If only class counts differ, build the model with the checkpoint's num_classes."
        what = f"preset {preset_name}" if preset_name else "this model"
        raise CheckpointError(f"checkpoint {path} does not fit {what}: {'; '.join(parts)}.{hint}")
    model.load_state_dict(state, strict=True)


def save_checkpoint(path: str | Path, model: nn.Module, **extra: Any) -> Path:
    """Our own format, written atomically: weights plus the model config they belong to."""
    config = getattr(model, "config", None)
    payload = {"format": NATIVE_FORMAT, "model": model.state_dict(),
               "config": config.to_dict() if config is not None else None, **extra}
    return atomic_write(path, lambda handle: torch.save(payload, handle))
