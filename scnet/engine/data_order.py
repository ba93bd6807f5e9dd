"""Data order as a pure function of (seed, epoch), split into per-rank slices of each global batch.

A global batch is the same set of images whatever the number of processes (rank r takes slice r),
and a resumed run starts an epoch's order at the batch it stopped at. Every sample carries its own
seed, derived from (seed, epoch, position), under which its augmentation (the random flip) runs, so
the images are the same whether loaded in the main process or in any worker (`CocoInstances` also
seeds its own transform generator from (seed, epoch, index) after `set_epoch`; the per-sample seed
here additionally pins anything that draws from the global generators).

Batches are grouped by aspect ratio as MMDetection's `AspectRatioBatchSampler` does (bucket 0: width <
height, bucket 1: the rest; a batch is emitted when a bucket fills, leftovers form the last batches),
so padding to the batch's largest image wastes little. MMDetection groups each GPU's batch; here each
*global* batch is one bucket, which groups every GPU's slice as well and keeps a global batch the same
set of images for any process count.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from torch.utils.data import Dataset, Sampler

from scnet.data.sample_seeds import epoch_permutation
from scnet.engine.rng_state import derive_seed, isolated_rng


def epoch_order(seed: int, epoch: int, num_items: int) -> list[int]:
    """The data package's shuffle recipe, so the order is the one its docs describe."""
    return epoch_permutation(num_items, seed, epoch)


def aspect_grouped(order: Sequence[int], groups: Sequence[int], batch: int) -> list[int]:
    """`order` rearranged so that every run of `batch` items comes from one aspect bucket, in the order
    the buckets fill; the leftovers of both buckets follow, bucket 0 first (MMDetection's rule)."""
    buckets: dict[int, list[int]] = {0: [], 1: []}
    grouped: list[int] = []
    for index in order:
        bucket = buckets[1 if groups[index] else 0]
        bucket.append(index)
        if len(bucket) == batch:
            grouped.extend(bucket)
            bucket.clear()
    return grouped + buckets[0] + buckets[1]


def iters_per_epoch(num_items: int, global_batch: int) -> int:
    """Full global batches per epoch (the last, incomplete one is dropped)."""
    return num_items // global_batch


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's `(dataset_index, sample_seed)` lists for batches `start_batch..` of one epoch.

    `aspect_groups` (per dataset index: 0 if width < height else 1, e.g. `CocoInstances.aspect_groups()`)
    groups the batches by aspect ratio; None keeps the plain shuffled order.
    """

    def __init__(self, *, num_items: int, global_batch: int, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0,
                 aspect_groups: Sequence[int] | None = None) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch size {global_batch} is not divisible by {world_size} processes")
        if iters_per_epoch(num_items, global_batch) < 1:
            raise ValueError(f"the dataset has {num_items} images, fewer than one global batch of "
                             f"{global_batch}; lower the batch size or use more images")
        self.num_items = num_items
        self.global_batch = global_batch
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.per_rank = global_batch // world_size
        if aspect_groups is not None and len(aspect_groups) != num_items:
            raise ValueError(f"aspect_groups has {len(aspect_groups)} entries for {num_items} items")
        self.aspect_groups = None if aspect_groups is None else list(aspect_groups)

    def __len__(self) -> int:
        return max(0, iters_per_epoch(self.num_items, self.global_batch) - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.seed, self.epoch, self.num_items)
        if self.aspect_groups is not None:
            order = aspect_grouped(order, self.aspect_groups, self.global_batch)
        for batch in range(self.start_batch, iters_per_epoch(self.num_items, self.global_batch)):
            first = batch * self.global_batch + self.rank * self.per_rank
            positions = range(first, first + self.per_rank)
            yield [(order[p], derive_seed("sample", self.seed, self.epoch, p)) for p in positions]


class SeededSamples(Dataset):
    """Index with `(dataset_index, sample_seed)`: the wrapped dataset's item, augmented under that seed."""

    def __init__(self, dataset: Sequence[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, sample_seed = key
        with isolated_rng(sample_seed):
            return self.dataset[index]


class ShardSampler(Sampler[list[int]]):
    """Evaluation: rank r takes images r, r + world, ...; batches of `batch_size` in that order."""

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_items, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]
