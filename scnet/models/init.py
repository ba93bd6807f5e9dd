"""MMDetection's weight initialisation for the parts a pretrained backbone does not cover.

With PyTorch's defaults the mask branch barely learns in short runs; these are the initialisers of
MMDetection 3.3.0's FPN (xavier-uniform, zero bias), RPN, box, mask, semantic, feature-relay and
global-context heads.

The FPN follows `config.fpn_init`: xavier-uniform for the MMDetection presets; the smoke presets keep
PyTorch's default, because their randomly initialised ResNet-18 with trainable BN learns much worse under
xavier (overfitting two synthetic images for 60 iterations at lr 0.01: box/mask AP 29/22 against 51/58;
at lr 0.02 without clipping it diverges within 20 iterations).
"""
from __future__ import annotations

from torch import nn

from scnet.models.blocks import ConvReLU


def _kaiming(module: nn.Module) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _xavier(module: nn.Module) -> None:
    nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _normal(module: nn.Module, std: float) -> None:
    nn.init.normal_(module.weight, 0.0, std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_detector(detector: nn.Module) -> None:
    if detector.config.fpn_init == "xavier":
        for conv in (*detector.neck.lateral, *detector.neck.output):
            _xavier(conv)
    for conv in (detector.rpn.conv, detector.rpn.objectness, detector.rpn.deltas):
        _normal(conv, 0.01)
    heads = detector.roi_heads
    for box_head in heads.box_heads:
        for fc in box_head.fcs:
            _xavier(fc)
        _normal(box_head.classifier, 0.01)
        _normal(box_head.regressor, 0.001)
    for mask_head in heads.mask_heads:
        for module in mask_head.modules():
            if isinstance(module, ConvReLU) or module is mask_head.upsample or module is mask_head.logits:
                _kaiming(module.conv if isinstance(module, ConvReLU) else module)
    if heads.semantic_head is not None:
        for module in heads.semantic_head.modules():
            if isinstance(module, ConvReLU):
                _kaiming(module.conv)
        _kaiming(heads.semantic_head.logits)
    if heads.feature_relays is not None:
        for relay in heads.feature_relays:
            _kaiming(relay.fc)
    if heads.global_context is not None:
        _normal(heads.global_context.classifier, 0.01)
