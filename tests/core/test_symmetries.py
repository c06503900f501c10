"""Symmetries: generators, group samplers (Haar for rotations), the phase-space action, invariant
features, and the refusal of symmetries the Gaussian base density does not have."""

from __future__ import annotations

import math

import pytest
import torch
from symmetry_zoo import groups

from lightning_ehf.core import (
    EquivariantHamiltonianFlow,
    GaussianBase,
    from_matrices,
    make_ehf,
    no_symmetry,
    particle_rotations,
    product,
    rotation_plane,
    so2,
    so3,
    translation,
)

F64 = torch.float64
ROTATION_GROUPS = groups("so2", "so3", "so4_in_5d", "particles3x2", "particles2x3", "planes4")


def orthogonality_error(m):
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    return (m @ m.transpose(-1, -2) - eye).abs().max().item()


def test_haar_so3_samples_are_rotations(device, dtype):
    g = so3(3).sample(2000, torch.Generator(device=device).manual_seed(0), dtype=dtype, device=device)
    m = g.matrix
    assert m.dtype == dtype and m.device.type == device.type
    tol = 1e-12 if dtype == F64 else 1e-5
    assert orthogonality_error(m) <= tol
    det = torch.linalg.det(m.double())
    assert (det - 1).abs().max().item() <= tol
    assert g.shift.abs().max() == 0


def test_haar_so3_moments():
    """Haar on SO(3): E[M] = 0, E[M_ij²] = 1/3, E[tr M] = 0, E[(tr M)²] = 1 (one invariant), and
    the rotation angle has density (1 − cos θ)/π so E[cos θ] = −1/2."""
    n = 40000
    m = so3(3).sample(n, torch.Generator().manual_seed(1), dtype=F64).matrix
    se = 1 / n**0.5
    assert m.mean(0).abs().max() < 5 * se
    assert (m.square().mean(0) - 1 / 3).abs().max() < 5 * se
    tr = torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)
    assert tr.mean().abs() < 5 * tr.std() * se
    assert abs(tr.square().mean().item() - 1.0) < 0.05
    cos_angle = (tr - 1) / 2
    assert abs(cos_angle.mean().item() + 0.5) < 5 * se


def test_so2_angle_is_uniform_and_embedded_in_the_right_plane():
    n = 20000
    sym = so2(4, (1, 3))
    m = sym.sample(n, torch.Generator().manual_seed(2), dtype=F64).matrix
    # untouched coordinates stay fixed
    assert (m[:, 0, 0] - 1).abs().max() == 0 and (m[:, 2, 2] - 1).abs().max() == 0
    assert m[:, 0, 1:].abs().max() == 0 and m[:, 2, [0, 1, 3]].abs().max() == 0
    theta = torch.atan2(m[:, 3, 1], m[:, 1, 1])
    for k in (1, 2, 3):
        assert (k * theta).cos().mean().abs() < 5 / n**0.5
        assert (k * theta).sin().mean().abs() < 5 / n**0.5
    # the rotation in plane (1, 3) is exp(t A) for the plane's generator
    t = theta[:5]
    expm = torch.linalg.matrix_exp(t[:, None, None] * sym.matrices[0])
    torch.testing.assert_close(expm, m[:5], rtol=0, atol=1e-12)


@pytest.mark.parametrize("sym", list(ROTATION_GROUPS.values()), ids=list(ROTATION_GROUPS))
def test_exponentials_of_generators_and_samples_are_orthogonal_and_preserve_invariants(sym):
    t = torch.randn(6, sym.num_generators, dtype=F64)
    expm = torch.linalg.matrix_exp(torch.einsum("nk,kij->nij", t, sym.matrices))
    assert orthogonality_error(expm) <= 1e-12
    torch.testing.assert_close(torch.linalg.det(expm), torch.ones(6, dtype=F64), rtol=0, atol=1e-12)
    g = sym.sample(6, torch.Generator().manual_seed(3), dtype=F64)
    assert orthogonality_error(g.matrix) <= 1e-12
    torch.testing.assert_close(torch.linalg.det(g.matrix), torch.ones(6, dtype=F64), rtol=0, atol=1e-12)
    # generators are antisymmetric and conjugating a generator by a group element stays in the algebra:
    # M A Mᵀ is antisymmetric and lies in the span of the generators
    assert (sym.matrices + sym.matrices.transpose(-1, -2)).abs().max() == 0
    conj = torch.einsum("nij,kjl,nml->nkim", g.matrix, sym.matrices, g.matrix)
    basis = sym.matrices.reshape(sym.num_generators, -1).T
    coef = torch.linalg.lstsq(basis, conj.reshape(-1, sym.dim**2).T).solution
    assert (basis @ coef - conj.reshape(-1, sym.dim**2).T).abs().max() <= 1e-12
    # invariant features are unchanged by group elements (and are not constant)
    x = torch.randn(6, sym.dim, dtype=F64)
    if sym.invariants is not None:
        torch.testing.assert_close(sym.invariants(g.act_q(x)), sym.invariants(x), rtol=0, atol=1e-12)
        assert (sym.invariants(x) - sym.invariants(2 * x)).abs().max() > 1e-3
    # the momentum maps transform covariantly: g_A(M q, M p) = g_{Mᵀ A M}(q, p); for an abelian
    # group (so2, planes) they are invariant
    if sym.name.startswith("so2") or sym.name.startswith("rot"):
        q, p = torch.randn(6, sym.dim, dtype=F64), torch.randn(6, sym.dim, dtype=F64)
        torch.testing.assert_close(sym.momentum_maps(*g.act(q, p)), sym.momentum_maps(q, p), rtol=0, atol=1e-12)


def test_group_action_is_the_flow_of_the_generator_and_preserves_pairing():
    """For a non-orthogonal generator (from_matrices), the element exp(tA) acts on q by exp(tA) and
    on p by exp(−tAᵀ); the pairing pᵀq and the symplectic form are preserved."""
    a = torch.tensor([[0.2, 1.0, 0.0], [0.0, -0.3, 0.5], [0.4, 0.0, 0.1]], dtype=F64)
    sym = from_matrices(a)
    g = sym.sample(5, torch.Generator().manual_seed(4), dtype=F64)
    # every sample is exp(t A) for some t: it commutes with A
    torch.testing.assert_close(g.matrix @ a, a @ g.matrix, rtol=0, atol=1e-12)
    q, p = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    gq, gp = g.act(q, p)
    torch.testing.assert_close((gq * gp).sum(-1), (q * p).sum(-1), rtol=0, atol=1e-12)
    # the vector field of the generator is the derivative of the action at the identity
    h = 1e-6
    e_plus, e_minus = torch.linalg.matrix_exp(h * a), torch.linalg.matrix_exp(-h * a)
    dq = ((q @ e_plus.T) - (q @ e_minus.T)) / (2 * h)
    dp = ((p @ torch.linalg.inv(e_plus)) - (p @ torch.linalg.inv(e_minus))) / (2 * h)  # M⁻ᵀ p as row vectors
    torch.testing.assert_close(dq, sym.vector_field_q(q)[:, 0], rtol=0, atol=1e-8)
    torch.testing.assert_close(dp, sym.vector_field_p(p)[:, 0], rtol=0, atol=1e-8)


def test_translation_sampler_shifts():
    sym = translation(2, [1.0, -2.0])
    g = sym.sample(4, torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(g.matrix, torch.eye(2, dtype=F64).expand(4, 2, 2), rtol=0, atol=0)
    # shift is a multiple of the direction
    shift = g.shift
    torch.testing.assert_close(shift[:, 1], -2.0 * shift[:, 0], rtol=0, atol=1e-14)
    assert shift.abs().max() > 0


def test_base_density_refuses_translation_and_scaling():
    base = GaussianBase(2)
    with pytest.raises(ValueError, match=r"generator 'T'.*translat"):
        base.check_invariant(translation(2, [1.0, 0.0]))
    with pytest.raises(ValueError, match="generator 'push'"):
        base.check_invariant(translation(2, [0.0, 1.0], name="push"))
    with pytest.raises(ValueError, match=r"generator 'scale'.*antisymmetric"):
        base.check_invariant(from_matrices(torch.eye(2), names=["scale"]))
    with pytest.raises(ValueError, match="generator 'T'"):
        make_ehf(translation(2, [1.0, 0.0]), blocks=1, hidden=8)
    # rotation groups are accepted
    for sym in (so2(2), so3(3), particle_rotations(2, 2), no_symmetry(3)):
        GaussianBase(sym.dim).check_invariant(sym)
    # a product containing one bad factor is refused, naming that factor's generator
    with pytest.raises(ValueError, match="generator 'T'"):
        make_ehf(product(so2(2), translation(2, [1.0, 1.0])), blocks=1, hidden=8)


def test_constructors_validate_arguments():
    with pytest.raises(ValueError, match="repeat"):
        rotation_plane(3, 1, 1)
    with pytest.raises(ValueError, match="out of range"):
        so3(3, (0, 1, 3))
    with pytest.raises(ValueError, match="2 coordinates"):
        so2(3, (0, 1, 2))
    with pytest.raises(ValueError, match="3 entries"):
        translation(3, [1.0, 0.0])
    with pytest.raises(ValueError, match="same dimension"):
        product(so2(2), so2(3))
    model = make_ehf(so2(3), blocks=1, hidden=8)
    with pytest.raises(ValueError, match="dimension 2 but the model has dimension 3"):
        EquivariantHamiltonianFlow(model.base, model.flow, model.encoder, so2(2))


def test_so3_generators_signs_order_and_commutators_are_explicit():
    """The package convention, written out: the plane (i, j) generator is ``A = E_ji − E_ij``
    (``A[j, i] = 1``, ``A[i, j] = −1``), so ``A e_i = e_j``; so3 lists planes (0,1), (0,2), (1,2) as
    L01, L02, L12. By hand, with ``E_ab E_cd = δ_bc E_ad``:

        [A01, A02] = −E12 + E21 =  A12
        [A01, A12] =  E02 − E20 = −A02
        [A02, A12] = −E01 + E10 =  A01
    """
    sym = so3(3)
    a01 = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    a02 = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    a12 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=F64)
    assert sym.generator_names == ["L01", "L02", "L12"]
    torch.testing.assert_close(sym.matrices, torch.stack([a01, a02, a12]), rtol=0, atol=0)
    assert sym.offsets.abs().max() == 0

    def bracket(x, y):
        return x @ y - y @ x

    m01, m02, m12 = sym.matrices
    torch.testing.assert_close(bracket(m01, m02), a12, rtol=0, atol=0)
    torch.testing.assert_close(bracket(m01, m12), -a02, rtol=0, atol=0)
    torch.testing.assert_close(bracket(m02, m12), a01, rtol=0, atol=0)
    # the same relations on so3 embedded in other coordinates of R^5: planes (1,3), (1,4), (3,4)
    emb = so3(5, (1, 3, 4))
    assert emb.generator_names == ["L13", "L14", "L34"]
    n13, n14, n34 = emb.matrices
    assert n13[3, 1] == 1.0 and n13[1, 3] == -1.0 and n13.abs().sum() == 2.0
    torch.testing.assert_close(bracket(n13, n14), n34, rtol=0, atol=0)
    torch.testing.assert_close(bracket(n13, n34), -n14, rtol=0, atol=0)

    # sign of the action: exp(t A01) turns e_0 towards e_1 (counter-clockwise in the (0, 1) plane)
    e0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    for t in (1e-3, 0.1, 0.5):
        rotated = torch.linalg.matrix_exp(t * m01) @ e0
        torch.testing.assert_close(
            rotated, torch.tensor([math.cos(t), math.sin(t), 0.0], dtype=F64), rtol=0, atol=1e-14
        )
        assert rotated[1] > 0
    # and the vector field of L01 at e_0 points along +e_1
    torch.testing.assert_close(sym.vector_field_q(e0)[0], torch.tensor([0.0, 1.0, 0.0], dtype=F64), rtol=0, atol=0)
