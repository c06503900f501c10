"""Datasets: fixed tensors (finite regime) and reproducible infinite streams from a target.

Pure torch (no Lightning): the data modules wrap these.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..core.random import stream_seed
from ..core.targets import Target

__all__ = ["ArrayDataset", "ArrayStream", "TargetStream", "TRAIN_STREAM"]


class ArrayDataset(Dataset):
    """Rows of a fixed (N, d) tensor."""

    def __init__(self, data: Tensor) -> None:
        if data.ndim != 2:
            raise ValueError(f"expected an (N, d) tensor, got shape {tuple(data.shape)}")
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.data[i]


TRAIN_STREAM = 0  # key of the training streams; fixed splits use other keys


class TargetStream(IterableDataset):
    """Fresh batches from ``target`` forever (the infinite-data regime).

    Batch ``i`` of rank ``r`` is drawn from a generator seeded with ``(seed, r, i)``, so streams differ
    across DDP ranks, DataLoader workers split the batch indices between them (worker ``w`` of ``W``
    yields ``i ≡ w mod W``, the order in which the DataLoader interleaves them), and a resumed run
    continues exactly where it stopped by setting ``start_index`` to the number of batches consumed.
    Yields whole batches (use ``DataLoader(batch_size=None)``).
    """

    def __init__(
        self,
        target: Target,
        batch_size: int,
        seed: int,
        rank: int = 0,
        start_index: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.target, self.batch_size, self.seed, self.rank = target, batch_size, seed, rank
        self.start_index, self.dtype = start_index, dtype

    def __iter__(self) -> Iterator[Tensor]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start_index + worker
        gen = torch.Generator()
        while True:
            gen.manual_seed(stream_seed(self.seed, TRAIN_STREAM, self.rank, i))
            yield self.target.sample(self.batch_size, generator=gen, dtype=self.dtype)
            i += n_workers


class ArrayStream(IterableDataset):
    """Shuffled mini-batches of a fixed (N, d) tensor as an endless, step-indexed stream (the
    finite-data regime).

    The global batch sequence walks through epochs, each a fresh permutation seeded with
    ``(seed, epoch)``; rank ``r`` of ``world`` takes global batches ``world·i + r`` (disjoint across
    ranks) and worker ``w`` of ``W`` takes every W-th of those. Batch ``i`` depends only on the seed
    and ``i``, so a resumed run (``start_index`` = steps done) sees exactly the batches an
    uninterrupted run would have, with no epoch-boundary effects.
    """

    def __init__(
        self, data: Tensor, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_index: int = 0
    ) -> None:
        super().__init__()
        if data.ndim != 2:
            raise ValueError(f"expected an (N, d) tensor, got shape {tuple(data.shape)}")
        self.data, self.seed, self.rank, self.world_size = data, seed, rank, world_size
        self.batch_size = min(batch_size, data.shape[0])
        self.start_index = start_index
        self.batches_per_epoch = data.shape[0] // self.batch_size

    def _permutation(self, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.seed, TRAIN_STREAM, 2**31 - 1, epoch))
        return torch.randperm(self.data.shape[0], generator=gen)

    def __iter__(self) -> Iterator[Tensor]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start_index + worker
        cached_epoch, perm = -1, None
        while True:
            global_batch = i * self.world_size + self.rank
            epoch, pos = divmod(global_batch, self.batches_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, perm = epoch, self._permutation(epoch)
            assert perm is not None
            yield self.data[perm[pos * self.batch_size : (pos + 1) * self.batch_size]]
            i += n_workers
