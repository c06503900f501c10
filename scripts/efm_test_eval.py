"""Test metrics of an efm run (best checkpoint) on all of its test rows, in float32 as in training, 500 rows per
ODE solve: NLL, KL (NLL − entropy), paired KL with its standard error, mean function evaluations; writes
RUN/test_eval.json. Usage: python scripts/efm_test_eval.py RUN_DIR (the test phase of `ehf train` without plots)."""

import json
import sys
import time

import torch

from lightning_ehf.core.targets import make_target
from lightning_ehf.evaluate import load_run

torch.set_num_threads(1)

run_dir = sys.argv[1]
run = load_run(run_dir + "/checkpoints/best.ckpt")
q = run.split_data("test").float()
target = make_target(run.config.data.target)  # the run's rows and the model's log_prob are in the data's coordinates
t0 = time.time()
logp, nfe = [], []
for i in range(0, q.shape[0], 500):
    logp.append(run.model.log_prob(q[i : i + 500]).double())
    nfe.append(run.model.last_nfe)
    print(i, time.time() - t0, nfe[-1], flush=True)
logp = torch.cat(logp)
paired = target.log_prob(q.double()) - logp
out = {
    "n": q.shape[0],
    "nll": float(-logp.mean()),
    "kl": float(-logp.mean() - run.entropy),
    "kl_paired": float(paired.mean()),
    "kl_paired_stderr": float(paired.std() / paired.shape[0] ** 0.5),
    "nfe_mean": sum(nfe) / len(nfe),
    "seconds": time.time() - t0,
}
print(json.dumps(out))
open(run_dir + "/test_eval.json", "w").write(json.dumps(out, indent=2) + "\n")
