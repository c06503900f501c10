"""Random draws that work with a generator on any device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["draw", "stream_seed"]


def draw(
    fn: Callable[..., Tensor], *args: Any, generator: torch.Generator | None, device: torch.device, **kwargs: Any
) -> Tensor:
    """Call a torch random function on the generator's device (so a CPU generator also serves CUDA
    tensors, and results do not depend on the target device), then move the result to ``device``."""
    where = generator.device if generator is not None else device
    return fn(*args, generator=generator, device=where, **kwargs).to(device)


def stream_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys, e.g. ``(seed, TRAIN_STREAM, rank, batch_index)``."""
    words = [int(k) % 2**32 for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))
