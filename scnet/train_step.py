"""`python -m scnet.train_step`: one training step of a preset on one image, reported the way
MMDetection 3.3.0 logs it, to inspect a step or to compare it with MMDetection's own.

    python -m scnet.train_step --preset scnet_r50 --checkpoint scnet_r50.pth --checkpoint-format mmdet \\
        --data data/coco --split train --image-id 139 --flip off --sampler all --out step.json

The image goes through the training pipeline (`scnet.data.load_sample`) with the flip forced on or
off, the model runs one forward in train mode and one backward of the summed losses; nothing is
updated. `--sampler all` makes every sampler take every candidate (MMDetection's `RandomSampler` with
`num` = 10^7), so the step is deterministic; `--sampler random` draws as training does, from
`--seed`. `--proposals FILE` (a JSON list of `[x1, y1, x2, y2, score]` in input-image pixels, after
resize and flip) skips the RPN and feeds those boxes to the box stages.

The report (JSON): `pipeline` (shapes, `scale_factor`, md5 of the resized uint8 BGR C x H x W image,
the ground truth after resize and flip), `samples` (per sampler: `rpn`, `stage0`.. as lists of
`{"pos", "neg"}`, one per call), `proposals` (how many the box stages got, and the first ten),
`losses` under MMDetection's log names (`loss_rpn_cls`, `s0.loss_cls`, `s0.acc`, ..., `loss` = the sum
of the entries named loss*), `grad_norms` (L2 norm of each parameter's gradient under MMDetection's
parameter name) and `params_without_grad` (trainable parameters that got none).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scnet.checkpoints.loading import FORMATS, build_for_weights, read_weights
from scnet.checkpoints.mmdet_keys import ours_to_mmdet
from scnet.config import ModelConfig
from scnet.data import load_sample
from scnet.data.pipeline import md5_hex, padded_semantic_map, uint8_bgr_chw
from scnet.engine.cli_args import ArgumentParser, interruptible, report_user_error, user_errors
from scnet.messages import describe, path_problem, shorten
from scnet.models.detector import Detector
from scnet.models.sampling import SAMPLING_MODES
from scnet.models.step_record import StepRecord
from scnet.presets import resolve_config
from scnet.records.files import atomic_write
from scnet.records.run_dir import check_new_output_file

_FIXED_NAMES = {"rpn_cls": "loss_rpn_cls", "rpn_bbox": "loss_rpn_bbox", "semantic": "loss_semantic_seg",
                "global_context": "loss_glbctx", "mask": "loss_mask"}


class StepInputError(ValueError):
    """A bad command-line input (proposals file, labels the preset cannot hold); the message names it."""


def mmdet_log(losses: dict[str, torch.Tensor], record: StepRecord, cfg: ModelConfig) -> dict[str, float]:
    """Our loss entries under MMDetection's log names, plus its per-stage `acc` and the total `loss`.

    Mask R-CNN's single stage has no `s0.` prefix in MMDetection's log; naive sample consistency (not an
    MMDetection model) logs its extra mask branches as `loss_mask{k}`."""
    prefix = (lambda stage: "") if cfg.stages == 1 else (lambda stage: f"s{stage}.")
    log: dict[str, float] = {}
    for name, value in losses.items():
        if name in _FIXED_NAMES:
            log[_FIXED_NAMES[name]] = float(value.detach())
        elif name.startswith("stage"):
            stage, part = name[len("stage"):].split("_", 1)
            log[f"{prefix(int(stage))}loss_{part}"] = float(value.detach())
        elif name.startswith("mask"):
            log[f"loss_{name}"] = float(value.detach())
        else:
            raise KeyError(f"no MMDetection log name for our loss {name!r}")
    for stage, accuracy in sorted(record.accuracy.items()):
        log[f"{prefix(stage)}acc"] = float(accuracy)
    log["loss"] = float(sum(v.detach() for v in losses.values()))
    return log


def gradient_report(model: Detector) -> tuple[dict[str, float], list[str]]:
    """(L2 norm of every gradient, trainable parameters without one), under MMDetection's names."""
    cfg = model.config
    mask_heads = len(model.roi_heads.mask_heads)
    norms: dict[str, float] = {}
    without: list[str] = []
    for name, param in model.named_parameters():
        mmdet_name = ours_to_mmdet(name, box_stages=cfg.stages, mask_heads=mask_heads)
        if param.grad is not None:
            # float32, as MMDetection's report computes it (a float64 norm differs by up to ~1e-3 on
            # the largest tensors: float32 accumulation error, not a different gradient)
            norms[mmdet_name] = float(param.grad.detach().norm())
        elif param.requires_grad:
            without.append(mmdet_name)
    return norms, sorted(without)


def pipeline_report(image: torch.Tensor, target: dict[str, torch.Tensor], meta: dict[str, Any],
                    normalized_mean: float) -> dict[str, Any]:
    report: dict[str, Any] = {
        "ori_shape": list(meta["ori_shape"]),
        "img_shape": list(meta["img_shape"]),
        "pad_shape": list(meta["pad_shape"]),
        "scale_factor": [float(v) for v in meta["scale_factor"]],
        "resized_uint8_bgr_chw_md5": md5_hex(uint8_bgr_chw(image)),
        "normalized_input_mean": normalized_mean,
        "gt_bboxes_xyxy": target["boxes"].tolist(),
        "gt_labels": target["labels"].tolist(),
        "gt_mask_areas": target["masks"].sum(dim=(1, 2)).tolist(),
    }
    if "ignored_boxes" in target:
        report["ignored_crowd_boxes"] = target["ignored_boxes"].tolist()
    if target.get("semantic_seg") is not None:
        padded = padded_semantic_map(target["semantic_seg"], tuple(meta["pad_shape"]))
        report["gt_sem_seg_shape"] = list(padded.shape)
        report["gt_sem_seg_md5"] = md5_hex(padded)
    return report


def train_step_report(model: Detector, image: torch.Tensor, target: dict[str, torch.Tensor], meta: dict[str, Any],
                      *, proposals: torch.Tensor | None = None) -> dict[str, Any]:
    """Run one forward (train mode) and backward on one sample and report it; the weights do not change.

    The model's `sampling` ("all" / "random") and `generator` decide how its samplers draw."""
    cfg = model.config
    _check_targets(target, cfg)
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model([image], [target], proposals=None if proposals is None else [proposals])
    sum(losses.values()).backward()
    record = model.last_step
    norms, without = gradient_report(model)
    with torch.no_grad():
        batch, _ = model.batch([image])
    given = record.proposals[0]
    report: dict[str, Any] = {
        "pipeline": pipeline_report(image, target, meta, float(batch.mean())),
        "samples": record.samples,
        "proposals": {"n": int(given.shape[0]), "top": given[:10].tolist()},
        "losses": mmdet_log(losses, record, cfg),
        "grad_norms": norms,
        "params_without_grad": without,
    }
    model.zero_grad(set_to_none=True)
    return report


@dataclass
class StepComparison:
    """How one of our step reports differs from MMDetection's (an oracle file of the same layout)."""

    problems: list[str]
    worst_loss_rel: float
    worst_grad_rel: float

    @property
    def matches(self) -> bool:
        return not self.problems


def _relative(ours: float, reference: float) -> float:
    if reference == 0:
        return 0.0 if ours == 0 else float("inf")
    return abs(ours - reference) / abs(reference)


def _compare_values(field: str, ours: dict[str, float], reference: dict[str, float], rtol: float,
                    problems: list[str]) -> float:
    """Append to `problems` the names present on one side only and the values off by more than `rtol`
    relative; return the worst relative difference of the names both have."""
    if set(ours) != set(reference):
        problems.append(f"{field}: only ours {sorted(set(ours) - set(reference))[:5]}, "
                        f"only MMDetection's {sorted(set(reference) - set(ours))[:5]}")
    worst = 0.0
    for key in sorted(set(ours) & set(reference)):
        rel = _relative(ours[key], reference[key])
        worst = max(worst, rel)
        if rel > rtol:
            problems.append(f"{field}.{key}: ours {ours[key]:.8g} vs {reference[key]:.8g} (relative {rel:.2e})")
    return worst


def compare_step(ours: dict[str, Any], reference: dict[str, Any], *, loss_rtol: float = 1e-4,
                 grad_rtol: float = 5e-3) -> StepComparison:
    """MMDetection's matching rule for a training step (shared/reference/README.md, oracle/train):
    equal pipeline fields and sample counts, the same log entries each within `loss_rtol` relative,
    gradients of the same parameters each within `grad_rtol`, the same parameters without one."""
    problems: list[str] = []
    for key, value in reference["pipeline"].items():
        if key == "normalized_input_mean":
            if _relative(ours["pipeline"].get(key, float("nan")), value) > 1e-5:
                problems.append(f"pipeline.{key}: ours {ours['pipeline'].get(key)} vs {value}")
        elif ours["pipeline"].get(key) != value:
            problems.append(f"pipeline.{key}: ours {ours['pipeline'].get(key)!r} vs {value!r}")
    if ours["samples"] != reference["samples"]:
        problems.append(f"samples: ours {ours['samples']} vs {reference['samples']}")
    if ours["proposals"]["n"] != reference["proposals"]["n"]:
        problems.append(f"proposals.n: ours {ours['proposals']['n']} vs {reference['proposals']['n']}")
    worst_loss = _compare_values("losses", ours["losses"], reference["losses"], loss_rtol, problems)
    worst_grad = _compare_values("grad_norms", ours["grad_norms"], reference["grad_norms"], grad_rtol, problems)
    if sorted(ours["params_without_grad"]) != sorted(reference["params_without_grad"]):
        problems.append(f"params_without_grad: ours {ours['params_without_grad']} vs "
                        f"{reference['params_without_grad']}")
    return StepComparison(problems, worst_loss, worst_grad)


# Bounds of --proposals: far more boxes than any RPN keeps (2000), coordinates far beyond any image.
MAX_PROPOSALS = 100_000
MAX_COORDINATE = 100_000.0
MAX_PROPOSALS_FILE_BYTES = 64 << 20


def read_proposals(path: str | Path) -> torch.Tensor:
    """A JSON list of [x1, y1, x2, y2, score] (score optional) as float32 [K, 4] boxes."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise StepInputError(f"--proposals {path} {problem}")
    if path.stat().st_size > MAX_PROPOSALS_FILE_BYTES:
        raise StepInputError(f"--proposals {path}: {path.stat().st_size:,} bytes, more than the "
                             f"{MAX_PROPOSALS_FILE_BYTES:,} that {MAX_PROPOSALS:,} boxes take; give at most "
                             f"{MAX_PROPOSALS:,} boxes")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise StepInputError(f"--proposals {path}: cannot read it as JSON ({shorten(str(exc), 120)})") from None
    if not isinstance(rows, list) or not rows:
        raise StepInputError(f"--proposals {path}: expected a non-empty JSON list of [x1, y1, x2, y2, score]")
    if len(rows) > MAX_PROPOSALS:
        raise StepInputError(f"--proposals {path}: {len(rows):,} boxes, more than the limit of {MAX_PROPOSALS:,}")
    for i, row in enumerate(rows):
        ok = (isinstance(row, list) and len(row) in (4, 5)
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row))
        if not ok or row[2] < row[0] or row[3] < row[1]:
            raise StepInputError(f"--proposals {path}: entry {i} ({describe(row)}) is not [x1, y1, x2, y2, score] "
                                 "finite numbers with x2 >= x1 and y2 >= y1")
        if any(abs(v) > MAX_COORDINATE for v in row[:4]):
            raise StepInputError(f"--proposals {path}: entry {i} has a coordinate beyond +-{MAX_COORDINATE:,.0f} "
                                 "pixels (the limit); boxes are in input-image pixels")
    return torch.tensor([row[:4] for row in rows], dtype=torch.float32)


def _seed(text: str) -> int:
    """--seed: an integer the generator takes (0 .. 2**64 - 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{describe(text)} is not an integer") from None
    if not 0 <= value < 2 ** 64:
        raise argparse.ArgumentTypeError(f"{describe(value)} is outside 0 .. 2**64 - 1 (a 64-bit seed)")
    return value


def _check_targets(target: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    labels = target["labels"]
    if labels.numel() and int(labels.max()) >= cfg.num_classes:
        raise StepInputError(f"the image has label {int(labels.max())} but the preset has {cfg.num_classes} "
                             "classes; use a dataset with the preset's categories")
    semantic = target.get("semantic_seg")
    if cfg.semantic and semantic is not None:
        values = semantic[semantic != 255]
        if values.numel() and int(values.max()) >= cfg.num_semantic_classes:
            raise StepInputError(f"the semantic map has value {int(values.max())} but the preset has "
                                 f"{cfg.num_semantic_classes} semantic classes")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m scnet.train_step", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, help="e.g. scnet_r50, htc_r50, cascade_mask_rcnn_r50")
    parser.add_argument("--checkpoint", required=True, help="MMDetection checkpoint or one of ours")
    parser.add_argument("--checkpoint-format", default="auto", choices=FORMATS)
    parser.add_argument("--data", required=True, help="dataset root (COCO layout)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-id", type=int, required=True, help="COCO image id")
    parser.add_argument("--flip", choices=("on", "off"), required=True)
    parser.add_argument("--sampler", choices=SAMPLING_MODES, required=True,
                        help="all: every sampler takes every candidate (deterministic); random: as in training")
    parser.add_argument("--proposals", help="JSON list of [x1, y1, x2, y2, score] in input-image pixels "
                        "(after resize and flip); skips the RPN")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the random samplers (--sampler random), "
                        "0 .. 2**64 - 1")
    parser.add_argument("--out", required=True, help="output JSON; a new file, never in a run directory")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


@interruptible
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        check_new_output_file(out, "--out", force=args.force)  # before the work, not after it
        proposals = read_proposals(args.proposals) if args.proposals else None
        cfg = resolve_config(args.preset)
        image, target, meta = load_sample(args.data, args.split, args.image_id, flip=args.flip == "on",
                                          semantic="auto" if cfg.semantic else None)
        weights = read_weights(args.checkpoint, format=args.checkpoint_format)
        model = build_for_weights(cfg, weights, preset_name=args.preset)  # shapes compared before allocating
        del weights
        model.sampling = args.sampler
        model.generator = torch.Generator().manual_seed(args.seed)
        report = train_step_report(model, image, target, meta, proposals=proposals)
    except (*user_errors(), StepInputError) as exc:
        return report_user_error(exc)
    report = {"preset": args.preset, "checkpoint": str(args.checkpoint), "image_id": args.image_id,
              "split": args.split, "flip": args.flip == "on", "sampler": args.sampler, "seed": args.seed,
              **report}
    payload = json.dumps(report, indent=1).encode()
    try:
        atomic_write(out, lambda handle: handle.write(payload), overwrite=args.force)
    except user_errors() as exc:
        return report_user_error(exc)
    losses = report["losses"]
    print(f"loss {losses['loss']:.6g} ({len(losses) - 1} log entries), {len(report['grad_norms'])} gradients "
          f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
