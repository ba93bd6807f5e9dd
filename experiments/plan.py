"""Where each run of a matrix would train and what it asks for: the cluster plan that `--dry-run`
prices and that every run is checked against before anything is submitted (a global batch that the
run's processes cannot share equally is refused at submission, not an hour into the queue).
"""
from __future__ import annotations

from experiments.estimate import COCO_TRAIN_IMAGES, Throughput, describe_resources, estimate_run
from experiments.profile import SlurmProfile
from experiments.runspec import RunSpec, UsageError


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
