"""lightning_ehf: Equivariant Hamiltonian Flows (Rezende et al. 2019) on PyTorch Lightning.

Importing this package loads nothing heavy; use ``lightning_ehf.core`` for the pure-torch mathematics.
"""

__version__ = "0.1.0"
