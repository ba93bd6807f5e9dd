"""Stop requests: a signal asks the training loop to save a checkpoint at the iteration it has
reached and leave. SLURM sends USR2 (`--signal=USR2@S`) before a time limit, and at a preemption when
the cluster sets `PreemptParameters=send_user_signal`; otherwise a preemption, a `scancel` and the
time limit itself send SIGTERM, with SIGKILL `KillWait` (+ `GraceTime`) seconds later. Both stop the
loop the same way (`STOP_SIGNALS`); what happens next (requeue or not) is the SLURM job's business
(`experiments.executors.slurm_job`).

The signal handler only sets a flag: saving from inside a handler would interrupt a step halfway,
and the other ranks, which may not have received the signal, must join the save (their generator
states are in the checkpoint). The loop reads the flag once per step, OR-ed over all ranks
(`scnet.engine.distributed.agree`), saves at the same iteration on every rank, and raises
`TrainingInterrupted`; whoever installed the handler (the SLURM job) then requeues.

Outside training (data set-up, evaluation) there is nothing better to save than the last
checkpoint, so a handler installed with `on_idle` calls it at once.

SLURM signals every process of a job step, DataLoader workers included, and forked workers inherit
the handlers: a worker would request a stop of its own (or, during evaluation, run submitit's
requeue, once per worker). Workers ignore the stop signals (`ignore_stop_signals`, the loaders'
`worker_init_fn`); their process tells them when to end. A signal arriving between a worker's fork
and its `worker_init_fn` would still find the inherited handler, so the loaders start their workers
with `start_workers_deaf(loader)`: the stop signals are blocked while the workers are forked (they inherit
the block, set SIG_IGN, then unblock, which drops a pending one), and the training process receives
any that arrived in the meantime as soon as its block ends.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

# USR2: SLURM's warning before a time limit (and before a preemption with send_user_signal);
# TERM: a preemption otherwise, scancel, the time limit itself.
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

_requested = threading.Event()
_listening = threading.Event()
_reason: list[str] = []
_received: set[int] = set()


class TrainingInterrupted(Exception):
    """Training stopped on request after saving its checkpoint at `iteration`."""

    def __init__(self, iteration: int, reason: str) -> None:
        super().__init__(f"training stopped at iteration {iteration} ({reason}); the checkpoint holds it")
        self.iteration = iteration
        self.reason = reason


def request_stop(reason: str = "stop requested") -> None:
    _reason[:] = [reason]
    _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


def stop_reason() -> str:
    return _reason[0] if _reason else "stop requested"


def clear() -> None:
    _requested.clear()
    _reason.clear()
    _received.clear()


def signals_received() -> frozenset[int]:
    """The stop signals this process has received (whether or not training was listening)."""
    return frozenset(_received)


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """For DataLoader workers (`worker_init_fn`): the stop signals are the training process's."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by start_workers_deaf


def start_workers_deaf(loader: Iterable[Any]) -> Iterator[Any]:
    """`iter(loader)` with the stop signals blocked: the workers it forks keep them blocked until their
    `ignore_stop_signals` ignores them; this thread gets any that came meanwhile when the block ends (a
    signal to the process may instead reach another thread at once, and Python runs its handler here)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def training_is_listening() -> bool:
    """Whether a training loop is running that reads the flag each step."""
    return _listening.is_set()


@contextmanager
def listening() -> Iterator[None]:
    """Held by the training loop while it reads the flag each step."""
    _listening.set()
    try:
        yield
    finally:
        _listening.clear()


def install_stop_signal(signum: int, on_idle: Callable[[int, Any], Any] | None = None) -> Callable[[], None]:
    """Make `signum` request a stop while training listens, and call `on_idle(signum, frame)` (e.g.
    submitit's requeue handler) when it does not. Returns a function that restores the old handler."""
    previous = signal.getsignal(signum)

    def handler(number: int, frame: Any) -> None:
        _received.add(number)
        if training_is_listening() or on_idle is None:
            request_stop(f"signal {signal.Signals(number).name}")
        else:
            on_idle(number, frame)

    signal.signal(signum, handler)
    return lambda: signal.signal(signum, previous)
