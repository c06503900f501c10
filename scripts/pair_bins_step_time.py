"""Seconds per training step of the invariant 13-particle model (the dw4 recipe: batch 64 × 16 momenta, IWAE,
DReG, 6 blocks × 3 leapfrog steps, MLPs 128 wide) for several pair-distance histograms (``model.pair_bins``
bases up to ``model.pair_cutoff``; four numbers: then the kinetic energy's own, ``model.kinetic_pair_bins`` up to
``model.kinetic_pair_cutoff``), alternating in one process; medians over the rounds, and each one's speed-up over 24
bases up to 8 (the schema's default).

    OMP_NUM_THREADS=1 python scripts/pair_bins_step_time.py [--rounds 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lightning_ehf.bench import pair_feature_step_times
from lightning_ehf.system import hardware

HISTOGRAMS = [
    (24, 8.0),
    (16, 8.0),
    (12, 8.0),
    (12, 5.0),
    (8, 5.0),
    (12, 5.0, 6, 5.0),
    (12, 5.0, 4, 5.0),
    (24, 8.0, 6, 5.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    seconds = pair_feature_step_times(torch.device("cpu"), 13, HISTOGRAMS, args.rounds)
    base = seconds["bins24_cutoff8"]
    result = {
        "hardware": hardware(),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "s_per_step": seconds,
        "speedup_over_bins24_cutoff8": {key: base / value for key, value in seconds.items()},
    }
    for key, value in seconds.items():
        print(f"{key}: {value:.3f} s/step ({base / value:.2f}x)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
