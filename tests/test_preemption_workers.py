"""DataLoader workers never act on a stop signal, even one sent while they are being forked: they start
with the stop signals blocked (`start_workers_deaf`) until their `worker_init_fn` ignores them, and the
training process still receives a signal sent during that window."""
from __future__ import annotations

import signal
import threading

import torch
from torch.utils.data import DataLoader, Dataset

from scnet.engine import preemption

_AT_START: dict[str, object] = {}


class _WorkerState(Dataset):
    """Each item: (stop signals blocked when the worker started, blocked now, the USR2 handler now)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        blocked_now = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return (_AT_START["blocked"], bool(set(preemption.STOP_SIGNALS) & blocked_now),
                signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN)


class _SignalledWhileForking(DataLoader):
    """A USR2 to this process right after the workers are forked, while `iter` has not returned."""

    def __init__(self, *args, received: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received = received

    def __iter__(self):
        batches = super().__iter__()
        assert set(preemption.STOP_SIGNALS) <= set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        # To this thread, which blocks it: held, not lost. (A signal to the process would go at once to
        # any other thread that does not block it, such as pytest-xdist's or TensorBoard's; Python then
        # runs the handler in the main thread: received early, not lost either.)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
        assert self.received == []
        return batches


def _init(worker_id: int) -> None:
    blocked = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    _AT_START["blocked"] = set(preemption.STOP_SIGNALS) <= blocked
    preemption.ignore_stop_signals(worker_id)


def test_workers_start_with_stop_signals_blocked_then_ignore_them_and_the_parent_gets_a_pending_one():
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        loader = _SignalledWhileForking(_WorkerState(), batch_size=None, num_workers=1, worker_init_fn=_init,
                                        multiprocessing_context="fork", received=received)
        previous_mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        batches = preemption.start_workers_deaf(loader)
        assert received == [signal.SIGUSR2]
        assert set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) == previous_mask
        blocked_at_start, blocked_after_init, ignoring = next(batches)
        assert blocked_at_start and not blocked_after_init and ignoring
        assert not set(preemption.STOP_SIGNALS) & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert torch.utils.data.get_worker_info() is None
