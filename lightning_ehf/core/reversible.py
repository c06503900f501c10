"""Memory-flat backward pass through a leapfrog block.

Leapfrog is exactly invertible, so a block need not store the states it visits for the backward pass:
it keeps only its output, and the backward pass walks the steps in reverse, recomputing each step's
input from its output (the same scheme with −ε), rebuilding that one step's graph and propagating the
gradient through it. Peak memory is then one step's graph, whatever the number of steps L, at the
price of a graph-free forward pass, a graph-free reconstruction and one small backward call per step
(the cost is measured in docs/benchmarks.md). (The idea of the reversible residual network, Gomez et al. 2017,
applied to a symplectic integrator.)

The constraint statistic of the block, ``Σ_states mean_batch {g_k, H}²`` (k,), is an output of the
same function, so the Lagrangian's gradient reaches the Hamiltonian through it as well.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .brackets import momentum_map_bracket

__all__ = ["reversible_leapfrog"]


def _step(
    block: nn.Module,
    q: Tensor,
    p: Tensor,
    h: Tensor,
    graph: bool,
    generators: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One leapfrog step of ``h`` (signed) and the sum over its two states of mean_batch ``{g_k, H}²``."""
    ham = block.hamiltonian
    force = ham.potential.grad(q, graph)
    p = p - 0.5 * h * force
    velocity = ham.kinetic.grad(p, graph)
    sq = None
    if generators is not None:
        sq = momentum_map_bracket(*generators, q, p, force, velocity).square().flatten(0, -2).mean(0)
    q = q + h * velocity
    force = ham.potential.grad(q, graph)
    if generators is not None:
        sq = sq + momentum_map_bracket(*generators, q, p, force, velocity).square().flatten(0, -2).mean(0)
    p = p - 0.5 * h * force
    return q, p, sq


class _ReversibleLeapfrog(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        p: Tensor,
        log_step: Tensor,
        block: nn.Module,
        reverse: bool,
        generators: tuple[Tensor, Tensor] | None,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        sign = -1.0 if reverse else 1.0
        h = sign * log_step.exp()
        k = generators[0].shape[0] if generators is not None else 0
        total = q.new_zeros(k)
        for _ in range(block.n_steps):
            q, p, sq = _step(block, q, p, h, False, generators)
            if sq is not None:
                total = total + sq
        ctx.block, ctx.sign, ctx.generators, ctx.n_params = block, sign, generators, len(params)
        ctx.save_for_backward(q, p)
        return q, p, total

    @staticmethod
    def backward(ctx: Any, grad_q: Tensor, grad_p: Tensor, grad_sq: Tensor) -> tuple[Tensor | None, ...]:
        q, p = ctx.saved_tensors
        block, sign = ctx.block, ctx.sign
        params = _hamiltonian_parameters(block)  # the order they were passed in
        log_step = block.log_step
        wants_step = isinstance(log_step, nn.Parameter) and log_step.requires_grad
        param_grads = [torch.zeros_like(prm) for prm in params]
        step_grad = torch.zeros_like(log_step)
        grad_q = torch.zeros_like(q) if grad_q is None else grad_q
        grad_p = torch.zeros_like(p) if grad_p is None else grad_p
        for _ in range(block.n_steps):
            with torch.no_grad():  # the step's input, from its output: the inverse scheme
                q, p, _ = _step(block, q, p, -sign * log_step.exp(), False, None)
            with torch.enable_grad():
                q_in = q.detach().requires_grad_(True)
                p_in = p.detach().requires_grad_(True)
                step_param = log_step if wants_step else log_step.detach()
                q_out, p_out, sq = _step(block, q_in, p_in, sign * step_param.exp(), True, ctx.generators)
                outputs, cotangents = [q_out, p_out], [grad_q, grad_p]
                if sq is not None and grad_sq is not None:
                    outputs.append(sq)
                    cotangents.append(grad_sq)
                inputs = [q_in, p_in, *params] + ([log_step] if wants_step else [])
                grads = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
            grad_q, grad_p = grads[0], grads[1]
            for i, g in enumerate(grads[2 : 2 + len(params)]):
                if g is not None:
                    param_grads[i] += g
            if wants_step and grads[-1] is not None:
                step_grad += grads[-1]
        # gradients for: q, p, log_step, block, reverse, generators, *params
        return (grad_q, grad_p, step_grad if wants_step else None, None, None, None, *param_grads)


def _hamiltonian_parameters(block: nn.Module) -> list[Tensor]:
    return [prm for prm in block.hamiltonian.parameters() if prm.requires_grad]


def reversible_leapfrog(
    block: nn.Module, q: Tensor, p: Tensor, reverse: bool, generators: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``block.n_steps`` leapfrog steps of ``block``'s Hamiltonian with a memory-flat backward pass.

    Returns ``(q', p', S)`` with ``S_k = Σ_states mean_batch {g_k, H}²`` over the 2L states visited
    (shape (0,) without generators). Differentiable with respect to q, p, the learnable step size and
    every parameter of the block's Hamiltonian.
    """
    return _ReversibleLeapfrog.apply(q, p, block.log_step, block, reverse, generators, *_hamiltonian_parameters(block))
