"""Where do the nats go on particles2d? Bound gap against the flow's own fit, per trained cell.

For every run folder given (EHF or NSF, trained on ``particles2d``) this measures, on one common set of
``--n`` test points (the first cell's test split, so every comparison between cells is paired):

1. **The bound** (EHF only). One pass of ``--k-max`` momenta per point (float64, no grad, chunked) gives
   the log-weights ``log p(q, p_k) − log h(p_k | q)``; from the same weights: the ELBO (their mean),
   IWAE_K for K = 16, 256, …, k_max (disjoint groups of K, averaged over the groups: unbiased for each K)
   and the effective sample size at k_max. Reported as KL upper bounds ``mean_i [log t(q_i) − bound(q_i)]``
   (paired with the target's exact log density: no Monte-Carlo entropy error) and as ``NLL − H``.
   **Encoder refit** (``--refit-steps``): a copy of the model with everything frozen except
   ``model.encoder``; the encoder alone is trained on the ELBO with Adam on fresh target samples, then
   the bound pass is repeated with the same seed on the same points.
   **Encoder calibration on exact posterior samples**: model joint samples ``(q, p) = Φ(s_0)`` give
   exact draws from ``p_θ(p | q)``; ``z = F^T (p − μ(q)) / σ(q)`` should be N(0, 1) per dimension when
   the encoder matches the posterior (mean z² ≫ 1 means the posterior is wider than the encoder).
2. **The flow's own fit, without a bound**: ``--n-samples`` model samples against as many target samples.
   1-D Wasserstein-1 distances of pooled statistics (pairwise distances, triangle angles, particle
   distance to the origin, centroid, and the target's own coordinates: the radius and angle in the plane
   span(T, JT) where the rotated template lives, and the 4 coordinates orthogonal to it), with the
   W1 between two independent target samples as the noise floor; moments; and k-NN estimates of
   KL(target ‖ model) (Wang, Kulkarni & Verdú 2009) of the full 6-D q and of the plane / orthogonal
   parts (each a lower bound on the full KL by data processing), calibrated by target-vs-target (≈ 0)
   and by the NSF cells, whose exact KL is known.

Usage (from the repository root):

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/diagnose_particles.py \\
        /work/studyruns/data_efficiency-quick/cells/ehf_none-particles2d-n_train1024-seed0 ... \\
        --n 300 --out /tmp/particles_diag_main.json

writes ``OUT`` (JSON), ``OUT`` with ``.md`` (tables) and ``OUT`` with ``_hist.png`` (histograms).
Deterministic: every random draw comes from ``--seed``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_ehf.core.targets import make_target  # noqa: E402
from lightning_ehf.evaluate import load_run  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def is_ehf(model: torch.nn.Module) -> bool:
    return hasattr(model, "encoder") and hasattr(model, "flow")


# ------------------------------------------------------------------------------------------------
# 1. the bound


@torch.no_grad()
def log_weights(model, x: torch.Tensor, k: int, chunk: int, seed: int) -> torch.Tensor:
    """(k, B) log-weights ``log p(q, p) − log h(p | q)``, p ~ h(·|q), float64."""
    torch.manual_seed(seed)
    posterior = model.encoder(x)
    out = []
    done = 0
    while done < k:
        m = min(chunk, k - done)
        p = posterior.sample((m,))
        out.append(model.log_joint(x.expand_as(p), p) - posterior.log_prob(p))
        done += m
    return torch.cat(out, 0)


def bound_summary(lw: torch.Tensor, log_t: torch.Tensor, entropy: float, ks: list[int]) -> dict:
    """ELBO and IWAE_K from one set of log-weights; KL upper bounds paired with log t."""
    kmax, n = lw.shape
    res: dict = {"n": n, "k_max": kmax}

    def pack(name: str, per_point: torch.Tensor) -> None:
        kl = log_t - per_point
        res[name] = {
            "nll": float(-per_point.mean()),
            "kl_nll_minus_H": float(-per_point.mean() - entropy),
            "kl_paired": float(kl.mean()),
            "kl_paired_se": float(kl.std() / math.sqrt(n)),
        }

    pack("elbo", lw.mean(0))
    for k in ks:
        if k > kmax:
            continue
        g = kmax // k
        groups = lw[: g * k].reshape(g, k, n)
        per_point = (torch.logsumexp(groups, 1) - math.log(k)).mean(0)
        pack(f"iwae{k}", per_point)
    lse = torch.logsumexp(lw, 0)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, 0))
    wmax = torch.exp(lw.max(0).values - lse)
    res["ess_at_kmax"] = {
        "median": float(ess.median()),
        "mean": float(ess.mean()),
        "min": float(ess.min()),
        "frac_below_10": float((ess < 10).double().mean()),
    }
    res["max_weight_at_kmax_median"] = float(wmax.median())
    res["logw_std_median"] = float(lw.std(0).median())
    # paired gaps (per point), with standard errors
    if f"iwae{kmax}" in res:
        per_best = torch.logsumexp(lw, 0) - math.log(kmax)
        d = per_best - lw.mean(0)
        res["gap_iwae_kmax_minus_elbo"] = [float(d.mean()), float(d.std() / math.sqrt(n))]
    return res


def refit_encoder(model, steps: int, batch: int, lr: float, seed: int, log_every: int = 100) -> tuple:
    """Train only ``model.encoder`` on the ELBO (n = 1) with fresh target samples; return the copy and
    the trend (mean ELBO per window of ``log_every`` steps)."""
    m = copy.deepcopy(model).float()
    for p in m.parameters():
        p.requires_grad_(False)
    params = list(m.encoder.parameters())
    for p in params:
        p.requires_grad_(True)
    target = make_target("particles2d")
    gen = torch.Generator().manual_seed(seed + 1000)
    torch.manual_seed(seed + 2000)
    opt = torch.optim.Adam(params, lr=lr)
    trend, window = [], []
    for step in range(1, steps + 1):
        q = target.sample(batch, generator=gen)
        loss = -m.elbo(q, 1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        window.append(float(-loss.detach()))
        if step % log_every == 0:
            trend.append((step, float(np.mean(window))))
            print(f"    refit step {step:5d}  train ELBO (mean of last {log_every}) {trend[-1][1]:.4f}", flush=True)
            window = []
    for p in m.parameters():
        p.requires_grad_(False)
    return m, trend


def finetune(model, objective: str, steps: int, batch: int, k: int, lr: float, seed: int, log_every: int = 50) -> tuple:
    """Train flow and encoder together for ``steps`` on fresh target samples with ``objective``:
    ``iwae`` (−IWAE_k, reparametrised momenta) or ``elbo`` (−ELBO averaged over the same k momenta: the
    same compute, the control). Returns the copy and the trend of the objective."""
    m = copy.deepcopy(model).float().train()
    params = [p for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    target = make_target("particles2d")
    gen = torch.Generator().manual_seed(seed + 4000)
    torch.manual_seed(seed + 5000)
    opt = torch.optim.Adam(params, lr=lr)
    trend, window = [], []
    for step in range(1, steps + 1):
        q = target.sample(batch, generator=gen)
        post = m.encoder(q)
        p = post.rsample((k,))
        lw = m.log_joint(q.expand_as(p), p) - post.log_prob(p)
        obj = (torch.logsumexp(lw, 0) - math.log(k)) if objective == "iwae" else lw.mean(0)
        loss = -obj.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        window.append(float(-loss.detach()))
        if step % log_every == 0:
            trend.append((step, float(np.mean(window))))
            print(f"    finetune[{objective}] step {step:4d}  objective {trend[-1][1]:.4f}", flush=True)
            window = []
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval(), trend


@torch.no_grad()
def encoder_calibration(model, n: int, seed: int) -> dict:
    """Standardised residuals of exact posterior samples under the encoder (see the module doc)."""
    gen = torch.Generator().manual_seed(seed + 3000)
    q, p = model.sample_joint(n, gen)
    post = model.encoder(q)
    if hasattr(post, "frame"):
        z = torch.einsum("...ji,...j->...i", post.frame, p - post.loc) / post.scale
        scale = post.scale
    else:
        z = (p - post.mean) / post.stddev
        scale = post.stddev
    z2 = z.square()
    return {
        "mean_z2_per_dim": z2.mean(0).tolist(),
        "mean_z_per_dim": z.mean(0).tolist(),
        "frac_abs_z_gt_3": float((z.abs() > 3).double().mean()),
        "encoder_scale_median_per_dim": scale.median(0).values.tolist(),
        "posterior_p_std_per_dim_pooled": p.std(0).tolist(),
        "log_h_on_exact_posterior_mean": float(post.log_prob(p).mean()),
    }


# ------------------------------------------------------------------------------------------------
# 2. sample statistics


def template_basis(target) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal u1 = T/|T|, u2 = JT/|T| (R(θ)T = cos θ T + sin θ JT) and an orthonormal basis (4, 6)
    of their orthogonal complement."""
    T = target.template.reshape(-1)
    JT = np.stack([-target.template[:, 1], target.template[:, 0]], -1).reshape(-1)
    U = np.stack([T, JT], 0) / np.linalg.norm(T)
    full = np.linalg.svd(U, full_matrices=True)[2]  # rows: an orthonormal basis whose first two span U
    comp = full[2:]
    assert np.allclose(comp @ U.T, 0, atol=1e-10)
    return U, comp


def stats_of(x: np.ndarray, U: np.ndarray, comp: np.ndarray) -> dict[str, np.ndarray]:
    xs = x.reshape(-1, 3, 2)
    pairs = [(0, 1), (1, 2), (0, 2)]
    dist = np.stack([np.linalg.norm(xs[:, i] - xs[:, j], axis=-1) for i, j in pairs], 1)
    angles = []
    for i in range(3):
        j, k = [a for a in range(3) if a != i]
        v1, v2 = xs[:, j] - xs[:, i], xs[:, k] - xs[:, i]
        c = (v1 * v2).sum(-1) / (np.linalg.norm(v1, axis=-1) * np.linalg.norm(v2, axis=-1))
        angles.append(np.degrees(np.arccos(np.clip(c, -1, 1))))
    angles = np.stack(angles, 1)
    ab = x @ U.T
    return {
        "pair_distance": dist.reshape(-1),
        "triangle_angle_deg": angles.reshape(-1),
        "particle_radius": np.linalg.norm(xs, axis=-1).reshape(-1),
        "centroid_coord": xs.mean(1).reshape(-1),
        "plane_radius": np.linalg.norm(ab, axis=-1),
        "plane_angle_deg": np.degrees(np.arctan2(ab[:, 1], ab[:, 0])),
        "orth_coord": (x @ comp.T).reshape(-1),
    }


def w1(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.mean(np.abs(np.sort(a[:n]) - np.sort(b[:n]))))


def circular_w1_uniform_deg(a: np.ndarray) -> float:
    """W1 between the angle sample and the uniform law on (−180, 180], on the line (not the circle)."""
    s = np.sort(a)
    u = -180 + 360 * (np.arange(len(s)) + 0.5) / len(s)
    return float(np.mean(np.abs(s - u)))


def knn_kl(p: torch.Tensor, q: torch.Tensor, k: int = 1, chunk: int = 1000) -> float:
    """k-NN estimate of KL(P ‖ Q) from samples p (n, d) ~ P and q (m, d) ~ Q (Wang et al. 2009)."""
    n, d = p.shape
    m = q.shape[0]
    rho, nu = [], []
    for i in range(0, n, chunk):
        blk = p[i : i + chunk]
        dp = torch.cdist(blk, p, compute_mode="donot_use_mm_for_euclid_dist")
        dp[torch.arange(len(blk)), torch.arange(i, i + len(blk))] = float("inf")
        rho.append(dp.topk(k, largest=False).values[:, -1])
        nu.append(torch.cdist(blk, q, compute_mode="donot_use_mm_for_euclid_dist").topk(k, largest=False).values[:, -1])
    rho, nu = torch.cat(rho), torch.cat(nu)
    return float(d * (torch.log(nu) - torch.log(rho)).mean() + math.log(m / (n - 1)))


def dv_lower_bounds(ts: torch.Tensor, ms: torch.Tensor, target, U: np.ndarray, comp: np.ndarray) -> dict:
    """Donsker–Varadhan lower bounds on KL(target ‖ model), KL ≥ E_t[g] − log E_m[e^g], for test
    functions g fitted on the first half of the model samples and evaluated on the second half (and on
    the target samples): ``orth4`` g = log N(y; 0, σ²I) − log N(y; μ̂, Σ̂) on the 4 coordinates
    orthogonal to span(T, JT); ``radius1`` g = log N(r; |T|, σ²) − log N(r; μ̂_r, ŝ_r²) on the plane radius;
    ``full6`` g = log t(x) − log m̂(x), m̂ = N(r; μ̂_r, ŝ_r²)/(2πr) × N(y; μ̂, Σ̂). Valid for any g, so these
    need no bound on the model's density; [value, standard error] (delta method)."""
    Ut, Ct = torch.tensor(U.T), torch.tensor(comp.T)
    half = ms.shape[0] // 2
    fit, ev = ms[:half], ms[half:]
    yf, rf = fit @ Ct, (fit @ Ut).norm(dim=-1)
    mu_o, cov_o = yf.mean(0), torch.cov(yf.T)
    mu_r, s_r = rf.mean(), rf.std()
    gauss_o = torch.distributions.MultivariateNormal(mu_o, cov_o)
    ref_o = torch.distributions.MultivariateNormal(
        torch.zeros(4, dtype=ms.dtype), target.sigma**2 * torch.eye(4, dtype=ms.dtype)
    )
    radius_t = float(np.linalg.norm(target.template))
    norm_r = torch.distributions.Normal(mu_r, s_r)
    ref_r = torch.distributions.Normal(
        torch.tensor(radius_t, dtype=ms.dtype), torch.tensor(target.sigma, dtype=ms.dtype)
    )

    def g_all(x: torch.Tensor) -> dict[str, torch.Tensor]:
        y, r = x @ Ct, (x @ Ut).norm(dim=-1)
        log_mhat = norm_r.log_prob(r) - torch.log(2 * math.pi * r) + gauss_o.log_prob(y)
        return {
            "orth4": ref_o.log_prob(y) - gauss_o.log_prob(y),
            "radius1": ref_r.log_prob(r) - norm_r.log_prob(r),
            "full6": target.log_prob(x) - log_mhat,
        }

    gp, gq = g_all(ts), g_all(ev)
    out = {}
    for key in gp:
        a, b = gp[key], gq[key]
        lme = torch.logsumexp(b, 0) - math.log(len(b))
        w = torch.exp(b - lme)  # e^g / E[e^g]
        se = math.sqrt(float(a.var()) / len(a) + float(w.var()) / len(b))
        out[key] = [float(a.mean() - lme), se]
    out["fit"] = {
        "orth_mean": mu_o.tolist(),
        "orth_std_eigs": torch.linalg.eigvalsh(cov_o).sqrt().tolist(),
        "radius_mean": float(mu_r),
        "radius_std": float(s_r),
    }
    return out


def moments(s: dict[str, np.ndarray], x: np.ndarray, comp: np.ndarray) -> dict:
    orth = x @ comp.T
    ev = np.linalg.eigvalsh(np.cov(orth.T))
    return {
        "pair_distance_mean": float(s["pair_distance"].mean()),
        "pair_distance_std": float(s["pair_distance"].std()),
        "angle_std_deg": float(s["triangle_angle_deg"].std()),
        "particle_radius_mean": float(s["particle_radius"].mean()),
        "particle_radius_std": float(s["particle_radius"].std()),
        "centroid_std": float(s["centroid_coord"].std()),
        "plane_radius_mean": float(s["plane_radius"].mean()),
        "plane_radius_std": float(s["plane_radius"].std()),
        "orth_std_eigs": np.sqrt(np.clip(ev, 0, None)).tolist(),
        "per_dim_std": x.std(0).tolist(),
    }


# ------------------------------------------------------------------------------------------------


def fmt(v, nd=3) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", help="run folders (or .ckpt) trained on particles2d")
    ap.add_argument("--n", type=int, default=300, help="test points for the bounds (default 300)")
    ap.add_argument("--k-max", type=int, default=4096, help="momenta per point in the bound pass")
    ap.add_argument("--light-k-max", type=int, default=256, help="k_max for the cells not named by --full")
    ap.add_argument(
        "--full",
        nargs="*",
        default=None,
        help="folder names that get k_max and the encoder refit (default: every EHF cell)",
    )
    ap.add_argument(
        "--chunk", type=int, default=64, help="momenta per chunk (64: larger chunks run 2x slower on a CPU)"
    )
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 256, 4096])
    ap.add_argument("--refit-steps", type=int, default=1500)
    ap.add_argument("--refit-batch", type=int, default=256)
    ap.add_argument("--refit-lr", type=float, default=1e-3)
    ap.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="fine-tune flow + encoder of the --full cells on IWAE_k and (control) on the ELBO over k momenta",
    )
    ap.add_argument("--finetune-k", type=int, default=16)
    ap.add_argument("--finetune-batch", type=int, default=64)
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--finetune-eval-k", type=int, default=256)
    ap.add_argument("--n-samples", type=int, default=5000)
    ap.add_argument("--knn-k", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out",
        default="/tmp/particles_diag_run.json",
        help="JSON; the tables go to the same name with .md, the figure to _hist.png",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start, c_start = time.time(), cpu_s()

    out_json = Path(args.out)
    out_md = out_json.with_suffix(".md")
    out_png = out_json.with_name(out_json.stem + "_hist.png")

    target = make_target("particles2d")
    U, comp = template_basis(target)
    runs = [(Path(c).name, load_run(c)) for c in args.cells]
    entropy = runs[0][1].entropy
    x = runs[0][1].split_data("test")[: args.n].double()
    log_t = target.log_prob(x)
    print(f"{len(runs)} cells; {args.n} test points of {runs[0][0]}; target entropy {entropy:.4f}", flush=True)

    # target samples: two independent sets (the second is the W1 / k-NN noise floor)
    g = torch.Generator().manual_seed(args.seed + 10)
    ts = target.sample(args.n_samples, generator=g, dtype=torch.float64)
    ts2 = target.sample(args.n_samples, generator=g, dtype=torch.float64)
    t_stats = stats_of(ts.numpy(), U, comp)
    report: dict = {
        "args": vars(args),
        "entropy": entropy,
        "n_points": args.n,
        "cells": {},
        "target": {
            "moments": moments(t_stats, ts.numpy(), comp),
            "cov_eigs": np.linalg.eigvalsh(np.cov(ts.numpy().T)).tolist(),
        },
    }

    def sample_block(samples: torch.Tensor) -> dict:
        s = stats_of(samples.numpy(), U, comp)
        res = {"w1": {}, "moments": moments(s, samples.numpy(), comp), "knn_kl": {}}
        for key in s:
            res["w1"][key] = w1(t_stats[key], s[key])
        res["w1"]["plane_angle_vs_uniform"] = circular_w1_uniform_deg(s["plane_angle_deg"])
        parts = {
            "full6": (ts, samples),
            "plane2": (ts @ torch.tensor(U.T), samples @ torch.tensor(U.T)),
            "orth4": (ts @ torch.tensor(comp.T), samples @ torch.tensor(comp.T)),
            "plane_radius1": (torch.tensor(t_stats["plane_radius"])[:, None], torch.tensor(s["plane_radius"])[:, None]),
        }
        for k in args.knn_k:
            for name, (a, b) in parts.items():
                res["knn_kl"][f"{name}_k{k}"] = knn_kl(a, b, k)
        res["dv_lower_bound"] = dv_lower_bounds(ts, samples, target, U, comp)
        return res, s

    floor, _ = sample_block(ts2)
    report["target_vs_target"] = floor
    all_stats = {"target": t_stats}

    for name, run in runs:
        c0 = cpu_s()
        model = run.model.double().eval()
        cell: dict = {
            "kind": "ehf" if is_ehf(model) else "nsf",
            "config_model": run.config.model.model_dump(),
            "constraint": run.config.constraint.mode,
        }
        print(f"== {name} ({cell['kind']})", flush=True)
        full = args.full is None or name in args.full
        if is_ehf(model):
            cell["step_sizes"] = [float(b.step_size.detach()) for b in model.flow.blocks]
            kmax = args.k_max if full else args.light_k_max
            ks = [k for k in args.ks if k <= kmax]
            c1 = cpu_s()
            lw = log_weights(model, x, kmax, args.chunk, args.seed)
            cell["bound"] = bound_summary(lw, log_t, entropy, ks)
            cell["bound"]["cpu_s"] = cpu_s() - c1
            b = cell["bound"]
            print(
                "   bound: "
                + ", ".join(f"{k} KL {b[k]['kl_paired']:.3f}" for k in b if k.startswith(("elbo", "iwae")))
                + f"; ESS@{kmax} median {b['ess_at_kmax']['median']:.1f} ({b['cpu_s']:.0f} s CPU)",
                flush=True,
            )
            cell["encoder_calibration"] = encoder_calibration(model, args.n_samples, args.seed)
            if full and args.refit_steps > 0:
                c1 = cpu_s()
                refit, trend = refit_encoder(model, args.refit_steps, args.refit_batch, args.refit_lr, args.seed)
                refit = refit.double().eval()
                lw2 = log_weights(refit, x, kmax, args.chunk, args.seed)
                r = bound_summary(lw2, log_t, entropy, ks)
                r["trend"] = trend
                r["steps"], r["batch"], r["lr"] = args.refit_steps, args.refit_batch, args.refit_lr
                r["cpu_s"] = cpu_s() - c1
                r["encoder_calibration"] = encoder_calibration(refit, args.n_samples, args.seed)
                cell["refit"] = r
                print(
                    "   refit: "
                    + ", ".join(f"{k} KL {r[k]['kl_paired']:.3f}" for k in r if k.startswith(("elbo", "iwae")))
                    + f"; ESS@{kmax} median {r['ess_at_kmax']['median']:.1f} ({r['cpu_s']:.0f} s CPU)",
                    flush=True,
                )
            if full and args.finetune_steps > 0:
                cell["finetune"] = {}
                for objective in ("iwae", "elbo"):
                    c1 = cpu_s()
                    ft, trend = finetune(
                        model,
                        objective,
                        args.finetune_steps,
                        args.finetune_batch,
                        args.finetune_k,
                        args.finetune_lr,
                        args.seed,
                    )
                    ft = ft.double()
                    r = bound_summary(
                        log_weights(ft, x, args.finetune_eval_k, args.chunk, args.seed),
                        log_t,
                        entropy,
                        [k for k in args.ks if k <= args.finetune_eval_k],
                    )
                    with torch.no_grad():
                        sm = ft.sample(args.n_samples, torch.Generator().manual_seed(args.seed + 20)).double()
                    r["samples"], all_stats[f"{name} ft-{objective}"] = sample_block(sm)
                    r["trend"], r["cpu_s"] = trend, cpu_s() - c1
                    r["step_sizes"] = [float(b.step_size) for b in ft.flow.blocks]
                    cell["finetune"][objective] = r
                    print(
                        f"   finetune[{objective}]: IWAE{args.finetune_eval_k} KL {r[f'iwae{args.finetune_eval_k}']['kl_paired']:.3f}, "
                        f"DV full6 {r['samples']['dv_lower_bound']['full6'][0]:.3f} ({r['cpu_s']:.0f} s CPU)",
                        flush=True,
                    )
        else:
            with torch.no_grad():
                lp = model.log_prob(x)
                kl = log_t - lp
                cell["exact"] = {
                    "kl_paired": float(kl.mean()),
                    "kl_paired_se": float(kl.std() / math.sqrt(args.n)),
                    "kl_nll_minus_H": float(-lp.mean() - entropy),
                }
                klt = target.log_prob(ts) - model.log_prob(ts)
                cell["exact_on_knn_target_samples"] = [float(klt.mean()), float(klt.std() / math.sqrt(len(ts)))]
            print(f"   exact KL {cell['exact']['kl_paired']:.3f}", flush=True)
        torch.manual_seed(args.seed + 20)
        with torch.no_grad():
            samples = model.sample(args.n_samples, torch.Generator().manual_seed(args.seed + 20)).double()
        cell["samples"], all_stats[name] = sample_block(samples)
        cell["cpu_s_total"] = cpu_s() - c0
        print(
            f"   samples: W1 pair {cell['samples']['w1']['pair_distance']:.3f}, kNN KL full6 k1 "
            f"{cell['samples']['knn_kl']['full6_k1']:.3f} ({cell['cpu_s_total']:.0f} s CPU for the cell)",
            flush=True,
        )
        report["cells"][name] = cell

    report["wall_s"], report["cpu_s"] = time.time() - t_start, cpu_s() - c_start
    out_json.write_text(json.dumps(report, indent=1))
    out_md.write_text(markdown(report, args))
    figure(all_stats, out_png)
    print(f"wrote {out_json}, {out_md}, {out_png}; {report['cpu_s']:.0f} s CPU, {report['wall_s']:.0f} s wall")
    return 0


def markdown(rep: dict, args) -> str:
    L = [
        f"n = {rep['n_points']} test points (common to every cell), target entropy {rep['entropy']:.4f}, "
        f"seed {args.seed}, {args.n_samples} samples for the sample statistics. KL values are "
        f"mean_i[log t(q_i) − bound(q_i)] (± standard error over the points).",
        "",
    ]
    L += [
        "### Bound (KL upper bounds, nats)",
        "",
        "| cell | encoder | ELBO | IWAE 16 | IWAE 256 | IWAE 4096 | ESS@k_max (median) | k_max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in rep["cells"].items():
        rows = []
        if "bound" in c:
            rows.append(("trained", c["bound"]))
        if "refit" in c:
            rows.append((f"refit ({c['refit']['steps']}×{c['refit']['batch']})", c["refit"]))
        for lab, b in rows:
            cells = [
                f"{b[k]['kl_paired']:.3f} ± {b[k]['kl_paired_se']:.3f}" if k in b else "—"
                for k in ("elbo", "iwae16", "iwae256", "iwae4096")
            ]
            L.append(
                f"| {name} | {lab} | " + " | ".join(cells) + f" | {b['ess_at_kmax']['median']:.1f} | {b['k_max']} |"
            )
        if "exact" in c:
            e = c["exact"]
            L.append(f"| {name} | exact | {e['kl_paired']:.3f} ± {e['kl_paired_se']:.3f} | | | | | |")
    L += [
        "",
        "### Flow's own fit: W1 to the target (target-vs-target floor first)",
        "",
        "| cell | pair dist | angle (°) | particle radius | centroid | plane radius | plane angle vs U (°) | orth coords |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = [
        "pair_distance",
        "triangle_angle_deg",
        "particle_radius",
        "centroid_coord",
        "plane_radius",
        "plane_angle_vs_uniform",
        "orth_coord",
    ]
    for name, blk in [("target (floor)", rep["target_vs_target"])] + [
        (n, c["samples"]) for n, c in rep["cells"].items()
    ]:
        L.append(
            f"| {name} | "
            + " | ".join(fmt(blk["w1"][k], 3 if "deg" not in k and "angle" not in k else 2) for k in keys)
            + " |"
        )
    kk = args.knn_k
    L += [
        "",
        "### k-NN KL(target ‖ model) without a bound (nats)",
        "",
        "| cell | "
        + " | ".join(f"{p} k={k}" for k in kk for p in ("full 6-D", "plane 2-D", "orth 4-D", "radius 1-D"))
        + " | exact KL (NSF) |",
        "|---|" + "---|" * (4 * len(kk) + 1),
    ]
    for name, blk in [("target (floor)", rep["target_vs_target"])] + [
        (n, c["samples"]) for n, c in rep["cells"].items()
    ]:
        vals = [blk["knn_kl"][f"{p}_k{k}"] for k in kk for p in ("full6", "plane2", "orth4", "plane_radius1")]
        ex = rep["cells"].get(name, {}).get("exact_on_knn_target_samples")
        L.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {fmt(ex[0]) if ex else '—'} |")
    L += [
        "",
        "### Donsker–Varadhan lower bounds on KL(target ‖ model), no bound on the model needed (nats ± se)",
        "",
        "| cell | full 6-D (g = log t − log m̂) | orth 4-D Gaussian g | plane radius 1-D g | exact KL (NSF) |",
        "|---|---|---|---|---|",
    ]
    for name, blk in [("target (floor)", rep["target_vs_target"])] + [
        (n, c["samples"]) for n, c in rep["cells"].items()
    ]:
        dv = blk["dv_lower_bound"]
        ex = rep["cells"].get(name, {}).get("exact_on_knn_target_samples")
        L.append(
            f"| {name} | "
            + " | ".join(f"{dv[k][0]:.3f} ± {dv[k][1]:.3f}" for k in ("full6", "orth4", "radius1"))
            + f" | {fmt(ex[0]) if ex else '—'} |"
        )
    ft_rows = [(n, o, r) for n, c in rep["cells"].items() for o, r in c.get("finetune", {}).items()]
    if ft_rows:
        a = rep["args"]
        L += [
            "",
            f"### Fine-tune of flow + encoder on fresh data ({a['finetune_steps']} steps, batch {a['finetune_batch']}, "
            f"k = {a['finetune_k']} momenta, lr {a['finetune_lr']})",
            "",
            f"| cell | objective | ELBO KL | IWAE {a['finetune_eval_k']} KL | DV LB full 6-D | DV LB orth 4-D | orth std (eigen) | plane radius std |",
            "|---|---|---|---|---|---|---|---|",
        ]
        ek = f"iwae{a['finetune_eval_k']}"
        for n, o, r in ft_rows:
            sm = r["samples"]
            L.append(
                f"| {n} | {o} | {r['elbo']['kl_paired']:.3f} | {r[ek]['kl_paired']:.3f} ± {r[ek]['kl_paired_se']:.3f} | "
                f"{sm['dv_lower_bound']['full6'][0]:.3f} | {sm['dv_lower_bound']['orth4'][0]:.3f} | "
                + ", ".join(f"{v:.3f}" for v in sm["moments"]["orth_std_eigs"])
                + f" | {sm['moments']['plane_radius_std']:.3f} |"
            )
    L += [
        "",
        "### Moments",
        "",
        "| cell | pair dist mean/std | angle std (°) | particle radius mean/std | centroid std | plane radius mean/std | orth std (eigen) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in [("target", rep["target"]["moments"])] + [
        (n, c["samples"]["moments"]) for n, c in rep["cells"].items()
    ]:
        L.append(
            f"| {name} | {m['pair_distance_mean']:.3f} / {m['pair_distance_std']:.3f} | {m['angle_std_deg']:.2f} | "
            f"{m['particle_radius_mean']:.3f} / {m['particle_radius_std']:.3f} | {m['centroid_std']:.3f} | "
            f"{m['plane_radius_mean']:.3f} / {m['plane_radius_std']:.3f} | "
            + ", ".join(f"{v:.3f}" for v in m["orth_std_eigs"])
            + " |"
        )
    L += ["", "### Encoder against exact posterior samples (mean z² per dimension; 1 if calibrated)", ""]
    for name, c in rep["cells"].items():
        for lab, cal in (
            ("trained", c.get("encoder_calibration")),
            ("refit", c.get("refit", {}).get("encoder_calibration")),
        ):
            if cal:
                L.append(
                    f"- {name} ({lab}): mean z² "
                    + ", ".join(f"{v:.2f}" for v in cal["mean_z2_per_dim"])
                    + f"; |z| > 3: {cal['frac_abs_z_gt_3']:.3f}; encoder σ (median) "
                    + ", ".join(f"{v:.2f}" for v in cal["encoder_scale_median_per_dim"])
                    + "; pooled posterior p std "
                    + ", ".join(f"{v:.2f}" for v in cal["posterior_p_std_per_dim_pooled"])
                )
    L += ["", f"CPU {rep['cpu_s']:.0f} s, wall {rep['wall_s']:.0f} s.", ""]
    return "\n".join(L)


def figure(all_stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["pair_distance", "triangle_angle_deg", "particle_radius", "centroid_coord", "plane_radius", "orth_coord"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, key in zip(axes.flat, keys):
        lo, hi = np.percentile(all_stats["target"][key], [0.1, 99.9])
        span = hi - lo
        bins = np.linspace(lo - 0.5 * span, hi + 0.5 * span, 80)
        for name, s in all_stats.items():
            label = name.replace("-particles2d-n_train1024", "")
            ax.hist(
                s[key],
                bins=bins,
                density=True,
                histtype="step",
                lw=2.0 if name == "target" else 1.2,
                color="k" if name == "target" else None,
                label=label,
            )
        ax.set_title(key)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
