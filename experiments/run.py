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
import math
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from experiments.estimate import (COCO_TRAIN_IMAGES, DEFAULT_IMAGES_PER_S_PER_GPU, Throughput, describe_resources,
                                  estimate_run, read_throughput)
from experiments.executors import EXECUTORS, make_executor
from experiments.executors.base import wait_for_runs
from experiments.profile import SlurmProfile, load_profile
from experiments.requirements import check_one_backbone, check_paper_requirements
from experiments.runspec import (SCALES, RunSpec, UsageError, build_matrix, parse_overrides, resolve_data_root,
                                 resolve_tables)
from experiments.status import RunStatus, State, failure_report, run_statuses
from scnet.engine.cli_args import ArgumentParser, one_line
from scnet.records import OutputError

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


# ------------------------------------------------------------------------------------------ output

def _flags_width(matrix: list[RunSpec]) -> int:
    return min(80, max((len(spec.describe()) for spec in matrix), default=10))


def print_matrix(matrix: list[RunSpec], statuses: list[RunStatus], header: str, with_detail: bool,
                 plan: "ClusterPlan | None" = None) -> None:
    print(header)
    width = _flags_width(matrix)
    for spec, status in zip(matrix, statuses):
        line = f"{spec.run_id}  {status.state.value:<8} {spec.describe():<{width}}  {spec.row_labels()}"
        if with_detail:
            extra = status.detail
            if status.state is State.FAILED and status.log is not None:
                extra = f"{extra}; log: {status.log}"
            if extra:
                line += f"\n{'':14}{extra}"
        if plan is not None:
            line += "".join(f"\n{'':14}{text}" for text in plan.run_lines(spec))
        print(line)
    counts = Counter(status.state for status in statuses)
    summary = ", ".join(f"{counts[state]} {state.value}" for state in State if counts[state])
    print(f"{len(matrix)} run(s): {summary or 'none'}")
    if plan is not None:
        todo = [spec for spec, status in zip(matrix, statuses) if status.state in (State.PENDING, State.FAILED)]
        for text in plan.footer(matrix, todo):
            print(text)


class ClusterPlan:
    """Where each run would train and what it asks for: one job per run (one array per table on
    SLURM) with `world` processes, one per GPU."""

    def __init__(self, *, world: int, gpus: int, resources: str, scale: str, throughput: Throughput,
                 time_limit_min: int | None = None, max_requeue: int | None = None,
                 runs_at_once: int | None = None, where: str = "") -> None:
        self.world, self.gpus, self.resources, self.scale = world, gpus, resources, scale
        self.where = where or resources
        self.throughput = throughput
        self.time_limit_min, self.max_requeue = time_limit_min, max_requeue
        self.runs_at_once = runs_at_once

    def batch_problem(self, spec: RunSpec) -> str | None:
        batch = spec.config.schedule.batch_size
        if batch % self.world:
            return (f"schedule.batch_size={batch} (global) is not divisible by the run's {self.world} processes "
                    f"({self.where}); ask for a number of GPUs that divides {batch}")
        return None

    def run_lines(self, spec: RunSpec) -> list[str]:
        lines = [f"asks: {self.resources}"]
        if self.scale == "paper":
            estimate = estimate_run(spec.config, self.gpus,
                                    images_per_s_per_gpu=self.throughput.for_run(spec.config),
                                    time_limit_min=self.time_limit_min)
            lines.append(f"cost: {estimate.describe()}")
            if estimate.jobs is not None and self.max_requeue is not None and estimate.jobs - 1 > self.max_requeue:
                lines.append(f"WARNING: needs {estimate.jobs - 1} requeues, more than max_requeue={self.max_requeue}; "
                             "raise max_requeue or time in the profile")
        problem = self.batch_problem(spec)
        if problem:
            lines.append(f"PROBLEM: {problem}")
        return lines

    def footer(self, matrix: list[RunSpec], todo: list[RunSpec]) -> list[str]:
        if self.scale != "paper":
            return []
        def total(specs: list[RunSpec]) -> float:
            return sum(estimate_run(s.config, self.gpus,
                                    images_per_s_per_gpu=self.throughput.for_run(s.config)).gpu_hours
                       for s in specs)
        everything, remaining = total(matrix), total(todo)
        at_once = ""
        if self.runs_at_once and todo and self.gpus:
            runs = min(len(todo), self.runs_at_once)
            at_once = f"; at most {runs * self.gpus} GPUs at once ({runs} run(s) of {self.gpus})"
        # Every seed trains the whole matrix once more (seeds 0..N-1), so one seed's runs are its price.
        seeds = sorted({spec.config.seed for spec in matrix})
        one_seed = [spec for spec in matrix if spec.config.seed == seeds[0]] if seeds else []
        return [f"total: ~{everything:,.0f} GPU-h for {len(matrix)} run(s); still to run: ~{remaining:,.0f} GPU-h "
                f"for {len(todo)} run(s){at_once}",
                f"seeds: {len(seeds)}; each extra seed (--seeds {len(seeds) + 1}, ...) adds ~{total(one_seed):,.0f} "
                f"GPU-h for {len(one_seed)} run(s); differences within the seeds' spread are marked in the tables",
                f"{self.throughput.describe()}; {COCO_TRAIN_IMAGES:,} COCO train2017 images per epoch; "
                "evaluation not included"]


def slurm_plan(profile: SlurmProfile, scale: str, throughput: Throughput) -> ClusterPlan:
    resources = describe_resources(profile.resources(), f"sbatch, profile {profile.source}")
    return ClusterPlan(world=profile.world_size, gpus=profile.nodes * profile.gpus_per_node, resources=resources,
                       scale=scale, throughput=throughput, time_limit_min=profile.time_min,
                       max_requeue=profile.max_requeue, runs_at_once=profile.array_parallelism,
                       where=f"{profile.nodes} node(s) x {profile.tasks_per_node} task(s), profile {profile.source}")


def local_gpu_groups(scale: str, jobs: int, gpus_per_run: int | None) -> list[tuple[str, ...]] | None:
    """The GPUs of each run trained at once by the local executor (None: one process per run).

    At paper scale every visible GPU is used, one process each (as torchrun would), shared out over
    --jobs; at smoke scale only when --gpus-per-run asks for it."""
    from experiments.executors.local import gpu_groups, visible_gpus

    if gpus_per_run == 0 or (gpus_per_run is None and scale != "paper"):
        return None
    gpus = visible_gpus()
    if not gpus:
        if gpus_per_run:
            raise UsageError(f"--gpus-per-run {gpus_per_run}: no CUDA GPU is visible on this machine")
        return None
    per_run = gpus_per_run if gpus_per_run is not None else len(gpus) // jobs
    if per_run < 1:
        raise UsageError(f"--jobs {jobs}: more runs at once than the {len(gpus)} visible GPU(s); lower --jobs")
    try:
        return gpu_groups(gpus, per_run, jobs)
    except ValueError as exc:
        raise UsageError(f"--gpus-per-run/--jobs: {exc} (CUDA_VISIBLE_DEVICES selects GPUs)") from None


def local_plan(groups: list[tuple[str, ...]] | None, scale: str, throughput: Throughput) -> ClusterPlan:
    if groups:
        resources = (f"this machine: {len(groups[0])} GPU(s) per run (CUDA_VISIBLE_DEVICES={','.join(groups[0])}"
                     f"{' and others' if len(groups) > 1 else ''}), one process each")
        return ClusterPlan(world=len(groups[0]), gpus=len(groups[0]), resources=resources, scale=scale,
                           throughput=throughput, runs_at_once=len(groups),
                           where=f"one per GPU of this machine's {len(groups[0])}-GPU group; --gpus-per-run to change")
    return ClusterPlan(world=1, gpus=0, resources="this machine: one process per run, no GPU set aside",
                       scale=scale, throughput=throughput)


class Reporter:
    """Says when a run ends; a failure comes with the tail of its log, and the others carry on."""

    def __init__(self, matrix: list[RunSpec], runs_dir: Path, log_lines: int) -> None:
        self.rows = {spec.run_dir(runs_dir): spec.row_labels() for spec in matrix}
        self.log_lines = log_lines
        self.failed: list[RunStatus] = []

    def __call__(self, status: RunStatus) -> None:
        rows = self.rows.get(status.run_dir, "")
        if status.state is State.FAILED:
            self.failed.append(status)
            tqdm.write(f"[failed] {status.run_dir.name} ({rows})\n{failure_report(status, self.log_lines)}",
                       file=sys.stderr)
        elif status.in_flight:
            tqdm.write(f"[{status.state.value}] {status.run_dir.name} ({rows}): {status.detail}", file=sys.stderr)
        else:
            detail = f": {status.detail}" if status.detail else ""
            tqdm.write(f"[{status.state.value}] {status.run_dir.name} ({rows}){detail}", file=sys.stderr)


def gather_matrix(matrix: list[RunSpec], runs_dir: Path):
    """The finished runs of this matrix only (not every run under the runs folder) as a DataFrame."""
    import pandas as pd

    from analysis.gather import BASE_COLUMNS, gather_runs

    frames = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in matrix:
            run_dir = spec.run_dir(runs_dir)
            if (run_dir / "result.json").exists():
                frames.append(gather_runs(run_dir))
    if not frames:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def print_tables(tables: list[str], matrix: list[RunSpec], runs_dir: Path, scale: str, out: Path) -> None:
    from analysis.figure1 import build_figure1
    from analysis.tables import build_table

    runs_df = gather_matrix(matrix, runs_dir)
    for name in tables:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if name == "figure1":
                figure = build_figure1(runs_df, scale)
                text = figure.to_markdown()
                paths = figure.save(out / "figures" / f"figure1_{scale}.png")
            else:
                table = build_table(name, runs_df, scale)
                text = table.to_markdown()
                paths = table.write(out / "tables")
        print(text)
        for warning in caught:
            print(f"note: {warning.message}", file=sys.stderr)
        print(f"wrote {', '.join(str(p) for p in paths)}\n")


# --------------------------------------------------------------------------------------------- main

def prepare_run_dirs(matrix: list[RunSpec], runs_dir: Path) -> None:
    """Each run's directory with its frozen config, written once (the config is the run's identity)."""
    from scnet.records import write_config

    for spec in matrix:
        run_dir = spec.run_dir(runs_dir)
        if not (run_dir / "config.json").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(run_dir, spec.config.to_dict())


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
    from scnet.records import OutputError, check_writable_dir

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


def run(args: argparse.Namespace) -> int:
    tables = resolve_tables(args.tables)
    executor_name = args.executor or ("slurm" if args.profile else "local")
    if executor_name == "slurm" and not args.profile:
        raise UsageError("--executor slurm needs --profile FILE (copy slurm/profiles/example.toml)")
    if args.profile and executor_name != "slurm":
        raise UsageError(f"--profile is for the SLURM executor; drop it or drop --executor {executor_name}")
    inspecting = args.dry_run or args.status
    if args.scale == "paper" and executor_name != "slurm" and args.executor is None and not inspecting:
        raise UsageError("--scale paper trains on 8 GPUs per run through SLURM: pass --profile FILE "
                         "(see slurm/profiles/example.toml), or --executor local to train on this machine")
    if args.jobs is None:
        args.jobs = (os.cpu_count() or 1) if args.scale == "smoke" else 1
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: need at least 1")
    if args.gpus_per_run is not None and (args.gpus_per_run < 0 or executor_name != "local"):
        raise UsageError(f"--gpus-per-run {args.gpus_per_run}: " + ("need 0 or more" if args.gpus_per_run < 0 else
                         f"for the local executor only (on SLURM the profile says how many GPUs)"))
    throughput = read_throughput(args.images_per_s_per_gpu)
    check_runs_dir(Path(args.runs_dir))
    if executor_name in ("local", "inline") and args.scale == "paper" and not inspecting:
        check_gpus_here(executor_name)
    profile = load_profile(args.profile) if args.profile else None
    data_root = resolve_data_root(args.scale, args.data)
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
    matrix = build_matrix(tables, args.scale, data_root, args.seeds, overrides)
    if args.backbone_weights:
        check_one_backbone(matrix, args.backbone_weights)
    runs_dir = Path(args.runs_dir).resolve()
    out = Path(args.out).resolve()
    progress = not args.no_progress and sys.stderr.isatty()
    run_dirs = [spec.run_dir(runs_dir) for spec in matrix]
    header = f"{', '.join(tables)} at {args.scale} scale: {len(matrix)} run(s) in {runs_dir}"

    groups = local_gpu_groups(args.scale, args.jobs, args.gpus_per_run) if executor_name == "local" else None
    if profile is not None:
        plan = slurm_plan(profile, args.scale, throughput)
    else:
        plan = local_plan(groups, args.scale, throughput)

    if inspecting:
        print_matrix(matrix, run_statuses(run_dirs), header, with_detail=args.status,
                     plan=plan if args.dry_run and (args.scale == "paper" or profile or groups) else None)
        return 0
    # At submission, not an hour into the queue: every process of a run takes an equal share of the batch.
    problems = [problem for spec in matrix if (problem := plan.batch_problem(spec))]
    if problems:
        raise UsageError(problems[0])
    check_paper_requirements(matrix)  # stuff maps, ImageNet weights: before anything is submitted

    check_outputs(tables, runs_dir, out)
    executor = make_executor(executor_name, runs_dir=runs_dir, jobs=len(groups) if groups else args.jobs,
                             progress=progress, profile=profile, job_name=f"scnet-{'-'.join(tables)}"[:64],
                             gpu_groups=groups)
    if args.no_wait and not executor.supports_no_wait:
        raise UsageError(f"--no-wait needs an executor that runs outside this process (local or slurm), "
                         f"not {executor_name}")
    executor.check(runs=sum(s.state in (State.PENDING, State.FAILED) for s in run_statuses(run_dirs)))
    ensure_data(args.scale, data_root, progress)
    prepare_run_dirs(matrix, runs_dir)

    statuses = run_statuses(run_dirs)
    todo = [s.run_dir for s in statuses if s.state in (State.PENDING, State.FAILED)]
    elsewhere = [s for s in statuses if s.in_flight]
    counts = Counter(s.state for s in statuses)
    print(f"{header}: {counts[State.DONE]} done, {len(elsewhere)} in flight elsewhere, {len(todo)} to run "
          f"({executor_name})", file=sys.stderr)
    reporter = Reporter(matrix, runs_dir, args.log_lines)
    for status in elsewhere:
        reporter(status)
    if todo:
        executor.execute(todo, wait=not args.no_wait, on_end=reporter)
    if args.no_wait:
        print(f"started {len(todo)} run(s); follow them with: python -m experiments.run {' '.join(args.tables)} "
              f"--status (same options); run again without --no-wait to gather the table", file=sys.stderr)
        return 0
    # Runs another invocation or job is training (found at the start, or taken meanwhile): wait for them.
    in_flight = [s.run_dir for s in run_statuses(run_dirs) if s.in_flight]
    if in_flight:
        print(f"waiting for {len(in_flight)} run(s) trained by another process or job", file=sys.stderr)
        wait_for_runs(in_flight, reporter, poll_s=2.0 if executor_name != "slurm" else 5.0,
                      progress=progress, desc="other runs")

    final = run_statuses(run_dirs)
    print_tables(tables, matrix, runs_dir, args.scale, out)
    failed = [s for s in final if s.state is State.FAILED]
    unfinished = [s for s in final if s.state is not State.DONE]
    if unfinished:
        print(f"{len(unfinished)} of {len(final)} run(s) did not finish ({len(failed)} failed); their rows are "
              "empty. Fix the cause and run the same command again: finished runs are kept and unfinished "
              "ones resume from their last checkpoint.", file=sys.stderr)
        return 1
    return 0


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
