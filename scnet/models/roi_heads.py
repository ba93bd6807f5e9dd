"""The R-CNN part of the family: 1 or 3 box stages, the mask branches of the sample-consistency plan
(`scnet.models.mask_plan`), and the feature relay, global context and semantic features they use.

Where the paper's components act: the cascade here, its training targets in `targets` and
`sampling`; sample consistency in `mask_plan` (which stage feeds which mask branch, with which loss
weight); the semantic branch (`semantic_head`) and global context (`global_context`) are added to every
RoI feature in `_roi_features`; feature relay (`feature_relay`) to a mask branch's input in
`_mask_loss` and `_mask_probabilities`.
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
from scnet.models.mask_plan import MaskBranch, build_mask_plan
from scnet.models.postprocess import multiclass_nms, paste_masks
from scnet.models.roi_features import (LevelSplit, boxes_to_rois, image_blocks, multilevel_roi_align,
                                       single_level_roi_align, split_by_level)
from scnet.models.semantic_head import STRIDE as SEMANTIC_STRIDE
from scnet.models.semantic_head import SemanticHead
from scnet.models.step_record import SamplingContext
from scnet.models.targets import StageSampler, StageSamples, mask_targets

BOX_ROI_SIZE = 7
MASK_ROI_SIZE = 14
MASK_TARGET_SIZE = 28


class RoIHeads(nn.Module):
    def __init__(self, cfg: ModelConfig, num_levels: int) -> None:
        super().__init__()
        if cfg.mask_channels != cfg.fpn_channels:
            raise ValueError("mask_channels must equal fpn_channels (RoI features feed the mask branch directly)")
        self.cfg = cfg
        self.plan = build_mask_plan(cfg)
        ch = cfg.fpn_channels
        self.samplers = tuple(
            StageSampler(name=f"stage{t}", iou_thr=cfg.stage_iou_thresholds[t], low_quality=cfg.rcnn_match_low_quality,
                         num=cfg.rcnn_samples_per_image, pos_fraction=cfg.rcnn_positive_fraction,
                         stds=cfg.bbox_target_stds[t], num_classes=cfg.num_classes)
            for t in range(cfg.stages))
        self.box_heads = nn.ModuleList(
            BoxHead(in_channels=ch, roi_size=BOX_ROI_SIZE, fc_channels=cfg.roi_fc_channels,
                    num_classes=cfg.num_classes, class_agnostic=cfg.reg_class_agnostic)
            for _ in range(cfg.stages))
        self.mask_heads = nn.ModuleList(
            MaskHead(channels=cfg.mask_channels, num_convs=cfg.mask_convs, num_classes=cfg.num_classes,
                     residual=branch.deep, feature_flow=branch.flow_in)
            for branch in self.plan.branches)
        self.feature_relays = nn.ModuleList(
            FeatureRelay(fc_channels=cfg.roi_fc_channels, mask_channels=cfg.mask_channels)
            for _ in range(self.plan.num_relays)) if self.plan.num_relays else None
        self.semantic_head = SemanticHead(
            channels=ch, num_levels=num_levels, num_convs=cfg.semantic_convs, num_classes=cfg.num_semantic_classes,
            residual=cfg.semantic_residual) if cfg.semantic else None
        self.global_context = GlobalContextHead(channels=ch, num_convs=cfg.glbctx_convs, num_classes=cfg.num_classes) \
            if cfg.global_context else None

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
                      semantic_rois: torch.Tensor | None = None, split: LevelSplit | None = None) -> torch.Tensor:
        """RoI features at `size`, plus the pooled semantic embedding and the global context vector.
        `semantic_rois` (`_semantic_rois(semantic_feat, rois)`) and `split` (`split_by_level(rois)`) pass
        in what the caller already has for these RoIs."""
        x = multilevel_roi_align(features, rois, size, split)
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

    @staticmethod
    def _refine(rois: torch.Tensor, deltas: torch.Tensor, stds: tuple[float, ...], image_sizes: list[tuple[int, int]],
                blocks: list[tuple[int, int]]) -> torch.Tensor:
        """The RoIs (one block of rows per image) regressed by `deltas` and clipped to their images."""
        boxes = box_coder.clip_blocks_(box_coder.decode(rois[:, 1:], deltas, stds, None), blocks, image_sizes)
        return torch.cat([rois[:, :1], boxes], dim=1)

    # ----------------------------------------------------------------- training
    def loss(self, features: list[torch.Tensor], proposals: list[torch.Tensor], targets: list[dict],
             image_sizes: list[tuple[int, int]], semantic_targets: torch.Tensor | None,
             sampling: SamplingContext) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
        """Weighted losses, and the IoUs of the positives that reached a mask branch per feeding stage
        (Figure 1). Each stage's mask branches train as soon as the stage is done (as in MMDetection,
        and in the order its random draws follow)."""
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
        for stage, sampler in enumerate(self.samplers):
            weight = cfg.stage_loss_weights[stage]
            samples = sampler(stage_proposals, gt_boxes, gt_labels, sampling)
            box_feats = self._roi_features(features, samples.rois, BOX_ROI_SIZE, semantic_feat, context)
            logits, deltas, shared = self.box_heads[stage](box_feats)
            cls_loss, box_loss = self._box_losses(stage, logits, deltas, samples)
            sampling.record.accuracy[stage] = _accuracy(logits.detach(), samples.labels)
            losses[f"stage{stage}_cls"] = weight * cls_loss
            losses[f"stage{stage}_bbox"] = weight * box_loss
            if stage < cfg.stages - 1 or self.plan.resample_refined:
                stage_proposals = self._refined_proposals(stage, samples, logits.detach(), deltas.detach(),
                                                          image_sizes)
            branches = self.plan.fed_by(stage)
            if not branches:
                continue
            mask_samples = sampler(stage_proposals, gt_boxes, gt_labels, sampling) if self.plan.resample_refined \
                else samples
            relay_input = shared[samples.pos_rows] if any(b.relay is not None for b in branches) else None
            for branch in branches:
                losses[branch.loss_name] = branch.loss_weight * self._mask_loss(
                    branch, features, mask_samples, gt_masks, semantic_feat, context, relay_input)
            mask_ious[stage] = mask_samples.pos_iou.detach()
        return losses, mask_ious

    def _box_losses(self, stage: int, logits: torch.Tensor, deltas: torch.Tensor,
                    samples: StageSamples) -> tuple[torch.Tensor, torch.Tensor]:
        cls_loss = F.cross_entropy(logits, samples.labels)
        if samples.num_positives:
            pos = samples.pos_rows
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
        blocks = samples.blocks
        rois = self._refine(samples.rois, chosen, self.cfg.bbox_target_stds[stage], image_sizes, blocks)
        # each image's block starts with the ground truths it took as positives
        return [rois[start + gts_taken:stop, 1:] for (start, stop), (_, _, gts_taken) in zip(blocks, samples.counts)]

    def _mask_loss(self, branch: MaskBranch, features: list[torch.Tensor], samples: StageSamples,
                   gt_masks: list[torch.Tensor], semantic_feat: torch.Tensor | None, context: torch.Tensor | None,
                   relay_input: torch.Tensor | None) -> torch.Tensor:
        """The unweighted mask BCE of one branch on its stage's positives; without positives a zero that
        still holds the branch's parameters (its head, relay and information flow) in the graph, as
        MMDetection's zero-weighted terms do, so that DistributedDataParallel finds no unused parameter."""
        if samples.num_positives == 0:
            return self._zero_loss(branch)
        rois = samples.positive_rois
        x = self._roi_features(features, rois, MASK_ROI_SIZE, semantic_feat, context)
        if branch.relay is not None:
            x = x + self.feature_relays[branch.relay](relay_input)
        logits = self._branch_logits(branch, x)
        labels = samples.positive_labels
        chosen = logits[torch.arange(labels.numel(), device=labels.device), labels]
        target = mask_targets(samples, gt_masks, MASK_TARGET_SIZE).to(chosen.dtype)
        return F.binary_cross_entropy_with_logits(chosen, target)

    def _zero_loss(self, branch: MaskBranch) -> torch.Tensor:
        modules = [self.mask_heads[b.head] for b in self.plan.branches[:branch.head + 1]] if branch.flow_in \
            else [self.mask_heads[branch.head]]
        if branch.relay is not None:
            modules.append(self.feature_relays[branch.relay])
        return sum(p.sum() for module in modules for p in module.parameters()) * 0

    def _branch_logits(self, branch: MaskBranch, x: torch.Tensor) -> torch.Tensor:
        """Per-class mask logits of one branch from its input features (RoI features, plus the relay),
        with HTC's information flow through the earlier branches."""
        previous = None
        if branch.flow_in:
            for earlier in self.plan.branches[:branch.head]:
                previous = self.mask_heads[earlier.head].features(x, previous)
        return self.mask_heads[branch.head](x, previous)

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                image_sizes: list[tuple[int, int]], image_metas: list[dict] | None) -> list[dict]:
        cfg = self.cfg
        _, semantic_feat, _, context = self._context(features)
        rois = boxes_to_rois(proposals).to(features[0].device)
        blocks = image_blocks([p.shape[0] for p in proposals])
        stage_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (logits, deltas) per stage
        for stage, head in enumerate(self.box_heads):
            if stage_outputs:  # the previous stage's boxes, regressed by its best class
                logits, deltas = stage_outputs[-1]
                chosen = self.box_heads[stage - 1].select_deltas(deltas, logits[:, :-1].argmax(1))
                rois = self._refine(rois, chosen, cfg.bbox_target_stds[stage - 1], image_sizes, blocks)
            logits, deltas, _ = head(self._roi_features(features, rois, BOX_ROI_SIZE, semantic_feat, context))
            stage_outputs.append((logits, deltas))
        scores = F.softmax(torch.stack([logits for logits, _ in stage_outputs]).mean(0), dim=1)
        boxes = self._decode_all_classes(rois[:, 1:], stage_outputs[-1][1], image_sizes, blocks)
        results = []
        for start, stop in blocks:
            det_boxes, det_scores, det_labels = multiclass_nms(
                boxes[start:stop], scores[start:stop], score_thr=cfg.test_score_thr, iou_thr=cfg.test_nms_iou,
                max_per_image=cfg.test_max_per_image)
            results.append({"boxes": det_boxes, "scores": det_scores, "labels": det_labels})
        self._predict_masks(features, results, semantic_feat, context, image_sizes, image_metas)
        return results

    def _decode_all_classes(self, boxes: torch.Tensor, deltas: torch.Tensor, image_sizes: list[tuple[int, int]],
                            blocks: list[tuple[int, int]]) -> torch.Tensor:
        """Every RoI's box for every class ([N, 4] class-agnostic, else [N, C*4]), all images at once."""
        stds = self.cfg.bbox_target_stds[-1]
        if not self.cfg.reg_class_agnostic:
            n, c = boxes.shape[0], self.cfg.num_classes
            boxes = box_coder.decode(boxes.repeat_interleave(c, dim=0), deltas.reshape(-1, 4), stds, None)
            return box_coder.clip_blocks_(boxes.reshape(n, c * 4), blocks, image_sizes)
        return box_coder.clip_blocks_(box_coder.decode(boxes, deltas, stds, None), blocks, image_sizes)

    def _mask_probabilities(self, features: list[torch.Tensor], rois: torch.Tensor,
                            semantic_feat: torch.Tensor | None, context: torch.Tensor | None) -> torch.Tensor:
        """Per-class mask probabilities [N, C, 28, 28] of the final boxes: the mean over the plan's test
        branches. A relay's box features come from re-running its feeding stage's box head on the final
        boxes (as SCNet does)."""
        # shared by the mask and relay features
        semantic_rois, split = self._semantic_rois(semantic_feat, rois), split_by_level(rois)
        x = self._roi_features(features, rois, MASK_ROI_SIZE, semantic_feat, context, semantic_rois, split)
        branches = self.plan.test_branches
        relays: dict[int, torch.Tensor] = {}  # relay index -> its output (naive SC shares one between branches)
        if any(b.relay is not None for b in branches):
            box_feats = self._roi_features(features, rois, BOX_ROI_SIZE, semantic_feat, context, semantic_rois, split)
            for b in branches:
                if b.relay is not None and b.relay not in relays:
                    relays[b.relay] = self.feature_relays[b.relay](self.box_heads[b.stage](box_feats)[2])
        probabilities = [self._branch_logits(b, x if b.relay is None else x + relays[b.relay]).sigmoid()
                         for b in branches]
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
                scale = boxes.new_full((4,), sx)
                scale[1::2] = sy  # made on the device: a tensor from a list would be a host-to-device copy
                boxes = boxes / scale
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
