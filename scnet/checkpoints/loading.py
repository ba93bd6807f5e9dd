"""Loading weights into a Detector from an MMDetection checkpoint or from our own formats (the model
library's `scnet-native-1` and the trainer's `scnet-train-checkpoint`), with errors that say which
tensors are wrong and which preset the file probably belongs to.

Every file is read with `scnet.checkpoints.torch_file`: a checkpoint is untrusted input, nothing in
it may call code, and reading it costs time and memory in proportion to its size. The model a file
asks for is built on the meta device and compared with the file's tensors before any memory is
allocated for it (`build_for_weights`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scnet.checkpoints.mmdet_keys import UnmappedKeyError, mmdet_to_ours
from scnet.checkpoints.torch_file import TorchFileError, read_torch_file
from scnet.config import ConfigError, ModelConfig
from scnet.engine.checkpoint import CHECKPOINT_FORMAT as TRAIN_FORMAT
from scnet.messages import describe, path_problem, printable
from scnet.records.files import atomic_write

NATIVE_FORMAT = "scnet-native-1"
FORMATS = ("auto", "mmdet", "native")


class WeightsError(ValueError):
    """A weights file that cannot be used for the model at hand; the message says why and what to do."""


def read_checkpoint_file(path: str | Path, what: str = "--checkpoint") -> Any:
    """The file's contents; globals the loader does not rebuild come back as inert placeholders, so
    a crafted file cannot run code (see `torch_file`)."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise WeightsError(f"checkpoint {path} {problem} (check the {what} path)")
    try:
        return read_torch_file(path)
    except TorchFileError as exc:
        raise WeightsError(f"checkpoint {path} could not be read as a PyTorch checkpoint: {exc}; "
                              "give a .pth file saved by torch.save") from None


def tensor_dict(state: Any, where: str) -> dict[str, torch.Tensor]:
    """`state` if it maps names (strings) to finite tensors, else WeightsError naming `where`."""
    if not isinstance(state, dict):
        raise WeightsError(f"field '{where}' is {describe(state)}, not a dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str):
            raise WeightsError(f"field '{where}' has a key that is {describe(key)}, not a tensor name")
        if not torch.is_tensor(value):
            raise WeightsError(f"field '{where}' holds {describe(value)} under {describe(key)}, not a tensor")
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            raise WeightsError(f"tensor {describe(key)} in field '{where}' holds NaN or infinite values: the "
                                  "weights are damaged (or were saved from a diverged run); use another file")
    return state


def detect_format(payload: Any) -> str:
    if isinstance(payload, dict) and payload.get("format") == NATIVE_FORMAT:
        return "native"
    if isinstance(payload, dict) and payload.get("format") == TRAIN_FORMAT:
        return "train"
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if isinstance(state, dict) and any(str(k).startswith(("rpn_head.", "roi_head.", "neck.lateral_convs")) for k in state):
        return "mmdet"
    if isinstance(state, dict) and any(str(k).startswith(("rpn.", "roi_heads.")) for k in state):
        return "native"
    raise WeightsError("the file holds no detector state dict recognisable as MMDetection's "
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
    state = tensor_dict(payload.get("state_dict", payload), "state_dict")
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
        raise WeightsError(f"{len(unmapped)} MMDetection tensor(s) belong to no part of this model family, "
                              f"e.g. {', '.join(map(describe, unmapped[:3]))}; is this a Mask R-CNN / Cascade / "
                              "HTC / SCNet checkpoint?")
    return converted


@dataclass
class Weights:
    """A checkpoint's tensors in our naming, with what the file says about the model they fit."""

    path: Path
    kind: str  # "mmdet", "native" or "train"
    state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None  # the preset the file names (ours) or looks like (MMDetection)
    model_config: ModelConfig | None = None  # stored in our files; None for MMDetection / bare state dicts


def read_weights(path: str | Path, *, format: str = "auto") -> Weights:
    """Read any supported checkpoint; the model config too where the file carries it."""
    if format not in FORMATS:
        raise WeightsError(f"checkpoint format {format!r} is not one of {FORMATS}")
    path = Path(path)
    payload = read_checkpoint_file(path)
    try:
        return _weights_from_payload(path, payload, detect_format(payload) if format == "auto" else format)
    except WeightsError as exc:
        if str(path) in str(exc):
            raise
        raise WeightsError(f"checkpoint {path}: {exc}") from exc


def _weights_from_payload(path: Path, payload: Any, kind: str) -> Weights:
    if kind == "mmdet":
        if not isinstance(payload, dict):
            raise WeightsError(f"checkpoint {path}: not an MMDetection checkpoint (no dict at top level)")
        mm_state = _mmdet_state(payload)
        meta = payload.get("meta", {})
        return Weights(path, kind, convert_mmdet_state(mm_state), meta if isinstance(meta, dict) else {},
                       guess_mmdet_preset(mm_state))
    if not isinstance(payload, dict):
        raise WeightsError(f"checkpoint {path}: holds a {type(payload).__name__}, not a state dict")
    state = tensor_dict(payload["model"] if "model" in payload else payload, "model")
    meta = {k: v for k, v in payload.items() if k != "model"}
    if kind == "train":
        preset, config = _train_checkpoint_model(path, payload, state)
    else:
        preset = payload.get("preset") if isinstance(payload.get("preset"), str) else None
        config = _stored_model_config(path, payload.get("config"), "config") if "model" in payload else None
    return Weights(path, kind, state, meta, preset, config)


def _stored_model_config(path: Path, values: Any, where: str) -> ModelConfig | None:
    if values is None:
        return None
    if not isinstance(values, dict):
        raise WeightsError(f"checkpoint {path}: field '{where}' should be a model config dict, "
                              f"found {type(values).__name__}")
    try:
        return ModelConfig.from_dict(values)
    except (ConfigError, TypeError, ValueError) as exc:
        raise WeightsError(f"checkpoint {path}: field '{where}' is not a model config this code "
                              f"builds ({exc})") from None


def _train_checkpoint_model(path: Path, payload: dict, state: dict[str, torch.Tensor]
                            ) -> tuple[str | None, ModelConfig | None]:
    """A training checkpoint stores its run config (preset + flags); the data's class counts, which
    the run took from its dataset, are read back from the classifier shapes."""
    from scnet.engine.run_config import RunConfig

    if "model_config" in payload:
        config = _stored_model_config(path, payload["model_config"], "model_config")
        preset = payload.get("run_config", {}).get("preset") if isinstance(payload.get("run_config"), dict) else None
        return (preset if isinstance(preset, str) else None), config
    if not isinstance(payload.get("run_config"), dict):
        raise WeightsError(f"checkpoint {path}: field 'run_config' is missing or not a dict; give --preset "
                              "and the class counts instead")
    try:
        run_config = RunConfig.from_dict(payload["run_config"])
    except (KeyError, ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise WeightsError(f"checkpoint {path}: field 'run_config' is unusable ({exc}); "
                              "give --preset and the class counts instead") from None
    try:
        return run_config.preset, run_config.model_config(**infer_class_counts(state))
    except ConfigError as exc:
        raise WeightsError(f"checkpoint {path}: its run config does not resolve here ({exc})") from exc


def infer_class_counts(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """num_classes (and num_semantic_classes) from the classifier shapes of a state dict in our naming."""
    counts: dict[str, int] = {}
    for name, tensor in state.items():
        if name.startswith("roi_heads.box_heads.") and name.endswith(".classifier.weight") and tensor.ndim == 2:
            counts["num_classes"] = int(tensor.shape[0]) - 1  # + 1 background row
        elif name == "roi_heads.semantic_head.logits.weight" and tensor.ndim >= 1:
            counts["num_semantic_classes"] = int(tensor.shape[0])
    return counts


def load_weights_into(model: nn.Module, weights: Weights, preset_name: str | None = None) -> None:
    """Strict load with the advice of `check_state_fits` when the tensors do not fit."""
    check_state_fits(model, weights.state, weights.path, weights.preset, preset_name)


def load_weights(model: nn.Module, path: str | Path, *, format: str = "auto",
                    preset_name: str | None = None) -> dict[str, Any]:
    """Load weights strictly; returns the checkpoint's metadata (`meta` for MMDetection files)."""
    weights = read_weights(path, format=format)
    load_weights_into(model, weights, preset_name)
    return weights.meta


def build_for_weights(config: ModelConfig, weights: Weights, preset_name: str | None = None) -> nn.Module:
    """The Detector of `config` holding `weights`. Its shapes are compared with the file's on the
    meta device first, so neither a config nor a file that asks for a huge network allocates it."""
    check_shapes_fit(config, weights.state, weights.path, weights.preset, preset_name)
    from scnet.models.detector import Detector

    model = Detector(config)
    model.load_state_dict(weights.state, strict=True)
    return model


def check_shapes_fit(config: ModelConfig, state: dict[str, torch.Tensor], path: str | Path,
                     guess: str | None = None, preset_name: str | None = None) -> None:
    """WeightsError unless `state` fits the network of `config`, decided without allocating it."""
    from scnet.models.detector import Detector

    with torch.device("meta"):
        shell = Detector(config)
    _check_fit(shell.state_dict(), state, path, guess, preset_name)


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                     guess: str | None = None, preset_name: str | None = None) -> None:
    """Load `state` into `model` strictly, or raise one WeightsError line saying what differs."""
    _check_fit(model.state_dict(), state, path, guess, preset_name)
    model.load_state_dict(state, strict=True)


def _check_fit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: str | Path,
               guess: str | None, preset_name: str | None) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing (e.g. {', '.join(map(describe, missing[:3]))})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(map(describe, unexpected[:3]))})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} of another shape (e.g. {describe(k)}: file "
                         f"{_shape_text(state[k])}, model {_shape_text(expected[k])})")
        hint = ""
        if guess and guess != preset_name:
            hint = f" The file looks like a {printable(guess, 60)} checkpoint: try --preset {printable(guess, 60)}."
        elif wrong_shape:
            hint = " If only class counts differ, build the model with the checkpoint's num_classes."
        what = f"preset {preset_name}" if preset_name else "this model"
        raise WeightsError(f"checkpoint {path} does not fit {what}: {'; '.join(parts)}.{hint}")


def _shape_text(tensor: torch.Tensor) -> str:
    shape = tuple(tensor.shape)
    return str(shape) if len(shape) <= 8 else f"a {len(shape)}-dimensional shape"


def save_weights(path: str | Path, model: nn.Module, **extra: Any) -> Path:
    """Our own format, written atomically: weights plus the model config they belong to."""
    config = getattr(model, "config", None)
    payload = {"format": NATIVE_FORMAT, "model": model.state_dict(),
               "config": config.to_dict() if config is not None else None, **extra}
    return atomic_write(path, lambda handle: torch.save(payload, handle))
