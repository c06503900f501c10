"""Metrics in full precision: under ``trainer.precision=bf16-mixed`` the validation/test NLL, KL and invariance
error (the values that pick ``best.ckpt`` and stop runs early) are computed in float32, so on the same weights
they agree with ``32-true`` (autocast would otherwise round them to the bfloat16 grid, ~0.03 nats apart here)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from ehf_testing import tiny
from lightning_ehf.build import make_datamodule, make_module
from lightning_ehf.config.load import load_config


def _test_metrics(module, datamodule, precision: str) -> dict[str, float]:
    torch.manual_seed(123)  # the same importance samples under both precisions
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.slow
def test_bf16_mixed_test_metrics_match_32_true_on_the_same_weights():
    torch.set_num_threads(1)
    cfg = load_config(
        overrides=tiny(
            "trainer.max_steps=40", "data.n_test=512", "eval.iw_samples=16", "model.hidden=32", "optim.lr=0.01"
        )
    )
    L.seed_everything(0, verbose=False)
    datamodule = make_datamodule(cfg)
    module = make_module(cfg, datamodule)
    L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=40,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    ).fit(module, datamodule=datamodule)
    full = _test_metrics(module, datamodule, "32-true")
    half = _test_metrics(module, datamodule, "bf16-mixed")
    assert all(p.dtype == torch.float32 for p in module.parameters())
    for key in ("test/nll_iw16", "test/kl", "test/elbo"):
        assert abs(half[key] - full[key]) < 0.005, (key, half[key], full[key])
    assert abs(half["test/invariance_error"] - full["test/invariance_error"]) < 0.005
    # not on the bfloat16 grid (spacing 2**-5 between 4 and 8, 2**-6 between 2 and 4)
    nll = half["test/nll_iw16"]
    assert torch.tensor(nll).to(torch.bfloat16).item() != pytest.approx(nll, abs=1e-9)
