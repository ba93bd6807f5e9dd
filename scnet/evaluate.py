"""`python -m scnet.evaluate`: COCO box/mask AP and inference speed of a run or of a checkpoint.

    python -m scnet.evaluate --run runs/scnet_r50                 # the run's last checkpoint; rewrites result.json
    python -m scnet.evaluate --checkpoint model.pth --preset scnet_r50 --data data/coco --out runs/eval_x

--run takes a run whose training has finished (an unfinished one is refused: its result.json would
mark it done; resume it with scnet.train, or evaluate its last.pth with --checkpoint elsewhere).
--out must be a new folder or one of earlier evaluations without results: never a run's folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scnet.config import ConfigError
from scnet.cpu_memory import keep_freed_memory
from scnet.engine.cli_args import (ArgumentParser, add_model_arguments, default_scale, model_flags,
                                   report_user_error, user_errors)
from scnet.engine.run_config import EvalConfig, RunConfig, default_image_scale
from scnet.records.run_dir import RunDir


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m scnet.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory (with config.json and checkpoints/last.pth)")
    parser.add_argument("--checkpoint", type=Path, help="weights: a training checkpoint or a state dict")
    parser.add_argument("--out", type=Path, help="output folder with --checkpoint (result.json, detections.json)")
    add_model_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # large tensors reuse memory instead of page-faulting (scnet.cpu_memory)
    try:
        if args.run is not None:
            run_config, run_dir = None, args.run
            if args.eval_split is not None or args.eval_max_images is not None or args.preset or args.data:
                raise ConfigError("with --run, the model, data and evaluation settings come from the run's "
                                  "config.json (its run id covers them); drop --preset/--data/--eval-*")
            if args.checkpoint is not None or args.out is not None:
                raise ConfigError("with --run, the weights are the run's checkpoints/last.pth and the results go to "
                                  "the run; to evaluate other weights give --checkpoint with --preset, --data and "
                                  "a new --out folder")
            if not RunDir(args.run).config_file.exists():
                raise ConfigError(f"{RunDir(args.run).config_file}: not found; is {args.run} a run directory?")
        else:
            if args.checkpoint is None or args.preset is None or args.data is None or args.out is None:
                raise ConfigError("give --run RUN_DIR, or --checkpoint with --preset, --data and --out")
            scale = args.scale or default_scale(args.preset)
            image_scale = tuple(args.image_scale) if args.image_scale else default_image_scale(scale)
            run_config = RunConfig(preset=args.preset, data_root=args.data, scale=scale,
                                   model_flags=model_flags(args), seed=args.seed, image_scale=image_scale,
                                   num_workers=args.workers,
                                   eval=EvalConfig(split=args.eval_split or "val", max_images=args.eval_max_images))
            run_dir = args.out
            from scnet.engine.semantic_classes import with_semantic_classes

            # The head's classes as training on this data gives them, never the evaluated split's maps.
            run_config = with_semantic_classes(run_config)
    except (*user_errors(), ValueError) as exc:
        parser.error(str(exc))  # one line, exit 2 (before any work)
    from scnet.engine import distributed
    from scnet.engine.run_lock import hold_run_lock
    from scnet.engine.runner import evaluate_run
    from scnet.records.files import check_writable_dir

    try:
        check_writable_dir(run_dir, "--run" if args.run is not None else "--out")
        with hold_run_lock(run_dir, rank=distributed.detect_dist_env().rank):
            result = evaluate_run(run_dir, run_config=run_config, checkpoint=args.checkpoint,
                                  progress=not args.no_progress, device=args.device)
    except user_errors() as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing was marked done in {run_dir}; run the same command again to evaluate",
              file=sys.stderr)
        return 130

    if distributed.detect_dist_env().rank == 0:
        print(json.dumps({"run_dir": str(run_dir), "metrics": result["metrics"], "speed": result["speed"]},
                         indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
