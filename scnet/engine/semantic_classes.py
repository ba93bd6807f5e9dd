"""How many classes a run's semantic head has, fixed when the run is made, and the stuff-map rule.

HTC's and SCNet's semantic branch trains on COCO-stuff's 183 classes in the paper. Without the maps the
data pipeline derives thing-only maps (num_classes + 1 classes), which at paper scale would silently
train another network. So: at paper scale semantic models require `root/stuffthingmaps/{train,val}2017/`;
the class count is resolved from the data when the run config is made and stored in it, so it is part
of the run id (adding maps later makes new runs instead of reusing stale ones), and evaluation sizes the
head from the run's config, not from whatever maps the evaluated split has.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scnet.config import ConfigError

STUFF_ZIP = "stuffthingmaps_trainval2017.zip"
STUFF_URL = "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/" + STUFF_ZIP


class StuffMapsMissing(ConfigError):
    """A semantic model at paper scale without COCO-stuff maps."""


def stuff_maps_missing_message(root: Path, missing: list[Path]) -> str:
    return (f"semantic models (HTC, SCNet, +GC rows) at paper scale train on COCO-stuff's 183 classes, but "
            f"{', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} missing: download "
            f"COCO-stuff's {STUFF_ZIP} ({STUFF_URL}) and unzip it into {root / 'stuffthingmaps'}/ so that it "
            f"holds train2017/ and val2017/")


def require_stuff_maps(root: str | Path, splits: tuple[str, ...] = ("train", "val")) -> None:
    from scnet.data.semantic import stuff_map_dir

    root = Path(root)
    missing = [stuff_map_dir(root, split) for split in splits if not stuff_map_dir(root, split).is_dir()]
    if missing:
        raise StuffMapsMissing(stuff_maps_missing_message(root, missing))


def semantic_classes_for(data_root: str | Path, scale: str, *, check_maps: bool = False) -> int:
    """The semantic class count training on `data_root` gives, read from as little as possible.

    Stuff maps (required at paper scale): `dataset_info.json`'s count, else COCO-stuff's 183. At smoke
    scale a root that does not exist yet becomes the synthetic dataset (its maps use classes + 1), and
    one without maps gets derived maps (the train annotations' categories + 1).
    """
    from scnet.data.semantic import stuff_map_dir, stuff_semantic_classes

    root = Path(data_root)
    if scale == "paper":
        if check_maps:
            require_stuff_maps(root)
        return stuff_semantic_classes(root)
    if stuff_map_dir(root, "train").is_dir():
        return stuff_semantic_classes(root)
    annotations = root / "annotations" / "instances_train2017.json"
    if not annotations.exists():
        from scnet.data.synthetic import CLASSES

        return len(CLASSES) + 1
    try:
        categories = json.loads(annotations.read_text())["categories"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{annotations}: cannot read its 'categories' ({exc})") from exc
    return len(categories) + 1


def with_semantic_classes(run_config: Any, *, check_maps: bool = False) -> Any:
    """`run_config` with `num_semantic_classes` fixed from its data, if its model is semantic and the
    count is not fixed already (explicitly, or through model flags)."""
    if (not run_config.model_config().semantic or run_config.num_semantic_classes is not None
            or "num_semantic_classes" in run_config.model_flags):
        return run_config
    count = semantic_classes_for(run_config.data_root, run_config.scale, check_maps=check_maps)
    return run_config.replace(num_semantic_classes=count)


def check_training_classes(run_config: Any, dataset: Any) -> None:
    """Before training: paper-scale semantic runs have stuff maps, and the training split's maps have
    the class count the run was configured with."""
    if not run_config.model_config().semantic:
        return
    if run_config.scale == "paper" and getattr(dataset, "semantic_source", "stuff") != "stuff":
        require_stuff_maps(Path(run_config.data_root), ("train",))
    fixed = run_config.num_semantic_classes or run_config.model_flags.get("num_semantic_classes")
    found = getattr(dataset, "num_semantic_classes", None)
    if fixed is not None and found is not None and found != fixed:
        raise ConfigError(
            f"{run_config.data_root}: the training split's semantic maps have {found} classes but the run was "
            f"configured with num_semantic_classes={fixed} (the data changed since: stuff maps added or "
            "removed?); configure a new run, e.g. run the same harness command again")
