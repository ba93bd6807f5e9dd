"""Start a detector's backbone from its ImageNet file, as MMDetection's `init_cfg=Pretrained` does.

At paper scale every preset's trunk (stem, layer1-4, BN statistics included) is overwritten by the
published file MMDetection uses (`scnet.weights.published`), found in torch's hub cache
(`$TORCH_HOME/hub/checkpoints/<file>`), or by the file a run config names (`backbone_weights`).
The load is strict: every trunk tensor must come from the file, the classifier (`fc.*`) is the only
tensor the file may hold beyond them, shapes must agree. BN `num_batches_tracked` counters are
optional (torchvision's files predate them; with frozen BN statistics they are never used).
Files are read with `scnet.checkpoints.torch_file`: a downloaded file cannot run code, nor cost more
than its size to read.
Smoke runs keep random initialisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from scnet.weights.digest import file_sha256
from scnet.weights.published import PublishedWeights, published_for


class BackboneWeightsError(ValueError):
    """A backbone weight file that is missing, unreadable or does not fit; the message says what to do."""


def hub_checkpoint_dir() -> Path:
    """Where torch.hub (and `python -m scnet.weights fetch`) keeps downloaded files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_command(presets: Iterable[str]) -> str:
    names = sorted(set(presets))
    return "python -m scnet.weights fetch " + (" ".join(f"--preset {p}" for p in names) if names else "--all")


@dataclass(frozen=True)
class WeightsSource:
    """The file a run's backbone starts from and what its bytes must hash to."""

    path: Path
    published: PublishedWeights | None   # set when it is MMDetection's published file
    sha256: str | None                   # full digest to check (an explicitly given file)

    def describe(self) -> str:
        if self.published is not None:
            return f"{self.path} ({self.published.mmdet_name})"
        return str(self.path)


def weights_source(run_config: Any) -> WeightsSource | None:
    """The backbone file of a run (a `RunConfig`): its own `backbone_weights`, else at paper scale the
    published file in the hub cache; None means random initialisation (smoke scale)."""
    if run_config.backbone_weights:
        return WeightsSource(Path(run_config.backbone_weights), None, run_config.backbone_weights_sha256)
    if run_config.scale != "paper":
        return None
    backbone = run_config.model_config().backbone
    published = published_for(backbone)
    if published is None:
        raise BackboneWeightsError(
            f"preset {run_config.preset!r} at paper scale: MMDetection publishes no ImageNet file for backbone "
            f"{backbone!r}; give one with --backbone-weights PATH (run config field 'backbone_weights')")
    return WeightsSource(hub_checkpoint_dir() / published.file_name, published, None)


def require_backbone_weights(run_configs: Iterable[Any]) -> None:
    """Refuse, in one message, runs whose backbone file is not on disk (before anything is submitted)."""
    from scnet.messages import path_problem

    missing: dict[Path, set[str]] = {}
    explicit: dict[Path, str] = {}
    for config in run_configs:
        source = weights_source(config)
        problem = None if source is None else path_problem(source.path)
        if problem is None:
            continue
        if source.published is None or problem != "does not exist":
            explicit[source.path] = problem
        else:
            missing.setdefault(source.path, set()).add(config.preset)
    if explicit:
        raise BackboneWeightsError("backbone weights file(s) unusable: " + ", ".join(
            f"{path} {problem}" for path, problem in sorted(explicit.items()))
            + " (--backbone-weights / run config field 'backbone_weights')")
    if not missing:
        return
    presets = {preset for names in missing.values() for preset in names}
    raise BackboneWeightsError(
        f"ImageNet backbone weights missing: {', '.join(str(p) for p in sorted(missing))}. Download them on a "
        f"machine with network access with `{fetch_command(presets)}` (TORCH_HOME must point to the same "
        "folder where the runs train), or give a file with --backbone-weights PATH")


def check_file(source: WeightsSource) -> None:
    """The file exists and holds the bytes the run was configured with (published: the name's hash)."""
    from scnet.messages import path_problem

    problem = path_problem(source.path)
    if problem is not None and problem != "does not exist":
        raise BackboneWeightsError(f"{source.path}: backbone weights file {problem} (--backbone-weights / "
                                   "run config field 'backbone_weights')")
    if problem is not None:
        if source.published is not None:
            raise BackboneWeightsError(
                f"{source.path}: ImageNet weights for {source.published.backbone} not found; run "
                f"`python -m scnet.weights fetch --all` (or --preset NAME) where there is network access, "
                "or give --backbone-weights PATH")
        raise BackboneWeightsError(f"{source.path}: backbone weights file not found (run config field "
                                   "'backbone_weights')")
    digest = file_sha256(source.path)
    if source.published is not None and not digest.startswith(source.published.sha256_prefix):
        raise BackboneWeightsError(
            f"{source.path}: SHA-256 {digest[:12]}... does not start with {source.published.sha256_prefix} as its "
            "name says; the file is damaged or not the published one. Delete it and run "
            "`python -m scnet.weights fetch --all`")
    if source.sha256 is not None and digest != source.sha256:
        raise BackboneWeightsError(
            f"{source.path}: the file changed since the run was configured (SHA-256 {digest[:12]}..., the run "
            f"config says {source.sha256[:12]}...); restore it or configure a new run")


def read_backbone_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The file's tensors by name; `{"state_dict": ...}` wrappers and DDP's `module.` prefix are undone
    (mmengine's loader does the same)."""
    from scnet.checkpoints.loading import WeightsError, tensor_dict
    from scnet.messages import path_problem
    from scnet.checkpoints.torch_file import TorchFileError, read_torch_file

    problem = path_problem(Path(path))
    if problem is not None:
        raise BackboneWeightsError(f"{path}: backbone weights file {problem} (--backbone-weights / run config "
                                   "field 'backbone_weights')")
    try:
        payload = read_torch_file(path)
    except TorchFileError as exc:
        raise BackboneWeightsError(f"{path}: not readable as a plain PyTorch state dict ({exc})") from None
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload:
        raise BackboneWeightsError(f"{path}: expected a state dict (tensor names -> tensors), found "
                                   f"{type(payload).__name__}")
    try:
        state = dict(tensor_dict(dict(payload), "state_dict"))
    except WeightsError as exc:
        raise BackboneWeightsError(f"{path}: {exc}") from None
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _first(names: list[str], n: int = 8) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_into_trunk(trunk: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy every trunk tensor from `state`, or raise naming the missing, unexpected and misshapen ones."""
    expected = trunk.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith("fc."))
    misshapen = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                       for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected {_first(unexpected)}")
        if misshapen:
            parts.append(f"shape (file vs model) {_first(misshapen)}")
        raise BackboneWeightsError(f"{source}: does not fit the {type(trunk).__name__} "
                                   f"({sum(1 for k in expected if k not in optional)} tensors): "
                                   + "; ".join(parts) + ". Is it the file for this backbone?")
    with torch.no_grad():
        for name, tensor in expected.items():
            if name in state:
                tensor.copy_(state[name])


def init_backbone(model: nn.Module, run_config: Any) -> str | None:
    """Load the run's backbone file into `model.backbone`; returns what was loaded (None: random init)."""
    source = weights_source(run_config)
    if source is None:
        return None
    check_file(source)
    load_into_trunk(model.backbone, read_backbone_state(source.path), str(source.path))
    return source.describe()
