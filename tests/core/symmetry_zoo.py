"""The symmetry groups the core tests parametrise over, built once and named once.

``ZOO`` maps a name (the parametrisation id) to a :class:`~lightning_ehf.core.Symmetry`; ``groups(*names)``
is the subset a test runs on, in the order given. The cases differ in what can go wrong: a free coordinate
beside or between the rotated ones, non-commuting generators (so3, so4), several identical particles of 2
or 3 coordinates, and commuting rotation planes, adjacent or interleaved.
"""

from __future__ import annotations

from lightning_ehf.core import Symmetry, particle_rotations, product, rotation_plane, so2, so3, son

ZOO: dict[str, Symmetry] = {
    "so2": so2(2),
    "so2_plane01_in_3d": so2(3),  # a free coordinate after the plane
    "so2_plane02_in_3d": so2(3, (0, 2)),  # a free coordinate between the plane's coordinates
    "so3": so3(3),
    "so4_in_5d": son(5, [0, 2, 3, 4]),
    "particles3x2": particle_rotations(3, 2),
    "particles2x3": particle_rotations(2, 3),
    "planes4": product(rotation_plane(4, 0, 1), rotation_plane(4, 2, 3)),
    "planes_13_04_in_5d": product(rotation_plane(5, 1, 3), rotation_plane(5, 0, 4)),
}


def groups(*names: str) -> dict[str, Symmetry]:
    """The zoo's groups of these names, in this order."""
    return {name: ZOO[name] for name in names}
