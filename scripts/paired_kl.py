"""Paired KL estimate of trained runs on their own test points.

    KL ≈ (1/n) Σ_i [log p(x_i) − log p̂_K(x_i)]

with the target's normalised log-density log p and the model's IWAE_K estimate log p̂_K at the same points.
It estimates the same quantity as ``test/kl`` (mean NLL minus the target's entropy), but the two terms are
strongly correlated point by point, so its standard error is several times smaller. Targets with a known
density only (not data files, not the centre-of-mass-free dw4 pool).

    python scripts/paired_kl.py RUN_DIR [RUN_DIR ...] [--n 2000] [--iw 256]
"""

from __future__ import annotations

import argparse
import math

import torch

from lightning_ehf.core.targets import make_target
from lightning_ehf.evaluate import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=2000, help="the first N test points")
    ap.add_argument("--iw", type=int, default=256, help="importance samples K")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for path in args.runs:
        run = load_run(path)
        if run.config.data.target is None:
            raise SystemExit(f"{path}: needs a target with a known density")
        target = make_target(run.config.data.target)
        x = run.test_data()[: args.n].double()
        model = run.model.double().eval()
        torch.manual_seed(args.seed)
        with torch.no_grad():
            log_q = torch.cat([model.iwae(c, args.iw, 64) for c in x.split(250)])
        diff, nll = target.log_prob(x) - log_q, -log_q
        se = lambda v: float(v.std() / math.sqrt(len(v)))  # noqa: E731
        print(
            f"{path}: n={len(x)} K={args.iw}  paired KL {float(diff.mean()):.4f} ± {se(diff):.4f}   "
            f"NLL − entropy {float(nll.mean()) - run.entropy:.4f} ± {se(nll):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
