"""Every flag of the model family (design.md section 2) in train and eval mode, alone and in the
combinations the paper's Tables 1-5 need, on the `_r18_smoke` presets; and the loss weighting of
Eq. 3-4 (alpha per stage, beta = sum(alpha) for effective sample consistency, gamma, lambda).

What each case is expected to contain is derived here from the paper's definitions of the four
architectures (`ARCH` below) plus the case's flags, not from `scnet.presets`, so a preset or flag
that resolves to the wrong network fails the test.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import scnet
from scnet.models.mask_plan import build_mask_plan

NUM_CLASSES = 3
NUM_SEMANTIC = 4  # 0 = background, label k -> k + 1
# Random-init smoke models score every box of every class above 0.001; keep 10 detections per image
# (test-time only) so that the mask heads run on few RoIs and the file stays fast on 2 CPU cores.
EVAL_FLAGS = dict(test_max_per_image=10)

# The paper's definition of each architecture (what its preset must resolve to).
ARCH = {
    "mask_rcnn": dict(stages=1, mask_flow="cascade", sample_consistency="none", feature_relay=False,
                      global_context=False, semantic=False),
    "cascade_mask_rcnn": dict(stages=3, mask_flow="cascade", sample_consistency="none", feature_relay=False,
                              global_context=False, semantic=False),
    "htc": dict(stages=3, mask_flow="htc", sample_consistency="none", feature_relay=False,
                global_context=False, semantic=True),
    "scnet": dict(stages=3, mask_flow="cascade", sample_consistency="effective", feature_relay=True,
                  global_context=True, semantic=True),
}
ALPHA = {1: (1.0,), 3: (1.0, 0.5, 0.25)}
IOU_THRESHOLDS = {1: (0.5,), 3: (0.5, 0.6, 0.7)}

SEM = dict(semantic=True)  # Tables 1-3: the semantic branch is on for every cascade model
CASES = [
    # the four architectures of Table 1
    ("arch_mask_rcnn", "mask_rcnn", {}),
    ("arch_cascade_mask_rcnn", "cascade_mask_rcnn", {}),
    ("arch_htc", "htc", {}),
    ("arch_scnet", "scnet", {}),
    # Table 2: Cascade Mask R-CNN + semantic, components added alone and combined
    ("t2_baseline", "cascade_mask_rcnn", dict(SEM)),
    ("t2_sc", "cascade_mask_rcnn", dict(SEM, sample_consistency="effective")),
    ("t2_fr", "cascade_mask_rcnn", dict(SEM, feature_relay=True)),  # also Table 4, cascade row Y
    ("t2_gc", "cascade_mask_rcnn", dict(SEM, global_context=True)),
    ("t2_sc_fr", "cascade_mask_rcnn", dict(SEM, sample_consistency="effective", feature_relay=True)),
    # (the last row, all components, resolves to the scnet preset: arch_scnet; see test_model_config)
    # Table 3: naive sample consistency (effective is t2_sc)
    ("t3_naive", "cascade_mask_rcnn", dict(SEM, sample_consistency="naive")),
    # Table 4: feature relay on Mask R-CNN (cascade: t2_fr)
    ("t4_mask_rcnn_fr", "mask_rcnn", dict(feature_relay=True)),
    # Table 5: lambda = None (branch absent) and 0 (branch present, no loss); 1, 2, 3, 5 are trained in
    # test_glbctx_weight_scales_the_multi_label_loss (3 is the scnet preset above)
    ("t5_no_gc", "scnet", dict(global_context=False)),
    ("t5_gc_weight0", "scnet", dict(glbctx_weight=0.0)),
    # each flag alone (no semantic branch), and the remaining combinations the flags allow
    ("alone_sc_effective", "cascade_mask_rcnn", dict(sample_consistency="effective")),
    ("alone_sc_naive", "cascade_mask_rcnn", dict(sample_consistency="naive")),
    ("alone_fr", "cascade_mask_rcnn", dict(feature_relay=True)),
    ("alone_gc", "cascade_mask_rcnn", dict(global_context=True)),
    ("naive_fr", "cascade_mask_rcnn", dict(SEM, sample_consistency="naive", feature_relay=True)),
    ("mask_rcnn_sem_fr_gc", "mask_rcnn", dict(SEM, feature_relay=True, global_context=True)),
    ("htc_gc", "htc", dict(global_context=True)),
]
CASE_IDS = [c[0] for c in CASES]
# The four architectures run the full checks (a batch of two differently sized images in training,
# rescaled inference); the other cases train on one image and skip the rescaling comparison, which
# does not depend on any flag, to keep the file fast on a shared 2-core machine.
FULL = {name for name in CASE_IDS if name.startswith("arch_")}


# ------------------------------------------------------------------------------------------- helpers

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a shared 2-core machine they only add
    contention (the CPU time of this file drops by more than half)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _expected(arch: str, flags: dict) -> dict:
    spec = dict(ARCH[arch])
    spec.update({k: v for k, v in flags.items() if k in spec})
    spec["glbctx_weight"] = flags.get("glbctx_weight", 3.0)
    return spec


def _build(arch: str, flags: dict, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return scnet.build_model(f"{arch}_r18_smoke", num_classes=NUM_CLASSES, num_semantic_classes=NUM_SEMANTIC,
                             **flags, **extra)


def _image_and_target(generator: torch.Generator, height: int, width: int, boxes: list[list[float]],
                      labels: list[int]) -> tuple[torch.Tensor, dict]:
    image = torch.rand(3, height, width, generator=generator) * 60
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    semantic = torch.zeros(height, width, dtype=torch.int64)
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    for k, ((x0, y0, x1, y1), label) in enumerate(zip(boxes, labels)):
        # an ellipse filling the box: the mask is not the box, so mask targets are not all ones
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        masks[k][inside] = 1
        semantic[inside] = label + 1
        image[:, inside] = torch.tensor([60.0, 120.0, 200.0])[:, None] * (label + 1) / 3 + 40
    semantic[:, :4] = 255  # an ignored band
    target = dict(boxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor(labels, dtype=torch.int64),
                  masks=masks, semantic_seg=semantic)
    return image, target


def _batch(seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    """Two images of different sizes (the batch is padded), 3 and 1 objects, every class present."""
    g = torch.Generator().manual_seed(seed)
    a = _image_and_target(g, 96, 128, [[16.0, 16.0, 80.0, 80.0], [70.0, 8.0, 122.0, 60.0],
                                       [8.0, 60.0, 48.0, 92.0]], [0, 2, 1])
    b = _image_and_target(g, 64, 96, [[20.0, 8.0, 84.0, 56.0]], [2])
    return [a[0], b[0]], [a[1], b[1]]


def _train_losses(model, seed: int = 0, num_images: int = 2) -> dict[str, torch.Tensor]:
    model.train()
    images, targets = _batch()
    images, targets = images[:num_images], targets[:num_images]
    torch.manual_seed(seed)  # R-CNN and RPN sampling draw from the global generator
    return model(images, targets)


def _expected_loss_names(spec: dict) -> set[str]:
    names = {"rpn_cls", "rpn_bbox"}
    for k in range(spec["stages"]):
        names |= {f"stage{k}_cls", f"stage{k}_bbox"}
    if spec["sample_consistency"] == "none":
        names |= {f"stage{k}_mask" for k in range(spec["stages"])}
    elif spec["sample_consistency"] == "effective":
        names.add("mask")
    else:
        names |= {f"mask{k}" for k in range(spec["stages"])}
    if spec["semantic"]:
        names.add("semantic")
    if spec["global_context"]:
        names.add("global_context")
    return names


def _num_mask_heads(spec: dict) -> int:
    return 1 if spec["sample_consistency"] == "effective" else spec["stages"]


def _num_relays(spec: dict) -> int:
    if not spec["feature_relay"]:
        return 0
    return spec["stages"] if spec["sample_consistency"] == "none" else 1


def _nonzero(param: torch.nn.Parameter) -> bool:
    return param.grad is not None and bool(param.grad.abs().sum() > 0)


def _check_structure(model, spec: dict) -> None:
    """The built network has exactly the branches the flags ask for."""
    cfg = model.config
    for key in ("stages", "mask_flow", "sample_consistency", "feature_relay", "global_context", "semantic"):
        assert getattr(cfg, key) == spec[key], key
    assert cfg.num_classes == NUM_CLASSES
    assert tuple(cfg.stage_loss_weights) == ALPHA[spec["stages"]]
    heads = model.roi_heads
    assert len(heads.box_heads) == spec["stages"]
    assert len(heads.mask_heads) == _num_mask_heads(spec)
    assert (heads.feature_relays is None) == (not spec["feature_relay"])
    if spec["feature_relay"]:
        assert len(heads.feature_relays) == _num_relays(spec)
    assert (heads.semantic_head is None) == (not spec["semantic"])
    assert (heads.global_context is None) == (not spec["global_context"])
    if spec["global_context"]:
        assert heads.global_context.classifier.out_features == NUM_CLASSES
    if spec["semantic"]:
        assert heads.semantic_head.logits.out_channels == NUM_SEMANTIC
    for i, head in enumerate(heads.mask_heads):
        assert head.logits.out_channels == NUM_CLASSES
        # effective SC: one deep branch of 12 convs as 6 residual blocks of two
        if spec["sample_consistency"] == "effective":
            assert len(head.blocks) == 6 and not hasattr(head, "convs")
        else:
            assert len(head.convs) == 4 and not hasattr(head, "blocks")
        # HTC's mask information flow enters every mask branch after the first
        assert (head.feature_flow is not None) == (spec["mask_flow"] == "htc" and i > 0)


# -------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("name,arch,flags", CASES, ids=CASE_IDS)
def test_training_forward_losses_gradients_and_sample_ious(name, arch, flags):
    spec = _expected(arch, flags)
    model = _build(arch, flags)
    _check_structure(model, spec)
    losses = _train_losses(model, num_images=2 if name in FULL else 1)

    assert set(losses) == _expected_loss_names(spec)
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        assert value.requires_grad, key
        if key == "global_context" and spec["glbctx_weight"] == 0:
            assert value.item() == 0.0
        else:
            assert value.item() > 0, key

    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    # every trainable parameter takes part in the loss (nothing unused for DistributedDataParallel)
    missing = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)

    must_learn = ["rpn.objectness.weight", "rpn.deltas.weight", "neck.output.0.weight"]
    must_learn += [f"roi_heads.box_heads.{k}.{part}.weight" for k in range(spec["stages"])
                   for part in ("classifier", "regressor", "fcs.0")]
    must_learn += [f"roi_heads.mask_heads.{i}.logits.weight" for i in range(_num_mask_heads(spec))]
    must_learn += [f"roi_heads.feature_relays.{i}.fc.weight" for i in range(_num_relays(spec))]
    if spec["semantic"]:
        must_learn += ["roi_heads.semantic_head.logits.weight", "roi_heads.semantic_head.embedding.conv.weight"]
    if spec["global_context"]:
        must_learn.append("roi_heads.global_context.blocks.0.conv1.weight")  # via the context vector
        if spec["glbctx_weight"] > 0:
            must_learn.append("roi_heads.global_context.classifier.weight")
        else:  # lambda = 0: the branch is there, its classifier receives no signal
            assert not params["roi_heads.global_context.classifier.weight"].grad.abs().sum() > 0
    if spec["mask_flow"] == "htc":
        must_learn += [f"roi_heads.mask_heads.{i}.feature_flow.conv.weight" for i in range(1, spec["stages"])]
    assert [n for n in must_learn if not _nonzero(params[n])] == []

    # Figure 1's training-side recording: which stages' positives reach a mask branch
    ious = model.mask_sample_ious
    if spec["sample_consistency"] == "none":
        assert set(ious) == set(range(spec["stages"]))
    else:
        assert set(ious) == {spec["stages"] - 1}
    for stage, value in ious.items():
        assert value.dim() == 1 and value.numel() > 0
        assert not value.requires_grad
        assert bool(((value >= 0) & (value <= 1)).all())
        # positives of stage k have IoU >= its threshold (0.5 / 0.6 / 0.7); the ground truths added as
        # proposals give 1 unless the positives were subsampled down to the quota and left them out
        assert float(value.min()) >= IOU_THRESHOLDS[spec["stages"]][stage] - 1e-6
        cfg = model.config
        quota = int(cfg.rcnn_samples_per_image * cfg.rcnn_positive_fraction) * (2 if name in FULL else 1)
        assert float(value.max()) == pytest.approx(1.0) or value.numel() == quota


# -------------------------------------------------------------------------------------- inference

def _check_detections(detections: list[dict], sizes: list[tuple[int, int]], max_per_image: int) -> None:
    assert isinstance(detections, list) and len(detections) == len(sizes)
    for det, (height, width) in zip(detections, sizes):
        assert set(det) == {"boxes", "scores", "labels", "masks"}
        k = det["boxes"].shape[0]
        assert 0 < k <= max_per_image
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape == (k, 4)
        assert det["scores"].shape == (k,) and det["labels"].shape == (k,)
        assert det["labels"].dtype == torch.int64
        assert det["masks"].dtype == torch.bool and det["masks"].shape == (k, height, width)
        assert bool(((det["labels"] >= 0) & (det["labels"] < NUM_CLASSES)).all())
        assert bool(((det["scores"] > 0) & (det["scores"] <= 1)).all())
        boxes = det["boxes"]
        assert bool((boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all())
        tol = 1e-3
        assert bool((boxes[:, 0::2] >= -tol).all() and (boxes[:, 0::2] <= width + tol).all())
        assert bool((boxes[:, 1::2] >= -tol).all() and (boxes[:, 1::2] <= height + tol).all())
        # each mask is pasted inside its own box (one pixel of margin)
        for box, mask in zip(boxes.tolist(), det["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if ys.numel():
                assert xs.min() >= math.floor(box[0]) - 1 and xs.max() <= math.ceil(box[2]) + 1
                assert ys.min() >= math.floor(box[1]) - 1 and ys.max() <= math.ceil(box[3]) + 1


@pytest.mark.parametrize("name,arch,flags", CASES, ids=CASE_IDS)
def test_inference_contract_and_rescaling(name, arch, flags):
    model = _build(arch, flags, **EVAL_FLAGS).eval()
    images, _ = _batch()
    sizes = [tuple(im.shape[-2:]) for im in images]
    with torch.no_grad():
        plain = model(images)
    _check_detections(plain, sizes, EVAL_FLAGS["test_max_per_image"])
    if name not in FULL:
        return
    # originals: 96x128 resized by (sx, sy) = (2.0, 1.5) from 64x64; 64x96 resized by 0.5 from 128x192
    metas = [dict(ori_shape=(64, 64), scale_factor=(2.0, 1.5)), dict(ori_shape=(128, 192), scale_factor=(0.5, 0.5))]
    with torch.no_grad():
        rescaled = model(images, image_metas=metas)
    _check_detections(rescaled, [m["ori_shape"] for m in metas], EVAL_FLAGS["test_max_per_image"])
    for a, b, meta in zip(plain, rescaled, metas):
        sx, sy = meta["scale_factor"]
        torch.testing.assert_close(b["boxes"], a["boxes"] / torch.tensor([sx, sy, sx, sy]))
        torch.testing.assert_close(b["scores"], a["scores"])
        assert torch.equal(b["labels"], a["labels"])


# ------------------------------------------------------------------------ loss weighting (Eq. 3-4)

class _LossSpy:
    """Records the unweighted mask BCE (logits [P, 28, 28]), multi-label BCE ([B, C]) and semantic CE
    ([B, S, h, w], averaged over all pixels as MMDetection 3.3 does) the R-CNN heads compute, so the weighted dict entries can be checked against them."""

    def __init__(self, monkeypatch):
        self.mask, self.multilabel, self.semantic = [], [], []
        bce, ce = F.binary_cross_entropy_with_logits, F.cross_entropy

        def spy_bce(input, target, *args, **kwargs):
            out = bce(input, target, *args, **kwargs)
            if input.dim() == 3 and tuple(input.shape[-2:]) == (28, 28):
                self.mask.append(out.detach())
            elif input.dim() == 2 and input.shape[-1] == NUM_CLASSES:
                self.multilabel.append(out.detach())
            return out

        def spy_ce(input, target, *args, **kwargs):
            out = ce(input, target, *args, **kwargs)
            if input.dim() == 4:
                # MMDetection 3.3's semantic CE: the mean over every pixel, ignored ones (loss 0) included
                per_pixel = ce(input, target, ignore_index=kwargs.get("ignore_index", -100), reduction="none")
                self.semantic.append(per_pixel.mean().detach())
            return out

        monkeypatch.setattr(F, "binary_cross_entropy_with_logits", spy_bce)
        monkeypatch.setattr(F, "cross_entropy", spy_ce)


WEIGHT_CASES = [
    ("cascade_semantic", "cascade_mask_rcnn", dict(SEM)),
    ("naive", "cascade_mask_rcnn", dict(sample_consistency="naive")),
    ("scnet", "scnet", {}),
]
_LOSS_CACHE: dict = {}


def _losses_without_grad(arch: str, flags: dict) -> dict[str, torch.Tensor]:
    """Training losses of a freshly built (seed 0) network on the fixed batch with sampling seed 0:
    two networks that differ only in a loss weight see exactly the same computation. Cached by the
    resolved config (the scnet default is shared by three tests)."""
    cfg = scnet.resolve_config(f"{arch}_r18_smoke", num_classes=NUM_CLASSES, num_semantic_classes=NUM_SEMANTIC,
                               **flags)
    if cfg not in _LOSS_CACHE:
        torch.manual_seed(0)
        model = scnet.build_model(cfg)
        with torch.no_grad():
            _LOSS_CACHE[cfg] = _train_losses(model)
    return _LOSS_CACHE[cfg]


@pytest.mark.parametrize("name,arch,flags", WEIGHT_CASES + [("mask_rcnn_gc", "mask_rcnn", dict(global_context=True))],
                         ids=[c[0] for c in WEIGHT_CASES] + ["mask_rcnn_gc"])
def test_weighted_losses_match_eq3_and_eq4(monkeypatch, name, arch, flags):
    """Each dict entry is its weight times the unweighted loss the head computed: alpha_t per stage's
    mask branch (Cascade / naive SC), beta = sum(alpha) = 1.75 (effective SC), lambda = 3, gamma = 0.2."""
    spec = _expected(arch, flags)
    model = _build(arch, flags)
    spy = _LossSpy(monkeypatch)
    with torch.no_grad():
        losses = _train_losses(model)
    alpha = ALPHA[spec["stages"]]
    sc = spec["sample_consistency"]
    if sc == "effective":
        assert len(spy.mask) == 1
        assert sum(alpha) == pytest.approx(1.75)
        torch.testing.assert_close(losses["mask"], 1.75 * spy.mask[0])
    else:  # one branch per stage (behind its stage, or all behind the last one for naive), weight alpha_t
        assert len(spy.mask) == spec["stages"]
        key = "stage{}_mask" if sc == "none" else "mask{}"
        for k in range(spec["stages"]):
            torch.testing.assert_close(losses[key.format(k)], alpha[k] * spy.mask[k])
    if spec["global_context"]:
        assert len(spy.multilabel) == 1
        torch.testing.assert_close(losses["global_context"], 3.0 * spy.multilabel[0])
    else:
        assert spy.multilabel == []
    if spec["semantic"]:
        assert len(spy.semantic) == 1
        torch.testing.assert_close(losses["semantic"], 0.2 * spy.semantic[0])
    else:
        assert spy.semantic == []


def test_glbctx_weight_scales_the_multi_label_loss():
    """Table 5's lambda sweep (0, 1, 2, 3, 5): same seed and inputs, lambda only multiplies the
    multi-label BCE; lambda = 0 keeps the branch (see t5_gc_weight0) with a loss of exactly 0."""
    runs = {w: _losses_without_grad("scnet", dict(glbctx_weight=w)) for w in (0.0, 1.0, 2.0, 3.0, 5.0)}
    unit = runs[1.0]["global_context"]
    assert unit.item() > 0
    assert runs[0.0]["global_context"].item() == 0.0
    torch.testing.assert_close(runs[2.0]["global_context"], 2 * unit)
    for weight, losses in runs.items():
        assert set(losses) == set(runs[1.0])
        torch.testing.assert_close(losses["global_context"], weight * unit)
        # lambda weights a loss term, it does not change the network's computation
        for key in set(losses) - {"global_context"}:
            torch.testing.assert_close(losses[key], runs[1.0][key], msg=key)


@pytest.mark.parametrize("name,arch,flags", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_stage_losses_scale_with_stage_loss_weights(name, arch, flags):
    """Same network, seed and inputs with alpha = (1, 0.5, 0.25) and alpha' = (0.5, 2, 3): stage t's box
    (and per-stage mask) losses scale by alpha'_t / alpha_t, effective SC's mask loss by sum(alpha') /
    sum(alpha), and RPN / semantic / global-context losses do not move."""
    alpha, other = (1.0, 0.5, 0.25), (0.5, 2.0, 3.0)
    base = _losses_without_grad(arch, flags)
    scaled = _losses_without_grad(arch, dict(flags, stage_loss_weights=other))
    assert set(base) == set(scaled)
    checked = set()
    for k in range(3):
        ratio = other[k] / alpha[k]
        for key in (f"stage{k}_cls", f"stage{k}_bbox", f"stage{k}_mask", f"mask{k}"):
            if key in base:
                torch.testing.assert_close(scaled[key], ratio * base[key], msg=key)
                checked.add(key)
    if "mask" in base:
        torch.testing.assert_close(scaled["mask"], sum(other) / sum(alpha) * base["mask"])
        checked.add("mask")
    for key in set(base) - checked:
        assert key in ("rpn_cls", "rpn_bbox", "semantic", "global_context")
        torch.testing.assert_close(scaled[key], base[key], msg=key)
    assert {f"stage{k}_cls" for k in range(3)} <= checked


def test_effective_mask_loss_is_sum_of_alpha_times_the_unweighted_bce():
    """Eq. 4 without looking inside the model: with alpha = (1, 0, 0) the single mask branch carries
    weight sum(alpha) = 1 (the raw BCE); the default alpha = (1, 0.5, 0.25) must give 1.75 times that.
    (A model that weighted the branch by the last stage's alpha would give 0 here, one that did not
    re-weight it would give a ratio of 1.)"""
    default = _losses_without_grad("scnet", {})
    unit = _losses_without_grad("scnet", dict(stage_loss_weights=(1.0, 0.0, 0.0)))
    assert unit["mask"].item() > 0
    torch.testing.assert_close(default["mask"], 1.75 * unit["mask"])
    assert unit["stage1_cls"].item() == 0.0 and unit["stage2_cls"].item() == 0.0
    torch.testing.assert_close(default["stage0_cls"], unit["stage0_cls"])


# ------------------------------------------------------------------------ the mask-branch plan

def _plan_rows(arch: str, flags: dict) -> list[tuple]:
    cfg = scnet.resolve_config(f"{arch}_r18_smoke", **flags)
    return [(b.head, b.stage, b.loss_name, b.loss_weight, b.relay, b.deep, b.flow_in)
            for b in build_mask_plan(cfg).branches]


# (head, feeding stage, loss name, weight, relay, deep residual branch, HTC flow in), written out from
# the paper: Fig. 2 (Cascade Mask R-CNN, HTC), Fig. 3 and Eq. 3-4 (naive and effective SC, beta = 1.75)
PLAN_CASES = [
    ("mask_rcnn", "mask_rcnn", {}, [(0, 0, "stage0_mask", 1.0, None, False, False)]),
    ("mask_rcnn_fr", "mask_rcnn", dict(feature_relay=True), [(0, 0, "stage0_mask", 1.0, 0, False, False)]),
    ("cascade", "cascade_mask_rcnn", {}, [(0, 0, "stage0_mask", 1.0, None, False, False),
                                          (1, 1, "stage1_mask", 0.5, None, False, False),
                                          (2, 2, "stage2_mask", 0.25, None, False, False)]),
    ("cascade_fr", "cascade_mask_rcnn", dict(feature_relay=True), [(0, 0, "stage0_mask", 1.0, 0, False, False),
                                                                   (1, 1, "stage1_mask", 0.5, 1, False, False),
                                                                   (2, 2, "stage2_mask", 0.25, 2, False, False)]),
    ("htc", "htc", {}, [(0, 0, "stage0_mask", 1.0, None, False, False),
                        (1, 1, "stage1_mask", 0.5, None, False, True),
                        (2, 2, "stage2_mask", 0.25, None, False, True)]),
    ("naive", "cascade_mask_rcnn", dict(sample_consistency="naive"), [(0, 2, "mask0", 1.0, None, False, False),
                                                                      (1, 2, "mask1", 0.5, None, False, False),
                                                                      (2, 2, "mask2", 0.25, None, False, False)]),
    ("naive_fr", "cascade_mask_rcnn", dict(sample_consistency="naive", feature_relay=True),
     [(0, 2, "mask0", 1.0, 0, False, False), (1, 2, "mask1", 0.5, 0, False, False),
      (2, 2, "mask2", 0.25, 0, False, False)]),
    ("effective", "cascade_mask_rcnn", dict(sample_consistency="effective"), [(0, 2, "mask", 1.75, None, True, False)]),
    ("scnet", "scnet", {}, [(0, 2, "mask", 1.75, 0, True, False)]),
]


@pytest.mark.parametrize("name,arch,flags,rows", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_mask_plan_places_each_branch_as_the_paper_does(name, arch, flags, rows):
    assert _plan_rows(arch, flags) == rows
    plan = build_mask_plan(scnet.resolve_config(f"{arch}_r18_smoke", **flags))
    assert plan.num_relays == len({r[4] for r in rows if r[4] is not None})
    assert plan.resample_refined == (arch == "htc")
    # at test time every branch is averaged, except HTC's, which keeps the last one (MMDetection 3.3.0)
    assert plan.test_branches == (plan.branches[-1:] if arch == "htc" else plan.branches)
    stages = 1 if arch == "mask_rcnn" else 3
    assert sum(len(plan.fed_by(t)) for t in range(stages)) == len(rows)


def test_mask_plan_follows_the_stage_loss_weights():
    """beta = sum(alpha) and alpha_t per branch whatever alpha is (Eq. 3-4)."""
    alpha = dict(stage_loss_weights=(0.5, 2.0, 3.0))
    assert [r[3] for r in _plan_rows("scnet", alpha)] == [5.5]
    assert [r[3] for r in _plan_rows("cascade_mask_rcnn", dict(alpha, sample_consistency="naive"))] == [0.5, 2.0, 3.0]
    assert [r[3] for r in _plan_rows("htc", alpha)] == [0.5, 2.0, 3.0]


def test_bytes_in_give_the_float_inputs_losses_bit_for_bit():
    """The data pipeline sends uint8 images and semantic maps; the model makes them float32 / int64
    itself, so the losses equal those of the same whole-valued float32 images and int64 maps."""
    model = _build("scnet", {})
    images, targets = _batch()
    images = [image.round() for image in images]
    as_bytes = [image.to(torch.uint8) for image in images]
    byte_targets = [dict(t, semantic_seg=t["semantic_seg"].to(torch.uint8)) for t in targets]
    assert torch.equal(model.batch(as_bytes)[0], model.batch(images)[0])
    model.train()
    torch.manual_seed(0)
    from_floats = model(images, targets)
    torch.manual_seed(0)
    from_bytes = model(as_bytes, byte_targets)
    assert from_floats.keys() == from_bytes.keys()
    for key in from_floats:
        assert torch.equal(from_floats[key], from_bytes[key]), key
