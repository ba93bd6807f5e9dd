"""The model family's configuration: combinations the paper does not define are refused at build time
with a `ConfigError` naming the flags; one network spelled two ways resolves to one config; every
preset survives `to_dict` / `from_dict` (and JSON)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import scnet
import scnet.build
from scnet import ConfigError, ModelConfig, build_model, preset_names, resolve_config
from scnet.models.mask_plan import build_mask_plan

SIZES = ("r50", "r101", "x101_64x4d", "r18_smoke")
BACKBONE = {"r50": "resnet50", "r101": "resnet101", "x101_64x4d": "resnext101_64x4d", "r18_smoke": "resnet18"}


@pytest.fixture
def no_layers(monkeypatch):
    """Fail if a refused config gets as far as building layers."""
    def refuse(cfg):  # pragma: no cover - only reached when validation is missing
        raise AssertionError(f"layers were built for a config that should be refused: {cfg}")
    monkeypatch.setattr(scnet.build, "Detector", refuse)


# ------------------------------------------------------------------------------------------ refusals

REFUSED = [
    # (id, preset, flags, words the message must contain)
    ("sc_effective_on_mask_rcnn", "mask_rcnn_r18_smoke", dict(sample_consistency="effective"),
     ["sample_consistency", "stages"]),
    ("sc_naive_on_mask_rcnn", "mask_rcnn_r50", dict(sample_consistency="naive"), ["sample_consistency", "stages"]),
    ("sc_on_htc", "htc_r50", dict(sample_consistency="effective"), ["sample_consistency", "mask_flow"]),
    ("htc_flow_with_naive_sc", "cascade_mask_rcnn_r50", dict(mask_flow="htc", sample_consistency="naive"),
     ["sample_consistency", "mask_flow"]),
    ("htc_flow_on_scnet", "scnet_r18_smoke", dict(mask_flow="htc"), ["sample_consistency", "mask_flow"]),
    ("feature_relay_on_htc", "htc_r18_smoke", dict(feature_relay=True), ["feature_relay", "mask_flow"]),
    ("feature_relay_with_htc_flow", "cascade_mask_rcnn_r50", dict(mask_flow="htc", feature_relay=True),
     ["feature_relay", "mask_flow"]),
    ("htc_flow_on_mask_rcnn", "mask_rcnn_r50", dict(mask_flow="htc"), ["mask_flow", "stages"]),
    ("two_stages", "cascade_mask_rcnn_r50", dict(stages=2), ["stages"]),
    ("three_stages_with_one_alpha", "mask_rcnn_r50", dict(stages=3), ["stages"]),
    ("alpha_of_wrong_length", "cascade_mask_rcnn_r50", dict(stage_loss_weights=(1.0, 0.5)), ["stage_loss_weights"]),
    ("unknown_sample_consistency", "cascade_mask_rcnn_r50", dict(sample_consistency="full"),
     ["sample_consistency", "full"]),
    ("unknown_mask_flow", "cascade_mask_rcnn_r50", dict(mask_flow="interleaved"), ["mask_flow", "interleaved"]),
    ("unknown_backbone", "scnet_r50", dict(backbone="resnet34"), ["backbone", "resnet34"]),
    ("negative_lambda", "scnet_r50", dict(glbctx_weight=-1.0), ["glbctx_weight"]),
    ("no_classes", "scnet_r50", dict(num_classes=0), ["num_classes"]),
    ("one_semantic_class", "htc_r50", dict(num_semantic_classes=1), ["num_semantic_classes"]),
    ("odd_residual_mask_convs", "scnet_r50", dict(mask_convs=3), ["mask_convs"]),
]


@pytest.mark.parametrize("preset,flags,words", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_undefined_combinations_are_refused_before_building(no_layers, preset, flags, words):
    with pytest.raises(ConfigError) as info:
        build_model(preset, **{"num_classes": 3, **flags})
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    # the same refusal whichever way the config is spelled
    values = dict(resolve_config(preset).to_dict(), **flags)
    with pytest.raises(ConfigError):
        ModelConfig.from_dict(values)
    with pytest.raises(ConfigError):
        ModelConfig(**values)


def test_refusals_are_value_errors():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("name,expected", [
    ("scnet_r5", "scnet_r50"),
    ("cascade_rcnn_r50", "cascade_mask_rcnn_r50"),
    ("htc_r18", "htc_r18_smoke"),
    ("mask_rcnn_resnet50", "mask_rcnn_r50"),
])
def test_unknown_preset_is_refused_with_a_suggestion(no_layers, name, expected):
    with pytest.raises(ConfigError) as info:
        build_model(name, num_classes=3)
    message = str(info.value)
    assert repr(name) in message
    head = message.split("Known presets")[0]  # the suggestion, before the full list
    assert "Did you mean" in head and expected in head, message


@pytest.mark.parametrize("flag", ["feature_relays", "glbctx_weigth", "sample_consistancy", "num_stages"])
def test_unknown_flag_is_refused_and_named(no_layers, flag):
    with pytest.raises(ConfigError) as info:
        build_model("scnet_r18_smoke", num_classes=3, **{flag: True})
    assert flag in str(info.value)
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({**ModelConfig().to_dict(), flag: 1})
    assert flag in str(info.value)


def test_unknown_flag_on_an_explicit_config_is_a_config_error(no_layers):
    with pytest.raises(ConfigError, match="feature_relays"):
        build_model(resolve_config("scnet_r18_smoke"), feature_relays=True)


def test_non_boolean_switch_is_refused(no_layers):
    with pytest.raises(ConfigError, match="feature_relay"):
        build_model("cascade_mask_rcnn_r18_smoke", num_classes=3, feature_relay="false")


def test_refused_replace_on_an_explicit_config(no_layers):
    cfg = resolve_config("htc_r18_smoke", num_classes=3)
    with pytest.raises(ConfigError, match="feature_relay"):
        build_model(cfg, feature_relay=True)
    with pytest.raises(ConfigError, match="sample_consistency"):
        cfg.replace(sample_consistency="effective")


# ----------------------------------------------------------------------------- one network, one config

@pytest.mark.parametrize("size", SIZES)
def test_scnet_is_cascade_with_all_components(size):
    """Table 2's last row (Cascade Mask R-CNN + semantic + SC + FR + GC) is the scnet preset, with the
    box stages' low-quality matching that MMDetection's SCNet config keeps (its Cascade config drops it),
    SCNet's residual semantic head and its test threshold (0.001; Cascade's config has 0.05)."""
    scnet_cfg = resolve_config(f"scnet_{size}")
    spelled = resolve_config(f"cascade_mask_rcnn_{size}", semantic=True, sample_consistency="effective",
                             feature_relay=True, global_context=True, rcnn_match_low_quality=True,
                             semantic_residual=True, test_score_thr=0.001)
    assert spelled == scnet_cfg
    assert hash(spelled) == hash(scnet_cfg)
    assert json.dumps(spelled.to_dict(), sort_keys=True) == json.dumps(scnet_cfg.to_dict(), sort_keys=True)
    # the paper's SCNet: 3 stages, alpha, beta = 1.75, gamma = 0.2, lambda = 3, deep residual mask branch
    assert scnet_cfg.backbone == BACKBONE[size]
    assert scnet_cfg.stages == 3 and scnet_cfg.mask_flow == "cascade"
    assert scnet_cfg.stage_iou_thresholds == (0.5, 0.6, 0.7)
    assert scnet_cfg.stage_loss_weights == (1.0, 0.5, 0.25)
    assert scnet_cfg.semantic_weight == pytest.approx(0.2) and scnet_cfg.glbctx_weight == pytest.approx(3.0)
    assert scnet_cfg.mask_convs == 12 and scnet_cfg.semantic_residual
    (branch,) = build_mask_plan(scnet_cfg).branches  # one deep branch behind the last stage, beta = 1.75
    assert branch.stage == 2 and branch.deep and branch.loss_name == "mask"
    assert branch.loss_weight == pytest.approx(1.75)


@pytest.mark.parametrize("size", SIZES)
def test_other_spellings_of_the_same_network(size):
    cascade, scnet_name = f"cascade_mask_rcnn_{size}", f"scnet_{size}"
    # HTC = cascade + interleaved mask flow + semantic (+ MMDetection HTC's low-quality matching and test
    # threshold)
    assert resolve_config(f"htc_{size}") == resolve_config(cascade, mask_flow="htc", semantic=True,
                                                           rcnn_match_low_quality=True, test_score_thr=0.001)
    scnet_base = dict(semantic=True, semantic_residual=True, rcnn_match_low_quality=True, test_score_thr=0.001)
    # Table 5, lambda = None, is Table 2's SC + FR row
    assert resolve_config(scnet_name, global_context=False) == resolve_config(
        cascade, sample_consistency="effective", feature_relay=True, **scnet_base)
    # switching SC off on scnet brings back the 4-conv branches, and nothing else: the residual semantic
    # head and the low-quality matching stay (they are not part of sample consistency)
    assert resolve_config(scnet_name, sample_consistency="none") == resolve_config(
        cascade, feature_relay=True, global_context=True, **scnet_base)
    assert resolve_config(scnet_name, sample_consistency="naive").semantic_residual
    # flags equal to the preset's own values change nothing, in any order
    assert resolve_config(scnet_name, global_context=True, feature_relay=True, semantic=True,
                          sample_consistency="effective") == resolve_config(scnet_name)
    assert resolve_config(cascade, sample_consistency="none") == resolve_config(cascade)
    # a list where the config holds a tuple is the same value
    assert resolve_config(cascade, stage_loss_weights=[1.0, 0.5, 0.25]) == resolve_config(cascade)
    # and networks that differ are different configs
    assert resolve_config(scnet_name) != resolve_config(scnet_name, glbctx_weight=0.0)
    assert resolve_config(cascade, sample_consistency="naive") != resolve_config(cascade)


def test_integer_and_float_spellings_serialise_identically():
    a = resolve_config("scnet_r50")
    b = resolve_config("scnet_r50", glbctx_weight=3)
    assert a == b
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def test_two_spellings_build_the_same_layers():
    a = build_model("scnet_r18_smoke", num_classes=3, num_semantic_classes=4)
    b = build_model("cascade_mask_rcnn_r18_smoke", num_classes=3, num_semantic_classes=4, semantic=True,
                    sample_consistency="effective", feature_relay=True, global_context=True,
                    rcnn_match_low_quality=True, semantic_residual=True, test_score_thr=0.001)
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    assert shapes_a == shapes_b
    assert a.config == b.config


def test_preset_table():
    names = preset_names()
    assert names == sorted(names) and len(names) == len(set(names))
    for arch in ("mask_rcnn", "cascade_mask_rcnn", "htc", "scnet"):
        for size in SIZES:
            assert f"{arch}_{size}" in names
    mask_rcnn = resolve_config("mask_rcnn_r50")
    assert mask_rcnn.stages == 1 and mask_rcnn.stage_loss_weights == (1.0,)
    assert mask_rcnn.sample_consistency == "none" and not mask_rcnn.semantic
    cascade = resolve_config("cascade_mask_rcnn_r50")
    assert cascade.stages == 3 and not (cascade.semantic or cascade.feature_relay or cascade.global_context)
    assert cascade.bbox_target_stds == ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
    htc = resolve_config("htc_r50")
    assert htc.mask_flow == "htc" and htc.semantic and htc.sample_consistency == "none"


# ---------------------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_round_trips(preset):
    cfg = resolve_config(preset)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    through_json = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert through_json == cfg
    assert hash(through_json) == hash(cfg)
    assert through_json.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("flags", [
    dict(num_classes=3, num_semantic_classes=4),
    dict(sample_consistency="naive", feature_relay=True),
    dict(global_context=True, glbctx_weight=0.0),
    dict(stage_loss_weights=(1.0, 0.0, 0.0)),
])
def test_flag_variants_round_trip(flags):
    cfg = resolve_config("cascade_mask_rcnn_r18_smoke", **flags)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    for key, value in flags.items():
        assert getattr(again, key) == value


def test_config_is_frozen():
    cfg = resolve_config("scnet_r50")
    with pytest.raises(Exception):
        cfg.feature_relay = False  # type: ignore[misc]
    assert cfg.replace(feature_relay=False).feature_relay is False
    assert cfg.feature_relay is True


@pytest.mark.parametrize("arch,low_quality,allowed_border,score_thr", [
    ("mask_rcnn", True, -1, 0.05), ("cascade_mask_rcnn", False, 0, 0.05), ("htc", True, 0, 0.001),
    ("scnet", True, 0, 0.001)])
@pytest.mark.parametrize("size", SIZES)
def test_training_and_test_settings_are_mmdetection_configs(arch, low_quality, allowed_border, score_thr, size):
    """MMDetection 3.3.0's train_cfg: rcnn assigners' match_low_quality (left at its default True by
    Mask R-CNN, HTC and SCNet; False in Cascade Mask R-CNN) and the RPN's allowed_border (-1 / 0); its
    test_cfg.rcnn.score_thr (0.05 in Mask R-CNN and Cascade Mask R-CNN, 0.001 in HTC and SCNet)."""
    cfg = resolve_config(f"{arch}_{size}")
    assert cfg.rcnn_match_low_quality is low_quality
    assert cfg.rpn_allowed_border == allowed_border
    assert cfg.test_score_thr == score_thr


@pytest.mark.parametrize("preset,flags", [
    ("cascade_mask_rcnn_r50", dict(sample_consistency="effective")),
    ("cascade_mask_rcnn_r50", dict(sample_consistency="naive", semantic=True)),
    ("scnet_r50", dict(sample_consistency="none")),
    ("scnet_r50", dict(sample_consistency="naive", mask_convs=6)),
    ("scnet_r50", dict(feature_relay=False, glbctx_weight=1.0)),
])
def test_replace_and_build_model_flags_give_one_network(preset, flags, monkeypatch):
    """`cfg.replace(**flags)` and `build_model(cfg, **flags)` follow one coupling rule: effective sample
    consistency brings its 12-conv branch, naive/none the 4-conv ones, unless mask_convs is given."""
    monkeypatch.setattr(scnet.build, "Detector", lambda config: SimpleNamespace(config=config))  # no layers
    cfg = resolve_config(preset)
    replaced = cfg.replace(**flags)
    assert replaced == build_model(cfg, **flags).config == resolve_config(preset, **flags)
    expected_convs = flags.get("mask_convs", {"effective": 12, "naive": 4, "none": 4}.get(
        flags.get("sample_consistency"), cfg.mask_convs))
    assert replaced.mask_convs == expected_convs
    assert replaced.semantic_residual == cfg.semantic_residual  # never follows sample consistency


@pytest.mark.parametrize("fpn_init,zero_bias", [("xavier", True), ("pytorch", False)])
def test_fpn_initialisation_follows_the_config(fpn_init, zero_bias):
    """MMDetection's FPN is xavier-uniform with zero bias (the R50/R101/X101 presets); the smoke presets
    keep PyTorch's default (uniform bias), under which their random-init backbones train well."""
    assert resolve_config("scnet_r50").fpn_init == "xavier"
    assert resolve_config("scnet_r18_smoke").fpn_init == "pytorch"
    torch.manual_seed(0)
    model = build_model("mask_rcnn_r18_smoke", num_classes=3, fpn_init=fpn_init)
    convs = [*model.neck.lateral, *model.neck.output]
    assert all(bool((conv.bias.detach() == 0).all()) == zero_bias for conv in convs)
    if fpn_init == "xavier":
        for conv in convs:  # xavier-uniform bound: sqrt(6 / (fan_in + fan_out))
            fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
            assert float(conv.weight.detach().abs().max()) <= (6 / (fan_in + fan_out)) ** 0.5
