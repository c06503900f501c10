"""Speed and memory of the EHF, measured as ratios against baselines in the same process.

Run through ``ehf bench [--quick] [--quality] [--only SECTIONS] [--out DIR]`` (or ``python -m lightning_ehf.bench …``).
Every figure is a median over repeats after warm-up, on the same data (ring2d) and batch size:

* **training throughput** (samples/s of one optimiser step: ELBO, Lagrangian, backward, Adam) of the
  default EHF with the constraint off and on, of its *reference path* (forces by autograd, so training
  differentiates a double backward), and of zuko's NSF with a matched parameter count;
* **constraint overhead**: dual ÷ none;
* **evaluation throughput** (IWAE log-likelihoods/s at K = 128, no autograd) for the EHF, its
  reference path, and the NSF's exact log-likelihood;
* **peak memory of one training step** at L = 4, 16, 64 leapfrog steps per block, with states stored
  and with the reversible (memory-flat) backward (CPU: the allocator's record through the profiler;
  CUDA: ``max_memory_allocated``);
* **step time against dimension** and against blocks × leapfrog steps;
* **many particles**: step time and peak memory of the dw4 recipe at 4, 8, 13, 22, 55 particles in 3-D (``--quick``:
  up to 22) for the invariant (pair-distance) and the plain MLP model, the exponent of step time in n fitted
  from 4 to 22, and at 13 particles the ratio against the pair-distance features as they were before they were
  made to scale (``lightning_ehf/core/pair_features_reference.py``), alternating in this process;
* with ``--only compile`` (minutes of compiling): the default training step eager and compiled
  (``trainer.compile``): compile time, speed-up, and the steps after which compiling pays for itself;
* with ``--quality``: **time to quality** (wall-clock of training until validation KL ≤ 0.05 on
  ring2d with infinite data, through the real training pipeline, evaluation time excluded) for the
  default EHF, NSF and EHF at the earlier defaults (3 leapfrog steps, lr 3e-3, batch 512), and the
  **default run** (``ehf train``: training, validation and test) of EHF and NSF.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from lightning_ehf.core import flows, make_ehf, particle_rotations, so2
from lightning_ehf.core.constraints import LagrangeMultipliers
from lightning_ehf.core.hamiltonians import set_force_path
from lightning_ehf.core.objectives import lagrangian
from lightning_ehf.core.targets import make_target
from lightning_ehf.system import hardware

# the model the timing sections measure: the default model before 1 leapfrog step became the default, kept so
# that their numbers compare across runs
DEFAULT = dict(blocks=6, leapfrog_steps=3, hidden=64, depth=2, kinetic="mlp")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _data(n: int, device: torch.device, dim: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if dim == 2:
        return make_target("ring2d").sample(n, generator=gen).to(device)
    return torch.randn(n, dim, generator=gen).to(device)


def _ehf(
    device: torch.device, symmetry=None, path: str = "analytic", reversible: bool = False, **kwargs
) -> torch.nn.Module:
    torch.manual_seed(0)
    config = {**DEFAULT, **kwargs}
    model = make_ehf(symmetry if symmetry is not None else so2(2), encoder=_encoder(symmetry), **config)
    with torch.no_grad():  # away from the zero-initialised start, where every force vanishes
        for name, prm in model.named_parameters():
            if prm.ndim > 0 and "encoder" not in name:
                prm.normal_(0.0, 0.1)
    for block in model.flow.blocks:
        block.reversible = reversible
    return set_force_path(model, path).to(device)


def _encoder(symmetry) -> str:
    if symmetry is None:
        return "equivariant"
    planes = symmetry.rotation_blocks
    ok = bool(planes) and all(len(b) == 2 for b in planes) and symmetry.invariants is not None
    return "equivariant" if ok else "gaussian"


def size_matched_nsf(device: torch.device, dim: int, n_params: int) -> torch.nn.Module:
    """zuko NSF (4 transforms, 8 bins, 2 hidden layers) whose width gives about ``n_params`` parameters."""
    from lightning_ehf.baselines import NSFModel, nsf_width_for_params
    from lightning_ehf.core import no_symmetry

    hidden = nsf_width_for_params(dim, n_params, transforms=4, bins=8, depth=2)
    torch.manual_seed(0)
    return NSFModel(no_symmetry(dim), transforms=4, bins=8, hidden=hidden, depth=2).to(device)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _train_step_fn(model: torch.nn.Module, q: torch.Tensor, mode: str, compiled: bool = False) -> Callable[[], None]:
    """One optimiser step of ``−ELBO + Σ λ (C − ε)`` (``mode`` none: the ELBO alone); ``compiled``: the
    Lagrangian's objective through :class:`~lightning_ehf.core.compiled.CompiledObjective`, as
    ``trainer.compile`` does."""
    from lightning_ehf.core.compiled import CompiledObjective

    opt = torch.optim.Adam(model.parameters(), lr=1e-6)  # tiny steps: the model stays where it was measured
    names = list(getattr(model, "generator_names", []))
    multipliers = LagrangeMultipliers(names, mode="dual", init=1.0).to(q.device)
    objective = CompiledObjective(model.elbo_and_constraints) if compiled else model.elbo_and_constraints

    def step() -> None:
        if mode == "none" or not names:
            loss = -model.elbo_and_constraints(q)[0].mean()
            constraint = None
        else:
            elbo, constraint = objective(q)
            loss = lagrangian(elbo, constraint, multipliers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if constraint is not None:
            multipliers.update(constraint.detach())

    return step


def bench_training(device: torch.device, quick: bool) -> dict[str, Any]:
    batch, repeats = 512, (5 if quick else 15)
    q = _data(batch, device)
    ehf = _ehf(device)
    nsf = size_matched_nsf(device, 2, _n_params(ehf))
    rows = {}
    for name, model, mode in (
        ("ehf_none", ehf, "none"),
        ("ehf_dual", ehf, "dual"),
        ("reference_none", _ehf(device, path="autograd"), "none"),
        ("reference_dual", _ehf(device, path="autograd"), "dual"),
        ("nsf", nsf, "none"),
    ):
        seconds = median_time(_train_step_fn(model, q, mode), device, repeats)
        rows[name] = {"samples_per_s": batch / seconds, "ms_per_step": 1e3 * seconds, "params": _n_params(model)}
    ratios = {
        "ehf_over_reference": rows["ehf_dual"]["samples_per_s"] / rows["reference_dual"]["samples_per_s"],
        "constraint_overhead": rows["ehf_none"]["samples_per_s"] / rows["ehf_dual"]["samples_per_s"],
        "nsf_over_ehf": rows["nsf"]["samples_per_s"] / rows["ehf_dual"]["samples_per_s"],
    }
    return {"batch": batch, "rows": rows, "ratios": ratios}


def bench_eval(device: torch.device, quick: bool) -> dict[str, Any]:
    points, k, repeats = (128, 128, 3) if quick else (256, 128, 7)
    q = _data(points, device)
    ehf = _ehf(device)
    rows = {}
    sliced = flows.EVAL_ROWS
    with torch.no_grad():
        for name, model, rows_at_once in (
            ("ehf", ehf, sliced),
            ("ehf_one_pass", ehf, None),
            ("reference", _ehf(device, path="autograd"), sliced),
            ("nsf", size_matched_nsf(device, 2, _n_params(ehf)), sliced),
        ):
            flows.EVAL_ROWS = rows_at_once or points * k  # one_pass: all points × momenta in one flow call
            try:
                seconds = median_time(lambda m=model: m.iwae(q, k, k), device, repeats, warmup=1)
            finally:
                flows.EVAL_ROWS = sliced
            rows[name] = {"loglik_per_s": points / seconds}
    ratios = {
        "ehf_over_reference": rows["ehf"]["loglik_per_s"] / rows["reference"]["loglik_per_s"],
        "sliced_over_one_pass": rows["ehf"]["loglik_per_s"] / rows["ehf_one_pass"]["loglik_per_s"],
        "nsf_over_ehf": rows["nsf"]["loglik_per_s"] / rows["ehf"]["loglik_per_s"],
    }
    return {"points": points, "iw_samples": k, "eval_rows": sliced, "rows": rows, "ratios": ratios}


def step_peak_memory(device: torch.device, steps: int, reversible: bool, batch: int) -> float:
    """Peak memory (MB) allocated during one training step of the default model on ring2d (see
    :func:`peak_memory`)."""
    q = _data(batch, device)
    model = _ehf(device, leapfrog_steps=steps, reversible=reversible)
    return peak_memory(_train_step_fn(model, q, "dual"), device)


def peak_memory(step: Callable[[], Any], device: torch.device) -> float:
    """Peak memory (MB) allocated during one call of ``step``, above what was allocated before it (one
    call first, so that the optimiser state exists before the measured one).

    CUDA: ``max_memory_allocated``. CPU: the allocator's own record (``torch.profiler`` with
    ``profile_memory``: every allocation and free in order; the peak of their running sum)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def bench_memory(device: torch.device, quick: bool) -> dict[str, Any]:
    batch = 256
    rows = {}
    for steps in (4, 16, 64):
        for reversible in (False, True):
            rows[f"L{steps}_{'reversible' if reversible else 'stored'}"] = {
                "peak_mb": step_peak_memory(device, steps, reversible, batch)
            }
    ratios = {
        "reversible_L64_over_L4": rows["L64_reversible"]["peak_mb"] / rows["L4_reversible"]["peak_mb"],
        "stored_L64_over_L4": rows["L64_stored"]["peak_mb"] / rows["L4_stored"]["peak_mb"],
    }
    return {"batch": batch, "blocks": DEFAULT["blocks"], "rows": rows, "ratios": ratios}


def bench_scaling(device: torch.device, quick: bool) -> dict[str, Any]:
    batch, repeats = 256, (3 if quick else 7)
    by_dim = {}
    cases = [
        ("d=2", so2(2)),
        ("d=8", so2(8)),
        ("d=32", so2(32)),
        ("d=128", so2(128)),
        ("3 particles × 2-D", particle_rotations(3, 2)),
        ("16 particles × 3-D", particle_rotations(16, 3)),
    ]
    for name, sym in cases:
        q = _data(batch, device, sym.dim)
        seconds = median_time(_train_step_fn(_ehf(device, symmetry=sym), q, "dual"), device, repeats)
        by_dim[name] = {"dim": sym.dim, "ms_per_step": 1e3 * seconds}
    by_depth = {}
    q = _data(batch, device)
    for blocks, steps in ((2, 3), (6, 3), (12, 3), (6, 8)):
        seconds = median_time(
            _train_step_fn(_ehf(device, blocks=blocks, leapfrog_steps=steps), q, "dual"), device, repeats
        )
        by_depth[f"T={blocks} × L={steps}"] = {"ms_per_step": 1e3 * seconds}
    return {"batch": batch, "by_dim": by_dim, "by_depth": by_depth}


def bench_compile(device: torch.device, quick: bool) -> dict[str, Any]:
    """The default training step (ring2d, batch 512, dual constraint) eager and compiled
    (``trainer.compile``): the compilation's wall time (first step, forward and backward compiled, with an
    empty inductor cache), the compiled step's speed-up (alternating steps), and the steps after which
    compiling has paid for itself."""
    import os
    import tempfile

    # a cold start, as a user's first run pays it: inductor otherwise reuses compiled code from its on-disk cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ehf-bench-inductor-")
    batch, repeats = 512, (5 if quick else 15)
    q = _data(batch, device)
    eager_step = _train_step_fn(_ehf(device), q, "dual")
    step = _train_step_fn(_ehf(device), q, "dual", compiled=True)
    start = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - start
    eager_step(), step()  # warm-up, then alternating steps: both see the same machine
    pairs = [
        (median_time(eager_step, device, 1, warmup=0), median_time(step, device, 1, warmup=0)) for _ in range(repeats)
    ]
    eager, compiled = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    saved = eager - compiled
    return {
        "batch": batch,
        "eager_ms": 1e3 * eager,
        "compiled_ms": 1e3 * compiled,
        "compile_s": first - compiled,
        "ratios": {"speedup": eager / compiled, "break_even_steps": (first - compiled) / saved if saved > 0 else None},
    }


# -- many particles: the dw4 recipe on n particles in 3-D ----------------------------------------------

PARTICLES = (4, 8, 13, 22, 55)
SECTIONS = ("training", "eval", "memory", "scaling", "particles", "compile", "quality")
PARTICLE_RECIPE = dict(batch=64, momenta=16, blocks=6, leapfrog_steps=3, hidden=128)  # configs/experiment/dw4.yaml


def _particle_model(
    device: torch.device,
    n: int,
    invariant: bool,
    today: bool = False,
    bins: int = 24,
    cutoff: float = 8.0,
    kinetic: tuple[int, float] | None = None,
) -> torch.nn.Module:
    """The model ``symmetry.group=so3 symmetry.translation=com [symmetry.permutations=true model.invariant=true]``
    builds for n particles in 3-D (it takes the particles and maps them to its centre-of-mass frame), with
    ``bins`` pair-distance bases up to ``cutoff`` (``model.pair_bins``, ``model.pair_cutoff``), and the kinetic
    energy's own (bins, cutoff) when ``kinetic`` is given (``model.kinetic_pair_bins``, ``kinetic_pair_cutoff``).
    ``today``: with the pair-distance features as they were before
    (``lightning_ehf/core/pair_features_reference.py``), and computing the brackets."""
    from dataclasses import replace

    from lightning_ehf.core import MLPEnergy
    from lightning_ehf.core.coordinates import DataMap
    from lightning_ehf.core.frames import CentreOfMassFrame
    from lightning_ehf.core.invariants import FramedFeatures, PairDistanceFeatures
    from lightning_ehf.core.pair_features_reference import ReferencePairDistanceFeatures

    symmetry = particle_rotations(n, 3)
    if invariant:
        symmetry = replace(symmetry, invariants=PairDistanceFeatures(n, 3, n_bins=bins, max_distance=cutoff))
    frame = CentreOfMassFrame(n, 3)
    data_map = DataMap(3 * n, frame)
    r = PARTICLE_RECIPE
    torch.manual_seed(0)
    kinetic_features = None
    if kinetic is not None:
        kinetic_features = data_map.restrict_features(PairDistanceFeatures(n, 3, *kinetic))
    model = make_ehf(
        data_map.restrict(symmetry),
        kinetic_features=kinetic_features,
        blocks=r["blocks"],
        leapfrog_steps=r["leapfrog_steps"],
        hidden=r["hidden"],
        kinetic="mlp",
        invariant=invariant,
        encoder="gaussian",
        data_map=data_map,
    )
    with torch.no_grad():  # away from the zero-initialised start, where every force vanishes
        for name, prm in model.named_parameters():
            if prm.ndim > 0 and "encoder" not in name:
                prm.normal_(0.0, 0.1)
    if today:
        features = FramedFeatures(ReferencePairDistanceFeatures(n, 3), frame)
        for module in model.modules():
            if isinstance(module, MLPEnergy):
                module.features = features
        model.invariant = False  # the brackets were computed (and were zero)
    return model.to(device)


def _particle_step_fn(model: torch.nn.Module, q: torch.Tensor) -> Callable[[], None]:
    """One optimiser step of the dw4 recipe: IWAE bound over 16 momenta, DReG encoder gradient; the
    Lagrangian of the dual constraint when the model computes brackets (as ``constraint.mode=dual`` does)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    multipliers = LagrangeMultipliers(list(model.generator_names), mode="dual", init=1.0).to(q.device)

    def step() -> None:
        bound, constraint = model.elbo_and_constraints(q, PARTICLE_RECIPE["momenta"], iwae=True, estimator="dreg")
        loss = -bound.mean() + (0.0 if model.invariant else multipliers.penalty(constraint))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _fitted_exponent(ns: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) against log(n)."""
    xs = [math.log(n) for n in ns]
    ys = [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def bench_particles(device: torch.device, quick: bool) -> dict[str, Any]:
    """Step time and peak memory of the dw4 recipe against the number of particles in 3-D, for the invariant
    (pair-distance) model and the plain MLP one, with the exponent of step time in n fitted from 4 to 22;
    and, at 13 particles, the invariant step against the implementation before pair-distance features
    were made to scale (its features, and the brackets computed), in this process."""
    repeats = 2 if quick else 5
    ns = [n for n in PARTICLES if not (quick and n > 22)]
    gen = torch.Generator().manual_seed(0)
    rows: dict[str, dict[str, Any]] = {}
    for n in ns:
        q_full = 2.0 * torch.randn(PARTICLE_RECIPE["batch"], 3 * n, generator=gen)
        for kind, invariant in (("invariant", True), ("mlp", False)):
            step = _particle_step_fn(_particle_model(device, n, invariant), q_full.to(device))
            seconds = median_time(step, device, repeats, warmup=1)
            measure_memory = not quick or n == 13
            rows[f"{kind}_n{n}"] = {
                "particles": n,
                "model": kind,
                "s_per_step": seconds,
                "peak_mb": peak_memory(step, device) if measure_memory else None,
            }
    fit = [n for n in ns if n <= 22]
    exponents = {
        kind: _fitted_exponent(fit, [rows[f"{kind}_n{n}"]["s_per_step"] for n in fit]) for kind in ("invariant", "mlp")
    }
    # today's implementation at 13 particles, alternating with the new one so both see the same machine
    n = 13
    q = 2.0 * torch.randn(PARTICLE_RECIPE["batch"], 3 * n, generator=torch.Generator().manual_seed(1))
    new_step = _particle_step_fn(_particle_model(device, n, True), q.to(device))
    old_step = _particle_step_fn(_particle_model(device, n, True, today=True), q.to(device))
    new_step(), old_step()
    pairs = [
        (median_time(old_step, device, 1, warmup=0), median_time(new_step, device, 1, warmup=0)) for _ in range(repeats)
    ]
    old_s, new_s = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    today = {
        "particles": n,
        "today_s_per_step": old_s,
        "new_s_per_step": new_s,
        "today_peak_mb": peak_memory(old_step, device),
        "new_peak_mb": peak_memory(new_step, device),
    }
    ratios = {
        "step_today_over_new_n13": old_s / new_s,
        "peak_memory_today_over_new_n13": today["today_peak_mb"] / today["new_peak_mb"],
        "exponent_invariant_4_to_22": exponents["invariant"],
        "exponent_mlp_4_to_22": exponents["mlp"],
    }
    return {"recipe": dict(PARTICLE_RECIPE), "rows": rows, "today": today, "ratios": ratios}


def pair_feature_step_times(
    device: torch.device, n: int, histograms: list[tuple[int, float] | tuple[int, float, int, float]], repeats: int
) -> dict[str, float]:
    """Seconds per training step of the invariant n-particle model (the dw4 recipe) for each (bases, cutoff) of
    ``histograms``, or (bases, cutoff, kinetic bases, kinetic cutoff) where the kinetic energy has its own, the
    steps alternating in this process; medians over ``repeats`` rounds."""
    q = 2.0 * torch.randn(PARTICLE_RECIPE["batch"], 3 * n, generator=torch.Generator().manual_seed(1))
    steps = {}
    for bins, cutoff, *kinetic in histograms:
        key = f"bins{bins}_cutoff{cutoff:g}" + ("_kinetic{}_cutoff{:g}".format(*kinetic) if kinetic else "")
        model = _particle_model(device, n, True, bins=bins, cutoff=cutoff, kinetic=tuple(kinetic) or None)
        steps[key] = _particle_step_fn(model, q)
    for step in steps.values():
        step()
    rounds = [{key: median_time(step, device, 1, warmup=0) for key, step in steps.items()} for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in rounds) for key in steps}


# -- quality: through the real training pipeline -------------------------------------------------


def _time_to_quality(overrides: list[str], threshold: float, max_steps: int, workdir: Path) -> dict[str, Any]:
    """Train through :func:`lightning_ehf.train.train` until validation KL ≤ ``threshold``; the clock excludes
    validation time. The test then scores the best checkpoint."""
    import logging

    import lightning as L

    from lightning_ehf.config.load import load_config
    from lightning_ehf.train import train

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no device banners in the report
    cfg = load_config(
        [],
        [
            *overrides,
            f"trainer.max_steps={max_steps}",
            "trainer.val_check_interval=50",
            "data.n_val=1000",
            "eval.iw_samples=128",
            "plots.enabled=false",
            "progress.mode=none",
            "logger.wandb.mode=disabled",
            f"run.dir={workdir}",
        ],
    )

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.start = self.eval_seconds = 0.0
            self.reached: dict[str, float] | None = None

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._t = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.state.fn != "fit":
                return
            self.eval_seconds += time.perf_counter() - self._t
            kl = float(trainer.callback_metrics["val/kl"])
            if self.reached is None and kl <= threshold:
                wall = time.perf_counter() - self.start
                self.reached = {
                    "step": trainer.global_step,
                    "val_kl": kl,
                    "train_seconds": wall - self.eval_seconds,
                    "wall_seconds": wall,
                }
                trainer.should_stop = True

    clock = Clock()
    run = train(cfg, callbacks=[clock])
    if run.exit_code != 0:
        raise RuntimeError(f"time to quality: the run in {run.run_dir} ended with exit code {run.exit_code}")
    result: dict[str, Any] = dict(clock.reached or {"step": None, "note": f"not reached in {max_steps} steps"})
    result["test_kl"] = float(run.metrics["test/kl"])
    return result


def _default_run(extra: list[str], workdir: Path) -> dict[str, Any]:
    run_dir = workdir / ("nsf" if extra else "ehf")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ehf", "train", *extra, "logger.wandb.mode=disabled", f"run.dir={run_dir}"],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ehf train {' '.join(extra)} failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_time_s": metrics["wall_time_s"], "process_s": seconds, "test_kl": metrics["test/kl"]}


# the defaults before the cost/quality frontier chose 1 leapfrog step, lr 1e-2 and batch 256
PREVIOUS_DEFAULT = [f"model.leapfrog_steps={DEFAULT['leapfrog_steps']}", "optim.lr=3e-3", "data.batch_size=512"]


def bench_quality(workdir: Path) -> dict[str, Any]:
    ttq = {
        "ehf": _time_to_quality([], 0.05, 3000, workdir / "ttq-ehf"),
        "nsf": _time_to_quality(["model.kind=nsf"], 0.05, 3000, workdir / "ttq-nsf"),
        "ehf_previous_default": _time_to_quality(PREVIOUS_DEFAULT, 0.05, 3000, workdir / "ttq-ehf-previous"),
    }
    ttq["ehf_previous_default"]["overrides"] = PREVIOUS_DEFAULT
    seconds = {key: row.get("train_seconds") for key, row in ttq.items()}
    ratios = {}
    if seconds["ehf"] and seconds["nsf"]:
        ratios["time_to_quality_ehf_over_nsf"] = seconds["ehf"] / seconds["nsf"]
    if seconds["ehf"] and seconds["ehf_previous_default"]:
        ratios["time_to_quality_previous_default_over_default"] = seconds["ehf_previous_default"] / seconds["ehf"]
    runs = {"ehf": _default_run([], workdir), "nsf": _default_run(["model.kind=nsf"], workdir)}
    ratios["default_run_ehf_over_nsf"] = runs["ehf"]["wall_time_s"] / runs["nsf"]["wall_time_s"]
    return {"time_to_quality": ttq, "default_run": runs, "ratios": ratios}


# -- report ----------------------------------------------------------------------------------------


def particles_markdown(p: dict[str, Any]) -> list[str]:
    r = p["recipe"]
    lines = [
        f"**Many particles** (n particles in 3-D, centre-of-mass frame; the dw4 recipe: batch {r['batch']} × "
        f"{r['momenta']} momenta, IWAE, DReG, {r['blocks']} blocks × {r['leapfrog_steps']} leapfrog steps, "
        f"MLPs {r['hidden']} wide; invariant: pair-distance features, no constraint; MLP: plain EHF, dual "
        "constraint):",
        "",
        "| particles | invariant s/step | invariant peak MB | MLP s/step | MLP peak MB |",
        "|---|---|---|---|---|",
    ]
    ns = sorted({row["particles"] for row in p["rows"].values()})

    def mb(row: dict[str, Any]) -> str:
        return "" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"

    for n in ns:
        inv, mlp = p["rows"][f"invariant_n{n}"], p["rows"][f"mlp_n{n}"]
        lines.append(f"| {n} | {inv['s_per_step']:.3f} | {mb(inv)} | {mlp['s_per_step']:.3f} | {mb(mlp)} |")
    t, ratios = p["today"], p["ratios"]
    lines += [
        "",
        f"Step time ∝ n^k from 4 to 22 particles: invariant **k = {ratios['exponent_invariant_4_to_22']:.2f}**, "
        f"MLP k = {ratios['exponent_mlp_4_to_22']:.2f}.",
        "",
        f"At {t['particles']} particles, against the implementation before the pair-distance features were made "
        f"to scale (same process, alternating steps): {t['today_s_per_step']:.2f} s → {t['new_s_per_step']:.2f} s "
        f"per step, **{ratios['step_today_over_new_n13']:.2f}× faster**; peak memory {t['today_peak_mb']:.0f} MB → "
        f"**{t['new_peak_mb']:.0f} MB** ({ratios['peak_memory_today_over_new_n13']:.1f}× less).",
    ]
    return lines


def to_markdown(res: dict[str, Any]) -> str:
    hw = res["hardware"]
    lines = [
        f"Measured {res['date']} with `{res['command']}` on {hw['cpu']} ({hw['cores']} cores, "
        f"{hw['torch_threads']} torch threads, device {hw.get('gpu', hw['device'])}), torch {hw['torch']}.",
        "",
    ]
    if "training" in res:
        lines += training_markdown(res["training"])
    if "eval" in res:
        lines += eval_markdown(res["eval"])
    if "memory" in res:
        lines += memory_markdown(res["memory"])
    if "scaling" in res:
        lines += scaling_markdown(res["scaling"])
    if "particles" in res:
        lines += [""] + particles_markdown(res["particles"])
    if "compile" in res:
        c = res["compile"]
        even = c["ratios"]["break_even_steps"]
        lines += [
            "",
            f"**Compiled training step** (`trainer.compile=true`; default model, ring2d, batch {c['batch']}, dual "
            f"constraint): eager {c['eager_ms']:.1f} ms, compiled {c['compiled_ms']:.1f} ms per step "
            f"(**{c['ratios']['speedup']:.2f}×**) after {c['compile_s']:.0f} s of compiling; it pays for itself after "
            + (f"{even:,.0f} steps." if even is not None else "no number of steps (no speed-up)."),
        ]
    if "quality" in res:
        lines += quality_markdown(res["quality"])
    return "\n".join(lines) + "\n"


def training_markdown(t: dict[str, Any]) -> list[str]:
    lines = [
        f"**Training** (one optimiser step, batch {t['batch']}, ring2d; reference model: 6 blocks × 3 leapfrog "
        "steps, MLP 64×64):",
        "",
        "| model | samples/s | ms/step | parameters |",
        "|---|---|---|---|",
    ]
    labels = {
        "ehf_none": "EHF, constraint off",
        "ehf_dual": "EHF, dual constraint",
        "reference_none": "EHF reference path (autograd forces), off",
        "reference_dual": "EHF reference path (autograd forces), dual",
        "nsf": "zuko NSF, matched parameters",
    }
    for key, row in t["rows"].items():
        lines.append(f"| {labels[key]} | {row['samples_per_s']:.0f} | {row['ms_per_step']:.1f} | {row['params']:,} |")
    r = t["ratios"]
    lines += [
        "",
        f"EHF ÷ reference: **{r['ehf_over_reference']:.2f}×**; constraint overhead (dual ÷ none time): "
        f"**{r['constraint_overhead']:.3f}**; NSF ÷ EHF: {r['nsf_over_ehf']:.1f}×.",
        "",
    ]
    return lines


def eval_markdown(e: dict[str, Any]) -> list[str]:
    lines = [
        f"**Evaluation** (IWAE log-likelihoods/s, K = {e['iw_samples']}, {e['points']} points, no autograd):",
        "",
        "| model | log-likelihoods/s |",
        "|---|---|",
    ]
    for key, row in e["rows"].items():
        lines.append(f"| {key} | {row['loglik_per_s']:.1f} |")
    sliced = e["ratios"].get("sliced_over_one_pass")
    lines += [
        "",
        f"EHF ÷ reference: **{e['ratios']['ehf_over_reference']:.2f}×**; "
        + (f"slices of {e.get('eval_rows')} rows ÷ one pass over all rows: {sliced:.2f}×; " if sliced else "")
        + f"NSF (exact) ÷ EHF: {e['ratios']['nsf_over_ehf']:.1f}×.",
        "",
    ]
    return lines


def memory_markdown(m: dict[str, Any]) -> list[str]:
    lines = [
        f"**Peak memory of one training step** (batch {m['batch']}, {m['blocks']} blocks, MB allocated "
        "during the step above what was allocated before it):",
        "",
        "| leapfrog steps per block | states stored | reversible backward |",
        "|---|---|---|",
    ]
    for steps in (4, 16, 64):
        lines.append(
            f"| {steps} | {m['rows'][f'L{steps}_stored']['peak_mb']:.1f} | "
            f"{m['rows'][f'L{steps}_reversible']['peak_mb']:.1f} |"
        )
    lines += [
        "",
        f"L = 64 ÷ L = 4: stored {m['ratios']['stored_L64_over_L4']:.2f}×, reversible "
        f"**{m['ratios']['reversible_L64_over_L4']:.2f}×**.",
        "",
    ]
    return lines


def scaling_markdown(s: dict[str, Any]) -> list[str]:
    lines = [
        f"**Step time** (dual constraint, batch {s['batch']}):",
        "",
        "| case | dimension | ms/step |",
        "|---|---|---|",
    ]
    for key, row in s["by_dim"].items():
        lines.append(f"| {key} | {row['dim']} | {row['ms_per_step']:.1f} |")
    for key, row in s["by_depth"].items():
        lines.append(f"| {key} | 2 | {row['ms_per_step']:.1f} |")
    return lines


def quality_markdown(qd: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "**Time to quality** (ring2d, infinite data, validation every 50 steps on 1,000 points at "
        "K = 128; seconds of training, evaluation excluded):",
        "",
        "| model | steps | training s | wall s | val KL then | test KL then |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in qd["time_to_quality"].items():
        lines.append(
            f"| {key} | {row.get('step')} | {row.get('train_seconds', float('nan')):.1f} | "
            f"{row.get('wall_seconds', float('nan')):.1f} | {row.get('val_kl', float('nan')):.4f} | "
            f"{row['test_kl']:.4f} |"
        )
    lines += [
        "",
        "**Default run** (`ehf train`, 2,000 steps, validation and test included):",
        "",
        "| model | wall_time_s | whole process s | test KL |",
        "|---|---|---|---|",
    ]
    for key, row in qd["default_run"].items():
        lines.append(f"| {key} | {row['wall_time_s']:.1f} | {row['process_s']:.1f} | {row['test_kl']:.4f} |")
    lines += [""] + [f"- {k}: **{v:.2f}**" for k, v in qd["ratios"].items()]
    return lines


def default_out() -> Path:
    """``./runs/bench/<time>``: under the working directory, like every run folder (not the source tree)."""
    return Path.cwd() / "runs" / "bench" / datetime.now().strftime("%Y%m%d-%H%M%S")


def run(
    quick: bool = False,
    quality: bool = False,
    out: Path | None = None,
    memory: bool = True,
    command: str = "ehf bench",
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run the sections (``only``: just these, by name) and write bench.json and bench.md to ``out``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res: dict[str, Any] = {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": command,
        "quick": quick,
        "hardware": hardware(),
    }
    steps = [("training", lambda: bench_training(device, quick)), ("eval", lambda: bench_eval(device, quick))]
    if memory:
        steps.append(("memory", lambda: bench_memory(device, quick)))
    steps.append(("scaling", lambda: bench_scaling(device, quick)))
    steps.append(("particles", lambda: bench_particles(device, quick)))
    out = Path(out) if out is not None else default_out()
    out.mkdir(parents=True, exist_ok=True)
    if only and "compile" in only:  # minutes of compiling: only when asked for by name
        steps.append(("compile", lambda: bench_compile(device, quick)))
    if quality or (only and "quality" in only):
        steps.append(("quality", lambda: bench_quality(out)))
    if only:
        unknown = set(only) - {name for name, _ in steps}
        if unknown:
            raise ValueError(f"unknown bench sections {sorted(unknown)}; choose from {[name for name, _ in steps]}")
        steps = [(name, fn) for name, fn in steps if name in only]
    for name, fn in steps:
        start = time.perf_counter()
        print(f"[bench] {name} ...", end="", flush=True)
        res[name] = fn()
        print(f" {time.perf_counter() - start:.0f} s", flush=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "bench.md").write_text(to_markdown(res))
    res["out"] = str(out)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ehf bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a few minutes on 2 CPU cores)")
    ap.add_argument("--quality", action="store_true", help="also time-to-quality and the default runs (minutes)")
    ap.add_argument("--out", type=Path, help="folder for bench.json and bench.md (default ./runs/bench/<time>)")
    ap.add_argument("--only", help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    args = ap.parse_args(argv)
    res = run(
        args.quick,
        args.quality,
        args.out,
        command="ehf bench " + " ".join(argv or sys.argv[1:]),
        only=args.only.split(",") if args.only else None,
    )
    print(Path(res["out"], "bench.md").read_text())
    print(f"written: {res['out']}/bench.json, bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
