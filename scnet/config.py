"""The model family's configuration: one frozen dataclass whose flags select the paper's variants.

Every network this project builds is described by a `ModelConfig`; presets (see `scnet.presets`) are
named configs. A run's identity is a hash of its resolved config, so two spellings of the same network
(for example the `scnet_r50` preset and `cascade_mask_rcnn_r50` with all SCNet flags switched on) are
the same run.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from scnet.messages import describe

SAMPLE_CONSISTENCY = ("none", "naive", "effective")
MASK_FLOWS = ("cascade", "htc")
BACKBONES = ("resnet18", "resnet50", "resnet101", "resnext101_64x4d")
FPN_INITS = ("xavier", "pytorch")


class ConfigError(ValueError):
    """A flag combination or value the model family does not define."""


@dataclass(frozen=True)
class ModelConfig:
    # backbone + neck
    backbone: str = "resnet50"
    fpn_channels: int = 256
    frozen_stages: int = 1
    norm_eval: bool = True  # BN statistics frozen in training (pretrained backbones); False for smoke presets
    # "xavier": MMDetection's xavier-uniform FPN convs; "pytorch": PyTorch's default (smoke presets, whose
    # random-init backbones with trainable BN learn far worse under xavier: see scnet/models/init.py)
    fpn_init: str = "xavier"
    # classes
    num_classes: int = 80
    num_semantic_classes: int = 183
    # cascade structure
    stages: int = 3
    stage_iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    bbox_target_stds: tuple[tuple[float, float, float, float], ...] = (
        (0.1, 0.1, 0.2, 0.2),
        (0.05, 0.05, 0.1, 0.1),
        (0.033, 0.033, 0.067, 0.067),
    )
    reg_class_agnostic: bool = True
    mask_flow: str = "cascade"
    sample_consistency: str = "none"
    feature_relay: bool = False
    global_context: bool = False
    glbctx_weight: float = 3.0
    semantic: bool = False
    semantic_weight: float = 0.2
    # head sizes
    roi_fc_channels: int = 1024
    mask_channels: int = 256
    mask_convs: int = 4
    semantic_convs: int = 4
    semantic_residual: bool = False
    glbctx_convs: int = 4
    # losses (MMDetection: Mask R-CNN uses L1 for both; the cascade family SmoothL1)
    rpn_bbox_loss: str = "smooth_l1"  # "l1" or "smooth_l1" (beta 1/9)
    rcnn_bbox_loss: str = "smooth_l1"  # "l1" or "smooth_l1" (beta 1)
    # RPN proposals
    rpn_train_pre_nms: int = 2000
    rpn_train_post_nms: int = 2000
    rpn_test_pre_nms: int = 1000
    rpn_test_post_nms: int = 1000
    # anchors in the RPN loss: only those inside the image up to this margin (0: Cascade, HTC, SCNet);
    # -1: every anchor of the image's own padded area (Mask R-CNN). MMDetection's `allowed_border`.
    rpn_allowed_border: int = 0
    # R-CNN sampling
    rcnn_samples_per_image: int = 512
    rcnn_positive_fraction: float = 0.25
    # the box stages' assigners also give each ground truth its best proposal (MMDetection's
    # match_low_quality: True in Mask R-CNN, HTC and SCNet, False in Cascade Mask R-CNN)
    rcnn_match_low_quality: bool = False
    # test: boxes scoring above `test_score_thr` are kept and segmented. The paper uses 0.001 (so do
    # MMDetection's HTC and SCNet configs); MMDetection's Mask R-CNN and Cascade configs use 0.05, which
    # their presets keep (scnet.presets), while the paper's tables ask for 0.001 (experiments.tables).
    test_score_thr: float = 0.001
    test_nms_iou: float = 0.5
    test_max_per_image: int = 100
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        _normalise_types(self)
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelConfig":
        """This config with `changes`, under the same coupling as `scnet.presets.apply_flags`
        (`with_coupled_flags`), so `cfg.replace(**flags)` and `build_model(cfg, **flags)` are one network."""
        return ModelConfig.from_dict({**self.to_dict(), **with_coupled_flags(changes)})


def with_coupled_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """`flags` plus what a change of sample consistency brings unless given explicitly.

    Effective sample consistency *is* one deep mask branch (12 convs as 6 residual blocks, the paper's
    design); naive SC and no SC keep the 4-conv branches of Cascade Mask R-CNN. Nothing else follows:
    the semantic head (`semantic_residual`) and the assigners' `rcnn_match_low_quality` are separate
    fields, so switching SC never changes them behind the caller's back.
    """
    out = dict(flags)
    sc = out.get("sample_consistency")
    if sc is not None:
        out.setdefault("mask_convs", 12 if sc == "effective" else 4)
    return out


def _expected_kind(default: Any) -> type | None:
    for kind in (bool, int, float, str, tuple):
        if isinstance(default, kind):
            return kind
    return None


def _normalise_types(cfg: ModelConfig) -> None:
    """Check each field against the type of its default, and store numbers in one canonical form
    (3 and 3.0 are the same lambda and must serialise, and hash into run ids, identically)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = _expected_kind(f.default)
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                object.__setattr__(cfg, f.name, float(value))
        elif kind is str:
            ok = isinstance(value, str)
        elif kind is tuple:
            ok = isinstance(value, (tuple, list))
            if ok:
                object.__setattr__(cfg, f.name, _float_tuple(value))
        else:
            ok = True
        if not ok:
            raise ConfigError(f"{f.name}={describe(value)} must be of type {kind.__name__} "
                              f"(for example {f.name}={f.default!r})")


def _float_tuple(value: Any, depth: int = 0) -> Any:
    if isinstance(value, (list, tuple)) and depth < 2:
        return tuple(_float_tuple(v, depth + 1) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{describe(value)} is not a number")
    return float(value)


def validate(cfg: ModelConfig) -> None:
    """Refuse combinations the paper does not define, naming the flags, before any layer is built."""
    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"backbone={cfg.backbone!r} is not one of {BACKBONES}")
    if cfg.fpn_init not in FPN_INITS:
        raise ConfigError(f"fpn_init={cfg.fpn_init!r} is not one of {FPN_INITS}")
    if cfg.stages not in (1, 3):
        raise ConfigError(f"stages={cfg.stages}: the paper's models have 1 (Mask R-CNN) or 3 (cascade) stages")
    for name, seq in (("stage_iou_thresholds", cfg.stage_iou_thresholds),
                      ("stage_loss_weights", cfg.stage_loss_weights),
                      ("bbox_target_stds", cfg.bbox_target_stds)):
        if len(seq) != cfg.stages:
            raise ConfigError(f"{name} has {len(seq)} entries but stages={cfg.stages}")
    for name in ("stage_iou_thresholds", "stage_loss_weights"):
        if any(isinstance(v, tuple) for v in getattr(cfg, name)):
            raise ConfigError(f"{name} must be a list of {cfg.stages} numbers, one per stage")
    for stds in cfg.bbox_target_stds:
        if not isinstance(stds, tuple) or len(stds) != 4 or not all(0 < v < 100 for v in stds):
            raise ConfigError(f"bbox_target_stds must hold {cfg.stages} lists of 4 positive numbers (x, y, w, h "
                              "deltas' standard deviations), e.g. [[0.1, 0.1, 0.2, 0.2], ...]")
    if cfg.mask_flow not in MASK_FLOWS:
        raise ConfigError(f"mask_flow={cfg.mask_flow!r} is not one of {MASK_FLOWS}")
    if cfg.sample_consistency not in SAMPLE_CONSISTENCY:
        raise ConfigError(f"sample_consistency={cfg.sample_consistency!r} is not one of {SAMPLE_CONSISTENCY}")
    if cfg.stages == 1 and cfg.sample_consistency != "none":
        raise ConfigError(
            f"sample_consistency={cfg.sample_consistency!r} with stages=1: sample consistency moves the mask "
            "branches of a cascade behind its last stage, so it needs stages=3")
    if cfg.stages == 1 and cfg.mask_flow == "htc":
        raise ConfigError("mask_flow='htc' with stages=1: HTC's mask information flow runs between cascade stages")
    if cfg.sample_consistency != "none" and cfg.mask_flow == "htc":
        raise ConfigError(
            f"sample_consistency={cfg.sample_consistency!r} with mask_flow='htc': the paper defines sample "
            "consistency on Cascade Mask R-CNN's mask branches; use mask_flow='cascade'")
    if cfg.feature_relay and cfg.mask_flow == "htc":
        raise ConfigError("feature_relay=True with mask_flow='htc': the paper defines feature relay on Mask R-CNN, "
                          "Cascade Mask R-CNN and SCNet (mask_flow='cascade'), not on HTC's interleaved branches")
    if cfg.glbctx_weight < 0:
        raise ConfigError(f"glbctx_weight={cfg.glbctx_weight} must be >= 0")
    if cfg.num_classes < 1:
        raise ConfigError(f"num_classes={cfg.num_classes} must be >= 1")
    if cfg.semantic and cfg.num_semantic_classes < 2:
        raise ConfigError(f"num_semantic_classes={cfg.num_semantic_classes} must be >= 2 with semantic=True")
    if cfg.mask_convs < 1 or (cfg.sample_consistency == "effective" and cfg.mask_convs % 2):
        raise ConfigError(
            f"mask_convs={cfg.mask_convs}: must be >= 1, and even with effective sample consistency "
            "(a residual block every two convs)")
    _validate_ranges(cfg)


# Fields that are probabilities or IoUs, and counts/sizes that must be positive.
_UNIT_INTERVAL = ("test_score_thr", "test_nms_iou", "mask_threshold", "rcnn_positive_fraction")
_POSITIVE_COUNTS = ("fpn_channels", "rpn_train_pre_nms", "rpn_train_post_nms", "rpn_test_pre_nms",
                    "rpn_test_post_nms", "rcnn_samples_per_image", "test_max_per_image", "roi_fc_channels",
                    "mask_channels")


# Upper bounds: sizes far beyond any published detector, so a typo (or a file) cannot make the
# model allocate gigabytes before anything else is checked.
_LARGEST = {"num_classes": 10_000, "num_semantic_classes": 10_000, "fpn_channels": 4096, "roi_fc_channels": 8192,
            "mask_channels": 4096, "mask_convs": 64, "semantic_convs": 64, "glbctx_convs": 64,
            "rpn_train_pre_nms": 100_000, "rpn_train_post_nms": 100_000, "rpn_test_pre_nms": 100_000,
            "rpn_test_post_nms": 100_000, "rcnn_samples_per_image": 100_000, "test_max_per_image": 10_000,
            "frozen_stages": 4, "rpn_allowed_border": 100_000}


def _validate_ranges(cfg: ModelConfig) -> None:
    """Values outside their meaning (a score threshold of 1.5, a negative loss weight) are refused."""
    for name in _UNIT_INTERVAL:
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name}={value} must be in [0, 1]")
    for name in _POSITIVE_COUNTS:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)} must be >= 1")
    for name, largest in _LARGEST.items():
        if getattr(cfg, name) > largest:
            raise ConfigError(f"{name}={getattr(cfg, name)} is above {largest:,}, far beyond any detector of this "
                              "family; the network would not fit in memory")
    for name in ("glbctx_weight", "semantic_weight"):
        if not math.isfinite(getattr(cfg, name)):
            raise ConfigError(f"{name}={getattr(cfg, name)} must be a finite number")
    if not all(math.isfinite(v) for v in cfg.stage_loss_weights):
        raise ConfigError(f"stage_loss_weights={cfg.stage_loss_weights} must be finite numbers")
    if not all(0.0 <= v <= 1.0 for v in cfg.stage_iou_thresholds):
        raise ConfigError(f"stage_iou_thresholds={cfg.stage_iou_thresholds}: each must be in [0, 1]")
    if any(v < 0 for v in cfg.stage_loss_weights) or cfg.semantic_weight < 0:
        raise ConfigError("stage_loss_weights and semantic_weight must be >= 0, found "
                          f"{cfg.stage_loss_weights} and {cfg.semantic_weight}")
    for name in ("semantic_convs", "glbctx_convs"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}={getattr(cfg, name)} must be >= 0")
