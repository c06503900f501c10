"""A training objective compiled with ``torch.compile``: forward and backward, once per input shape.

Compiling the function that computes the loss lets AOTAutograd trace its backward too, so one optimiser
step runs two compiled graphs instead of thousands of separate operations. That is what a GPU needs: an
eager EHF step launches thousands of small kernels, and on CUDA the compiled graphs are also captured as
CUDA graphs (``mode="reduce-overhead"``), which replays them without per-kernel launch costs. On a CPU
the gain is smaller and the compilation costs minutes (docs/benchmarks.md), so it pays only in long runs.

Shapes are static (``dynamic=False``): the training batches all have the same shape (finite data drops
the partial batch of each epoch) and the number of momenta per point is fixed, so it compiles once.
Random numbers come from the same generator as in eager mode (inductor's ``fallback_random``), so a
seeded compiled run draws the same momenta as an eager one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CompiledObjective"]


class CompiledObjective:
    """``fn(*args)`` through ``torch.compile``, compiled on the first call (``reduce-overhead`` when the first
    tensor argument is on CUDA). If compiling or running the compiled function fails, it warns once and runs
    ``fn`` eagerly from then on. ``compile_seconds``: wall time of the first call (compilation included)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None
        self.failed = False
        self.calls = 0
        self.compile_seconds: float | None = None
        self._cuda = False

    def _compile(self, args: tuple[Any, ...]) -> Callable[..., Any]:
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True  # the same random numbers as eager mode
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        self._cuda = device.type == "cuda"
        return torch.compile(self.fn, dynamic=False, mode="reduce-overhead" if self._cuda else None)

    def __call__(self, *args: Any) -> Any:
        if self.failed:
            return self.fn(*args)
        start = time.perf_counter()
        try:
            if self._compiled is None:
                self._compiled = self._compile(args)
            if self._cuda:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are no longer needed
            out = self._compiled(*args)
        except Exception as err:  # no compiler on this platform, an unsupported operation, ...: stay eager
            warnings.warn(
                f"torch.compile of the training objective failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); training eagerly",
                stacklevel=2,
            )
            self.failed = True
            return self.fn(*args)
        self.calls += 1
        if self.calls == 1:
            self.compile_seconds = time.perf_counter() - start
        return out
