"""Evaluation in full precision under any ``trainer.precision``.

Under ``bf16-mixed`` (and ``16-mixed``) Lightning runs each validation and test step under autocast, which casts
the matrix products, and with them the forces and the log-densities, to 16 bits: a test NLL then lands on the
bfloat16 grid (4.9375 next to 4.9688, 0.03 nats apart), and those values pick ``best.ckpt`` and stop runs early.
Under ``bf16-true`` / ``16-true`` the weights themselves are 16-bit and so is the default dtype.
:func:`full_precision` undoes all three for the duration of an evaluation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["HALF", "eval_dtype", "full_precision"]

HALF = (torch.float16, torch.bfloat16)


def eval_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype evaluations run in: ``dtype`` when it is float32 or wider, else float32."""
    return torch.promote_types(dtype, torch.float32)


@contextmanager
def full_precision(model: nn.Module, device_type: str) -> Iterator[None]:
    """Autocast off, float32 as the default dtype if it was 16-bit, and a 16-bit ``model`` cast to float32
    (and back afterwards: exact, every 16-bit value is a float32 value)."""
    low = next((t.dtype for t in itertools.chain(model.parameters(), model.buffers()) if t.dtype in HALF), None)
    default = torch.get_default_dtype()
    with torch.autocast(device_type=device_type, enabled=False):
        if default in HALF:
            torch.set_default_dtype(torch.float32)
        if low is not None:
            model.float()
        try:
            yield
        finally:
            if low is not None:
                model.to(low)
            torch.set_default_dtype(default)
