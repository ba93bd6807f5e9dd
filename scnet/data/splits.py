"""Checks across the splits one run uses, done before the first training iteration.

Each split's own file is checked when it is loaded (`CocoInstances`: JSON structure, polygons,
RLEs, image and stuff-map files present). What only shows when the splits meet is checked here:
that the evaluation split names the same categories as the training split (labels are indices into
the sorted category ids, so any difference shifts or breaks every detection), that the evaluation
split has something to evaluate, and that the stuff maps are single-channel images of the right size
(read from their headers; pixel values are checked as each map is loaded). Without these, a broken
validation file showed up only after all the training.
"""
from __future__ import annotations

from typing import Any

from PIL import Image

from scnet.data import semantic as sem
from scnet.data.coco import CocoInstances
from scnet.data.errors import DatasetError


def check_run_splits(train: CocoInstances | None, evaluation: CocoInstances | None, *,
                     max_images: int | None = None) -> None:
    """Raise `DatasetError`, naming the file, if the splits cannot give a meaningful run."""
    if train is not None:
        check_training_split(train)
        check_stuff_maps(train)
    if evaluation is not None:
        check_evaluation_split(evaluation, max_images=max_images)
        check_stuff_maps(evaluation)
    if train is not None and evaluation is not None:
        check_same_categories(train, evaluation)


def _names(dataset: CocoInstances) -> dict[int, str]:
    return {cid: dataset.coco.cats[cid]["name"] for cid in dataset.label_to_category_id}


def check_same_categories(train: CocoInstances, evaluation: CocoInstances) -> None:
    """The evaluation split must list the training split's categories: the same ids, the same names."""
    trained, evaluated = _names(train), _names(evaluation)
    if trained == evaluated:
        return
    differences = []
    only_train = sorted(set(trained) - set(evaluated))
    only_eval = sorted(set(evaluated) - set(trained))
    if only_train:
        differences.append(f"ids only in the first: {_shown(only_train)}")
    if only_eval:
        differences.append(f"ids only in the second: {_shown(only_eval)}")
    renamed = [f"id {cid} is {trained[cid]!r} vs {evaluated[cid]!r}"
               for cid in sorted(set(trained) & set(evaluated)) if trained[cid] != evaluated[cid]]
    differences.extend(renamed[:3] + (["..."] if len(renamed) > 3 else []))
    raise DatasetError(
        f"{train.ann_file} and {evaluation.ann_file}: the 'categories' lists differ ({'; '.join(differences)}); "
        "a model trained on the first cannot be evaluated on the second: give both files the same "
        "'categories' list (ids and names)")


def _shown(ids: list[int], limit: int = 8) -> str:
    return ", ".join(str(i) for i in ids[:limit]) + (", ..." if len(ids) > limit else "")


def check_training_split(dataset: CocoInstances) -> None:
    """Images whose annotations are all crowds or dropped are kept for training (they train on
    background, as in MMDetection), but a split without a single object to learn is a mistake."""
    if not any(dataset.instance_ids(index) for index in range(len(dataset))):
        raise DatasetError(
            f"{dataset.ann_file}: no image has an annotation to train on ({_annotation_summary(dataset)}); "
            "add annotated images to the training split")


def check_evaluation_split(dataset: CocoInstances, *, max_images: int | None = None) -> None:
    """COCO AP over no images, or over images without a single object, is 0 or undefined: refuse."""
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.ann_file}: the evaluation split {dataset.split!r} has no images, so there "
                           "is nothing to evaluate; add images or evaluate another split (eval.split / "
                           "--eval-split), or train without evaluation (--no-eval)")
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    objects = sum(len(dataset.instance_ids(index)) for index in range(count))
    if objects == 0:
        scope = f"its {count} image(s)" if count == len(dataset) else f"the first {count} image(s) evaluated"
        raise DatasetError(
            f"{dataset.ann_file}: the evaluation split {dataset.split!r} has no annotation to evaluate against in "
            f"{scope} ({_annotation_summary(dataset)}), so COCO AP would be 0 or undefined; add annotations"
            + (" or raise eval.max_images" if count < len(dataset) else "") + " or evaluate another split")


def _annotation_summary(dataset: CocoInstances) -> str:
    stats: dict[str, Any] = dataset.stats
    if not dataset.coco.anns and not stats["unusable_polygons_dropped"]:
        return "the file has no annotations"
    return (f"{len(dataset.coco.anns)} annotation(s) in the file: {stats['crowd_ignored']} crowd, "
            f"{stats['degenerate_boxes_dropped']} with a box of width or height < 1, "
            f"{stats['unusable_polygons_dropped']} without a polygon of 3 or more points")


def check_stuff_maps(dataset: CocoInstances) -> None:
    """Every stuff map of the split opens as a single-channel image of its image's size (headers only)."""
    if dataset.semantic_source != "stuff":
        return
    for index in range(len(dataset)):
        info = dataset.image_info(index)
        path = sem.stuff_map_path(dataset.root, dataset.split, info["file_name"])
        try:
            with Image.open(path) as image:
                bands, size = len(image.getbands()), image.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{path}: cannot read the semantic map ({exc}); replace the file") from exc
        if bands != 1:
            raise DatasetError(f"{path}: a semantic map must be a single-channel PNG, this one has {bands} "
                               "channels; write the class values as one greyscale/palette channel")
        if size != (info["width"], info["height"]):
            raise DatasetError(f"{path}: semantic map is {size[0]}x{size[1]} but its image is "
                               f"{info['width']}x{info['height']} (annotation 'width'/'height'); regenerate the map")
