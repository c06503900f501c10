"""Pure-torch mathematics of Equivariant Hamiltonian Flows. Imports only torch and numpy (and zuko, on
first use of the flow momentum encoder)."""

from .brackets import momentum_map_bracket, poisson_bracket
from .constraints import LagrangeMultipliers
from .encoders import (
    ENCODERS,
    EquivariantMomentumEncoder,
    FlowMomentumEncoder,
    FramedGaussian,
    FullGaussianMomentumEncoder,
    GaussianMomentumEncoder,
)
from .flows import (
    ConstraintStats,
    EquivariantHamiltonianFlow,
    GaussianBase,
    HamiltonianBlock,
    HamiltonianFlow,
    make_ehf,
)
from .hamiltonians import Energy, MLPEnergy, QuadraticKinetic, SeparableHamiltonian, ZeroEnergy, make_mlp
from .integrators import leapfrog
from .symmetries import (
    GroupElement,
    Symmetry,
    from_matrices,
    no_symmetry,
    particle_rotations,
    product,
    rotation_plane,
    so2,
    so3,
    son,
    translation,
)

__all__ = [
    "ENCODERS",
    "ConstraintStats",
    "Energy",
    "EquivariantHamiltonianFlow",
    "EquivariantMomentumEncoder",
    "FlowMomentumEncoder",
    "FramedGaussian",
    "FullGaussianMomentumEncoder",
    "GaussianBase",
    "GaussianMomentumEncoder",
    "GroupElement",
    "HamiltonianBlock",
    "HamiltonianFlow",
    "LagrangeMultipliers",
    "MLPEnergy",
    "QuadraticKinetic",
    "SeparableHamiltonian",
    "Symmetry",
    "ZeroEnergy",
    "from_matrices",
    "leapfrog",
    "make_ehf",
    "make_mlp",
    "momentum_map_bracket",
    "no_symmetry",
    "particle_rotations",
    "poisson_bracket",
    "product",
    "rotation_plane",
    "so2",
    "so3",
    "son",
    "translation",
]
