"""Seeds and random-number-generator state, so a resumed run draws the same numbers as an unbroken one.

Every source of randomness a run touches is either a pure function of (seed, epoch, index)
(data order, augmentation: `derive_seed`) or part of the checkpoint (`capture_rng_state`: Python,
NumPy, torch CPU and this process's CUDA generator, which the model's samplers use).

Only the generator of the device the process trains on is saved, not every visible device's: a
requeued job may see fewer GPUs (per-task binding gives each task one, as device 0), and its state
belongs to whatever device the resumed process trains on.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any, Iterator

import numpy as np
import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on `parts` (stable across processes, machines and versions)."""
    text = ":".join(str(p) for p in parts)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng_state() -> dict[str, Any]:
    """Plain Python values and tensors only, so checkpoints load with `torch.load(weights_only=True)`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's (pick_device sets it)
    return state


def _this_device_cuda_state(saved: Any) -> torch.Tensor | None:
    """The saved CUDA state for this process's device. Checkpoints written before held a list of
    every visible device's states, in which this process's own was at its device index."""
    if torch.is_tensor(saved):
        return saved
    states = list(saved)
    index = torch.cuda.current_device()
    return states[index] if index < len(states) else None


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_state = _this_device_cuda_state(state["cuda"])
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block with Python/NumPy/torch-CPU generators seeded by `seed`, then put them back.

    Data augmentation runs in the main process when `num_workers=0`; without this it would consume
    the training generators and make the model's sampling depend on how the data was loaded.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything_cpu(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def seed_everything_cpu(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.random.default_generator.manual_seed(seed)
