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

Exit code: 0 when every mutation is caught, 1 when any survives, 2 for bad arguments or a mutation
whose original text is not found exactly once (the code it targets has changed: update the list).
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
    # -- core: integrator, brackets, bounds, targets --------------------------------------------
    Mutation("half-kick-full", "leapfrog: the first half-kick made a full kick", "lightning_ehf/core/integrators.py",
             "        p = p - 0.5 * h * force\n        velocity = grad_k(p)",
             "        p = p - h * force\n        velocity = grad_k(p)",
             ("tests/test_core_flow.py",)),
    Mutation("stale-force", "leapfrog: the force is not recomputed after the drift", "lightning_ehf/core/integrators.py",
             "        q = q + h * velocity\n        force = grad_u(q)\n",
             "        q = q + h * velocity\n",
             ("tests/test_core_flow.py",)),
    Mutation("bracket-sign", "closed-form bracket {g, H} with a flipped sign", "lightning_ehf/core/brackets.py",
             "    return kinetic_term - potential_term", "    return potential_term - kinetic_term",
             ("tests/test_core_brackets.py",)),
    Mutation("bessel-term", "particles2d log-density without its Bessel (rotation-marginal) term",
             "lightning_ehf/core/targets.py",
             "                + torch.log(torch.special.i0e(rho / var)))", "                )",
             ("tests/test_targets.py",)),
    Mutation("iwae-mean-of-log-weights", "IWAE as the mean of the log-weights (an ELBO, not log-mean-exp)",
             "lightning_ehf/core/flows.py",
             "        return torch.logsumexp(torch.cat(log_w, 0), 0) - math.log(k)",
             "        return torch.cat(log_w, 0).mean(0)",
             ("tests/test_core_iwae.py",)),
    Mutation("dual-step-sign", "dual ascent steps λ the wrong way", "lightning_ehf/core/constraints.py",
             "self.value.copy_((self.value + self.lr * (c - self.tolerance)).clamp_min(0.0))",
             "self.value.copy_((self.value - self.lr * (c - self.tolerance)).clamp_min(0.0))",
             ("tests/test_core_constraints.py",)),
    Mutation("geco-ema-swapped", "GECO moving average with its two weights swapped", "lightning_ehf/core/constraints.py",
             "self.ema * self.moving_average + (1 - self.ema) * c", "(1 - self.ema) * self.moving_average + self.ema * c",
             ("tests/test_core_constraints.py",)),
    Mutation("so3-generator-sign", "rotation generators with the opposite sign convention",
             "lightning_ehf/core/symmetries.py",
             "    a[j, i] = 1.0\n    a[i, j] = -1.0", "    a[j, i] = -1.0\n    a[i, j] = 1.0",
             ("tests/test_core_symmetries.py",)),
    # -- gradient paths -------------------------------------------------------------------------
    Mutation("elbo-sample-not-rsample", "training ELBO draws momenta with sample() (no pathwise gradient)",
             "lightning_ehf/core/flows.py",
             "p = posterior.rsample((n,))  # (n, B, d)", "p = posterior.sample((n,))  # (n, B, d)",
             ("tests/test_core_gradients.py",)),
    Mutation("step-size-detached", "learnable step sizes cut out of the graph", "lightning_ehf/core/flows.py",
             "step=self.step_size if create_graph else self.step_size.detach(),", "step=self.step_size.detach(),",
             ("tests/test_core_gradients.py",)),
    Mutation("tanh-slope", "closed-form force: tanh derivative 1 − h instead of 1 − h²", "lightning_ehf/core/hamiltonians.py",
             "return 1.0 - (torch.tanh(a) if h is None else h).square()", "return 1.0 - (torch.tanh(a) if h is None else h)",
             ("tests/test_core_fastpaths.py",)),
    Mutation("pullback-factor", "closed-form force: the squared-norm features' pullback misses its factor 2",
             "lightning_ehf/core/symmetries.py",
             "out[..., b] = 2.0 * x[..., b] * g[..., k : k + 1]", "out[..., b] = x[..., b] * g[..., k : k + 1]",
             ("tests/test_core_fastpaths.py",)),
    Mutation("reversible-wrong-direction", "reversible backward reconstructs the states in the wrong direction",
             "lightning_ehf/core/reversible.py",
             "q, p, _ = _step(block, q, p, -sign * log_step.exp(), False, None)",
             "q, p, _ = _step(block, q, p, sign * log_step.exp(), False, None)",
             ("tests/test_core_fastpaths.py",)),
    # -- symmetry metrics -----------------------------------------------------------------------
    Mutation("invariance-without-action", "invariance error compares log p̂(q) with log p̂(q) (no group action)",
             "lightning_ehf/core/metrics.py",
             "model.iwae(g.act_q(q), k, chunk) - repeat", "model.iwae(q, k, chunk) - repeat",
             ("tests/test_core_metrics.py",)),
    Mutation("equivariance-without-action", "equivariance error skips the action on the flow's input",
             "lightning_ehf/core/metrics.py",
             "q2, p2 = model.flow(*g.act(q0, p0))", "q2, p2 = model.flow(q0, p0)",
             ("tests/test_core_metrics.py",)),
    Mutation("invariance-floor-same-estimate", "the noise floor compares an estimate with itself (always 0)",
             "lightning_ehf/core/metrics.py",
             "float((reference - repeat).abs().mean())", "float((reference - reference).abs().mean())",
             ("tests/test_core_metrics.py",)),
    Mutation("equivariance-output-unacted", "equivariance error compares Φ(g·s) with Φ(s) (no action on the output)",
             "lightning_ehf/core/metrics.py", "gq1, gp1 = g.act(q1, p1)", "gq1, gp1 = q1, p1",
             ("tests/test_core_metrics.py",)),
    Mutation("invariants-not-invariant", "invariant features that are not invariant (block sums, not squared norms)",
             "lightning_ehf/core/symmetries.py",
             "feats = [x[..., b].square().sum(-1, keepdim=True) for b in self.blocks]",
             "feats = [x[..., b].sum(-1, keepdim=True) for b in self.blocks]",
             ("tests/test_core_metrics.py", "tests/test_core_equivariance.py")),
    Mutation("so3-generators-swapped", "so3 generator matrices in a different order than their names",
             "lightning_ehf/core/symmetries.py",
             "mats = torch.stack([_plane_generator(d, a, b) for a, b in planes])",
             "mats = torch.stack([_plane_generator(d, a, b) for a, b in planes[::-1]])",
             ("tests/test_core_symmetries.py",)),
    # -- the Lagrangian in the LightningModule ----------------------------------------------------
    Mutation("penalty-subtracted", "the Lagrangian subtracts the penalty instead of adding it",
             "lightning_ehf/lit/module.py",
             "loss = -elbo.mean() + self.multipliers.penalty(constraint)",
             "loss = -elbo.mean() - self.multipliers.penalty(constraint)",
             ("tests/test_framework_lagrangian.py",)),
    Mutation("dual-update-skipped", "the Lightning loop never applies the dual update", "lightning_ehf/lit/module.py",
             "        self.multipliers.update(constraint)\n", "        pass\n",
             ("tests/test_framework_lagrangian.py",)),
    Mutation("dual-update-from-rms", "the dual update reads the bracket RMS instead of the mean square",
             "lightning_ehf/lit/module.py",
             "        self.multipliers.update(constraint)\n", "        self.multipliers.update(constraint.sqrt())\n",
             ("tests/test_framework_lagrangian.py",)),
    Mutation("loss-sign", "training maximises the NLL (objective sign flipped)", "lightning_ehf/lit/module.py",
             "loss = -elbo.mean() + self.multipliers.penalty(constraint)",
             "loss = elbo.mean() + self.multipliers.penalty(constraint)",
             ("tests/test_framework_learning.py",)),
    # -- data pipeline --------------------------------------------------------------------------
    Mutation("split-leak-target", "validation set drawn from the training stream (finite target data)",
             "lightning_ehf/data/datamodule.py",
             '_SPLIT_STREAM = {"train": 1, "val": 2,', '_SPLIT_STREAM = {"train": 1, "val": 1,',
             ("tests/test_framework_data.py",)),
    Mutation("split-leak-file", "training rows of a file overlap its test rows", "lightning_ehf/data/datamodule.py",
             "self.train_data = rows[self.n_val + self.n_test :][: self.n_train]",
             "self.train_data = rows[self.n_val :][: self.n_train]",
             ("tests/test_framework_data.py",)),
    Mutation("augment-never", "data.augment never reaches the training batches", "lightning_ehf/data/datamodule.py",
             "if self.augment and trainer is not None and trainer.training:",
             "if False and self.augment and trainer is not None and trainer.training:",
             ("tests/test_framework_data.py",)),
    Mutation("augment-everywhere", "data.augment also transforms validation and test batches",
             "lightning_ehf/data/datamodule.py",
             "if self.augment and trainer is not None and trainer.training:", "if self.augment and trainer is not None:",
             ("tests/test_framework_data.py",)),
    # -- options --------------------------------------------------------------------------------
    Mutation("no-generators-crash", "a group without generators (symmetry.group=none) crashes the constraint statistics",
             "lightning_ehf/core/flows.py",
             "self.add(r.square().flatten(1, -2).mean(1).sum(0), len(self._pending))",
             "self.add(r.square().reshape(r.shape[0], -1, r.shape[-1]).mean(1).sum(0), len(self._pending))",
             ("tests/test_framework_options.py",)),
]


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


def _pytest(root: Path, tests: tuple[str, ...], threads: int, timeout: float) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               WANDB_MODE="disabled", WANDB_SILENT="true")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--timeout", str(int(timeout)), *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout + 60)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"timed out: {e}", -1
    return rc, out, time.time() - start


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            return line.split(" - ")[0].replace("FAILED ", "").replace("ERROR ", "error: ")
    return output.strip().splitlines()[-1] if output.strip() else ""


def _check_copy_is_imported(root: Path) -> None:
    code = "import lightning_ehf, sys; print(lightning_ehf.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                         capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the temporary copy is not what gets imported (got {out}); cannot plant mutations")


def run_one(m: Mutation, threads: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"ehf-mut-{m.name}-") as tmp:
        root = Path(tmp)
        _copy_tree(root)
        _apply(root, m)
        rc, out, seconds = _pytest(root, m.tests, threads, timeout)
    if rc == 0:
        verdict, detail = "SURVIVED", "all selected tests passed"
    elif rc == 1:
        verdict, detail = "caught", _first_failure(out)
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
            print(f"mutation_check: {m.name}: original text found {text.count(m.old)} times in {m.path}; "
                  "update the mutation list", file=sys.stderr)
            return 2
    threads = max(1, (os.cpu_count() or 1) // args.jobs)  # oversubscribed OpenMP threads are very slow

    if not args.no_baseline:
        tests = tuple(sorted({t for m in chosen for t in m.tests}))
        with tempfile.TemporaryDirectory(prefix="ehf-mut-baseline-") as tmp:
            _copy_tree(Path(tmp))
            _check_copy_is_imported(Path(tmp))
            print(f"baseline: unmutated copy on {len(tests)} test files ...", flush=True)
            rc, out, seconds = _pytest(Path(tmp), tests, os.cpu_count() or 1, args.timeout)
        if rc != 0:
            print(f"baseline FAILED ({_first_failure(out)}): fix the suite before judging mutations", file=sys.stderr)
            return 1
        print(f"baseline: passed in {seconds:.0f} s", flush=True)

    results = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, m, threads, args.timeout) for m in chosen]
        for i, f in enumerate(futures, 1):
            r = f.result()
            results.append(r)
            print(f"[{i}/{len(chosen)}] {r['verdict']:8s} {r['name']} ({r['seconds']:.0f} s)", flush=True)

    print()
    print("| mutation | bug class | verdict | first failing test |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| `{r['name']}` | {r['bug']} | {r['verdict']} | {r['detail']} |")
    survivors = [r["name"] for r in results if r["verdict"] == "SURVIVED"]
    print(f"\n{len(results) - len(survivors)} caught, {len(survivors)} survived" + (f": {survivors}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
