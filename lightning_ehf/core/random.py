"""Random draws that work with a generator on any device."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

__all__ = ["draw"]


def draw(fn: Callable[..., Tensor], *args: Any, generator: Optional[torch.Generator], device: torch.device,
         **kwargs: Any) -> Tensor:
    """Call a torch random function on the generator's device (so a CPU generator also serves CUDA
    tensors, and results do not depend on the target device), then move the result to ``device``."""
    where = generator.device if generator is not None else device
    return fn(*args, generator=generator, device=where, **kwargs).to(device)
