"""ImageNet backbone weights: published names, strict loading into the trunk, the fetch command, the
run id, and the harness's check before submission. No network: the files are built here with the
published files' tensor names (torchvision's for ResNet, MMDetection's ResNeXt names for the
OpenMMLab X101 file) and random values."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
import torchvision

from scnet import build_model
from scnet.engine import RunConfig
from scnet.models.backbone import ResNetTrunk
from scnet.weights import published as published_module
from scnet.weights.backbone_init import (BackboneWeightsError, hub_checkpoint_dir, init_backbone,
                                         load_into_trunk, read_backbone_state, require_backbone_weights)
from scnet.weights.fetch import main as fetch_main
from scnet.weights.published import PUBLISHED, PublishedWeights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_like(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=generator) + 0.5 for name, shape in shapes.items()}


def torchvision_file_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict named and shaped like torchvision's IMAGENET1K_V1 file (fc included, and like those
    files no BN `num_batches_tracked`)."""
    with torch.device("meta"):
        net = getattr(torchvision.models, arch)(weights=None)
    shapes = {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    return _random_like(shapes, seed)


def mmdet_resnext_file_state(depth_blocks=(3, 4, 23, 3), groups=64, base_width=4, seed=0):
    """The OpenMMLab ResNeXt file's tensors, derived from MMDetection's ResNeXt (not from torchvision):
    stem conv1/bn1; per block conv1 (1x1), conv2 (3x3, grouped), conv3 (1x1) with bn1-3, width =
    floor(planes * base_width / 64) * groups; block 0 of each stage has downsample.0 (conv) and .1 (BN);
    and the ImageNet classifier fc."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, channels: int) -> None:
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{field}"] = (channels,)

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, blocks in enumerate(depth_blocks):
        planes = 64 * 2 ** stage
        width = math.floor(planes * base_width / 64) * groups
        for block in range(blocks):
            p = f"layer{stage + 1}.{block}"
            shapes[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
            bn(f"{p}.bn1", width)
            shapes[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
            bn(f"{p}.bn2", width)
            shapes[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return _random_like({k: torch.Size(v) for k, v in shapes.items()}, seed)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish_locally(monkeypatch, tmp_path: Path, backbone: str, state: dict) -> PublishedWeights:
    """Save `state` as a 'published' file (its name carrying its own hash prefix, as torch.hub names
    do), registered for `backbone` with a file:// URL, and point TORCH_HOME at an empty folder."""
    server = tmp_path / "server"
    server.mkdir(exist_ok=True)
    staging = server / "staging.pth"
    torch.save(state, staging)
    name = f"{backbone}-{_sha256(staging)[:8]}.pth"
    staging.rename(server / name)
    entry = PublishedWeights(backbone, PUBLISHED[backbone].mmdet_name, (server / name).as_uri())
    monkeypatch.setitem(published_module.PUBLISHED, backbone, entry)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return entry


def test_published_names_are_mmdetections():
    assert {b: (w.mmdet_name, w.url) for b, w in PUBLISHED.items()} == {
        "resnet50": ("torchvision://resnet50", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
        "resnet101": ("torchvision://resnet101", "https://download.pytorch.org/models/resnet101-63fe2227.pth"),
        "resnext101_64x4d": ("open-mmlab://resnext101_64x4d",
                             "https://download.openmmlab.com/pretrain/third_party/resnext101_64x4d-ee2c6f71.pth"),
    }
    assert PUBLISHED["resnet50"].sha256_prefix == "0676ba61"
    # torchvision's own record of the ResNet files (MMDetection's torchvision:// resolves to them)
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url == PUBLISHED["resnet50"].url
    assert torchvision.models.ResNet101_Weights.IMAGENET1K_V1.url == PUBLISHED["resnet101"].url


def test_r50_file_lands_in_the_frozen_stem_layer1_and_bn_statistics(monkeypatch, tmp_path):
    state = torchvision_file_state("resnet50")
    entry = publish_locally(monkeypatch, tmp_path, "resnet50", state)
    assert fetch_main(["fetch", "--preset", "mask_rcnn_r50"]) == 0
    assert (hub_checkpoint_dir() / entry.file_name).is_file()

    config = RunConfig(preset="mask_rcnn_r50", data_root=str(tmp_path), scale="paper")
    model = build_model(config.model_config())
    assert init_backbone(model, config) == f"{hub_checkpoint_dir() / entry.file_name} (torchvision://resnet50)"
    trunk = model.backbone.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in state.items() if not k.startswith("fc."))
    # MMDetection's frozen_stages=1: stem and layer1 take no gradient; norm_eval: BN statistics stay.
    frozen = [p for m in (model.backbone.conv1, model.backbone.bn1, model.backbone.layer1) for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert model.backbone.layer2[0].conv1.weight.requires_grad
    model.train()
    model.backbone(torch.rand(2, 3, 64, 64) * 255)
    after = model.backbone.state_dict()
    for name in ("bn1.running_mean", "layer1.0.bn1.running_var", "layer3.5.bn3.running_mean", "conv1.weight"):
        assert torch.equal(after[name], state[name]), name


def test_x101_file_with_openmmlab_names_loads_strictly():
    state = mmdet_resnext_file_state()
    trunk = ResNetTrunk("resnext101_64x4d")
    load_into_trunk(trunk, state, "resnext101_64x4d-ee2c6f71.pth")
    loaded = trunk.state_dict()
    assert {k for k in loaded if not k.endswith("num_batches_tracked")} == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_wrong_or_partial_files_are_refused_naming_the_keys(tmp_path):
    trunk = ResNetTrunk("resnet18")
    good = torchvision_file_state("resnet18")
    partial = {k: v for k, v in good.items() if not k.startswith("layer4.1.")}
    with pytest.raises(BackboneWeightsError, match=r"missing layer4\.1\.bn1\.bias"):
        load_into_trunk(trunk, partial, "f.pth")
    with pytest.raises(BackboneWeightsError, match=r"unexpected head\.weight"):
        load_into_trunk(trunk, {**good, "head.weight": torch.zeros(1)}, "f.pth")
    with pytest.raises(BackboneWeightsError, match=r"shape .*conv1\.weight"):
        load_into_trunk(ResNetTrunk("resnet18"), {**good, "conv1.weight": torch.zeros(64, 3, 3, 3)}, "f.pth")
    # The file of another backbone: every mismatch is reported before anything is copied.
    before = trunk.conv1.weight.clone()
    with pytest.raises(BackboneWeightsError, match="Is it the file for this backbone"):
        load_into_trunk(trunk, torchvision_file_state("resnet34"), "resnet34.pth")
    assert torch.equal(trunk.conv1.weight, before)

    # mmengine-style wrappers are undone; a pickle that needs code to load is refused.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in good.items()}, "meta": {"epoch": 1}}, wrapped)
    assert set(read_backbone_state(wrapped)) == set(good)
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": PublishedWeights("a", "b", "c-1234.pth")}, evil)
    with pytest.raises(BackboneWeightsError, match="need code to load"):
        read_backbone_state(evil)


def test_fetch_checks_the_hash_in_the_name(monkeypatch, tmp_path, capsys):
    entry = publish_locally(monkeypatch, tmp_path, "resnet50", {"conv1.weight": torch.ones(2)})
    bad = PublishedWeights("resnet50", entry.mmdet_name, entry.url.replace(entry.file_name, "resnet50-00000000.pth"))
    (tmp_path / "server" / "resnet50-00000000.pth").write_bytes((tmp_path / "server" / entry.file_name).read_bytes())
    monkeypatch.setitem(published_module.PUBLISHED, "resnet50", bad)
    assert fetch_main(["fetch", "--all"]) == 1
    assert "resnet50-00000000.pth" in capsys.readouterr().err
    assert not (hub_checkpoint_dir() / "resnet50-00000000.pth").exists()  # no half-checked file left
    assert fetch_main(["fetch", "--preset", "scnet_r5O"]) == 2
    assert fetch_main(["fetch", "--preset", "scnet_r18_smoke"]) == 0  # random init: nothing to fetch


def test_run_id_holds_the_file_content_not_its_path(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    base = RunConfig(preset="cascade_mask_rcnn_r50", data_root="/coco", scale="paper")
    assert base.backbone_init() == "resnet50-0676ba61.pth"
    assert RunConfig(preset="cascade_mask_rcnn_r18_smoke", data_root="d").backbone_init() == "random"
    one, two = tmp_path / "a" / "w.pth", tmp_path / "b" / "renamed.pth"
    for path in (one, two):
        path.parent.mkdir()
    torch.save({"conv1.weight": torch.ones(3)}, one)
    two.write_bytes(one.read_bytes())  # the same file, moved and renamed
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, other)
    at_one = base.replace(backbone_weights=str(one))
    assert at_one.backbone_weights_sha256 == _sha256(one)
    assert at_one.run_id() == base.replace(backbone_weights=str(two)).run_id() != base.run_id()
    assert base.replace(backbone_weights=str(other)).run_id() != at_one.run_id()
    again = RunConfig.from_dict(at_one.to_dict())
    assert again == at_one and again.run_id() == at_one.run_id()
    with pytest.raises(ValueError, match="does not exist"):
        base.replace(backbone_weights=str(tmp_path / "nope.pth"))
    # Training refuses a file that changed after the run was configured.
    torch.save({"conv1.weight": torch.full((3,), 2.0)}, one)
    with pytest.raises(BackboneWeightsError, match="changed since the run was configured"):
        init_backbone(build_model("cascade_mask_rcnn_r18_smoke"), at_one)


def test_missing_weights_name_the_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    configs = [RunConfig(preset=p, data_root="/coco", scale="paper") for p in ("scnet_r50", "htc_x101_64x4d")]
    with pytest.raises(BackboneWeightsError) as error:
        require_backbone_weights(configs)
    message = str(error.value)
    assert "resnet50-0676ba61.pth" in message and "resnext101_64x4d-ee2c6f71.pth" in message
    assert "python -m scnet.weights fetch --preset htc_x101_64x4d --preset scnet_r50" in message
    require_backbone_weights([RunConfig(preset="scnet_r18_smoke", data_root="d")])  # smoke: random init


def _fake_coco(root: Path, stuff: bool) -> Path:
    for name in ("annotations", "train2017", "val2017"):
        (root / name).mkdir(parents=True)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text("{}")
        if stuff:
            (root / "stuffthingmaps" / f"{split}2017").mkdir(parents=True)
    return root


def test_harness_refuses_paper_runs_without_weights_before_submitting(harness, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    coco = _fake_coco(tmp_path / "coco", stuff=True)
    where = ("--runs-dir", str(tmp_path / "runs"), "--profile", str(REPO / "slurm" / "profiles" / "example.toml"))
    done = harness("table4", "--scale", "paper", "--data", str(coco), *where)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "ImageNet backbone weights missing" in done.stderr
    assert "python -m scnet.weights fetch --preset cascade_mask_rcnn_r50 --preset mask_rcnn_r50" in done.stderr
    assert not (tmp_path / "runs").exists()
    # --dry-run still lists the matrix (nothing is submitted).
    assert harness("table4", "--scale", "paper", "--data", str(coco), "--dry-run", *where).returncode == 0


def test_harness_backbone_weights_option(tmp_path, capsys):
    from experiments.run import main as harness_main

    weights = tmp_path / "r18.pth"
    torch.save(torchvision_file_state("resnet18"), weights)

    def run_ids(*extra):
        code = harness_main(["table4", "--dry-run", "--data", str(tmp_path / "d"), "--runs-dir",
                             str(tmp_path / "runs"), *extra])
        out = capsys.readouterr()
        return code, {line[:12] for line in out.out.splitlines() if line[12:14] == "  "}, out.err

    _, random_init, _ = run_ids()
    code, from_file, _ = run_ids("--backbone-weights", str(weights))
    assert code == 0 and len(from_file) == 4 and not from_file & random_init
    code, _, err = run_ids("--scale", "paper", "--backbone-weights", str(weights))
    assert code == 2 and "--data" in err  # paper scale still needs COCO first
    code = harness_main(["table1", "--dry-run", "--backbone-weights", str(weights)])
    assert code == 0  # smoke table1: every row is a ResNet-18 smoke preset
    coco = _fake_coco(tmp_path / "coco", stuff=True)
    code = harness_main(["table1", "--scale", "paper", "--data", str(coco), "--dry-run",
                         "--backbone-weights", str(weights)])
    assert code == 2 and "one file for runs of 3 backbones" in capsys.readouterr().err


def test_run_training_starts_the_trunk_from_the_configured_file(tmp_path):
    from scnet.data import ensure_synthetic
    from scnet.engine import EvalConfig, Schedule, run_training
    from scnet.engine.checkpoint import load_checkpoint
    from scnet.records.run_dir import RunDir

    data = ensure_synthetic(tmp_path / "shapes", seed=1, train=2, val=1, size=(128, 96))
    state = torchvision_file_state("resnet18")
    weights = tmp_path / "r18.pth"
    torch.save(state, weights)
    config = RunConfig(preset="mask_rcnn_r18_smoke", data_root=str(data), image_scale=(128, 96),
                       backbone_weights=str(weights), num_workers=0, eval=EvalConfig(enabled=False),
                       schedule=Schedule(max_iters=1, batch_size=2, lr=1e-6, warmup_iters=0, checkpoint_every=1))
    run_training(config, tmp_path / "run", progress=False)
    assert f"backbone initialised from {weights}" in (tmp_path / "run" / "log.txt").read_text()
    trained = load_checkpoint(RunDir(tmp_path / "run").last_checkpoint)["model"]
    # One step at lr 1e-6 leaves the trunk where the file put it (random init would be far away).
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        assert torch.allclose(trained[f"backbone.{name}"], state[name], atol=1e-3), name
