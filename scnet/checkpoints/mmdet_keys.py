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

# Each rule is a pair of templates (MMDetection's name, ours): `{i}` stands for a layer index, `{k}` for
# conv 1 or 2, `{p}` for weight or bias, `{rest}` for the remainder. Both directions are compiled from
# the same pairs, so the map and its inverse cannot drift apart.
_HEAD_RULES = [("shared_fcs.{i}.{p}", "fcs.{i}.{p}"), ("fc_cls.{p}", "classifier.{p}"),
               ("fc_reg.{p}", "regressor.{p}")]
_MASK_RULES = [("convs.{i}.conv.{p}", "convs.{i}.conv.{p}"), ("convs.{i}.conv{k}.{p}", "blocks.{i}.conv{k}.{p}"),
               ("conv_res.conv.{p}", "feature_flow.conv.{p}"), ("upsample.{p}", "upsample.{p}"),
               ("conv_logits.{p}", "logits.{p}")]
_SEMANTIC_RULES = [("lateral_convs.{i}.conv.{p}", "lateral.{i}.conv.{p}"), ("convs.{i}.conv.{p}", "convs.{i}.conv.{p}"),
                   ("convs.{i}.conv{k}.{p}", "blocks.{i}.conv{k}.{p}"),
                   ("conv_embedding.conv.{p}", "embedding.conv.{p}"), ("conv_logits.{p}", "logits.{p}")]
_GLBCTX_RULES = [("convs.{i}.conv{k}.{p}", "blocks.{i}.conv{k}.{p}"), ("fc.{p}", "classifier.{p}")]
_TOP_RULES = [("backbone.{rest}", "backbone.{rest}"),
              ("neck.lateral_convs.{i}.conv.{p}", "neck.lateral.{i}.{p}"),
              ("neck.fpn_convs.{i}.conv.{p}", "neck.output.{i}.{p}"),
              ("rpn_head.rpn_conv.{p}", "rpn.conv.{p}"), ("rpn_head.rpn_cls.{p}", "rpn.objectness.{p}"),
              ("rpn_head.rpn_reg.{p}", "rpn.deltas.{p}"),
              ("roi_head.feat_relay_head.fc.{p}", "roi_heads.feature_relays.0.fc.{p}")]
# (MMDetection's prefix, ours, rules, indexed by stage in ours; MMDetection indexes only lists of heads)
_SUBHEADS = [("roi_head.bbox_head", "roi_heads.box_heads", _HEAD_RULES, True),
             ("roi_head.mask_head", "roi_heads.mask_heads", _MASK_RULES, True),
             ("roi_head.semantic_head", "roi_heads.semantic_head", _SEMANTIC_RULES, False),
             ("roi_head.glbctx_head", "roi_heads.global_context", _GLBCTX_RULES, False)]

_SLOTS = {"i": r"\d+", "k": "[12]", "p": "weight|bias", "rest": ".+"}


def _pattern(template: str) -> str:
    parts = re.split(r"\{(\w+)\}", template)  # literal, slot, literal, slot, ...
    return "".join(re.escape(part) if n % 2 == 0 else f"(?P<{part}>{_SLOTS[part]})" for n, part in enumerate(parts))


def _compile(rules: list[tuple[str, str]], inverse: bool) -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(_pattern(theirs if not inverse else ours)), ours if not inverse else theirs)
            for theirs, ours in rules]


def _apply(rules: list[tuple[re.Pattern[str], str]], name: str) -> str | None:
    for pattern, template in rules:
        match = pattern.fullmatch(name)
        if match:
            return template.format(**match.groupdict())
    return None


_FORWARD = {id(rules): _compile(rules, inverse=False) for rules in (_TOP_RULES, *(s[2] for s in _SUBHEADS))}
_INVERSE = {id(rules): _compile(rules, inverse=True) for rules in (_TOP_RULES, *(s[2] for s in _SUBHEADS))}


class UnmappedKeyError(KeyError):
    pass


def mmdet_to_ours(name: str) -> str:
    """Our parameter/buffer name for an MMDetection one; raises UnmappedKeyError for unknown names."""
    mapped = _apply(_FORWARD[id(_TOP_RULES)], name)
    if mapped is not None:
        return mapped
    for theirs, ours, rules, indexed in _SUBHEADS:
        match = re.fullmatch(re.escape(theirs) + (r"\.(?:(\d+)\.)?(.+)" if indexed else r"\.()(.+)"), name)
        inner = _apply(_FORWARD[id(rules)], match.group(2)) if match else None
        if inner is not None:
            return f"{ours}.{match.group(1) or '0'}.{inner}" if indexed else f"{ours}.{inner}"
    raise UnmappedKeyError(f"no rule maps the MMDetection tensor name {name!r}")


def ours_to_mmdet(name: str, *, box_stages: int, mask_heads: int) -> str:
    """MMDetection's name for one of our parameters/buffers (the inverse of `mmdet_to_ours`).

    `box_stages` / `mask_heads`: how many box / mask heads the model has; MMDetection indexes a head by
    stage only when there are several."""
    mapped = _apply(_INVERSE[id(_TOP_RULES)], name)
    if mapped is not None:
        return mapped
    heads = {"roi_head.bbox_head": box_stages, "roi_head.mask_head": mask_heads}
    for theirs, ours, rules, indexed in _SUBHEADS:
        match = re.fullmatch(re.escape(ours) + (r"\.(\d+)\.(.+)" if indexed else r"\.()(.+)"), name)
        inner = _apply(_INVERSE[id(rules)], match.group(2)) if match else None
        if inner is not None:
            several = indexed and heads[theirs] > 1
            return f"{theirs}.{match.group(1)}.{inner}" if several else f"{theirs}.{inner}"
    raise UnmappedKeyError(f"no rule maps our tensor name {name!r} to an MMDetection one")
