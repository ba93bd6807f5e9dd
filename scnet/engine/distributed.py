"""Process-group set-up for DistributedDataParallel, launched by torchrun or as SLURM tasks.

torchrun exports RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; a SLURM job step (srun, or
submitit with tasks_per_node > 1) exports SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the node
list instead, so the rendezvous address is derived from the first node of SLURM_NODELIST and the
port from the job id (every task of a job computes the same one) unless given. That port lies
below Linux's ephemeral range (32768-60999), from which outgoing connections take theirs: a port
inside it is now and then already in use on the node.

Two groups, two timeouts. The default group (NCCL on CUDA) carries the training step's collectives
and times out after `SCNET_COLLECTIVE_TIMEOUT_S` (120 s): a rank that dies without a word (killed,
crashed) stops the others within about that, rather than after an hour. Waits on rank 0's own long
work (COCOeval on val2017, writing a checkpoint, making the smoke dataset) go through a second, gloo
group with a 60-minute timeout (`patient_barrier`, `broadcast_object`, `gather_to_main`). A rank
that fails with an exception says so through `agree` before the next collective, so the others
stop at once (see `scnet.engine.trainer`).

Start-up is not a training step: ranks reach the first collective minutes apart (imports from a
shared filesystem, parsing train2017, rank 0 writing the run's files), which the 120 s timeout
would turn into a failed job. So the rendezvous waits with the patient timeout (the store is made
first, with it, and handed to the process group), and the trainer passes a `patient_barrier`
before DistributedDataParallel's first broadcast (MMDetection waits up to 30 minutes there).
"""
from __future__ import annotations

import datetime
import inspect
import os
import socket
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"  # "none", "torchrun" or "slurm"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """'gpu[01-03,07],rack[1-2]-node[01-02]' -> host names in Slurm's order (see scnet.engine.hostlist)."""
    from scnet.engine.hostlist import expand_hostlist

    try:
        return expand_hostlist(nodelist)
    except ValueError as exc:
        raise ValueError(f"SLURM_NODELIST={nodelist!r}: {exc}") from None


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError as exc:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from exc


def detect_dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables; a single process (or a one-task SLURM job) is not distributed."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=_int(env, "RANK"), world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
            launcher="torchrun")
    slurm_tasks = _int(env, "SLURM_NTASKS") if "SLURM_PROCID" in env and "SLURM_NTASKS" in env else 1
    if slurm_tasks > 1:
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        else:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if not nodelist:
                raise ValueError("SLURM task environment without SLURM_NODELIST or MASTER_ADDR: "
                                 "set MASTER_ADDR to the first node's host name")
            addr = expand_slurm_nodelist(nodelist)[0]
        if "MASTER_PORT" in env:
            port = _int(env, "MASTER_PORT")
        else:
            port = slurm_rendezvous_port(int(env.get("SLURM_JOB_ID", "0") or 0))
        return DistEnv(rank=_int(env, "SLURM_PROCID"), world_size=_int(env, "SLURM_NTASKS"),
                       local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                       master_addr=addr, master_port=port, launcher="slurm")
    return DistEnv()


# Ports for a SLURM job's rendezvous, chosen by job id: below Linux's default ephemeral range
# (net.ipv4.ip_local_port_range = 32768 60999) and above most services' fixed ports.
RENDEZVOUS_PORTS = range(20000, 32768)


def slurm_rendezvous_port(job_id: int) -> int:
    """The same port on every task of a job; jobs sharing a first node differ unless their ids are
    len(RENDEZVOUS_PORTS) apart."""
    return RENDEZVOUS_PORTS.start + job_id % len(RENDEZVOUS_PORTS)


class RendezvousError(RuntimeError):
    """Rank 0 could not open the rendezvous port; the message names the port and the node."""


def _ephemeral_range() -> str:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    except (OSError, ValueError):
        return "32768-60999 by default"
    return f"{low}-{high} here (/proc/sys/net/ipv4/ip_local_port_range)"


def _rendezvous(dist_env: DistEnv) -> Any:
    """The TCP store every rank meets at, waited for with the patient timeout (start-up skew)."""
    try:
        store, _rank, _world = next(dist.rendezvous("env://", rank=dist_env.rank, world_size=dist_env.world_size,
                                                    timeout=PATIENT_TIMEOUT))
    except dist.DistNetworkError as exc:
        if "EADDRINUSE" not in str(exc) and "address already in use" not in str(exc):
            raise
        raise RendezvousError(
            f"rendezvous port {dist_env.master_port} on {dist_env.master_addr} ({socket.gethostname()}) is taken "
            f"(EADDRINUSE: another process listens on it or holds it for a connection; ephemeral ports are "
            f"{_ephemeral_range()}); set MASTER_PORT to a free port outside that range and start the job again"
        ) from exc
    return store


COLLECTIVE_TIMEOUT_ENV = "SCNET_COLLECTIVE_TIMEOUT_S"
DEFAULT_COLLECTIVE_TIMEOUT_S = 120.0
PATIENT_TIMEOUT = datetime.timedelta(minutes=60)

_patient_group: Any = None


def collective_timeout(env: Mapping[str, str] | None = None) -> datetime.timedelta:
    """The training collectives' timeout: SCNET_COLLECTIVE_TIMEOUT_S seconds, else 120 s."""
    env = os.environ if env is None else env
    raw = env.get(COLLECTIVE_TIMEOUT_ENV)
    if not raw:
        return datetime.timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {COLLECTIVE_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"environment variable {COLLECTIVE_TIMEOUT_ENV}={raw!r} must be positive")
    return datetime.timedelta(seconds=seconds)


def init_distributed(dist_env: DistEnv, device: torch.device, backend: str | None = None) -> None:
    """Join the process group (nccl on CUDA, gloo on CPU, or `backend`) and the patient gloo group;
    a no-op for one process."""
    global _patient_group
    if not dist_env.is_distributed or (dist.is_available() and dist.is_initialized()):
        return
    os.environ["MASTER_ADDR"] = dist_env.master_addr
    os.environ["MASTER_PORT"] = str(dist_env.master_port)
    # NCCL honours its timeout only with asynchronous error handling: a hung collective then aborts
    # the communicator and the process exits instead of blocking forever.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    options: dict[str, Any] = {}
    if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        # Binds the group to this rank's GPU: NCCL forms its communicator now (errors show at
        # start-up) and barriers need not guess the device.
        options["device_id"] = device
    dist.init_process_group(backend=backend, store=_rendezvous(dist_env), rank=dist_env.rank,
                            world_size=dist_env.world_size, timeout=collective_timeout(), **options)
    _patient_group = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)


def shutdown_distributed() -> None:
    global _patient_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _patient_group = None


def _patient() -> Any:
    """The long-timeout gloo group (the default group if init_distributed did not make one)."""
    return _patient_group if _patient_group is not None else dist.group.WORLD


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def patient_barrier() -> None:
    """Wait for rank 0's long work (checkpoint, dataset generation) without the short timeout."""
    if is_initialized():
        dist.barrier(group=_patient())


def agree(failed: bool, stop: bool = False) -> tuple[int | None, bool]:
    """(a rank that failed or None, whether any rank was asked to stop), in one small all-reduce:
    how a rank that failed (or got a stop signal) tells the others before they block in the step's
    next collective."""
    if not is_initialized():
        return (0 if failed else None), bool(stop)
    tensor = torch.tensor([float(dist.get_rank() + 1) if failed else 0.0, 1.0 if stop else 0.0])
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    failed_rank, stopping = tensor.cpu().tolist()
    return (int(failed_rank) - 1 if failed_rank > 0 else None), stopping > 0


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` in rank order on rank 0 (None elsewhere): the other ranks never hold the
    union (evaluation results are ~500k RLE masks on COCO val)."""
    if not is_initialized():
        return [obj]
    main = dist.get_rank() == 0
    gathered: list[Any] | None = [None] * dist.get_world_size() if main else None
    dist.gather_object(obj, gathered, dst=0, group=_patient())
    return gathered


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (just `[obj]` for one process)."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=_patient())
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, group=_patient())
    return holder[0]


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over ranks so rank 0's log shows the global batch's losses."""
    if not is_initialized() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.cpu().tolist()))


def host_name() -> str:
    return socket.gethostname()
