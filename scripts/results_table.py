"""Prints the table of docs/results.md from the run folders of scripts/run_experiments.sh (argument: its OUT)."""

import json
import sys
from pathlib import Path

runs = [
    ("ring2d_finite", "`-c configs/experiment/ring2d_finite.yaml`"),
    ("ring2d_none", "`constraint.mode=none` (default experiment without the constraint)"),
    ("ring2d_nsf", "`model.kind=nsf` (zuko neural spline flow baseline)"),
    ("gmm8", "`-c configs/experiment/gmm8.yaml` (SO(2) imposed on a C8-symmetric target)"),
    ("gmm8_none", "`-c configs/experiment/gmm8.yaml constraint.mode=none`"),
    ("shell3d", "`-c configs/experiment/shell3d.yaml`"),
    ("particles2d", "`-c configs/experiment/particles2d.yaml`"),
    ("rings2d", "`-c configs/experiment/rings2d.yaml`"),
    ("dw4", "`-c configs/experiment/dw4.yaml`"),
]


def f(x, nd=3):
    if x is None:
        return "—"
    return "0" if x == 0 else (f"{x:.{nd}f}" if abs(x) >= 10**-nd else f"{x:.1e}")


print(
    "| run | command (after `ehf train`) | steps | test/nll | test/kl | invariance error (floor) | equivariance error | bracket RMS (max over generators) | λ (max) | time |"
)
print("|---|---|---|---|---|---|---|---|---|---|")
for name, cmd in runs:
    p = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp") / name / "metrics.json"
    if not p.exists():
        print(f"| {name} | {cmd} | did not finish | | | | | | | |", file=sys.stderr)
        continue
    m = json.loads(p.read_text())
    br = [v for k, v in m.items() if k.startswith("test/bracket_rms/")]
    lam = [v for k, v in m.items() if k.startswith("test/lambda/")]
    print(
        f"| {name} | {cmd} | {m['steps']} | {f(m.get('test/nll'))} | {f(m.get('test/kl'), 4)} | "
        f"{f(m.get('test/invariance_error'))} ({f(m.get('test/invariance_noise'))}) | {f(m.get('test/equivariance_error'))} | "
        f"{f(max(br)) if br else '—'} | {f(max(lam), 2) if lam else '—'} | {m['wall_time_s']:.0f} s |"
    )
