"""The paper's Tables 1-5 and Figure 1 as data: which network each row is.

Pure data plus two tiny helpers; importing this module has no side effects. The experiment harness
turns rows into runs, and the analysis matches runs back to rows, both through `model_config_for`,
so a row means the same network everywhere.

How rows are spelled (the paper does not say how its ablation networks were built, so one rule):
- Rows *without* sample consistency are `cascade_mask_rcnn` (+ `semantic=True`: the paper adds HTC's
  semantic branch to every cascade model) with the components as flags, or `mask_rcnn`/`htc`.
- Rows *with* sample consistency are `scnet` with components switched off. They therefore keep
  MMDetection SCNet's residual semantic head, which the paper never ablates. This makes Table 2's
  "+ SC + FR + GC", Table 5's lambda=3 and Table 1's SCNet R-50 one network, and Table 2's
  "+ SC + FR" the same network as Table 5's lambda=None (the paper prints the same AP for both).
- Table 2's baseline, Table 3's "CM R-CNN", Table 4's "Cascade Mask R-CNN" and Table 1's Cascade
  Mask R-CNN R-50 are one network (Cascade Mask R-CNN with semantic); likewise Table 1's and
  Table 4's Mask R-CNN, and Table 2's "+ FR" and Table 4's "Cascade Mask R-CNN + FR".

At scale "smoke" every row uses its architecture's `*_r18_smoke` preset, so rows that differ only
by backbone (Table 1) are the same smoke network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from scnet.config import ModelConfig
from scnet.presets import resolve_config

ARCHITECTURES = ("mask_rcnn", "cascade_mask_rcnn", "htc", "scnet")
BACKBONES = ("r50", "r101", "x101_64x4d")
SCALES = ("smoke", "paper")

MASK_COLUMNS = ("AP", "AP50", "AP75", "APS", "APM", "APL")
# Table columns as in results/paper/paper_numbers.csv: AP.. are mask AP, APbb box AP, speed_fps images/s.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "table1": (*MASK_COLUMNS, "APbb", "speed_fps"),
    "table2": ("AP", "AP50", "AP75", "APbb", "speed_fps"),
    "table3": ("AP", "APbb", "speed_fps"),
    "table4": ("AP", "APbb", "speed_fps"),
    "table5": (*MASK_COLUMNS, "APbb"),
    "figure1": ("share_le_0.75",),
}

TABLE_TITLES: dict[str, str] = {
    "table1": "Benchmark of SCNet against other instance segmentation methods (paper: COCO test-dev)",
    "table2": "Component-wise ablation; baseline Cascade Mask R-CNN with semantic branch (paper: COCO val)",
    "table3": "Naive vs effective sample consistency (paper: COCO val)",
    "table4": "Feature relay on Mask R-CNN and Cascade Mask R-CNN (paper: COCO val)",
    "table5": "Global-context loss weight lambda on SCNet (paper: COCO val)",
    "figure1": "IoU of the samples sent to the mask branch (paper: COCO train / val)",
}


@dataclass(frozen=True)
class RowSpec:
    """One row of a paper table: the network that produces it, or `run=False` if nothing does.

    `iou_tags` (Figure 1 only) names the IoU recording of the run to plot; `difference_of` marks a
    row the paper derives from two other rows of the same table (label minus label).
    """

    table: str
    label: str
    architecture: str | None
    backbone: str
    flags: Mapping[str, Any] = field(default_factory=dict, hash=False)
    run: bool = True
    iou_tags: str | None = None
    difference_of: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", MappingProxyType(dict(self.flags)))
        if self.backbone not in BACKBONES:
            raise ValueError(f"RowSpec {self.table}/{self.label}: backbone {self.backbone!r} not in {BACKBONES}")
        if self.run and self.architecture not in ARCHITECTURES:
            raise ValueError(f"RowSpec {self.table}/{self.label}: architecture {self.architecture!r} "
                             f"not in {ARCHITECTURES}")

    @property
    def key(self) -> tuple[str, str, str]:
        """(table, label, backbone): unique within all tables; labels repeat across Table 1's backbones."""
        return (self.table, self.label, self.backbone)


def _row(table: str, label: str, architecture: str | None, backbone: str = "r50", **kw: Any) -> RowSpec:
    return RowSpec(table, label, architecture, backbone, **kw)


_CASCADE_SEMANTIC = {"semantic": True}
_SC_ONLY = {"feature_relay": False, "global_context": False}


def _table1() -> list[RowSpec]:
    rows = [
        _row("table1", "Mask R-CNN", "mask_rcnn"),
        _row("table1", "PANet", None, run=False),
        _row("table1", "LevelSet R-CNN", None, run=False),
        _row("table1", "BlendMask", None, run=False),
        _row("table1", "BMask R-CNN", None, run=False),
        _row("table1", "D2Det", None, "r101", run=False),
    ]
    for backbone in BACKBONES:
        rows += [
            _row("table1", "Cascade Mask R-CNN", "cascade_mask_rcnn", backbone, flags=_CASCADE_SEMANTIC),
            _row("table1", "HTC", "htc", backbone),
            _row("table1", "SCNet", "scnet", backbone),
        ]
    return rows


TABLES: dict[str, list[RowSpec]] = {
    "table1": _table1(),
    "table2": [
        _row("table2", "Cascade Mask R-CNN", "cascade_mask_rcnn", flags=_CASCADE_SEMANTIC),
        _row("table2", "+ SC", "scnet", flags=_SC_ONLY),
        _row("table2", "+ FR", "cascade_mask_rcnn", flags={**_CASCADE_SEMANTIC, "feature_relay": True}),
        _row("table2", "+ GC", "cascade_mask_rcnn", flags={**_CASCADE_SEMANTIC, "global_context": True}),
        _row("table2", "+ SC + FR", "scnet", flags={"global_context": False}),
        _row("table2", "+ SC + FR + GC", "scnet"),
        _row("table2", "Overall improvement", None, run=False,
             difference_of=("+ SC + FR + GC", "Cascade Mask R-CNN")),
    ],
    "table3": [
        _row("table3", "CM R-CNN", "cascade_mask_rcnn", flags=_CASCADE_SEMANTIC),
        _row("table3", "CM R-CNN + naive SC", "scnet", flags={**_SC_ONLY, "sample_consistency": "naive"}),
        _row("table3", "CM R-CNN + effective SC", "scnet", flags=_SC_ONLY),
    ],
    "table4": [
        _row("table4", "Mask R-CNN", "mask_rcnn"),
        _row("table4", "Mask R-CNN + FR", "mask_rcnn", flags={"feature_relay": True}),
        _row("table4", "Cascade Mask R-CNN", "cascade_mask_rcnn", flags=_CASCADE_SEMANTIC),
        _row("table4", "Cascade Mask R-CNN + FR", "cascade_mask_rcnn",
             flags={**_CASCADE_SEMANTIC, "feature_relay": True}),
    ],
    "table5": [
        _row("table5", "lambda=None", "scnet", flags={"global_context": False}),
        *[_row("table5", f"lambda={w:g}", "scnet", flags={"glbctx_weight": float(w)}) for w in (0, 1, 2, 3, 5)],
    ],
    "figure1": [
        _row("figure1", "training w/o SC", "cascade_mask_rcnn", flags=_CASCADE_SEMANTIC, iou_tags="train/"),
        _row("figure1", "training w/ SC", "scnet", iou_tags="train/stage2"),
        # detections matched to a ground truth (IoU >= 0.5, as the training positives); "inference" holds all
        _row("figure1", "inference", "scnet", iou_tags="inference/matched"),
    ],
}


def table_names() -> list[str]:
    return list(TABLES)


def rows_of(name: str) -> list[RowSpec]:
    """The rows of one table; an unknown name lists the known ones."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name]


def preset_for(row: RowSpec, scale: str) -> str:
    """The preset a row's network starts from at a scale ("paper": the row's backbone; "smoke": ResNet-18)."""
    if not row.run or row.architecture is None:
        raise ValueError(f"{row.table} row {row.label!r} is not run by this project "
                         "(quoted from other work or derived from other rows); it has no preset")
    if scale == "paper":
        return f"{row.architecture}_{row.backbone}"
    if scale == "smoke":
        return f"{row.architecture}_r18_smoke"
    raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")


def model_config_for(row: RowSpec, scale: str, **extra: Any) -> ModelConfig:
    """The row's resolved network; `extra` adds dataset facts (num_classes, num_semantic_classes)."""
    clashes = {k for k in extra if k in row.flags and extra[k] != row.flags[k]}
    if clashes:
        raise ValueError(f"{row.table} row {row.label!r} defines {sorted(clashes)} itself "
                         f"({ {k: row.flags[k] for k in sorted(clashes)} }); do not override them")
    return resolve_config(preset_for(row, scale), **{**row.flags, **extra})
