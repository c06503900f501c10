#!/usr/bin/env python
"""Plant known bugs one at a time and check that the test suite catches each of them.

For every mutation below the script copies the package, its tests and configs into a temporary
folder, applies one textual replacement (the original text must occur exactly once), runs the test
files that guard that bug class with ``pytest -x``, and reports *caught* (some test failed) or
*survived* (all passed). An unmutated copy is run first on the union of the selected test files, so
a failure there (a broken or flaky test) is not mistaken for a catch.

A developer tool, not part of CI (a full pass takes several minutes):

    .venv/bin/python scripts/mutation_check.py               # all mutations, one worker per core
    .venv/bin/python scripts/mutation_check.py --list        # what is planted, and which tests guard it
    .venv/bin/python scripts/mutation_check.py --only dual-step-sign iwae-mean-of-log-weights -j 1

The list plants at least one bug in every module of the package (the full run checks this first).

Exit code: 0 when every mutation is caught, 1 when any survives, 2 for bad arguments, a mutation
whose original text is not found exactly once (the code it targets has changed: update the list), or
a module of the package that no mutation covers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("lightning_ehf", "tests", "configs", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    name: str  # short id
    bug: str  # the bug class, in words
    path: str  # file, relative to the repository root
    old: str  # text replaced (must occur exactly once)
    new: str
    tests: tuple[str, ...]  # test files (or node ids) that must catch it


MUTATIONS: list[Mutation] = [
    Mutation(
        "run-id-ignores-wandb",
        "a fresh run ignores WANDB_RUN_ID (a sweep agent's run id)",
        "lightning_ehf/tracking.py",
        "    if given:\n        if not _RUN_ID",
        "    if False:\n        if not _RUN_ID",
        ("tests/lit/test_tracking.py",),
    ),
    Mutation(
        "eval-under-autocast",
        "evaluations stay under bf16 autocast",
        "lightning_ehf/lit/precision.py",
        "    with torch.autocast(device_type=device_type, enabled=False):",
        "    with torch.autocast(device_type=device_type, enabled=True):",
        ("tests/lit/test_precision.py",),
    ),
    Mutation(
        "compile-fallback-forgotten",
        "a failed compilation is tried again at every step",
        "lightning_ehf/core/compiled.py",
        "            self.failed = True\n            return self.fn(*args)",
        "            return self.fn(*args)",
        ("tests/core/test_compiled.py",),
    ),
    Mutation(
        "reference-bins-shifted",
        "the reference pair features with bins one width apart from the scalable ones",
        "lightning_ehf/core/pair_features_reference.py",
        "        self.width = s_max / (n_bins - 1)",
        "        self.width = s_max / n_bins",
        ("tests/core/test_pair_features.py",),
    ),
    Mutation(
        "slurm-no-requeue",
        "a SLURM cell stopped at its time limit is not requeued",
        "lightning_ehf/study/slurm.py",
        "        return submitit.helpers.DelayedSubmission(self)",
        "        return None",
        ("tests/study/test_slurm.py",),
    ),
    Mutation(
        "bad-input-exit-1",
        "bad input exits 1 (a crash) instead of 2",
        "lightning_ehf/cli.py",
        'print(f"ehf {args.command}{sub}: error: {e}", file=sys.stderr)\n        return 2',
        'print(f"ehf {args.command}{sub}: error: {e}", file=sys.stderr)\n        return 1',
        ("tests/cli/test_cli.py",),
    ),
    Mutation(
        "file-defaults-over-explicit",
        "what data.path implies overrides keys the user set",
        "lightning_ehf/config/load.py",
        "            if key not in provenance:",
        "            if True:",
        ("tests/config/test_config.py",),
    ),
    # -- the train path, evaluation, the model contract and the bench (architecture) ---------------
    Mutation(
        "contract-not-checkable",
        "the model contract cannot be checked at run time",
        "lightning_ehf/core/density.py",
        "@runtime_checkable\nclass DensityModel",
        "class DensityModel",
        ("tests/core/test_model_contract.py",),
    ),
    Mutation(
        "kl-paired-sign",
        "ehf eval: the paired KL with the difference the wrong way round",
        "lightning_ehf/evaluate.py",
        "diff = target.log_prob(q).cpu().numpy() - logp_np",
        "diff = logp_np - target.log_prob(q).cpu().numpy()",
        ("tests/cli/test_eval.py",),
    ),
    Mutation(
        "bench-nsf-farthest",
        "the size-matched NSF picks the width farthest from the parameter count",
        "lightning_ehf/bench.py",
        "if best is None or abs(size - n_params) < abs(best[1] - n_params):",
        "if best is None or abs(size - n_params) > abs(best[1] - n_params):",
        ("tests/e2e/test_bench.py",),
    ),
    Mutation(
        "bench-mean-time",
        "the bench reports the mean time, not the median",
        "lightning_ehf/bench.py",
        "    return statistics.median(times)",
        "    return statistics.mean(times)",
        ("tests/e2e/test_bench.py",),
    ),
    # -- core: integrator, brackets, bounds, targets --------------------------------------------
    Mutation(
        "half-kick-full",
        "leapfrog: the first half-kick made a full kick",
        "lightning_ehf/core/integrators.py",
        "        p = p - 0.5 * h * force\n        velocity = grad_k(p)",
        "        p = p - h * force\n        velocity = grad_k(p)",
        ("tests/core/test_flow.py",),
    ),
    Mutation(
        "stale-force",
        "leapfrog: the force is not recomputed after the drift",
        "lightning_ehf/core/integrators.py",
        "        q = q + h * velocity\n        force = grad_u(q)\n",
        "        q = q + h * velocity\n",
        ("tests/core/test_flow.py",),
    ),
    Mutation(
        "bracket-sign",
        "closed-form bracket {g, H} with a flipped sign",
        "lightning_ehf/core/brackets.py",
        "    return kinetic_term - potential_term",
        "    return potential_term - kinetic_term",
        ("tests/core/test_brackets.py",),
    ),
    Mutation(
        "bessel-term",
        "particles2d log-density without its Bessel (rotation-marginal) term",
        "lightning_ehf/core/targets.py",
        "                + torch.log(torch.special.i0e(rho / var)))",
        "                )",
        ("tests/core/test_targets.py",),
    ),
    Mutation(
        "iwae-mean-of-log-weights",
        "IWAE as the mean of the log-weights (an ELBO, not log-mean-exp)",
        "lightning_ehf/core/flows.py",
        "        return torch.logsumexp(torch.cat(log_w, 0), 0) - math.log(k)",
        "        return torch.cat(log_w, 0).mean(0)",
        ("tests/core/test_iwae.py",),
    ),
    Mutation(
        "dual-step-sign",
        "dual ascent steps λ the wrong way",
        "lightning_ehf/core/constraints.py",
        "self.value.copy_((self.value + self.lr * (c - self.tolerance)).clamp_min(0.0))",
        "self.value.copy_((self.value - self.lr * (c - self.tolerance)).clamp_min(0.0))",
        ("tests/core/test_constraints.py",),
    ),
    Mutation(
        "geco-ema-swapped",
        "GECO moving average with its two weights swapped",
        "lightning_ehf/core/constraints.py",
        "self.ema * self.moving_average + (1 - self.ema) * c",
        "(1 - self.ema) * self.moving_average + self.ema * c",
        ("tests/core/test_constraints.py",),
    ),
    Mutation(
        "so3-generator-sign",
        "rotation generators with the opposite sign convention",
        "lightning_ehf/core/symmetries.py",
        "    a[j, i] = 1.0\n    a[i, j] = -1.0",
        "    a[j, i] = -1.0\n    a[i, j] = 1.0",
        ("tests/core/test_symmetries.py",),
    ),
    # -- gradient paths -------------------------------------------------------------------------
    Mutation(
        "elbo-sample-not-rsample",
        "training ELBO draws momenta with sample() (no pathwise gradient)",
        "lightning_ehf/core/flows.py",
        "p = posterior.rsample((n,))  # (n, B, d)",
        "p = posterior.sample((n,))  # (n, B, d)",
        ("tests/core/test_gradients.py",),
    ),
    Mutation(
        "step-size-detached",
        "learnable step sizes cut out of the graph",
        "lightning_ehf/core/flows.py",
        "step=self.step_size if create_graph else self.step_size.detach(),",
        "step=self.step_size.detach(),",
        ("tests/core/test_gradients.py",),
    ),
    Mutation(
        "tanh-slope",
        "closed-form force: tanh derivative 1 − h instead of 1 − h²",
        "lightning_ehf/core/hamiltonians.py",
        "return 1.0 - (torch.tanh(a) if h is None else h).square()",
        "return 1.0 - (torch.tanh(a) if h is None else h)",
        ("tests/core/test_fastpaths.py",),
    ),
    Mutation(
        "pullback-factor",
        "closed-form force: the squared-norm features' pullback misses its factor 2",
        "lightning_ehf/core/invariants.py",
        "out[..., b] = 2.0 * x[..., b] * g[..., k : k + 1]",
        "out[..., b] = x[..., b] * g[..., k : k + 1]",
        ("tests/core/test_fastpaths.py",),
    ),
    Mutation(
        "reversible-wrong-direction",
        "reversible backward reconstructs the states in the wrong direction",
        "lightning_ehf/core/reversible.py",
        "q, p, _ = _step(block, q, p, -sign * log_step.exp(), False, None)",
        "q, p, _ = _step(block, q, p, sign * log_step.exp(), False, None)",
        ("tests/core/test_fastpaths.py",),
    ),
    # -- symmetry metrics -----------------------------------------------------------------------
    Mutation(
        "invariance-without-action",
        "invariance error compares log p̂(q) with log p̂(q) (no group action)",
        "lightning_ehf/core/metrics.py",
        "model.iwae(g.act_q(q), k, chunk) - repeat",
        "model.iwae(q, k, chunk) - repeat",
        ("tests/core/test_metrics.py",),
    ),
    Mutation(
        "equivariance-without-action",
        "equivariance error skips the action on the flow's input",
        "lightning_ehf/core/metrics.py",
        "q2, p2 = flow(*g.act(q, p))",
        "q2, p2 = flow(q, p)",
        ("tests/core/test_metrics.py",),
    ),
    Mutation(
        "invariance-floor-same-estimate",
        "the noise floor compares an estimate with itself (always 0)",
        "lightning_ehf/core/metrics.py",
        "float((reference - repeat).abs().mean())",
        "float((reference - reference).abs().mean())",
        ("tests/core/test_metrics.py",),
    ),
    Mutation(
        "equivariance-output-unacted",
        "equivariance error compares Φ(g·s) with Φ(s) (no action on the output)",
        "lightning_ehf/core/metrics.py",
        "gq1, gp1 = g.act(q1, p1)",
        "gq1, gp1 = q1, p1",
        ("tests/core/test_metrics.py",),
    ),
    Mutation(
        "invariants-not-invariant",
        "invariant features that are not invariant (block sums, not squared norms)",
        "lightning_ehf/core/invariants.py",
        "feats = [x[..., b].square().sum(-1, keepdim=True) for b in self.blocks]",
        "feats = [x[..., b].sum(-1, keepdim=True) for b in self.blocks]",
        ("tests/core/test_metrics.py", "tests/core/test_equivariance.py"),
    ),
    Mutation(
        "so3-generators-swapped",
        "so3 generator matrices in a different order than their names",
        "lightning_ehf/core/symmetries.py",
        "mats = torch.stack([_plane_generator(d, a, b) for a, b in planes])",
        "mats = torch.stack([_plane_generator(d, a, b) for a, b in planes[::-1]])",
        ("tests/core/test_symmetries.py",),
    ),
    # -- the Lagrangian in the LightningModule ----------------------------------------------------
    Mutation(
        "penalty-subtracted",
        "the Lagrangian subtracts the penalty instead of adding it",
        "lightning_ehf/core/objectives.py",
        "    return -bound.mean() + multipliers.penalty(constraint)",
        "    return -bound.mean() - multipliers.penalty(constraint)",
        ("tests/lit/test_lagrangian.py",),
    ),
    Mutation(
        "dual-update-skipped",
        "the Lightning loop never applies the dual update",
        "lightning_ehf/lit/module.py",
        "        self.multipliers.update(constraint)\n",
        "        pass\n",
        ("tests/lit/test_lagrangian.py",),
    ),
    Mutation(
        "dual-update-from-rms",
        "the dual update reads the bracket RMS instead of the mean square",
        "lightning_ehf/lit/module.py",
        "        self.multipliers.update(constraint)\n",
        "        self.multipliers.update(constraint.sqrt())\n",
        ("tests/lit/test_lagrangian.py",),
    ),
    Mutation(
        "loss-sign",
        "training maximises the NLL (objective sign flipped)",
        "lightning_ehf/core/objectives.py",
        "    return -bound.mean() + multipliers.penalty(constraint)",
        "    return bound.mean() + multipliers.penalty(constraint)",
        ("tests/e2e/test_learning.py",),
    ),
    # -- data pipeline --------------------------------------------------------------------------
    Mutation(
        "split-leak-target",
        "validation set drawn from the training stream (finite target data)",
        "lightning_ehf/data/datamodule.py",
        '_SPLIT_STREAM = {"train": 1, "val": 2,',
        '_SPLIT_STREAM = {"train": 1, "val": 1,',
        ("tests/data/test_datamodule.py",),
    ),
    Mutation(
        "split-leak-file",
        "training rows of a file overlap its test rows",
        "lightning_ehf/data/datamodule.py",
        "self.train_data = rows[self.n_val + self.n_test :][: self.n_train]",
        "self.train_data = rows[self.n_val :][: self.n_train]",
        ("tests/data/test_datamodule.py",),
    ),
    Mutation(
        "augment-never",
        "data.augment never reaches the training batches",
        "lightning_ehf/data/datamodule.py",
        "if self.augment and trainer is not None and trainer.training:",
        "if False and self.augment and trainer is not None and trainer.training:",
        ("tests/data/test_datamodule.py",),
    ),
    Mutation(
        "augment-everywhere",
        "data.augment also transforms validation and test batches",
        "lightning_ehf/data/datamodule.py",
        "if self.augment and trainer is not None and trainer.training:",
        "if self.augment and trainer is not None:",
        ("tests/data/test_datamodule.py",),
    ),
    # -- options --------------------------------------------------------------------------------
    Mutation(
        "no-generators-crash",
        "a group without generators (symmetry.group=none) crashes the constraint statistics",
        "lightning_ehf/core/flows.py",
        "self.add(r.square().flatten(1, -2).mean(1).sum(0), len(self._pending))",
        "self.add(r.square().reshape(r.shape[0], -1, r.shape[-1]).mean(1).sum(0), len(self._pending))",
        ("tests/e2e/test_options.py",),
    ),
    # -- particles: relabelling invariance and augmentation (issue 22) -----------------------------
    Mutation(
        "perm-features-dropped",
        "symmetry.permutations keeps the per-particle features (not relabelling invariant)",
        "lightning_ehf/build.py",
        "        if symmetry.particles is not None:",
        "        if symmetry.particles is None:",
        ("tests/core/test_permutations.py",),
    ),
    Mutation(
        "perm-one-per-batch",
        "relabelling augmentation draws one permutation for the whole batch",
        "lightning_ehf/core/frames.py",
        'keys = torch.rand(rows.shape[0], n_particles, generator=generator, device="cpu").to(x.device)',
        'keys = torch.rand(n_particles, generator=generator, device="cpu").to(x.device).expand(rows.shape[0], -1)',
        ("tests/core/test_permutations.py", "tests/data/test_augment_particles.py"),
    ),
    Mutation(
        "perm-augment-never",
        "the data module never learns that particles are identical (no relabelling)",
        "lightning_ehf/build.py",
        "permute = dim // particle_dim if cfg.symmetry.permutations and particle_dim else None",
        "permute = None",
        ("tests/data/test_augment_particles.py",),
    ),
    Mutation(
        "draw-ignores-generator",
        "random draws ignore the generator they are given (augmentation not reproducible)",
        "lightning_ehf/core/random.py",
        "return fn(*args, generator=generator, device=where, **kwargs).to(device)",
        "return fn(*args, generator=None, device=where, **kwargs).to(device)",
        ("tests/data/test_augment_particles.py",),
    ),
    # -- standardisation moments ------------------------------------------------------------------
    Mutation(
        "moments-with-val-rows",
        "finite regime: standardisation moments also use the validation rows",
        "lightning_ehf/data/datamodule.py",
        "            assert self.train_data is not None\n            return self.train_data\n",
        "            assert self.train_data is not None\n            return torch.cat([self.val_data, self.train_data])\n",
        ("tests/data/test_moments.py",),
    ),
    Mutation(
        "moments-from-val-stream",
        "infinite regime: standardisation moments drawn from the validation stream",
        "lightning_ehf/data/datamodule.py",
        'stream_seed(self.seed, _SPLIT_STREAM["moments"])',
        'stream_seed(self.seed, _SPLIT_STREAM["val"])',
        ("tests/data/test_moments.py",),
    ),
    Mutation(
        "moments-population-cov",
        "standardisation covariance divided by N instead of N − 1",
        "lightning_ehf/core/standardise.py",
        "mean, cov = x.mean(0), torch.cov(x.T)",
        "mean, cov = x.mean(0), torch.cov(x.T, correction=0)",
        ("tests/core/test_standardise_closed_form.py",),
    ),
    Mutation(
        "relabelling-off-diagonal",
        "relabelling average of the covariance takes the diagonal blocks off the diagonal",
        "lightning_ehf/core/standardise.py",
        "off = blocks[~diag].mean(0) if n_particles > 1",
        "off = blocks[diag].mean(0) if n_particles > 1",
        ("tests/core/test_standardise_closed_form.py",),
    ),
    # -- the objective actually used ----------------------------------------------------------------
    Mutation(
        "iwae-objective-not-passed",
        "optim.objective=iwae trains on the ELBO while logging train/iwae",
        "lightning_ehf/core/objectives.py",
        'out: dict[str, Any] = {"iwae": True} if self.bound == "iwae" else {}',
        "out: dict[str, Any] = {}",
        ("tests/lit/test_run_objective.py",),
    ),
    Mutation(
        "dreg-weights-under-elbo",
        "DReG's importance weights also applied under the ELBO",
        "lightning_ehf/core/flows.py",
        'if estimator == "dreg" and iwae and p.requires_grad:',
        'if estimator == "dreg" and p.requires_grad:',
        ("tests/core/test_estimators.py",),
    ),
    # -- stopping, checkpoint choice, validation split, preemption --------------------------------------
    Mutation(
        "early-stop-wrong-direction",
        "early stopping watches for the validation NLL to rise",
        "lightning_ehf/build.py",
        'EarlyStopping(monitor=monitor, mode="min"',
        'EarlyStopping(monitor=monitor, mode="max"',
        ("tests/lit/test_stopping.py",),
    ),
    Mutation(
        "test-last-weights",
        "the final test runs on the last weights while metrics.json names the best step",
        "lightning_ehf/train.py",
        "trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)",
        "trainer.test(module, datamodule=datamodule, ckpt_path=None, verbose=False)",
        ("tests/lit/test_stopping.py",),
    ),
    Mutation(
        "val-fraction-floor",
        "data.val_fraction rows floored, while the run prints them rounded",
        "lightning_ehf/data/datamodule.py",
        "            n_val = round(self.val_fraction * self.n_train)\n            self.val_data, self.train_data",
        "            n_val = int(self.val_fraction * self.n_train)\n            self.val_data, self.train_data",
        ("tests/lit/test_stopping.py",),
    ),
    Mutation(
        "array-stream-batch-unclamped",
        "a batch size above the training rows is not clamped (no batch per epoch)",
        "lightning_ehf/data/datasets.py",
        "self.batch_size = min(batch_size, data.shape[0])",
        "self.batch_size = batch_size",
        ("tests/lit/test_stopping.py",),
    ),
    Mutation(
        "signal-in-last-step-ignored",
        "a signal during the last training step is ignored: the run tests and exits 0",
        "lightning_ehf/train.py",
        "if trainer.strategy.reduce_boolean_decision(preemption.requested, all=False):",
        "if trainer.strategy.reduce_boolean_decision(preemption.requested and trainer.global_step < trainer.max_steps, all=False):",
        ("tests/lit/test_stopping.py",),
    ),
    Mutation(
        "last-ckpt-not-at-train-end",
        "last.ckpt is not refreshed when training ends",
        "lightning_ehf/lit/callbacks.py",
        "    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:\n        self.save(trainer)",
        "    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:\n        pass",
        ("tests/lit/test_stopping.py",),
    ),
    # -- studies: expansion, reporting, resuming ----------------------------------------------------------
    Mutation(
        "study-base-wins",
        "a study's base overrides the axis values for the keys both set",
        "lightning_ehf/study/spec.py",
        "                overrides.update(ov)",
        "                overrides.update({**ov, **self.base})",
        ("tests/study/test_spec.py",),
    ),
    Mutation(
        "report-population-std",
        "the report's spread over seeds is the population standard deviation",
        "lightning_ehf/study/report.py",
        "std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0",
        "std = math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n > 1 else 0.0",
        ("tests/study/test_report.py",),
    ),
    Mutation(
        "analyses-population-std",
        "the analyses' spread over seeds is the population standard deviation",
        "lightning_ehf/study/analyses.py",
        "std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))",
        "std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))",
        ("tests/study/test_report.py",),
    ),
    Mutation(
        "pairs-one-side-done",
        "seed-by-seed pairs count a seed whose second cell is not done",
        "lightning_ehf/study/report.py",
        'if a and b and a["state"] == b["state"] == "done" and not a["under_trained"] and not b["under_trained"]:',
        'if a and b and a["state"] == "done" and not a["under_trained"] and not b.get("under_trained"):',
        ("tests/study/test_report.py",),
    ),
    Mutation(
        "cell-resumes-from-best",
        "an interrupted cell resumes from best.ckpt instead of the step it reached",
        "lightning_ehf/study/runner.py",
        'resume = ["--resume", str(run)] if',
        'resume = ["--resume", str(run / "checkpoints" / "best.ckpt")] if',
        ("tests/study/test_resume_cell.py",),
    ),
    Mutation(
        "resume-folder-from-best",
        "ehf train --resume RUN_DIR continues from best.ckpt",
        "lightning_ehf/train.py",
        'run_dir, ckpt_path = p, p / "checkpoints" / "last.ckpt"',
        'run_dir, ckpt_path = p, p / "checkpoints" / "best.ckpt"',
        ("tests/study/test_resume_cell.py",),
    ),
    Mutation(
        "study-cells-not-validated",
        "ehf study run starts cells without validating every cell's config first",
        "lightning_ehf/study/command.py",
        "    for cell in folder.cells:  # every cell's config is valid before anything runs\n        folder.config(cell)",
        "    for cell in folder.cells:  # every cell's config is valid before anything runs\n        pass",
        ("tests/study/test_study.py::test_cli_bad_study_exits_2_with_one_line",),
    ),
    # -- every other module of the package ------------------------------------------------------------
    Mutation(
        "main-not-called",
        "python -m lightning_ehf defines the entry point but never calls it",
        "lightning_ehf/__main__.py",
        "\nentry()\n",
        "\nentry\n",
        ("tests/cli/test_cli.py::test_help_and_missing_command",),
    ),
    Mutation(
        "version-drift",
        "the package's version differs from the packaging metadata",
        "lightning_ehf/__init__.py",
        '__version__ = "0.1.0"',
        '__version__ = "0.1.1"',
        ("tests/e2e/test_package.py",),
    ),
    Mutation(
        "config-error-not-user-error",
        "a config error is not a user error (exit 1 with a traceback, not 2)",
        "lightning_ehf/errors.py",
        "class ConfigError(UserError, ValueError):",
        "class ConfigError(ValueError):",
        ("tests/cli/test_cli.py::test_bad_train_config_with_run_dir_in_process",),
    ),
    Mutation(
        "zombie-alive",
        "a zombie process (exited, not reaped) counts as alive",
        "lightning_ehf/system.py",
        'not in ("Z", "X")',
        '!= "X"',
        ("tests/study/test_system.py",),
    ),
    Mutation(
        "framed-gaussian-log-det-sign",
        "the equivariant encoder's log-density adds log σ instead of subtracting it",
        "lightning_ehf/core/encoders.py",
        "return -0.5 * z.square().sum(-1) - self.scale.log().sum(-1)",
        "return -0.5 * z.square().sum(-1) + self.scale.log().sum(-1)",
        ("tests/core/test_encoders.py",),
    ),
    Mutation(
        "npz-x-only-alone",
        "an .npz with an array 'x' among others is refused",
        "lightning_ehf/data/files.py",
        '            if "x" in keys:',
        '            if keys == ["x"]:',
        ("tests/data/test_files.py",),
    ),
    Mutation(
        "csv-resume-keeps-redone-rows",
        "a resumed run's metrics.csv keeps the row of the step it resumes at",
        "lightning_ehf/lit/loggers.py",
        'int(float(r["step"])) < self._resume_step',
        'int(float(r["step"])) <= self._resume_step',
        ("tests/lit/test_loggers.py",),
    ),
    Mutation(
        "nonfinite-only-nan",
        "checkpoints with infinite (not NaN) weights are written",
        "lightning_ehf/lit/atomic_io.py",
        "v.is_floating_point() and not bool(torch.isfinite(v).all())",
        "v.is_floating_point() and bool(torch.isnan(v).any())",
        ("tests/lit/test_checkpoints.py::test_nonfinite_weights_are_not_written",),
    ),
    Mutation(
        "potentials-plot-inverted",
        "the potentials figure is skipped for models that have Hamiltonians",
        "lightning_ehf/lit/plots.py",
        "    if not blocks:\n        return None",
        "    if blocks:\n        return None",
        ("tests/lit/test_plots.py",),
    ),
    Mutation(
        "nsf-iwae-normaliser",
        "the NSF baseline's IWAE subtracts log K from an exact log-likelihood",
        "lightning_ehf/baselines.py",
        '        """The exact ``log p(q)``: importance samples add nothing to an exact likelihood."""\n        return self.log_prob(q)',
        '        """The exact ``log p(q)``: importance samples add nothing to an exact likelihood."""\n        return self.log_prob(q) - torch.log(q.new_tensor(float(k)))',
        ("tests/core/test_baselines.py",),
    ),
    Mutation(
        "foreign-checkpoint-accepted",
        "a torch file without our state_dict/config passes as a checkpoint",
        "lightning_ehf/checkpoints.py",
        'if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):',
        "if not isinstance(ckpt, dict):",
        tuple(f"tests/cli/test_errors.py::test_bad_input[{c}-foreign-ckpt]" for c in ("eval", "sample", "resume")),
    ),
    Mutation(
        "file-default-regime",
        "data.path implies the infinite regime (file data refused unless the regime is set)",
        "lightning_ehf/config/schema.py",
        '    "data.regime": "finite",\n    "data.n_val": None,',
        '    "data.regime": "infinite",\n    "data.n_val": None,',
        ("tests/config/test_config.py",),
    ),
    Mutation(
        "core-export-dropped",
        "lightning_ehf.core no longer re-exports the leapfrog integrator",
        "lightning_ehf/core/__init__.py",
        "from .integrators import leapfrog\n",
        "",
        ("tests/core/test_flow.py",),
    ),
    Mutation(
        "target-not-nullable",
        "data.target=null (file data) refused as an unknown value",
        "lightning_ehf/config/schema.py",
        '    target: Optional[Target] = "ring2d"',
        '    target: Target = "ring2d"',
        ("tests/config/test_config.py",),
    ),
]


def uncovered_modules() -> list[str]:
    """Modules of the package (files with code) that no mutation plants a bug in."""
    planted = {m.path for m in MUTATIONS}
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "lightning_ehf").rglob("*.py") if p.read_text().strip())
    return [m for m in modules if m not in planted]


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "runs")
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def _apply(root: Path, m: Mutation) -> None:
    path = root / m.path
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        raise LookupError(f"{m.name}: the original text occurs {count} times in {m.path} (expected once)")
    path.write_text(text.replace(m.old, m.new))


def _pytest(
    root: Path, tests: tuple[str, ...], threads: int, timeout: float, stop_first: bool = True
) -> tuple[int, str, float]:
    env = dict(
        os.environ,
        PYTHONPATH=str(root),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *(["-x"] if stop_first else []),
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-p",
        "no:xdist",
        "--timeout",
        str(int(timeout)),
        *tests,
    ]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout + 60)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"timed out: {e}", -1
    return rc, out, time.time() - start


def _failures(output: str) -> list[str]:
    return [
        line.split(" - ")[0].replace("FAILED ", "").replace("ERROR ", "error: ")
        for line in output.splitlines()
        if line.startswith(("FAILED", "ERROR"))
    ]


def _first_failure(output: str) -> str:
    failed = _failures(output)
    if failed:
        return failed[0]
    return output.strip().splitlines()[-1] if output.strip() else ""


def _check_copy_is_imported(root: Path) -> None:
    code = "import lightning_ehf, sys; print(lightning_ehf.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the temporary copy is not what gets imported (got {out}); cannot plant mutations")


def run_one(m: Mutation, threads: int, timeout: float, every_failure: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"ehf-mut-{m.name}-") as tmp:
        root = Path(tmp)
        _copy_tree(root)
        _apply(root, m)
        rc, out, seconds = _pytest(root, m.tests, threads, timeout, stop_first=not every_failure)
    if rc == 0:
        verdict, detail = "SURVIVED", "all selected tests passed"
    elif rc == 1:
        verdict, detail = "caught", ("<br>".join(_failures(out)) if every_failure else _first_failure(out))
    else:  # collection error, usage error, timeout: the mutation broke the tests themselves
        verdict, detail = "caught", f"pytest exit {rc}: {_first_failure(out)}"
    return {"name": m.name, "bug": m.bug, "verdict": verdict, "detail": detail, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="mutations checked at once")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per pytest run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument(
        "--every-failure",
        action="store_true",
        help="run the guarding tests to the end and list every test that fails (not only the first)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per pytest run (default: cores ÷ jobs; 1 on a shared machine)",
    )
    args = ap.parse_args(argv)

    chosen = MUTATIONS
    if args.only:
        known = {m.name for m in MUTATIONS}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            print(f"mutation_check: unknown mutation(s) {unknown}; see --list", file=sys.stderr)
            return 2
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:30s} {m.path:36s} {', '.join(m.tests)}\n{'':30s} {m.bug}")
        return 0
    if args.jobs < 1:
        print("mutation_check: --jobs must be ≥ 1", file=sys.stderr)
        return 2
    for m in chosen:  # fail fast on a stale list, before minutes of test runs
        text = (REPO / m.path).read_text()
        if text.count(m.old) != 1:
            print(
                f"mutation_check: {m.name}: original text found {text.count(m.old)} times in {m.path}; "
                "update the mutation list",
                file=sys.stderr,
            )
            return 2
    if not args.only:  # the whole list must plant a bug in every module of the package
        missing = uncovered_modules()
        if missing:
            print(f"mutation_check: no mutation in {', '.join(missing)}; add one per module", file=sys.stderr)
            return 2
        print(f"coverage: every module of the package ({len({m.path for m in MUTATIONS})}) has a mutation", flush=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)  # oversubscribed OpenMP threads are very slow

    if not args.no_baseline:
        tests = tuple(sorted({t for m in chosen for t in m.tests}))
        with tempfile.TemporaryDirectory(prefix="ehf-mut-baseline-") as tmp:
            _copy_tree(Path(tmp))
            _check_copy_is_imported(Path(tmp))
            print(f"baseline: unmutated copy on {len(tests)} test files ...", flush=True)
            rc, out, seconds = _pytest(Path(tmp), tests, args.threads or os.cpu_count() or 1, args.timeout)
        if rc != 0:
            print(f"baseline FAILED ({_first_failure(out)}): fix the suite before judging mutations", file=sys.stderr)
            return 1
        print(f"baseline: passed in {seconds:.0f} s", flush=True)

    results = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, m, threads, args.timeout, args.every_failure) for m in chosen]
        for i, f in enumerate(futures, 1):
            r = f.result()
            results.append(r)
            print(f"[{i}/{len(chosen)}] {r['verdict']:8s} {r['name']} ({r['seconds']:.0f} s)", flush=True)

    print()
    print(f"| mutation | bug class | verdict | {'failing tests' if args.every_failure else 'first failing test'} |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| `{r['name']}` | {r['bug']} | {r['verdict']} | {r['detail']} |")
    survivors = [r["name"] for r in results if r["verdict"] == "SURVIVED"]
    print(
        f"\n{len(results) - len(survivors)} caught, {len(survivors)} survived" + (f": {survivors}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
