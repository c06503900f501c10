"""Identical particles (``symmetry.permutations=true``): a model built from the config with invariant
Hamiltonians (``model.invariant=true``) gives the same joint density, and every block the same U_t and K_t,
when the particles are relabelled; relabelling augmentation draws its own permutation for every row."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_ehf.build import make_data_symmetry, make_model
from lightning_ehf.config.load import load_config, validate
from lightning_ehf.core.frames import permute_particles
from lightning_ehf.core.targets import make_target

F64 = torch.float64
TOL = 1e-6


def _invariant_particle_model(target: str, randomize, *changes: str):
    """The model ``ehf train data.target=TARGET symmetry.permutations=true model.invariant=true`` builds,
    its Hamiltonians randomised (the output layers start at zero, where every energy is constant), and the
    centre-of-mass frame (None without one)."""
    cfg = load_config(
        [],
        [
            f"data.target={target}",
            "data.regime=finite",
            "symmetry.permutations=true",
            "model.invariant=true",
            "model.kinetic=mlp",
            "model.blocks=2",
            "model.leapfrog_steps=2",
            "model.hidden=16",
            *changes,
        ],
    )
    validate(cfg)
    data = make_target(target)
    model = randomize(make_model(cfg, make_data_symmetry(cfg, data.dim, data)), 0.4).to(F64)
    return model, model.data_map.frame, data.particle_dim, data.dim


def _relabeller(frame, n: int, dim: int, order: list[int]):
    """Relabel the particles of the model's coordinates (centre-of-mass-free ones when there is a frame)."""

    def relabel(z: torch.Tensor) -> torch.Tensor:
        x = frame.from_subspace(z) if frame is not None else z
        x = x.reshape(*x.shape[:-1], n, dim)[..., order, :].reshape(*x.shape[:-1], n * dim)
        return frame.to_subspace(x) if frame is not None else x

    return relabel


@pytest.mark.parametrize(
    "target, changes",
    [
        ("dw4", ()),
        ("particles2d", ()),
        ("dw4", ("model.pair_bins=6", "model.pair_cutoff=5.0")),
        ("dw4", ("model.kinetic_pair_bins=4", "model.kinetic_pair_cutoff=3.0")),
        ("particles2d", ("model.kinetic_pair_bins=5",)),
    ],
)
def test_invariant_density_and_every_energy_are_unchanged_by_relabelling(target, changes, randomize):
    model, frame, particle_dim, data_dim = _invariant_particle_model(target, randomize, *changes)
    n = data_dim // particle_dim
    gen = torch.Generator().manual_seed(0)
    q = 1.5 * torch.randn(16, model.dim, generator=gen, dtype=F64)
    p = torch.randn(16, model.dim, generator=gen, dtype=F64)
    x = model.data_map.from_frame(q)  # the same configurations as particles, which log_joint takes
    with torch.no_grad():
        log_joint = model.log_joint(x, p)
        energies = [(b.hamiltonian.potential(q), b.hamiltonian.kinetic(p)) for b in model.flow.blocks]
        spread = max(float(u.std()) for u, _ in energies)
        assert spread > 1e-2  # the energies vary with q: a constant would be trivially invariant
        for order in itertools.permutations(range(n)):
            if list(order) == sorted(order):
                continue
            relabel = _relabeller(frame, n, particle_dim, list(order))
            assert not torch.allclose(relabel(q), q)
            relabel_x = _relabeller(None, n, particle_dim, list(order))
            assert torch.allclose(model.log_joint(relabel_x(x), relabel(p)), log_joint, atol=TOL, rtol=0), order
            for t, (block, (u, k)) in enumerate(zip(model.flow.blocks, energies)):
                assert torch.allclose(block.hamiltonian.potential(relabel(q)), u, atol=TOL, rtol=0), (t, order)
                assert torch.allclose(block.hamiltonian.kinetic(relabel(p)), k, atol=TOL, rtol=0), (t, order)


def _permutations_of_rows(before: torch.Tensor, after: torch.Tensor, n: int) -> list[tuple[int, ...]]:
    """For rows of particles with distinct norms, the permutation that maps each row of ``before`` to ``after``."""
    norms_before = before.reshape(before.shape[0], n, -1).norm(dim=-1)
    norms_after = after.reshape(after.shape[0], n, -1).norm(dim=-1)
    matches = (norms_after[:, :, None] - norms_before[:, None, :]).abs().argmin(-1)
    return [tuple(row) for row in matches.tolist()]


def test_permute_particles_draws_an_independent_permutation_per_row():
    n, rows = 4, 960
    one = torch.tensor([1.0, 0.0, 0.0, 2.0, -3.0, 0.0, 0.0, -4.0], dtype=F64)  # norms 1, 2, 3, 4
    x = one.repeat(rows, 1)
    out = permute_particles(x, n, torch.Generator().manual_seed(0))
    perms = _permutations_of_rows(x, out, n)
    assert all(sorted(p) == list(range(n)) for p in perms)  # whole particles moved, none lost
    counts = {p: perms.count(p) for p in itertools.permutations(range(n))}
    # all 24 permutations, each about 40 times (a Pearson χ² with 23 degrees of freedom: p ≈ 1e-6 above 65)
    expected = rows / math.factorial(n)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert min(counts.values()) > 0 and chi2 < 65, counts
    # neighbouring rows agree as often as independent draws do (1/24), not always (one draw per batch)
    same_as_next = sum(a == b for a, b in zip(perms, perms[1:])) / (rows - 1)
    assert same_as_next < 0.1, same_as_next


@pytest.mark.parametrize(
    "bins, cutoff, kinetic_bins, kinetic_cutoff",
    [(None, None, None, None), (6, 5.0, None, None), (6, 5.0, 3, None), (None, None, 4, 3.0), (6, 5.0, None, 2.0)],
)
def test_pair_bins_and_cutoff_set_the_histograms_of_each_energy(bins, cutoff, kinetic_bins, kinetic_cutoff, randomize):
    """``model.pair_bins`` Gaussian bases with centres up to ``model.pair_cutoff``² (defaults 24 and 8): the
    potential of every block sees 2 × bins features (pair distances and norms), and so does its kinetic energy
    unless ``model.kinetic_pair_bins`` / ``kinetic_pair_cutoff`` give the momenta their own (each null: the
    potential's)."""
    keys = {"pair_bins": bins, "pair_cutoff": cutoff, "kinetic_pair_bins": kinetic_bins}
    keys["kinetic_pair_cutoff"] = kinetic_cutoff
    changes = [f"model.{key}={value}" for key, value in keys.items() if value is not None]
    model, *_ = _invariant_particle_model("dw4", randomize, *changes)
    bins, cutoff = bins or 24, cutoff or 8.0
    expected = {"potential": (bins, cutoff), "kinetic": (kinetic_bins or bins, kinetic_cutoff or cutoff)}
    for block in model.flow.blocks:
        for name, (n_bins, reach) in expected.items():
            energy = getattr(block.hamiltonian, name)
            assert energy.net[0].in_features == 2 * n_bins
            pairs = energy.features.features  # the pair-distance features behind dw4's centre-of-mass frame
            assert pairs.n_bins == n_bins and float(pairs.centres[-1]) == pytest.approx(reach**2)
