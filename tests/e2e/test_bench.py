"""The benchmark's own arithmetic: the size-matched NSF peer and the median timer (no timing is asserted)."""

from __future__ import annotations

import itertools

import torch

from lightning_ehf import bench


def test_size_matched_nsf_has_the_closest_parameter_count_on_its_grid():
    from lightning_ehf.baselines import NSFModel
    from lightning_ehf.core import no_symmetry

    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    target = 20_000
    sizes = []
    for hidden in range(16, 513, 4):  # the widths the bench searches
        sizes.append(count(NSFModel(no_symmetry(2), transforms=4, bins=8, hidden=hidden, depth=2)))
        if sizes[-1] > target:
            break
    best = min(abs(s - target) for s in sizes)
    assert abs(count(bench.size_matched_nsf(torch.device("cpu"), 2, target)) - target) == best


def test_median_time_is_the_median_of_the_timed_calls(monkeypatch):
    ticks = itertools.chain([0.0], *[(t, t) for t in (1.0, 4.0, 6.0, 16.0)], itertools.repeat(100.0))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    # calls last 1, 3, 2 and 10 time units: the median is 2.5 (the mean would be 4)
    assert bench.median_time(lambda: None, torch.device("cpu"), repeats=4, warmup=0) == 2.5


def test_pair_feature_step_times_builds_each_histogram_it_names(monkeypatch):
    from lightning_ehf.core import MLPEnergy

    built = []
    original = bench._particle_model

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        # every energy's features: the pair-distance histogram, seen in the model's centre-of-mass frame
        built.extend(m.features.features for m in model.modules() if isinstance(m, MLPEnergy))
        return model

    monkeypatch.setattr(bench, "_particle_model", spy)
    histograms = [(24, 8.0), (12, 5.0, 6, 4.0)]
    seconds = bench.pair_feature_step_times(torch.device("cpu"), 4, histograms, repeats=1)
    assert list(seconds) == ["bins24_cutoff8", "bins12_cutoff5_kinetic6_cutoff4"] and all(
        s > 0 for s in seconds.values()
    )
    assert {(f.n_bins, float(f.centres[-1].sqrt())) for f in built} == {(24, 8.0), (12, 5.0), (6, 4.0)}
    model = original(torch.device("cpu"), 4, True, kinetic=(6, 4.0))
    energies = [m for m in model.modules() if isinstance(m, MLPEnergy)]
    assert {(m.quadratic_part, m.features.features.n_bins) for m in energies} == {(True, 6), (False, 24)}
