"""The R-CNN part of the family: 1 or 3 box stages, mask branches placed by the sample-consistency
flag, optional feature relay, global context and semantic fusion.

How the flags shape the computation (paper Eq. 1-2, Fig. 2-3):
- sample_consistency="none": a mask branch per box stage, trained on that stage's positives; with
  mask_flow="htc" the mask sees the stage's *refined* boxes and the previous mask branch's features.
- "naive": the same number of 4-conv branches, all behind the last box stage (ensembled at test).
- "effective": one deep residual branch behind the last stage, loss weight sum(alpha).
- feature relay: per stage that has a mask branch (only the last one with sample consistency).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scnet.config import ModelConfig
from scnet.models import box_coder
from scnet.models.box_head import BoxHead
from scnet.models.feature_relay import FeatureRelay
from scnet.models.global_context import GlobalContextHead, add_context
from scnet.models.losses import box_regression_loss
from scnet.models.mask_head import MaskHead
from scnet.models.postprocess import multiclass_nms, paste_masks
from scnet.models.roi_features import boxes_to_rois, multilevel_roi_align, single_level_roi_align
from scnet.models.semantic_head import STRIDE as SEMANTIC_STRIDE
from scnet.models.semantic_head import SemanticHead
from scnet.models.step_record import SamplingContext
from scnet.models.targets import StageSamples, mask_targets, sample_stage

BOX_ROI_SIZE = 7
MASK_ROI_SIZE = 14
MASK_TARGET_SIZE = 28


class RoIHeads(nn.Module):
    def __init__(self, cfg: ModelConfig, num_levels: int) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.fpn_channels
        self.box_heads = nn.ModuleList(
            BoxHead(ch, BOX_ROI_SIZE, cfg.roi_fc_channels, cfg.num_classes, cfg.reg_class_agnostic)
            for _ in range(cfg.stages))
        effective = cfg.sample_consistency == "effective"
        htc = cfg.mask_flow == "htc"
        self.mask_heads = nn.ModuleList(
            MaskHead(cfg.mask_channels, cfg.mask_convs, cfg.num_classes, residual=effective,
                     feature_flow=htc and i > 0)
            for i in range(cfg.num_mask_heads))
        if cfg.mask_channels != ch:
            raise ValueError("mask_channels must equal fpn_channels (RoI features feed the mask branch directly)")
        self.feature_relays = nn.ModuleList(
            FeatureRelay(cfg.roi_fc_channels, cfg.mask_channels)
            for _ in range(self._num_relays())) if cfg.feature_relay else None
        self.semantic_head = SemanticHead(ch, num_levels, cfg.semantic_convs, cfg.num_semantic_classes,
                                          cfg.semantic_residual) if cfg.semantic else None
        self.global_context = GlobalContextHead(ch, cfg.glbctx_convs, cfg.num_classes) \
            if cfg.global_context else None

    def _num_relays(self) -> int:
        return 1 if self.cfg.sample_consistency != "none" else self.cfg.stages

    # ----------------------------------------------------------------- shared pieces
    def _context(self, features: list[torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                              torch.Tensor | None, torch.Tensor | None]:
        semantic_logits = semantic_feat = context_logits = context = None
        if self.semantic_head is not None:
            semantic_logits, semantic_feat = self.semantic_head(features)
            semantic_feat = semantic_feat.contiguous()  # RoIAlign reads the standard layout
        if self.global_context is not None:
            context_logits, context = self.global_context(features[-1])
        return semantic_logits, semantic_feat, context_logits, context

    @staticmethod
    def _semantic_rois(semantic_feat: torch.Tensor | None, rois: torch.Tensor) -> torch.Tensor | None:
        """The semantic embedding pooled at 14x14 per RoI (box features average it down to 7x7)."""
        if semantic_feat is None:
            return None
        return single_level_roi_align(semantic_feat, rois, MASK_ROI_SIZE, SEMANTIC_STRIDE)

    def _roi_features(self, features: list[torch.Tensor], rois: torch.Tensor, size: int,
                      semantic_feat: torch.Tensor | None, context: torch.Tensor | None,
                      semantic_rois: torch.Tensor | None = None) -> torch.Tensor:
        """RoI features at `size`, plus the pooled semantic embedding and the global context vector.
        `semantic_rois` passes `_semantic_rois(semantic_feat, rois)` in when the caller already has it."""
        x = multilevel_roi_align(features, rois, size)
        if semantic_rois is None:
            semantic_rois = self._semantic_rois(semantic_feat, rois)
        # x is a fresh buffer; at inference the sums can go into it (same values, less memory traffic)
        in_place = not torch.is_grad_enabled()
        if semantic_rois is not None:
            s = semantic_rois
            if s.shape[-1] != size:
                # MMDetection's adaptive average pooling; for 14 -> 7 it is exactly a 2x2 average
                s = F.avg_pool2d(s, 2) if s.shape[-1] == 2 * size else F.adaptive_avg_pool2d(s, size)
            x = x.add_(s) if in_place else x + s
        if context is not None:
            x = add_context(x, context, rois, in_place=in_place)
        return x

    def _relay(self, relay_index: int, shared: torch.Tensor) -> torch.Tensor | None:
        if self.feature_relays is None:
            return None
        return self.feature_relays[relay_index](shared)

    @staticmethod
    def _refine(rois: torch.Tensor, deltas: torch.Tensor, stds: tuple[float, ...],
                image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        boxes = torch.empty_like(rois[:, 1:])
        for i, hw in enumerate(image_sizes):
            index = rois[:, 0] == i
            boxes[index] = box_coder.decode(rois[index, 1:], deltas[index], stds, hw)
        return torch.cat([rois[:, :1], boxes], dim=1)

    # ----------------------------------------------------------------- training
    def loss(self, features: list[torch.Tensor], proposals: list[torch.Tensor], targets: list[dict],
             image_sizes: list[tuple[int, int]], semantic_targets: torch.Tensor | None,
             sampling: SamplingContext) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
        cfg = self.cfg
        losses: dict[str, torch.Tensor] = {}
        mask_ious: dict[int, torch.Tensor] = {}
        gt_boxes = [t["boxes"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        gt_masks = [t["masks"] for t in targets]
        semantic_logits, semantic_feat, context_logits, context = self._context(features)
        if semantic_logits is not None:
            if semantic_targets is None:
                raise ValueError("the model has a semantic branch (semantic=True) but the targets carry no "
                                 "'semantic_seg' map; give one per image or build with semantic=False")
            losses["semantic"] = cfg.semantic_weight * SemanticHead.loss(semantic_logits, semantic_targets)
        if context_logits is not None:
            losses["global_context"] = cfg.glbctx_weight * self.global_context.loss(context_logits, gt_labels)

        stage_proposals = proposals
        for stage in range(cfg.stages):
            weight = cfg.stage_loss_weights[stage]
            stds = cfg.bbox_target_stds[stage]
            samples = sample_stage(stage_proposals, gt_boxes, gt_labels, iou_thr=cfg.stage_iou_thresholds[stage],
                                   low_quality=cfg.rcnn_match_low_quality, num=cfg.rcnn_samples_per_image,
                                   pos_fraction=cfg.rcnn_positive_fraction, stds=stds,
                                   num_classes=cfg.num_classes, sampling=sampling, sampler_name=f"stage{stage}")
            box_feats = self._roi_features(features, samples.rois, BOX_ROI_SIZE, semantic_feat, context)
            logits, deltas, shared = self.box_heads[stage](box_feats)
            cls_loss, box_loss = self._box_losses(stage, logits, deltas, samples)
            sampling.record.accuracy[stage] = _accuracy(logits.detach(), samples.labels)
            losses[f"stage{stage}_cls"] = weight * cls_loss
            losses[f"stage{stage}_bbox"] = weight * box_loss
            refined = None
            if stage < cfg.stages - 1 or cfg.mask_flow == "htc":
                refined = self._refined_proposals(stage, samples, logits.detach(), deltas.detach(), image_sizes)
            if cfg.has_mask_per_stage:
                mask_samples, relay_input = samples, shared[samples.is_positive]
                if cfg.mask_flow == "htc":
                    mask_samples = sample_stage(
                        refined, gt_boxes, gt_labels, iou_thr=cfg.stage_iou_thresholds[stage],
                        low_quality=cfg.rcnn_match_low_quality, num=cfg.rcnn_samples_per_image,
                        pos_fraction=cfg.rcnn_positive_fraction, stds=stds, num_classes=cfg.num_classes,
                        sampling=sampling, sampler_name=f"stage{stage}")
                    relay_input = None
                losses[f"stage{stage}_mask"] = weight * self._mask_loss(
                    stage, features, mask_samples, gt_masks, semantic_feat, context, relay_input)
                mask_ious[stage] = mask_samples.pos_iou.detach()
            last_samples, last_shared = samples, shared
            if refined is not None:
                stage_proposals = refined

        if not cfg.has_mask_per_stage:
            last = cfg.stages - 1
            mask_ious[last] = last_samples.pos_iou.detach()
            relay_input = last_shared[last_samples.is_positive]
            if cfg.sample_consistency == "effective":
                losses["mask"] = cfg.mask_loss_weight * self._mask_loss(
                    0, features, last_samples, gt_masks, semantic_feat, context, relay_input, relay_index=0)
            else:
                for head in range(cfg.num_mask_heads):
                    losses[f"mask{head}"] = cfg.stage_loss_weights[head] * self._mask_loss(
                        head, features, last_samples, gt_masks, semantic_feat, context, relay_input,
                        relay_index=0)
        return losses, mask_ious

    def _box_losses(self, stage: int, logits: torch.Tensor, deltas: torch.Tensor,
                    samples: StageSamples) -> tuple[torch.Tensor, torch.Tensor]:
        cls_loss = F.cross_entropy(logits, samples.labels)
        pos = samples.is_positive
        if pos.any():
            pred = self.box_heads[stage].select_deltas(deltas[pos], samples.labels[pos])
            box_loss = box_regression_loss(pred, samples.box_targets, self.cfg.rcnn_bbox_loss, beta=1.0)
        else:
            box_loss = deltas.sum() * 0
        return cls_loss, box_loss / max(samples.rois.shape[0], 1)

    def _refined_proposals(self, stage: int, samples: StageSamples, logits: torch.Tensor, deltas: torch.Tensor,
                           image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """The next stage's proposals: every sampled RoI regressed by its class, ground truths removed."""
        labels = torch.where(samples.labels == self.cfg.num_classes, logits[:, :-1].argmax(1), samples.labels)
        chosen = self.box_heads[stage].select_deltas(deltas, labels)
        rois = self._refine(samples.rois, chosen, self.cfg.bbox_target_stds[stage], image_sizes)
        keep = ~samples.is_added_gt
        return [rois[keep & (rois[:, 0] == i), 1:] for i in range(len(image_sizes))]

    def _mask_loss(self, head: int, features: list[torch.Tensor], samples: StageSamples,
                   gt_masks: list[torch.Tensor], semantic_feat: torch.Tensor | None, context: torch.Tensor | None,
                   relay_input: torch.Tensor | None, relay_index: int | None = None) -> torch.Tensor:
        rois = samples.positive_rois
        if rois.shape[0] == 0:
            return sum(p.sum() for p in self.mask_heads[head].parameters()) * 0
        x = self._roi_features(features, rois, MASK_ROI_SIZE, semantic_feat, context)
        if relay_input is not None and self.feature_relays is not None:
            x = x + self._relay(head if relay_index is None else relay_index, relay_input)
        if self.cfg.mask_flow == "htc":
            previous = None
            for earlier in range(head):
                previous = self.mask_heads[earlier].features(x, previous)
            logits = self.mask_heads[head](x, previous)
        else:
            logits = self.mask_heads[head](x)
        labels = samples.positive_labels
        chosen = logits[torch.arange(labels.numel(), device=labels.device), labels]
        target = mask_targets(samples, gt_masks, MASK_TARGET_SIZE).to(chosen.dtype)
        return F.binary_cross_entropy_with_logits(chosen, target)

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                image_sizes: list[tuple[int, int]], image_metas: list[dict] | None) -> list[dict]:
        cfg = self.cfg
        _, semantic_feat, _, context = self._context(features)
        rois = boxes_to_rois(proposals).to(features[0].device)
        stage_logits = []
        for stage in range(cfg.stages):
            box_feats = self._roi_features(features, rois, BOX_ROI_SIZE, semantic_feat, context)
            logits, deltas, _ = self.box_heads[stage](box_feats)
            stage_logits.append(logits)
            if stage < cfg.stages - 1:
                chosen = self.box_heads[stage].select_deltas(deltas, logits[:, :-1].argmax(1))
                rois = self._refine(rois, chosen, cfg.bbox_target_stds[stage], image_sizes)
        scores = F.softmax(torch.stack(stage_logits).mean(0), dim=1)
        results = []
        for i, hw in enumerate(image_sizes):
            index = rois[:, 0] == i
            boxes = self._decode_all_classes(rois[index, 1:], deltas[index], hw)
            det_boxes, det_scores, det_labels = multiclass_nms(
                boxes, scores[index], score_thr=cfg.test_score_thr, iou_thr=cfg.test_nms_iou,
                max_per_image=cfg.test_max_per_image)
            results.append({"boxes": det_boxes, "scores": det_scores, "labels": det_labels})
        self._predict_masks(features, results, semantic_feat, context, image_sizes, image_metas)
        return results

    def _decode_all_classes(self, boxes: torch.Tensor, deltas: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        stds = self.cfg.bbox_target_stds[-1]
        if self.cfg.reg_class_agnostic:
            return box_coder.decode(boxes, deltas, stds, hw)
        n, c = boxes.shape[0], self.cfg.num_classes
        repeated = boxes.repeat_interleave(c, dim=0)
        return box_coder.decode(repeated, deltas.reshape(-1, 4), stds, hw).reshape(n, c * 4)

    def _mask_probabilities(self, features: list[torch.Tensor], rois: torch.Tensor,
                            semantic_feat: torch.Tensor | None, context: torch.Tensor | None) -> torch.Tensor:
        """Per-class mask probabilities [N, C, 28, 28] of the final boxes, ensembled over mask branches."""
        cfg = self.cfg
        semantic_rois = self._semantic_rois(semantic_feat, rois)  # shared by the mask and relay features
        x = self._roi_features(features, rois, MASK_ROI_SIZE, semantic_feat, context, semantic_rois)
        relays: list[torch.Tensor | None] = [None] * cfg.num_mask_heads
        if self.feature_relays is not None:
            box_feats = self._roi_features(features, rois, BOX_ROI_SIZE, semantic_feat, context, semantic_rois)
            if cfg.sample_consistency != "none":
                shared = self.box_heads[-1](box_feats)[2]
                relays = [self._relay(0, shared)] * cfg.num_mask_heads
            else:
                relays = [self._relay(s, self.box_heads[s](box_feats)[2]) for s in range(cfg.stages)]
        if cfg.mask_flow == "htc":
            # MMDetection 3.3.0's HTC runs the mask information flow through every stage but, at test
            # time, keeps only the last stage's prediction (its ensemble list is appended once, after
            # the loop); we reproduce that so that HTC numbers stay comparable with its model zoo.
            previous = None
            for head in self.mask_heads:
                previous = head.features(x, previous)
            return self.mask_heads[-1].predict(previous).sigmoid()
        probabilities = []
        for head, relay in zip(self.mask_heads, relays):
            inputs = x if relay is None else x + relay
            probabilities.append(head(inputs).sigmoid())
        if len(probabilities) == 1:
            return probabilities[0]
        return torch.stack(probabilities).mean(0)

    def _predict_masks(self, features: list[torch.Tensor], results: list[dict], semantic_feat: torch.Tensor | None,
                       context: torch.Tensor | None, image_sizes: list[tuple[int, int]],
                       image_metas: list[dict] | None) -> None:
        rois = boxes_to_rois([r["boxes"] for r in results]).to(features[0].device)
        probabilities = self._mask_probabilities(features, rois, semantic_feat, context) if rois.shape[0] else None
        start = 0
        for i, result in enumerate(results):
            count = result["boxes"].shape[0]
            hw = image_sizes[i]
            boxes = result["boxes"]
            if image_metas is not None:
                sx, sy = image_metas[i]["scale_factor"]
                boxes = boxes / boxes.new_tensor([sx, sy, sx, sy])
                hw = tuple(int(v) for v in image_metas[i]["ori_shape"][:2])
            result["boxes"] = boxes
            if count == 0:
                result["masks"] = torch.zeros(0, *hw, dtype=torch.bool, device=boxes.device)
                continue
            probs = probabilities[start:start + count]
            probs = probs[torch.arange(count, device=probs.device), result["labels"]]
            result["masks"] = paste_masks(probs, boxes, hw, self.cfg.mask_threshold)
            start += count


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Percent of RoIs whose top class (background included) is their label: MMDetection's `acc`.
    A tensor, so that training on a GPU does not wait for it."""
    if labels.numel() == 0:
        return logits.new_zeros(())
    return (logits.argmax(1) == labels).float().sum() * (100.0 / labels.numel())
