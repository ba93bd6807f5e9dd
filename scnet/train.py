"""`python -m scnet.train`: train and evaluate one run into a run directory (resumes if interrupted).

    python -m scnet.train --preset scnet_r50 --data data/coco --out runs/scnet_r50 --schedule 20e
    python -m scnet.train --config runs/scnet_r50/config.json          # a run spec written earlier
    torchrun --nproc_per_node 8 -m scnet.train --config runs/x/config.json
    srun --ntasks 8 python -m scnet.train --config runs/x/config.json   # SLURM task environment
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scnet.config import ConfigError
from scnet.engine.cli_args import (ArgumentParser, add_model_arguments, default_scale, model_flags,
                                   report_user_error, user_errors)
from scnet.engine.run_config import EvalConfig, RunConfig, default_image_scale, default_schedule
from scnet.records.files import OutputError, check_writable_dir, is_inside, read_json
from scnet.records.run_dir import RunDir


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m scnet.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="a run's config.json; the other run options are then ignored")
    parser.add_argument("--out", type=Path, help="run directory (default with --config: the config's folder)")
    add_model_arguments(parser)
    parser.add_argument("--schedule", default=None, help="20e, 1x or smoke (default: 20e, smoke at smoke scale)")
    parser.add_argument("--batch-size", type=int, help="global batch size (all processes)")
    parser.add_argument("--lr", type=float, help="base learning rate (the paper: 0.02 for batch 16)")
    parser.add_argument("--epochs", type=int, help="train this many epochs (lr steps stay as scheduled)")
    parser.add_argument("--max-iters", type=int, help="train this many iterations (lr steps scaled along)")
    parser.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision on CUDA (default: float32, as the paper; part of the run id)")
    parser.add_argument("--no-amp", action="store_true", help=argparse.SUPPRESS)  # float32 is the default now
    parser.add_argument("--backbone-weights", type=Path, metavar="PATH",
                        help="ImageNet weights for the backbone trunk (default at paper scale: MMDetection's "
                             "published file in $TORCH_HOME/hub/checkpoints, see python -m scnet.weights)")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--resume", action="store_true",
                        help="require checkpoints/last.pth to exist (runs always resume from it when it does)")
    return parser


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.preset is None or args.data is None:
        raise ConfigError("give --config RUN_DIR/config.json, or both --preset and --data")
    scale = args.scale or default_scale(args.preset)
    schedule = default_schedule(scale, args.schedule or ("smoke" if scale == "smoke" else "20e"))
    changes = {}
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.checkpoint_every is not None:
        changes["checkpoint_every"] = args.checkpoint_every
    if args.epochs is not None and args.max_iters is not None:
        raise ConfigError("give --epochs or --max-iters, not both")
    if args.epochs is not None:
        changes.update(epochs=args.epochs, max_iters=None,
                       lr_steps=schedule.lr_steps if schedule.epochs is not None else ())
    if args.max_iters is not None:
        ratio = args.max_iters / schedule.max_iters if schedule.max_iters else None
        steps = tuple(int(s * ratio) for s in schedule.lr_steps) if ratio else ()
        changes.update(max_iters=args.max_iters, epochs=None, lr_steps=steps,
                       warmup_iters=min(schedule.warmup_iters, args.max_iters))
    if changes:
        schedule = schedule.replace(name=f"{schedule.name}*", **changes)
    image_scale = tuple(args.image_scale) if args.image_scale else default_image_scale(scale)
    if args.amp and args.no_amp:
        raise ConfigError("give --amp or --no-amp, not both")
    config = RunConfig(preset=args.preset, data_root=args.data, scale=scale, model_flags=model_flags(args),
                       seed=args.seed, image_scale=image_scale, schedule=schedule, num_workers=args.workers,
                       amp=args.amp,
                       backbone_weights=str(args.backbone_weights) if args.backbone_weights else None,
                       eval=EvalConfig(split=args.eval_split or "val", max_images=args.eval_max_images,
                                       enabled=not args.no_eval))
    from scnet.engine.semantic_classes import with_semantic_classes

    return with_semantic_classes(config)  # stuff maps are checked when training starts


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from scnet.engine import distributed
    from scnet.engine.device import check_device_usable
    from scnet.engine.run_lock import hold_run_lock
    from scnet.engine.runner import gpu_required_because, run_training

    try:
        if args.config is not None:
            try:
                run_config = RunConfig.from_dict(read_json(args.config))
            except ConfigError as exc:
                raise ConfigError(f"{args.config}: {exc}") from None
            run_dir = args.out or args.config.parent
        else:
            run_config = run_config_from_args(args)
            if args.out is None:
                raise ConfigError("--out RUN_DIR is required with --preset/--data")
            run_dir = args.out
        folder = RunDir(run_dir)
        if args.resume and not folder.last_checkpoint.exists() and not folder.result_file.exists():
            raise ConfigError(f"--resume: {folder.last_checkpoint} does not exist; nothing to resume")
    except (*user_errors(), ValueError) as exc:
        parser.error(str(exc))  # one line, exit 2 (before any work)
    try:
        check_writable_dir(run_dir, "--out")  # before any training, not when the first checkpoint is due
        check_device_usable(args.device, gpu_required_because=gpu_required_because(run_config, training=True))
        with hold_run_lock(run_dir, rank=distributed.detect_dist_env().rank):
            result = run_training(run_config, run_dir, progress=not args.no_progress, device=args.device)
    except user_errors() as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        checkpoint = folder.last_checkpoint
        where = f"from its last checkpoint {checkpoint}" if checkpoint.exists() else "(no checkpoint yet: from the start)"
        print(f"\ninterrupted: run the same command again to resume {run_dir} {where}", file=sys.stderr)
        return 130
    except OSError as exc:
        if not is_inside(exc.filename, run_dir):
            raise
        return report_user_error(OutputError(f"{exc.filename}: could not be written ({exc.strerror or exc}); "
                                             f"make {run_dir} writable again, then run the same command: the "
                                             "run resumes from its last checkpoint"))
    if distributed.detect_dist_env().rank == 0:
        summary = {"run_dir": str(run_dir), "run_id": result.get("run_id"), "metrics": result["metrics"],
                   "images_per_s": result["speed"]["images_per_s"]}
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
