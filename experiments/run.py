"""`python -m experiments.run NAME`: train every run a paper table needs, then print the rebuilt table.

    python -m experiments.run table2                      # smoke scale on this machine; prints the table
    python -m experiments.run table2 --dry-run            # the run matrix: one line per run, flags and state
    python -m experiments.run table5 --scale paper --data /datasets/coco --profile slurm/profiles/mine.toml
    python -m experiments.run table5 --status             # pending / queued / running / done / failed
    python -m experiments.run figure1

Runs are identified by the hash of their frozen config, so finished runs are skipped, unfinished
ones resume from their last checkpoint, rows of several tables that are one network train once,
and a changed config is a new run. Usage errors exit with status 2 and one message, no traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from experiments.estimate import DEFAULT_IMAGES_PER_S_PER_GPU, read_throughput
from experiments.executors import EXECUTORS, make_executor
from experiments.executors.base import wait_for_runs
from experiments.plan import ClusterPlan, local_gpu_groups, local_plan, slurm_plan
from experiments.profile import SlurmProfile, load_profile
from experiments.report import Reporter, print_matrix, print_tables
from experiments.requirements import check_one_backbone, check_paper_requirements
from experiments.runspec import RunSpec, UsageError, build_matrix, parse_overrides, resolve_data_root, resolve_tables
from experiments.status import State, run_statuses
from scnet.engine.cli_args import ArgumentParser, one_line
from scnet.engine.run_config import SCALES
from scnet.records.files import OutputError, check_writable_dir
from scnet.records.run_dir import RunDir

EXIT_USAGE = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(  # mistakes are one `error:` line
        prog="python -m experiments.run", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:8]))
    parser.add_argument("tables", nargs="+", metavar="NAME",
                        help="table1 .. table5, figure1, or all (several allowed; shared runs train once)")
    parser.add_argument("--scale", choices=SCALES, default="smoke",
                        help="smoke: synthetic data, small networks, CPU (default); paper: COCO, the paper's schedule")
    parser.add_argument("--data", help="dataset root (paper: COCO 2017; smoke: default data/shapes, the synthetic "
                                       "dataset made there on first use; any other path must already hold a dataset)")
    parser.add_argument("--runs-dir", default="results/runs", help="where run directories live (default results/runs)")
    parser.add_argument("--out", default="results", help="tables go to OUT/tables, Figure 1 to OUT/figures")
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run with seeds 0..N-1 (default 1)")
    parser.add_argument("--executor", choices=EXECUTORS,
                        help="inline (in this process, for debugging), local (subprocesses; default) or slurm "
                             "(default when --profile is given)")
    parser.add_argument("--profile", help="SLURM profile TOML (see slurm/profiles/example.toml)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local executor: runs trained at once (default: one per CPU core at smoke scale, "
                             "each with one thread; 1 at paper scale)")
    parser.add_argument("--gpus-per-run", type=int, default=None,
                        help="local executor: GPUs per run, one training process each, torchrun-style (default: "
                             "at paper scale all visible GPUs shared out over --jobs; at smoke scale one process)")
    parser.add_argument("--images-per-s-per-gpu", default=str(DEFAULT_IMAGES_PER_S_PER_GPU), metavar="N|JSON",
                        help="--dry-run at paper scale: the training throughput for the GPU-hour estimate: a number "
                             f"(default {DEFAULT_IMAGES_PER_S_PER_GPU}, an assumption), or the JSON file "
                             "benchmarks/gpu_check.py wrote on a GPU (measured)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config field for every run, e.g. --set schedule.max_iters=20 "
                             "(changes the runs' identity)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed-precision training on CUDA (default: float32, as the paper; other run ids)")
    parser.add_argument("--backbone-weights", metavar="PATH",
                        help="ImageNet backbone file for every run (default at paper scale: MMDetection's "
                             "published files in $TORCH_HOME/hub/checkpoints; python -m scnet.weights fetch)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the run matrix and each run's state; run nothing")
    mode.add_argument("--status", action="store_true", help="print each run's state (with log paths); run nothing")
    mode.add_argument("--no-wait", action="store_true", help="start/submit the runs and return; a later call gathers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--log-lines", type=int, default=20, help="log lines shown for a failed run (default 20)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ checks

def ensure_data(scale: str, data_root: Path, progress: bool) -> None:
    if scale != "smoke":
        return
    from scnet.data import DatasetError, ensure_synthetic
    from scnet.data.location import is_default_synthetic_root, missing_dataset_problem

    if not is_default_synthetic_root(data_root):  # never generate at a (possibly mistyped) --data path
        problem = missing_dataset_problem(data_root)
        if problem is not None:
            raise UsageError(f"--data: {problem}")
        return
    if not data_root.exists():
        print(f"making the synthetic smoke dataset in {data_root} (once; cached)", file=sys.stderr)
    try:
        ensure_synthetic(data_root, seed=0, progress=progress)
    except DatasetError as exc:
        raise UsageError(f"--data {data_root}: {exc}") from None


def check_outputs(tables: list[str], runs_dir: Path, out: Path) -> None:
    """Every folder this invocation will write is writable now, not after hours of training."""
    folders = [(runs_dir, "--runs-dir")]
    if any(name != "figure1" for name in tables):
        folders.append((out / "tables", "--out"))
    if "figure1" in tables:
        folders.append((out / "figures", "--out"))
    for folder, option in folders:
        try:
            check_writable_dir(folder, option)
        except OutputError as exc:
            raise UsageError(str(exc)) from None


def check_runs_dir(runs_dir: Path) -> None:
    """--runs-dir must be a folder (or not exist yet): also for --status and --dry-run, which only read."""
    from scnet.messages import path_kind

    existing = next((p for p in (runs_dir, *runs_dir.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        kind = path_kind(existing)
        where = f"is {kind}" if existing == runs_dir else f"lies under {existing}, which is {kind}"
        raise UsageError(f"--runs-dir {runs_dir} {where}, not a folder; give a folder for the run directories")


def check_gpus_here(executor_name: str) -> None:
    """Paper-scale runs on this machine need its GPUs: checked once, before any run folder is
    written or any run started (each would otherwise fail the same way)."""
    from scnet.engine.device import DeviceUnavailable, check_device_usable

    try:
        check_device_usable(None, gpu_required_because=f"paper-scale training with --executor {executor_name}")
    except DeviceUnavailable as exc:
        raise UsageError(f"--scale paper --executor {executor_name}: {exc}") from None


# ------------------------------------------------------------------------------------------ the request

@dataclass
class Request:
    """One invocation, checked: the runs it names, where they train and where their outputs go."""

    tables: list[str]
    scale: str
    executor: str
    matrix: list[RunSpec]
    runs_dir: Path
    out: Path
    data_root: Path
    profile: SlurmProfile | None
    gpu_groups: list[tuple[str, ...]] | None
    plan: ClusterPlan
    progress: bool

    @property
    def run_dirs(self) -> list[Path]:
        return [spec.run_dir(self.runs_dir) for spec in self.matrix]

    @property
    def header(self) -> str:
        return f"{', '.join(self.tables)} at {self.scale} scale: {len(self.matrix)} run(s) in {self.runs_dir}"


def choose_executor(args: argparse.Namespace) -> str:
    """The executor the options ask for, and the options that only make sense with it."""
    executor_name = args.executor or ("slurm" if args.profile else "local")
    if executor_name == "slurm" and not args.profile:
        raise UsageError("--executor slurm needs --profile FILE (copy slurm/profiles/example.toml)")
    if args.profile and executor_name != "slurm":
        raise UsageError(f"--profile is for the SLURM executor; drop it or drop --executor {executor_name}")
    if args.scale == "paper" and executor_name != "slurm" and args.executor is None and not _inspecting(args):
        raise UsageError("--scale paper trains on 8 GPUs per run through SLURM: pass --profile FILE "
                         "(see slurm/profiles/example.toml), or --executor local to train on this machine")
    if args.jobs is None:
        args.jobs = (os.cpu_count() or 1) if args.scale == "smoke" else 1
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: need at least 1")
    if args.gpus_per_run is not None and (args.gpus_per_run < 0 or executor_name != "local"):
        raise UsageError(f"--gpus-per-run {args.gpus_per_run}: " + ("need 0 or more" if args.gpus_per_run < 0 else
                         "for the local executor only (on SLURM the profile says how many GPUs)"))
    return executor_name


def _inspecting(args: argparse.Namespace) -> bool:
    return args.dry_run or args.status


def run_overrides(args: argparse.Namespace) -> dict:
    """--set, --amp and --backbone-weights as run-config fields for every run."""
    overrides = parse_overrides(args.set)
    if args.amp:
        overrides.setdefault("amp", True)
    if args.backbone_weights:
        from scnet.messages import path_problem

        weights_path = Path(args.backbone_weights).expanduser().resolve()
        problem = path_problem(weights_path)
        if problem is not None:  # named here, not as a --set error of the run config it would go into
            raise UsageError(f"--backbone-weights {weights_path} {problem}")
        overrides.setdefault("backbone_weights", str(weights_path))
    return overrides


def make_request(args: argparse.Namespace) -> Request:
    """Every check that needs no run folder, in the order a user fixes them; then the run matrix and
    the plan of where it trains."""
    tables = resolve_tables(args.tables)
    executor_name = choose_executor(args)
    throughput = read_throughput(args.images_per_s_per_gpu)
    check_runs_dir(Path(args.runs_dir))
    if executor_name in ("local", "inline") and args.scale == "paper" and not _inspecting(args):
        check_gpus_here(executor_name)
    profile = load_profile(args.profile) if args.profile else None
    data_root = resolve_data_root(args.scale, args.data)
    matrix = build_matrix(tables, args.scale, data_root, args.seeds, run_overrides(args))
    if args.backbone_weights:
        check_one_backbone(matrix, args.backbone_weights)
    groups = local_gpu_groups(args.scale, args.jobs, args.gpus_per_run) if executor_name == "local" else None
    if profile is not None:
        plan = slurm_plan(profile, args.scale, throughput)
    else:
        plan = local_plan(groups, args.scale, throughput)
    return Request(tables=tables, scale=args.scale, executor=executor_name, matrix=matrix,
                   runs_dir=Path(args.runs_dir).resolve(), out=Path(args.out).resolve(), data_root=data_root,
                   profile=profile, gpu_groups=groups, plan=plan,
                   progress=not args.no_progress and sys.stderr.isatty())


# ------------------------------------------------------------------------------------------ running

def prepare_run_dirs(matrix: list[RunSpec], runs_dir: Path) -> None:
    """Each run's directory with its frozen config, written once (the config is the run's identity)."""
    for spec in matrix:
        RunDir(spec.run_dir(runs_dir)).write_config_once(spec.config)


def start_runs(request: Request, args: argparse.Namespace) -> Reporter:
    """Check what the runs need (plan, data, outputs, executor), write their folders, start the ones
    to run; every check comes before the first folder is written."""
    # At submission, not an hour into the queue: every process of a run takes an equal share of the batch.
    problems = [problem for spec in request.matrix if (problem := request.plan.batch_problem(spec))]
    if problems:
        raise UsageError(problems[0])
    check_paper_requirements(request.matrix)  # stuff maps, ImageNet weights: before anything is submitted
    check_outputs(request.tables, request.runs_dir, request.out)
    groups = request.gpu_groups
    executor = make_executor(request.executor, runs_dir=request.runs_dir, jobs=len(groups) if groups else args.jobs,
                             progress=request.progress, profile=request.profile,
                             job_name=f"scnet-{'-'.join(request.tables)}"[:64], gpu_groups=groups)
    if args.no_wait and not executor.supports_no_wait:
        raise UsageError(f"--no-wait needs an executor that runs outside this process (local or slurm), "
                         f"not {request.executor}")
    run_dirs = request.run_dirs
    executor.check(runs=sum(s.state in (State.PENDING, State.FAILED) for s in run_statuses(run_dirs)))
    ensure_data(request.scale, request.data_root, request.progress)
    prepare_run_dirs(request.matrix, request.runs_dir)

    statuses = run_statuses(run_dirs)
    todo = [s.run_dir for s in statuses if s.state in (State.PENDING, State.FAILED)]
    elsewhere = [s for s in statuses if s.in_flight]
    counts = Counter(s.state for s in statuses)
    print(f"{request.header}: {counts[State.DONE]} done, {len(elsewhere)} in flight elsewhere, {len(todo)} to run "
          f"({request.executor})", file=sys.stderr)
    reporter = Reporter(request.matrix, request.runs_dir, args.log_lines)
    for status in elsewhere:
        reporter(status)
    if todo:
        executor.execute(todo, wait=not args.no_wait, on_end=reporter)
    if args.no_wait:
        print(f"started {len(todo)} run(s); follow them with: python -m experiments.run {' '.join(args.tables)} "
              f"--status (same options); run again without --no-wait to gather the table", file=sys.stderr)
    return reporter


def finish(request: Request, reporter: Reporter) -> int:
    """Wait for the runs other processes train, print the tables; 1 if a run did not finish."""
    run_dirs = request.run_dirs
    # Runs another invocation or job is training (found at the start, or taken meanwhile): wait for them.
    in_flight = [s.run_dir for s in run_statuses(run_dirs) if s.in_flight]
    if in_flight:
        print(f"waiting for {len(in_flight)} run(s) trained by another process or job", file=sys.stderr)
        wait_for_runs(in_flight, reporter, poll_s=2.0 if request.executor != "slurm" else 5.0,
                      progress=request.progress, desc="other runs")

    final = run_statuses(run_dirs)
    print_tables(request.tables, request.matrix, request.runs_dir, request.scale, request.out)
    failed = [s for s in final if s.state is State.FAILED]
    unfinished = [s for s in final if s.state is not State.DONE]
    if unfinished:
        print(f"{len(unfinished)} of {len(final)} run(s) did not finish ({len(failed)} failed); their rows are "
              "empty. Fix the cause and run the same command again: finished runs are kept and unfinished "
              "ones resume from their last checkpoint.", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    request = make_request(args)
    if _inspecting(args):
        shown = args.dry_run and (args.scale == "paper" or request.profile or request.gpu_groups)
        print_matrix(request.matrix, run_statuses(request.run_dirs), request.header, with_detail=args.status,
                     plan=request.plan if shown else None)
        return 0
    reporter = start_runs(request, args)
    if args.no_wait:
        return 0
    return finish(request, reporter)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (UsageError, OutputError) as exc:  # OutputError: a runs folder that cannot be written or locked
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume (finished runs are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
