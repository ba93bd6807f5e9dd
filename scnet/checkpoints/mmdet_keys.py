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
