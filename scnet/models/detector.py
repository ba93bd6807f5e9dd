"""The detector: input normalisation and padding, ResNet-FPN, RPN and the R-CNN heads."""
from __future__ import annotations

import torch
from torch import nn

from scnet.config import ModelConfig
from scnet.models.backbone import ResNetTrunk
from scnet.models.fpn import FPN
from scnet.models.init import init_detector
from scnet.models.roi_heads import RoIHeads
from scnet.models.rpn import RPN
from scnet.models.sampling import SAMPLING_MODES
from scnet.models.step_record import SamplingContext, StepRecord

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32


class Detector(nn.Module):
    """`model(images, targets)` in train mode returns weighted losses; `model(images)` in eval mode
    returns detections. See docs/interfaces.md for the exact contract."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = ResNetTrunk(cfg.backbone, frozen_stages=cfg.frozen_stages, norm_eval=cfg.norm_eval)
        self.neck = FPN(self.backbone.out_channels, cfg.fpn_channels)
        self.rpn = RPN(cfg.fpn_channels, bbox_loss=cfg.rpn_bbox_loss, train_pre_nms=cfg.rpn_train_pre_nms,
                       train_post_nms=cfg.rpn_train_post_nms, test_pre_nms=cfg.rpn_test_pre_nms,
                       test_post_nms=cfg.rpn_test_post_nms, allowed_border=cfg.rpn_allowed_border,
                       size_divisor=SIZE_DIVISOR)
        self.roi_heads = RoIHeads(cfg, num_levels=5)
        init_detector(self)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(3, 1, 1), persistent=False)
        self.mask_sample_ious: dict[int, torch.Tensor] = {}
        self.generator: torch.Generator | None = None  # sampling RNG; the trainer may seed its own
        # "random": MMDetection's RandomSampler; "all": every sampler takes every candidate (deterministic,
        # for comparing one step with MMDetection's, see scnet.train_step)
        self.sampling = "random"
        self.last_step: StepRecord | None = None  # sample counts and accuracies of the latest training forward

    def batch(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise each image (uint8 or float, 0..255) in float32 on its device, then zero-pad the
        batch to a common size divisible by 32: MMDetection's data preprocessor, in its order."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        height = -(-max(h for h, _ in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
        width = -(-max(w for _, w in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
        batch = self.pixel_mean.new_zeros(len(images), 3, height, width)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[-2], : im.shape[-1]] = (im.to(batch.dtype) - self.pixel_mean) / self.pixel_std
        return batch, sizes

    @staticmethod
    def _pad_semantic(targets: list[dict], shape: tuple[int, int]) -> torch.Tensor | None:
        """The maps (uint8 from the data pipeline, or any integer type) as one int64 batch, 255 padding."""
        if not targets or "semantic_seg" not in targets[0] or targets[0]["semantic_seg"] is None:
            return None
        maps = [t["semantic_seg"] for t in targets]
        out = torch.full((len(maps), *shape), 255, dtype=torch.long, device=maps[0].device)
        for i, m in enumerate(maps):
            out[i, : m.shape[-2], : m.shape[-1]] = m
        return out

    def features(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """FPN levels P2-P6, in the standard memory layout.

        Channels-last convolutions are about 1.4x faster on CPU here, but their different accumulation
        order moves boxes by ~0.1 px and flips thin mask pixels, enough to fail the MMDetection
        equivalence rule; equivalence wins.
        """
        return self.neck(self.backbone(batch))

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None,
                image_metas: list[dict] | None = None, proposals: list[torch.Tensor] | None = None):
        """`proposals` (training only): boxes [K, 4] per image in input pixels that replace the RPN's;
        the RPN then neither runs nor has losses (MMDetection's `given_proposals`)."""
        if not isinstance(images, (list, tuple)) or not images:
            raise TypeError("images must be a non-empty list of [3, H, W] tensors (RGB, 0..255, uint8 or float)")
        batch, sizes = self.batch(list(images))
        features = self.features(batch)
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets (boxes, labels, masks per image); "
                                 "call model.eval() for inference")
            return self._training_losses(features, batch, sizes, targets, proposals)
        if proposals is not None:
            raise ValueError("given proposals are a training-step diagnostic; inference uses the RPN's")
        logits, deltas = self.rpn.head(features)
        anchors = self.rpn.anchors(features)
        proposals = self.rpn.proposals(logits, deltas, anchors, sizes)
        return self.roi_heads.predict(features, proposals, sizes, image_metas)

    def _training_losses(self, features: list[torch.Tensor], batch: torch.Tensor, sizes: list[tuple[int, int]],
                         targets: list[dict], proposals: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"model.sampling={self.sampling!r} must be one of {SAMPLING_MODES}")
        sampling = SamplingContext(self.generator, take_all=self.sampling == "all")
        targets = [self._on_device(t, batch.device) for t in targets]
        losses: dict[str, torch.Tensor] = {}
        if proposals is None:
            logits, deltas = self.rpn.head(features)
            anchors = self.rpn.anchors(features)
            feature_sizes = [tuple(f.shape[-2:]) for f in features]
            losses.update(self.rpn.loss(logits, deltas, anchors, feature_sizes, [t["boxes"] for t in targets],
                                        sizes, sampling))
            proposals = self.rpn.proposals(logits, deltas, anchors, sizes)
        else:
            proposals = [p[:, :4].to(batch.device, torch.float32) for p in proposals]
        sampling.record.proposals = [p.detach() for p in proposals]
        semantic = self._pad_semantic(targets, tuple(batch.shape[-2:]))
        roi_losses, ious = self.roi_heads.loss(features, proposals, targets, sizes, semantic, sampling)
        losses.update(roi_losses)
        self.mask_sample_ious = ious
        self.last_step = sampling.record
        return losses

    @staticmethod
    def _on_device(target: dict, device: torch.device) -> dict:
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}
