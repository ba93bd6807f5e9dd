"""The key map from MMDetection 3.3.0 tensor names to ours, one rule per renamed part.

| MMDetection                                   | ours                                         |
|-----------------------------------------------|----------------------------------------------|
| backbone.*                                    | backbone.* (torchvision ResNet names)        |
| neck.lateral_convs.i.conv.*                   | neck.lateral.i.*                             |
| neck.fpn_convs.i.conv.*                       | neck.output.i.*                              |
| rpn_head.rpn_conv / rpn_cls / rpn_reg         | rpn.conv / rpn.objectness / rpn.deltas       |
| roi_head.bbox_head[.s].shared_fcs.j           | roi_heads.box_heads.s.fcs.j (s = 0 if none)  |
| roi_head.bbox_head[.s].fc_cls / fc_reg        | roi_heads.box_heads.s.classifier / regressor |
| roi_head.mask_head[.s].convs.j.conv           | roi_heads.mask_heads.s.convs.j.conv          |
| roi_head.mask_head[.s].convs.j.conv1/conv2    | roi_heads.mask_heads.s.blocks.j.conv1/conv2  |
| roi_head.mask_head[.s].conv_res.conv          | roi_heads.mask_heads.s.feature_flow.conv     |
| roi_head.mask_head[.s].upsample / conv_logits | roi_heads.mask_heads.s.upsample / logits     |
| roi_head.semantic_head.lateral_convs.i.conv   | roi_heads.semantic_head.lateral.i.conv       |
| roi_head.semantic_head.convs.j.conv           | roi_heads.semantic_head.convs.j.conv         |
| roi_head.semantic_head.convs.j.conv1/conv2    | roi_heads.semantic_head.blocks.j.conv1/conv2 |
| roi_head.semantic_head.conv_embedding.conv    | roi_heads.semantic_head.embedding.conv       |
| roi_head.semantic_head.conv_logits            | roi_heads.semantic_head.logits               |
| roi_head.feat_relay_head.fc                   | roi_heads.feature_relays.0.fc                |
| roi_head.glbctx_head.convs.j.conv1/conv2      | roi_heads.global_context.blocks.j.conv1/conv2|
| roi_head.glbctx_head.fc                       | roi_heads.global_context.classifier          |

Every rule is a full match, so a name that no rule covers is reported rather than guessed.
`ours_to_mmdet` is the inverse (used to report gradients under MMDetection's parameter names); it needs
to know whether the box and mask heads are indexed by stage, which MMDetection does only for lists of
heads (`roi_head.bbox_head.fc_cls` in Mask R-CNN, `roi_head.bbox_head.0.fc_cls` in the cascades).
"""
from __future__ import annotations

import re

_P = r"(weight|bias)"
_HEAD_RULES: list[tuple[str, str]] = [
    (rf"shared_fcs\.(\d+)\.{_P}", r"fcs.\1.\2"),
    (rf"fc_cls\.{_P}", r"classifier.\1"),
    (rf"fc_reg\.{_P}", r"regressor.\1"),
]
_MASK_RULES: list[tuple[str, str]] = [
    (rf"convs\.(\d+)\.conv\.{_P}", r"convs.\1.conv.\2"),
    (rf"convs\.(\d+)\.conv([12])\.{_P}", r"blocks.\1.conv\2.\3"),
    (rf"conv_res\.conv\.{_P}", r"feature_flow.conv.\1"),
    (rf"upsample\.{_P}", r"upsample.\1"),
    (rf"conv_logits\.{_P}", r"logits.\1"),
]
_SEMANTIC_RULES: list[tuple[str, str]] = [
    (rf"lateral_convs\.(\d+)\.conv\.{_P}", r"lateral.\1.conv.\2"),
    (rf"convs\.(\d+)\.conv\.{_P}", r"convs.\1.conv.\2"),
    (rf"convs\.(\d+)\.conv([12])\.{_P}", r"blocks.\1.conv\2.\3"),
    (rf"conv_embedding\.conv\.{_P}", r"embedding.conv.\1"),
    (rf"conv_logits\.{_P}", r"logits.\1"),
]
_GLBCTX_RULES: list[tuple[str, str]] = [
    (rf"convs\.(\d+)\.conv([12])\.{_P}", r"blocks.\1.conv\2.\3"),
    (rf"fc\.{_P}", r"classifier.\1"),
]
_TOP_RULES: list[tuple[str, str]] = [
    (r"backbone\.(.+)", r"backbone.\1"),
    (rf"neck\.lateral_convs\.(\d+)\.conv\.{_P}", r"neck.lateral.\1.\2"),
    (rf"neck\.fpn_convs\.(\d+)\.conv\.{_P}", r"neck.output.\1.\2"),
    (rf"rpn_head\.rpn_conv\.{_P}", r"rpn.conv.\1"),
    (rf"rpn_head\.rpn_cls\.{_P}", r"rpn.objectness.\1"),
    (rf"rpn_head\.rpn_reg\.{_P}", r"rpn.deltas.\1"),
    (rf"roi_head\.feat_relay_head\.fc\.{_P}", r"roi_heads.feature_relays.0.fc.\1"),
]
_SUBHEADS = [
    (r"roi_head\.bbox_head\.(?:(\d+)\.)?(.+)", "roi_heads.box_heads", _HEAD_RULES, True),
    (r"roi_head\.mask_head\.(?:(\d+)\.)?(.+)", "roi_heads.mask_heads", _MASK_RULES, True),
    (r"roi_head\.semantic_head\.(.+)", "roi_heads.semantic_head", _SEMANTIC_RULES, False),
    (r"roi_head\.glbctx_head\.(.+)", "roi_heads.global_context", _GLBCTX_RULES, False),
]


class UnmappedKeyError(KeyError):
    pass


def _apply(rules: list[tuple[str, str]], name: str) -> str | None:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, name):
            return re.sub(f"^{pattern}$", replacement, name)
    return None


def mmdet_to_ours(name: str) -> str:
    """Our parameter/buffer name for an MMDetection one; raises UnmappedKeyError for unknown names."""
    mapped = _apply(_TOP_RULES, name)
    if mapped is not None:
        return mapped
    for pattern, prefix, rules, indexed in _SUBHEADS:
        match = re.fullmatch(pattern, name)
        if not match:
            continue
        if indexed:
            stage, rest = match.group(1) or "0", match.group(2)
            inner = _apply(rules, rest)
            if inner is not None:
                return f"{prefix}.{stage}.{inner}"
        else:
            inner = _apply(rules, match.group(1))
            if inner is not None:
                return f"{prefix}.{inner}"
    raise UnmappedKeyError(f"no rule maps the MMDetection tensor name {name!r}")


# Inverse rules: (our pattern, MMDetection replacement)
_INV_HEAD_RULES: list[tuple[str, str]] = [
    (rf"fcs\.(\d+)\.{_P}", r"shared_fcs.\1.\2"),
    (rf"classifier\.{_P}", r"fc_cls.\1"),
    (rf"regressor\.{_P}", r"fc_reg.\1"),
]
_INV_MASK_RULES: list[tuple[str, str]] = [
    (rf"convs\.(\d+)\.conv\.{_P}", r"convs.\1.conv.\2"),
    (rf"blocks\.(\d+)\.conv([12])\.{_P}", r"convs.\1.conv\2.\3"),
    (rf"feature_flow\.conv\.{_P}", r"conv_res.conv.\1"),
    (rf"upsample\.{_P}", r"upsample.\1"),
    (rf"logits\.{_P}", r"conv_logits.\1"),
]
_INV_SEMANTIC_RULES: list[tuple[str, str]] = [
    (rf"lateral\.(\d+)\.conv\.{_P}", r"lateral_convs.\1.conv.\2"),
    (rf"convs\.(\d+)\.conv\.{_P}", r"convs.\1.conv.\2"),
    (rf"blocks\.(\d+)\.conv([12])\.{_P}", r"convs.\1.conv\2.\3"),
    (rf"embedding\.conv\.{_P}", r"conv_embedding.conv.\1"),
    (rf"logits\.{_P}", r"conv_logits.\1"),
]
_INV_GLBCTX_RULES: list[tuple[str, str]] = [
    (rf"blocks\.(\d+)\.conv([12])\.{_P}", r"convs.\1.conv\2.\3"),
    (rf"classifier\.{_P}", r"fc.\1"),
]
_INV_TOP_RULES: list[tuple[str, str]] = [
    (r"backbone\.(.+)", r"backbone.\1"),
    (rf"neck\.lateral\.(\d+)\.{_P}", r"neck.lateral_convs.\1.conv.\2"),
    (rf"neck\.output\.(\d+)\.{_P}", r"neck.fpn_convs.\1.conv.\2"),
    (rf"rpn\.conv\.{_P}", r"rpn_head.rpn_conv.\1"),
    (rf"rpn\.objectness\.{_P}", r"rpn_head.rpn_cls.\1"),
    (rf"rpn\.deltas\.{_P}", r"rpn_head.rpn_reg.\1"),
    (rf"roi_heads\.feature_relays\.0\.fc\.{_P}", r"roi_head.feat_relay_head.fc.\1"),
]


def ours_to_mmdet(name: str, *, box_stages: int, mask_heads: int) -> str:
    """MMDetection's name for one of our parameters/buffers (the inverse of `mmdet_to_ours`).

    `box_stages` / `mask_heads`: how many box / mask heads the model has; MMDetection indexes a head by
    stage only when there are several."""
    mapped = _apply(_INV_TOP_RULES, name)
    if mapped is not None:
        return mapped
    for pattern, prefix, rules, count in (
            (r"roi_heads\.box_heads\.(\d+)\.(.+)", "roi_head.bbox_head", _INV_HEAD_RULES, box_stages),
            (r"roi_heads\.mask_heads\.(\d+)\.(.+)", "roi_head.mask_head", _INV_MASK_RULES, mask_heads)):
        match = re.fullmatch(pattern, name)
        if match:
            inner = _apply(rules, match.group(2))
            if inner is not None:
                return f"{prefix}.{match.group(1)}.{inner}" if count > 1 else f"{prefix}.{inner}"
    for pattern, prefix, rules in ((r"roi_heads\.semantic_head\.(.+)", "roi_head.semantic_head", _INV_SEMANTIC_RULES),
                                   (r"roi_heads\.global_context\.(.+)", "roi_head.glbctx_head", _INV_GLBCTX_RULES)):
        match = re.fullmatch(pattern, name)
        if match:
            inner = _apply(rules, match.group(1))
            if inner is not None:
                return f"{prefix}.{inner}"
    raise UnmappedKeyError(f"no rule maps our tensor name {name!r} to an MMDetection one")
